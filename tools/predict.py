"""``python -m tools.predict PATH...``: classify your own photos with a trained model.

PATHs are files, folders (searched recursively for images) or globs. Each image gets one line: path,
``cat``/``dog`` and the probability of that label. Preprocessing comes from the saved model; here images
are only decoded (any mode, EXIF orientation applied) and resized as in training. An unreadable file (a JPEG
that TensorFlow's decoder, training's, refuses among them) gets one error line on stderr, the others are
still classified, and the exit status is then 1.

``--imagenet`` instead runs the pretrained network with its ImageNet top (``features.base`` and
``features.weights`` from params.yaml) and prints each image's top-5 ImageNet classes; ``--base
vgg16,resnet50,xception`` runs several and prints their guesses side by side: any network of
``keras.applications`` by its name in lower case, each at its own input side and with its own preprocessing
(``--imagenet --base list`` lists them). The class names work offline: when Keras cannot download its class
index, the shipped ``tools/imagenet_classes.tsv`` names them.

``--explain OUT_DIR`` also writes each photo with its Grad-CAM heatmap over it (where the model looked), as
``<name>.gradcam.png``; an overlay already there is replaced only with ``--force``.

A digits model (``models/digits/<dataset>.keras``) takes any image too: it is made grayscale, inverted if
its background is light (the datasets are light on black) and resized to 28x28; each line says which.
"""

from __future__ import annotations

from runtime.program import run, start_program

start_program(__name__)  # first: the imports below take seconds (TensorFlow's), and Ctrl-C during them ends in one line

import argparse
import contextlib
import csv
import glob
import json
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TextIO

import keras
import numpy as np
from PIL import Image

from dogs_vs_cats import gradcam, paths
from dogs_vs_cats.classes import CLASS_NAMES, DIGITS_CLASS_NAMES, predicted_labels
from dogs_vs_cats.config import FeaturesConfig, load_params
from dogs_vs_cats.costs import precision_of, takes_images
from dogs_vs_cats.datasets import resized_pixels
from dogs_vs_cats.digits_io import CLASSES, SIDE
from dogs_vs_cats.images import BadImage, check_training_decodes, is_high_depth, read_file, read_image
from dogs_vs_cats.memory import check_fits
from dogs_vs_cats.models import (
    IMAGENET_NETWORKS,
    build_imagenet_classifier,
    load_saved,
    preprocess_mode,
)
from runtime.errors import PipelineError
from runtime.files import atomic_path, output_dir, replaceable

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
TOP = 5


def expand(arguments: Iterable[str]) -> tuple[list[Path], list[str]]:
    """The image files that ``arguments`` name, each once, and one error per argument that names none.

    Folders are searched recursively; a linked folder is entered once at most, so a link loop ends.
    """
    files: list[Path] = []
    errors: list[str] = []
    seen: set[Path] = set()
    for argument in arguments:
        found: list[Path] = []
        matches = _matches(argument)
        errors_before = len(errors)
        for match in matches:
            if match.is_dir():
                found += _images_under(match, errors)
            else:
                found.append(match)  # named directly: read whatever it is, and say why it cannot be read
        if not found and len(errors) == errors_before:
            errors.append(f"{argument}: {'no image files there' if matches else 'no such file, folder or glob match'}")
        for file in found:
            real = file.resolve()
            if real not in seen:
                seen.add(real)
                files.append(file)
    return files, errors


def _matches(argument: str) -> list[Path]:
    """What one argument names: itself, or the paths its glob matches (``**`` never enters a linked folder)."""
    if not glob.has_magic(argument):
        return [Path(argument)] if os.path.lexists(argument) else []
    parts = Path(argument).parts
    fixed = next(i for i, part in enumerate(parts) if glob.has_magic(part))
    root = Path(*parts[:fixed]) if fixed else Path()
    return sorted(root.glob(str(Path(*parts[fixed:])))) if root.is_dir() else []


