"""``make search`` for real: Optuna trials as ``dvc exp run --temp`` experiments of the tiny digits study, a search
killed half way and continued, and two clones sharing one study through the gRPC storage proxy on loopback,
with a bare Git repository for GitHub and a folder for the DVC remote (the commands of
docs/experiments-and-scaling.md)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from ruamel.yaml import YAML

from tests.conftest import REPO, TINY, write_params
from tests.pipeline.test_pipeline import copy_ignore, sh

pytestmark = pytest.mark.slow
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


@pytest.fixture(scope="module")
def clones(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """Clone A (the tiny config, committed and pushed, with a DVC remote in .dvc/config) and clone B of it."""
    root = tmp_path_factory.mktemp("search")
    a, b = root / "a", root / "b"
    sh(["git", "init", "-q", "--bare", "-b", "main", str(root / "origin.git")], root)
    shutil.copytree(REPO, a, ignore=copy_ignore)
    write_params(a / "params.yaml", TINY)
    sh(["git", "init", "-q", "-b", "main"], a)
    sh(["dvc", "remote", "add", "-d", "storage", str(root / "dvc-remote")], a)
    sh(["git", "add", "-A"], a)
    sh(["git", "-c", "user.name=a", "-c", "user.email=a@example.com", "commit", "-q", "-m", "tiny"], a)
    sh(["git", "remote", "add", "origin", str(root / "origin.git")], a)
    sh(["git", "push", "-q", "origin", "main"], a)
    sh(["git", "clone", "-q", "-b", "main", str(root / "origin.git"), str(b)], root)
    for clone, who in ((a, "a"), (b, "b")):
        sh(["git", "config", "user.name", who], clone)
        sh(["git", "config", "user.email", f"{who}@example.com"], clone)
    return root, a, b


def experiments(clone: Path) -> dict[str, str]:
    """This clone's experiments: name -> Git ref."""
    refs = sh(["git", "for-each-ref", "--format=%(refname)", "refs/exps/"], clone).split()
    return {ref.rpartition("/")[2]: ref for ref in refs if ref.count("/") == 4}


def journal(path: Path, name: str) -> optuna.Study:
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    return optuna.load_study(study_name=name, storage=storage)


def params_of(clone: Path, ref: str) -> dict:
    return YAML(typ="safe").load(sh(["git", "show", f"{ref}:params.yaml"], clone))["digits"]


