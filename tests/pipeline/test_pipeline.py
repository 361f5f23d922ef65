"""End to end: the real `dvc repro` in a temp git copy of the repository, on the tiny synthetic config."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from ruamel.yaml import YAML

from dogs_vs_cats.classes import DIGITS_CLASS_NAMES, DIGITS_DATASETS, SPLITS
from dogs_vs_cats.paths import EVALUATED_MODELS
from runtime import tf_log
from tests.conftest import REPO, TINY, inside, write_params

NEVER_COPIED = {".git", ".venv", "models", "metrics", "__pycache__", ".pytest_cache", ".ruff_cache", "tmp", "cache"}
LOCAL_INPUTS = ("archive", "weights", "digits_archive")  # folders under data/ that dvc.yaml declares as dependencies


def copy_ignore(folder: str, names: list[str]) -> set[str]:
    """What a fresh clone would not have: outputs, caches, and anything but the READMEs under data/."""
    ignored = NEVER_COPIED & set(names)
    if Path(folder) == REPO / "data":
        ignored |= {name for name in names if name not in LOCAL_INPUTS}
    elif Path(folder).parent == REPO / "data":
        ignored |= {name for name in names if name != "README.md"}
    return ignored


def sh(args: list[str], cwd: Path, fails: bool = False) -> str:
    """Run a command as a user would, with this interpreter's bin first on PATH; fail loudly with its output
    unless it succeeds (or, with ``fails``, unless it fails)."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True)
    # Decoded as written: text mode would turn a progress bar's carriage returns into line ends.
    out, err = result.stdout.decode(errors="replace"), result.stderr.decode(errors="replace")
    assert (result.returncode != 0) == fails, f"{' '.join(args)} exited {result.returncode}:\n{out}\n{err}"
    return out + err


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A git + DVC copy of the repository with the tiny params, after one `dvc repro`."""
    root = tmp_path_factory.mktemp("project") / "repo"
    shutil.copytree(REPO, root, ignore=copy_ignore)
    write_params(root / "params.yaml", TINY)
    sh(["git", "init", "-q", "-b", "main"], root)
    sh(["git", "config", "user.email", "test@example.com"], root)
    sh(["git", "config", "user.name", "test"], root)
    sh(["git", "add", "-A"], root)
    sh(["git", "commit", "-q", "-m", "tiny config"], root)
    notes = root / USERS_NOTES  # the user's own file beside the exported files: export and model_cards keep it
    notes.parent.mkdir(parents=True)
    notes.write_text("notes of mine\n")
    root.joinpath("repro.log").write_text(sh(["dvc", "repro"], root))
    return root


USERS_NOTES = Path("models/export/cats_dogs/NOTES.md")


STAGES = [
    "download",
    "sample",
    "train_baseline",
    "extract_features",
    "train_head",
    "train_frozen",
    "finetune",
    "evaluate",
]
DIGITS = [f"digits_{step}@{data}" for data in ("mnist", "fashion_mnist") for step in ("data", "train", "evaluate")]
EXPORT = ["export@cats_dogs", "export@mnist", "export@fashion_mnist", "model_cards"]


def stale(project: Path) -> set[str]:
    """The stages ``dvc status`` names in ``project``, from DVC's own API in this process: the same check as the
    command's, without its second of start-up, for the many tests that ask after one edit each."""
    from dvc.repo import Repo

    with inside(project), Repo() as repo:  # stage names are relative to the working directory, as the CLI's
        return set(repo.status())


def ran(output: str, stages: list[str] = STAGES) -> list[str]:
    """The ``stages`` a dvc command ran, in order, from its output."""
    return [stage for line in output.splitlines() for stage in stages if line == f"Running stage '{stage}':"]


def test_repro_runs_every_stage_and_writes_every_declared_output(project: Path) -> None:
    assert ran((project / "repro.log").read_text()) == STAGES
    assert (project / "data/raw/train.zip").is_file()
    manifest = pd.read_csv(project / "data/sample/manifest.csv")
    assert len(manifest) == 2 * (TINY["sample.train_per_class"] + 2 * TINY["sample.test_per_class"])
    assert json.loads((project / "metrics/data.json").read_text())["train"] == {"cat": 16, "dog": 16}
    assert (project / "dvc.lock").is_file()
    for split in ("train", "validation", "test"):
        assert (project / f"data/features/{split}.npz").is_file()
    for model in ("baseline", "base", "head", "frozen", "finetuned"):
        assert (project / f"models/{model}.keras").stat().st_size > 0
    for stage in ("train_baseline", "train_head", "train_frozen", "finetune"):
        summary = json.loads((project / f"metrics/{stage}/metrics.json").read_text())
        assert {"best", "epochs", "policy"} <= set(summary) and not {"train", "eval", "step"} & set(summary)
    assert json.loads((project / "metrics/features.json").read_text())["feature_shape"] == [1, 1, 512]
    results = json.loads((project / "metrics/evaluate.json").read_text())
    assert set(results) == {"test_images", "baseline", "head", "frozen", "finetuned", "mcnemar"}
    for model in ("baseline", "head", "frozen", "finetuned"):
        assert (project / f"metrics/evaluate/gallery/{model}.png").is_file()
    exported = ran((project / "repro.log").read_text(), EXPORT)
    assert sorted(exported) == sorted(EXPORT) and exported[-1] == "model_cards"


