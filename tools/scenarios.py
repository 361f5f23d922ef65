"""Named small configurations, written once in ``configs/<name>.yaml`` and read by the Makefile and the tests.

A scenario maps dotted ``params.yaml`` keys to values; ``extends: <name>`` starts from another scenario.
``python -m tools.scenarios NAME`` prints it as ``dvc exp run`` flags: ``-S key=value ...``.
"""

from __future__ import annotations

from runtime.program import run, start_program

start_program(__name__)  # first: the imports below take seconds (TensorFlow's), and Ctrl-C during them ends in one line

import argparse
import json
import re
import shlex
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from dogs_vs_cats.typed_yaml import yaml_problem
from runtime.errors import PipelineError

# Beside stages/, wherever the command runs from: the tests run stages in temporary folders.
CONFIGS_DIR = Path(__file__).resolve().parents[1] / "configs"
NAME = re.compile(r"[A-Za-z0-9_-]+")  # a file's name in CONFIGS_DIR without .yaml: no folder, no dots


def load(name: str, _chain: tuple[str, ...] = ()) -> dict[str, Any]:
    """The overrides of scenario ``name``, those of the scenario it extends first."""
    if name in _chain:
        raise PipelineError(f"scenario {name!r} extends itself ({' -> '.join((*_chain, name))}); break the loop")
    path = CONFIGS_DIR / f"{name}.yaml"
    if not isinstance(name, str) or not NAME.fullmatch(name) or not path.is_file():
        known = ", ".join(sorted(p.stem for p in CONFIGS_DIR.glob("*.yaml") if NAME.fullmatch(p.stem)))
        raise PipelineError(f"no scenario {name!r} in {CONFIGS_DIR}; use one of {known}")
    try:
        overrides = YAML(typ="safe").load(path.read_text())
    except YAMLError as error:
        raise PipelineError(f"{path}: {yaml_problem(error)}") from None
    if not isinstance(overrides, dict):
        raise PipelineError(f"{path}: must map dotted params.yaml keys to values")
    parent = overrides.pop("extends", None)
    return {**(load(parent, (*_chain, name)) if parent else {}), **overrides}


def set_flags(overrides: dict[str, Any]) -> list[str]:
    """``dvc exp run -S`` flags that set ``overrides``; values in the YAML form DVC parses them in."""
    return [flag for key, value in overrides.items() for flag in ("-S", f"{key}={flag_value(value)}")]


def flag_value(value: Any) -> str:
    """``value`` as ``dvc exp run -S key=...`` takes it: a string as it is, anything else in flow YAML
    (``true``, ``[8,16]``, ``null``)."""
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.scenarios", description=__doc__.splitlines()[0])
    parser.add_argument("name", help=f"a scenario: the name of a file in {CONFIGS_DIR}")
    print(shlex.join(set_flags(load(parser.parse_args(argv).name))))


if __name__ == "__main__":
    run(main)
