"""The download stage: every source ends as one zip in data/raw/, and every failure as one line."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

from runtime.errors import PipelineError
from stages import download
from tests.conftest import TINY, kaggle_members, make_zip, run_stage, write_params

NO_KAGGLE_ENV = {"KAGGLE_API_TOKEN": "", "KAGGLE_USERNAME": "", "KAGGLE_KEY": "", "KAGGLE_CONFIG_DIR": ""}


def _names(path: Path) -> list[str]:
    with zipfile.ZipFile(path) as archive:
        return sorted(archive.namelist())


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_synthetic_is_kaggle_layout_and_deterministic(workdir: Path) -> None:
    download.main()
    first = workdir / "data/raw/train.zip"
    names = _names(first)
    assert names[0] == "train/"
    assert sum(n.startswith("train/cat.") for n in names) == 40
    assert sum(n.startswith("train/dog.") for n in names) == 40
    digest = _sha(first)
    download.main()
    assert _sha(first) == digest
    write_params(workdir / "params.yaml", {**TINY, "seed": 7})
    download.main()
    assert _sha(first) == digest  # the sampling seed does not change the data
    write_params(workdir / "params.yaml", {**TINY, "data.synthetic.seed": 7})
    download.main()
    assert _sha(first) != digest


def test_archive_bundle_takes_its_inner_train_zip(workdir: Path, tmp_path: Path) -> None:
    train = make_zip(tmp_path / "inner.zip", kaggle_members(3))
    bundle = make_zip(
        tmp_path / "dogs-vs-cats.zip",
        {"train.zip": train.read_bytes(), "test1.zip": b"PK", "sampleSubmission.csv": b"id,label\n"},
    )
    download.download(_archive_cfg(bundle), workdir / "out.zip")
    assert _names(workdir / "out.zip") == _names(train)


def test_archive_train_zip_is_copied(workdir: Path, tmp_path: Path) -> None:
    train = make_zip(tmp_path / "train.zip", kaggle_members(2))
    download.download(_archive_cfg(train), workdir / "out.zip")
    assert _sha(workdir / "out.zip") == _sha(train)


def test_archive_folder_is_zipped_in_kaggle_layout(workdir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for name, data in kaggle_members(2).items():
        (folder / Path(name).name).write_bytes(data)
    download.download(_archive_cfg(folder), workdir / "out.zip")
    assert _names(workdir / "out.zip") == sorted(kaggle_members(2))


@pytest.mark.parametrize(("make", "message"), [("missing", "does not exist"), ("text", "is not a zip file")])
def test_bad_archive_is_one_line(workdir: Path, tmp_path: Path, make: str, message: str) -> None:
    path = tmp_path / "train.zip"
    if make == "text":
        path.write_text("not a zip")
    write_params(workdir / "params.yaml", {"data.source": "archive", "data.archive": str(path)})
    result = run_stage("download", workdir)
    assert result.returncode == 1
    assert result.stderr.strip().startswith("error: data.archive: ")
    assert message in result.stderr
    assert not (workdir / "data/raw").exists()


def test_petimages_unreachable_is_one_line(workdir: Path) -> None:
    write_params(workdir / "params.yaml", {"data.source": "petimages", "data.petimages_url": "file:///nowhere/x.zip"})
    result = run_stage("download", workdir)
    assert result.returncode == 1
    assert result.stderr.startswith("error: cannot download data.petimages_url file:///nowhere/x.zip")
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (workdir / "data/raw").exists()


def test_kaggle_without_credentials_fails_fast_and_leaves_nothing(workdir: Path, tmp_path: Path) -> None:
    write_params(workdir / "params.yaml", {"data.source": "kaggle"})
    home = tmp_path / "home"
    home.mkdir()
    result = run_stage("download", workdir, env={"HOME": str(home), **NO_KAGGLE_ENV})
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: no Kaggle credentials found: put your API token in ~/.kaggle/kaggle.json (chmod 600) or set "
        "KAGGLE_USERNAME and KAGGLE_KEY (or KAGGLE_API_TOKEN); get one at https://www.kaggle.com/settings/api"
    ]
    assert not (workdir / "data/raw").exists()
    assert not (home / ".config/kaggle").exists()  # kaggle was never imported


def test_kaggle_credentials_are_found_where_kaggle_looks(tmp_path: Path) -> None:
    assert download.kaggle_credentials({}, tmp_path) is None
    assert download.kaggle_credentials({"KAGGLE_USERNAME": "u", "KAGGLE_KEY": "k"}, tmp_path)
    assert download.kaggle_credentials({"KAGGLE_API_TOKEN": "t"}, tmp_path)
    assert download.kaggle_credentials({"KAGGLE_USERNAME": "u"}, tmp_path) is None
    (tmp_path / ".kaggle").mkdir()
    (tmp_path / ".kaggle/kaggle.json").write_text("{}")
    assert download.kaggle_credentials({}, tmp_path) == str(tmp_path / ".kaggle/kaggle.json")
    other = tmp_path / "cfg"
    other.mkdir()
    (other / "access_token").write_text("t")
    assert download.kaggle_credentials({"KAGGLE_CONFIG_DIR": str(other)}, tmp_path) == str(other / "access_token")


def test_a_client_that_exits_on_bad_credentials_is_one_line(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """kaggle's authenticate() calls exit(1) when it rejects the credentials: the stage says so in one line.
    Everything past authentication runs the real client: tests/pipeline/test_kaggle_client.py."""
    write_params(workdir / "params.yaml", {"data.source": "kaggle"})
    monkeypatch.setenv("KAGGLE_API_TOKEN", "not-a-real-token")

    def exits() -> None:
        raise SystemExit(1)

    monkeypatch.setattr(download, "kaggle_client", exits)
    with pytest.raises(PipelineError, match="Kaggle did not accept the credentials") as raised:
        download.main()
    assert "not-a-real-token" not in str(raised.value)
    assert not (workdir / "data/raw").exists()
    assert list(workdir.glob("data/.raw*")) == []


def _archive_cfg(path: Path):
    from dogs_vs_cats.config import DataConfig, SyntheticConfig

    return DataConfig("archive", "dogs-vs-cats", str(path), "", SyntheticConfig(1, 32, 0))