def test_export_writes_each_model_and_a_card_made_from_the_metrics(project: Path) -> None:
    exported = json.loads((project / "metrics/export.json").read_text())
    assert list(exported) == ["cats_dogs", *DIGITS_CLASS_NAMES]
    finetuned = json.loads((project / "metrics/evaluate.json").read_text())["finetuned"]
    assert (project / USERS_NOTES).read_text() == "notes of mine\n"
    for name, checked in exported.items():
        folder = project / "models/export" / name
        assert {p.name for p in folder.iterdir()} - {USERS_NOTES.name} == {
            "saved_model",
            "model.tflite",
            "model_float16.tflite",
            "MODEL_CARD.md",
        }
        assert checked["float32_max_abs_difference"] <= 1e-5
        card = (folder / "MODEL_CARD.md").read_text()
        assert card.startswith(f"# Model card: {name}\n") and "do not edit it" in card
        assert f"{100 * checked['float16_accuracy_change']:+.2f} points" in card
    card = (project / "models/export/cats_dogs/MODEL_CARD.md").read_text()
    interval = finetuned["accuracy_ci95"]
    assert (
        f"- accuracy {100 * finetuned['accuracy']:.2f} % (95 % interval {100 * interval['low']:.2f} % to "
        f"{100 * interval['high']:.2f} %)"
    ) in card
    assert "**The base's weights are random**" in card and "**Trained and tested on generated images**" in card
    mnist = json.loads((project / "metrics/digits/mnist.json").read_text())
    assert f"- accuracy {100 * mnist['accuracy']:.2f} %" in (project / "models/export/mnist/MODEL_CARD.md").read_text()


NOTEBOOKS = sorted(path.name for path in (REPO / "notebooks").glob("*.ipynb"))
# The figures each notebook must draw on the tiny run: (curves + confusion matrices + galleries) per dataset;
# one curves figure and eight galleries; one figure of Grad-CAM overlays; none for the Colab run.
FIGURES = {"colab.ipynb": 0, "digits.ipynb": 6, "dogs_vs_cats.ipynb": 9, "pretrained.ipynb": 1}
# What turns each notebook's network, GPU and account steps off, so it runs on this CPU, offline.
OFFLINE = {
    "colab.ipynb": {"CLONE": False, "KAGGLE": False, "GPU": False, "DRIVE": False, "PUSH": False},
    "pretrained.ipynb": {"WEIGHTS": "none"},
}


def test_notebooks_are_committed_without_outputs() -> None:
    import nbformat

    assert sorted(FIGURES) == NOTEBOOKS
    for name in NOTEBOOKS:
        book = nbformat.read(REPO / "notebooks" / name, as_version=4)
        nbformat.validate(book)
        for cell in book.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, f"{name}: strip its outputs"
        assert sum("parameters" in cell.metadata.get("tags", []) for cell in book.cells) == 1, name


@pytest.fixture
def kernel_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """The environment a notebook's kernel starts with: dvc on PATH, as a user has it, and inline figures."""
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    return monkeypatch


