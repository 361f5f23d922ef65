"""params.yaml: the repository's file is valid, and every kind of mistake names its key."""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from dogs_vs_cats.config import DVC_IGNORED_KEYS, ConfigError, Params, load_params
from tests.conftest import REPO, run_stage, write_params


def test_repository_params_are_valid_and_match_the_book() -> None:
    params = load_params(REPO / "params.yaml")
    assert params.data.source == "kaggle"
    assert params.sample.counts() == {"train": 1000, "validation": 500, "test": 500}
    assert params.image.side == 180
    assert params.baseline.filters == (32, 64, 128, 256, 256)
    assert params.finetune.learning_rate == pytest.approx(1e-5)


@pytest.mark.parametrize("text", ["1e-05", "1e-3", "'1e-3'", "1.0e-5", "3"])
def test_learning_rates_written_by_dvc_exp_run_are_floats(tmp_path: Path, text: str) -> None:
    # `dvc exp run -S finetune.learning_rate=1e-5` writes 1e-05, which PyYAML would read as a string.
    write_params(tmp_path / "params.yaml", {})
    content = (tmp_path / "params.yaml").read_text().replace("learning_rate: 1.0e-05", f"learning_rate: {text}")
    (tmp_path / "params.yaml").write_text(content)
    value = load_params(tmp_path / "params.yaml").finetune.learning_rate
    assert isinstance(value, float)
    assert value == float(text.strip("'"))


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"data.source": "kagle"}, "data.source is 'kagle'; use one of kaggle, archive, petimages, synthetic"),
        ({"sample.train_per_class": "many"}, "sample.train_per_class is 'many'; use a whole number"),
        ({"sample.test_per_class": 0}, "sample.test_per_class is 0; use at least 1"),
        ({"sample.train_per_class": True}, "sample.train_per_class is True; use a whole number"),
        ({"data.synthetic.side": 2.5}, "data.synthetic.side is 2.5; use a whole number"),
        ({"data.archive": ""}, "data.archive is ''; use a path (no ~)"),
        ({"data.archive": "~/train.zip"}, "data.archive is '~/train.zip'; use a path (no ~)"),
        ({"features.weights": "/tmp/vgg16.h5"}, "features.weights is /tmp/vgg16.h5, outside data/weights/; copy"),
        ({"features.weights": "data/weights/../x.h5"}, "features.weights is data/weights/../x.h5, outside"),
        ({"image.side": 16}, "image.side is 16; use at least 32"),
        ({"head.dropout": 1.5}, "head.dropout is 1.5"),
        ({"head.learning_rate": "fast"}, "head.learning_rate is 'fast'; use a number"),
        ({"head.patience": 0}, "head.patience is 0"),
        ({"baseline.filters": "32,64"}, "baseline.filters is '32,64'; use a list"),
        ({"baseline.filters": [32, "x"]}, "baseline.filters[1] is 'x'"),
        ({"seed": -1}, "seed is -1"),
        ({"seed": 2**32}, "seed is 4294967296; use a whole number from 0 to 4294967295"),
        ({"data.synthetic.seed": 2**40}, "data.synthetic.seed is 1099511627776"),
        ({"head.learning_rate": float("inf")}, "head.learning_rate is inf; use a finite number"),
        ({"head.learning_rate": "inf"}, "head.learning_rate is inf; use a finite number"),
        ({"baseline.learning_rate": float("nan")}, "baseline.learning_rate is nan; use a finite number"),
        ({"augment.zoom": "-inf"}, "augment.zoom is -inf; use a finite number"),
        ({"finetune.learning_rate": 10**400}, "finetune.learning_rate is 1000"),
        ({"train.strategy": "tpu"}, "train.strategy is 'tpu'; use one of auto, one_device, mirrored"),
        ({"train.strategy": "multi_worker"}, "train.strategy multi_worker is retired: it trained only train_head"),
        ({"train.cluster_timeout": 300}, "train.cluster_timeout served train.strategy multi_worker, which is retired"),
        ({"evaluate.bootstrap": -1}, "evaluate.bootstrap is -1; use 0 (no interval) or more"),
        ({"digits.data.source": "tfds"}, "digits.data.source is 'tfds'; use one of keras, files, offline"),
        ({"digits.data.files": "~/mnist"}, "digits.data.files is '~/mnist'; use a path (no ~)"),
        ({"digits.data.validation": 0}, "digits.data.validation is 0; use at least 1"),
        ({"digits.network": "resnet"}, "digits.network is 'resnet'; use one of lenet5, book, strong"),
        ({"digits.augment.rotation": 0.5}, "digits.augment.rotation is 0.5; use a number from 0 up to"),
        ({"digits.schedule": "linear"}, "digits.schedule is 'linear'; use one of constant, cosine, step"),
        ({"digits.learning_rate": float("nan")}, "digits.learning_rate is nan; use a finite number"),
        ({"digits.epochs": 0}, "digits.epochs is 0; use at least 1"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, overrides: dict, expected: str) -> None:
    write_params(tmp_path / "params.yaml", overrides)
    with pytest.raises(ConfigError) as error:
        load_params(tmp_path / "params.yaml")
    assert expected in str(error.value)
    assert "\n" not in str(error.value)


