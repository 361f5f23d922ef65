"""Search params with Optuna: each trial one DVC experiment, and any number of machines on one study.

``python -m tools.search digits`` runs the study of ``configs/search/digits.yaml``: its TPE sampler (seeded by
``seed`` in params.yaml) proposes values for the file's params keys, each trial runs as ``dvc exp run --temp -n
digits-<number> -S key=value ... <targets>``, and the trial's value is a validation number read from its
experiment's metrics. The test split never chooses: the best trial's test number is reported once, at the end.

The study lives in Optuna's storage: by default a journal file in ``data/cache/search/``; ``--storage`` takes a
journal file, an RDB URL (``postgresql://...``) or ``grpc://host:port`` of ``python -m tools.search --serve``.
Workers anywhere that use one storage share the study; with ``--push REMOTE`` each pushes its experiments.
A worker killed in any way leaves its trial to the next worker, which runs the same params again first.
"""

from __future__ import annotations

from runtime.program import run, start_program

start_program(__name__)  # first: the imports below take seconds, and Ctrl-C during them ends in one line

import argparse
import contextlib
import hashlib
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from dogs_vs_cats import paths
from dogs_vs_cats.config import load_params
from dogs_vs_cats.typed_yaml import ConfigError, read_yaml
from runtime.errors import PipelineError, one_line
from runtime.files import input_file
from runtime.processes import gone, start_time
from tools.scenarios import set_flags

SPACES_DIR = Path(__file__).resolve().parents[1] / "configs" / "search"
SEARCH_DIR = paths.CACHE_DIR / "search"  # the default storage and each trial's log: scratch space
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")  # a study's name: in each experiment's name, a Git ref
SPACE_KEYS = {"trials", "run", "objective", "test", "params"}
HEARTBEAT = 30  # seconds between a running trial's signs of life in the storage
STALE = 600  # seconds without one after which another machine's running trial counts as lost
STOP_WAIT = 30  # seconds a trial's dvc exp run gets to end after Ctrl-C before it is killed


@dataclass(frozen=True)
class Metric:
    """``file:dotted.key`` of a metrics file in an experiment."""

    file: str
    key: str

    def __str__(self) -> str:
        return f"{self.file}:{self.key}"


