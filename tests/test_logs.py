"""What a stage prints when DVC pipes it: no TensorFlow start-up lines on a CPU (a user's own log level still
wins), and progress as lines, not carriage-return redraws."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest

from dogs_vs_cats import common, tf_env
from tests.conftest import REPO

STARTUP = (
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
    "I0000 00:00:1796217220.465476   29267 port.cc:153] oneDNN custom operations are on.\n"
    "W0000 00:00:1796217220.465904   29267 cuda_executor.cc:31] a warning\n"
    "E0000 00:00:1796217220.465904   29267 cuda_executor.cc:12] failed call to cuInit: INTERNAL\n"
    "Traceback (most recent call last):\n"
)


@pytest.mark.parametrize(
    ("level", "left"),
    [
        (0, ["WARNING:", "I0000", "W0000", "E0000", "Traceback"]),
        (1, ["WARNING:", "W0000", "E0000", "Traceback"]),
        (3, ["Traceback"]),
    ],
)
def test_only_native_lines_below_the_level_are_dropped(level: int, left: list[str]) -> None:
    assert [line.split()[0] for line in tf_env.kept(STARTUP, level).splitlines()] == left


@pytest.mark.skipif(tf_env.NVIDIA_DRIVER.exists(), reason="with a GPU driver TensorFlow's own log level applies")
def test_a_stage_importing_tensorflow_on_a_cpu_logs_nothing_but_its_own_lines() -> None:
    code = "import stages, tensorflow, sys; print('python line', file=sys.stderr)"
    env = {**{k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}, "PYTHONPATH": str(REPO)}
    quiet = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert quiet.returncode == 0 and quiet.stderr == "python line\n"


def test_a_users_own_log_level_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    # TF_CPP_MIN_LOG_LEVEL=0 asks for every line: nothing is filtered, the import runs as TensorFlow's own.
    monkeypatch.setattr(sys, "meta_path", [f for f in sys.meta_path if not isinstance(f, tf_env._Import)])
    monkeypatch.delitem(sys.modules, "tensorflow", raising=False)
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")
    tf_env.quiet_cpu_start()
    assert not any(isinstance(f, tf_env._Import) for f in sys.meta_path)
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    tf_env.quiet_cpu_start()
    assert [f.level for f in sys.meta_path if isinstance(f, tf_env._Import)] == [2]


def test_progress_through_a_pipe_is_a_few_whole_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    piped = io.StringIO()  # not a terminal, as stderr under dvc repro
    monkeypatch.setattr(sys, "stderr", piped)
    with common.progress(total=5000, desc="sampling", unit="img") as bar:
        for _ in range(5000):
            bar.update(1)
    lines = piped.getvalue().splitlines()
    assert "\r" not in piped.getvalue() and len(lines) <= 3, lines  # the start, the end, one per 30 s between
    assert lines[-1].startswith("sampling: 5000/5000 img [")
