"""Stage ``digits_data@<dataset>``: MNIST or Fashion-MNIST as uint8 arrays, split into train, validation, test.

``digits.data.source`` says where the images come from:

- ``keras``: ``keras.datasets.mnist`` / ``fashion_mnist``, downloaded once into Keras' cache;
- ``files``: a local copy under ``<digits.data.files>/<dataset>/``, the four original IDX files (gzipped or
  not, named ``train-images-idx3-ubyte.gz`` or like ``train-images.idx3-ubyte``) or a Keras ``.npz``, read
  strictly (a truncated, oversized or wrong-shaped file is an error, never fewer images);
- ``offline``: no network. MNIST becomes scikit-learn's 1,797 real 8x8 handwritten digits, upscaled to
  28x28 as MNIST centres its digits (a 20x20 box in the middle); Fashion-MNIST becomes generated
  silhouettes of its ten classes. Both are stand-ins for tests and demos, not the benchmarks.

``digits.data.validation`` training images, picked with ``seed``, become the validation split; the official
test split is written apart and only ``digits_evaluate`` reads it.
"""

from __future__ import annotations

from runtime.program import run, start_program

start_program(__name__)  # first: the imports below take seconds (TensorFlow's), and Ctrl-C during them ends in one line

import gzip
import os
import stat
import struct
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from dogs_vs_cats import paths
from dogs_vs_cats.config import DigitsDataConfig, load_params
from dogs_vs_cats.digits_io import CLASSES, SIDE, Split, dataset_arg
from runtime.errors import PipelineError, one_line
from runtime.files import atomic_path