@dataclass(frozen=True)
class Space:
    """A search space file: what one trial runs, what it is judged by, and the params it varies."""

    path: Path
    trials: int
    run: list[str]
    objective: Metric
    direction: str
    test: Metric | None
    params: dict[str, BaseDistribution]

    def fingerprint(self) -> str:
        """What makes two runs one study: everything but the number of trials, which may grow."""
        described = {key: optuna.distributions.distribution_to_json(dist) for key, dist in self.params.items()}
        text = json.dumps([self.run, str(self.objective), self.direction, str(self.test), described], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def space_path(name: str) -> Path:
    """A name in ``configs/search/`` (``digits``) or the path of a search space file."""
    if NAME.fullmatch(name):
        path = SPACES_DIR / f"{name}.yaml"
        if path.is_file():
            return path
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    known = ", ".join(sorted(p.stem for p in SPACES_DIR.glob("*.yaml")))
    raise PipelineError(f"no search space {name!r}: give one of {known} (configs/search/) or a .yaml file")


def load_space(path: Path) -> Space:
    """Read and check a search space: every problem is one line naming the file and the key, before any trial."""
    raw = read_yaml(path)
    where = str(path)
    if not isinstance(raw, dict):
        raise PipelineError(f"{where}: must map trials, run, objective, test and params")
    unknown, missing = sorted(set(raw) - SPACE_KEYS), sorted({"run", "objective", "params"} - set(raw))
    if unknown or missing:
        problem = f"has {', '.join(unknown)}" if unknown else f"has no {', '.join(missing)}"
        raise PipelineError(f"{where}: {problem}; its keys are {', '.join(sorted(SPACE_KEYS))}")
    trials = raw.get("trials", 20)
    if not isinstance(trials, int) or isinstance(trials, bool) or trials < 1:
        raise PipelineError(f"{where}: trials is {trials!r}; give a whole number, 1 or more")
    targets = raw["run"] if isinstance(raw["run"], list) else [raw["run"]]
    if not targets or not all(isinstance(t, str) and t and not t.startswith("-") for t in targets):
        raise PipelineError(f"{where}: run must name the dvc.yaml stages a trial runs, e.g. [digits_evaluate@mnist]")
    objective = raw["objective"]
    if not isinstance(objective, dict) or set(objective) != {"metric", "direction"}:
        raise PipelineError(f"{where}: objective must have metric (file:key) and direction (maximize | minimize)")
    if objective["direction"] not in ("maximize", "minimize"):
        raise PipelineError(f"{where}: objective.direction is {objective['direction']!r}; use maximize or minimize")
    chosen_by = metric(objective["metric"], f"{where}: objective.metric")
    if not chosen_by.key.rpartition(".")[2].startswith("val_"):
        raise PipelineError(
            f"{where}: objective.metric {chosen_by} is no validation number; choose by a training stage's "
            "best.val_loss or best.val_accuracy (the test split never chooses)"
        )
    if chosen_by.key.endswith("loss") and objective["direction"] == "maximize":
        raise PipelineError(f"{where}: objective.direction maximize for {chosen_by.key}, a loss; use minimize")
    test = metric(raw["test"], f"{where}: test") if raw.get("test") is not None else None
    if not isinstance(raw["params"], dict) or not raw["params"]:
        raise PipelineError(f"{where}: params must map params.yaml keys to their ranges or choices")
    space = {key: distribution(value, f"{where}: {key}") for key, value in raw["params"].items()}
    for key, dist in space.items():
        check_values(key, dist, where)
    return Space(path, trials, targets, chosen_by, objective["direction"], test, space)


def metric(text: Any, where: str) -> Metric:
    file, _, key = text.partition(":") if isinstance(text, str) else ("", "", "")
    if not file.endswith(".json") or not key:
        raise PipelineError(
            f"{where} is {text!r}; write it as a metrics file and its key, metrics/x.json:best.val_loss"
        )
    return Metric(file, key)


def distribution(value: Any, where: str) -> BaseDistribution:
    """A list is a choice; ``{low, high, log?, step?}`` a range, of ints when both ends are ints."""
    if isinstance(value, list):
        if not value or not all(v is None or isinstance(v, (str, int, float, bool)) for v in value):
            raise PipelineError(f"{where}: choices must be a list of single values (strings, numbers, true/false)")
        return CategoricalDistribution(value)
    if not isinstance(value, dict) or not {"low", "high"} <= set(value) or set(value) - {"low", "high", "log", "step"}:
        raise PipelineError(f"{where}: give a list of choices or {{low: ..., high: ...}} (log: true and step optional)")
    low, high, log, step = value["low"], value["high"], value.get("log", False), value.get("step")
    numbers = (low, high) if step is None else (low, high, step)
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in numbers) or not isinstance(log, bool):
        raise PipelineError(f"{where}: low, high and step must be numbers and log true or false")
    if not all(math.isfinite(v) for v in numbers):
        raise PipelineError(f"{where}: low, high and step must be finite numbers")
    if not low < high:
        raise PipelineError(f"{where}: low {low} is not below high {high}; the range is empty")
    if log and low <= 0:
        raise PipelineError(f"{where}: log: true needs low above 0, not {low}")
    if log and step is not None:
        raise PipelineError(f"{where}: give log or step, not both")
    if step is not None and (
        step <= 0 or abs(round((high - low) / step) * step - (high - low)) > 1e-9 * abs(high - low)
    ):
        raise PipelineError(f"{where}: step {step} does not divide {low}..{high} into whole steps")
    if all(isinstance(v, int) for v in numbers):
        return IntDistribution(low, high, log=log, step=step or 1)
    return FloatDistribution(float(low), float(high), log=log, step=step)


def check_values(key: str, dist: BaseDistribution, where: str) -> None:
    """Each end of a range and each choice must be a value params.yaml's schema takes for ``key``."""
    values = dist.choices if isinstance(dist, CategoricalDistribution) else (dist.low, dist.high)
    for value in values:
        try:
            load_params(overrides={key: value})
        except ConfigError as error:
            raise PipelineError(f"{where}: {key}: {shown(value)} is refused ({error})") from None


