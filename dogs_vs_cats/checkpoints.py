"""Where a training stage keeps, after every epoch, what it needs to go on after a kill.

A checkpoint belongs to one computation: its key hashes what DVC would re-run the stage for (the stage's
params values and the content of every dependency in ``dvc.yaml``, code included) with the TensorFlow and
Keras versions. A stage finds only a checkpoint of its own key; one of another key (a param changed, an input,
the code) is set aside, never trusted. They live outside DVC's outputs, which DVC deletes before a stage
runs, in one folder that every copy of the repository finds (``dvc exp run --temp`` and ``--queue`` run in
copies): ``$DOGS_VS_CATS_CHECKPOINTS``, by default ``~/.cache/dogs-vs-cats/checkpoints``. A checkpoint goes
when its stage ends well.
"""

from __future__ import annotations

import fcntl
import glob
import hashlib
import json
import os
import re
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runtime.errors import PipelineError

CHECKPOINT_FILES = {"lock", "state.npz", "state.partial.npz"}  # all a checkpoint's folder holds

ENVIRONMENT = "DOGS_VS_CATS_CHECKPOINTS"


def root() -> Path:
    """The folder of every stage's checkpoint: ``$DOGS_VS_CATS_CHECKPOINTS`` or the user's cache."""
    if os.environ.get(ENVIRONMENT):
        return Path(os.environ[ENVIRONMENT]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "dogs-vs-cats" / "checkpoints"


def computation_key(stage: str, versions: dict[str, str]) -> str | None:
    """What the DVC stage ``stage`` computes, as a hash: its params' values and its dependencies' content, as
    ``dvc.yaml`` lists them for it (DVC resolves its templates), and the library ``versions``. None where no
    ``dvc.yaml`` is (a stage's code run on its own, as the tests do): nothing says what shapes the result."""
    if not Path("dvc.yaml").is_file():
        return None
    # DVC takes a second to import, and only a stage that trains needs it here.
    from dvc.repo import Repo
    from dvc.stage.exceptions import StageNotFound

    try:
        (found,) = Repo(os.curdir, uninitialized=True).stage.collect(stage)
    except StageNotFound as error:
        raise PipelineError(f"dvc.yaml: no stage {stage}; a training stage runs as one of its stages") from error
    parts: list[Any] = [stage, sorted(versions.items())]
    for dep in found.deps:
        if hasattr(dep, "read_params"):
            parts.append([str(dep.def_path), dep.read_params()])
        else:
            parts.append([str(dep.def_path), _content_hash(Path(found.wdir) / str(dep.def_path))])
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _content_hash(path: Path) -> str:
    """SHA-256 of a file, or of a folder's files with their relative paths; "missing" where nothing is."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path] if path.exists() else []
    if not files:
        return "missing"
    for file in files:
        digest.update(file.relative_to(path).as_posix().encode() if path.is_dir() else b"")
        with file.open("rb") as stream:
            while block := stream.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()


@dataclass
class State:
    """Where a fit stood after its last finished epoch."""

    epoch: int  # epochs finished
    variables: list[np.ndarray]  # the model's, random seeds' states included, then the optimizer's
    best_weights: list[np.ndarray] | None  # early stopping's kept epoch
    best: float | None
    best_epoch: int
    wait: int
    stopped: bool  # early stopping ended the fit after this epoch
    history: dict[str, list[float]]


class Checkpoint:
    """The checkpoint of one training stage's computation, locked by the one process that trains it."""

    def __init__(self, stage: str, key: str) -> None:
        self.stage, self.key = stage, key
        self.folder = root() / f"{stage.replace('@', '-')}.{key[:16]}"
        self._lock: int | None = None

    def open(self) -> bool:
        """Take this computation's checkpoint for this process; False (and no checkpointing) when another
        process trains it now. Sets aside the stage's checkpoints of other computations nobody trains."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise PipelineError(f"{self.folder}: cannot keep checkpoints there ({error}); set {ENVIRONMENT}") from error
        lock = os.open(self.folder / "lock", os.O_CREAT | os.O_RDWR)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock)
            print(f"{self.stage}: another process is training this computation; this one keeps no checkpoint")
            return False
        self._lock = lock
        for other in root().glob(f"{glob.escape(self.folder.name.rsplit('.', 1)[0])}.*"):
            if other != self.folder and _is_checkpoint(other) and _unlocked(other):
                shutil.rmtree(other, ignore_errors=True)
                print(f"{self.stage}: set aside the checkpoint of other params or inputs, {other}")
        return True

    def load(self) -> State | None:
        path = self.folder / "state.npz"
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                arrays = [data[f"v{i}"] for i in range(meta.pop("variables"))]
                kept = [data[f"b{i}"] for i in range(meta.pop("best_weights"))]
                return State(variables=arrays, best_weights=kept if meta["best"] is not None else None, **meta)
        except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as error:
            # Truncated, edited, of another layout: never trusted, and never in the way of a fresh start.
            print(f"{self.stage}: set aside an unreadable checkpoint, {path} ({type(error).__name__}: {error})")
            return None

    def save(self, state: State) -> int:
        """Replace the checkpoint with ``state`` in one step (a kill leaves the last whole one); its bytes."""
        meta = {
            "epoch": state.epoch,
            "best": state.best,
            "best_epoch": state.best_epoch,
            "wait": state.wait,
            "stopped": state.stopped,
            "history": state.history,
            "variables": len(state.variables),
            "best_weights": len(state.best_weights or []),
        }
        arrays = {f"v{i}": v for i, v in enumerate(state.variables)}
        arrays |= {f"b{i}": w for i, w in enumerate(state.best_weights or [])}
        partial = self.folder / "state.partial.npz"
        np.savez(partial, meta=np.array(json.dumps(meta)), **arrays)
        os.replace(partial, self.folder / "state.npz")
        return (self.folder / "state.npz").stat().st_size

    def remove(self) -> None:
        """The stage ended well: its checkpoint goes."""
        shutil.rmtree(self.folder, ignore_errors=True)
        self.close()

    def close(self) -> None:
        """Let go of the checkpoint; a folder no epoch was kept in (a stage that failed first) goes too."""
        if self._lock is not None:
            if not (self.folder / "state.npz").exists():
                shutil.rmtree(self.folder, ignore_errors=True)
            os.close(self._lock)
            self._lock = None


def _is_checkpoint(path: Path) -> bool:
    """A folder ``Checkpoint`` made (``<stage>.<16 hex digits>``, only its own files in it): anything else in
    the folder is the user's, never set aside."""
    name_ok = re.fullmatch(r"[0-9a-f]{16}", path.name.rsplit(".", 1)[-1]) is not None
    return name_ok and path.is_dir() and all(p.name in CHECKPOINT_FILES for p in path.iterdir())


def _unlocked(folder: Path) -> bool:
    try:
        lock = os.open(folder / "lock", os.O_RDWR)
    except OSError:
        return True
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(lock)