def _images_under(folder: Path, errors: list[str]) -> list[Path]:
    """Image files under ``folder``, sorted; a linked folder is entered only if its target was not seen yet."""
    found: list[Path] = []
    visited: set[str] = set()

    def unreadable(error: OSError) -> None:
        errors.append(f"{error.filename}: cannot read folder ({error.strerror})")

    for root, dirs, names in os.walk(folder, onerror=unreadable, followlinks=True):
        real = os.path.realpath(root)
        if real in visited:
            dirs[:] = []
            continue
        visited.add(real)
        dirs[:] = sorted(d for d in dirs if os.path.realpath(os.path.join(root, d)) not in visited)
        found += [Path(root, name) for name in sorted(names) if Path(name).suffix.lower() in IMAGE_SUFFIXES]
    return found


def readable_images(files: list[Path], errors: list[str]) -> Iterator[tuple[Path, Image.Image, bytes]]:
    """Each file decoded (upright, any mode), with its bytes, skipping those that cannot be: each adds a line
    to ``errors``."""
    for file in files:
        try:
            data = read_file(file)  # regular files only, at most MAX_FILE_BYTES
            image = read_image(data)
            if image.info["plain_jpeg"]:  # resized_pixels decodes it with TensorFlow, as training does
                check_training_decodes(data)
            yield file, image, data
        except BadImage as bad:
            errors.append(f"{file}: cannot read image ({bad.reason.replace('_', ' ')})")
        except OSError as error:
            errors.append(f"{file}: cannot read file ({error.strerror or error})")


def load_batches(files: list[Path], size: int, batch_size: int, errors: list[str]) -> Iterator[tuple]:
    """Batches of (readable files, their pixels); an unreadable file adds a line to ``errors``."""
    batch_files, batch_pixels = [], []
    for file, image, data in readable_images(files, errors):
        batch_files.append(file)
        batch_pixels.append(resized_pixels(image, size, data))
        if len(batch_files) == batch_size:
            yield batch_files, np.stack(batch_pixels)
            batch_files, batch_pixels = [], []
    if batch_files:
        yield batch_files, np.stack(batch_pixels)


def classify(
    model: keras.Model,
    files: list[Path],
    threshold: float,
    batch_size: int,
    errors: list[str],
    overlays: dict[Path, Path] | None = None,
):
    """One row per readable image: path, label, P(label), P(dog); with ``overlays`` (see ``overlay_paths``),
    each image's Grad-CAM overlay is written where it says."""
    check_fits(model, min(batch_size, len(files)) or 1, "image.batch_size", "predicting", training=False)
    rows = []
    for batch_files, pixels in load_batches(files, model.input_shape[1], batch_size, errors):
        dogs = model.predict(pixels, batch_size=batch_size, verbose=0).reshape(-1)
        if overlays is not None:
            maps, _ = gradcam.heatmaps(model, pixels, threshold)
            for file, heatmap in zip(batch_files, maps, strict=True):
                photo = read_image(read_file(file))  # the photo's own shape, not the model's square
                photo.thumbnail((OVERLAY_SIDE, OVERLAY_SIDE))
                with atomic_path(overlays[file], replace=True) as tmp:  # overlay_paths checked what may go
                    gradcam.overlay_on(photo, heatmap).save(tmp, format="PNG")
        for file, dog, labelled in zip(batch_files, dogs, predicted_labels(dogs, threshold), strict=True):
            label = CLASS_NAMES[labelled]
            rows.append(
                {
                    "path": str(file),
                    "label": label,
                    "probability": round(float(dog if label == "dog" else 1 - dog), 6),
                    "dog_probability": round(float(dog), 6),
                }
            )
    return rows


OVERLAY_SUFFIX = ".gradcam.png"
OVERLAY_SIDE = 1024  # pixels: an overlay's longest side at most (a 12 MP photo's would be 36 MB of PNG)


