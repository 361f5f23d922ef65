"""What both studies' evaluations share: the log loss, per-class accuracy, the predictions table with class
names, and the gallery sheet of the most confidently wrong (or right) test images."""

from __future__ import annotations

import numpy as np
import pandas as pd
import sklearn.metrics as skm
from PIL import Image, ImageDraw, ImageFont, ImageOps

LOG_LOSS_EPS = 1e-7  # Keras' epsilon: a model that outputs exactly 0 or 1 still has a finite log loss
HEADING = 20  # gallery heading band, pixels
MARGIN = 4  # gallery text inset and the gap between tiles, pixels
FONT_SIZE = 11
LINE = 13  # pixels a caption line takes at FONT_SIZE


def caption_height(captions: list[str]) -> int:
    """Pixels under the tiles for the longest of ``captions`` (lines of ``LINE`` pixels, a margin below)."""
    return max((text.count("\n") + 1 for text in captions), default=0) * LINE + MARGIN


def log_loss(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Mean cross-entropy of class ``probabilities`` (N x K) against integer ``labels``, each probability
    clipped to ``LOG_LOSS_EPS`` from 0 and 1 and each row renormalized."""
    clipped = np.clip(probabilities, LOG_LOSS_EPS, 1 - LOG_LOSS_EPS)
    classes = list(range(probabilities.shape[1]))
    return float(skm.log_loss(labels, clipped / clipped.sum(axis=1, keepdims=True), labels=classes))


def per_class_accuracy(labels: np.ndarray, predicted: np.ndarray, names: tuple[str, ...]) -> dict[str, float | None]:
    """Per class name, the share of its test images predicted as it; None for a class with no test image."""
    return {
        name: float((predicted[labels == k] == k).mean()) if (labels == k).any() else None
        for k, name in enumerate(names)
    }


def predictions_table(
    ids: pd.Series, labels: np.ndarray, predicted: np.ndarray, names: tuple[str, ...], score: pd.Series
) -> pd.DataFrame:
    """One row per test image: its ``ids`` (a named Series: ``file``, ``index``), ``label``, the ``score``
    (named too, rounded to 6 places) and ``predicted``, with class names (the confusion plot's axes), sorted by id."""
    named = np.array(names)
    table = pd.DataFrame(
        {
            ids.name: ids.to_numpy(),
            "label": named[np.asarray(labels, dtype=int)],
            score.name: score.to_numpy(dtype=float).round(6),
            "predicted": named[np.asarray(predicted, dtype=int)],
        }
    )
    return table.sort_values(ids.name).reset_index(drop=True)


def most_confident(rows: pd.DataFrame, confidence: pd.Series, size: int, by_class: bool = False) -> pd.DataFrame:
    """The ``size`` rows of highest ``confidence``, most confident first; ties in table order (sorted by id).
    ``by_class``: the classes take turns (each one's most confident, then each one's next...), so a strip of
    right answers shows every class, not only the one the model is surest of."""
    ordered = rows.assign(_confidence=confidence, _order=np.arange(len(rows)))
    ordered = ordered.sort_values(["_confidence", "_order"], ascending=[False, True])
    if by_class:
        ordered = ordered.assign(_turn=ordered.groupby("label").cumcount())
        ordered = ordered.sort_values(["_turn", "_confidence", "_order"], ascending=[True, False, True])
        ordered = ordered.drop(columns="_turn")
    return ordered.drop(columns=["_confidence", "_order"]).head(size)


def gallery_sheet(
    title: str,
    columns: list[list[Image.Image]],
    captions: list[str],
    tile: int,
    right: bool = False,
    note: str = "",
) -> Image.Image:
    """A strip of the most confidently wrong (``right``: right) test images under a heading that always fits
    (``note`` ends it): each column's tiles stacked, fitted into ``tile`` pixels, and its caption under them
    (``caption_height``). No columns: a one-line sheet that says so."""
    font = ImageFont.load_default(size=FONT_SIZE)
    word = "right" if right else "wrong"
    if not columns:
        heading = f"{title}: no {'correctly ' if right else 'mis'}classified test images"
    else:
        heading = f"{title}: the {len(columns)} most confidently {word} test image{'s' * (len(columns) > 1)}"
        heading += note
    rows, caption = max(map(len, columns), default=0), caption_height(captions)
    width = max(len(columns) * (tile + MARGIN) - MARGIN, int(font.getlength(heading)) + 2 * MARGIN)
    sheet = Image.new("RGB", (width, HEADING + (rows * tile + caption if columns else 0)), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((MARGIN, MARGIN), heading, fill="black", font=font)
    for index, (tiles, text) in enumerate(zip(columns, captions, strict=True)):
        x = index * (tile + MARGIN)
        for level, image in enumerate(tiles):
            thumb = ImageOps.contain(image.convert("RGB"), (tile, tile))
            top = HEADING + level * tile
            sheet.paste(thumb, (x + (tile - thumb.width) // 2, top + (tile - thumb.height) // 2))
        draw.multiline_text((x + MARGIN, HEADING + rows * tile + 2), text, fill="black", font=font, spacing=1)
    return sheet