def execute(root: Path, name: str, settings: dict[str, object]) -> list:
    """The code cells of ``root``'s ``notebooks/<name>``, executed headless from that folder as a user runs it, with
    ``settings`` added to its parameter cell. An error stops it, as in Jupyter: nbclient's CellExecutionError,
    with the cells run so far in ``error.cells``."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    book = nbformat.read(root / "notebooks" / name, as_version=4)
    (cell,) = [cell for cell in book.cells if "parameters" in cell.metadata.get("tags", [])]
    cell.source += "".join(f"\n{key} = {value!r}" for key, value in settings.items())
    cells = [cell for cell in book.cells if cell.cell_type == "code"]
    client = NotebookClient(
        book, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(root / "notebooks")}}
    )
    try:
        client.execute()
    except CellExecutionError as error:
        error.cells = cells
        raise
    return cells


def outputs_of(cells: list) -> tuple[list, list, str]:
    """What executed cells showed: their errors, their figures and their printed text."""
    outputs = [output for cell in cells for output in cell.outputs]
    errors = [output for output in outputs if output.output_type == "error"]
    figures = [output for output in outputs if "image/png" in output.get("data", {})]
    return errors, figures, "".join(output.get("text", "") for output in outputs)


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_each_notebook_runs_headless_on_the_pipelines_outputs(
    project: Path, name: str, kernel_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    settings = dict(OFFLINE.get(name, {}))
    if name == "pretrained.ipynb":  # an unreadable photo first: its error is shown, the others are still explained
        unreadable = tmp_path / "unreadable.jpg"
        unreadable.write_bytes(b"not a photo")
        settings["PHOTOS"] = [str(unreadable), "data/sample/test/cat", "data/sample/test/dog"]
        # Two networks side by side, small ones: each network's path through predict is tested in test_predict_networks.
        settings["BASES"] = ["vgg16", "mobilenet"]
    before = sh(["git", "status", "--porcelain"], project)
    errors, figures, text = outputs_of(execute(project, name, settings))
    assert not errors
    assert len(figures) == FIGURES[name], name
    assert sh(["git", "status", "--porcelain"], project) == before  # it read the pipeline's outputs, changed nothing
    if name == "colab.ipynb":
        assert "$ dvc repro" in text and "PUSH is off" in text
    if name == "digits.ipynb":
        assert "by hand: {'params': " in text  # the course's arithmetic, asserted equal to the library's count
    if name == "pretrained.ipynb":
        assert f"{unreadable}: cannot read" in text
        assert re.search(r"^  rank +vgg16 +mobilenet$", text, re.M)  # the networks' guesses side by side


# Before any test below commits the project's dvc.lock: a clone of it is a fresh clone, without results.
@pytest.mark.slow
def test_make_demo_in_a_fresh_clone_runs_offline_and_the_dogs_vs_cats_notebook_shows_its_experiment(
    project: Path, kernel_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`make demo` leaves its results in a DVC experiment, params.yaml and the workspace without any, and shows the
    experiment's own test metrics; the notebook applies the newest one (`dvc exp apply`) and shows it, where
    `dvc repro evaluate` would have asked Kaggle for the data."""
    clone = _clone(project, tmp_path / "clone")
    write_params(clone / "params.yaml", {"data.source": "kaggle"}, base=clone / "params.yaml")  # the repository's
    sh(["git", "commit", "-q", "-am", "params.yaml as the repository has it: the data from Kaggle"], clone)
    # make demo with the tiny scenario: with the project's cache, DVC restores every stage from its run-cache.
    sh(["dvc", "cache", "dir", "--local", str(project / ".dvc/cache")], clone)
    (clone / ".git/installed.stamp").touch()  # make's set-up is this interpreter's environment
    params = (clone / "params.yaml").read_text()
    out = sh(["make", "demo", "SCENARIO=tiny", "STAMP=.git/installed.stamp"], clone)
    assert (clone / "params.yaml").read_text() == params and not (clone / "dvc.lock").exists()
    assert ran(out, [*STAGES, *DIGITS, *EXPORT]) == []
    (row,) = [line for line in out.splitlines() if "[tiny-" in line]
    name = row.split("[")[1].split("]")[0]
    shown = [float(cell) for cell in row.split("|")[2:-1]]
    # The table shows the demo's own test metrics, read back from DVC: accuracy and ROC AUC of each model.
    metrics = _experiment(json.loads(sh(["dvc", "exp", "show", "--json"], clone)), name)["data"]["metrics"]
    results = metrics["metrics/evaluate.json"]["data"]
    expected = [
        results[model][key] for model in ("baseline", "head", "frozen", "finetuned") for key in ("accuracy", "roc_auc")
    ]
    expected += [metrics[f"metrics/digits/{data}.json"]["data"]["accuracy"] for data in ("mnist", "fashion_mnist")]
    assert shown == pytest.approx(expected, abs=1e-3)  # then the digits study's test accuracy, per dataset
    assert results == json.loads((project / "metrics/evaluate.json").read_text())

    errors, figures, text = outputs_of(execute(clone, "dogs_vs_cats.ipynb", {"DEMO": "tiny"}))
    assert not errors
    assert f"dvc exp apply {name}" in text
    assert len(figures) == FIGURES["dogs_vs_cats.ipynb"]
    assert json.loads((clone / "metrics/evaluate.json").read_text()) == results  # the experiment's, restored


