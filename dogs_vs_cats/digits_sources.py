"""Where the digits study's images come from, as ``digits.data.source`` says:

- ``keras``: ``keras.datasets.mnist`` / ``fashion_mnist``, downloaded once into Keras' cache;
- ``files``: a local copy under ``<digits.data.files>/<dataset>/``, the four original IDX files (gzipped or
  not, named ``train-images-idx3-ubyte.gz`` or like ``train-images.idx3-ubyte``) or a Keras ``.npz``, read
  strictly (a truncated, oversized or wrong-shaped file is an error, never fewer images);
- ``offline``: no network, the stand-ins of ``digits_synthetic``.

Each gives the official (train, test) splits, checked: a wrong file stops here, never trains.
"""

from __future__ import annotations

import gzip
import os
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np

from dogs_vs_cats import paths
from dogs_vs_cats.config import DigitsDataConfig
from dogs_vs_cats.digits_io import CLASSES, SIDE, Split
from dogs_vs_cats.digits_synthetic import generated_fashion, sklearn_digits
from runtime.errors import PipelineError, one_line
from runtime.files import input_file


def load(dataset: str, cfg: DigitsDataConfig) -> tuple[Split, Split]:
    """The official (train, test) of ``dataset`` from ``digits.data.source``."""
    if cfg.source == "keras":
        return from_keras(dataset)
    if cfg.source == "files":
        return from_files(Path(cfg.files) / dataset)
    return sklearn_digits() if dataset == "mnist" else generated_fashion(cfg.offline_per_class)


def from_keras(dataset: str) -> tuple[Split, Split]:
    """The real loaders; Keras downloads each dataset once into ``~/.keras/datasets``."""
    import keras  # here, not at the top: the other sources need no TensorFlow

    loader = getattr(keras.datasets, dataset)
    try:
        (x_train, y_train), (x_test, y_test) = loader.load_data()
    except Exception as error:  # urllib, socket and Keras' own errors: all mean "could not fetch it"
        reason = one_line(error, 200)
        raise PipelineError(
            f"digits.data.source keras: cannot download {dataset} ({reason}); with no network, set "
            f"digits.data.source: files (a local copy under {paths.DIGITS_ARCHIVE_DIR}/{dataset}/) or offline"
        ) from None
    return checked(x_train, y_train, f"keras {dataset} (train)"), checked(x_test, y_test, f"keras {dataset} (test)")


IDX_FILES = {  # the original names, the same for both datasets
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def from_files(folder: Path) -> tuple[Split, Split]:
    """A local copy: one ``.npz`` in Keras' layout, or else the four original ``*-ubyte.gz`` files."""
    if not folder.is_dir():
        what = "a file, not a folder" if os.path.lexists(folder) else "not found"
        raise PipelineError(f"{folder}: {what}; put the dataset's files there (see {paths.DIGITS_ARCHIVE_DIR})")
    archives = sorted(folder.glob("*.npz"))
    if len(archives) > 1:
        raise PipelineError(f"{folder}: holds {len(archives)} .npz files; keep one")
    if archives:
        return read_npz(archives[0])
    files = find_idx(folder)
    splits = []
    for images, labels in IDX_FILES.values():
        splits.append(checked(read_idx(files[images], 3), read_idx(files[labels], 1), str(files[images])))
    return splits[0], splits[1]


NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")  # Keras' mnist.npz
MAX_IMAGES = 1_000_000  # per file; the real ones hold 60,000 and 10,000


def read_npz(path: Path) -> tuple[Split, Split]:
    """Keras' ``mnist.npz`` layout: ``x_train``, ``y_train``, ``x_test``, ``y_test``, each member's header
    checked (type, shape, at most MAX_IMAGES images) before its data is read, and the data read no further."""
    input_file(path, "put Keras' mnist.npz there, or use digits.data.source: keras")
    try:
        with zipfile.ZipFile(path) as archive:
            members = {info.filename: info for info in archive.infolist()}
            missing = [key for key in NPZ_KEYS if f"{key}.npy" not in members]
            if missing:
                raise PipelineError(f"{path}: has no array {missing[0]}; use Keras' layout ({', '.join(NPZ_KEYS)})")
            arrays = {key: _npy_member(archive, members[f"{key}.npy"], path) for key in NPZ_KEYS}
    except (OSError, ValueError, EOFError, zlib.error, zipfile.BadZipFile, RuntimeError, NotImplementedError) as error:
        # RuntimeError: an encrypted member; NotImplementedError: a compression zipfile cannot read.
        raise PipelineError(f"{path}: not a readable .npz ({one_line(error)}); use Keras' mnist.npz") from None
    return (
        checked(arrays["x_train"], arrays["y_train"], f"{path} (train)"),
        checked(arrays["x_test"], arrays["y_test"], f"{path} (test)"),
    )


NPY_HEADERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def _npy_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path) -> np.ndarray:
    """One ``.npy`` member of an ``.npz``: uint8 or integer, images N x 28 x 28 or labels N, N <= MAX_IMAGES."""
    where = f"{path} ({info.filename})"
    with archive.open(info) as stream:
        try:
            read_header = NPY_HEADERS.get(np.lib.format.read_magic(stream))
            if read_header is None:
                raise ValueError("an .npy version this does not read")
            shape, fortran, dtype = read_header(stream)  # a header of at most 10,000 bytes
        except ValueError:
            raise PipelineError(f"{where}: not a NumPy array (.npy); use Keras' mnist.npz") from None
        images = len(shape) == 3 and shape[1:] == (SIDE, SIDE) and dtype == np.uint8
        labels = len(shape) == 1 and dtype.kind in "iu" and not dtype.hasobject
        if fortran or not (images or labels) or shape[0] > MAX_IMAGES:
            raise PipelineError(
                f"{where}: holds {dtype} {shape}; expected up to {MAX_IMAGES:,} uint8 {SIDE}x{SIDE} images or labels"
            )
        size = int(np.prod(shape)) * dtype.itemsize
        data = stream.read(size + 1)  # never more than the header says, plus one byte to tell a longer member
    if len(data) != size:
        raise PipelineError(f"{where}: holds {len(data)} bytes of data, its header says {size}; download it again")
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def find_idx(folder: Path) -> dict[str, Path]:
    """Each of the four IDX files in ``folder``, under any of the names mirrors give them; every missing one
    is named in one error."""
    found, missing = {}, []
    for name in (name for pair in IDX_FILES.values() for name in pair):
        stem = name.removesuffix(".gz")
        dotted = stem.replace("-idx", ".idx")  # train-images.idx3-ubyte, as many mirrors name them
        candidates = [folder / f"{base}{gz}" for base in (stem, dotted) for gz in (".gz", "")]
        present = [path for path in candidates if os.path.lexists(path)]
        if present:
            found[name] = present[0]
        else:
            missing.append(name)
    if missing:
        raise PipelineError(
            f"{folder}: has no {', '.join(missing)} (gzipped or not, also named like train-images.idx3-ubyte); put "
            "the original files there, or use digits.data.source: keras"
        )
    return found


