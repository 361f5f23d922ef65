"""Hostile archives, folders and signals: every bad input is skipped or refused in one line, never a traceback."""

from __future__ import annotations

import collections
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from dogs_vs_cats import images
from runtime import processes
from runtime.errors import PipelineError
from stages import download, sample
from tests.conftest import REPO, image_bytes, kaggle_members, make_zip, run_stage, write_params

COUNTS = {"sample.train_per_class": 2, "sample.validation_per_class": 1, "sample.test_per_class": 1}


def tampered_zip(path: Path, members: dict[str, bytes], tamper: dict[str, Callable[[zipfile.ZipInfo], None]]) -> Path:
    """A zip whose central directory says what ``tamper`` makes it say about some members (CRC, flags, method)."""
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            info = zipfile.ZipInfo(name, (2013, 1, 1, 0, 0, 0))
            archive.writestr(info, data)
            if name in tamper:
                tamper[name](info)  # the central directory is written from these objects on close
    return path


def _bad_crc(info: zipfile.ZipInfo) -> None:
    info.CRC ^= 0xFFFF


def _encrypted(info: zipfile.ZipInfo) -> None:
    info.flag_bits |= 0x1


def _deflate64(info: zipfile.ZipInfo) -> None:
    info.compress_type = 9  # zipfile cannot decompress Deflate64


def _huge(info: zipfile.ZipInfo) -> None:
    info.file_size = 200 * 2**20


def _raw(workdir: Path, path: Path) -> None:
    (workdir / "data/raw").mkdir(parents=True)
    path.rename(workdir / "data/raw/train.zip")


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        (_bad_crc, "corrupt_member"),
        (_encrypted, "encrypted"),
        (_deflate64, "unsupported_compression"),
        (_huge, "too_large"),
    ],
)
def test_a_member_that_cannot_be_read_is_skipped_and_counted(
    workdir: Path, tmp_path: Path, tamper: Callable, reason: str
) -> None:
    members = kaggle_members(5)
    path = tampered_zip(tmp_path / "t.zip", members, {"train/cat.2.jpg": tamper})
    tally = sample.Tally(skipped=collections.Counter())
    with zipfile.ZipFile(path) as archive:
        pool = sample.candidates(archive.namelist(), seed=0, tally=tally)["cat"]
        taken = [member for member, _, _ in sample.usable(archive, pool, "cat", tally, seen=set())]
    assert sorted(taken) == [f"train/cat.{n}.jpg" for n in (0, 1, 3, 4)]
    manifest = pd.DataFrame(columns=sample.MANIFEST_COLUMNS)
    skipped = sample.summary(manifest, tally)["skipped"]
    assert skipped[reason] == 1
    assert sum(skipped.values()) == 1


def test_a_member_that_cannot_be_decompressed_does_not_stop_the_stage(workdir: Path, tmp_path: Path) -> None:
    write_params(workdir / "params.yaml", {**COUNTS, "sample.train_per_class": 3})  # every candidate is needed
    members = kaggle_members(6)
    _raw(workdir, tampered_zip(tmp_path / "t.zip", members, {"train/cat.2.jpg": _bad_crc}))
    result = run_stage("sample", workdir)
    assert result.returncode == 0, result.stderr
    metrics = json.loads((workdir / "metrics/data.json").read_text())
    assert metrics["skipped"]["corrupt_member"] == 1
    assert metrics["train"] == {"cat": 3, "dog": 3}


def test_a_zip_bomb_member_is_refused_unread(workdir: Path, tmp_path: Path) -> None:
    path = tmp_path / "bomb.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in kaggle_members(5).items():
            archive.writestr(name, data)
        with archive.open("train/cat.99.jpg", "w") as member:  # 200 MB of zeros, about 200 KB packed
            for _ in range(200):
                member.write(bytes(2**20))
    assert path.stat().st_size < 2**20
    with zipfile.ZipFile(path) as archive, pytest.raises(images.BadImage, match="too_large"):
        images.read_member(archive, archive.getinfo("train/cat.99.jpg"))


