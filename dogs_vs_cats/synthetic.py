"""Synthetic cats and dogs in Kaggle's ``train.zip`` layout, for offline runs and tests.

The classes differ only in what a convnet sees: cats are round faces with pointed ears and horizontal
stripes; dogs are square faces with hanging ears and vertical stripes. Colour, brightness, position,
size and aspect ratio are drawn from the same ranges for both, so no global statistic of the pixels
(mean colour, contrast) tells them apart: ``tests/unit/test_synthetic.py`` checks that a nearest-mean
classifier stays near chance.
"""

from __future__ import annotations

import colorsys
import io
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from dogs_vs_cats.classes import CLASS_NAMES

ZIP_DATE = (
    2013,
    9,
    25,
    0,
    0,
    0,
)  # fixed member timestamps: the same seed gives the same bytes
JPEG_QUALITY = 90


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    hue = rng.uniform(0.0, 1.0)
    r, g, b = colorsys.hsv_to_rgb(hue, rng.uniform(0.6, 1.0), rng.uniform(0.7, 1.0))
    return int(r * 255), int(g * 255), int(b * 255)


def draw_animal(label: str, size: int, rng: np.random.Generator) -> Image.Image:
    """One synthetic photo of a ``cat`` or a ``dog``, about ``size`` pixels on a side."""
    width = int(size * rng.uniform(0.8, 1.25))
    height = int(size * rng.uniform(0.8, 1.25))
    noise = rng.normal(rng.uniform(30, 110), 25, (height, width, 3)).clip(0, 255).astype(np.uint8)
    image = Image.fromarray(noise, "RGB")
    draw = ImageDraw.Draw(image)

    side = min(width, height) * rng.uniform(0.6, 0.8)
    cx = rng.uniform(side / 2, width - side / 2)
    cy = rng.uniform(side / 2, height - side / 2)
    left, top, right, bottom = (
        cx - side / 2,
        cy - side / 2 + side * 0.15,
        cx + side / 2,
        cy + side / 2,
    )
    fur = _colour(rng)
    mark = tuple(int(c * 0.4) for c in fur)
    step = max(3, int(side / 4))

    if label == "cat":
        ear = side * 0.35
        draw.polygon(
            [(left, top + ear * 0.3), (left + ear * 0.2, top - ear), (left + ear, top)],
            fill=fur,
        )
        draw.polygon(
            [
                (right, top + ear * 0.3),
                (right - ear * 0.2, top - ear),
                (right - ear, top),
            ],
            fill=fur,
        )
        draw.ellipse([left, top, right, bottom], fill=fur)
        for y in range(int(top) + step // 2, int(bottom), step):
            draw.line(
                [(left + side * 0.1, y), (right - side * 0.1, y)],
                fill=mark,
                width=max(1, step // 2),
            )
    else:
        draw.rounded_rectangle([left, top, right, bottom], radius=side * 0.12, fill=fur)
        ear_w, ear_h = side * 0.22, side * 0.55
        draw.ellipse([left - ear_w, top, left + ear_w * 0.4, top + ear_h], fill=fur)
        draw.ellipse([right - ear_w * 0.4, top, right + ear_w, top + ear_h], fill=fur)
        for x in range(int(left) + step // 2, int(right), step):
            draw.line(
                [(x, top + side * 0.1), (x, bottom - side * 0.1)],
                fill=mark,
                width=max(1, step // 2),
            )
    eye = max(1, side * 0.06)
    for ex in (cx - side * 0.18, cx + side * 0.18):
        draw.ellipse([ex - eye, cy - eye, ex + eye, cy + eye], fill=(20, 20, 20))
    return image


def write_train_zip(
    target: Path,
    per_class: int,
    size: int,
    seed: int,
    progress: Callable[[int], None] | None = None,
) -> None:
    """Write a ``train.zip`` holding ``train/cat.N.jpg`` and ``train/dog.N.jpg``, ``per_class`` of each."""
    with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr(zipfile.ZipInfo("train/", ZIP_DATE), b"")
        for label_index, label in enumerate(CLASS_NAMES):
            for number in range(per_class):
                rng = np.random.default_rng([seed, label_index, number])
                buffer = io.BytesIO()
                draw_animal(label, size, rng).save(buffer, format="JPEG", quality=JPEG_QUALITY)
                archive.writestr(
                    zipfile.ZipInfo(f"train/{label}.{number}.jpg", ZIP_DATE),
                    buffer.getvalue(),
                )
                if progress:
                    progress(1)
