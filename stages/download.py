"""Stage ``download``: put the source images into ``data/raw/`` as one zip, never to be edited.

Sources (``data.source``): the Kaggle competition's ``train.zip``; a local archive or folder; Microsoft's
PetImages zip; or a generated stand-in in Kaggle's exact layout. The folder is written to a temporary
path and renamed at the end, so a failed download leaves no ``data/raw/`` behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path
from typing import Any

from tqdm import tqdm

from stages import paths
from stages.common import PipelineError, atomic_path, run
from stages.config import DataConfig, load_params
from stages.synthetic import write_train_zip

KAGGLE_FILE = "train.zip"
CHUNK = 1 << 20
CREDENTIALS_HELP = (
    "put your API token in ~/.kaggle/kaggle.json (chmod 600) or set KAGGLE_USERNAME and KAGGLE_KEY "
    "(or KAGGLE_API_TOKEN); get one at https://www.kaggle.com/settings/api"
)


def kaggle_credentials(env: dict[str, str] | os._Environ[str] = os.environ, home: Path | None = None) -> str | None:
    """Where Kaggle credentials would come from, or None; checked before ``kaggle`` is imported,
    because importing it without credentials prints a login banner and carries on."""
    home = home or Path.home()
    config_dir = Path(env.get("KAGGLE_CONFIG_DIR") or home / ".kaggle")
    if env.get("KAGGLE_API_TOKEN"):
        return "KAGGLE_API_TOKEN"
    if env.get("KAGGLE_USERNAME") and env.get("KAGGLE_KEY"):
        return "KAGGLE_USERNAME/KAGGLE_KEY"
    for name in ("access_token", "access_token.txt", "kaggle.json", "credentials.json"):
        if (config_dir / name).is_file():
            return str(config_dir / name)
    return None


def kaggle_client() -> Any:
    """An authenticated ``KaggleApi``: the one place the Kaggle package is imported."""
    from kaggle.api.kaggle_api_extended import KaggleApi

    api = KaggleApi()
    api.authenticate()
    return api


def fetch_kaggle(competition: str, dest: Path) -> None:
    """Download the competition's ``train.zip`` (543 MB for dogs-vs-cats) into ``dest``."""
    import requests

    if kaggle_credentials() is None:
        raise PipelineError(f"no Kaggle credentials found: {CREDENTIALS_HELP}")
    rules = f"https://www.kaggle.com/competitions/{competition}/rules"
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        try:
            kaggle_client().competition_download_file(competition, KAGGLE_FILE, path=tmp, quiet=False)
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
            raise PipelineError(f"Kaggle download failed (HTTP {status}): {error}") from None
        except (requests.RequestException, OSError) as error:
            raise PipelineError(
                f"cannot reach Kaggle ({type(error).__name__}); check the network, "
                "or set data.source: archive with a train.zip downloaded elsewhere"
            ) from None
        zips = sorted(Path(tmp).glob("*.zip"))  # the client may leave a .kaggle-partial marker beside it
        if len(zips) != 1:
            raise PipelineError(f"Kaggle's download of {KAGGLE_FILE} gave {len(zips)} zip files; rerun")
        import_archive(zips[0], dest, move=True)


def import_archive(source: Path, dest: Path, move: bool = False) -> None:
    """Copy (or ``move``) a local dataset into ``dest`` as a zip.

    Accepts Kaggle's ``dogs-vs-cats.zip`` (its inner ``train.zip`` is taken), a ``train.zip``, a
    PetImages zip, or a folder of images (zipped under ``train/``).
    """
    if not source.exists():
        raise PipelineError(f"data.archive: {source} does not exist; give the path of a .zip or of a folder")
    if source.is_dir():
        files = sorted(p for p in source.rglob("*") if p.is_file())
        if not files:
            raise PipelineError(f"data.archive: folder {source} is empty; it should hold cat.N.jpg and dog.N.jpg")
        with zipfile.ZipFile(dest / KAGGLE_FILE, "w", zipfile.ZIP_STORED) as archive:
            for file in tqdm(files, desc=f"zipping {source}", unit="file"):
                archive.write(file, f"train/{file.relative_to(source).as_posix()}")
        return
    if not zipfile.is_zipfile(source):
        raise PipelineError(f"data.archive: {source} is not a zip file; give a .zip or a folder of images")
    with zipfile.ZipFile(source) as archive:
        inner = [m for m in archive.infolist() if Path(m.filename).name == KAGGLE_FILE]
        if inner:  # the competition's bundle: train.zip, test1.zip, sampleSubmission.csv
            with archive.open(inner[0]) as src, open(dest / KAGGLE_FILE, "wb") as out:
                _copy(src, out, inner[0].file_size, f"extracting {KAGGLE_FILE}")
            return
    (shutil.move if move else shutil.copyfile)(source, dest / source.name)


def fetch_url(url: str, dest: Path) -> None:
    """Download ``url`` (http, https or file) into ``dest`` under its own file name, with a progress bar."""
    name = Path(urllib.parse.urlparse(url).path).name or "download.zip"
    try:
        with (
            urllib.request.urlopen(url, timeout=60) as response,
            open(dest / name, "wb") as out,
        ):
            size = int(response.headers.get("Content-Length") or 0) or None
            _copy(response, out, size, f"downloading {name}")
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise PipelineError(
            f"cannot download data.petimages_url {url} ({reason}); check the network, "
            "or set data.source: archive with the zip downloaded elsewhere"
        ) from None
    if not zipfile.is_zipfile(dest / name):
        raise PipelineError(f"data.petimages_url: {url} did not give a zip file; check the URL")


def _copy(src: Any, out: Any, size: int | None, desc: str) -> None:
    with tqdm(total=size, desc=desc, unit="B", unit_scale=True, unit_divisor=1024) as bar:
        while chunk := src.read(CHUNK):
            out.write(chunk)
            bar.update(len(chunk))


def download(cfg: DataConfig, dest: Path) -> None:
    """Fill the empty folder ``dest`` from the source that ``cfg`` names."""
    if cfg.source == "kaggle":
        fetch_kaggle(cfg.competition, dest)
    elif cfg.source == "archive":
        import_archive(Path(cfg.archive).expanduser(), dest)
    elif cfg.source == "petimages":
        fetch_url(cfg.petimages_url, dest)
    else:
        total = 2 * cfg.synthetic.per_class
        with tqdm(total=total, desc="drawing synthetic cats and dogs", unit="img") as bar:
            write_train_zip(
                dest / KAGGLE_FILE,
                cfg.synthetic.per_class,
                cfg.synthetic.size,
                cfg.synthetic.seed,
                bar.update,
            )


def main() -> None:
    params = load_params()
    with atomic_path(paths.RAW_DIR) as tmp:
        tmp.mkdir()
        download(params.data, tmp)
    (archive,) = paths.RAW_DIR.iterdir()
    print(f"download: {params.data.source} -> {archive} ({archive.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    run(main)
