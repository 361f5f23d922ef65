"""dvc.yaml declares what each stage reads: its code, derived from the imports, and nothing else of stages/."""

from __future__ import annotations

import ast
import copy
import json
import re

import pytest
from ruamel.yaml import YAML

from dogs_vs_cats.classes import DIGITS_CLASS_NAMES, DIGITS_DATASETS
from tests.conftest import REPO

PACKAGES = (
    "stages",
    "dogs_vs_cats",
    "tools",
    "runtime",
)  # what DVC runs, the study, what people run by hand, how programs run


def direct_imports(module: str) -> set[str]:
    """The project's modules (``package.name``) that ``module`` imports itself."""
    tree = ast.parse((REPO / f"{module.replace('.', '/')}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in PACKAGES:
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PACKAGES:
            found.add(".".join(node.module.split(".")[:2]))
        elif isinstance(node, ast.Import):
            found |= {".".join(a.name.split(".")[:2]) for a in node.names if a.name.split(".")[0] in PACKAGES}
    return found


def imported_modules(module: str) -> set[str]:
    """The project's modules that ``module`` imports, directly or through each other, itself included."""
    found, todo = set(), [module]
    while todo:
        name = todo.pop()
        if name not in found:
            found.add(name)
            todo += direct_imports(name)
    return found


def dvc_yaml() -> dict:
    return YAML(typ="safe").load((REPO / "dvc.yaml").read_text())


def stage_entries() -> dict[str, dict]:
    """Each stage's definition; for a ``foreach`` stage (the digits study's), the one it repeats."""
    return {name: entry.get("do", entry) for name, entry in dvc_yaml()["stages"].items()}


@pytest.mark.parametrize("stage", sorted(stage_entries()))
def test_each_stage_depends_on_exactly_the_code_it_runs(stage: str) -> None:
    entry = stage_entries()[stage]
    module = entry["cmd"].split("python -m ")[1].split()[0]
    assert module.startswith("stages.")
    declared = {dep for dep in entry["deps"] if dep.endswith(".py")}
    assert declared == {f"{name.replace('.', '/')}.py" for name in imported_modules(module)}


def _modules(package: str) -> list[str]:
    return sorted(f"{package}.{path.stem}" for path in (REPO / package).glob("*.py") if path.stem != "__init__")


def test_each_folder_keeps_its_role() -> None:
    # stages/ holds exactly what dvc.yaml runs; runtime/ imports nothing of the study; the library imports neither
    # stages/ nor tools/; a stage imports
    # no other stage and no tool (so editing one re-runs no other stage); a tool imports no stage.
    run = {entry["cmd"].split("python -m ")[1].split()[0] for entry in stage_entries().values()}
    assert set(_modules("stages")) == run
    allowed = {
        "runtime": {"runtime"},
        "dogs_vs_cats": {"dogs_vs_cats", "runtime"},
        "stages": {"dogs_vs_cats", "runtime"},
        "tools": {"dogs_vs_cats", "tools", "runtime"},
    }
    for package, may_import in allowed.items():
        for module in _modules(package):
            wrong = {name for name in direct_imports(module) if name.split(".")[0] not in may_import}
            assert not wrong, f"{module} imports {sorted(wrong)}"


def test_the_import_walk_sees_indirect_imports() -> None:
    # predict -> models -> config -> paths: a module reached only through others still counts.
    expected = {"tools.predict", "dogs_vs_cats.models", "dogs_vs_cats.config", "dogs_vs_cats.paths"}
    assert expected <= imported_modules("tools.predict")
    assert "dogs_vs_cats.synthetic" not in imported_modules("stages.evaluate")
    assert direct_imports("stages.evaluate") >= {"dogs_vs_cats.paths", "runtime.program"}


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


def test_the_foreach_lists_are_the_models_and_datasets_the_stages_accept() -> None:
    # A name in dvc.yaml's vars that the stage refuses fails the run; one the vars lack is never made.
    from dogs_vs_cats import paths
    from dogs_vs_cats.classes import CATS_DOGS, EXPORTED

    (digits,) = [entry["digits_datasets"] for entry in dvc_yaml()["vars"] if "digits_datasets" in entry]
    (exported,) = [entry["exported"] for entry in dvc_yaml()["vars"] if "exported" in entry]
    assert tuple(digits) == DIGITS_DATASETS and tuple(exported) == EXPORTED
    for name, item in exported.items():
        model = paths.FINETUNED_MODEL if name == CATS_DOGS else paths.digits_model(name)
        test = paths.SAMPLE_DIR if name == CATS_DOGS else paths.digits_data_dir(name)
        assert (item["model"], item["test"]) == (model.as_posix(), test.as_posix())


@pytest.mark.parametrize("dataset", DIGITS_DATASETS)
def test_a_digits_confusion_template_is_dvcs_own_in_label_order(dataset: str) -> None:
    from dvc_render.vega_templates import ConfusionTemplate

    template = json.loads((REPO / f".dvc/plots/confusion_{dataset}.json").read_text())
    expected = copy.deepcopy(ConfusionTemplate.DEFAULT_CONTENT)
    for axis in ("x", "y"):
        expected["spec"]["encoding"][axis]["sort"] = list(DIGITS_CLASS_NAMES[dataset])
    assert template == expected  # DVC's confusion template with only the axis order changed


def _rendered(template: str, points: list[dict], **properties) -> dict:
    """The Vega-Lite spec DVC makes of ``points`` with one of .dvc/plots/'s templates (as `dvc plots show`)."""
    from dvc_render import VegaRenderer

    templates = str(REPO / ".dvc/plots")
    return VegaRenderer(points, template, template=template, template_dir=templates, **properties).get_filled_template()


def test_the_roc_template_draws_one_curve_per_model_over_the_chance_diagonal() -> None:
    points = [
        {"model": model, "fpr": fpr, "tpr": tpr, "rev": "workspace"}
        for model in ("baseline", "head")
        for fpr, tpr in ((0.0, 0.0), (0.0, 0.5), (0.5, 1.0), (1.0, 1.0))
    ]
    spec = _rendered("roc", points, x="fpr", y="tpr", x_label="false positive rate", y_label="true positive rate")
    line, diagonal = spec["layer"]
    encoding = line["encoding"]
    assert (encoding["x"]["title"], encoding["y"]["title"]) == ("false positive rate", "true positive rate")
    assert encoding["color"] == {"field": "model", "type": "nominal", "title": "model", "sort": None}  # not files
    assert encoding["strokeDash"]["field"] == "rev"  # `dvc plots diff`: one dash per revision
    # Points are joined in the order of fpr + tpr, which both grow along a curve (fpr alone has ties); numbers,
    # not the strings DVC reads from a CSV ("0.5" + "1" would join as text).
    assert line["transform"] == [{"calculate": "toNumber(datum.fpr) + toNumber(datum.tpr)", "as": "along_curve"}]
    assert encoding["order"] == {"field": "along_curve"}
    assert diagonal["mark"]["type"] == "rule" and diagonal["data"] == {"values": [{}]}  # drawn once
    ends = {axis: diagonal["encoding"][axis]["datum"] for axis in ("x", "y", "x2", "y2")}
    assert ends == {"x": 0, "y": 0, "x2": 1, "y2": 1}


def test_the_curves_template_draws_loss_and_accuracy_of_both_splits_by_epoch() -> None:
    points = [
        {"epoch": epoch, "split": split, "loss": 1 / epoch, "accuracy": 1 - 1 / epoch, "rev": "workspace"}
        for split in ("train", "validation")
        for epoch in (1, 2)
    ]
    spec = _rendered("curves", points, x="epoch", title="Baseline convnet: loss and accuracy by epoch")
    assert spec["title"]["text"] == "Baseline convnet: loss and accuracy by epoch"
    assert spec["repeat"] == {"column": ["loss", "accuracy"]}
    assert spec["resolve"]["scale"]["y"] == "independent"  # a loss near 0.7 beside an accuracy near 1
    encoding = spec["spec"]["encoding"]
    assert encoding["x"]["field"] == "epoch" and encoding["y"]["field"] == {"repeat": "column"}
    assert encoding["color"]["field"] == "split" and encoding["color"]["scale"]["domain"] == ["train", "validation"]
    assert encoding["strokeDash"]["field"] == "rev"
    assert spec["data"]["values"] == points


def test_each_plot_is_declared_once_and_titled() -> None:
    # DVC draws every stage-level plot (they keep the run-cache); a top-level definition would draw it again.
    assert "plots" not in dvc_yaml()
    plots = [plot for entry in stage_entries().values() for plot in _declared(entry.get("plots", []))]
    templates = {path.stem for path in (REPO / ".dvc/plots").glob("*.json")} | {"confusion"}  # ours, DVC's
    for path, options in plots:
        if path.endswith((".png", "gallery")):  # images: DVC shows each under its file name
            continue
        assert options.get("title"), path
        assert options["template"].replace("${key}", "mnist") in templates, path


def _each_run() -> dict[str, dict]:
    """Each stage as DVC runs it: a ``foreach`` stage once per item (``export@cats_dogs``), its ``${key}`` and
    ``${item.<field>}`` filled in."""
    variables = {name: value for entry in dvc_yaml()["vars"] for name, value in entry.items()}
    runs = {}
    for name, entry in dvc_yaml()["stages"].items():
        if "foreach" not in entry:
            runs[name] = entry
            continue
        items = variables[entry["foreach"].strip("${}")]
        for key, item in items.items():
            text = json.dumps(entry["do"]).replace("${key}", key)
            for field, value in item.items():
                text = text.replace(f"${{item.{field}}}", str(value))
            runs[f"{name}@{key}"] = json.loads(text)
    return runs


def _downstream_of(stage: str) -> set[str]:
    """``stage`` and every stage that reads, directly or not, what it writes (a ``foreach`` stage by its name)."""
    runs = _each_run()

    def outs(name: str) -> set[str]:
        return {next(iter(o)) if isinstance(o, dict) else o for o in runs[name].get("outs", [])} | {
            next(iter(m)) for m in runs[name].get("metrics", [])
        }

    found, todo = set(), [stage]
    while todo:
        name = todo.pop()
        if name in found:
            continue
        found.add(name)
        written = outs(name)
        todo += [other for other, entry in runs.items() if written & set(map(str, entry.get("deps", [])))]
    return {name.split("@")[0] for name in found}


@pytest.mark.parametrize("name", ["dvc.yaml", "params.yaml"])
def test_the_opening_comment_names_every_stage_a_head_change_reruns(name: str) -> None:
    # What users read first; it had left out export, which quotes the head in its model card.
    opening = " ".join(line.lstrip("# ") for line in (REPO / name).read_text().splitlines()[:4])
    said = re.search(r"head[- ]\w* ?(?:change|parameter) re-runs (?:only )?([\w, ]+?)[.:]", opening)
    assert said, opening
    named = set(re.split(r", | and ", said.group(1).replace(", and ", ", ")))
    assert named == _downstream_of("train_head")


def test_comments_name_only_params_the_stage_reads() -> None:
    # A comment on train_frozen named head.normalize where the stage reads frozen.normalize.
    text = (REPO / "dvc.yaml").read_text()
    sections = set(YAML(typ="safe").load((REPO / "params.yaml").read_text()))
    for stage, entry in stage_entries().items():
        body = text.split(f"\n  {stage}:\n")[1].split("\n  # ")[0].split("\n\n")[0]
        read = [str(p) for p in entry.get("params", [])]
        for comment in re.findall(r"#(.*)", body):
            for key in re.findall(r"\b([a-z_]+)\.[a-z_]+\b", comment):
                if key in sections:
                    assert any(p == key or p.startswith(f"{key}.") for p in read), (stage, comment)


def _entry_points() -> list[str]:
    """The modules of stages/ and tools/ that run as programs (``if __name__ == "__main__"``)."""
    return [
        module
        for package in ("stages", "tools")
        for module in _modules(package)
        if 'if __name__ == "__main__":' in (REPO / f"{module.replace('.', '/')}.py").read_text()
    ]


@pytest.mark.parametrize("module", _entry_points())
def test_each_program_starts_before_any_import_of_the_study_or_tensorflow(module: str) -> None:
    # start_program(__name__) first: Ctrl-C during the imports that follow (TensorFlow's take seconds) is one
    # line, and TensorFlow's C++ start-up lines stay out of the log. Only __future__ and its own import before it.
    body = ast.parse((REPO / f"{module.replace('.', '/')}.py").read_text()).body
    if isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]  # the docstring
    body = [node for node in body if not (isinstance(node, ast.ImportFrom) and node.module == "__future__")]
    first, second = body[0], body[1]
    assert isinstance(first, ast.ImportFrom) and first.module == "runtime.program"
    assert "start_program" in {alias.name for alias in first.names}
    assert ast.unparse(second) == "start_program(__name__)"


def test_the_entry_points_are_found() -> None:
    assert {"stages.train_baseline", "stages.digits_data", "tools.predict", "tools.watch"} <= set(_entry_points())
    assert "tools.cells" not in _entry_points()
