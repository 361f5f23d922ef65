"""What a stage prints when DVC pipes it: no TensorFlow start-up lines on a CPU (a user's own log level still
wins), and progress as lines, not carriage-return redraws."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from runtime import progress, tf_log
from tests.conftest import REPO, run_stage

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
    assert [line.split()[0] for line in tf_log.kept(STARTUP, level).splitlines()] == left


def _env(**changes: str) -> dict[str, str]:
    """This process's environment without a TF_CPP_MIN_LOG_LEVEL of the user's, the repository importable."""
    return {**{k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}, "PYTHONPATH": str(REPO), **changes}


@pytest.mark.skipif(tf_log.NVIDIA_DRIVER.exists(), reason="with a GPU driver TensorFlow's own log level applies")
def test_a_stage_importing_tensorflow_on_a_cpu_logs_nothing_but_its_own_lines(tmp_path: Path) -> None:
    # evaluate imports TensorFlow first thing, then stops at the missing params.yaml: its line is all there is.
    quiet = run_stage("evaluate", tmp_path, env=_env())
    assert quiet.returncode == 1 and quiet.stderr.startswith("error: params.yaml: not found")
    assert len(quiet.stderr.splitlines()) == 1, quiet.stderr


def test_importing_a_program_changes_nothing() -> None:
    # Only python -m stages.<name> (or tools.<name>) readies the process; a test's or notebook's import does not.
    code = (
        "import signal, sys, stages.sample, tools.watch; from runtime import tf_log; "
        "print(any(isinstance(f, tf_log._Import) for f in sys.meta_path), "
        "signal.getsignal(signal.SIGTERM) is signal.SIG_DFL)"
    )
    imported = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=60)
    assert imported.stdout == "False True\n", imported.stderr


FATAL = "F0000 00:00:1.0 1 cpu_feature_guard.cc:1] The TensorFlow library was compiled to use AVX instructions"


def test_what_a_dying_tensorflow_import_wrote_reaches_stderr(tmp_path: Path) -> None:
    # A stand-in for TensorFlow on a CPU without AVX: a line below the level, the fatal line, then abort().
    written = f"I0000 00:00:1.0 1 port.cc:1] dropped\n{FATAL}\n".encode()
    (tmp_path / "tensorflow.py").write_text(f"import os\nos.write(2, {written!r})\nos.abort()\n")
    code = "from runtime import tf_log; tf_log.quiet_cpu_start(); import tensorflow"
    env = _env(PYTHONPATH=f"{tmp_path}{os.pathsep}{REPO}", TF_CPP_MIN_LOG_LEVEL="3")
    died = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert died.returncode == -signal.SIGABRT
    assert died.stderr == FATAL + "\n"


def test_a_closed_stderr_changes_no_output_and_no_exit_status(tmp_path: Path) -> None:
    def closed(*args: str) -> subprocess.CompletedProcess:
        command = ["sh", "-c", 'exec "$0" -m "$@" 2>&-', sys.executable, *args]
        return subprocess.run(command, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120)

    helped = closed("tools.predict", "--help")  # imports TensorFlow first
    assert helped.returncode == 0 and helped.stdout.startswith("usage: python -m tools.predict")
    refused = closed("tools.scenarios", "nosuch")  # its error line goes nowhere, not to stdout
    assert refused.returncode == 1 and refused.stdout == ""


def test_a_users_own_log_level_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    # TF_CPP_MIN_LOG_LEVEL=0 asks for every line: nothing is filtered, the import runs as TensorFlow's own.
    monkeypatch.setattr(sys, "meta_path", [f for f in sys.meta_path if not isinstance(f, tf_log._Import)])
    monkeypatch.delitem(sys.modules, "tensorflow", raising=False)
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")
    tf_log.quiet_cpu_start()
    assert not any(isinstance(f, tf_log._Import) for f in sys.meta_path)
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    tf_log.quiet_cpu_start()
    assert [f.level for f in sys.meta_path if isinstance(f, tf_log._Import)] == [2]


def test_progress_through_a_pipe_is_a_few_whole_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    piped = io.StringIO()  # not a terminal, as stderr under dvc repro
    monkeypatch.setattr(sys, "stderr", piped)
    with progress.progress(total=5000, desc="sampling", unit="img") as bar:
        for _ in range(5000):
            bar.update(1)
    lines = piped.getvalue().splitlines()
    assert "\r" not in piped.getvalue() and len(lines) <= 3, lines  # the start, the end, one per 30 s between
    assert lines[-1].startswith("sampling: 5000/5000 img [")


def test_a_stage_answers_help_and_refuses_an_argument_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    # `python -m stages.train_baseline --help` in the repository started hours of training: it read no arguments.
    from runtime.program import run
    from stages import download

    monkeypatch.chdir(tmp_path)  # no params.yaml: any work would fail on it, not on the argument
    monkeypatch.setattr(sys, "argv", ["download.py", "--help"])
    run(download.main, no_arguments=True)
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m stages.download  (dvc repro runs it with the settings in params.yaml)\n")
    assert download.__doc__.strip().splitlines()[0] in out
    monkeypatch.setattr(sys, "argv", ["download.py", "--epochs=3"])
    with pytest.raises(SystemExit) as exit_status:
        run(download.main, no_arguments=True)
    assert exit_status.value.code == 1
    assert capsys.readouterr().err == (
        "error: python -m stages.download takes no arguments, not '--epochs=3'; set its params in params.yaml\n"
    )


def test_every_stage_without_arguments_asks_run_to_refuse_them() -> None:
    for path in sorted((REPO / "stages").glob("*.py")):
        source = path.read_text()
        if 'if __name__ == "__main__":' in source and "sys.argv" not in source:  # the digits stages read theirs
            assert "run(main, no_arguments=True)" in source, path.name
