"""The digits study's offline stand-ins (``digits.data.source: offline``), for tests and demos, not the benchmarks:
MNIST becomes scikit-learn's 1,797 real 8x8 handwritten digits, upscaled to 28x28 as MNIST centres its digits
(a 20x20 box in the middle); Fashion-MNIST becomes generated silhouettes of its ten classes."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from dogs_vs_cats.digits_io import CLASSES, SIDE, Split

SKLEARN_TEST_SHARE = 0.2  # scikit-learn's digits have no official test split: a fixed one is made
OFFLINE_SEED = 0  # the offline sets' own seed, so a `seed` sweep re-splits validation, not the data


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


def generated_fashion(per_class: int) -> tuple[Split, Split]:
    """``per_class`` training and a sixth as many test silhouettes per class (Fashion-MNIST's 60,000 : 10,000)."""
    rng = np.random.default_rng(OFFLINE_SEED)
    splits = []
    for count in (per_class, max(1, per_class // 6)):
        labels = np.repeat(np.arange(CLASSES, dtype=np.uint8), count)
        splits.append(Split(np.stack([fashion_silhouette(int(label), rng) for label in labels]), labels))
    return splits[0], splits[1]


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