def test_a_member_larger_than_it_declares_is_cut_at_the_limit(tmp_path: Path) -> None:
    path = tampered_zip(tmp_path / "lie.zip", {"train/cat.1.jpg": bytes(5000)}, {})
    with zipfile.ZipFile(path) as archive, pytest.raises(images.BadImage, match="too_large"):
        images.read_member(archive, archive.getinfo("train/cat.1.jpg"), limit=1000)


def test_an_image_of_too_many_pixels_is_refused_before_decoding() -> None:
    buffer = io.BytesIO()
    Image.new("1", (12000, 12000)).save(buffer, format="PNG")  # 144 MP in a few dozen KB
    assert len(buffer.getvalue()) < 100_000
    with pytest.raises(images.BadImage, match="too_large"):
        images.to_rgb_jpeg(buffer.getvalue())


def test_a_zip_whose_directory_is_unreadable_is_one_fatal_line(workdir: Path) -> None:
    (workdir / "data/raw").mkdir(parents=True)
    (workdir / "data/raw/train.zip").write_bytes(b"PK\x03\x04 truncated")
    result = run_stage("sample", workdir)
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: data/raw/train.zip: not a readable zip (")
    assert line.endswith("); run dvc repro -f -s download to fetch it again")
    assert not (workdir / "data/sample").exists()


def test_an_uppercase_archive_name_lands_as_train_zip_and_samples(workdir: Path, tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "Train.ZIP", kaggle_members(5))
    write_params(workdir / "params.yaml", {**COUNTS, "data.source": "archive", "data.archive": str(archive)})
    download.main()
    assert [p.name for p in (workdir / "data/raw").iterdir()] == ["train.zip"]
    sample.main()
    assert json.loads((workdir / "metrics/data.json").read_text())["images"] == 8


def test_a_url_not_ending_in_zip_is_saved_as_train_zip(workdir: Path, tmp_path: Path) -> None:
    # Fetched through urllib like the real https URL, from a local stand-in in Microsoft's layout.
    served = make_zip(tmp_path / "download.aspx", {f"PetImages/Cat/{n}.jpg": image_bytes() for n in range(2)})
    write_params(workdir / "params.yaml", {"data.source": "petimages", "data.petimages_url": served.as_uri()})
    download.main()
    assert (workdir / "data/raw/train.zip").read_bytes() == served.read_bytes()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"<html>Sign in</html>", "did not give a readable zip file; check it"),
        (  # a zip, but of something else
            None,
            "gave a zip with no train/cat.N.jpg, train/dog.N.jpg or PetImages/Cat|Dog/N.jpg images "
            "(1 members); check it",
        ),
    ],
)
def test_a_download_that_is_not_a_zip_of_images_fails_and_leaves_nothing(
    workdir: Path, tmp_path: Path, content: bytes | None, message: str
) -> None:
    served = tmp_path / "page"
    if content is None:
        make_zip(served, {"readme.txt": b"hello"})
    else:
        served.write_bytes(content)
    write_params(workdir / "params.yaml", {"data.source": "petimages", "data.petimages_url": served.as_uri()})
    result = run_stage("download", workdir)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]  # not the progress bar
    assert errors == [f"error: data.petimages_url {served.as_uri()} {message}"]
    assert not (workdir / "data").exists() or not any((workdir / "data").iterdir())


def test_a_directory_entry_named_train_zip_is_not_taken_for_the_inner_zip(workdir: Path, tmp_path: Path) -> None:
    members = {"dogs-vs-cats/train.zip/": b"", **kaggle_members(2)}
    bundle = make_zip(tmp_path / "bundle.zip", members)
    write_params(workdir / "params.yaml", {"data.source": "archive", "data.archive": str(bundle)})
    download.main()
    with zipfile.ZipFile(workdir / "data/raw/train.zip") as archive:
        assert sorted(archive.namelist()) == sorted(members)


