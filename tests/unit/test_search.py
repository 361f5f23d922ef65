"""``make search`` (tools.search) without DVC: search spaces, the study's bookkeeping and seeding, on a fake trial.

The trial's run (``Worker.execute``: ``dvc exp run`` and the experiment's metrics) is replaced by a function of the
params; tests/pipeline/test_search.py runs real trials, on two clones and one study.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from runtime.errors import PipelineError
from tests.conftest import write_params
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
        # The checks against dvc.yaml: what a trial runs could not judge it.
        (("digits.network: [book, strong]", "evaluate.threshold: {low: 0.3, high: 0.7}"), "is no param of the stages"),
        (('best.val_accuracy"', 'best.val_loss"'), "a loss; use minimize"),
        (("run: [digits_evaluate@mnist]", "run: [-f]"), "run must name the dvc.yaml stages"),
        (("{low: 32, high: 256}", "{low: 32, high: 256, step: 100}"), "step 100 does not divide 32..256"),
        (("{low: 32, high: 256}", "{low: 32.0, high: 256.0, step: .inf}"), "must be finite numbers"),
    ],
)
def test_a_bad_space_is_one_line_naming_the_file_and_key_before_any_trial(
    tmp_path: Path, change: tuple[str, str], said: str
) -> None:
    path = space_file(tmp_path, GOOD.replace(*change))
    with pytest.raises(PipelineError) as caught:
        search.check_targets(search.load_space(path))
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


def test_a_metric_the_experiment_lacks_stops_the_search_and_gives_the_trial_back(tmp_path: Path) -> None:
    class NoMetric(FakeWorker):
        def execute(self, trial: optuna.Trial, experiment: str) -> tuple[float, float | None]:
            raise PipelineError(f"{experiment}: metrics/digits/mnist.json has no number at acuracy; fix space.yaml")

    stopped = NoMetric(study(tmp_path), 3)
    with pytest.raises(PipelineError, match=r"fix space\.yaml"):
        stopped.run()
    trials = stopped.study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING] and not stopped.counted()


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


def test_a_study_refuses_a_changed_space_once_a_trial_finished(tmp_path: Path) -> None:
    storage = search.open_storage(str(tmp_path / "s.journal"), "s")
    shipped = search.load_space(search.space_path("digits"))
    changed = search.load_space(space_file(tmp_path, GOOD))
    search.open_study(changed, "s", storage, "")
    FakeWorker(search.open_study(shipped, "s", storage, ""), 1).run()  # no trial had finished: a fix is taken
    with pytest.raises(PipelineError, match="was started with another search space"):
        search.open_study(changed, "s", storage, "")
    test_changed = space_file(
        tmp_path, (search.SPACES_DIR / "digits.yaml").read_text().replace(":accuracy", ":f1_macro")
    )
    with pytest.raises(PipelineError, match="was started with another search space"):  # test: is part of it
        search.open_study(search.load_space(test_changed), "s", storage, "")


def test_a_study_refuses_another_commit_or_other_params_outside_its_space(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(REPO / "params.yaml", project / "params.yaml")
    monkeypatch.chdir(project)
    for command in (["init", "-q"], ["add", "-A"], ["-c", "user.name=t", "-c", "user.email=t@e", "commit", "-qm", "p"]):
        subprocess.run(["git", *command], check=True)
    space = search.load_space(search.space_path("digits"))
    storage = search.open_storage("s.journal", "s")
    FakeWorker(search.open_study(space, "s", storage, ""), 1).run()
    params = (project / "params.yaml").read_text()
    write_params(project / "params.yaml", {"digits.dropout": 0.3})  # in the space: the trials vary it
    search.open_study(space, "s", storage, "")
    write_params(project / "params.yaml", {"digits.epochs": 3})  # outside the space
    with pytest.raises(PipelineError, match=r"started on another commit or other params\.yaml values"):
        search.open_study(space, "s", storage, "")
    (project / "params.yaml").write_text(params)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@e", "commit", "-q", "--allow-empty", "-m", "q"])
    with pytest.raises(PipelineError, match="started on another commit"):
        search.open_study(space, "s", storage, "")


JSON_NOT_JOURNAL = {"other JSON": '{"notes": 1}\n', "a string": '"op_code"\n', "op code only": '{"op_code": 0}\n'}


@pytest.mark.parametrize("kind", ["folder", "fifo", "a user's file", *JSON_NOT_JOURNAL])
def test_a_storage_path_that_is_no_journal_is_one_line_and_stays_untouched(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "store"
    if kind == "folder":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        path.write_text(JSON_NOT_JOURNAL.get(kind, "my notes\n"))
    before = path.read_text() if path.is_file() else None
    with pytest.raises(PipelineError, match=f"--storage {re.escape(str(path))}: "):
        search.open_storage(str(path), "s")
    assert (path.read_text() if path.is_file() else None) == before


def test_a_storage_path_under_a_file_says_so(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(PipelineError, match=r"notes\.txt is a file, not a folder"):
        search.open_storage(str(tmp_path / "notes.txt/s.journal"), "s")
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_a_trial_another_worker_took_for_lost_is_left_to_it_and_the_search_goes_on(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    class Overtaken(FakeWorker):
        def execute(self, trial: optuna.Trial, experiment: str) -> tuple[float, float | None]:
            if trial.number == 0:
                self.give_back(trial.number, trial.params)  # what recover_lost does in another worker
            return super().execute(trial, experiment)

    worker = Overtaken(study(tmp_path), 2)
    worker.run()
    trials = worker.study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    assert trials[1].user_attrs["rerun_of"] == 0 and trials[1].params == trials[0].params
    assert "digits-0: another worker gave this trial up for lost" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["digits", "--study=-x"], "--study '-x': use up to 64 letters"),
        (["digits", "--push", "nosuch"], "--push nosuch: no such Git remote here"),
        (["--serve", "127.0.0.1:99999"], "with a port of 1-65535"),
    ],
)
def test_wrong_options_are_one_line_before_any_work(args: list[str], said: str) -> None:
    with pytest.raises(PipelineError, match=re.escape(said)):
        search.main(args)


def test_a_second_server_on_a_port_in_use_is_refused_and_sighup_ends_a_server(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    command = [sys.executable, "-m", "tools.search", "--serve", f"127.0.0.1:{port}", "--storage"]
    server = subprocess.Popen([*command, str(tmp_path / "a.journal")], cwd=REPO, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert server.stdout is not None and "serving" in server.stdout.readline()
        second = subprocess.run([*command, str(tmp_path / "b.journal")], cwd=REPO, env=env, capture_output=True,
                                text=True, timeout=60)  # fmt: skip
        assert second.returncode == 1 and second.stderr.startswith(f"error: --serve 127.0.0.1:{port}: cannot listen")
    finally:
        server.send_signal(signal.SIGHUP)  # the terminal or ssh session closed
        _, err = server.communicate(timeout=30)
    assert (server.returncode, err) == (128 + signal.SIGTERM, "error: terminated\n")