def overlay_paths(files: list[Path], out_dir: Path, force: bool) -> dict[Path, Path]:
    """Where ``--explain`` writes each photo's overlay: ``<stem>.gradcam.png`` in ``out_dir``, and
    ``<stem>-2.gradcam.png``... for more photos of one name. Checked before any work, so the photos' own folder
    is a fine ``out_dir``: a file of that name is replaced only with ``force``, a folder never."""
    output_dir(out_dir, option="--explain")
    targets: dict[Path, Path] = {}
    taken: set[str] = set()
    for file in files:
        target = out_dir / f"{_free_name(file.stem, taken)}{OVERLAY_SUFFIX}"
        replaceable(target, force=force, option="--explain")
        targets[file] = target
    return targets


def _free_name(stem: str, taken: set[str]) -> str:
    """``stem``, or ``stem-2``, ``stem-3``... if taken already; then marks it taken."""
    name, n = stem, 1
    while name in taken:
        n += 1
        name = f"{stem}-{n}"
    taken.add(name)
    return name


def is_digits_model(model: keras.Model) -> bool:
    """A digits study model: 28x28 grayscale in, ten classes out."""
    return tuple(model.input_shape[1:]) == (SIDE, SIDE, 1) and tuple(model.output_shape[1:]) == (CLASSES,)


def digits_pixels(image: Image.Image) -> tuple[np.ndarray, str]:
    """An image as the digits models take it (28x28, white on black, 0-255), and what was done to it."""
    source = image.info.get("source_mode", image.mode)  # before read_image made it RGB
    if is_high_depth(source):
        done = [f"{'float' if source == 'F' else '16-bit'} ({source}) scaled to 8-bit grayscale"]
    else:
        done = [] if source in ("L", "1") else [f"{source} to grayscale"]
    gray = np.asarray(image.convert("L"), dtype=np.float32)
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    if border.mean() > 127:  # dark ink on light paper: MNIST and Fashion-MNIST are light on black
        gray = 255 - gray
        done.append("inverted (light background)")
    if gray.shape != (SIDE, SIDE):
        done.append(f"resized {gray.shape[1]}x{gray.shape[0]} to {SIDE}x{SIDE}")
        gray = np.asarray(Image.fromarray(gray).resize((SIDE, SIDE), Image.Resampling.BILINEAR))
    return gray[..., np.newaxis], ", ".join(done) or "as is"


def classify_digits(model: keras.Model, model_path: Path, files: list[Path], errors: list[str]) -> list[dict]:
    """One row per readable image: path, class name, its probability, and how the image was converted.

    The class names follow the model's file name (``fashion_mnist.keras``: Fashion-MNIST's), else digits.
    """
    names = DIGITS_CLASS_NAMES.get(model_path.stem, DIGITS_CLASS_NAMES["mnist"])
    read = [(file, *digits_pixels(image)) for file, image, _ in readable_images(files, errors)]
    if not read:
        return []
    # 28x28 images are small: one predict call for all of them, not one per image.
    probabilities = model.predict(np.stack([pixels for _, pixels, _ in read]), verbose=0)
    rows = []
    for (file, _, done), row in zip(read, probabilities, strict=True):
        best = int(row.argmax())
        rows.append(
            {"path": str(file), "label": names[best], "probability": round(float(row[best]), 6), "converted": done}
        )
    return rows


IMAGENET_CLASSES = Path(__file__).with_name("imagenet_classes.tsv")  # shipped: works offline


def shipped_imagenet_classes() -> list[tuple[str, str]]:
    """The 1,000 ImageNet classes as ``(WordNet id, name)`` in Keras' index order, from the shipped file."""
    rows = [line.split("\t") for line in IMAGENET_CLASSES.read_text().splitlines() if not line.startswith("#")]
    return [(wnid, name) for _, wnid, name in rows]


