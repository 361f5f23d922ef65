"""``predict --imagenet --base NAME`` with one network of each preprocessing mode, random weights: the
network at its own side, fed its module's preprocessing, its top 5 named from the shipped class table.
tests/model/test_imagenet_networks.py checks all 40 networks' entries without building them."""

from __future__ import annotations

import io
import json
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from dogs_vs_cats.models import IMAGENET_NETWORKS, base_of, preprocess_mode
from tests.conftest import call_stage
from tools import predict

# One network per preprocessing mode, the cheapest to build: the mode is all predict does differently per family,
# and tests/model/test_imagenet_networks.py holds every network to its module's mode and side without building
# it (building one of each of the 15 families here cost about 2 CPU minutes).
BY_MODE = {
    "caffe": ("resnet", "resnet50"),
    "tf": ("mobilenet", "mobilenet"),
    "torch": ("densenet", "densenet121"),
    "none": ("mobilenet_v3", "mobilenetv3small"),  # preprocessing inside the network: raw 0-255 pixels
}


def test_the_networks_here_cover_every_preprocessing_mode() -> None:
    modes = {preprocess_mode(network.preprocess_input) for network in IMAGENET_NETWORKS.values()}
    assert modes == set(BY_MODE)
    for mode, (family, name) in BY_MODE.items():
        network = IMAGENET_NETWORKS[name]
        assert network.build.__module__.rsplit(".", 1)[-1] == family
        assert preprocess_mode(network.preprocess_input) == mode


def test_base_list_names_every_network_with_its_side_and_preprocessing(tmp_path: Path) -> None:
    result = call_stage("predict", tmp_path, args=("--imagenet", "--base", "list"))  # no PATH, no params.yaml
    assert result.returncode == 0, result.stderr
    header, *lines = result.stdout.splitlines()
    assert header.split() == ["network", "input", "preprocessing"]
    listed = {line.split()[0]: line for line in lines}
    assert list(listed) == list(IMAGENET_NETWORKS)
    assert listed["inceptionv3"].split()[1:3] == ["299x299", "tf:"]
    assert listed["efficientnetb7"].split()[1] == "600x600" and "raw 0-255" in listed["efficientnetb7"]
    assert listed["densenet121"].split()[2] == "torch:" and listed["vgg19"].split()[2] == "caffe:"


def test_an_unknown_network_is_one_line_before_any_photo_is_looked_at(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def looked_at(*args, **kwargs):
        raise AssertionError("photos looked at before the networks were checked")

    monkeypatch.setattr(predict, "expand", looked_at)
    result = call_stage("predict", workdir, args=("photo.jpg", "--imagenet", "--base", "resnet101v2,alexnet"))
    assert result.returncode != 0 and result.stdout == ""
    assert result.stderr.splitlines() == [
        f"error: --base resnet101v2,alexnet: unknown network 'alexnet'; python -m tools.predict --imagenet --base "
        f"list lists the {len(IMAGENET_NETWORKS)} there are"
    ]


@pytest.fixture
def photos(workdir: Path) -> list[Path]:
    """Two generated photos of other sides than any network's: noise, so each pixel's preprocessing shows."""
    rng = np.random.default_rng(0)
    files = []
    for name, fmt, (width, height) in (("noise.jpg", "JPEG", (80, 60)), ("noise.png", "PNG", (50, 70))):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(buffer, format=fmt)
        (workdir / name).write_bytes(buffer.getvalue())
        files.append(workdir / name)
    return files


@pytest.mark.parametrize(("family", "name"), BY_MODE.values())
def test_imagenet_runs_a_network_of_each_preprocessing_mode(
    family: str, name: str, photos: list[Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    built, build = [], predict.build_imagenet_classifier

    def keep(*args, **kwargs) -> keras.Model:
        built.append(build(*args, **kwargs))
        return built[-1]

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure on https://storage.googleapis.com/...: None -- [Errno -2]")

    monkeypatch.setattr(predict, "build_imagenet_classifier", keep)
    monkeypatch.setattr(keras.applications.imagenet_utils, "decode_predictions", offline)
    predict.main([*map(str, photos), "--imagenet", "--base", name, "--format", "json"])
    printed = capsys.readouterr()
    rows = json.loads(printed.out)
    assert "weights are random" in printed.err and "using imagenet_classes.tsv" in printed.err
    (model,) = built
    side = IMAGENET_NETWORKS[name].side
    assert model.input_shape == (None, side, side, 3) and model.output_shape == (None, 1000)

    classes = dict(predict.shipped_imagenet_classes())
    index = {wnid: i for i, wnid in enumerate(classes)}
    assert [(row["path"], row["base"], row["rank"]) for row in rows] == [
        (str(photo), name, rank) for photo in photos for rank in range(1, predict.TOP + 1)
    ]
    assert all(classes[row["class_id"]] == row["name"] for row in rows)

    # The network inside gets exactly what its module's preprocess_input makes of the photos' pixels.
    module = getattr(keras.applications, family)
    ((_, pixels),) = predict.load_batches(photos, side, len(photos), [])
    expected = module.preprocess_input(pixels.copy())
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(model.get_layer("preprocess")(pixels)), expected, rtol=1e-5, atol=1e-3
    )
    probabilities = keras.ops.convert_to_numpy(base_of(model)(expected, training=False))
    # And predict's top 5 are that network's: ranked, each class with its probability (ties may come in any order).
    for number, row in enumerate(probabilities):
        top = rows[number * predict.TOP : (number + 1) * predict.TOP]
        got = [r["probability"] for r in top]
        assert got == sorted(got, reverse=True) and got[0] == pytest.approx(row.max(), abs=1e-5)
        assert [row[index[r["class_id"]]] for r in top] == pytest.approx(got, abs=1e-5)
