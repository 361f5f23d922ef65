"""``make search`` (tools.search) without DVC: search spaces, the study's bookkeeping and seeding, on a fake trial.

The trial's run (``Worker.execute``: ``dvc exp run`` and the experiment's metrics) is replaced by a function of the
params; tests/pipeline/test_search.py runs real trials, on two clones and one study.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from runtime.errors import PipelineError
from tools import search

REPO = Path(__file__).resolve().parents[2]
optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(autouse=True)
def at_the_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)  # the params schema's values come from params.yaml here


def space_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(textwrap.dedent(text))
    return path


GOOD = """\
    run: [digits_evaluate@mnist]
    objective: {metric: "metrics/digits/mnist/metrics.json:best.val_accuracy", direction: maximize}
    params:
      digits.learning_rate: {low: 1.0e-4, high: 1.0e-2, log: true}
      digits.batch_size: {low: 32, high: 256}
      digits.network: [book, strong]
"""


def test_the_shipped_digits_space_reads_into_optuna_distributions() -> None:
    space = search.load_space(search.space_path("digits"))
    assert space.objective == search.Metric("metrics/digits/mnist/metrics.json", "best.val_accuracy")
    assert space.direction == "maximize" and space.run == ["digits_evaluate@mnist"]
    assert space.test == search.Metric("metrics/digits/mnist.json", "accuracy")
    rate = space.params["digits.learning_rate"]
    assert isinstance(rate, optuna.distributions.FloatDistribution) and rate.log
    assert space.params["digits.network"].choices == ("lenet5", "book", "strong")


@pytest.mark.parametrize("name", sorted(p.stem for p in search.SPACES_DIR.glob("*.yaml")))
def test_each_shipped_space_names_params_stages_and_metrics_that_exist(name: str) -> None:
    space = search.load_space(search.space_path(name))  # its params and values: the schema's
    search.check_targets(space)


@pytest.mark.parametrize(
    ("change", "said"),
    [
        (
            ("run: [digits_evaluate@mnist]", "run: [digits_evaluate@mnsit]"),
            "run: Stage 'digits_evaluate@mnsit' not found",
        ),
        (
            ("mnist/metrics.json:best", "fashion_mnist/metrics.json:best"),
            "no stage that run runs writes metrics/digits/fa",
        ),
    ],
)
def test_a_stage_that_is_not_there_or_a_metric_no_stage_writes_is_one_line(
    tmp_path: Path, change: tuple[str, str], said: str
) -> None:
    path = space_file(tmp_path, GOOD.replace(*change))
    with pytest.raises(PipelineError, match=re.escape(said)):
        search.check_targets(search.load_space(path))


def test_ranges_of_ints_are_int_ranges_and_of_floats_float_ranges(tmp_path: Path) -> None:
    space = search.load_space(space_file(tmp_path, GOOD))
    assert isinstance(space.params["digits.batch_size"], optuna.distributions.IntDistribution)
    assert isinstance(space.params["digits.learning_rate"], optuna.distributions.FloatDistribution)


@pytest.mark.parametrize(
    ("change", "said"),
    [
        (("digits.network: [book, strong]", "digits.netwrok: [book, strong]"), "digits.netwrok: "),
        (("digits.network: [book, strong]", "digits.network: [book, resnet]"), "digits.network: resnet is refused"),
        (("{low: 32, high: 256}", "{low: 64, high: 64}"), "low 64 is not below high 64; the range is empty"),
        (("{low: 32, high: 256}", "{low: 0, high: 256, log: true}"), "log: true needs low above 0"),
        (("{low: 32, high: 256}", "{low: 0, high: 256}"), "digits.batch_size: 0 is refused"),
        (("{low: 32, high: 256}", "[[32, 64]]"), "choices must be a list of single values"),
        (("{low: 32, high: 256}", "{lo: 32, high: 256}"), "give a list of choices or {low: ..., high: ...}"),
        (("best.val_accuracy", "best.accuracy"), "is no validation number"),
        (
            ("metrics/digits/mnist/metrics.json:best.val_accuracy", "metrics/digits/mnist.json:accuracy"),
            "no validation",
        ),
        (("direction: maximize", "direction: max"), "use maximize or minimize"),
        (("run: [digits_evaluate@mnist]", "run: []"), "run must name the dvc.yaml stages"),
        (("run: [digits_evaluate@mnist]", "runs: [digits_evaluate@mnist]"), "has runs; its keys are"),
    ],
)
def test_a_bad_space_is_one_line_naming_the_file_and_key_before_any_trial(
    tmp_path: Path, change: tuple[str, str], said: str
) -> None:
    path = space_file(tmp_path, GOOD.replace(*change))
    with pytest.raises(PipelineError) as caught:
        search.load_space(path)
    message = str(caught.value)
    assert message.startswith(str(path)) and said in message and "\n" not in message


def test_a_space_name_that_is_no_file_lists_the_shipped_ones() -> None:
    with pytest.raises(
        PipelineError, match=r"no search space .digit.: give one of digits, finetune, head \(configs/search/\)"
    ):
        search.space_path("digit")


def test_a_grpc_storage_needs_host_and_port() -> None:
    with pytest.raises(PipelineError, match="write it as grpc://HOST:PORT"):
        search.open_storage("grpc://localhost", "digits")


class FakeWorker(search.Worker):
    """A worker whose trial is a function of its params: the accuracy peaks at a learning rate of 1e-3."""

    def __init__(self, study: optuna.Study, trials: int, *, fail_at: int = -1, stop_at: int = -1) -> None:
        super().__init__(search.load_space(search.space_path("digits")), study, trials, "", seed=42)
        self.fail_at, self.stop_at = fail_at, stop_at
        self.ran: list[dict] = []

    def refuse_foreign_experiments(self) -> None:
        pass  # no Git here

    def execute(self, trial: optuna.Trial, experiment: str) -> tuple[float, float | None]:
        if trial.number == self.stop_at:
            raise KeyboardInterrupt
        self.ran.append(dict(trial.params))
        if trial.number == self.fail_at:
            raise search.TrialFailed("error: digits: loss is nan at epoch 1")
        rate = trial.params["digits.learning_rate"]
        return 1 - abs(rate - 1e-3), 0.5


def study(tmp_path: Path, name: str = "digits") -> optuna.Study:
    storage = search.open_storage(str(tmp_path / f"{name}.journal"), name)
    return search.open_study(search.load_space(search.space_path("digits")), name, storage, "")


def test_a_study_proposes_the_same_trials_when_run_again_and_when_stopped_and_continued(tmp_path: Path) -> None:
    # 12 trials: TPE's first 10 are random draws, the last two its own proposals.
    first, second = FakeWorker(study(tmp_path, "a"), 12), FakeWorker(study(tmp_path, "b"), 12)
    first.run()
    second.run()
    assert first.ran == second.ran and len({str(p) for p in first.ran}) == 12

    stopped = FakeWorker(study(tmp_path, "c"), 12, stop_at=10)
    with pytest.raises(KeyboardInterrupt):
        stopped.run()
    continued = FakeWorker(stopped.study, 12)
    continued.run()
    assert stopped.ran + continued.ran == first.ran  # the stopped trial's params ran first, then the same proposals
    trials = stopped.study.get_trials()
    assert [t.state for t in trials].count(TrialState.COMPLETE) == 12
    assert trials[10].state == TrialState.FAIL and trials[11].user_attrs["rerun_of"] == 10


def test_a_failed_trial_is_recorded_with_its_error_line_and_the_study_goes_on(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    worker = FakeWorker(study(tmp_path), 3, fail_at=1)
    worker.run()
    trials = worker.study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]
    assert trials[1].user_attrs["error"] == "error: digits: loss is nan at epoch 1" and trials[1].value is None
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and "failed: error: digits: loss is nan" in lines[1]
    assert lines[-1].startswith("study digits: 2 finished, 1 failed. Best: digits-")
    assert lines[-1].count("test accuracy 0.5000") == 1  # the test number: once, for the best trial only
    assert all("test" not in line for line in lines[:-1])


def test_the_study_ends_at_its_number_of_trials_counted_over_every_run(tmp_path: Path) -> None:
    FakeWorker(study(tmp_path), 2).run()
    again = FakeWorker(study(tmp_path), 2)
    again.run()
    assert again.ran == [] and len(again.study.trials) == 2
    more = FakeWorker(study(tmp_path), 3)
    more.run()
    assert len(more.ran) == 1 and len(more.study.trials) == 3


def test_a_trial_whose_worker_was_killed_on_this_machine_runs_again_first(tmp_path: Path) -> None:
    killed = study(tmp_path)
    trial = killed.ask(dict(search.load_space(search.space_path("digits")).params))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    trial.set_user_attr("host", search.socket.gethostname())
    trial.set_user_attr("pid", dead.pid)
    worker = FakeWorker(killed, 2)
    worker.run()
    assert worker.ran[0] == trial.params
    assert killed.get_trials()[1].user_attrs["rerun_of"] == 0


def test_a_running_trial_of_a_live_worker_is_left_alone(tmp_path: Path) -> None:
    shared = study(tmp_path)
    trial = shared.ask(dict(search.load_space(search.space_path("digits")).params))
    trial.set_user_attr("host", search.socket.gethostname())
    trial.set_user_attr("pid", os.getpid())
    trial.set_user_attr("started", search.start_time(os.getpid()))
    worker = FakeWorker(shared, 3)
    worker.run()
    assert len(worker.ran) == 2 and shared.get_trials()[0].state == TrialState.RUNNING


def test_a_study_refuses_a_changed_space_under_the_same_name(tmp_path: Path) -> None:
    storage = search.open_storage(str(tmp_path / "s.journal"), "s")
    search.open_study(search.load_space(search.space_path("digits")), "s", storage, "")
    changed = search.load_space(space_file(tmp_path, GOOD))
    with pytest.raises(PipelineError, match="was started with another search space"):
        search.open_study(changed, "s", storage, "")