def imagenet_names(probabilities: np.ndarray) -> list[list[tuple[str, str, float]]]:
    """Top-5 ``(class id, name, probability)`` per row: Keras' class index when it has it or can download it,
    else the copy shipped in ``tools/imagenet_classes.tsv`` (the same ids and names)."""
    try:
        return keras.applications.imagenet_utils.decode_predictions(probabilities, top=TOP)
    except Exception as error:  # the class index is a download: offline without a cache it fails
        if "URL fetch failure" not in str(error):
            raise
    print(f"note: Keras cannot download ImageNet's class index; using {IMAGENET_CLASSES.name}", file=sys.stderr)
    classes = shipped_imagenet_classes()
    top = np.argsort(-probabilities, axis=1)[:, :TOP]
    return [[(*classes[i], float(row[i])) for i in indices] for row, indices in zip(probabilities, top, strict=True)]


def classify_imagenet(bases: list[str], weights: str, files: list[Path], batch_size: int, errors: list[str]):
    """One row per readable image, base and top-5 rank: path, base, rank, class id, name, probability."""
    if weights == "none":
        print("note: features.weights is none: the network's weights are random, so are its classes", file=sys.stderr)
    rows = []
    for index, base in enumerate(bases):
        model = build_imagenet_classifier(base, weights)
        batch = min(batch_size, len(files)) or 1
        check_fits(model, batch, "image.batch_size", f"predicting with {base}", training=False)
        read: list[Path] = []
        outputs = []
        # Unreadable files are reported once, while the first base reads them.
        for batch_files, pixels in load_batches(files, model.input_shape[1], batch_size, errors if index == 0 else []):
            read += batch_files
            outputs.append(model.predict(pixels, batch_size=batch_size, verbose=0))
        if not read:
            return []
        for file, top in zip(read, imagenet_names(np.concatenate(outputs)), strict=True):
            for rank, (class_id, name, probability) in enumerate(top, start=1):
                rows.append(
                    {
                        "path": str(file),
                        "base": base,
                        "rank": rank,
                        "class_id": class_id,
                        "name": name,
                        "probability": round(float(probability), 6),
                    }
                )
    return rows


def side_by_side(rows: list[dict], out: TextIO) -> None:
    """ImageNet rows as one block per photo: a line per rank, the bases' guesses in columns."""
    bases = list(dict.fromkeys(row["base"] for row in rows))
    cells = {(r["path"], r["base"], r["rank"]): f"{r['name']} ({r['probability']:.3f})" for r in rows}
    width = max(len(cell) for cell in cells.values()) + 2
    for path in dict.fromkeys(row["path"] for row in rows):
        out.write(path + "\n" + "  rank  " + "".join(f"{base:<{width}}" for base in bases).rstrip() + "\n")
        for rank in range(1, TOP + 1):
            guesses = "".join(f"{cells.get((path, base, rank), '-'):<{width}}" for base in bases)
            out.write(f"  {rank:<6}{guesses}".rstrip() + "\n")


def write(rows: list[dict], fmt: str, out: TextIO) -> None:
    """Print ``rows`` as tab-separated text, CSV or JSON."""
    if fmt == "json":
        json.dump(rows, out, indent=2)
        out.write("\n")
    elif fmt == "csv":
        if rows:
            writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
    elif rows and "base" in rows[0]:
        side_by_side(rows, out)
    else:
        for row in rows:
            shown = [v for k, v in row.items() if k != "dog_probability"]
            out.write("\t".join(f"{v:.4f}" if isinstance(v, float) else str(v) for v in shown) + "\n")


LIST = "list"  # --base list: the networks --imagenet can run
PREPROCESSING = {  # ImagenetPreprocess's modes, as --base list describes them
    "caffe": "caffe: RGB to BGR, minus ImageNet's mean",
    "tf": "tf: scaled to -1..1",
    "torch": "torch: scaled to 0..1, then ImageNet's mean and standard deviation",
    "none": "inside the network: raw 0-255 pixels",
}


