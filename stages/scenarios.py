"""Named small configurations, written once in ``configs/<name>.yaml`` and read by the Makefile and the tests.

A scenario maps dotted ``params.yaml`` keys to values; ``extends: <name>`` starts from another scenario.
``python -m stages.scenarios NAME`` prints it as ``dvc exp run`` flags: ``-S key=value ...``.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from stages.common import PipelineError, run

# Beside stages/, wherever the command runs from: the tests run stages in temporary folders.
CONFIGS_DIR = Path(__file__).resolve().parents[1] / "configs"


def load(name: str) -> dict[str, Any]:
    """The overrides of scenario ``name``, those of the scenario it extends first."""
    path = CONFIGS_DIR / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in CONFIGS_DIR.glob("*.yaml")))
        raise PipelineError(f"no scenario {name!r} in {CONFIGS_DIR}; use one of {known}")
    overrides = dict(YAML(typ="safe").load(path.read_text()))
    parent = overrides.pop("extends", None)
    return {**(load(parent) if parent else {}), **overrides}


def set_flags(overrides: dict[str, Any]) -> list[str]:
    """``dvc exp run -S`` flags that set ``overrides``; values in the YAML form DVC parses them in."""
    flags = []
    for key, value in overrides.items():
        text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
        flags += ["-S", f"{key}={text}"]
    return flags


def main() -> None:
    (name,) = sys.argv[1:] or ["tiny"]
    print(shlex.join(set_flags(load(name))))


if __name__ == "__main__":
    run(main)
