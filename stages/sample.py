"""Stage ``sample``: draw a seeded, stratified, validated sample of the raw archive into ``data/sample/``.

Members are read straight from the zip (4,000 of 25,000 need not be unpacked). Per class, candidates are
shuffled with the seed and taken in that order; a member that is unsafe, too large, cannot be
decompressed, or is empty, not an image, truncated, undecodable (by Pillow, or in full by TensorFlow's
decoder, which training uses) or outside its mode's range is skipped and the next candidate takes its
place; a byte-identical copy of an image already taken is dropped, so no image lands in two splits.
Only a zip whose central directory cannot be read is fatal.
"""

from __future__ import annotations

from runtime.program import run, start_program

start_program(__name__)  # first: the imports below take seconds (TensorFlow's), and Ctrl-C during them ends in one line

import collections
import hashlib
import random
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from dogs_vs_cats import paths
from dogs_vs_cats.classes import CLASS_NAMES, SPLITS
from dogs_vs_cats.config import SampleConfig, load_params
from dogs_vs_cats.images import (
    SKIP_REASONS,
    BadImage,
    Photo,
    is_unsafe,
    known_reason,
    output_name,
    parse_member,
    read_member,
    to_rgb_jpeg,
)
from runtime.errors import PipelineError
from runtime.files import atomic_path, write_json
from runtime.progress import progress

MANIFEST_COLUMNS = [
    "split",
    "label",
    "path",
    "source_member",
    "sha256",
    "width",
    "height",
]


@dataclass
class Tally:
    """What the sampler saw, for ``metrics/data.json``."""

    skipped: collections.Counter[str]
    duplicates_dropped: int = 0
    candidates_read: int = 0

    def skip(self, reason: str) -> None:
        self.skipped[known_reason(reason)] += 1


def open_zip(path: Path) -> zipfile.ZipFile:
    """The zip ``download`` left at ``path``; a central directory that cannot be read is the one fatal
    archive error."""
    try:
        return zipfile.ZipFile(path)
    except FileNotFoundError:
        raise PipelineError(f"{path}: not found; run dvc repro download") from None
    except (zipfile.BadZipFile, OSError) as error:
        raise PipelineError(
            f"{path}: not a readable zip ({error}); run dvc repro -f -s download to fetch it again"
        ) from None


def candidates(names: list[str], seed: int, tally: Tally) -> dict[str, list[tuple[str, str]]]:
    """Per label, the usable-looking members as ``(member, number)``, shuffled with ``seed``."""
    by_label: dict[str, list[tuple[str, str]]] = {label: [] for label in CLASS_NAMES}
    for name in sorted(names):
        parsed = parse_member(name)
        if parsed is None:
            continue
        if is_unsafe(name):
            tally.skip("unsafe_path")
            continue
        label, number = parsed
        by_label[label].append((name, number))
    for label, members in by_label.items():
        random.Random(f"{seed}:{label}").shuffle(members)
    return by_label


def usable(
    archive: zipfile.ZipFile, pool: list[tuple[str, str]], label: str, tally: Tally, seen: set[str]
) -> Iterator[tuple[str, str, Photo]]:
    """``(member, output name, photo)`` for each candidate in ``pool`` that decodes and is new, in order.

    ``seen`` holds the sha256 of every member taken so far, across labels and splits.
    """
    names: set[str] = set()
    for member, number in pool:
        tally.candidates_read += 1
        try:
            data = read_member(archive, archive.getinfo(member))
        except BadImage as bad:
            tally.skip(bad.reason)
            continue
        digest = hashlib.sha256(data).hexdigest()
        if digest in seen:
            tally.duplicates_dropped += 1
            continue
        try:
            photo = to_rgb_jpeg(data)
        except BadImage as bad:
            tally.skip(bad.reason)
            continue
        name = output_name(label, number)
        if name in names:  # e.g. a folder archive with cat.1.jpg in two subfolders
            tally.skip("name_clash")
            continue
        seen.add(digest)
        names.add(name)
        yield member, name, photo


def draw(archive: zipfile.ZipFile, cfg: SampleConfig, seed: int, out_dir: Path) -> tuple[pd.DataFrame, Tally]:
    """Write the sample under ``out_dir``; return its manifest and what was skipped."""
    tally = Tally(skipped=collections.Counter())
    counts = cfg.counts()
    needed = sum(counts.values())
    pools = candidates(archive.namelist(), seed, tally)
    seen: set[str] = set()
    rows = []
    with progress(total=needed * len(CLASS_NAMES), desc="sampling", unit="img") as bar:
        for label in CLASS_NAMES:
            slots = [split for split, count in counts.items() for _ in range(count)]
            # zip() asks for a slot first, so no candidate is read once every slot is filled.
            taken = zip(slots, usable(archive, pools[label], label, tally, seen), strict=False)
            for split, (member, name, photo) in taken:
                relative = Path(split, label, name)
                (out_dir / relative).parent.mkdir(parents=True, exist_ok=True)
                (out_dir / relative).write_bytes(photo.data)
                digest = hashlib.sha256(photo.data).hexdigest()
                rows.append([split, label, relative.as_posix(), member, digest, photo.width, photo.height])
                bar.update()
            found = sum(row[1] == label for row in rows)
            if found < needed:
                raise PipelineError(
                    f"too few usable {label} images: sample.* asks for {needed} per class "
                    f"({', '.join(f'{s} {n}' for s, n in counts.items())}), the archive has {found} "
                    f"(skipped: {dict(sorted(tally.skipped.items())) or 'none'}, "
                    f"duplicates: {tally.duplicates_dropped}); lower sample.*_per_class"
                )
    manifest = pd.DataFrame(rows, columns=MANIFEST_COLUMNS).sort_values(["split", "label", "path"], kind="stable")
    return manifest.reset_index(drop=True), tally


def summary(manifest: pd.DataFrame, tally: Tally) -> dict:
    """The numbers of ``metrics/data.json``: images per split and class, and what was left out."""
    per_split = manifest.groupby(["split", "label"]).size()
    return {
        "images": len(manifest),
        **{split: {label: int(per_split.get((split, label), 0)) for label in CLASS_NAMES} for split in SPLITS},
        "skipped": {reason: tally.skipped.get(reason, 0) for reason in SKIP_REASONS},
        "duplicates_dropped": tally.duplicates_dropped,
        "candidates_read": tally.candidates_read,
    }


def main() -> None:
    params = load_params()
    source = paths.RAW_ARCHIVE
    with open_zip(source) as archive, atomic_path(paths.SAMPLE_DIR, replace=True) as out_dir:
        out_dir.mkdir()
        manifest, tally = draw(archive, params.sample, params.seed, out_dir)
        manifest.to_csv(out_dir / paths.MANIFEST.name, index=False, lineterminator="\n")
    metrics = summary(manifest, tally)
    write_json(paths.DATA_METRICS, metrics)
    skipped = {reason: n for reason, n in metrics["skipped"].items() if n}
    reasons = f" ({', '.join(f'{reason} {n}' for reason, n in skipped.items())})" if skipped else ""
    print(
        f"sample: {metrics['images']} images from {source}; skipped {sum(skipped.values())}{reasons}, "
        f"duplicates dropped {tally.duplicates_dropped}"
    )


if __name__ == "__main__":
    run(main, no_arguments=True)