def test_a_search_killed_half_way_ends_in_one_line_and_continues_with_the_same_params(clones) -> None:
    _, a, _ = clones
    log = a / "data/cache/search/killed/killed-0.log"
    # Started as a script's `&` starts it: SIGINT ignored, which its children would inherit, and the trial's
    # dvc exp run would not stop on the SIGINT the search sends it.
    worker = subprocess.Popen(
        [sys.executable, "-m", "tools.search", "digits", "--study", "killed", "--trials", "1"],
        cwd=a, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while not (log.is_file() and "Running stage 'digits_train@mnist'" in log.read_text()):
        assert worker.poll() is None and time.monotonic() < deadline, worker.communicate()
        time.sleep(0.2)
    time.sleep(2)  # inside the training stage now
    worker.send_signal(signal.SIGTERM)
    ended = time.monotonic()
    out, err = worker.communicate(timeout=90)
    assert time.monotonic() - ended < 20  # the stage ends in one line, dvc after it
    assert (worker.returncode, err) == (128 + signal.SIGTERM, "error: terminated\n"), out
    study = journal(a / "data/cache/search/killed.journal", "killed")
    stopped, queued = study.trials
    assert stopped.state == TrialState.FAIL and "error" not in stopped.user_attrs  # stopped, not failed
    assert queued.state == TrialState.WAITING and queued.system_attrs["fixed_params"] == stopped.params  # first
    with pytest.raises(ProcessLookupError):  # the trial's dvc exp run and its stage ended with it
        os.killpg(stopped.user_attrs["group"], 0)
    assert "killed-0" not in experiments(a)

    again = subprocess.run(
        [sys.executable, "-m", "tools.search", "digits", "--study", "killed", "--trials", "1"],
        cwd=a, env=ENV, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert again.returncode == 0 and again.stderr == "", again.stdout + again.stderr
    stopped, rerun = journal(a / "data/cache/search/killed.journal", "killed").trials
    assert rerun.state == TrialState.COMPLETE and rerun.user_attrs["rerun_of"] == 0
    assert rerun.params == stopped.params
    lines = again.stdout.splitlines()
    assert len(lines) == 2 and lines[0].startswith("killed-1  digits.network=")
    assert lines[1].startswith("study killed: 1 finished, 0 failed. Best: killed-1")
    ran = params_of(a, experiments(a)["killed-1"])
    assert ran["learning_rate"] == pytest.approx(rerun.params["digits.learning_rate"])


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_clones_share_one_study_through_the_grpc_proxy_and_push_every_trial(clones) -> None:
    root, a, b = clones
    port = free_port()
    serve = ["--serve", f"127.0.0.1:{port}", "--storage", str(root / "studies.journal")]
    server = subprocess.Popen(
        [sys.executable, "-m", "tools.search", *serve],
        cwd=a, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert server.stdout is not None and "serving" in server.stdout.readline()
        joined = f"--trials 2 --storage grpc://127.0.0.1:{port} --push origin"  # one each, in parallel
        (a / ".git/installed.stamp").touch()  # make's set-up is this interpreter's environment
        make = ["make", "-f", str(REPO / "Makefile"), "search", "STAMP=.git/installed.stamp", f"SEARCH_ARGS={joined}"]
        workers = [
            subprocess.Popen(make, cwd=a, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
            subprocess.Popen(
                [sys.executable, "-m", "tools.search", "digits", *joined.split()],
                cwd=b,
                env=ENV,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            ),
        ]
        said = [worker.communicate(timeout=900) for worker in workers]
        for worker, (out, err) in zip(workers, said, strict=True):
            assert worker.returncode == 0 and err == "", out + err
    finally:
        server.send_signal(signal.SIGINT)
        _, served_err = server.communicate(timeout=60)
    assert served_err == "error: interrupted\n"

    study = journal(root / "studies.journal", "digits")
    finished = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(finished) == 2 and not [t for t in study.trials if t.state == TrialState.RUNNING]
    names = {f"digits-{t.number}" for t in finished}
    ran_in = {clone: set(experiments(clone)) & names for clone in (a, b)}
    assert ran_in[a] | ran_in[b] == names and not ran_in[a] & ran_in[b]  # each trial ran once, in one clone
    assert all(ran_in.values())  # and both worked

    best = study.best_trial
    for clone in (a, b):
        sh(["dvc", "exp", "pull", "origin"], clone)  # as the docs say: every experiment of this commit
        assert set(experiments(clone)) >= names
        for trial in finished:
            ran = params_of(clone, experiments(clone)[f"digits-{trial.number}"])
            assert ran["network"] == trial.params["digits.network"]
            assert ran["learning_rate"] == pytest.approx(trial.params["digits.learning_rate"])
        tested = json.loads(
            sh(["git", "show", f"{experiments(clone)[f'digits-{best.number}']}:metrics/digits/mnist.json"], clone)
        )
        assert best.user_attrs["test"] == pytest.approx(tested["accuracy"])
    # Seen from either clone, the finished study names the same best, and runs nothing more.
    seen = [
        sh(
            [
                sys.executable,
                "-m",
                "tools.search",
                "digits",
                "--trials",
                "2",
                "--storage",
                str(root / "studies.journal"),
            ],
            clone,
        )
        for clone in (a, b)
    ]
    assert seen[0] == seen[1] and seen[0].count("\n") == 1
    assert f"Best: digits-{best.number} " in seen[0] and f"dvc exp apply digits-{best.number}" in seen[0]
