"""Stage ``download``: put the source images into ``data/raw/`` as one zip, never to be edited.

Sources (``data.source``): the Kaggle competition's ``train.zip``; a local archive or folder; Microsoft's
PetImages zip; or a generated stand-in in Kaggle's exact layout. Whatever the source, the result is
``data/raw/train.zip``, checked to be a zip that holds images before the stage succeeds. The folder is
written to a temporary path and renamed at the end, so a failed download leaves no ``data/raw/`` behind.
"""

from __future__ import annotations

from runtime.program import run, start_program

start_program(__name__)  # first: the imports below take seconds (TensorFlow's), and Ctrl-C during them ends in one line

import contextlib
import os
import shutil
import stat
import sys
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path
from typing import Any

from dogs_vs_cats import paths
from dogs_vs_cats.config import DataConfig, load_params
from dogs_vs_cats.images import parse_member
from dogs_vs_cats.synthetic import write_train_zip
from runtime.errors import PipelineError
from runtime.files import atomic_path
from runtime.progress import progress

KAGGLE_FILE = "train.zip"
CHUNK = 1 << 20
CREDENTIALS_HELP = (
    "put your API token in ~/.kaggle/kaggle.json (chmod 600) or set KAGGLE_USERNAME and KAGGLE_KEY "
    "(or KAGGLE_API_TOKEN); get one at https://www.kaggle.com/settings/api"
)


def kaggle_credentials(env: dict[str, str] | os._Environ[str] = os.environ, home: Path | None = None) -> str | None:
    """Where Kaggle credentials would come from, or None; checked before ``kaggle`` is imported,
    because importing it without credentials prints a login banner and carries on. It looks where the
    client looks: ``KAGGLE_CONFIG_DIR``, else ``~/.kaggle``, else (on Linux, when that does not exist)
    ``$XDG_CONFIG_HOME/kaggle`` or ``~/.config/kaggle``."""
    home = home or Path.home()
    if env.get("KAGGLE_API_TOKEN"):
        return "KAGGLE_API_TOKEN"
    if env.get("KAGGLE_USERNAME") and env.get("KAGGLE_KEY"):
        return "KAGGLE_USERNAME/KAGGLE_KEY"
    config_dir = Path(env["KAGGLE_CONFIG_DIR"]) if env.get("KAGGLE_CONFIG_DIR") else home / ".kaggle"
    if not env.get("KAGGLE_CONFIG_DIR") and sys.platform.startswith("linux") and not config_dir.exists():
        config_dir = Path(env.get("XDG_CONFIG_HOME") or home / ".config") / "kaggle"
    candidates = [config_dir / name for name in ("access_token", "access_token.txt", "kaggle.json")]
    candidates.append(home / ".kaggle/credentials.json")  # `kaggle auth login` caches its token there
    return next((str(path) for path in candidates if path.is_file()), None)


def kaggle_client() -> Any:
    """An authenticated ``KaggleApi``: the one place the Kaggle package is imported."""
    from kaggle.api.kaggle_api_extended import KaggleApi

    api = KaggleApi()
    api.authenticate()
    return api


