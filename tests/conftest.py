"""Shared fixtures: a tiny params.yaml in a temp folder, and image and zip makers."""

from __future__ import annotations

import collections
import contextlib
import fcntl
import importlib
import io
import os
import shutil
import signal
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image
from ruamel.yaml import YAML

from tools import scenarios

REPO = Path(__file__).resolve().parents[1]

# Named small configs (configs/*.yaml), shared with the Makefile.
TINY = scenarios.load("tiny")
LEARNABLE = scenarios.load("learnable")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Files with the most slow tests first, each file's tests in their order: pytest-xdist hands out whole files
    in this order (``--dist loadfile``), so the longest start at once and the many short ones even out the two
    workers at the end, instead of one worker starting the longest file when the other is nearly done."""
    slow = collections.Counter(item.path for item in items if item.get_closest_marker("slow"))
    items.sort(key=lambda item: -slow[item.path])  # stable: a file's tests stay together and in order


@pytest.fixture(scope="session", autouse=True)
def checkpoints_in_temp(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Training stages keep their checkpoints in this session's temp folder, not the user's cache."""
    os.environ["DOGS_VS_CATS_CHECKPOINTS"] = str(tmp_path_factory.mktemp("checkpoints"))


def write_params(path: Path, overrides: dict, base: Path = REPO / "params.yaml") -> None:
    """Write ``base`` (the repository's params.yaml) to ``path`` with dotted-key ``overrides`` applied."""
    yaml = YAML()
    params = yaml.load(base.read_text())
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        node = params
        for key in parents:
            node = node[key]
        node[leaf] = value
    with open(path, "w") as out:
        yaml.dump(params, out)


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temp folder holding a tiny synthetic params.yaml, made the current directory."""
    write_params(tmp_path / "params.yaml", TINY)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def module_of(name: str) -> str:
    """``stages.<name>`` for a DVC stage, ``tools.<name>`` for a tool people run by hand."""
    return f"tools.{name}" if (REPO / "tools" / f"{name}.py").is_file() else f"stages.{name}"


def run_stage(
    name: str, cwd: Path, env: dict[str, str] | None = None, args: tuple[str, ...] = ()
) -> subprocess.CompletedProcess:
    """Run ``python -m stages.<name> [args]`` (or ``tools.<name>``) as a user would, in ``cwd``."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", module_of(name), *args], cwd=cwd, env=full_env, capture_output=True, text=True
    )


def call_stage(name: str, cwd: Path, args: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """Run ``python -m stages.<name> [args]`` (or ``tools.<name>``) in this process: the same ``run(main)`` with
    ``sys.argv``, its exit status, stdout and stderr, without another TensorFlow import (``run_stage``: a process)."""
    from runtime.program import run

    module = importlib.import_module(module_of(name))
    out, err, status = io.StringIO(), io.StringIO(), 0
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}  # run() sets its own
    with inside(cwd), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        argv, sys.argv = sys.argv, [module_of(name), *args]
        try:
            run(module.main)
        except SystemExit as exit:
            status = exit.code if isinstance(exit.code, int) else 1
        finally:
            sys.argv = argv
            for signum, handler in handlers.items():
                signal.signal(signum, handler)
    return subprocess.CompletedProcess([name, *args], status, out.getvalue(), err.getvalue())


def image_bytes(fmt: str = "JPEG", mode: str = "RGB", size: tuple[int, int] = (40, 30), exif=None) -> bytes:
    """A small image of the given format and mode, in memory."""
    color = {"RGB": (200, 80, 20), "L": 128, "CMYK": (0, 128, 255, 0), "RGBA": (10, 200, 10, 128), "P": 3}[mode]
    buffer = io.BytesIO()
    kwargs = {"exif": exif} if exif is not None else {}
    Image.new(mode, size, color).save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def damaged_jpeg(seed: int = 0, size: tuple[int, int] = (64, 48)) -> bytes:
    """A JPEG that Pillow decodes in full and TensorFlow's decoder (training's) refuses: a marker (0xFFFE, a
    comment) in the middle of its compressed data. Pillow's libjpeg ends the scan there and goes on;
    TensorFlow's fails with ``jpeg::Uncompress failed``. Both are checked here, so the fixture cannot quietly
    stop being what the tests need."""
    import numpy as np
    import tensorflow as tf

    noise = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="JPEG", quality=90)
    good = buffer.getvalue()
    start_of_scan = good.index(b"\xff\xda")
    scan = start_of_scan + 2 + int.from_bytes(good[start_of_scan + 2 : start_of_scan + 4], "big")
    middle = (scan + len(good) - 2) // 2  # halfway between the scan header and the end-of-image marker
    damaged = good[:middle] + b"\xff\xfe" + good[middle:]
    with Image.open(io.BytesIO(damaged)) as image:
        image.load()  # no error, and no LOAD_TRUNCATED_IMAGES needed
        assert (image.format, image.mode, image.size) == ("JPEG", "RGB", size)
    tf.image.decode_image(good, channels=3, expand_animations=False)  # the undamaged original decodes
    with pytest.raises(tf.errors.InvalidArgumentError, match="jpeg::Uncompress failed"):
        tf.image.decode_image(damaged, channels=3, expand_animations=False)
    return damaged


