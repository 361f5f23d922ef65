"""Decode once: training datasets decode each JPEG on the first pass only, and feed the very same pixels."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from dogs_vs_cats import datasets, paths, training
from runtime import processes
from tools.bench import write_images

SIZE, BATCH = 24, 4


@pytest.fixture
def sample(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``train/{cat,dog}/`` with 10 generated JPEGs of varying sides (resizing is real work), as the cwd."""
    for index, side in enumerate([30, 41, 57, 64, 80]):
        write_images(tmp_path / f"s{index}", 2, side, seed=index)
        for file in (tmp_path / f"s{index}").rglob("*.jpg"):
            target = tmp_path / "train" / file.parent.name / f"{file.parent.name}.{index}{file.stem[-1]}.jpg"
            target.parent.mkdir(parents=True, exist_ok=True)
            file.rename(target)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def epoch(dataset) -> tuple[np.ndarray, np.ndarray]:
    """All images and labels of one pass, in order."""
    images, labels = zip(*[(x.numpy(), y.numpy()) for x, y in dataset], strict=True)
    return np.concatenate(images), np.concatenate(labels)


def by_content(images: np.ndarray, labels: np.ndarray) -> list[bytes]:
    """One pass as a sorted list of (pixels, label) bytes: its content, whatever the order."""
    return sorted(x.tobytes() + y.tobytes() for x, y in zip(images, labels, strict=True))


def dataset(root: Path, decode_once: bool):
    return datasets.image_dataset("train", SIZE, BATCH, root=root, decode_once=decode_once)


def test_the_pixels_are_bit_identical_and_later_passes_never_read_the_files(sample: Path) -> None:
    expected = epoch(dataset(sample, decode_once=False))
    once = dataset(sample, decode_once=True)
    assert once.file_paths == dataset(sample, decode_once=False).file_paths
    first = epoch(once)
    for file in sample.rglob("*.jpg"):
        file.unlink()  # a second pass that decoded again would fail now
    second = epoch(once)
    for got in (first, second):
        assert got[0].dtype == np.float32 and got[0].shape == (10, SIZE, SIZE, 3)
        assert got[0].tobytes() == expected[0].tobytes()
        assert np.array_equal(got[1], expected[1])


def test_each_epoch_has_its_own_order_set_by_the_seed_and_its_number_alone(sample: Path) -> None:
    content = by_content(*epoch(dataset(sample, decode_once=False)))
    images = datasets.decoded_images("train", SIZE, root=sample)
    three = list(training.shuffled_epochs(images, 10, BATCH, 7, 0, 3))  # epochs 0, 1, 2: 3 batches each

    def order(batches) -> tuple[np.ndarray, np.ndarray]:
        return np.concatenate([x.numpy() for x, _ in batches]), np.concatenate([y.numpy() for _, y in batches])

    first, second, third = (order(three[i : i + 3]) for i in (0, 3, 6))
    assert by_content(*first) == by_content(*second) == by_content(*third) == content
    assert first[0].tobytes() != second[0].tobytes()  # a new order each epoch
    # A run that starts at epoch 2 (resumed) reads what the run from epoch 0 read there.
    assert order(list(training.shuffled_epochs(images, 10, BATCH, 7, 2, 3)))[0].tobytes() == third[0].tobytes()
    assert order(list(training.shuffled_epochs(images, 10, BATCH, 8, 2, 3)))[0].tobytes() != third[0].tobytes()


def test_images_that_do_not_fit_in_memory_are_cached_under_data_cache(
    sample: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(datasets, "usable_memory", lambda: None)  # no limit known: on disk
    (sample / paths.CACHE_DIR).mkdir(parents=True)
    parent = f"{os.getppid()}-{processes.start_time(os.getppid())}"
    dead = sample / paths.CACHE_DIR / ".train.999999999-5.abc00000.tmp"  # left by a killed run: no such pid
    alive = sample / paths.CACHE_DIR / f".train.{parent}.abc00000.tmp"  # another stage, still running
    dead.mkdir()
    alive.mkdir()
    expected = epoch(dataset(sample, decode_once=False))
    once = dataset(sample, decode_once=True)
    assert epoch(once)[0].tobytes() == expected[0].tobytes()
    scratch = [p for p in (sample / paths.CACHE_DIR).iterdir() if p.name.startswith(f".train.{os.getpid()}-")]
    assert len(scratch) == 1 and any(scratch[0].iterdir())  # the cache files of this process
    assert not dead.exists() and alive.exists()
    assert epoch(once)[0].tobytes() == expected[0].tobytes()  # read back from disk
