"""The files a program reads and writes: an input checked before any work, every output written atomically, and
never over what the user owns.

An output appears whole or not at all (``atomic_path``); a file the run did not write is replaced only when the
user said so (``--force``); a folder named as an output means "write inside it" (``output_file``)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import stat
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from runtime.errors import PipelineError
from runtime.processes import gone, start_time
from runtime.program import signals_deferred


def input_file(path: Path, fix: str) -> Path:
    """``path``, once it is known to be a regular file this process can read; else a PipelineError naming it,
    what is there, and the ``fix`` (e.g. "run dvc repro sample"). A FIFO would hang the read, a device or
    folder is no data, and a file without read permission would fail later, deep in a library."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
        if stat.S_ISREG(mode):
            with open(path, "rb"):  # a regular file: opening it cannot block
                pass
    except FileNotFoundError:
        raise PipelineError(f"{path}: not found; {fix}") from None
    except OSError as error:
        raise PipelineError(f"{path}: cannot read it ({error.strerror}); {fix}") from None
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "a device or socket"
        raise PipelineError(f"{path}: {kind}, not a file; {fix}")
    return path


def npz_arrays(path: Path, keys: tuple[str, ...], fix: str) -> list:
    """The arrays ``keys`` of the ``.npz`` file ``path``, once ``input_file`` passed it; a damaged file, another
    kind of file, or one without those arrays is a PipelineError naming it and the ``fix``."""
    import numpy as np  # here: a program that reads no arrays does not import numpy for this module

    input_file(path, fix)
    try:
        with open(path, "rb") as stream, zipfile.ZipFile(stream) as archive:  # an .npz is a zip of .npy files
            if not {f"{key}.npy" for key in keys} <= set(archive.namelist()):
                raise ValueError("arrays missing")
            with np.load(path, allow_pickle=False) as data:
                return [data[key] for key in keys]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        raise PipelineError(f"{path}: not a .npz file holding {', '.join(keys)}; {fix}") from None