GZIP_MAGIC = b"\x1f\x8b"


def read_idx(path: Path, dims: int) -> np.ndarray:
    """An IDX file of unsigned bytes with ``dims`` dimensions, gzipped or not (told by its first bytes),
    checked against its header."""
    input_file(path, f"put the original {path.name} there, or use digits.data.source: keras")
    try:
        with open(path, "rb") as raw:
            gzipped = raw.read(2) == GZIP_MAGIC
        with (gzip.open if gzipped else open)(path, "rb") as stream:
            header = stream.read(4 + 4 * dims)
            if len(header) < 4 + 4 * dims or header[:2] != b"\0\0":
                raise PipelineError(f"{path}: not an IDX file (bad header); use the original {path.name}")
            kind, ndim = header[2], header[3]
            shape = struct.unpack(f">{dims}I", header[4:])
            if kind != 0x08 or ndim != dims:
                raise PipelineError(f"{path}: holds {ndim}-D data of type {kind:#04x}, not {dims}-D unsigned bytes")
            if shape[0] > MAX_IMAGES or shape[1:] not in ((), (SIDE, SIDE)):
                raise PipelineError(f"{path}: declares shape {shape}; expected up to {MAX_IMAGES} x 28 x 28")
            size = int(np.prod(shape))
            data = stream.read(size + 1)  # one byte more tells a file longer than its header says
    except (OSError, EOFError, zlib.error) as error:
        raise PipelineError(f"{path}: cannot decompress it ({error}); download it again") from None
    if len(data) != size:
        raise PipelineError(f"{path}: holds {len(data)} bytes of data, its header says {size}; download it again")
    return np.frombuffer(data, dtype=np.uint8).reshape(shape)


def checked(x: np.ndarray, y: np.ndarray, source: str) -> Split:
    """A Split, after checking shapes, types and labels: a wrong file stops here, never trains."""
    if x.ndim != 3 or x.shape[1:] != (SIDE, SIDE) or x.dtype != np.uint8:
        raise PipelineError(f"{source}: images are {x.dtype} {x.shape}; expected uint8 N x 28 x 28")
    if y.shape != (len(x),):
        raise PipelineError(f"{source}: {y.shape} labels for {len(x)} images; expected one label per image")
    if not np.issubdtype(y.dtype, np.integer) or len(y) == 0 or y.min() < 0 or y.max() >= CLASSES:
        raise PipelineError(f"{source}: labels must be whole numbers from 0 to 9")
    return Split(x, y.astype(np.uint8))
