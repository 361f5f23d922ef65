"""dvc.yaml declares what each stage reads: its code, derived from the imports, and nothing else of stages/."""

from __future__ import annotations

import ast

import pytest
from ruamel.yaml import YAML

from tests.conftest import REPO

STAGES_DIR = REPO / "stages"


def imported_modules(module: str) -> set[str]:
    """The modules of ``stages/`` that ``stages.<module>`` imports, directly or through each other, itself included."""
    found, todo = set(), [module]
    while todo:
        name = todo.pop()
        if name in found:
            continue
        found.add(name)
        tree = ast.parse((STAGES_DIR / f"{name}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "stages":
                todo += [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("stages."):
                todo.append(node.module.split(".")[1])
            elif isinstance(node, ast.Import):
                todo += [a.name.split(".")[1] for a in node.names if a.name.startswith("stages.")]
    return found


def stage_entries() -> dict[str, dict]:
    return YAML(typ="safe").load((REPO / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("stage", sorted(stage_entries()))
def test_each_stage_depends_on_exactly_the_code_it_runs(stage: str) -> None:
    entry = stage_entries()[stage]
    module = entry["cmd"].split("python -m stages.")[1].split()[0]
    declared = {dep for dep in entry["deps"] if dep.startswith("stages/")}
    assert declared == {f"stages/{name}.py" for name in imported_modules(module)}


def test_the_import_walk_sees_indirect_imports() -> None:
    # predict -> models -> config -> paths: a module reached only through others still counts.
    assert {"predict", "models", "config", "paths", "common", "images", "datasets"} <= imported_modules("predict")
    assert "synthetic" not in imported_modules("evaluate")


def _declared(entries: list) -> list[tuple[str, dict]]:
    return [next(iter(e.items())) if isinstance(e, dict) else (e, {}) for e in entries]


@pytest.mark.parametrize("stage", sorted(stage_entries()))
def test_each_stage_can_be_restored_from_the_run_cache(stage: str) -> None:
    # DVC saves no run-cache entry for a stage with an uncached plain output (dvc/stage/__init__.py, run):
    # what is committed to Git must be declared as metrics or plots, and everything else is cached.
    entry = stage_entries()[stage]
    assert all(options.get("cache", True) for _, options in _declared(entry.get("outs", [])))
    small = _declared(entry.get("metrics", []) + entry.get("plots", []))
    assert all(path.startswith("metrics/") and options.get("cache") is False for path, options in small)
    assert not any(options.get("persist") for _, options in _declared(entry.get("outs", [])) + small)
