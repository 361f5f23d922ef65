"""The Kaggle download with the real ``kaggle`` client, against a stand-in Kaggle on 127.0.0.1."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest

from dogs_vs_cats import paths
from runtime.errors import PipelineError
from stages import download
from tests.conftest import kaggle_members, make_zip, write_params
from tests.kaggle_standin import SIGNATURE, Behaviour, standin_kaggle


@pytest.fixture
def kaggle_env(workdir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``workdir`` with data.source kaggle, credentials in the environment, and the client's waits cut to 0."""
    write_params(workdir / "params.yaml", {"data.source": "kaggle"})
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))  # the client makes its config folder here, not in the real home
    monkeypatch.setenv("KAGGLE_API_ENVIRONMENT", "LOCALHOST")
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", "k3y-never-printed")
    for name in ("KAGGLE_API_TOKEN", "KAGGLE_CONFIG_DIR", "no_proxy", "NO_PROXY", "https_proxy", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)
    # After the credentials: importing kaggle authenticates, and sets kaggle.api to a client, not the module.
    extended = importlib.import_module("kaggle.api.kaggle_api_extended")

    monkeypatch.setattr(extended.time, "sleep", lambda seconds: None)  # its retries back off for up to a minute
    return workdir


def _fetch(proxy: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("http_proxy", proxy)
    download.main()


def _zip(tmp_path: Path) -> bytes:
    return make_zip(tmp_path / "served.zip", kaggle_members(3)).read_bytes()


def test_the_real_client_downloads_train_zip(kaggle_env: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    served = Behaviour(_zip(tmp_path))
    with standin_kaggle(served) as proxy:
        _fetch(proxy, monkeypatch)
    assert (kaggle_env / "data/raw/train.zip").read_bytes() == served.body
    assert not (kaggle_env / paths.KAGGLE_DOWNLOAD_DIR).exists()
    api = served.requests[0]
    assert api[:2] == ("POST", "http://localhost/api/v1/competitions.CompetitionApiService/DownloadDataFile")
    assert "k3y-never-printed" not in capsys.readouterr().out


@pytest.mark.parametrize(
    ("status", "says"),
    [
        (401, "Kaggle rejected the credentials (HTTP 401)"),
        (403, "Kaggle refused dogs-vs-cats (HTTP 403): accept the competition rules at https://www.kaggle.com/"),
        (404, "Kaggle has no train.zip in competition 'dogs-vs-cats' (HTTP 404): check data.competition"),
    ],
)
def test_kaggle_refusals_are_one_line(kaggle_env: Path, monkeypatch, status: int, says: str) -> None:
    with standin_kaggle(Behaviour(api_status=status)) as proxy, pytest.raises(PipelineError) as error:
        _fetch(proxy, monkeypatch)
    assert str(error.value).startswith(says)
    assert "k3y-never-printed" not in str(error.value)
    assert not (kaggle_env / "data/raw").exists()


@pytest.mark.parametrize(
    "served",
    [
        Behaviour(b"<!DOCTYPE html><html>Please sign in</html>"),
        Behaviour(b"PK\x03\x04" + bytes(5000), content_length=False, drop_after=3000),  # cut short, no length
    ],
    ids=["html", "cut-short"],
)
def test_a_download_that_is_not_a_zip_is_blamed_on_kaggle(kaggle_env: Path, monkeypatch, served: Behaviour) -> None:
    with standin_kaggle(served) as proxy, pytest.raises(PipelineError) as error:
        _fetch(proxy, monkeypatch)
    message = str(error.value)
    assert message.startswith("Kaggle's download of train.zip is not a zip (")
    assert "data.archive" not in message.split("set data.source")[0] and "/tmp" not in message
    assert not (kaggle_env / "data/raw").exists() and not (kaggle_env / paths.KAGGLE_DOWNLOAD_DIR).exists()


def test_a_dropped_download_is_kept_and_resumed_by_the_next_run(kaggle_env: Path, tmp_path: Path, monkeypatch) -> None:
    # Larger than the client's 1 MiB chunk, so a connection cut after 1.5 MiB leaves bytes on disk.
    members = {**kaggle_members(3), "train/padding.bin": np.random.default_rng(0).bytes(3 * 2**20)}
    body = make_zip(tmp_path / "served.zip", members).read_bytes()
    dropping = Behaviour(body, drop_after=3 * 2**19)
    with standin_kaggle(dropping) as proxy, pytest.raises(PipelineError, match="cannot reach Kaggle") as error:
        _fetch(proxy, monkeypatch)
    assert f"rerun: the download resumes from {paths.KAGGLE_DOWNLOAD_DIR}/" in str(error.value)
    partial = kaggle_env / paths.KAGGLE_DOWNLOAD_DIR / "train.zip"
    assert 0 < partial.stat().st_size < len(body)
    assert not (kaggle_env / "data/raw").exists()

    healthy = Behaviour(body)
    with standin_kaggle(healthy) as proxy:
        _fetch(proxy, monkeypatch)
    assert (kaggle_env / "data/raw/train.zip").read_bytes() == body
    ranges = [headers.get("Range") for _, _, headers in healthy.requests if headers.get("Range")]
    assert ranges and ranges[0].startswith("bytes=") and ranges[0] != "bytes=0-"  # it resumed, not restarted


def test_a_storage_error_never_prints_the_signed_url(kaggle_env: Path, monkeypatch) -> None:
    with standin_kaggle(Behaviour(storage_status=500)) as proxy, pytest.raises(PipelineError) as error:
        _fetch(proxy, monkeypatch)
    assert "HTTP 500 from storage.test" in str(error.value)
    assert SIGNATURE.split("=")[1] not in str(error.value)


def test_credentials_in_the_clients_xdg_folder_are_found(tmp_path: Path) -> None:
    xdg = tmp_path / "xdg/kaggle"
    xdg.mkdir(parents=True)
    (xdg / "kaggle.json").write_text("{}")
    assert download.kaggle_credentials({"XDG_CONFIG_HOME": str(tmp_path / "xdg")}, tmp_path) == str(xdg / "kaggle.json")
    (tmp_path / ".config/kaggle").mkdir(parents=True)
    (tmp_path / ".config/kaggle/access_token").write_text("t")
    assert download.kaggle_credentials({}, tmp_path) == str(tmp_path / ".config/kaggle/access_token")
    (tmp_path / ".kaggle").mkdir()  # once ~/.kaggle exists, the client looks only there
    assert download.kaggle_credentials({}, tmp_path) is None
