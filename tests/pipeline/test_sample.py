"""The sample stage: exact, seeded, stratified counts of clean RGB images, with what was skipped counted."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dogs_vs_cats import images, synthetic
from dogs_vs_cats.classes import SPLITS
from runtime.errors import PipelineError
from stages import download, sample
from tests.conftest import damaged_jpeg, image_bytes, kaggle_members, make_zip, run_stage, truncated_jpeg, write_params

COUNTS = {"sample.train_per_class": 4, "sample.validation_per_class": 2, "sample.test_per_class": 2}


def _raw(workdir: Path, members: dict[str, bytes]) -> None:
    (workdir / "data/raw").mkdir(parents=True, exist_ok=True)
    make_zip(workdir / "data/raw/train.zip", members)


def _manifest(workdir: Path) -> pd.DataFrame:
    return pd.read_csv(workdir / "data/sample/manifest.csv")


def test_counts_are_exact_and_files_match_the_manifest(workdir: Path) -> None:
    download.main()
    sample.main()
    manifest = _manifest(workdir)
    assert list(manifest.columns) == ["split", "label", "path", "source_member", "sha256", "width", "height"]
    assert manifest.groupby(["split", "label"]).size().to_dict() == {
        (split, label): n for split, n in (("test", 8), ("train", 16), ("validation", 8)) for label in ("cat", "dog")
    }
    for row in manifest.itertuples():
        file = workdir / "data/sample" / row.path
        assert hashlib.sha256(file.read_bytes()).hexdigest() == row.sha256
        with Image.open(file) as image:
            assert (image.mode, image.size) == ("RGB", (row.width, row.height))
        assert row.source_member == f"train/{Path(row.path).name}"
        assert Path(row.path).parts[:2] == (row.split, row.label)
    assert manifest["source_member"].is_unique
    metrics = json.loads((workdir / "metrics/data.json").read_text())
    assert metrics["images"] == 64
    assert metrics["train"] == {"cat": 16, "dog": 16}
    assert metrics["test"] == {"cat": 8, "dog": 8}
    assert sum(metrics["skipped"].values()) == 0


def test_same_seed_same_bytes_other_seed_other_sample(workdir: Path) -> None:
    download.main()
    sample.main()
    first = (workdir / "data/sample/manifest.csv").read_bytes()
    shutil.rmtree(workdir / "data/sample")
    sample.main()
    assert (workdir / "data/sample/manifest.csv").read_bytes() == first
    params = (workdir / "params.yaml").read_text().replace("seed: 42", "seed: 43")
    (workdir / "params.yaml").write_text(params)
    sample.main()
    assert (workdir / "data/sample/manifest.csv").read_bytes() != first


def test_bad_members_are_skipped_replaced_and_counted(workdir: Path) -> None:
    write_params(workdir / "params.yaml", COUNTS)
    members = kaggle_members(8)
    cmyk, gray, png = image_bytes(mode="CMYK"), image_bytes(mode="L"), image_bytes("PNG", "RGBA")
    members |= {
        "train/cat.100.jpg": b"",
        "train/cat.101.jpg": b"<html>Forbidden</html>",
        "train/dog.102.jpg": image_bytes(size=(300, 200))[:300],
        "../cat.103.jpg": image_bytes(),
        "/abs/dog.104.jpg": image_bytes(),
        "train/cat.105.jpg": cmyk,
        "train/dog.106.jpg": gray,
        "train/dog.107.jpg": png,
        "train/readme.txt": b"ignored",
    }
    _raw(workdir, members)
    sample.main()
    manifest = _manifest(workdir)
    assert len(manifest) == 16
    assert manifest.groupby("label").size().to_dict() == {"cat": 8, "dog": 8}
    used = set(manifest["source_member"])
    assert not used & {"train/cat.100.jpg", "train/cat.101.jpg", "train/dog.102.jpg", "../cat.103.jpg"}
    assert not any(".." in p or p.startswith("/") for p in manifest["path"])
    assert not list(workdir.glob("cat.103.jpg")) and not (workdir / "data/cat.103.jpg").exists()
    metrics = json.loads((workdir / "metrics/data.json").read_text())
    assert metrics["skipped"]["unsafe_path"] == 2
    # Which bad members the seeded order reaches before the counts are met varies; each one reached is counted.
    reached = metrics["candidates_read"] - len(manifest) - metrics["duplicates_dropped"]
    assert reached == metrics["skipped"]["empty"] + metrics["skipped"]["not_image"] + metrics["skipped"]["truncated"]
    for row in manifest.itertuples():
        with Image.open(workdir / "data/sample" / row.path) as image:
            assert (image.format, image.mode) == ("JPEG", "RGB")


def test_every_bad_member_is_counted_when_all_are_needed(workdir: Path) -> None:
    members = kaggle_members(3)
    members |= {"train/cat.50.jpg": b"", "train/cat.51.jpg": b"text", "train/cat.52.jpg": image_bytes()[:300]}
    _raw(workdir, members)
    # Asking for more cats than are good forces the sampler through all three bad ones.
    write_params(
        workdir / "params.yaml",
        {"sample.train_per_class": 1, "sample.validation_per_class": 1, "sample.test_per_class": 2},
    )
    with pytest.raises(PipelineError) as error:
        sample.main()
    assert str(error.value).startswith("too few usable cat images: sample.* asks for 4 per class")
    assert "the archive has 3" in str(error.value)
    assert "(skipped: {'empty': 1, 'not_image': 1, 'truncated': 1}, duplicates: 0)" in str(error.value)


# Five usable images per class, all of them asked for: the sampler reads every candidate.
ALL_OF_FIVE = {"sample.train_per_class": 3, "sample.validation_per_class": 1, "sample.test_per_class": 1}


def test_what_sample_admits_training_decodes(workdir: Path) -> None:
    # Pillow decodes these two in full; TensorFlow's decoder, the one training uses, refuses them. The third
    # both decoders read, filling its missing rows with gray.
    damaged = {"train/cat.50.jpg": damaged_jpeg(seed=0), "train/dog.50.jpg": damaged_jpeg(seed=1)}
    _raw(workdir, kaggle_members(5) | damaged | {"train/cat.51.jpg": truncated_jpeg()})
    write_params(workdir / "params.yaml", ALL_OF_FIVE)
    sample.main()
    manifest = _manifest(workdir)
    assert len(manifest) == 10
    assert not set(manifest["source_member"]) & {"train/cat.50.jpg", "train/dog.50.jpg", "train/cat.51.jpg"}
    metrics = json.loads((workdir / "metrics/data.json").read_text())
    assert {reason: n for reason, n in metrics["skipped"].items() if n} == {"undecodable_by_tensorflow": 3}
    from dogs_vs_cats.datasets import image_dataset

    for split in SPLITS:  # the training datasets read every sampled image to the end
        dataset = image_dataset(split, 16, 4, root=workdir / "data/sample")
        assert sum(len(labels) for _, labels in dataset) == (manifest["split"] == split).sum()


def test_every_skip_reason_is_counted_in_the_metrics_and_the_log(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    out_of_range = io.BytesIO()  # a float image beyond 0..1, named .jpg: Pillow reads it by its content
    Image.fromarray(np.full((8, 8), 3.0, dtype=np.float32)).save(out_of_range, format="TIFF")
    _raw(workdir, kaggle_members(5) | {"train/cat.50.jpg": out_of_range.getvalue(), "train/dog.50.jpg": b""})
    write_params(workdir / "params.yaml", ALL_OF_FIVE)
    sample.main()
    skipped = json.loads((workdir / "metrics/data.json").read_text())["skipped"]
    assert list(skipped) == list(images.SKIP_REASONS)  # zero counts too: `dvc metrics diff` keeps its columns
    assert {reason: n for reason, n in skipped.items() if n} == {"empty": 1, "unsupported_range": 1}
    assert "; skipped 2 (empty 1, unsupported_range 1), duplicates dropped 0" in capsys.readouterr().out


def test_exact_duplicates_never_land_in_two_splits(workdir: Path) -> None:
    write_params(workdir / "params.yaml", COUNTS)
    members = kaggle_members(10)
    copy = members["train/cat.0.jpg"]
    members |= {f"train/cat.{n}.jpg": copy for n in range(200, 210)}  # ten byte-identical copies
    members |= {f"train/dog.{n}.jpg": copy for n in range(200, 203)}  # and the same bytes as dogs
    _raw(workdir, members)
    sample.main()
    manifest = _manifest(workdir)
    assert manifest["sha256"].is_unique
    assert len(manifest) == 16
    metrics = json.loads((workdir / "metrics/data.json").read_text())
    assert metrics["duplicates_dropped"] >= 1


def test_petimages_layout_is_sampled_with_kaggle_names(workdir: Path) -> None:
    write_params(workdir / "params.yaml", COUNTS)
    members = {
        f"PetImages/{folder}/{n}.jpg": data
        for (folder, n), data in {
            (f.title(), n): image_bytes(size=(20 + n, 20 + (f == "dog"))) for f in ("cat", "dog") for n in range(9)
        }.items()
    }
    members |= {"PetImages/Cat/666.jpg": b"", "PetImages/Dog/Thumbs.db": b"\x00" * 10}
    _raw(workdir, members)
    sample.main()
    manifest = _manifest(workdir)
    assert len(manifest) == 16
    assert all(
        Path(p).name.startswith(f"{label}.") for p, label in zip(manifest["path"], manifest["label"], strict=True)
    )
    assert all(m.startswith("PetImages/") for m in manifest["source_member"])


def test_missing_raw_data_is_one_line(workdir: Path) -> None:
    result = run_stage("sample", workdir)
    assert result.returncode == 1
    assert result.stderr.strip() == ("error: data/raw/train.zip: not found; run dvc repro download")
    assert not (workdir / "data/sample").exists()
    assert not (workdir / "metrics/data.json").exists()


def test_too_few_images_leaves_no_sample_behind(workdir: Path) -> None:
    _raw(workdir, kaggle_members(5))
    result = run_stage("sample", workdir)
    assert result.returncode == 1
    assert "too few usable cat images: sample.* asks for 32 per class (train 16, validation 8, test 8)" in result.stderr
    assert not (workdir / "data/sample").exists()
    assert list((workdir / "data").glob(".sample*")) == []


@pytest.mark.slow
def test_the_whole_dataset_can_be_sampled(workdir: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    # Kaggle's train.zip at full count (12,500 per class) of small generated images, two per class unusable
    # (three bad, one dog a copy of a cat): asking for every usable image takes each one exactly once.
    generated = tmp_path_factory.mktemp("full") / "train.zip"
    synthetic.write_train_zip(generated, per_class=12_500, size=12, seed=0)
    (workdir / "data/raw").mkdir(parents=True)
    with zipfile.ZipFile(generated) as source, zipfile.ZipFile(workdir / "data/raw/train.zip", "w") as target:
        bad = {"train/cat.7.jpg": b"", "train/cat.9000.jpg": b"text", "train/dog.12499.jpg": image_bytes()[:300]}
        bad["train/dog.0.jpg"] = source.read("train/cat.1.jpg")
        for info in source.infolist():
            target.writestr(info, bad.get(info.filename, source.read(info)))
    usable = 12_500 - 2
    write_params(
        workdir / "params.yaml",
        {
            "sample.train_per_class": usable - 2_500,
            "sample.validation_per_class": 1_250,
            "sample.test_per_class": 1_250,
        },
    )
    sample.main()
    manifest = _manifest(workdir)
    assert len(manifest) == 2 * usable
    assert manifest["sha256"].is_unique and manifest["source_member"].is_unique
    assert len(list((workdir / "data/sample").rglob("*.jpg"))) == 2 * usable
    assert manifest.groupby(["split", "label"]).size().to_dict() == {
        (split, label): count
        for split, count in (("test", 1_250), ("train", usable - 2_500), ("validation", 1_250))
        for label in ("cat", "dog")
    }
    metrics = json.loads((workdir / "metrics/data.json").read_text())
    assert metrics["images"] == 2 * usable
    assert {reason: n for reason, n in metrics["skipped"].items() if n} == {"empty": 1, "not_image": 1, "truncated": 1}
    assert metrics["duplicates_dropped"] == 1
    assert metrics["candidates_read"] == 25_000