@pytest.mark.parametrize("url", ["", "example.com/kagglecatsanddogs.zip", "ftp:/x.zip", "https://"])
def test_a_bad_petimages_url_is_one_line(workdir: Path, url: str) -> None:
    write_params(workdir / "params.yaml", {"data.source": "petimages", "data.petimages_url": url})
    result = run_stage("download", workdir)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: params.yaml: data.petimages_url is {url!r}; use an https:// (or file://) URL of the PetImages zip"
    ]


def test_a_folder_gives_only_its_regular_cat_and_dog_files(workdir: Path, tmp_path: Path) -> None:
    folder, outside = tmp_path / "photos", tmp_path / "secret"
    (folder / "more").mkdir(parents=True)
    (folder / ".hidden").mkdir()
    outside.mkdir()
    (folder / "cat.1.jpg").write_bytes(image_bytes())
    (folder / "more/dog.2.jpg").write_bytes(image_bytes(size=(30, 30)))
    (folder / ".env").write_text("KAGGLE_KEY=secret")
    (folder / ".hidden/cat.3.jpg").write_bytes(image_bytes())
    (folder / "notes.txt").write_text("x")
    (outside / "cat.4.jpg").write_bytes(image_bytes())
    (folder / "cat.4.jpg").symlink_to(outside / "cat.4.jpg")  # a file link pointing out of the folder
    (folder / "linked").symlink_to(outside, target_is_directory=True)
    os.mkfifo(folder / "dog.5.jpg")  # would block a reader forever
    write_params(workdir / "params.yaml", {"data.source": "archive", "data.archive": str(folder)})
    download.main()
    with zipfile.ZipFile(workdir / "data/raw/train.zip") as archive:
        assert sorted(archive.namelist()) == ["train/cat.1.jpg", "train/more/dog.2.jpg"]


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_an_archive_path_that_is_not_a_file_is_one_line(workdir: Path, tmp_path: Path, kind: str) -> None:
    path = tmp_path / "train.zip"
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path = Path("/dev/zero")
    write_params(workdir / "params.yaml", {"data.source": "archive", "data.archive": str(path)})
    result = run_stage("download", workdir)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: data.archive: {path} is not a regular file or folder; give a .zip or a folder"
    ]


def test_a_folder_with_no_usable_images_is_one_line(workdir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / ".env").write_text("x")
    write_params(workdir / "params.yaml", {"data.source": "archive", "data.archive": str(folder)})
    with pytest.raises(PipelineError, match=r"has no cat.N.jpg or dog.N.jpg files \(left out 1"):
        download.main()