def test_unknown_and_missing_keys_are_named(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    write_params(path, {})
    path.write_text(path.read_text().replace("  units: 256", "  unit: 256"))
    with pytest.raises(ConfigError, match=r"unknown key head\.unit; remove it or fix its spelling"):
        load_params(path)
    path.write_text(path.read_text().replace("  unit: 256\n", ""))
    with pytest.raises(ConfigError, match=r"missing key head\.units"):
        load_params(path)


def _leaf_keys(node: object, prefix: str = "") -> list[str]:
    if not isinstance(node, dict):
        return [prefix]
    return [leaf for key, value in node.items() for leaf in _leaf_keys(value, f"{prefix}{key}.")]


def _schema_keys(cls: type, prefix: str = "") -> list[str]:
    hints = typing.get_type_hints(cls)
    return [
        key
        for field in dataclasses.fields(cls)
        for key in (
            _schema_keys(hints[field.name], f"{prefix}{field.name}.")
            if dataclasses.is_dataclass(hints[field.name])
            else [f"{prefix}{field.name}"]
        )
    ]


def test_no_params_key_is_one_that_dvcs_run_cache_ignores() -> None:
    # DVC 3.67 hashes a stage's run-cache key without any key named size or nfiles (treeverse/dvc#10296): a
    # sweep over such a key restores the previous value's outputs instead of running. Every key, every depth.
    from_file = [key.rstrip(".") for key in _leaf_keys(YAML(typ="safe").load((REPO / "params.yaml").read_text()))]
    keys = from_file + _schema_keys(Params)
    assert sorted(set(from_file)) == sorted(set(_schema_keys(Params)))  # the walk sees every key
    assert not [key for key in keys if set(key.split(".")) & DVC_IGNORED_KEYS]


@pytest.mark.parametrize(("old", "new"), [("image.size", "image.side"), ("data.synthetic.size", "data.synthetic.side")])
def test_a_params_file_with_an_old_size_key_is_told_its_new_name(tmp_path: Path, old: str, new: str) -> None:
    path = tmp_path / "params.yaml"
    write_params(path, {})
    params = YAML().load(path.read_text())
    *parents, leaf = new.split(".")
    node = params
    for key in parents:
        node = node[key]
    node.insert(list(node).index(leaf), "size", node.pop(leaf))
    with open(path, "w") as out:
        YAML().dump(params, out)
    with pytest.raises(ConfigError) as error:
        load_params(path)
    why = "(DVC's run-cache ignores keys named size, treeverse/dvc#10296)"
    assert str(error.value) == f"{path}: {old} is now {new}; rename the key {why}"
    node[leaf] = 64  # both: the old one goes
    with open(path, "w") as out:
        YAML().dump(params, out)
    with pytest.raises(ConfigError) as error:
        load_params(path)
    assert str(error.value) == f"{path}: {old} is now {new}; remove {old}, {new} is there {why}"


def test_unknown_keys_of_mixed_types_are_named_not_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    write_params(path, {})
    path.write_text(path.read_text() + "1: one\nzzz: two\n")
    with pytest.raises(ConfigError, match=r"unknown key 1; remove it"):
        load_params(path)


def test_invalid_yaml_says_what_ruamel_found_and_where(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("seed: 1\ndata: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML at line 3, column 1: expected ',' or ']'"):
        load_params(path)
    path.write_text("seed: 1\nimage: 2\nseed: 3\n")
    with pytest.raises(ConfigError) as error:
        load_params(path)
    assert str(error.value) == (
        f'{path}: not valid YAML at line 3, column 1: found duplicate key "seed" with value "3" '
        '(original value: "1"); fix it'
    )


def test_errors_name_the_file_that_was_read(tmp_path: Path) -> None:
    path = tmp_path / "elsewhere.yaml"
    write_params(path, {"sample.test_per_class": 0})
    with pytest.raises(ConfigError) as error:
        load_params(path)
    assert str(error.value) == f"{path}: sample.test_per_class is 0; use at least 1"


def test_a_stage_stops_with_one_line_before_any_work(tmp_path: Path) -> None:
    write_params(tmp_path / "params.yaml", {"data.source": "synthetic", "sample.validation_per_class": -5})
    result = run_stage("download", tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip() == ("error: params.yaml: sample.validation_per_class is -5; use at least 1")
    assert not (tmp_path / "data").exists()


def _leaves(tree: dict, prefix: str = "") -> set[str]:
    """The dotted keys of ``tree``'s values that are not sections."""
    return {
        leaf
        for key, value in tree.items()
        for leaf in (_leaves(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}"})
    }


def _documented(table: str) -> set[str]:
    """The keys the first column of docs/params.md's table names: `head.units`, then `.dropout` for a key
    beside the last full one, and `.augment.{rotation,shift}` for each name in the braces."""
    keys = set()
    for row in re.findall(r"^\| (.+?) \|", table, re.M):
        parent = ""
        for name in re.findall(r"`([^`]+)`", row):
            if not name.startswith("."):
                parent = name.rsplit(".", 1)[0] + "." if "." in name else ""
                name = "." + name.removeprefix(parent)
            head, _, braced = name.partition("{")
            keys |= {f"{parent}{head[1:]}{leaf}" for leaf in braced.rstrip("}").split(",")}
    return keys


def test_every_key_of_params_yaml_is_in_the_params_reference() -> None:
    keys = _leaves(YAML(typ="safe").load((REPO / "params.yaml").read_text()))
    documented = _documented((REPO / "docs/params.md").read_text())
    assert {"seed", "digits.augment.zoom", "digits.data.files", "head.patience"} <= documented  # each form is read
    assert keys - documented == set(), "add these keys to docs/params.md's table"
