"""The docs' recipe for one GPU per ``dvc queue`` worker, on the CPU: each worker runs its experiments in the
environment of the ``dvc queue start`` that started it, so each gets its own ``CUDA_VISIBLE_DEVICES``. DVC 3.67
numbers its workers 1..N and skips those it finds running: a second worker needs ``--jobs 2``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

# A trivial stage: its metric says which device its worker was given, and for which point of the sweep.
DVC_YAML = """stages:
  device:
    cmd: sh device.sh ${point}
    deps: [device.sh]
    params: [point]
    metrics:
      - device.json:
          cache: false
"""
# Each point marks that it started, then waits for the other (WAIT seconds at most): the two run at the same
# time, so neither worker can take both.
DEVICE_SH = """touch {marks}/$1
for i in $(seq {wait}); do [ -e {marks}/1 ] && [ -e {marks}/2 ] && break; sleep 1; done
printf '{{"point": %s, "device": "%s"}}\\n' "$1" "$CUDA_VISIBLE_DEVICES" > device.json
"""
WAIT = 300  # seconds at most for a worker to start a point (a busy machine starts a worker slowly)


def environment(**variables: str) -> dict[str, str]:
    """This process's environment with this interpreter's bin (dvc) first on PATH, and ``variables``."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", **variables}


def run(args: list[str], cwd: Path) -> str:
    """Run a command; fail with its output."""
    result = subprocess.run(args, cwd=cwd, env=environment(), capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def start_workers(repo: Path, jobs: int, device: str) -> str:
    """``CUDA_VISIBLE_DEVICES=<device> dvc queue start --jobs <jobs>``, and what it said. Its output goes to a file,
    not a pipe: a worker it starts keeps the streams it inherited, so a pipe would stay open until the worker ends."""
    with tempfile.TemporaryFile("w+") as out:
        result = subprocess.run(
            ["dvc", "queue", "start", "--jobs", str(jobs)],
            cwd=repo,
            env=environment(CUDA_VISIBLE_DEVICES=device),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        out.seek(0)
        said = out.read()
    assert result.returncode == 0, said
    return said


def wait_for(done, what: str, seconds: float = WAIT) -> None:
    deadline = time.monotonic() + seconds
    while not done():
        assert time.monotonic() < deadline, f"no {what} within {seconds} s"
        time.sleep(0.2)


@pytest.mark.slow
def test_each_queue_worker_runs_with_the_device_it_was_started_with(tmp_path: Path) -> None:
    repo, marks = tmp_path / "repo", tmp_path / "marks"
    repo.mkdir()
    marks.mkdir()
    run(["git", "init", "-q", "-b", "main"], repo)
    run(["git", "config", "user.email", "test@example.com"], repo)
    run(["git", "config", "user.name", "test"], repo)
    run(["dvc", "init", "-q"], repo)
    (repo / "dvc.yaml").write_text(DVC_YAML)
    (repo / "device.sh").write_text(DEVICE_SH.format(marks=marks, wait=WAIT))
    (repo / "params.yaml").write_text("point: 0\n")
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-q", "-m", "a stage that records its device"], repo)
    for point in (1, 2):
        run(["dvc", "exp", "run", "--queue", "-S", f"point={point}"], repo)

    head = run(["git", "rev-parse", "HEAD"], repo).strip()

    def finished() -> int:  # DVC keeps each finished experiment of a commit as refs/exps/<its hash, split>/<name>
        return len(run(["git", "for-each-ref", f"refs/exps/{head[:2]}/{head[2:]}/"], repo).splitlines())

    try:
        # The recipe: one worker per GPU, the next started once `dvc queue status` shows the one before running.
        assert "Started '1' new experiments task queue worker." in start_workers(repo, 1, "0")
        wait_for((marks / "1").exists, "first point started")
        wait_for(lambda: "Worker status: 1 active" in run(["dvc", "queue", "status"], repo), "worker 1 in the status")
        # What the docs said before: a second --jobs 1 finds worker 1 running, and starts nothing.
        assert "Started '0' new experiments task queue worker." in start_workers(repo, 1, "1")
        assert "Started '1' new experiments task queue worker." in start_workers(repo, 2, "1")
        wait_for(lambda: finished() == 2, "two finished experiments", 2 * WAIT)
    finally:
        run(["dvc", "queue", "stop"], repo)  # this repository's workers: they stop when the queue is empty anyway

    shown = json.loads(run(["dvc", "exp", "show", "--json"], repo))
    recorded = [
        rev["data"]["metrics"]["device.json"]["data"]
        for row in shown
        for experiment in row.get("experiments") or []
        for rev in experiment["revs"]
    ]
    assert {entry["point"]: entry["device"] for entry in recorded} == {1: "0", 2: "1"}
