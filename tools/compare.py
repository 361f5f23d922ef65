"""``python -m tools.compare`` (``make compare``): the study across experiments, as one compact table.

``dvc exp show`` lists every param and metric of every experiment (hundreds of columns). This prints
what the study compares: per experiment (the workspace, the commit it starts from, each experiment of
it), the params it changed against that commit, each of the four models' test accuracy with its 95 %
interval and ROC AUC, and each digits dataset's test accuracy. Extra arguments go to ``dvc exp show``
(``-A`` for every commit's experiments, ``--rev`` ...).
"""

from __future__ import annotations

from runtime.program import run, start_program

start_program(__name__)  # first: the imports below take seconds (TensorFlow's), and Ctrl-C during them ends in one line

import json
import subprocess
import sys

from dogs_vs_cats import paths
from dogs_vs_cats.classes import DIGITS_DATASETS
from runtime.errors import PipelineError, one_line
from tools.cells import accuracy_cell
from tools.scenarios import flag_value

MODELS = tuple(paths.EVALUATED_MODELS)
EVALUATE = paths.EVALUATE_METRICS.as_posix()
TIMEOUT = 300  # seconds for dvc exp show: it reads git, never the network
UNFINISHED = ("queued", "running", "failed")  # states of dvc exp show's executor for an experiment without results


def flat(tree: object, prefix: str = "") -> dict[str, object]:
    """A nested mapping as dotted keys: ``{"head": {"units": 8}}`` -> ``{"head.units": 8}``."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, object] = {}
    for key, value in tree.items():
        out.update(flat(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def rows(shown: list[dict]) -> list[tuple[str, dict, dict, dict]]:
    """``(name, params, metrics, baseline params)`` per row of ``dvc exp show --json``: each commit, then its
    experiments; the baseline is the commit the row is compared with (the workspace's is HEAD, the first). An
    experiment that has not finished says so in its name: ``grid-c (failed)``."""
    commits = [entry for entry in shown if entry["rev"] != "workspace"]
    head = _data(commits[0], "HEAD")[0] if commits else {}
    out = []
    for entry in shown:
        if entry["rev"] == "workspace":
            out.append(("workspace", *_data(entry, "workspace"), head))
            continue
        name = entry.get("name") or entry["rev"][:7]
        params, metrics = _data(entry, name)
        out.append((name, params, metrics, params))
        for experiment in entry.get("experiments") or []:
            revision = experiment["revs"][0]
            name = experiment.get("name") or revision.get("name") or revision["rev"][:7]
            state = (experiment.get("executor") or {}).get("state")
            if state in UNFINISHED:  # no results, and DVC's error says only "Experiment run failed"
                out.append((f"{name} ({state})", _params(revision.get("data") or {}, name), {}, params))
            else:
                out.append((name, *_data(revision, name), params))
    return out


def _data(entry: dict, name: str) -> tuple[dict, dict]:
    """The params (dotted keys) and metrics (per file) of one revision; a PipelineError when DVC could not read them."""
    if entry.get("error"):
        raise PipelineError(f"dvc exp show, {name}: {_message(entry['error'])}; fix the file and run this again")
    data = entry.get("data") or {}
    metrics = {path: (value or {}).get("data", {}) for path, value in (data.get("metrics") or {}).items()}
    return _params(data, name), metrics


def _params(data: dict, name: str) -> dict:
    read = (data.get("params") or {}).get(paths.PARAMS.as_posix()) or {}
    if read.get("error"):
        raise PipelineError(f"{paths.PARAMS} of {name}: {_message(read['error'])}; fix the file and run this again")
    return flat(read.get("data") or {})


def _message(error: object) -> str:
    said = (error.get("msg") or error.get("type")) if isinstance(error, dict) else error
    return one_line(said or "unreadable")


def changed(params: dict, base: dict) -> str:
    """The params that differ from ``base``, as ``dvc exp run -S`` sets them: ``key=value``, ``+key=value`` for a
    key ``base`` lacks, ``~key`` for one only ``base`` has; "-" for none."""
    keys = sorted(key for key in set(params) | set(base) if params.get(key, _ABSENT) != base.get(key, _ABSENT))
    return ", ".join(_override(key, params, base) for key in keys) or "-"


_ABSENT = object()  # a key one side lacks, unlike a key set to null


def _override(key: str, params: dict, base: dict) -> str:
    if key not in params:
        return f"~{key}"
    return f"{'' if key in base else '+'}{key}={flag_value(params[key])}"


def _model_cell(result: object) -> str:
    if not isinstance(result, dict) or not isinstance(result.get("accuracy"), int | float):
        return "-"
    cell = f"{result['accuracy']:.3f}"
    interval = result.get("accuracy_ci95") or {}
    if isinstance(interval.get("low"), int | float) and isinstance(interval.get("high"), int | float):
        cell = accuracy_cell(cell, interval["low"], interval["high"], EVALUATE)
    if isinstance(result.get("roc_auc"), int | float):
        cell += f" / {result['roc_auc']:.3f}"
    return cell


def table(shown: list[dict]) -> str:
    """The Markdown table of ``dvc exp show --json``'s rows."""
    digits = [f"{dataset} acc" for dataset in DIGITS_DATASETS]
    header = ["experiment", "changed params", *(f"{model} acc [95 % CI] / AUC" for model in MODELS), *digits]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for name, params, metrics, base in rows(shown):
        evaluated = metrics.get(EVALUATE, {})
        cells = [name, changed(params, base), *(_model_cell(evaluated.get(model)) for model in MODELS)]
        for dataset in DIGITS_DATASETS:
            accuracy = metrics.get(paths.digits_metrics(dataset).as_posix(), {}).get("accuracy")
            cells.append(f"{accuracy:.4f}" if isinstance(accuracy, int | float) else "-")
        lines.append("| " + " | ".join(cell.replace("|", r"\|") for cell in cells) + " |")  # a | would end the cell
    return "\n".join(lines)


def exp_show(args: list[str]) -> list[dict]:
    command = ["dvc", "exp", "show", "--json", *args]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT)
    except FileNotFoundError:
        raise PipelineError("dvc: not found; run make setup, or activate .venv") from None
    except subprocess.TimeoutExpired:
        raise PipelineError(f"{' '.join(command)} gave no answer in {TIMEOUT} s; check the repository") from None
    if result.returncode:
        said = one_line(((result.stderr or result.stdout).strip().splitlines() or ["no output"])[-1])
        raise PipelineError(f"{' '.join(command)} failed ({said}); run it from the repository")
    try:
        shown = json.loads(result.stdout)
    except ValueError:
        raise PipelineError(f"{' '.join(command)} did not print JSON; check the DVC version") from None
    if not isinstance(shown, list):
        raise PipelineError(f"{' '.join(command)} printed {type(shown).__name__}, not a list of revisions")
    return shown


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if {"-h", "--help"} & set(argv):  # the other arguments are dvc exp show's: its help is `dvc exp show --help`
        print(f"usage: python -m tools.compare [dvc exp show's arguments]\n\n{__doc__.strip()}")
        return
    print(table(exp_show(argv)))


if __name__ == "__main__":
    run(main)
