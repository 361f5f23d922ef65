"""The sampled images and the extracted features, as the training stages read them."""

from __future__ import annotations

import atexit
import shutil
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from PIL import Image

from dogs_vs_cats import paths
from dogs_vs_cats.classes import CLASS_NAMES
from dogs_vs_cats.memory import usable_memory
from runtime.errors import PipelineError
from runtime.files import atomic_path, npz_arrays, remove_stale_temps, temp_dir
from runtime.progress import keras_verbosity, progress
from runtime.tf_log import captured_stderr


def image_dataset(
    split: str, image_size: int, batch_size: int, root: Path = paths.SAMPLE_DIR, decode_once: bool = False
) -> tf.data.Dataset:
    """Batches of (raw RGB pixels resized to ``image_size``, label 0 cat / 1 dog) from ``<root>/<split>``, in
    the order of its ``file_paths`` (relative to ``root``). ``decode_once``: see ``decoded_images``."""
    if decode_once:
        images = decoded_images(split, image_size, root)
        files, cached_bytes, dataset = images.file_paths, images.cached_bytes, images.batch(batch_size)
    else:
        dataset = _from_directory(split, image_size, root, batch_size)
        files, cached_bytes = dataset.file_paths, 0
    dataset = dataset.prefetch(tf.data.AUTOTUNE)
    dataset.file_paths, dataset.cached_bytes = files, cached_bytes
    return dataset


def decoded_images(split: str, image_size: int, root: Path = paths.SAMPLE_DIR) -> tf.data.Dataset:
    """``image_dataset``'s images one by one, for datasets read every epoch: each JPEG is decoded and resized
    on the first pass only; later passes read the same float32 pixels from a cache (see ``_cache_file``). The
    pixels are bit for bit those of a dataset without it: the cache holds what the same decoding produced.
    Its ``cached_bytes`` says how much memory the cache takes once filled (0 on disk), for the memory check of
    the fit that reads it."""
    dataset = _from_directory(split, image_size, root, batch_size=None)
    files, nbytes = dataset.file_paths, len(dataset.file_paths) * image_size * image_size * 3 * 4
    cache = _cache_file(split, nbytes)
    dataset = dataset.cache(cache)
    dataset.file_paths, dataset.cached_bytes = files, 0 if cache else nbytes
    return dataset


def _from_directory(split: str, image_size: int, root: Path, batch_size: int | None) -> tf.data.Dataset:
    folder = root / split
    if not folder.is_dir():
        raise PipelineError(f"{folder}: not found; run dvc repro sample")
    # An absolute folder: the dataset reads files lazily, so it must not depend on the working directory.
    dataset = keras.utils.image_dataset_from_directory(
        folder.resolve(),
        labels="inferred",
        label_mode="binary",
        class_names=list(CLASS_NAMES),
        image_size=(image_size, image_size),
        batch_size=batch_size,
        shuffle=False,
        verbose=False,
    )
    dataset.file_paths = [Path(p).relative_to(root.resolve()).as_posix() for p in dataset.file_paths]
    return dataset


def training_images(image_size: int, batch_size: int) -> tuple[tf.data.Dataset, tf.data.Dataset]:
    """The training stages' images, decoded once: train one by one (``training.fit`` shuffles and batches it
    each epoch), validation in batches."""
    return (
        decoded_images("train", image_size),
        image_dataset("validation", image_size, batch_size, decode_once=True),
    )


DISK_MARGIN = 1.05  # the decoded-image cache on disk: its pixels plus TensorFlow's index files


def _cache_file(split: str, nbytes: int) -> str:
    """Where ``image_dataset`` keeps decoded pixels: ``""`` (memory) when they take at most a quarter of the
    memory this process can use (``memory.usable_memory``: a cgroup's limit too), else a scratch folder under
    ``data/cache/`` that goes when the process exits (one left by a killed run goes the next time a stage
    caches that split). Where no limit can be read (macOS), on disk."""
    usable = usable_memory()
    if usable is not None and nbytes <= usable.bytes // 4:
        return ""
    paths.CACHE_DIR.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(paths.CACHE_DIR / split)
    free = shutil.disk_usage(paths.CACHE_DIR).free
    if free < nbytes * DISK_MARGIN:
        raise PipelineError(
            f"{split}: no space for its {nbytes / 2**30:.1f} GiB of decoded images, neither in memory nor in "
            f"{paths.CACHE_DIR} ({free / 2**30:.1f} GiB free); free disk space there, or lower image.side"
        )
    scratch = temp_dir(paths.CACHE_DIR, split)
    atexit.register(shutil.rmtree, scratch, ignore_errors=True)
    print(f"{split}: {nbytes / 2**30:.1f} GiB of decoded images do not fit in memory; caching them in {scratch}")
    return str(scratch / "pixels")


