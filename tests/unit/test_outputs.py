"""Outputs never replace what the run did not write: atomic_path, and every tool's --out."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from runtime.errors import PipelineError
from runtime.files import atomic_path, atomic_paths, input_file, npz_arrays, output_file
from tests.conftest import call_stage
from tools import bench, report


def _user_folder(path: Path) -> dict[str, bytes]:
    (path / "inner").mkdir(parents=True)
    (path / "thesis.tex").write_text("years of work")
    (path / "inner/data.csv").write_text("1,2,3")
    return _contents(path)


def _contents(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_atomic_path_without_replace_touches_nothing_that_is_there(tmp_path: Path) -> None:
    folder, file = tmp_path / "out", tmp_path / "page.md"
    mine = _user_folder(folder)
    file.write_text("mine")
    for target in (folder, file):
        with (
            pytest.raises(PipelineError, match="is there already; this run replaces nothing"),
            atomic_path(target) as tmp,
        ):
            tmp.write_text("new")
    assert _contents(folder) == mine and file.read_text() == "mine"
    late = tmp_path / "late.md"
    with pytest.raises(PipelineError, match=r"late\.md: a file is there already"), atomic_path(late) as tmp:
        tmp.write_text("new")
        late.write_text("written meanwhile by someone else")
    assert late.read_text() == "written meanwhile by someone else"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["late.md", "out", "page.md"]  # no temp left


def test_atomic_path_replaces_a_stage_output_whole_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "sample"
    _user_folder(target)
    with atomic_path(target, replace=True) as tmp:
        tmp.mkdir()
        (tmp / "manifest.csv").write_text("new")
    assert _contents(target) == {"manifest.csv": b"new"}
    with atomic_path(target, replace=True) as tmp:  # a folder replaced by a file, as a changed stage may do
        tmp.write_text("a file now")
    assert target.read_text() == "a file now"
    assert [p.name for p in tmp_path.iterdir()] == ["sample"]


def test_outputs_that_belong_together_take_their_place_together_or_not_at_all(tmp_path: Path) -> None:
    card, metrics = tmp_path / "MODEL_CARD.md", tmp_path / "metrics/export.json"
    card.write_text("old")
    with pytest.raises(RuntimeError), atomic_paths([card, metrics], replace=True) as (new_card, new_metrics):
        new_card.write_text("new")
        new_metrics.write_text("new")
        raise RuntimeError("the last check failed")
    assert card.read_text() == "old" and not metrics.exists() and not list(tmp_path.rglob("*.tmp"))
    with atomic_paths([card, metrics], replace=True) as (new_card, new_metrics):
        new_card.write_text("new")
        new_metrics.write_text("new")
        assert card.read_text() == "old"  # nothing is in place before the block ends
    assert card.read_text() == metrics.read_text() == "new" and not list(tmp_path.rglob("*.tmp"))


def test_an_output_folder_that_cannot_take_the_output_is_one_line(tmp_path: Path, monkeypatch) -> None:
    # A file where a model's export folder should be, and a folder the process may not write in (simulated:
    # tests may run as root), were tracebacks from mkdir and mkdtemp.
    (tmp_path / "mnist").write_text("my notes")
    with pytest.raises(PipelineError) as raised, atomic_path(tmp_path / "mnist/MODEL_CARD.md", replace=True):
        pass
    assert (
        str(raised.value) == f"{tmp_path / 'mnist'}: a file is where this folder should be, for MODEL_CARD.md; move it"
    )
    assert (tmp_path / "mnist").read_text() == "my notes"

    def refused(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("tempfile.mkdtemp", refused)
    with pytest.raises(PipelineError) as raised, atomic_path(tmp_path / "model.tflite", replace=True):
        pass
    assert str(raised.value) == f"{tmp_path}: cannot write model.tflite in it (Permission denied); make it writable"


def test_output_file_goes_inside_a_folder_and_replaces_a_file_only_when_forced(tmp_path: Path) -> None:
    assert output_file(tmp_path, "report.md", force=False, option="--out") == tmp_path / "report.md"
    (tmp_path / "report.md").write_text("mine")
    with pytest.raises(PipelineError, match=r"^--out .*report.md: the file exists; pass --force to replace it"):
        output_file(tmp_path, "report.md", force=False, option="--out")
    assert output_file(tmp_path / "report.md", "x", force=True, option="--out") == tmp_path / "report.md"
    (tmp_path / "sub/report.md").mkdir(parents=True)
    with pytest.raises(PipelineError, match="a folder of that name is in the way"):
        output_file(tmp_path / "sub", "report.md", force=True, option="--out")
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(PipelineError, match="fifo: not a regular file"):
        output_file(tmp_path / "fifo", "report.md", force=True, option="--out")
    with pytest.raises(PipelineError, match=r"--out /proc/self: inside /proc"):
        output_file(Path("/proc/self/x"), "report.md", force=True, option="--out")
    with pytest.raises(PipelineError, match="/dev/null: not a regular file"):
        output_file(Path("/dev/null"), "report.md", force=True, option="--out")
    with pytest.raises(PipelineError, match=r"report.md is a file, not a folder"):
        output_file(tmp_path / "report.md/deeper/page.md", "x", force=True, option="--out")


@pytest.mark.parametrize("tool", ["report", "bench"])
def test_a_tools_out_folder_holding_the_users_files_gets_one_file_more(
    tool: str, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = []
    monkeypatch.setattr(report, "render", lambda base: work.append(base) or "# page\n")
    monkeypatch.setattr(report, "check_revision", lambda revision: None)
    monkeypatch.setattr(bench, "matmul_rates", lambda precisions, side, pairs: {"float32": 1.0})
    monkeypatch.setattr(bench, "measure", lambda params, images, pairs, matmul: work.append(images) or ([], []))
    monkeypatch.setattr(bench, "epoch_seconds", lambda params, rates: {})
    monkeypatch.setattr(bench, "estimate_repro", lambda params, rates: {})
    name = {"report": "report.md", "bench": "bench.json"}[tool]
    home = workdir / "home"
    mine = _user_folder(home)
    result = call_stage(tool, workdir, args=("--out", str(home)))
    assert result.returncode == 0, result.stderr
    assert {k: v for k, v in _contents(home).items() if k != name} == mine
    written = (home / name).read_bytes()
    assert len(work) == 1

    # The same again: the file is there now, so it takes --force; nothing runs before that is checked.
    again = call_stage(tool, workdir, args=("--out", str(home)))
    assert again.returncode == 1 and len(work) == 1
    assert again.stderr.strip().splitlines() == [f"error: --out {home / name}: the file exists; pass --force to "
                                                 "replace it, or name another place"]  # fmt: skip
    assert (home / name).read_bytes() == written
    (home / name).write_text("the user's own")
    assert call_stage(tool, workdir, args=("--out", str(home / name), "--force")).returncode == 0
    assert (home / name).read_bytes() == written
    assert {k: v for k, v in _contents(home).items() if k != name} == mine


def test_an_input_is_a_readable_regular_file_or_one_line_saying_what_is_there(tmp_path: Path) -> None:
    fix = "run dvc repro sample"
    (tmp_path / "good.csv").write_text("a\n")
    assert input_file(tmp_path / "good.csv", fix) == tmp_path / "good.csv"
    (tmp_path / "folder").mkdir()
    os.mkfifo(tmp_path / "fifo")  # reading it would hang: refused before any read
    (tmp_path / "dangling").symlink_to(tmp_path / "gone")
    for path, what in [
        (tmp_path / "missing", "not found"),
        (tmp_path / "dangling", "not found"),
        (tmp_path / "folder", "a folder, not a file"),
        (tmp_path / "fifo", "a FIFO, not a file"),
        (Path("/dev/null"), "a device or socket, not a file"),
    ]:
        with pytest.raises(PipelineError) as error:
            input_file(path, fix)
        assert str(error.value) == f"{path}: {what}; {fix}"


def test_an_input_that_cannot_be_read_is_one_line_not_a_traceback_later(tmp_path: Path) -> None:
    # A regular file without read permission passes stat(); /proc/1/mem is one even for root, who reads any mode.
    unreadable = tmp_path / "manifest.csv"
    unreadable.symlink_to("/proc/1/mem")
    try:
        open(unreadable, "rb").close()
    except OSError:
        pass
    else:
        pytest.skip("this process may read /proc/1/mem")
    with pytest.raises(PipelineError, match=r"manifest.csv: cannot read it \(Permission denied\); run dvc repro"):
        input_file(unreadable, "run dvc repro")


def test_npz_arrays_refuses_a_damaged_or_foreign_file_in_one_line(tmp_path: Path) -> None:
    import numpy as np

    fix = "run dvc repro -f -s extract_features"
    np.savez(tmp_path / "good.npz", x=np.arange(3), y=np.ones(2))
    x, y = npz_arrays(tmp_path / "good.npz", ("x", "y"), fix)
    assert x.tolist() == [0, 1, 2] and y.tolist() == [1.0, 1.0]
    (tmp_path / "text.npz").write_text("garbage\n")  # np.load would have said "pickled (object) data"
    with open(tmp_path / "array.npz", "wb") as npy:
        np.save(npy, np.arange(3))  # an .npy, not an .npz
    np.savez(tmp_path / "other.npz", x=np.arange(3))  # without y
    cut = tmp_path / "cut.npz"
    cut.write_bytes((tmp_path / "good.npz").read_bytes()[:100])
    for name in ("text.npz", "array.npz", "other.npz", "cut.npz"):
        with pytest.raises(PipelineError) as error:
            npz_arrays(tmp_path / name, ("x", "y"), fix)
        assert str(error.value) == f"{tmp_path / name}: not a .npz file holding x, y; {fix}"