def fetch_kaggle(competition: str, target: Path) -> None:
    """Download the competition's ``train.zip`` (543 MB for dogs-vs-cats) to ``target``.

    The client downloads into ``data/cache/kaggle/``, which a failed run leaves as it is: the client resumes
    that partial file when the stage runs again, as it says it will.
    """
    import requests

    if kaggle_credentials() is None:
        raise PipelineError(f"no Kaggle credentials found: {CREDENTIALS_HELP}")
    rules = f"https://www.kaggle.com/competitions/{competition}/rules"
    folder = paths.KAGGLE_DOWNLOAD_DIR
    folder.mkdir(parents=True, exist_ok=True)
    try:
        kaggle_client().competition_download_file(competition, KAGGLE_FILE, path=str(folder), quiet=False)
    except SystemExit:
        raise PipelineError(f"Kaggle did not accept the credentials: {CREDENTIALS_HELP}") from None
    except requests.HTTPError as error:
        status = error.response.status_code if error.response is not None else None
        if status == 403:
            raise PipelineError(
                f"Kaggle refused {competition} (HTTP 403): accept the competition rules at {rules}, then rerun"
            ) from None
        if status == 401:
            raise PipelineError(f"Kaggle rejected the credentials (HTTP 401): {CREDENTIALS_HELP}") from None
        if status == 404:
            raise PipelineError(
                f"Kaggle has no {KAGGLE_FILE} in competition {competition!r} (HTTP 404): check data.competition"
            ) from None
        where = urllib.parse.urlsplit(error.response.url if error.response is not None else "").netloc or "Kaggle"
        raise PipelineError(  # the URL's query is a signature: never print it
            f"Kaggle download failed (HTTP {status} from {where}); rerun later: it resumes from {folder}/"
        ) from None
    except (requests.RequestException, OSError, ValueError) as error:  # ValueError: the client's size check
        raise PipelineError(
            f"cannot reach Kaggle ({type(error).__name__}); check the network and rerun: the download resumes "
            f"from {folder}/; or set data.source: archive with a {KAGGLE_FILE} downloaded elsewhere"
        ) from None
    downloaded = [p for p in folder.iterdir() if p.is_file() and not p.name.endswith(RESUME_MARKER)]
    if len(downloaded) != 1:
        raise PipelineError(f"Kaggle's download of {KAGGLE_FILE} left {len(downloaded)} files in {folder}/; rerun")
    (file,) = downloaded
    if not zipfile.is_zipfile(file):
        size, head = file.stat().st_size, file.read_bytes()[:20]
        _forget(file)  # not a partial zip the client could resume: the next run starts over
        raise PipelineError(
            f"Kaggle's download of {KAGGLE_FILE} is not a zip ({size:,} bytes starting {head!r}): a web page "
            f"or a body cut short; rerun, or download it at {rules} and set data.source: archive"
        )
    import_archive(file, target, move=True)
    _forget(file)


RESUME_MARKER = ".kaggle-partial"  # the client's record of what a partial file belongs to, beside it


def _forget(file: Path) -> None:
    """Remove a download and the client's resume marker, and their folder once it is empty."""
    for path in (file, file.with_name(file.name + RESUME_MARKER)):
        path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        file.parent.rmdir()


def import_archive(source: Path, target: Path, move: bool = False) -> None:
    """Copy (or ``move``) a local dataset to the zip ``target``.

    Accepts Kaggle's ``dogs-vs-cats.zip`` (its inner ``train.zip`` is taken), a ``train.zip``, a
    PetImages zip, or a folder of images (zipped under ``train/``).
    """
    if not source.exists():
        raise PipelineError(f"data.archive: {source} does not exist; give the path of a .zip or of a folder")
    if source.is_dir():
        zip_folder(source, target)
        return
    if not source.is_file():  # a FIFO or a device would block or never end
        raise PipelineError(f"data.archive: {source} is not a regular file or folder; give a .zip or a folder")
    if not zipfile.is_zipfile(source):
        raise PipelineError(f"data.archive: {source} is not a zip file; give a .zip or a folder of images")
    with zipfile.ZipFile(source) as archive:
        inner = [m for m in archive.infolist() if not m.is_dir() and Path(m.filename).name.lower() == KAGGLE_FILE]
        if inner:  # the competition's bundle: train.zip, test1.zip, sampleSubmission.csv
            with archive.open(inner[0]) as src, open(target, "wb") as out:
                _copy(src, out, inner[0].file_size, f"extracting {KAGGLE_FILE}")
            return
    (shutil.move if move else shutil.copyfile)(source, target)