def check_targets(space: Space) -> None:
    """Each stage of ``run`` is in dvc.yaml, and the stages it runs write the objective's and test's files: one
    line now, not a failed trial each."""
    from dvc.exceptions import DvcException  # DVC takes a second to import; only here
    from dvc.repo import Repo

    repo = Repo(os.curdir, uninitialized=True)
    written, read = set(), set()
    for target in space.run:
        try:
            stages = repo.stage.collect(target, with_deps=True)
        except DvcException as error:
            raise PipelineError(f"{space.path}: run: {one_line(error)}; dvc stage list names the stages") from None
        written |= {str(out.def_path) for stage in stages for out in stage.outs}
        read |= {key for stage in stages for dep in stage.deps if hasattr(dep, "read_params") for key in dep.params}
    for key in space.params:
        if not any(key == section or key.startswith(f"{section}.") for section in read):
            raise PipelineError(
                f"{space.path}: {key} is no param of the stages that run runs ({', '.join(space.run)}); "
                "a trial would not change with it"
            )
    for key, wanted in (("objective.metric", space.objective), ("test", space.test)):
        if wanted is not None and wanted.file not in written:
            raise PipelineError(f"{space.path}: {key} {wanted}: no stage that run runs writes {wanted.file}")


def shown(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def open_storage(option: str, study: str) -> Any:
    """Optuna's storage for ``--storage``: ``grpc://host:port``, an RDB URL, or a journal file (the default)."""
    if option.startswith("grpc://"):
        host, _, port = option.removeprefix("grpc://").rpartition(":")
        if not host or not port.isdigit():
            raise PipelineError(f"--storage {option}: write it as grpc://HOST:PORT")
        with warnings.catch_warnings():  # experimental in Optuna 5.1; the warning would be in every log
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.GrpcStorageProxy(host=host, port=int(port))
    if "://" in option:
        return option  # an RDB URL (sqlite:///, postgresql://, mysql://): Optuna opens it
    path = Path(option or SEARCH_DIR / f"{study}.journal")
    check_journal(path, option)
    try:
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    except Exception as error:  # Optuna reads the whole journal here: a damaged line raises what it meets
        raise PipelineError(
            f"--storage {path}: cannot read it as an Optuna journal ({type(error).__name__}: {one_line(error)}); "
            "give a new file's path, or restore the journal"
        ) from None


def check_journal(path: Path, option: str) -> None:
    """A journal file is new, or one Optuna wrote (JSON lines with op codes): never a user's file, a FIFO, a
    folder. Its folder is made if missing."""
    where = f"--storage {option}" if option else str(path)
    for folder in (path.parent, *path.parent.parents):
        if folder.exists() and not folder.is_dir():
            raise PipelineError(f"{where}: {folder} is a file, not a folder; give another path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise PipelineError(f"{where}: cannot use it ({error.strerror or error}); give another path") from None
    if not path.exists():
        return
    try:
        input_file(path, "give a journal file's path (it is made if missing)")
    except PipelineError as error:  # its line names the path; say which option gave it
        raise PipelineError(f"--storage {error}" if option else str(error)) from None
    with path.open("rb") as journal:  # a regular file that opened: cannot block
        first = journal.readline(1 << 16)
    try:
        record = json.loads(first) if first else None
    except ValueError:
        record = ""
    is_journal = record is None or (isinstance(record, dict) and isinstance(record.get("op_code"), int))
    if not is_journal:
        raise PipelineError(f"{where}: holds something other than an Optuna journal; give a new file's path")


def open_study(space: Space, name: str, storage: Any, option: str) -> optuna.Study:
    """The study ``name`` in ``storage``, created on first use; one line if it was made with another space."""
    try:
        study = optuna.create_study(storage=storage, study_name=name, direction=space.direction, load_if_exists=True)
    except Exception as error:  # a driver missing, a server unreachable: Optuna and gRPC raise many kinds
        raise PipelineError(f"--storage {option or 'default'}: cannot open study {name} ({one_line(error)})") from None
    now = {"space": space.fingerprint(), "base": base_of(space)}
    started = {key: study.user_attrs.get(key) for key in now}
    if started != now and study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if started["space"] != now["space"]:
            raise PipelineError(
                f"study {name} was started with another search space than {space.path}; "
                "restore the file, or start a new study with --study NAME"
            )
        raise PipelineError(
            f"study {name} was started on another commit or other params.yaml values (those outside its space): "
            "its trials would not compare; check out that state, or start a new study with --study NAME"
        )
    for key, value in now.items():  # a study with no finished trial yet takes the space and base it is given
        if started[key] != value:
            study.set_user_attr(key, value)
    return study


def base_of(space: Space) -> str:
    """What every trial of a study starts from: the commit, and params.yaml's values outside the space."""
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    params = read_yaml(paths.PARAMS)
    for key in space.params:
        *parents, leaf = key.split(".")
        node = params
        for part in parents:
            node = node.get(part, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(leaf, None)
    return hashlib.sha256(json.dumps([commit, params], sort_keys=True, default=str).encode()).hexdigest()[:16]


def experiment_refs() -> dict[str, str]:
    """Every experiment in this clone: its name and Git ref."""
    listed = subprocess.run(
        ["git", "for-each-ref", "--format=%(refname)", "refs/exps/"], capture_output=True, text=True
    )
    refs = [ref for ref in listed.stdout.split() if ref.count("/") == 4]  # refs/exps/ab/cdef.../name
    return {ref.rpartition("/")[2]: ref for ref in refs}


def read_metric(ref: str, wanted: Metric) -> float:
    shown_file = subprocess.run(["git", "show", f"{ref}:{wanted.file}"], capture_output=True, text=True)
    if shown_file.returncode:
        raise PipelineError(f"the experiment has no {wanted.file}; is it an output of the stages in run?")
    value: Any = json.loads(shown_file.stdout)
    for part in wanted.key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise PipelineError(f"{wanted.file} has no number at {wanted.key}")
    return float(value)


class TrialFailed(Exception):
    """A trial ran and gave no result: its error line is recorded with it, and the study goes on."""


class Worker:
    """One machine's part of a study: asks for trials until the study has its number, runs each as an experiment."""

    def __init__(self, space: Space, study: optuna.Study, trials: int, push: str, seed: int) -> None:
        self.space, self.study, self.trials, self.push, self.seed = space, study, trials, push, seed
        self.name = study.study_name
        self.echo = sys.stdout.isatty()  # a terminal sees each trial's output; a log gets one line per trial
        self.logs = SEARCH_DIR / self.name
        self.host = socket.gethostname()

    def given_back(self) -> set[int]:
        """The trials that were stopped before their end: each one's params were queued again."""
        return {t.user_attrs["rerun_of"] for t in self.study.get_trials(deepcopy=False) if "rerun_of" in t.user_attrs}

    def counted(self) -> list[FrozenTrial]:
        """The trials that use up the study's number: finished, failed with an error, or running now."""
        given_back = self.given_back()
        states = (TrialState.COMPLETE, TrialState.FAIL, TrialState.RUNNING)
        return [t for t in self.study.get_trials(deepcopy=False, states=states) if t.number not in given_back]

    def run(self) -> None:
        self.recover_lost()
        self.refuse_foreign_experiments()
        while (done := len(self.counted())) < self.trials:
            # A fresh sampler per trial, seeded by seed and the trials so far: a study proposes the same trials
            # whether it ran in one go or was stopped and continued.
            self.study.sampler = optuna.samplers.TPESampler(seed=self.seed + done)
            trial = self.study.ask(dict(self.space.params))
            if len(self.counted()) > self.trials:  # another worker took the last trial at the same moment
                self.give_back(trial.number, trial.params)
                break
            self.run_trial(trial)
        self.summary()

    def recover_lost(self) -> None:
        """Trials whose worker is gone (killed on this machine; silent for STALE seconds on another) go back to
        the study, their params queued first; a run one left behind here is stopped."""
        for lost in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            attrs = lost.user_attrs
            if "pid" in attrs and attrs.get("host") == self.host:
                if not gone(attrs["pid"], attrs.get("started", 0)):
                    continue  # another worker on this machine
                stop_group(attrs.get("group", 0), attrs.get("group_started", 0))
            elif time.time() - attrs.get("alive", lost.datetime_start.timestamp()) < STALE:
                continue  # alive, or asked for a moment ago and not yet marked as its worker's
            print(f"{self.name}-{lost.number}: its worker is gone; its params run again", flush=True)
            self.give_back(lost.number, lost.params)

    def give_back(self, number: int, params: dict[str, Any]) -> None:
        """End trial ``number`` unfinished and queue its params, to run first as a new trial."""
        self.study.tell(number, state=TrialState.FAIL)
        self.study.enqueue_trial(params, user_attrs={"rerun_of": number})

    def refuse_foreign_experiments(self) -> None:
        """An experiment named like a trial this study has not run (a study of the same name whose storage is
        gone) would be overwritten by a trial: one line instead."""
        known = {f"{self.name}-{t.number}" for t in self.study.get_trials(deepcopy=False)}
        trial_name = re.compile(rf"{re.escape(self.name)}-\d+")
        foreign = sorted(name for name in experiment_refs() if trial_name.fullmatch(name) and name not in known)
        if foreign:
            raise PipelineError(
                f"experiments {', '.join(foreign[:3])}{' ...' if len(foreign) > 3 else ''} are not this study's "
                f"trials (its storage does not know them): remove them (dvc exp remove {' '.join(foreign[:3])}) "
                "or name this study otherwise (--study NAME)"
            )

    def run_trial(self, trial: optuna.Trial) -> None:
        experiment = f"{self.name}-{trial.number}"
        me = os.getpid()
        mine = {"experiment": experiment, "alive": time.time(), "host": self.host, "pid": me, "started": start_time(me)}
        for key, value in mine.items():
            trial.set_user_attr(key, value)
        try:
            with heartbeat(trial):
                value, test = self.execute(trial, experiment)
        except TrialFailed as failure:
            trial.set_user_attr("error", str(failure))
            self.study.tell(trial, state=TrialState.FAIL)
            print(f"{experiment}  {self.params_text(trial.params)}  failed: {failure}", flush=True)
            return
        except BaseException:  # Ctrl-C, SIGTERM, a metric missing: the trial goes back, to run again first
            self.give_back(trial.number, trial.params)
            raise
        try:
            if test is not None:
                trial.set_user_attr("test", test)
            self.study.tell(trial, value)
        except optuna.exceptions.UpdateFinishedTrialError:  # another worker took it for lost (no heartbeat)
            print(
                f"{experiment}: another worker gave this trial up for lost meanwhile (no heartbeat for {STALE} s); "
                "its experiment stays, and its params run again as a new trial",
                file=sys.stderr,
                flush=True,
            )
            return
        self.push_experiment(experiment)
        best = self.study.best_trial
        print(
            f"{experiment}  {self.params_text(trial.params)}  {self.space.objective.key} {value:.4f}  "
            f"best {best.value:.4f} ({self.name}-{best.number})",
            flush=True,
        )

    def execute(self, trial: optuna.Trial, experiment: str) -> tuple[float, float | None]:
        """Run the trial as the experiment ``experiment``: its objective value and test number."""
        command = ["dvc", "exp", "run", "--temp", "-n", experiment, *set_flags(trial.params), *self.space.run]
        self.logs.mkdir(parents=True, exist_ok=True)
        log = self.logs / f"{experiment}.log"
        if self.echo:
            print(f"{experiment}: {' '.join(command)}", flush=True)
        if run_logged(command, log, self.echo, trial) != 0:
            raise TrialFailed(f"{error_line(log)} (log: {log})")
        ref = experiment_refs().get(experiment)
        if ref is None:
            raise TrialFailed(f"dvc exp run made no experiment {experiment} (log: {log})")
        # A metric the experiment lacks is the space file's mistake, not the trial's: the search stops in one line,
        # the trial given back (its params run first once the file is fixed), instead of failing every trial.
        try:
            objective = read_metric(ref, self.space.objective)
            return objective, read_metric(ref, self.space.test) if self.space.test else None
        except PipelineError as error:
            raise PipelineError(f"{experiment}: {error}; fix {self.space.path}") from None

    def push_experiment(self, experiment: str) -> None:
        if not self.push:
            return
        pushed = subprocess.run(["dvc", "exp", "push", self.push, experiment], capture_output=True, text=True)
        if pushed.returncode:
            said = error_line(pushed.stdout + pushed.stderr)
            print(f"{experiment}: not pushed to {self.push}: {said}", file=sys.stderr, flush=True)

    def params_text(self, params: dict[str, Any]) -> str:
        """``key=value ...`` in the order of the search space (a storage may give them in another)."""
        return " ".join(f"{key}={shown(params[key])}" for key in self.space.params if key in params)

    def summary(self) -> None:
        given_back = self.given_back()
        trials = [t for t in self.study.get_trials(deepcopy=False) if t.number not in given_back]
        done = [t for t in trials if t.state == TrialState.COMPLETE]
        failed = [t for t in trials if t.state == TrialState.FAIL]
        running = [t for t in trials if t.state == TrialState.RUNNING]
        if not done:
            raise PipelineError(f"study {self.name}: no trial finished ({len(failed)} failed; logs in {self.logs})")
        best = self.study.best_trial
        test = best.user_attrs.get("test")
        tested = f", test {self.space.test.key} {test:.4f}" if test is not None and self.space.test else ""
        still = f"; {len(running)} still running elsewhere" if running else ""
        print(
            f"study {self.name}: {len(done)} finished, {len(failed)} failed{still}. Best: {self.name}-"
            f"{best.number} ({self.params_text(best.params)}): {self.space.objective.key} {best.value:.4f}{tested}; "
            f"dvc exp apply {self.name}-{best.number}",
            flush=True,
        )


@contextlib.contextmanager
def heartbeat(trial: optuna.Trial) -> Iterator[None]:
    """Renew the trial's ``alive`` time every HEARTBEAT seconds while it runs: other machines then know it is not
    lost."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT):
            with contextlib.suppress(Exception):  # a storage that blinks must not end the trial
                trial.set_user_attr("alive", time.time())

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()


def run_logged(command: list[str], log: Path, echo: bool, trial: optuna.Trial) -> int:
    """Run ``command`` in its own process group, its output into ``log`` (and the terminal when ``echo``).

    Its own group: a Ctrl-C or SIGTERM here reaches the stage through one SIGINT to the group, which ends the
    stage in one line (its checkpoint kept) and dvc after it; what is left after STOP_WAIT seconds is killed."""
    with log.open("wb") as out:
        with stoppable_children():
            child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        trial.set_user_attr("group", child.pid)
        trial.set_user_attr("group_started", start_time(child.pid))
        try:
            assert child.stdout is not None
            while chunk := child.stdout.read1(65536):
                out.write(chunk)
                if echo:
                    sys.stdout.buffer.write(chunk)
                    sys.stdout.flush()
            return child.wait()
        finally:
            if child.poll() is None:
                stop_group(child.pid, start_time(child.pid), child)


@contextlib.contextmanager
def stoppable_children() -> Iterator[None]:
    """Children started here stop on stop_group's SIGINT even where this search ignores SIGINT (started with ``&``
    by a script): an ignored signal is inherited, a handler is not. This process still ignores it meanwhile."""
    ignored = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    if ignored:
        signal.signal(signal.SIGINT, lambda signum, frame: None)
    try:
        yield
    finally:
        if ignored:
            signal.signal(signal.SIGINT, signal.SIG_IGN)


def stop_group(group: int, started: int, child: subprocess.Popen | None = None) -> None:
    """SIGINT to process group ``group`` (its leader started at ``started``; ``child`` when it is ours to reap),
    then SIGKILL if it lives on after STOP_WAIT seconds."""
    if not group or gone(group, started):
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signal.SIGINT)
    deadline = time.monotonic() + STOP_WAIT
    while time.monotonic() < deadline:
        if child is not None and child.poll() is not None:
            return  # our child ended (a zombie would still answer killpg)
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signal.SIGKILL)
    if child is not None:
        child.wait()


def error_line(log: Path | str) -> str:
    """The line that says why a trial failed: the stage's ``error:`` line, else DVC's ``ERROR:``, else the last."""
    text = log.read_text(errors="replace") if isinstance(log, Path) else log
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for prefix in ("error:", "ERROR:"):
        found = [line for line in lines if line.startswith(prefix)]
        if found:
            return found[-1]
    return lines[-1] if lines else "dvc exp run failed and printed nothing"


def serve(address: str, option: str) -> None:
    """Serve a storage to workers on other machines through Optuna's gRPC proxy, until Ctrl-C."""
    host, _, port = address.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")  # [::1]:13000, as gRPC writes an IPv6 address
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise PipelineError(f"--serve {address}: write it as HOST:PORT with a port of 1-65535, e.g. 0.0.0.0:13000")
    try:  # gRPC binds with SO_REUSEPORT: a second server on a port in use would start, and split the workers
        with socket.create_server((host, int(port))):
            pass
    except OSError as error:
        raise PipelineError(f"--serve {address}: cannot listen there ({error.strerror or error})") from None
    if option.startswith("grpc://"):
        raise PipelineError("--serve shares a journal file or an RDB URL; --storage grpc:// is a served one")
    storage = open_storage(option or str(SEARCH_DIR / "studies.journal"), "studies")
    if isinstance(storage, str):
        storage = optuna.storages.RDBStorage(storage)
    print(
        f"serving {option or SEARCH_DIR / 'studies.journal'} to workers: --storage grpc://<this machine>:{port}",
        flush=True,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.run_grpc_proxy_server(storage, host=host, port=int(port))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tools.search", description=__doc__.split("\n\n")[0])
    parser.add_argument("space", nargs="?", help="a search space: a name in configs/search/ (digits) or a .yaml file")
    parser.add_argument("--trials", default="", help="the study's number of trials (default: the space file's)")
    parser.add_argument("--study", default="", help="the study's name (default: the space's); a new name, a new study")
    parser.add_argument(
        "--storage",
        default="",
        help="journal file, RDB URL or grpc://HOST:PORT (default: data/cache/search/<study>.journal)",
    )
    parser.add_argument("--push", default="", metavar="REMOTE", help="dvc exp push each trial to this Git remote")
    parser.add_argument(
        "--serve",
        default="",
        metavar="HOST:PORT",
        help="serve --storage to other machines' workers (Optuna's gRPC proxy) instead of searching",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # each trial is one line of ours
    # A closed terminal or ssh session ends a search as SIGTERM does (its trial given back, its run
    # stopped), and a server.
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:  # nohup's stays
        signal.signal(signal.SIGHUP, lambda signum, frame: os.kill(os.getpid(), signal.SIGTERM))
    if not Path("dvc.yaml").is_file() or subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True).returncode:
        raise PipelineError("run the search at the root of a Git clone of the project with a commit (dvc.yaml here)")
    if args.serve:
        serve(args.serve, args.storage)
        return
    if not args.space:
        raise PipelineError("name a search space (digits), or --serve HOST:PORT")
    space = load_space(space_path(args.space))
    name = args.study or space.path.stem
    if not NAME.fullmatch(name):
        named = "--study" if args.study else f"the study's name (the space file's, {space.path.name}; or --study)"
        raise PipelineError(f"{named} {name!r}: use up to 64 letters, digits, - and _, starting with a letter or digit")
    if args.trials and not (args.trials.isdigit() and int(args.trials) > 0):
        raise PipelineError(f"--trials {args.trials!r}: give a whole number, 1 or more")
    if args.push and subprocess.run(["git", "remote", "get-url", args.push], capture_output=True).returncode:
        raise PipelineError(f"--push {args.push}: no such Git remote here; git remote -v lists them")
    check_targets(space)
    study = open_study(space, name, open_storage(args.storage, name), args.storage)
    try:
        Worker(space, study, int(args.trials or space.trials), args.push, load_params().seed).run()
    except (optuna.exceptions.OptunaError, grpc.RpcError) as error:  # the storage went away, or refused a change
        raise PipelineError(f"study {name}: its storage failed ({type(error).__name__}: {one_line(error)})") from None


if __name__ == "__main__":
    run(main)
