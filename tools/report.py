"""``python -m tools.report``: one Markdown page comparing the models, and how metrics and params moved.

Needs DVC, git and the statistics packages (no TensorFlow), and works in any clone because metrics files
and per-image predictions are in git. The pull-request workflow posts this page as a comment; ``make
report`` writes it locally.
"""

from __future__ import annotations

from runtime.program import run, start_program

start_program(__name__)  # first: the imports below take seconds (TensorFlow's), and Ctrl-C during them ends in one line

import argparse
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

from dogs_vs_cats import paths, stats
from dogs_vs_cats.classes import DIGITS_DATASETS
from runtime.errors import PipelineError, one_line
from runtime.files import atomic_path, input_file, output_file
from tools.cells import accuracy_cell, number

REPORT_NAME = "report.md"
DVC_TIMEOUT = 300  # seconds for a dvc command: it reads git and the workspace, never the network
COLUMNS = {
    "accuracy": "accuracy",
    "precision": "precision",
    "recall": "recall",
    "f1": "F1",
    "roc_auc": "ROC AUC",
    "log_loss": "log loss",
}


def model_names(pretrained: str) -> dict[str, str]:
    """How the page names each model, given the pretrained network they used."""
    return {
        "baseline": "baseline convnet",
        "head": f"{pretrained} features + head",
        "frozen": f"frozen {pretrained} + head, augmented",
        "finetuned": f"fine-tuned {pretrained}",
    }


def models_table(results: dict, pretrained: str, source: Path = paths.EVALUATE_METRICS) -> str:
    """The four models side by side, as a Markdown table: every metric, the accuracy's 95 % interval, and cost."""
    lines = [
        "| model | " + " | ".join(COLUMNS.values()) + " | accuracy 95 % CI | params | GMACs/image |",
        "|---" * (len(COLUMNS) + 4) + "|",
    ]
    for key, name in model_names(pretrained).items():
        section = _section(results, key, source)
        cells = [number(section.get(metric), f"{source}: {key}.{metric}") for metric in COLUMNS]
        interval = section.get("accuracy_ci95")
        if interval is not None and not (isinstance(interval, dict) and {"low", "high"} <= interval.keys()):
            raise PipelineError(f"{source}: {key}.accuracy_ci95 has no low and high; run dvc repro evaluate")
        cells.append(f"{number(interval['low'], source)} to {number(interval['high'], source)}" if interval else "-")
        cells.append(f"{number(section['params'], source, '{:,}')}" if "params" in section else "-")
        cells.append(f"{number(section['gmacs'], source, '{:.3f}')}" if "gmacs" in section else "-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _section(results: dict, key: str, source: Path) -> dict:
    """Model ``key``'s metrics in ``results``, or one line naming ``source`` when they are no table."""
    section = results.get(key, {})
    if not isinstance(section, dict):
        raise PipelineError(f"{source}: {key} is {section!r:.60}, not a table of metrics; run dvc repro evaluate")
    return section


def change_against(model: str, revision: str) -> tuple[str, str, str, str]:
    """``model``'s test accuracy at the git ``revision``, the change since, McNemar's p and its verdict, as table
    cells: the exact test on the per-image predictions of both revisions (committed, so any clone can run it)."""
    path = paths.predictions_file(model)
    if not _present(path):
        return "-", "-", "-", "no predictions here"
    shown = subprocess.run(["git", "show", f"{revision}:{path.as_posix()}"], capture_output=True)
    if shown.returncode != 0:
        return "-", "-", "-", f"no predictions at `{revision}`"
    here, there = _predictions(path.read_bytes(), str(path)), _predictions(shown.stdout, f"{revision}:{path}")
    paired = here.merge(there, on="file", suffixes=("", "_there"))
    if not len(paired) == len(here) == len(there):
        return "-", "-", "-", "different test images: not comparable"
    right_here = (paired["label"] == paired["predicted"]).to_numpy()
    right_there = (paired["label_there"] == paired["predicted_there"]).to_numpy()
    test = stats.mcnemar(right_there, right_here)
    verdict = "**significant**" if test["significant"] else "within noise"
    change = right_here.mean() - right_there.mean()
    return f"{right_there.mean():.4f}", f"{change:+.4f}", f"{test['p_value']:.3g}", verdict


def summary_table(results: dict, pretrained: str, revision: str, source: Path = paths.EVALUATE_METRICS) -> str:
    """What a reviewer reads first: per model the test accuracy with its 95 % interval, ROC AUC, and the
    change against the git ``revision`` with McNemar's verdict."""
    lines = [
        f"| model | accuracy [95 % CI] | ROC AUC | at `{revision}` | change | McNemar p | verdict |",
        "|---" * 7 + "|",
    ]
    for key, name in model_names(pretrained).items():
        section = _section(results, key, source)
        accuracy = number(section.get("accuracy"), f"{source}: {key}.accuracy")
        interval = section.get("accuracy_ci95")
        if isinstance(interval, dict) and {"low", "high"} <= interval.keys():
            accuracy = accuracy_cell(accuracy, interval["low"], interval["high"], str(source))
        auc = number(section.get("roc_auc"), f"{source}: {key}.roc_auc")
        lines.append(f"| {name} | {accuracy} | {auc} | " + " | ".join(change_against(key, revision)) + " |")
    return "\n".join(lines)


DIGITS_COLUMNS = {"accuracy": "accuracy", "f1_macro": "macro F1", "log_loss": "log loss"}


def digits_table(metrics_dir: Path = paths.METRICS_DIR) -> str:
    """The digits study's test metrics, one row per dataset that has them."""
    lines = ["| dataset | test images | " + " | ".join(DIGITS_COLUMNS.values()) + " |"]
    lines.append("|---" * (len(DIGITS_COLUMNS) + 2) + "|")
    for dataset in DIGITS_DATASETS:
        path = metrics_dir / paths.digits_metrics(dataset).relative_to(paths.METRICS_DIR)  # metrics_dir: a copy
        if _present(path):
            results = _read_json(path)
            cells = [number(results.get(metric), f"{path}: {metric}") for metric in DIGITS_COLUMNS]
            lines.append(f"| {dataset} | {results.get('test_images', '?')} | " + " | ".join(cells) + " |")
    return "\n".join(lines) if len(lines) > 2 else "No digits metrics yet: run `dvc repro`."


PREDICTION_COLUMNS = ("file", "label", "predicted")


def _predictions(data: bytes, where: str) -> pd.DataFrame:
    """A predictions CSV that ``evaluate`` wrote, or one line saying why ``where`` is not one."""
    try:
        table = pd.read_csv(io.StringIO(data.decode("utf-8")))
    except UnicodeDecodeError:
        raise PipelineError(f"{where}: not UTF-8 text; it is not a predictions file evaluate wrote") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise PipelineError(f"{where}: not a readable CSV ({one_line(error, 120)})") from None
    missing = [column for column in PREDICTION_COLUMNS if column not in table.columns]
    if missing:
        raise PipelineError(f"{where}: has no column {missing[0]}; run dvc repro evaluate there")
    return table


def _present(path: Path) -> bool:
    """Whether a stage's output ``path`` is there to report on: False when nothing is, True for a file this
    process can read, and one line for anything else (a folder, or a FIFO that would hang the report)."""
    if not os.path.lexists(path):
        return False
    input_file(path, "run dvc repro")
    return True


def _read_json(path: Path) -> dict:
    """A metrics file as a dict, or one line naming it."""
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError) as error:  # UnicodeDecodeError is a ValueError
        raise PipelineError(f"{path}: not readable JSON ({one_line(error, 120)}); run dvc repro") from None
    if not isinstance(data, dict):
        raise PipelineError(f"{path}: not a JSON object of metrics; run dvc repro")
    return data