def truncated_jpeg(seed: int = 0, size: tuple[int, int] = (64, 48)) -> bytes:
    """A JPEG cut at two thirds with its end-of-image marker put back: Pillow and TensorFlow both decode it
    without error, filling the missing rows with gray, and TensorFlow's libjpeg prints "Corrupt JPEG data:
    premature end of data segment" on stderr. Both are checked here."""
    import numpy as np
    import tensorflow as tf

    from runtime.tf_log import captured_stderr

    noise = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="JPEG", quality=90)
    good = buffer.getvalue()
    cut = good[: len(good) * 2 // 3] + b"\xff\xd9"
    with Image.open(io.BytesIO(cut)) as image:
        image.load()
    with captured_stderr() as lines:
        decoded = tf.image.decode_image(cut, channels=3, expand_animations=False)
    assert decoded.shape == (size[1], size[0], 3)
    assert any("premature end of data segment" in line for line in lines), lines
    return cut


def make_zip(path: Path, members: dict[str, bytes]) -> Path:
    """A zip with exactly these members (names are written as given, even unsafe ones)."""
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(zipfile.ZipInfo(name, (2013, 1, 1, 0, 0, 0)), data)
    return path


def kaggle_members(per_class: int, start: int = 0) -> dict[str, bytes]:
    """Distinct, valid ``train/cat.N.jpg`` / ``train/dog.N.jpg`` members."""
    members = {}
    for label in ("cat", "dog"):
        for n in range(start, start + per_class):
            members[f"train/{label}.{n}.jpg"] = image_bytes(size=(20 + n, 16 + (label == "dog")))
    return members


@contextlib.contextmanager
def inside(path: Path) -> Iterator[None]:
    """Run the enclosed code with ``path`` as the working directory."""
    old = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


@pytest.fixture
def copy_of_trained(trained: Path, tmp_path: Path) -> Path:
    """The shared trained pipeline's data and models, to train again without touching the original."""
    for folder in ("data/sample", "data/features", "models"):
        shutil.copytree(trained / folder, tmp_path / folder)
    return tmp_path


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Path:
    """A folder where every stage up to finetune has run, in process, on the LEARNABLE config.

    Trained once per test session: the first pytest-xdist worker that asks trains it in the session's shared
    temp folder while the other waits, and each worker gets a copy of its own, since tests run stages in it."""
    root = tmp_path_factory.mktemp("trained")
    if worker_id == "master":  # one process (-n 0): the session's temp folder is this process's alone
        _train_every_stage(root)
        return root
    session = tmp_path_factory.getbasetemp().parent  # .../pytest-N, shared by this session's workers only
    shared = session / "trained"
    with open(session / "trained.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or when a worker dies
        if not shared.is_dir():
            building = tmp_path_factory.mktemp("building")
            _train_every_stage(building)
            building.rename(shared)  # whole or not at all: a worker that failed half way leaves nothing
    shutil.copytree(shared, root, dirs_exist_ok=True)
    return root


def _train_every_stage(root: Path) -> None:
    from stages import download, extract_features, finetune, sample, train_baseline, train_frozen, train_head

    write_params(root / "params.yaml", LEARNABLE)
    with inside(root):
        for stage in (download, sample, train_baseline, extract_features, train_head, train_frozen, finetune):
            stage.main()