MAX_IMAGES = 1_000_000  # per file; the real ones hold 60,000 and 10,000
GZIP_MAGIC = b"\x1f\x8b"
IDX_FILES = {  # the original names, the same for both datasets
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")  # Keras' mnist.npz
NPY_HEADERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
SKLEARN_TEST_SHARE = 0.2  # scikit-learn's digits have no official test split: a fixed one is made
OFFLINE_SEED = 0  # the offline sets' own seed, so a `seed` sweep re-splits validation, not the data


def regular_file(path: Path, fix: str) -> Path:
    """``path`` if it is a regular file; a FIFO would hang the read, a device or folder is no data."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise PipelineError(f"{path}: not found; {fix}") from None
    except OSError as error:
        raise PipelineError(f"{path}: cannot read it ({error.strerror}); {fix}") from None
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "a device or socket"
        raise PipelineError(f"{path}: {kind}, not a file; {fix}")
    return path


def read_idx(path: Path, dims: int) -> np.ndarray:
    """An IDX file of unsigned bytes with ``dims`` dimensions, gzipped or not (told by its first bytes),
    checked against its header."""
    regular_file(path, f"put the original {path.name} there, or use digits.data.source: keras")
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


def read_npz(path: Path) -> tuple[Split, Split]:
    """Keras' ``mnist.npz`` layout: ``x_train``, ``y_train``, ``x_test``, ``y_test``, each member's header
    checked (type, shape, at most MAX_IMAGES images) before its data is read, and the data read no further."""
    regular_file(path, "put Keras' mnist.npz there, or use digits.data.source: keras")
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


def checked(x: np.ndarray, y: np.ndarray, source: str) -> Split:
    """A Split, after checking shapes, types and labels: a wrong file stops here, never trains."""
    if x.ndim != 3 or x.shape[1:] != (SIDE, SIDE) or x.dtype != np.uint8:
        raise PipelineError(f"{source}: images are {x.dtype} {x.shape}; expected uint8 N x 28 x 28")
    if y.shape != (len(x),):
        raise PipelineError(f"{source}: {y.shape} labels for {len(x)} images; expected one label per image")
    if not np.issubdtype(y.dtype, np.integer) or len(y) == 0 or y.min() < 0 or y.max() >= CLASSES:
        raise PipelineError(f"{source}: labels must be whole numbers from 0 to 9")
    return Split(x, y.astype(np.uint8))


def from_files(folder: Path) -> tuple[Split, Split]:
    """A local copy: one ``.npz`` in Keras' layout, or else the four original ``*-ubyte.gz`` files."""
    if not folder.is_dir():
        raise PipelineError(f"{folder}: not found; put the dataset's files there (see {paths.DIGITS_ARCHIVE_DIR})")
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


def sklearn_digits() -> tuple[Split, Split]:
    """scikit-learn's 1,797 8x8 digits (0-16 intensities) as MNIST-like 28x28 images, with a fixed test split."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.stack([mnist_like(image) for image in digits.images])
    order = np.random.default_rng(OFFLINE_SEED).permutation(len(images))
    test = order[: round(SKLEARN_TEST_SHARE * len(images))]
    train = order[len(test) :]
    labels = digits.target.astype(np.uint8)
    return Split(images[train], labels[train]), Split(images[test], labels[test])


def mnist_like(image: np.ndarray) -> np.ndarray:
    """An 8x8 scikit-learn digit scaled to 0-255 and resized into the middle 20x20 of a 28x28 black square."""
    small = Image.fromarray(np.round(image * (255 / 16)).astype(np.uint8))
    big = np.zeros((SIDE, SIDE), dtype=np.uint8)
    big[4:24, 4:24] = np.asarray(small.resize((20, 20), Image.Resampling.BILINEAR))
    return big


def fashion_silhouette(label: int, rng: np.random.Generator) -> np.ndarray:
    """A white-on-black outline of Fashion-MNIST class ``label``, jittered in size, place and brightness."""
    image = Image.new("L", (SIDE, SIDE), 0)
    draw = ImageDraw.Draw(image)
    fill = int(rng.integers(120, 256))
    dx, dy = rng.integers(-2, 3, size=2)
    scale = rng.uniform(0.85, 1.1)

    def shape(points: list[tuple[float, float]]) -> None:
        draw.polygon([(14 + (x - 14) * scale + dx, 14 + (y - 14) * scale + dy) for x, y in points], fill=fill)

    shirt = [(9, 5), (19, 5), (25, 10), (22, 13), (20, 11), (20, 24), (8, 24), (8, 11), (6, 13), (3, 10)]
    long_sleeves = [(9, 5), (19, 5), (24, 9), (25, 23), (22, 23), (20, 12), (20, 24), (8, 24), (8, 12), (6, 23),
                    (3, 23), (4, 9)]  # fmt: skip
    outlines = {
        0: shirt,  # T-shirt/top
        1: [(10, 3), (18, 3), (19, 25), (15, 25), (14, 10), (13, 25), (9, 25)],  # Trouser
        2: long_sleeves,  # Pullover
        3: [(11, 3), (17, 3), (18, 9), (23, 25), (5, 25), (10, 9)],  # Dress
        4: [*long_sleeves[:7], (20, 26), (8, 26), *long_sleeves[8:]],  # Coat: longer
        5: [(3, 20), (25, 20), (25, 23), (3, 23), (3, 20), (8, 14), (10, 14), (6, 20), (14, 14), (16, 14), (12, 20)],
        6: [*shirt[:1], (14, 8), *shirt[1:]],  # Shirt: a collar notch
        7: [(3, 16), (14, 13), (20, 16), (25, 19), (25, 22), (3, 22)],  # Sneaker
        8: [(5, 11), (23, 11), (23, 24), (5, 24)],  # Bag
        9: [(8, 4), (16, 4), (16, 15), (25, 19), (25, 24), (8, 24)],  # Ankle boot
    }
    shape(outlines[label])
    if label == 8:  # the bag's handle
        draw.arc((9 + dx, 4 + dy, 19 + dx, 16 + dy), 180, 360, fill=fill, width=2)
    pixels = np.asarray(image, dtype=np.float32) + rng.normal(0, 12, (SIDE, SIDE))
    return np.clip(pixels, 0, 255).astype(np.uint8)


def generated_fashion(per_class: int) -> tuple[Split, Split]:
    """``per_class`` training and a sixth as many test silhouettes per class (Fashion-MNIST's 60,000 : 10,000)."""
    rng = np.random.default_rng(OFFLINE_SEED)
    splits = []
    for count in (per_class, max(1, per_class // 6)):
        labels = np.repeat(np.arange(CLASSES, dtype=np.uint8), count)
        splits.append(Split(np.stack([fashion_silhouette(int(label), rng) for label in labels]), labels))
    return splits[0], splits[1]


def load(dataset: str, cfg: DigitsDataConfig) -> tuple[Split, Split]:
    """The official (train, test) of ``dataset`` from ``digits.data.source``."""
    if cfg.source == "keras":
        return from_keras(dataset)
    if cfg.source == "files":
        return from_files(Path(cfg.files) / dataset)
    return sklearn_digits() if dataset == "mnist" else generated_fashion(cfg.offline_per_class)


def split_validation(train: Split, count: int, seed: int) -> tuple[Split, Split]:
    """``count`` training images, picked with ``seed``, held out for validation."""
    if count >= len(train.y):
        raise PipelineError(
            f"{paths.PARAMS}: digits.data.validation is {count}, but there are only {len(train.y)} training "
            "images; use fewer"
        )
    order = np.random.default_rng(seed).permutation(len(train.y))
    keep, held = np.sort(order[count:]), np.sort(order[:count])
    return Split(train.x[keep], train.y[keep]), Split(train.x[held], train.y[held])


def save(folder: Path, splits: dict[str, Split]) -> None:
    """``<folder>/<split>.npz`` with ``x`` and ``y``, all at once: an interrupted run leaves no folder."""
    with atomic_path(folder, replace=True) as tmp:
        tmp.mkdir()
        for name, split in splits.items():
            np.savez(tmp / f"{name}.npz", x=split.x, y=split.y)


def main() -> None:
    dataset = dataset_arg(sys.argv[1:], "digits_data")
    params = load_params()
    train, test = load(dataset, params.digits.data)
    train, validation = split_validation(train, params.digits.data.validation, params.seed)
    save(paths.digits_data_dir(dataset), {"train": train, "validation": validation, "test": test})
    counts = ", ".join(
        f"{name} {len(s.y)}" for name, s in (("train", train), ("validation", validation), ("test", test))
    )
    print(f"digits_data: {dataset} from {params.digits.data.source}: {counts}")


if __name__ == "__main__":
    run(main)
