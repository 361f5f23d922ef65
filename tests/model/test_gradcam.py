"""Grad-CAM: heatmaps where the evidence is, for every model that takes images, in evaluate and predict."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from dogs_vs_cats import gradcam, paths
from dogs_vs_cats.evaluation import HEADING, LINE, MARGIN
from runtime.errors import PipelineError
from stages import evaluate
from tests.conftest import inside
from tools import predict

TWO_LINES = 2 * LINE + MARGIN  # a cat/dog caption: its truth, and P(dog)


def red_detector() -> keras.Model:
    """P(dog) rises with the amount of red: a 1x1 convolution computing R - G - B, pooled, then a sigmoid."""
    inputs = keras.Input((32, 32, 3))
    red = keras.layers.Conv2D(1, 1, use_bias=False, activation="relu", name="red")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(red)
    outputs = keras.layers.Dense(1, activation="sigmoid")(x)
    model = keras.Model(inputs, outputs)
    model.get_layer("red").set_weights([np.array([1.0, -1.0, -1.0]).reshape(1, 1, 3, 1)])
    model.layers[-1].set_weights([np.array([[0.05]]), np.array([-0.5])])
    return model


def test_the_heatmap_lies_on_the_region_that_decides_the_class() -> None:
    image = np.full((32, 32, 3), 100.0, dtype=np.float32)  # grey: no evidence anywhere
    image[4:14, 18:28] = [255.0, 0.0, 0.0]  # one red square decides "dog"
    maps, dogs = gradcam.heatmaps(red_detector(), image[np.newaxis])
    assert dogs[0] > 0.5
    heatmap = maps[0]
    assert heatmap.shape == (32, 32) and heatmap.min() >= 0.0 and heatmap.max() == pytest.approx(1.0)
    region = np.zeros((32, 32), dtype=bool)
    region[3:15, 17:29] = True  # the square and the one-pixel rim bilinear resizing may blur into
    assert heatmap[region].sum() / heatmap.sum() > 0.9


def test_a_channel_the_score_ignores_gets_no_heat() -> None:
    """Two detectors fire, red and blue; only red reaches P(dog). Grad-CAM weighs channels by their gradient,
    so the blue square stays cold; a map of the plain channel mean would light it as brightly."""
    inputs = keras.Input((32, 32, 3))
    detectors = keras.layers.Conv2D(2, 1, use_bias=False, activation="relu", name="detectors")(inputs)
    outputs = keras.layers.Dense(1, activation="sigmoid")(keras.layers.GlobalAveragePooling2D()(detectors))
    model = keras.Model(inputs, outputs)
    red, blue = [1.0, -1.0, -1.0], [-1.0, -1.0, 1.0]
    model.get_layer("detectors").set_weights([np.array([red, blue]).T.reshape(1, 1, 3, 2)])
    model.layers[-1].set_weights([np.array([[0.05], [0.0]]), np.array([-0.5])])  # blue's weight: zero
    image = np.full((32, 32, 3), 100.0, dtype=np.float32)
    image[4:14, 4:14] = [255.0, 0.0, 0.0]
    image[18:28, 18:28] = [0.0, 0.0, 255.0]
    maps, dogs = gradcam.heatmaps(model, image[np.newaxis])
    assert dogs[0] > 0.5
    assert maps[0][3:15, 3:15].sum() / maps[0].sum() > 0.95
    assert maps[0][18:28, 18:28].max() < 0.01


def test_every_image_model_of_the_pipeline_is_explained_at_its_input_size(trained: Path) -> None:
    for path, layer in ((paths.BASELINE_MODEL, keras.layers.Conv2D), (paths.FINETUNED_MODEL, keras.Model)):
        model = keras.models.load_model(trained / path)
        assert isinstance(gradcam.feature_map_layer(model), layer)  # no layer names: the last 4-D output
        pixels = np.random.default_rng(0).uniform(0, 255, (3, 32, 32, 3)).astype("float32")
        maps, dogs = gradcam.heatmaps(model, pixels)
        assert maps.shape == (3, 32, 32) and maps.min() >= 0.0 and maps.max() <= 1.0
        assert dogs == pytest.approx(model.predict(pixels, verbose=0).reshape(-1), abs=1e-5)
    head = keras.models.load_model(trained / paths.HEAD_MODEL)
    with pytest.raises(PipelineError, match="no layer with a 4-D output"):
        gradcam.feature_map_layer(head)


def test_evaluate_shows_overlays_for_image_models_and_the_right_images_too(trained: Path) -> None:
    with inside(trained):
        evaluate.main()
    sizes = {}
    for model in paths.EVALUATED_MODELS:
        for right in (False, True):
            with Image.open(trained / paths.gallery_file(model, right)) as sheet:
                sizes[model, right] = sheet.size
    two_rows = HEADING + TWO_LINES + 2 * evaluate.THUMBNAIL
    assert (
        sizes["baseline", True][1] == sizes["frozen", True][1] == sizes["finetuned", True][1] == two_rows
    )  # photo, then its heatmap
    assert sizes["head", True][1] == HEADING + TWO_LINES + evaluate.THUMBNAIL  # features: nothing to overlay


def test_predict_explain_writes_one_overlay_per_photo(trained: Path, tmp_path: Path, capsys) -> None:
    photos = tmp_path / "photos"
    for folder in ("a", "b"):
        (photos / folder).mkdir(parents=True)
        Image.new("RGB", (50, 40), (200, 120, 40)).save(photos / folder / "rex.jpg")
    with inside(trained):
        predict.main([str(photos), "--explain", str(tmp_path / "cams")])
    written = sorted(p.name for p in (tmp_path / "cams").iterdir())
    assert written == ["rex-2.gradcam.png", "rex.gradcam.png"]  # two photos named alike: neither overwrites the other
    with Image.open(tmp_path / "cams/rex.gradcam.png") as overlay:
        assert overlay.size == (50, 40)  # the photo's own size and aspect, not the model's 32 x 32
    assert "Grad-CAM overlays of 2 photos" in capsys.readouterr().err
    with inside(trained), pytest.raises(PipelineError, match="not a cat/dog image model"):
        predict.main([str(photos), "--model", str(paths.HEAD_MODEL), "--explain", str(tmp_path / "x")])
    with inside(trained), pytest.raises(PipelineError, match="not with --imagenet"):
        predict.main([str(photos), "--imagenet", "--explain", str(tmp_path / "x")])


def test_predict_explain_into_the_photos_own_folder_keeps_every_file_of_the_user(trained: Path, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (50, 40), (200, 120, 40)).save(photos / "rex.png")
    Image.new("RGB", (30, 60), (20, 120, 240)).save(photos / "holiday.png")
    (photos / "notes.txt").write_text("mine")
    mine = {p.name: p.read_bytes() for p in photos.iterdir()}
    with inside(trained):
        predict.main([str(photos), "--explain", str(photos)])
    assert {p.name: p.read_bytes() for p in photos.iterdir() if p.name in mine} == mine
    assert sorted(p.name for p in photos.glob("*.gradcam.png")) == ["holiday.gradcam.png", "rex.gradcam.png"]
    with Image.open(photos / "holiday.gradcam.png") as overlay:
        assert overlay.size == (30, 60)  # a tall photo stays tall
    overlays = {p.name: p.read_bytes() for p in photos.glob("*.gradcam.png")}

    # Again: the overlays are files it did not write this time, so they stay unless --force says otherwise.
    with inside(trained), pytest.raises(PipelineError, match=r"rex.gradcam.png: the file exists; pass --force"):
        predict.main([str(photos / "rex.png"), "--explain", str(photos)])
    (photos / "rex.gradcam.png").write_bytes(b"not an overlay")
    with inside(trained):
        predict.main([str(photos / "rex.png"), "--explain", str(photos), "--force"])
    assert (photos / "rex.gradcam.png").read_bytes() == overlays["rex.gradcam.png"]

    # A folder in the way is never removed, and it is found before the model loads (this one does not exist).
    (photos / "holiday.gradcam.png").unlink()
    (photos / "holiday.gradcam.png").mkdir()
    (photos / "holiday.gradcam.png/keep.txt").write_text("mine")
    for force in ([], ["--force"]):
        with inside(trained), pytest.raises(PipelineError, match=r"holiday\.gradcam\.png: a folder of that name"):
            predict.main([str(photos), "--explain", str(photos), "--model", "missing.keras", *force])
    assert (photos / "holiday.gradcam.png/keep.txt").read_text() == "mine"
    with inside(trained), pytest.raises(PipelineError, match=r"--explain .*notes\.txt: a file, not a folder"):
        predict.main([str(photos), "--explain", str(photos / "notes.txt")])
    with inside(trained), pytest.raises(PipelineError, match="inside /proc"):
        predict.main([str(photos), "--explain", "/proc/self"])