def labels_of(files: list[str]) -> np.ndarray:
    """Labels (0 cat / 1 dog) of ``split/label/name`` file ids, as ``image_dataset`` infers them from folders.

    Cheaper than iterating a dataset a second time, which decodes every image again.
    """
    return np.array([CLASS_NAMES.index(Path(f).parts[1]) for f in files], dtype=np.int8)


def resized_pixels(image: Image.Image, size: int, data: bytes | None = None) -> np.ndarray:
    """Raw RGB pixels as ``image_dataset`` feeds them: resized as ``image_dataset_from_directory`` does it
    (bilinear, no crop), as float32.

    Given the file's ``data``, a plain upright JPEG (``images.is_plain_jpeg``) is decoded by TensorFlow as
    training decodes it: Pillow's decoder rounds its inverse DCT differently, up to 5 grey levels apart.
    libjpeg's lines about it, which name no file, are dropped: ``images.check_training_decodes`` judged them.
    """
    if data is not None and image.info.get("plain_jpeg"):
        with captured_stderr():
            array = tf.io.decode_jpeg(data, channels=3)
    else:
        array = np.asarray(image.convert("RGB"), dtype=np.float32)
    return tf.image.resize(array, (size, size), method="bilinear").numpy()


def predict_split(model: keras.Model, split: str, image_size: int, batch_size: int) -> Features:
    """``model``'s outputs for every image of one split, in file order, with labels and file ids."""
    dataset = image_dataset(split, image_size, batch_size)
    outputs = model.predict(dataset, verbose=keras_verbosity())
    return Features(outputs, labels_of(dataset.file_paths), np.array(dataset.file_paths))


# A feature that never fired in training has variance 0, and standardizing by it would turn the first
# non-zero value it meets in validation into thousands. Each variance is floored at this share of the mean.
VARIANCE_FLOOR = 0.01


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and floored variance of training features, for ``head.normalize``."""
    flat = features.reshape(len(features), -1)
    variance = flat.var(axis=0)
    return flat.mean(axis=0), np.maximum(variance, VARIANCE_FLOOR * variance.mean())


@dataclass(frozen=True)
class Features:
    """One split's extracted features, labels (0 cat / 1 dog) and file ids (paths under ``data/sample``)."""

    features: np.ndarray
    labels: np.ndarray
    files: np.ndarray


def write_features(
    path: Path, batches: Iterable[np.ndarray], shape: tuple[int, ...], labels: np.ndarray, files: np.ndarray
) -> None:
    """Write one split as the ``.npz`` ``load_features`` reads, atomically, streaming ``batches`` (float32
    features of ``shape[0]`` images in all, in file order) straight into it: memory holds one batch however
    large the split. It is the file ``np.savez`` writes: uncompressed members ``features``, ``labels``, ``files``.
    """
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False, "shape": shape}
    with (
        atomic_path(path, replace=True) as tmp,
        zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as archive,
    ):
        with archive.open("features.npy", "w", force_zip64=True) as member:
            np.lib.format.write_array_header_1_0(member, header)
            written = 0
            for batch in batches:
                if batch.shape[1:] != shape[1:] or written + len(batch) > shape[0]:
                    raise PipelineError(f"{path}: a batch of shape {batch.shape} does not fit features of {shape}")
                member.write(np.ascontiguousarray(batch, dtype=np.float32).data)
                written += len(batch)
            if written != shape[0]:
                raise PipelineError(f"{path}: {written} images' features written, {shape[0]} expected")
        for name, array in (("labels", labels), ("files", files)):
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asarray(array), allow_pickle=False)


def extract_split(model: keras.Model, dataset: tf.data.Dataset, path: Path, show_progress: bool = True) -> int:
    """Run ``model`` over an unshuffled ``image_dataset`` batch by batch and stream its outputs, labels and file
    ids into ``path`` (see ``write_features``), with a progress bar unless not ``show_progress``; return the number of
    images."""
    files = dataset.file_paths
    shape = (len(files), *model.output_shape[1:])
    with progress(total=len(files), desc=path.stem, unit="img", disable=not show_progress) as bar:

        def batches() -> Iterator[np.ndarray]:
            for images, _ in dataset:
                yield model.predict_on_batch(images)
                bar.update(len(images))

        write_features(path, batches(), shape, labels_of(files), np.array(files))
    return len(files)


def load_features(split: str) -> Features:
    """Read ``data/features/<split>.npz``."""
    arrays = npz_arrays(
        paths.features_file(split), ("features", "labels", "files"), "run dvc repro -f -s extract_features"
    )
    return Features(*arrays)
