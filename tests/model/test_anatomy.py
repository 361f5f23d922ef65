"""What each layer costs: the course's arithmetic, VGG16's known figures, nested models, the command line."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import keras
import numpy as np
import pytest

from dogs_vs_cats import costs as cost_of
from dogs_vs_cats.memory import footprint
from dogs_vs_cats.models import built_under, load_saved, saved_optimizer
from runtime.program import run
from tests.conftest import call_stage
from tools import anatomy


def test_the_course_example_costs_what_the_course_says() -> None:
    # A 5x5 convolution with 200 filters on a 150x100 RGB image ("same" padding keeps 150x100).
    inputs = keras.Input((100, 150, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(200, 5, padding="same")(inputs))
    (conv,) = cost_of.layer_costs(model)
    assert conv.trainable == (5 * 5 * 3 + 1) * 200 == 15_200
    assert conv.macs == 5 * 5 * 3 * 200 * 150 * 100 == 225_000_000
    assert conv.activation_bytes == 200 * 150 * 100 * 4 == 12_000_000
    line = anatomy.table(model, batch_size=100).splitlines()[1]
    assert line.split()[-2:] == ["12.00", "1200.0"]  # MB per image, and 1.2 GB for a batch of 100


def test_vgg16_at_224_px_has_its_known_size_and_cost() -> None:
    vgg16 = keras.applications.VGG16(weights=None, include_top=True)
    total = cost_of.totals(cost_of.layer_costs(vgg16))
    assert total["params"] == 138_357_544 == vgg16.count_params()
    assert total["gmacs"] == pytest.approx(15.5, rel=0.01)


def test_separable_and_depthwise_convolutions_count_both_parts() -> None:
    inputs = keras.Input((10, 10, 4))
    x = keras.layers.SeparableConv2D(8, 3, padding="same")(inputs)
    x = keras.layers.DepthwiseConv2D(3, padding="same")(x)
    costs = cost_of.layer_costs(keras.Model(inputs, x))
    assert [c.macs for c in costs] == [10 * 10 * 4 * 9 + 10 * 10 * 8 * 4, 10 * 10 * 8 * 9]


def test_nested_models_are_opened_and_frozen_weights_told_apart() -> None:
    inner_in = keras.Input((8, 8, 3))
    inner = keras.Model(inner_in, keras.layers.Conv2D(4, 3)(inner_in), name="base")
    inner.trainable = False
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Flatten()(inner(inputs))
    outer = keras.Model(inputs, keras.layers.Dense(1)(x))
    costs = cost_of.layer_costs(outer)
    assert [c.kind for c in costs] == ["Conv2D", "Flatten", "Dense"]
    total = cost_of.totals(costs)
    assert (total["trainable"], total["frozen"]) == (6 * 6 * 4 + 1, 3 * 3 * 3 * 4 + 4)
    assert total["gmacs"] == pytest.approx((6 * 6 * 4 * 27 + 144) / 1e9)


def test_the_command_prints_a_table_and_refuses_a_wrong_call_in_one_line(
    workdir: Path, capsys: pytest.CaptureFixture
) -> None:
    result = call_stage("anatomy", workdir, args=("--base", "vgg16", "--size", "32", "--batch-size", "8"))
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[0].split()[:2] == ["layer", "output"] and lines[0].endswith("MB/8")
    assert any(line.startswith("block5_conv3 ") for line in lines)
    assert lines[-1].startswith("total: 14,714,688 parameters (14,714,688 trainable, 0 frozen), ")
    assert re.search(
        r"; at batch 8 training needs about [\d.]+ GB, predicting [\d.]+ GB; this process can use ", lines[-1]
    )
    for args, error in [
        (["--base", "vgg19"], "error: --base vgg19: unknown; use one of vgg16, xception, resnet50, efficientnetv2b0"),
        (["m.keras", "--base", "vgg16"], "error: name a saved model (models/finetuned.keras) or --base NAME, not both"),
        (["m.keras"], "error: m.keras: not found; run dvc repro, or name a .keras file a stage saved"),
    ]:
        with pytest.raises(SystemExit) as exit_status:
            run(lambda args=args: anatomy.main(args))
        assert exit_status.value.code == 1
        assert capsys.readouterr().err.strip() == error


def test_a_saved_mixed_float16_model_loads_without_a_warning_and_is_counted_with_its_optimizer(tmp_path: Path) -> None:
    path = tmp_path / "m.keras"
    with built_under("mixed_float16"):  # trained with loss scaling: the optimizer holds more variables
        inputs = keras.Input((4,))
        model = keras.Model(inputs, keras.layers.Dense(1, dtype="float32")(keras.layers.Dense(3)(inputs)))
        model.compile(optimizer="adam", loss="mse")
        model.fit(np.zeros((8, 4)), np.zeros((8, 1)), verbose=0)
        model.save(path)
    with warnings.catch_warnings():  # loaded under the global float32 policy, as every stage loads
        warnings.simplefilter("error")
        loaded = load_saved(path)
    assert saved_optimizer(path) == "Adam"
    adam, default = footprint(loaded, training=True, optimizer="Adam"), footprint(loaded, training=True)
    assert adam.fixed - default.fixed == 4 * (4 * 3 + 3 + 3 + 1)  # Adam's second value per trainable weight
    needs = anatomy.table(loaded, 8, saved_optimizer(path)).splitlines()[-1]
    assert (
        f"training needs about {adam.at(8) / 1e9:.2f} GB" in needs
        and "per image (computed in mixed_float16); " in needs
    )