def folder_images(folder: Path) -> tuple[list[tuple[Path, str]], int]:
    """``(file, member name)`` for every image ``sample`` would take from ``folder``, and how many files were left out.

    Only regular files named like Kaggle's (``cat.N.jpg``) or PetImages' are taken: no dotfiles, nothing in
    hidden folders, and no symlinks, which could point anywhere on the machine.
    """
    taken: list[tuple[Path, str]] = []
    left_out = 0
    for root, dirs, files in os.walk(folder):  # followlinks=False: a linked folder is not entered
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            file = Path(root, name)
            member = f"train/{file.relative_to(folder).as_posix()}"
            if name.startswith(".") or not stat.S_ISREG(file.lstat().st_mode) or parse_member(member) is None:
                left_out += 1
                continue
            taken.append((file, member))
    return taken, left_out


def zip_folder(folder: Path, target: Path) -> None:
    """Zip the images of ``folder`` under ``train/``, as Kaggle's ``train.zip`` holds them."""
    files, left_out = folder_images(folder)
    if not files:
        raise PipelineError(
            f"data.archive: folder {folder} has no cat.N.jpg or dog.N.jpg files (left out {left_out}: "
            "other names, dotfiles, symlinks); put the images there"
        )
    with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as archive:
        for file, member in progress(files, desc=f"zipping {folder}", unit="file"):
            archive.write(file, member)
    if left_out:
        print(f"download: left out {left_out} files of {folder} that are not cat.N.jpg/dog.N.jpg regular files")


def fetch_url(url: str, target: Path) -> None:
    """Download ``url`` (http, https or file) to ``target``, with a progress bar."""
    try:
        with (
            urllib.request.urlopen(url, timeout=60) as response,
            open(target, "wb") as out,
        ):
            size = int(response.headers.get("Content-Length") or 0) or None
            _copy(response, out, size, f"downloading {Path(urllib.parse.urlparse(url).path).name}")
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        raise PipelineError(
            f"cannot download data.petimages_url {url} ({reason}); check the network, "
            "or set data.source: archive with the zip downloaded elsewhere"
        ) from None


def check_download(target: Path, what: str) -> None:
    """Stop unless ``target`` is a zip holding at least one image ``sample`` can take; ``what`` names the source."""
    try:
        with zipfile.ZipFile(target) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        raise PipelineError(f"{what} did not give a readable zip file; check it") from None
    if not any(parse_member(name) for name in names):
        raise PipelineError(
            f"{what} gave a zip with no train/cat.N.jpg, train/dog.N.jpg or PetImages/Cat|Dog/N.jpg images "
            f"({len(names)} members); check it"
        )


def _copy(src: Any, out: Any, size: int | None, desc: str) -> None:
    with progress(total=size, desc=desc, unit="B", unit_scale=True, unit_divisor=1024) as bar:
        while chunk := src.read(CHUNK):
            out.write(chunk)
            bar.update(len(chunk))


def download(cfg: DataConfig, target: Path) -> None:
    """Write the zip ``target`` from the source that ``cfg`` names, and check it holds images."""
    if cfg.source == "kaggle":
        fetch_kaggle(cfg.competition, target)
        what = f"Kaggle's {KAGGLE_FILE} of {cfg.competition}"
    elif cfg.source == "archive":
        import_archive(Path(cfg.archive), target)
        what = f"data.archive {cfg.archive}"
    elif cfg.source == "petimages":
        fetch_url(cfg.petimages_url, target)
        what = f"data.petimages_url {cfg.petimages_url}"
    else:
        total = 2 * cfg.synthetic.per_class
        with progress(total=total, desc="drawing synthetic cats and dogs", unit="img") as bar:
            write_train_zip(target, cfg.synthetic.per_class, cfg.synthetic.side, cfg.synthetic.seed, bar.update)
        what = "the synthetic generator"
    check_download(target, what)


def main() -> None:
    params = load_params()
    with atomic_path(paths.RAW_DIR, replace=True) as tmp:
        tmp.mkdir()
        download(params.data, tmp / paths.RAW_ARCHIVE.name)
    archive = paths.RAW_ARCHIVE
    print(f"download: {params.data.source} -> {archive} ({archive.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    run(main, no_arguments=True)
