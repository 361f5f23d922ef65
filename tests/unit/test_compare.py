"""``make compare`` (tools.compare) on ``dvc exp show --json`` as DVC 3.67 prints it: rows, cells, errors."""

from __future__ import annotations

import pytest

from runtime.errors import PipelineError
from tools import compare

PARAMS = {"seed": 42, "head": {"units": 8, "normalize": False}, "baseline": {"filters": [8, 16]}}
RESULT = {"accuracy": 0.75, "accuracy_ci95": {"low": 0.5, "high": 0.9}, "roc_auc": 0.8}


def revision(rev: str, params: dict | None, metrics: dict | None = None, name: str | None = None) -> dict:
    """One revision of ``dvc exp show --json``: params.yaml's values and metrics/evaluate.json's."""
    data = {"params": {"params.yaml": {"data": params}}} if params is not None else {}
    data["metrics"] = {compare.EVALUATE: {"data": metrics}} if metrics else {}
    return {"rev": rev, "name": name, "data": {"rev": rev, **data}, "error": None, "experiments": None}


def shown(*experiments: dict, workspace: dict | None = None) -> list[dict]:
    commit = revision("a" * 40, PARAMS, {"baseline": RESULT}, name="main")
    commit["experiments"] = list(experiments)
    return [workspace or revision("workspace", PARAMS), commit]


def experiment(name: str, params: dict, metrics: dict | None = None, state: str = "success") -> dict:
    return {"revs": [revision("b" * 40, params, metrics, name)], "executor": {"state": state}, "name": name}


def cells(table: str) -> dict[str, list[str]]:
    """Each row's cells by its first, split at the unescaped |."""
    out = {}
    for line in table.splitlines()[2:]:
        row = [cell.strip() for cell in line.replace(r"\|", "\0").strip("|").split("|")]
        out[row[0].replace("\0", "|")] = [cell.replace("\0", r"\|") for cell in row]
    return out


def test_a_bar_in_a_name_or_value_stays_in_its_cell() -> None:
    changed = {**PARAMS, "seed": "4|2"}
    table = compare.table(shown(experiment("a|b", changed, {"baseline": RESULT})))
    widths = {len(row) for row in cells(table).values()}
    assert widths == {len(table.splitlines()[0].strip("|").split("|"))}  # every row as wide as the header
    row = cells(table)["a|b"]
    assert row[:3] == [r"a\|b", r"seed=4\|2", "0.750 [0.500, 0.900] / 0.800"]


def test_changed_params_are_written_as_dvc_exp_run_s_takes_them() -> None:
    params = {**PARAMS, "head": {"units": 8, "normalize": True}, "baseline": {"filters": [16, 32]}, "new": None}
    del params["seed"]
    row = cells(compare.table(shown(experiment("exp", params))))["exp"]
    assert row[1] == "baseline.filters=[16,32], head.normalize=true, +new=null, ~seed"


def test_a_failed_experiment_is_marked_failed() -> None:
    failed = experiment("grid-c", {**PARAMS, "seed": 7}, state="failed")
    failed["revs"][0]["error"] = {"msg": "Experiment run failed", "type": ""}  # as DVC 3.67 sets it
    rows = cells(compare.table(shown(failed, experiment("grid-d", PARAMS))))
    assert rows["grid-c (failed)"][1:3] == ["seed=7", "-"]
    assert rows["grid-d"][1] == "-"


@pytest.mark.parametrize("where", ["workspace", "file"])
def test_an_unreadable_params_file_is_one_line_naming_it(where: str) -> None:
    workspace = revision("workspace", PARAMS)
    message = "unable to read: 'params.yaml', YAML file structure is corrupted"
    if where == "workspace":  # dvc.yaml reads params.yaml, so DVC cannot read the revision at all
        workspace.update(data=None, error={"msg": message, "type": "YAMLFileCorruptedError"})
    else:
        workspace["data"]["params"]["params.yaml"] = {"error": {"msg": message, "type": "YAMLFileCorruptedError"}}
    with pytest.raises(PipelineError, match=r"workspace: .*'?params\.yaml'?.* corrupted; fix the file") as error:
        compare.table(shown(workspace=workspace))
    assert "\n" not in str(error.value)


def test_help_is_the_tools_own_not_a_dvc_error(capsys: pytest.CaptureFixture) -> None:
    compare.main(["--help"])  # its other arguments go to dvc exp show, which would answer --help with no JSON
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m tools.compare [dvc exp show's arguments]\n")
    assert "make compare" in out