def write_networks(out: TextIO) -> None:
    """``--base list``: each network ``--imagenet`` can run, its input side and its preprocessing."""
    out.write(f"{'network':<20}{'input':<10}preprocessing\n")
    for name, network in IMAGENET_NETWORKS.items():
        side = f"{network.side}x{network.side}"
        out.write(f"{name:<20}{side:<10}{PREPROCESSING[preprocess_mode(network.preprocess_input)]}\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tools.predict", description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", metavar="PATH", help="image files, folders or globs")
    parser.add_argument("--model", type=Path, default=paths.FINETUNED_MODEL, help="a saved image model")
    parser.add_argument("--format", choices=("text", "csv", "json"), default="text")
    parser.add_argument("--imagenet", action="store_true", help="top-5 ImageNet classes from a pretrained network")
    parser.add_argument(
        "--explain",
        type=Path,
        metavar="OUT_DIR",
        help="write a Grad-CAM overlay <name>.gradcam.png per photo into OUT_DIR",
    )
    parser.add_argument("--force", action="store_true", help="with --explain: replace overlays written before")
    parser.add_argument(
        "--base",
        metavar="NAMES",
        help="with --imagenet: keras.applications networks side by side, lower-case and comma-separated, e.g. "
        f"vgg16,resnet101v2,convnexttiny (default features.base); --base {LIST} shows every name",
    )
    args = parser.parse_args(argv)
    if not args.paths and args.base != LIST:
        parser.error("the following arguments are required: PATH")  # argparse's words: only --base list needs none
    return args


def imagenet_bases(option: str | None, cfg: FeaturesConfig) -> list[str]:
    """The networks ``--base`` names (default ``features.base``), checked."""
    if option is None:
        return [cfg.base]
    # Keras's names in any case (VGG16), each network once however often it is named.
    bases = list(dict.fromkeys(base.strip().lower() for base in option.split(",") if base.strip()))
    unknown = [base for base in bases if base not in IMAGENET_NETWORKS]
    if unknown or not bases:
        raise PipelineError(
            f"--base {option}: unknown network {unknown[0] if unknown else ''!r}; "
            f"python -m tools.predict --imagenet --base {LIST} lists the {len(IMAGENET_NETWORKS)} there are"
        )
    if bases != [cfg.base] and cfg.weights not in ("imagenet", "none"):
        raise PipelineError(f"--base {option}: features.weights is a file for {cfg.base}; use imagenet or none")
    return bases


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.base is not None and not args.imagenet:
        raise PipelineError("--base chooses the networks of --imagenet; add --imagenet, or leave --base out")
    if args.base == LIST:
        write_networks(sys.stdout)
        return
    params = load_params()
    bases = imagenet_bases(args.base, params.features) if args.imagenet else []  # before any photo is read
    files, errors = expand(args.paths)
    batch_size = params.image.batch_size
    results = sys.stdout
    # Keras prints downloads and progress to stdout; keep stdout for results only, so csv/json parse.
    with contextlib.redirect_stdout(sys.stderr):
        if args.imagenet and args.explain:
            raise PipelineError("--explain works with a cat/dog model, not with --imagenet")
        overlays = overlay_paths(files, args.explain, args.force) if args.explain else None
        if args.imagenet:
            rows = classify_imagenet(bases, params.features.weights, files, batch_size, errors)
        else:
            model = load_saved(args.model)
            print(f"predict: {args.model} computes in {precision_of(model)}, as it was trained", file=sys.stderr)
            if args.explain and (is_digits_model(model) or not takes_images(model)):
                raise PipelineError(
                    f"--explain: {args.model} is not a cat/dog image model; use {paths.FINETUNED_MODEL}"
                )
            if is_digits_model(model):
                rows = classify_digits(model, args.model, files, errors)
            elif not takes_images(model):
                raise PipelineError(
                    f"{args.model} takes {model.input_shape[1:]} features, not images; use --model "
                    f"{paths.FINETUNED_MODEL} or {paths.BASELINE_MODEL}"
                )
            else:
                rows = classify(model, files, params.evaluate.threshold, batch_size, errors, overlays)
                if args.explain:
                    print(f"predict: Grad-CAM overlays of {len(rows)} photos in {args.explain}", file=sys.stderr)
    write(rows, args.format, results)
    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    if not rows and not errors:
        print("error: no images to classify", file=sys.stderr)
    if errors or not rows:
        sys.exit(1)


if __name__ == "__main__":
    run(main)