@contextlib.contextmanager
def atomic_path(target: Path, *, replace: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``target``; on success it becomes ``target``, on failure it vanishes.

    Works for files and folders alike, so an interrupted stage never leaves an output that looks finished.
    Whatever is at ``target`` already is replaced only with ``replace``: a stage's own declared output, or a
    file the user said to replace (``--force``); without it an existing ``target`` is a PipelineError and
    nothing is touched. A replaced output is first moved into this run's temp folder, so the one folder ever
    deleted is the one this run made.
    """
    target = Path(target)
    if not replace:
        refuse_existing(target)
    tmp = _temp_beside(target)
    staged = tmp / target.name
    try:
        yield staged
        if not staged.exists():
            raise RuntimeError(f"nothing was written to {staged}")
        if not replace:
            refuse_existing(target)  # it may have appeared while this run worked
        if os.path.lexists(target) and (staged.is_dir() or (target.is_dir() and not target.is_symlink())):
            os.rename(target, tmp / ".replaced")  # nothing renames over a folder: set the old one aside first
        os.replace(staged, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_paths(targets: list[Path], *, replace: bool = False) -> Iterator[list[Path]]:
    """``atomic_path`` for outputs that belong together: each is written to its temporary sibling, and all take
    their place once the block ends without error, the renames safe from Ctrl-C (held until the last is done)."""
    with contextlib.ExitStack() as written:
        yield [written.enter_context(atomic_path(target, replace=replace)) for target in targets]
        renames = written.pop_all()
    with signals_deferred(), renames:
        pass


def _temp_beside(target: Path) -> Path:
    """A new temp folder beside ``target`` (its folder made if missing), once stale ones of killed runs are gone;
    a folder that cannot be written in is one line."""
    folder = target.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(target)
        return temp_dir(folder, target.name)
    except (FileExistsError, NotADirectoryError):
        raise PipelineError(f"{folder}: a file is where this folder should be, for {target.name}; move it") from None
    except OSError as error:
        raise PipelineError(
            f"{folder}: cannot write {target.name} in it ({error.strerror}); make it writable"
        ) from None


def refuse_existing(target: Path) -> None:
    if os.path.lexists(target):
        kind = "a folder" if target.is_dir() else "a file"
        raise PipelineError(f"{target}: {kind} is there already; this run replaces nothing it did not write")


# A temp folder is named .<target>.<pid>-<start>.<8 random characters>.tmp: the pid and the start time of the
# process that made it (clock ticks since boot, 0 where the system does not say), so a later run can tell a
# temp folder of this project's from a user's file, and a dead process's from one that reused its pid.
_TEMP_NAME = r"\.{name}\.(\d+)-(\d+)\.[a-z0-9_]{{8}}\.tmp"


def temp_dir(parent: Path, name: str) -> Path:
    """A new private folder in ``parent`` for work on ``name``, that ``remove_stale_temps`` removes once this
    process is gone."""
    pid = os.getpid()
    return Path(tempfile.mkdtemp(prefix=f".{name}.{pid}-{start_time(pid)}.", suffix=".tmp", dir=parent))


def remove_stale_temps(target: Path) -> None:
    """Delete the temp folders of ``target`` left by a run that was killed outright (SIGKILL, power loss).

    Only folders named by ``temp_dir``'s scheme go, and only when their process is gone: no process has that
    pid, or the one that has it started at another time (a reused pid).
    """
    pattern = re.compile(_TEMP_NAME.format(name=re.escape(target.name)))
    if not target.parent.is_dir():
        return
    for tmp in target.parent.iterdir():
        match = pattern.fullmatch(tmp.name)
        if match and tmp.is_dir() and not tmp.is_symlink() and gone(int(match[1]), int(match[2])):
            shutil.rmtree(tmp, ignore_errors=True)


SYSTEM_FOLDERS = tuple(Path(p) for p in ("/proc", "/sys", "/dev"))


def output_file(path: Path, default_name: str, *, force: bool, option: str) -> Path:
    """Where a tool writes the file the user named with ``option``: ``path``, or ``path/default_name`` when
    ``path`` is a folder. Checked before any work: a file there is replaced only with ``force``, and never a
    folder, a FIFO or a device; the folder must be one a file can be written in."""
    path = Path(path)
    if path.is_dir():
        path = path / default_name
    replaceable(path, force=force, option=option)
    writable_folder(path.parent, option)
    return path


def replaceable(path: Path, *, force: bool, option: str) -> None:
    """Raise a PipelineError unless a tool may write the file ``path``: nothing is there, or a regular file
    that ``force`` says to replace; a folder, a FIFO or a device never is."""
    if not os.path.lexists(path):
        return
    if path.is_dir():
        raise PipelineError(f"{option} {path}: a folder of that name is in the way; name another place")
    if not path.is_file():
        raise PipelineError(f"{option} {path}: not a regular file; name another place")
    if not force:
        raise PipelineError(f"{option} {path}: the file exists; pass --force to replace it, or name another place")


def output_dir(path: Path, *, option: str) -> Path:
    """A folder the user named with ``option`` to write files into (made if missing), checked before any work."""
    path = Path(path)
    if os.path.lexists(path) and not path.is_dir():
        raise PipelineError(f"{option} {path}: a file, not a folder; name a folder to write into")
    writable_folder(path, option)
    return path


def writable_folder(folder: Path, option: str) -> None:
    """Raise a PipelineError unless files can be made in ``folder`` (or, if it is missing, in its nearest
    existing parent), outside the system's pseudo-file systems."""
    resolved = Path(os.path.abspath(folder)).resolve()
    for system in SYSTEM_FOLDERS:
        if resolved == system or system in resolved.parents:
            raise PipelineError(f"{option} {folder}: inside {system}, which is the system's; name a folder of yours")
    existing = next(p for p in (resolved, *resolved.parents) if os.path.lexists(p))
    if not existing.is_dir():
        raise PipelineError(f"{option} {folder}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PipelineError(f"{option} {folder}: {existing} is not writable; name a folder of yours")


def json_text(data: Any) -> str:
    """``data`` as a metrics file holds it: indented JSON with a trailing newline."""
    return json.dumps(data, indent=2, sort_keys=False) + "\n"


def write_json(path: Path, data: Any) -> None:
    """Write a stage's declared output ``data`` as ``json_text``, atomically."""
    with atomic_path(path, replace=True) as tmp:
        tmp.write_text(json_text(data))