SIGNALS = [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")]  # each, its status and line


def _started(arguments: list[str], cwd: Path) -> subprocess.Popen:
    """``python <arguments>`` started in ``cwd`` with this repository importable, its output piped."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, *arguments], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


SLOW_STAGE = textwrap.dedent(
    """
    import time
    from pathlib import Path
    from runtime.files import atomic_path
    from runtime.program import run

    def main():
        with atomic_path(Path("data/sample")) as tmp:
            tmp.mkdir()
            (tmp / "cat.1.jpg").write_bytes(b"partial")
            print("writing", flush=True)
            time.sleep(60)

    run(main)
    """
)


@pytest.mark.parametrize(("signum", "status", "word"), SIGNALS)
def test_a_signal_removes_the_partial_output(tmp_path: Path, signum: int, status: int, word: str) -> None:
    stage = _started(["-c", SLOW_STAGE], tmp_path)
    assert stage.stdout.readline() == "writing\n"
    assert len(list((tmp_path / "data").glob(".sample.*.tmp"))) == 1
    stage.send_signal(signum)
    _, stderr = stage.communicate(timeout=30)
    assert stage.returncode == status
    assert stderr.strip() == f"error: {word}"
    assert list((tmp_path / "data").iterdir()) == []


@pytest.mark.parametrize(("signum", "status", "word"), SIGNALS)
def test_a_signal_while_tensorflow_is_imported_is_one_line(tmp_path: Path, signum: int, status: int, word: str) -> None:
    # Ctrl-C in a stage's first second: before run(), in the middle of its imports. It was a 99-line traceback
    # (SIGINT) or a silent death (SIGTERM).
    stage = _started(["-m", "stages.evaluate"], tmp_path)
    maps, deadline = Path(f"/proc/{stage.pid}/maps"), time.monotonic() + 60
    while "tensorflow" not in maps.read_text() and time.monotonic() < deadline:  # TensorFlow's libraries load
        time.sleep(0.005)
    stage.send_signal(signum)
    sent = time.monotonic()
    _, stderr = stage.communicate(timeout=60)
    assert (stage.returncode, stderr) == (status, f"error: {word}\n")
    assert time.monotonic() - sent < 20


FINISHED_STAGE = textwrap.dedent(
    """
    import atexit, sys, time
    from runtime.program import run

    def main():
        atexit.register(time.sleep, 60)  # the teardown (TensorFlow's atexit handlers), made long
        atexit.register(lambda: print("tearing down", file=sys.stderr, flush=True))  # runs first
        print("done")  # still in the buffer of a pipe

    run(main)
    """
)


@pytest.mark.parametrize(("signum", "status", "word"), SIGNALS)
def test_a_signal_after_the_work_is_one_line_and_keeps_the_output(
    tmp_path: Path, signum: int, status: int, word: str
) -> None:
    # It was "Exception ignored in atexit callback" and a traceback, with exit status 0.
    stage = _started(["-c", FINISHED_STAGE], tmp_path)
    assert stage.stderr.readline() == "tearing down\n"
    stage.send_signal(signum)
    stdout, stderr = stage.communicate(timeout=30)
    assert (stage.returncode, stdout, stderr) == (status, "done\n", f"error: {word}\n")


LATE_SIGNAL = textwrap.dedent(
    """
    import os, sys
    from runtime import program

    ending = program._ending

    def signalled_first():  # the signal lands as main's objects are freed, before run's ending handlers
        program._ending = ending
        os.kill(os.getpid(), int(sys.argv[1]))
        ending()

    program._ending = signalled_first
    program.run(lambda: print("done"))
    """
)


@pytest.mark.parametrize(("signum", "status", "word"), SIGNALS)
def test_a_signal_as_main_returns_is_one_line(tmp_path: Path, signum: int, status: int, word: str) -> None:
    # It was a traceback through run()'s finally, exit status 1.
    stage = _started(["-c", LATE_SIGNAL, str(int(signum))], tmp_path)
    stdout, stderr = stage.communicate(timeout=30)
    assert (stage.returncode, stdout, stderr) == (status, "done\n", f"error: {word}\n")


def test_temp_folders_of_killed_runs_are_removed_when_the_stage_next_runs(workdir: Path) -> None:
    download.main()
    data = workdir / "data"
    me = f"{os.getpid()}-{processes.start_time(os.getpid())}"
    dead = data / ".sample.999999999-12.k1ll3d00.tmp"  # no such process: SIGKILLed long ago
    reused = data / f".sample.{os.getpid()}-1.r3us3d00.tmp"  # this pid, but a process that started at tick 1
    running = data / f".sample.{me}.busy0000.tmp"  # a live process's: left alone
    other = data / ".sample.json.999999999-12.x0000000.tmp"  # another target's
    users = [data / ".sample.mine.tmp", data / ".sample.999999999.ab12cd34.tmp", data / ".sample.1-2.notours.tmp"]
    for folder in (dead, reused, running, other, *users):
        folder.mkdir()
        (folder / "cat.1.jpg").write_bytes(b"partial")
    (data / ".sample.999999998-3.l1nk0000.tmp").symlink_to(running)  # a link named like ours: not followed
    time.sleep(0.01)
    sample.main()
    assert not dead.exists() and not reused.exists()
    assert running.exists() and other.exists() and all(folder.exists() for folder in users)
    assert (running / "cat.1.jpg").exists() and (data / ".sample.999999998-3.l1nk0000.tmp").is_symlink()
    assert (data / "sample/manifest.csv").is_file()
