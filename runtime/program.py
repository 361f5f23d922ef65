"""How a stage or tool starts and ends: ``start_program(__name__)`` first thing, ``run(main)`` last.

``start_program`` is called by each entry point before its other imports, TensorFlow's among them, which take seconds:
a Ctrl-C then ends the program in one line, not a traceback of them. ``run`` turns the errors a user can fix
into one line, and SIGINT and SIGTERM into an orderly unwind, so every temporary output goes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator

from runtime.errors import PipelineError

ENDINGS = {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated"}  # the one line each signal ends a program with


def start_program(name: str) -> None:
    """Ready this process for the stage or tool named ``name`` (its module's ``__name__``): SIGINT and SIGTERM
    end it with one line, a closed stderr is /dev/null, and TensorFlow's import keeps its C++ start-up lines out
    of the log (``tf_log``). Only when the module runs as the program (``python -m``); imported by a test or a
    notebook it changes nothing."""
    if name != "__main__":
        return
    for signum in ENDINGS:
        if signal.getsignal(signum) is not signal.SIG_IGN:  # one a parent ignored (nohup) stays ignored
            signal.signal(signum, _end_at_once)
    _open_stderr()
    from runtime.tf_log import quiet_cpu_start  # here, after the handlers: its imports take tens of milliseconds

    quiet_cpu_start()


def _end_at_once(signum: int, frame: object) -> None:
    # Before run() puts its own handlers in, only imports have run, and after it ends only the teardown: nothing
    # to undo, so end here, in one line, with what the program printed.
    with contextlib.suppress(Exception):  # a print the signal interrupted: its line is lost, not the exit
        sys.stdout.flush()
    os.write(2, f"error: {ENDINGS[signum]}\n".encode())
    os._exit(128 + signum)


def _open_stderr() -> None:
    """A closed stderr (``2>&-``) made /dev/null: output and exit status stay as with stderr open (not a
    program dying on ``sys.stderr`` being None), and no file the program opens becomes fd 2, where C++ logs go."""
    try:
        os.fstat(2)
    except OSError:
        null = os.open(os.devnull, os.O_WRONLY)
        if null != 2:
            os.dup2(null, 2)
            os.close(null)
    if sys.stderr is None:
        sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115 - the process's stderr, open for its whole life


class Terminated(BaseException):
    """SIGTERM arrived (``kill``, a CI runner, a job scheduler): unwind like Ctrl-C, so temp outputs go."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated


def run(main: Callable[[], None], *, no_arguments: bool = False) -> None:
    """Run a stage's ``main`` and turn a PipelineError into one line on stderr and exit status 1.

    SIGINT and SIGTERM unwind the stack, so every ``atomic_path`` removes its temporary output, then end the
    program with one line and exit status 128 + the signal's number. A program with ``no_arguments`` (a DVC
    stage, whose settings are params.yaml's) answers ``--help`` with what it does, and refuses any other
    argument before it starts work that may take hours.
    """
    for signum, handler in ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, _terminate)):
        if signal.getsignal(signum) is not signal.SIG_IGN:
            signal.signal(signum, handler)
    try:
        try:
            if no_arguments and _answered(main):
                return
            main()
        finally:  # a signal while main's objects are freed (TensorFlow's: most of a second) is still caught below
            _ending()
    except PipelineError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        _end(signal.SIGINT)
    except Terminated:
        _end(signal.SIGTERM)


def _ending() -> None:
    """From here on the program only ends: the interpreter's teardown (TensorFlow's atexit handlers) is no place
    for an exception, so a signal ends it at once, in one line, as during the imports."""
    for signum in ENDINGS:
        if signal.getsignal(signum) is not signal.SIG_IGN:
            signal.signal(signum, _end_at_once)


def chosen_name(arguments: list[str], names: tuple[str, ...], program: str) -> str:
    """The one argument of ``program`` (``stages.export``, run once per name by dvc.yaml's ``foreach``): one of
    ``names``, else a PipelineError of its usage line."""
    if len(arguments) != 1 or arguments[0] not in names:
        raise PipelineError(f"usage: python -m {program} {{{','.join(names)}}}")
    return arguments[0]


def _answered(main: Callable[[], None]) -> bool:
    """True when the arguments asked for help and got it; a PipelineError for any other argument."""
    module = sys.modules[main.__module__]
    name = module.__spec__.name if main.__module__ == "__main__" and module.__spec__ else main.__module__
    arguments = sys.argv[1:]
    if arguments in (["-h"], ["--help"]):
        print(f"usage: python -m {name}  (dvc repro runs it with the settings in params.yaml)\n")
        print((module.__doc__ or "").strip())
        return True
    if arguments:
        raise PipelineError(f"python -m {name} takes no arguments, not {arguments[0]!r}; set its params in params.yaml")
    return False


def _end(signum: int) -> None:
    _ending()
    print(f"error: {ENDINGS[signum]}", file=sys.stderr)
    sys.exit(128 + signum)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the enclosed code ends, then raise what ``run`` would have raised.

    For third-party code that catches everything: Keras' ``load_model`` reads the weights inside a bare
    ``except:`` that falls back to another reader, so a Ctrl-C there was swallowed and the stage went on to
    exit 0. Only for code that ends within seconds; outside ``run``'s handlers it changes nothing."""
    raising = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: _terminate}
    held = [signum for signum, handler in raising.items() if signal.getsignal(signum) is handler]
    if threading.current_thread() is not threading.main_thread():
        held = []  # only the main thread receives signals, and only it may set handlers
    arrived: list[int] = []
    for signum in held:
        signal.signal(signum, lambda signum, frame: arrived.append(signum))
    try:
        yield
    finally:
        for signum in held:
            signal.signal(signum, raising[signum])
        if arrived:  # in place of whatever the enclosed code raised after it
            raise KeyboardInterrupt if arrived[0] == signal.SIGINT else Terminated
