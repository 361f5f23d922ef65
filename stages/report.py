"""``python -m stages.report``: one Markdown page comparing the models, and how metrics and params moved.

Needs DVC, git and the statistics packages (no TensorFlow), and works in any clone because metrics files
and per-image predictions are in git. The pull-request workflow posts this page as a comment; ``make
report`` writes it locally.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd

from stages import paths, stats
from stages.common import atomic_path, output_file, run

REPORT_NAME = "report.md"
COLUMNS = {
    "accuracy": "accuracy",
    "precision": "precision",
    "recall": "recall",
    "f1": "F1",
    "roc_auc": "ROC AUC",
    "log_loss": "log loss",
}


def model_names(base: str) -> dict[str, str]:
    """How the page names each model, given the pretrained base they used."""
    return {
        "baseline": "baseline convnet",
        "head": f"{base} features + head",
        "frozen": f"frozen {base} + head, augmented",
        "finetuned": f"fine-tuned {base}",
    }


def models_table(results: dict, base: str) -> str:
    """The three models side by side, as a Markdown table: metrics, the accuracy's 95 % interval, and cost."""
    lines = [
        "| model | " + " | ".join(COLUMNS.values()) + " | accuracy 95 % CI | params | GMACs/image |",
        "|---" * (len(COLUMNS) + 4) + "|",
    ]
    for key, name in model_names(base).items():
        section = results.get(key, {})
        cells = [_number(section.get(metric)) for metric in COLUMNS]
        interval = section.get("accuracy_ci95")
        cells.append(f"{interval['low']:.4f} to {interval['high']:.4f}" if interval else "-")
        cells.append(f"{section['params']:,}" if "params" in section else "-")
        cells.append(f"{section['gmacs']:.3f}" if "gmacs" in section else "-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def significance_table(base: str) -> str:
    """Each model's test accuracy here against ``base``, and whether the change is real: the exact McNemar
    test on the per-image predictions of both revisions (committed, so any clone can run it)."""
    lines = [
        f"| model | accuracy at `{base}` | accuracy here | right only at `{base}` | right only here | p | verdict |",
        "|---" * 7 + "|",
    ]
    for model in paths.EVALUATED_MODELS:
        path = paths.predictions_file(model)
        if not path.is_file():
            continue
        shown = subprocess.run(["git", "show", f"{base}:{path.as_posix()}"], capture_output=True, text=True)
        if shown.returncode != 0:
            lines.append(f"| {model} | - | - | - | - | - | no predictions at `{base}` |")
            continue
        here, there = pd.read_csv(path), pd.read_csv(io.StringIO(shown.stdout))
        paired = here.merge(there, on="file", suffixes=("", "_base"))
        if not len(paired) == len(here) == len(there):
            lines.append(f"| {model} | - | - | - | - | - | different test images: not comparable |")
            continue
        right_here = (paired["label"] == paired["predicted"]).to_numpy()
        right_there = (paired["label_base"] == paired["predicted_base"]).to_numpy()
        test = stats.mcnemar(right_there, right_here)
        verdict = "**significant**" if test["significant"] else "within noise"
        lines.append(
            f"| {model} | {right_there.mean():.4f} | {right_here.mean():.4f} | {test['only_a']} | {test['only_b']} "
            f"| {test['p_value']:.3g} | {verdict} |"
        )
    return "\n".join(lines)


DIGITS_COLUMNS = {"accuracy": "accuracy", "f1_macro": "macro F1", "log_loss": "log loss"}


def digits_table(metrics_dir: Path = paths.METRICS_DIR) -> str:
    """The digits study's test metrics, one row per dataset that has them."""
    lines = ["| dataset | test images | " + " | ".join(DIGITS_COLUMNS.values()) + " |"]
    lines.append("|---" * (len(DIGITS_COLUMNS) + 2) + "|")
    for dataset in paths.DIGITS_DATASETS:
        path = metrics_dir / "digits" / f"{dataset}.json"
        if path.is_file():
            results = json.loads(path.read_text())
            cells = [_number(results.get(metric)) for metric in DIGITS_COLUMNS]
            lines.append(f"| {dataset} | {results.get('test_images', '?')} | " + " | ".join(cells) + " |")
    return "\n".join(lines) if len(lines) > 2 else "No digits metrics yet: run `dvc repro`."


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def dvc_markdown(args: list[str]) -> str:
    """What a ``dvc ... --md`` command prints, or its error as a sentence."""
    # This interpreter's DVC, whatever is first on PATH.
    result = subprocess.run([sys.executable, "-m", "dvc", *args, "--md"], capture_output=True, text=True)
    if result.returncode != 0:
        reason = (result.stderr.strip().splitlines() or ["no output"])[-1]
        return f"`dvc {' '.join(args)}` failed: {reason}"
    return result.stdout.strip() or "No changes."


def render(
    base: str,
    evaluate_json: Path = paths.EVALUATE_METRICS,
    features_json: Path = paths.FEATURES_METRICS,
    metrics_dir: Path = paths.METRICS_DIR,
) -> str:
    """The whole page."""
    parts = ["# Dogs vs. Cats: model comparison", ""]
    if evaluate_json.is_file():
        results = json.loads(evaluate_json.read_text())
        pretrained = json.loads(features_json.read_text())["base"] if features_json.is_file() else "pretrained"
        parts += [
            f"On the held-out test split ({results.get('test_images', '?')} images):",
            "",
            models_table(results, pretrained),
        ]
    else:
        parts.append(f"No `{evaluate_json}` yet: run `dvc repro`.")
    parts += ["", "## Digits: MNIST and Fashion-MNIST", "", digits_table(metrics_dir)]
    parts += [
        "",
        f"## Is the accuracy change against `{base}` real?",
        "",
        f"Exact McNemar test on the test images both revisions scored; p < {stats.SIGNIFICANT} is called significant.",
        "",
        significance_table(base),
        "",
        f"## Metrics against `{base}`",
        "",
        dvc_markdown(["metrics", "diff", base]),
        "",
        f"## Params against `{base}`",
        "",
        dvc_markdown(["params", "diff", base]),
        "",
        "## Plots",
        "",
        f"`dvc plots diff {base}` renders the training curves, confusion matrices, ROC curves and galleries to "
        "`dvc_plots/index.html` (`make report` does this too). The galleries of the most confidently wrong "
        "test images are committed: "
        + ", ".join(f"[{model}]({paths.gallery_file(model).as_posix()})" for model in paths.EVALUATED_MODELS)
        + ".",
        "",
    ]
    return "\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="main", help="git revision to compare against (default: main)")
    parser.add_argument(
        "--out", type=Path, default=Path(REPORT_NAME), help=f"the page's file, or a folder for {REPORT_NAME}"
    )
    parser.add_argument("--force", action="store_true", help="replace the --out file if it exists")
    args = parser.parse_args()
    out = output_file(args.out, REPORT_NAME, force=args.force, option="--out")
    page = render(args.base)
    with atomic_path(out, replace=args.force) as tmp:
        tmp.write_text(page)
    print(f"report: wrote {out}")


if __name__ == "__main__":
    run(main)
