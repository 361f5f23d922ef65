"""The GitHub workflows: linted, actions pinned, no expression in a shell, PR code never run with write access."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from tests.conftest import REPO

WORKFLOWS = sorted((REPO / ".github/workflows").glob("*.yml"))


def _steps(path: Path) -> list[dict]:
    workflow = YAML(typ="safe").load(path.read_text())
    return [step for job in workflow["jobs"].values() for step in job["steps"]]


def test_actionlint_accepts_ours_and_rejects_a_broken_one(tmp_path: Path) -> None:
    actionlint = shutil.which("actionlint", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    assert actionlint, "actionlint is in requirements.txt; run make setup"
    ours = subprocess.run([actionlint, *map(str, WORKFLOWS)], capture_output=True, text=True)
    assert ours.returncode == 0, ours.stdout + ours.stderr
    broken = tmp_path / "broken.yml"
    broken.write_text(
        "on: push\njobs:\n  x:\n    runs-on: ubuntu-latest\n    steps:\n      - run: echo ${{ github.nope }}\n"
    )
    assert subprocess.run([actionlint, str(broken)], capture_output=True).returncode != 0


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_actions_are_pinned_by_commit_and_run_steps_take_no_expressions(path: Path) -> None:
    for step in _steps(path):
        if "uses" in step:
            assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", step["uses"]), step["uses"]
        if "run" in step:
            assert "${{" not in step["run"], f"{path.name}: pass expressions through env:, not into the shell"


def test_jobs_have_time_limits_and_checkouts_keep_no_token() -> None:
    for path in WORKFLOWS:
        workflow = YAML(typ="safe").load(path.read_text())
        for name, job in workflow["jobs"].items():
            assert "timeout-minutes" in job, f"{path.name}: {name}"
        for step in _steps(path):
            if step.get("uses", "").startswith("actions/checkout@"):
                assert step["with"]["persist-credentials"] is False


def test_only_the_job_that_never_checks_out_code_can_write() -> None:
    for path in WORKFLOWS:
        workflow = YAML(typ="safe").load(path.read_text())
        writes = "write" in workflow.get("permissions", {}).values()
        checks_out = any(step.get("uses", "").startswith("actions/checkout@") for step in _steps(path))
        assert not (writes and checks_out), path.name
        if "pull_request" in workflow.get("on", workflow.get(True, {})):
            assert not writes, f"{path.name} runs pull request code: read-only token"


def test_the_report_workflow_installs_every_package_the_report_imports() -> None:
    from tests.repo.test_dvc_yaml import PACKAGES, imported_modules

    distributions = {"sklearn": "scikit-learn", "ruamel": "ruamel.yaml"}
    imported = set()
    for module in imported_modules("tools.report"):
        for node in ast.walk(ast.parse((REPO / f"{module.replace('.', '/')}.py").read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.col_offset == 0:
                names = [node.module]
            imported |= {name.split(".")[0] for name in names if node.col_offset == 0}  # top-level imports only
    third_party = {distributions.get(name, name) for name in imported - set(sys.stdlib_module_names) - set(PACKAGES)}
    (step,) = [s for s in _steps(REPO / ".github/workflows/pr-report.yml") if "grep -E" in s.get("run", "")]
    installed = set(re.search(r"\^\((.*)\)==", step["run"]).group(1).replace("\\.", ".").split("|"))
    assert third_party and third_party <= installed


FAKE_GH = """#!/bin/sh
echo "$*" >> "$GH_CALLS"
if [ "$1" = api ]; then echo "$FAKE_PR_HEAD"; fi
"""


@pytest.mark.parametrize(
    ("claimed", "actual_head", "commented"),
    [
        ("7", "open abc123 fork/dogs", True),  # the pull request the report ran on
        ("3", "open f00d42 owner/dogs", False),  # another pull request's number: a maintainer's
        ("7", "open abc123 owner/dogs", False),  # the same commit, but not from the fork that ran the report
        ("7", "closed abc123 fork/dogs", False),
        ("7; rm -rf ~", "", False),
    ],
)
def test_the_report_is_posted_only_on_the_pull_request_it_ran_on(
    tmp_path: Path, claimed: str, actual_head: str, commented: bool
) -> None:
    (step,) = [s for s in _steps(REPO / ".github/workflows/pr-comment.yml") if "gh pr comment" in s.get("run", "")]
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin/gh").write_text(FAKE_GH)
    (tmp_path / "bin/gh").chmod(0o755)
    (tmp_path / "report").mkdir()
    (tmp_path / "report/pr-number").write_text(claimed + "\n")
    (tmp_path / "report/report.md").write_text("# page\n")
    calls = tmp_path / "calls"
    env = {
        "PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}",
        "GH_CALLS": str(calls),
        "FAKE_PR_HEAD": actual_head,
        "GH_REPO": "owner/dogs",
        "HEAD_SHA": "abc123",  # what the workflow_run event says, not the artifact
        "HEAD_REPO": "fork/dogs",
    }
    result = subprocess.run(["bash", "-e", "-c", step["run"]], cwd=tmp_path, env=env, capture_output=True, text=True)
    posted = (
        [line for line in calls.read_text().splitlines() if line.startswith("pr comment")] if calls.exists() else []
    )
    if commented:
        assert result.returncode == 0, result.stderr
        assert posted == ["pr comment 7 --edit-last --body-file report/report.md"]
    else:
        assert result.returncode != 0 and posted == []
        assert result.stderr.startswith("error: ") and len(result.stderr.splitlines()) == 1