def check_revision(revision: str) -> None:
    """One line unless ``revision`` names a commit of this git repository."""
    try:
        found = subprocess.run(
            ["git", "rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}"], capture_output=True
        )
    except OSError:
        raise PipelineError("git is not installed; the report compares against a git revision") from None
    if found.returncode != 0:
        raise PipelineError(
            f"--base {revision}: no such git revision here; name a branch, tag or commit (git fetch it)"
        )


def dvc_markdown(args: list[str]) -> str:
    """What a ``dvc ... --md`` command prints, or its error as a sentence."""
    # This interpreter's DVC, whatever is first on PATH.
    command = [sys.executable, "-m", "dvc", *args, "--md"]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=DVC_TIMEOUT)
    except subprocess.TimeoutExpired:  # e.g. a FIFO among the metrics files, which DVC opens and waits on
        raise PipelineError(f"dvc {' '.join(args)} gave no answer in {DVC_TIMEOUT} s; check metrics/") from None
    if result.returncode != 0:
        reason = (result.stderr.strip().splitlines() or ["no output"])[-1]
        return f"`dvc {' '.join(args)}` failed: {reason}"
    return result.stdout.strip() or "No changes."


def render(
    revision: str,
    evaluate_json: Path = paths.EVALUATE_METRICS,
    features_json: Path = paths.FEATURES_METRICS,
    metrics_dir: Path = paths.METRICS_DIR,
) -> str:
    """The whole page: the summary a pull request's reviewer reads, the rest folded in ``<details>``."""
    parts = [f"# Dogs vs. Cats: the models against `{revision}`", ""]
    details = []
    if _present(evaluate_json):
        results = _read_json(evaluate_json)
        features = _read_json(features_json) if _present(features_json) else {}
        pretrained = str(features.get("base", "pretrained"))
        parts += [
            f"On the held-out test split ({results.get('test_images', '?')} images); a change is **significant** when "
            f"the exact McNemar test on the images both revisions scored gives p < {stats.SIGNIFICANT}.",
            "",
            summary_table(results, pretrained, revision, evaluate_json),
        ]
        details += ["### Every metric of each model", "", models_table(results, pretrained, evaluate_json), ""]
    else:
        parts.append(f"No `{evaluate_json}` yet: run `dvc repro`.")
    parts += ["", "## Digits: MNIST and Fashion-MNIST", "", digits_table(metrics_dir)]
    parts += ["", f"## Params changed against `{revision}`", "", dvc_markdown(["params", "diff", revision])]
    details += [f"### `dvc metrics diff {revision}`", "", dvc_markdown(["metrics", "diff", revision]), ""]
    parts += [
        "",
        "<details><summary>Every metric, and what changed against the base</summary>",
        "",
        *details,
        "</details>",
        "",
        f"Plots: `dvc plots diff {revision}` renders the training curves, confusion matrices, ROC curves and the "
        "galleries of the most confidently wrong test images "
        f"(committed under `{paths.EVALUATE_DIR.as_posix()}/gallery/`).",
        "",
    ]
    return "\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.report", description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="main", help="git revision to compare against (default: main)")
    parser.add_argument(
        "--out", type=Path, default=Path(REPORT_NAME), help=f"the page's file, or a folder for {REPORT_NAME}"
    )
    parser.add_argument("--force", action="store_true", help="replace the --out file if it exists")
    args = parser.parse_args()
    out = output_file(args.out, REPORT_NAME, force=args.force, option="--out")
    check_revision(args.base)
    page = render(args.base)
    with atomic_path(out, replace=args.force) as tmp:
        tmp.write_text(page)
    print(f"report: wrote {out}")


if __name__ == "__main__":
    run(main)