@pytest.mark.slow
def test_without_results_or_kaggle_credentials_the_dogs_vs_cats_notebook_stops_with_one_line(
    project: Path, kernel_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from nbclient.exceptions import CellExecutionError

    clone = _clone(project, tmp_path / "clone")
    write_params(clone / "params.yaml", {"data.source": "kaggle"}, base=clone / "params.yaml")
    kernel_env.setenv("HOME", str(tmp_path))  # no ~/.kaggle
    for variable in ("KAGGLE_API_TOKEN", "KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_CONFIG_DIR", "XDG_CONFIG_HOME"):
        kernel_env.delenv(variable, raising=False)
    with pytest.raises(CellExecutionError) as stopped:
        execute(clone, "dogs_vs_cats.ipynb", {})
    errors, figures, text = outputs_of(stopped.value.cells)
    assert [error.ename for error in errors] == ["SystemExit"] and not figures
    assert "make demo" in errors[0].evalue and "Kaggle" in errors[0].evalue
    assert "\n" not in errors[0].evalue
    assert "Running stage" not in text  # it stopped before DVC tried to download


def _keys(data: object) -> list[str]:
    if isinstance(data, dict):
        return [k for key, value in data.items() for k in (str(key), *_keys(value))]
    return [k for item in data for k in _keys(item)] if isinstance(data, list) else []


def test_declared_metrics_are_results_never_timings(project: Path) -> None:
    declared = [p for p in (project / "metrics").rglob("*.json") if "plots" not in p.parts]
    assert len(declared) >= 8
    for path in declared:
        timed = [key for key in _keys(json.loads(path.read_text())) if re.search("second|time|duration", key)]
        assert not timed, f"{path.relative_to(project)}: {timed}"
    assert re.search(
        r"^extract_features: \d+ images in [\d.]+ s, [\d.]+ images/s$", (project / "repro.log").read_text(), re.M
    )


def test_a_piped_repro_logs_one_line_per_epoch_not_a_progress_bar(project: Path) -> None:
    log = (project / "repro.log").read_bytes().decode()  # not read_text: it would read each \r as a line end
    assert "\x08" not in log and "\r" not in log  # Keras' interactive bar redraws with backspaces, tqdm's with \r
    epochs = [line for line in log.splitlines() if "val_loss" in line]
    assert epochs and all(len(line) < 300 for line in epochs)
    # A healthy run on a machine without a GPU logs no error-level line (TensorFlow's failed cuInit was one),
    # and each training stage says once where it runs.
    if not tf_log.NVIDIA_DRIVER.exists():
        assert not re.search(r"^E\d{4} |\berror\b", log, re.M | re.I), re.search(
            r"^.*(^E\d{4} |error).*$", log, re.M | re.I
        )
        # nor TensorFlow's start-up lines, which its two native libraries print once each (tests/pipeline/test_logs.py)
        assert not re.search(r"^[IWE]\d{4} |^WARNING: All log messages before absl", log, re.M)
        assert log.count("on the CPU (no GPU)") == 6  # train_baseline, train_head, train_frozen, finetune, digits x2
    # evaluate says how far it is: one line for each model's pass over the test split.
    evaluate = log.split("Running stage 'evaluate':")[1].split("Running stage")[0]
    assert len(re.findall(r"^\d+/\d+ - .*/step$", evaluate, re.M)) == len(EVALUATED_MODELS), evaluate
    # One line an epoch of every training stage that ran, as many as DVCLive logged.
    trained = ("train_baseline", "train_head", "train_frozen", "finetune", "digits/mnist", "digits/fashion_mnist")
    curves = [pd.read_csv(project / f"metrics/{stage}/curves.csv") for stage in trained]
    assert len(epochs) == sum((curve["split"] == "train").sum() for curve in curves)


def test_repro_runs_the_digits_study_for_each_dataset_of_the_matrix(project: Path) -> None:
    done = ran((project / "repro.log").read_text(), DIGITS)
    assert sorted(done) == sorted(DIGITS)
    for data in ("mnist", "fashion_mnist"):
        steps = [done.index(f"digits_{step}@{data}") for step in ("data", "train", "evaluate")]
        assert steps == sorted(steps)
        results = json.loads((project / f"metrics/digits/{data}.json").read_text())
        table = pd.read_csv(project / f"metrics/digits/evaluate/{data}/predictions.csv")
        assert results["accuracy"] == pytest.approx((table["label"] == table["predicted"]).mean())  # its own rows
        assert results["test_images"] == len(table)
        assert (project / f"models/digits/{data}.keras").is_file()
        assert (project / f"metrics/digits/{data}/metrics.json").is_file()
    assert json.loads((project / "metrics/digits/mnist.json").read_text())["test_images"] == 359  # sklearn's
    arrays = {split: np.load(project / f"data/digits/fashion_mnist/{split}.npz") for split in SPLITS}
    assert [len(arrays[split]["y"]) for split in SPLITS] == [100, 100, 30]  # tiny: 20 a class, 100 held out
    assert arrays["train"]["x"].dtype == np.uint8
    results = json.loads((project / "metrics/digits/fashion_mnist.json").read_text())
    assert set(results["per_class_accuracy"]) == set(DIGITS_CLASS_NAMES["fashion_mnist"])
    summary = json.loads((project / "metrics/digits/fashion_mnist/metrics.json").read_text())
    assert summary["network"] == "book" and summary["train_images"] == 100
    table = pd.read_csv(project / "metrics/digits/evaluate/fashion_mnist/predictions.csv")
    assert list(table.columns) == ["index", "label", "confidence", "predicted"]  # as the cat/dog tables
    assert set(table["label"]) == set(DIGITS_CLASS_NAMES["fashion_mnist"])  # names, not indices
    with Image.open(project / "metrics/digits/evaluate/fashion_mnist/gallery.png") as image:
        assert image.format == "PNG"


def test_second_repro_does_nothing(project: Path) -> None:
    out = sh(["dvc", "repro"], project)
    assert "Data and pipelines are up to date." in out
    assert "Running stage" not in out


def _input_side(model: Path) -> int:
    import keras

    return keras.models.load_model(model, compile=False).input_shape[1]


def test_an_image_side_change_retrains_through_the_run_cache(project: Path) -> None:
    # DVC's run-cache leaves keys named size out of its key (treeverse/dvc#10296): under the old name
    # image.size, `dvc repro` restored the 32 px model for 48 px ("cached - skipping run") and let an
    # invalid value through unvalidated. `dvc repro`, not `dvc status`: only repro consults the run-cache.
    params = project / "params.yaml"
    original = params.read_text()
    model = project / "models/baseline.keras"
    assert _input_side(model) == TINY["image.side"] == 32
    try:
        write_params(params, {"image.side": 48}, base=params)
        out = sh(["dvc", "repro", "--single-item", "train_baseline"], project)
        assert ran(out) == ["train_baseline"] and "skipping run" not in out
        assert _input_side(model) == 48
        write_params(params, {"image.side": 8}, base=params)
        out = sh(["dvc", "repro", "--single-item", "train_baseline"], project, fails=True)
        assert "image.side is 8; use at least 32" in out
    finally:
        params.write_text(original)
    # Back at 32 px the run-cache rightly restores the first run's model without training.
    out = sh(["dvc", "repro", "--single-item", "train_baseline"], project)
    assert ran(out) == [] and _input_side(model) == 32


def test_a_seed_change_resamples_without_downloading_again(project: Path) -> None:
    params = project / "params.yaml"
    original = params.read_text()
    params.write_text(original.replace("seed: 42", "seed: 43", 1))
    try:
        changed = stale(project)
    finally:
        params.write_text(original)
    assert "download" not in changed
    assert {"sample", "train_baseline", "train_head"} <= set(changed)


@pytest.mark.parametrize(
    ("path", "stage"), [("data/archive/README.md", "download"), ("data/weights/x.h5", "extract_features")]
)
def test_replacing_a_local_input_reruns_the_stage_that_reads_it(project: Path, path: str, stage: str) -> None:
    file = project / path
    original = file.read_bytes() if file.exists() else None
    file.write_bytes(b"replaced at the same path")
    try:
        changed = stale(project)
    finally:
        file.write_bytes(original) if original is not None else file.unlink()
    assert stage in changed
    assert ("download" in changed) == (stage == "download")
    assert "Data and pipelines are up to date." in sh(["dvc", "status"], project)


def test_data_and_models_are_ignored_by_git_and_metrics_are_not(project: Path) -> None:
    status = sh(["git", "status", "--porcelain", "--untracked-files=all"], project)
    assert "data/" not in status
    assert ".keras" not in status
    assert "metrics/data.json" in status
    assert "metrics/train_head/metrics.json" in status
    assert "metrics/finetune/curves.csv" in status


def test_metrics_show_reads_the_metrics(project: Path) -> None:
    shown = json.loads(sh(["dvc", "metrics", "show", "--json"], project))
    data = shown[""]["data"]["metrics/data.json"]["data"]
    assert data["images"] == 64


# What `dvc plots show` draws, each once and titled (issue 19: it drew 61, every file twice).
PLOT_TITLES = {
    "metrics/train_baseline/curves.csv": "Baseline convnet: loss and accuracy by epoch",
    "metrics/train_head/curves.csv": "Dense head on the stored features: loss and accuracy by epoch",
    "metrics/train_frozen/curves.csv": "Frozen base + head: loss and accuracy by epoch",
    "metrics/finetune/curves.csv": "Fine-tuning: loss and accuracy by epoch",
    "metrics/evaluate/predictions/baseline.csv": "Confusion matrix, baseline",
    "metrics/evaluate/predictions/head.csv": "Confusion matrix, head",
    "metrics/evaluate/predictions/frozen.csv": "Confusion matrix, frozen base + head",
    "metrics/evaluate/predictions/finetuned.csv": "Confusion matrix, fine-tuned",
    "metrics/evaluate/roc.csv": "ROC curves on the test split",
    "metrics/digits/mnist/curves.csv": "MNIST: loss and accuracy by epoch",
    "metrics/digits/fashion_mnist/curves.csv": "Fashion-MNIST: loss and accuracy by epoch",
    "metrics/digits/evaluate/mnist/predictions.csv": "Confusion matrix, MNIST",
    "metrics/digits/evaluate/fashion_mnist/predictions.csv": "Confusion matrix, Fashion-MNIST",
}
GALLERIES = [
    *(f"metrics/evaluate/gallery/{model}{kind}.png" for model in EVALUATED_MODELS for kind in ("", "_right")),
    *(f"metrics/digits/evaluate/{dataset}/gallery.png" for dataset in DIGITS_DATASETS),
]


def test_plots_show_draws_each_plot_once_and_titled(project: Path) -> None:
    shown = json.loads(sh(["dvc", "plots", "show", "--json"], project))["data"]
    assert all(len(entries) == 1 for entries in shown.values())
    assert sorted(shown) == sorted([*PLOT_TITLES, *GALLERIES])  # 23, at most 25 as issue 19 asks
    specs = {plot: entries[0]["content"] for plot, entries in shown.items() if entries[0]["type"] == "vega"}
    assert {plot: spec["title"]["text"] for plot, spec in specs.items()} == PLOT_TITLES
    for plot, spec in specs.items():
        points = spec["data"]["values"]
        if plot.endswith("curves.csv"):  # both splits, by epoch from 1 as best.epoch counts
            assert {p["split"] for p in points} == {"train", "validation"}
            assert min(int(p["epoch"]) for p in points) == 1
    # Each dataset's confusion matrix lists its classes in label order (T-shirt/top, Trouser, ...), not A-Z.
    for dataset in DIGITS_DATASETS:
        encoding = specs[f"metrics/digits/evaluate/{dataset}/predictions.csv"]["spec"]["encoding"]
        assert encoding["x"]["sort"] == encoding["y"]["sort"] == list(DIGITS_CLASS_NAMES[dataset])
    # The ROC curves: one per model, named by the model (not a file), over the chance diagonal, on named axes.
    line, diagonal = specs["metrics/evaluate/roc.csv"]["layer"]
    assert (line["mark"]["type"], diagonal["mark"]["type"]) == ("line", "rule")
    assert line["encoding"]["color"]["field"] == "model"
    models = [point["model"] for point in specs["metrics/evaluate/roc.csv"]["data"]["values"]]
    assert list(dict.fromkeys(models)) == list(EVALUATED_MODELS)
    assert (line["encoding"]["x"]["title"], line["encoding"]["y"]["title"]) == (
        "false positive rate",
        "true positive rate",
    )
    # The page: UTF-8 (a truncated legend's ellipsis is no mojibake), every title and gallery on it.
    sh(["dvc", "plots", "show", "--out", "plots_html"], project)
    html = (project / "plots_html/index.html").read_text()
    assert '<meta charset="utf-8">' in html
    for text in (*PLOT_TITLES.values(), *GALLERIES, "Ankle boot"):
        assert text in html, text


# What each documented sweep key re-runs first: DVC then re-runs what depends on that stage's outputs (the
# README's "`-S head.units=128` re-runs train_head, finetune and evaluate", never train_frozen).
def _each_dataset(step: str) -> set[str]:
    return {f"digits_{step}@{data}" for data in ("mnist", "fashion_mnist")}


# What the README and docs/ say each key re-runs, as `dvc status` sees it before anything runs: the stages that
# read the key (what follows them re-runs because their outputs change, tests below run that for head.*).
CARDS_QUOTE = ("network", "learning_rate", "epochs")  # digits keys the model cards quote
CHANGED_BY = {
    # The model cards quote the head's size and the fine-tuning, the threshold and the precision; export, which
    # runs the models, reads none of these: its files follow the models alone.
    **{f"head.{key}": {"train_head"} | ({"model_cards"} if key in ("units", "dropout") else set())
       for key in ("normalize", "units", "dropout", "learning_rate", "batch_size", "epochs", "patience")},
    **{f"frozen.{key}": {"train_frozen"} for key in ("normalize", "units", "dropout", "learning_rate", "epochs")},
    "augment.zoom": {"train_baseline", "train_frozen", "finetune"},
    "baseline.dropout": {"train_baseline"},
    "finetune.learning_rate": {"finetune", "model_cards"},
    "evaluate.threshold": {"evaluate", "model_cards"},
    # docs/digits.md: a digits.* key re-runs the digits stages (and the cards) and nothing of Dogs vs. Cats.
    "digits.data.validation": _each_dataset("data"),
    **{f"digits.{key}": _each_dataset("train") | ({"model_cards"} if key in CARDS_QUOTE else set())
       for key in ("network", "dropout", "augment.zoom", "learning_rate", "epochs")},
    "digits.gallery_size": _each_dataset("evaluate"),
    # Every stage that runs a network in it: the features too (docs/timings-and-gpu.md).
    "train.precision": {"train_baseline", "extract_features", "train_head", "train_frozen", "finetune", "model_cards"}
    | _each_dataset("train"),
}  # fmt: skip
CHANGED_TO = {"digits.network": {"strong": "book", "book": "strong"}, "train.precision": {"float32": "mixed_bfloat16"}}


@pytest.mark.parametrize("key", CHANGED_BY)
def test_a_sweep_key_changes_only_the_stages_that_read_it(project: Path, key: str) -> None:
    original = (project / "params.yaml").read_text()
    value = YAML(typ="safe").load(original)
    for part in key.split("."):
        value = value[part]
    if key in CHANGED_TO:
        changed = CHANGED_TO[key][value]
    else:
        changed = not value if isinstance(value, bool) else 3 if value is None else value * 2
    try:
        write_params(project / "params.yaml", {key: changed}, base=project / "params.yaml")
        status = stale(project)
    finally:
        (project / "params.yaml").write_text(original)
    assert set(status) == CHANGED_BY[key], status


# Which stages an edit of a library module re-runs, as `dvc status` sees it: the ones that run the module.
EDITED = {
    # The memory check, through training.py and datasets.py (the decoded images' cache): every stage that trains
    # (and extract_features, which seeds), and those that read images (evaluate, each export); not digits_evaluate.
    "dogs_vs_cats/memory.py": {"train_baseline", "extract_features", "train_head", "train_frozen", "finetune"}
    | {"evaluate", *EXPORT[:3]}
    | _each_dataset("train"),
    "dogs_vs_cats/digits_model.py": _each_dataset("train")
    | _each_dataset("evaluate")
    | set(EXPORT[:3]),  # not digits_data
    "dogs_vs_cats/evaluation.py": {"evaluate"} | _each_dataset("evaluate"),
}


@pytest.mark.parametrize("module", EDITED)
def test_editing_a_module_changes_only_the_stages_that_run_it(project: Path, module: str) -> None:
    original = (project / module).read_text()
    try:
        (project / module).write_text(original + "\n# an edit\n")
        status = stale(project)
    finally:
        (project / module).write_text(original)
    assert set(status) == EDITED[module], status


def _a_head_change_shows_in_diffs_and_the_report(project: Path) -> None:
    """After ``dvc exp run -S head.learning_rate=2e-3`` in ``project``: DVC's tables and diffs, and ``make report``
    against HEAD, show the change and its results."""
    shown = json.loads(sh(["dvc", "exp", "show", "--json"], project))
    (workspace,) = [row for row in shown if row["rev"] == "workspace"]
    assert workspace["data"]["params"]["params.yaml"]["data"]["head"]["learning_rate"] == 0.002
    assert "metrics/evaluate.json" in workspace["data"]["metrics"]

    diff = json.loads(sh(["dvc", "metrics", "diff", "HEAD", "--json"], project))
    assert "metrics/train_head/metrics.json" in diff
    assert "metrics/train_baseline/metrics.json" not in diff
    params = json.loads(sh(["dvc", "params", "diff", "HEAD", "--json"], project))
    assert params["params.yaml"]["head.learning_rate"]["new"] == 0.002

    # `make report` itself; a fresh STAMP file tells make the environment is set up (it is this one).
    (project / "installed.stamp").touch()
    sh(["make", "report", "BASE=HEAD", "STAMP=installed.stamp"], project)
    report = (project / "report.md").read_text()
    # DVC's own page declares no charset, so a legend's "…" read as "â€¦": ours (.dvc/config) declares UTF-8.
    assert '<meta charset="utf-8">' in (project / "dvc_plots/index.html").read_text(encoding="utf-8")
    # What a reviewer reads first, short: one table of the four models with the change and McNemar's verdict,
    # the digits, the params that changed; everything else folded away; no link into this machine's disk.
    summary, folded = report.split("<details>")
    assert len(summary.splitlines()) <= 30, summary
    names = (
        "| baseline convnet |",
        "| vgg16 features + head |",
        "| frozen vgg16 + head, augmented |",
        "| fine-tuned vgg16 |",
    )
    rows = [line for line in summary.splitlines() if line.startswith(names)]
    assert [row[: len(name)] for row, name in zip(rows, names, strict=True)] == list(names)
    evaluated = json.loads((project / "metrics/evaluate.json").read_text())
    head_row = next(row for row in rows if row.startswith("| vgg16 features + head"))
    cells = [cell.strip() for cell in head_row.strip("|").split("|")]
    assert (
        cells[1].startswith(f"{evaluated['head']['accuracy']:.4f} [")
        and cells[2] == f"{evaluated['head']['roc_auc']:.4f}"
    )
    assert cells[6] in ("within noise", "**significant**")
    assert "head.learning_rate" in summary  # the params that changed
    assert "| mnist | 359 |" in summary and "| fashion_mnist | 30 |" in summary
    assert "metrics/train_head/metrics.json" in folded and folded.rstrip().count("</details>") == 1
    assert not re.search(r"\]\((?!https?://)", report) and str(project) not in report  # no relative or local links


def _clone(origin: Path, folder: Path) -> Path:
    sh(["git", "clone", "-q", str(origin), str(folder)], folder.parent)
    sh(["git", "config", "user.email", "test@example.com"], folder)
    sh(["git", "config", "user.name", "test"], folder)
    return folder


def _grid_row(rows: list, name: str) -> tuple[dict, dict]:
    """An experiment's params and test metrics in ``dvc exp show --json``."""
    data = _experiment(rows, name)["data"]
    return data["params"]["params.yaml"]["data"], data["metrics"]["metrics/evaluate.json"]["data"]


# It commits the workspace as the previous tests left it (a finished run), runs experiments in it and leaves it as
# committed, with the results the commit records, for the tests below.
@pytest.mark.slow
def test_runs_and_experiments_are_shared_through_a_dvc_remote_and_a_git_remote(project: Path, tmp_path: Path) -> None:
    # Machine A (the project: it ran the tiny pipeline) shares its run through a bare Git repository and a
    # local-folder DVC remote, standing in for GitHub and S3.
    origin, storage = tmp_path / "origin.git", tmp_path / "storage"
    sh(["git", "init", "-q", "--bare", "-b", "main", str(origin)], tmp_path)
    sh(["dvc", "remote", "add", "--default", "storage", str(storage)], project)
    sh(["git", "add", "-A"], project)
    sh(["git", "commit", "-q", "-m", "tiny run, shared"], project)
    sh(["git", "remote", "add", "origin", str(origin)], project)
    sh(["git", "push", "-q", "origin", "main"], project)
    sh(["dvc", "push", "--run-cache"], project)

    # Machine B gets the data, features and models without running a stage.
    b = _clone(origin, tmp_path / "b")
    sh(["dvc", "pull"], b)
    assert json.loads(sh(["dvc", "status", "--json"], b)) == {}
    assert ran(sh(["dvc", "repro"], b), [*STAGES, *DIGITS, *EXPORT]) == []
    assert (b / "models/finetuned.keras").read_bytes() == (project / "models/finetuned.keras").read_bytes()

    # DVC's model registry: a version is a GTO tag (what `gto register` makes); anyone with the Git URL then
    # gets the model by its name, from the DVC remote.
    for artifact in ("finetuned", "mnist-export"):
        sh(["git", "tag", "-a", f"{artifact}@v0.1.0", "-m", f"Registering artifact {artifact} version v0.1.0"], project)
    sh(["git", "push", "-q", "origin", "--tags"], project)
    got = tmp_path / "got"
    got.mkdir()
    sh(["dvc", "artifacts", "get", str(origin), "finetuned", "-o", str(got / "finetuned.keras")], got)
    assert (got / "finetuned.keras").read_bytes() == (project / "models/finetuned.keras").read_bytes()
    sh(["dvc", "artifacts", "get", str(origin), "mnist-export", "-o", str(got / "mnist")], got)
    card = (project / "models/export/mnist/MODEL_CARD.md").read_text()
    assert (got / "mnist/MODEL_CARD.md").read_text() == card and (got / "mnist/saved_model").is_dir()

    # A grid split between the two machines: each runs one point and pushes it, with its run-cache. A's point
    # changes the head alone: it re-runs only what follows the head, and leaves the baseline as it was.
    before = (project / "models/baseline.keras").read_bytes()
    out = sh(["dvc", "exp", "run", "--name", "grid-a", "-S", "head.learning_rate=2e-3"], project)
    # The fine-tuned model alone is exported again: the digits models did not change.
    assert sorted(ran(out, [*STAGES, *EXPORT])) == [
        "evaluate",
        "export@cats_dogs",
        "finetune",
        "model_cards",
        "train_head",
    ]
    assert (project / "models/baseline.keras").read_bytes() == before
    _a_head_change_shows_in_diffs_and_the_report(project)
    out = sh(["dvc", "exp", "run", "--name", "grid-b", "-S", "evaluate.threshold=0.6"], b)
    assert ran(out, [*STAGES, *EXPORT]) == ["evaluate", "model_cards"]  # the threshold never exports again
    assert "dog when P(dog) >= 0.6 (`evaluate.threshold`)" in (b / "models/export/cats_dogs/MODEL_CARD.md").read_text()
    for machine, name in ((project, "grid-a"), (b, "grid-b")):
        sh(["dvc", "exp", "push", "--run-cache", "origin", name], machine)

    # Machine C sees both points in one table.
    c = _clone(origin, tmp_path / "c")
    sh(["dvc", "exp", "pull", "origin", "grid-a", "grid-b"], c)
    rows = json.loads(sh(["dvc", "exp", "show", "--json"], c))
    committed = YAML(typ="safe").load(sh(["git", "show", "HEAD:params.yaml"], project))
    (params_a, metrics_a), (params_b, metrics_b) = _grid_row(rows, "grid-a"), _grid_row(rows, "grid-b")
    assert (params_a["head"]["learning_rate"], params_a["evaluate"]["threshold"]) == (
        0.002,
        committed["evaluate"]["threshold"],
    )
    assert (params_b["head"]["learning_rate"], params_b["evaluate"]["threshold"]) == (
        committed["head"]["learning_rate"],
        0.6,
    )
    for metrics in (metrics_a, metrics_b):
        assert metrics["test_images"] == 2 * TINY["sample.test_per_class"]
    # make compare: one row per point, the param it changed, each model's accuracy, interval and AUC as recorded.
    table = sh([sys.executable, "-m", "tools.compare"], c).strip().splitlines()
    assert len(table[0].split("|")) == 2 + 2 + 4 + 2  # experiment, changed params, four models, two datasets
    cells = {
        row.strip("|").split("|")[0].strip(): [cell.strip() for cell in row.strip("|").split("|")] for row in table
    }
    for name, change, metrics in (
        ("grid-a", "head.learning_rate=0.002", metrics_a),
        ("grid-b", "evaluate.threshold=0.6", metrics_b),
    ):
        assert cells[name][1] == change
        for column, model in enumerate(("baseline", "head", "frozen", "finetuned"), start=2):
            result = metrics[model]
            interval = result["accuracy_ci95"]
            expected = (
                f"{result['accuracy']:.3f} [{interval['low']:.3f}, {interval['high']:.3f}] / {result['roc_auc']:.3f}"
            )
            assert cells[name][column] == expected

    # C takes B's point as its workspace: params and metrics from Git, models from the DVC remote.
    sh(["dvc", "exp", "apply", "grid-b"], c)
    sh(["dvc", "pull"], c)
    assert json.loads(sh(["dvc", "status", "--json"], c)) == {}
    assert json.loads((c / "metrics/evaluate.json").read_text()) == metrics_b
    for model in ("baseline", "head", "frozen", "finetuned"):  # B's metrics are those of B's predictions, at 0.6
        table = pd.read_csv(c / f"metrics/evaluate/predictions/{model}.csv")
        assert (table["predicted"] == np.where(table["probability"] >= 0.6, "dog", "cat")).all()
        assert metrics_b[model]["accuracy"] == pytest.approx((table["label"] == table["predicted"]).mean())

    # Back on A, a point already run (the committed learning rate) comes from the run-cache: nothing runs.
    out = sh(["dvc", "exp", "run", "-S", f"head.learning_rate={committed['head']['learning_rate']}"], project)
    assert ran(out, STAGES + DIGITS + EXPORT) == []
    for stage in ("train_head", "finetune", "evaluate"):
        assert f"Stage '{stage}' is cached - skipping run" in out
    assert sh(["git", "status", "--porcelain", "--", "params.yaml", "dvc.lock", "metrics"], project) == ""


def _experiment(rows: list, name: str) -> dict:
    """The entry of ``dvc exp show --json`` output for experiment ``name``."""
    for row in rows:
        for experiment in row.get("experiments") or []:
            for rev in experiment["revs"]:
                if rev.get("name") == name:
                    return rev
    raise AssertionError(f"no experiment {name} in dvc exp show")


def test_a_digits_training_change_touches_no_other_stage(project: Path) -> None:
    params = project / "params.yaml"
    original = params.read_text()
    write_params(params, {"digits.epochs": 2}, base=params)  # the workspace's params, one value changed
    try:
        changed = stale(project)
    finally:
        params.write_text(original)
    # Only the training of each dataset, and the model cards, which quote the epochs; the evaluations
    # follow in the DAG (test_dvc_yaml checks the deps). No Dogs vs. Cats stage.
    assert sorted(changed) == ["digits_train@fashion_mnist", "digits_train@mnist", "model_cards"]


def test_the_demo_scenario_differs_from_tiny_only_in_size() -> None:
    from tools import scenarios

    demo, tiny = scenarios.load("demo"), scenarios.load("tiny")
    assert demo["data.source"] == tiny["data.source"] == "synthetic"
    assert demo["features.weights"] == tiny["features.weights"] == "none"
    assert demo["image.side"] == 96 and scenarios.set_flags({"baseline.filters": [8, 16], "head.normalize": True}) == [
        "-S",
        "baseline.filters=[8,16]",
        "-S",
        "head.normalize=true",
    ]
