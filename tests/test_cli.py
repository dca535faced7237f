"""The ``distributed-agents`` command as a newcomer meets it.

Input errors (flags, environment, ``--app``) are one line on stderr saying what is
wrong and what to do, exit status 2, no traceback; an environment value is checked only
by the command that uses it. ``dead-letters`` list/show/purge run against memory, a real
Redis and a real NATS; unreachable or misconfigured backends are reported in one line
first (see also tests/adapters/*/test_connection.py for the messages themselves).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pathlib
import subprocess
import sys
import traceback
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.aio import run
from support.server_process import free_port

from distributed_agents import open_backend
from distributed_agents.cli import WORKER_OPTIONS, Option, UsageError, _parser, main
from distributed_agents.core.ports.task_queue import Task

HERE = pathlib.Path(__file__).resolve().parent
APP = '''
from distributed_agents import NodeRegistry
registry = NodeRegistry()
not_a_registry = 42

@registry.register("researcher")
def researcher(state):
    return {}

@registry.register("writer")
def writer(state):
    return {}
'''
ENV_NAMES = ("BACKEND_URL", "REDIS_URL", "NATS_URL", "DA_APP", "NODE_TYPES", "WORKER_ID", "CAPACITY",
             "HEARTBEAT_INTERVAL", "SHUTDOWN_GRACE", "VISIBILITY_TIMEOUT", "LOG_LEVEL", "DA_PREFIX", "DA_NODE_TYPE",
             "DA_LIMIT")


@pytest.fixture
def app_dir(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> pathlib.Path:
    """A folder with ``cliapp.py`` (researcher and writer), the current directory, clean environment."""
    (tmp_path / "cliapp.py").write_text(APP)
    (tmp_path / "needsdep.py").write_text("import some_missing_dependency\n")
    (tmp_path / "raisesatimport.py").write_text("x = 1\nraise RuntimeError('settings file missing')\n")
    (tmp_path / "badsyntax.py").write_text("def broken(:\n    pass\n")
    monkeypatch.chdir(tmp_path)
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def cli(*argv: str, stdin: str | None = None, env: dict[str, str] | None = None,
        cwd: pathlib.Path | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m distributed_agents ARGV`` in a fresh process (the real exit status and output)."""
    environment = {k: v for k, v in os.environ.items() if k not in ENV_NAMES}
    return subprocess.run([sys.executable, "-m", "distributed_agents", *argv], capture_output=True, text=True,
                          input=stdin, env={**environment, **(env or {})}, cwd=cwd, timeout=60)


def in_process(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``main(argv)`` in this process: (exit status, stdout, stderr). The collector settings
    of the test process stay as they are (``service_gc``: a worker or orchestrator command
    freezes what its process made)."""
    before = os.environ.get("DA_GC_DEFAULTS")
    os.environ["DA_GC_DEFAULTS"] = "1"
    try:
        status = main(list(argv))
    except SystemExit as exc:  # argparse: --help, --version and usage errors
        status = int(exc.code or 0)
    finally:
        if before is None:
            os.environ.pop("DA_GC_DEFAULTS", None)
        else:
            os.environ["DA_GC_DEFAULTS"] = before
    out, err = capsys.readouterr()
    return status, out, err


def assert_one_line_error(status: int, err: str, *needles: str, code: int = 2) -> None:
    assert status == code, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("distributed-agents"), err
    for needle in needles:
        assert needle in lines[0], (needle, err)


# -- environment values ------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "value", "flag"), [
    ("HEARTBEAT_INTERVAL", "x", "--heartbeat-interval"),
    ("HEARTBEAT_INTERVAL", "0", "--heartbeat-interval"),
    ("HEARTBEAT_INTERVAL", "nan", "--heartbeat-interval"),
    ("CAPACITY", "four", "--capacity"),
    ("CAPACITY", "0", "--capacity"),
    ("SHUTDOWN_GRACE", "-1", "--shutdown-grace"),
    ("VISIBILITY_TIMEOUT", "soon", "--visibility-timeout"),
    ("NODE_TYPES", " , ", "--node-types"),
    ("DA_APP", "cliapp.registry", "--app"),
])
def test_a_bad_environment_value_is_one_line_for_worker_and_harmless_elsewhere(
    app_dir: pathlib.Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    name: str, value: str, flag: str,
) -> None:
    monkeypatch.setenv(name, value)
    app = [] if name == "DA_APP" else ["--app", "cliapp:registry"]  # a flag would win over the environment
    status, _, err = in_process(capsys, "worker", *app, "--backend-url", "redis://127.0.0.1:1/0")
    assert_one_line_error(status, err, f"{name}={value!r}", flag, "unset it")
    # Unrelated subcommands do not read it.
    status, out, err = in_process(capsys, "backends")
    assert status == 0 and "redis://" in out, err
    status, out, err = in_process(capsys, "dead-letters", "list", "--backend-url", "memory://")
    assert status == 0 and out == "", err


def test_the_issue_example_in_a_real_process(app_dir: pathlib.Path) -> None:
    broken = cli("worker", "--app", "cliapp:registry", env={"HEARTBEAT_INTERVAL": "x",
                                                             "BACKEND_URL": "redis://127.0.0.1:1/0"}, cwd=app_dir)
    assert_one_line_error(broken.returncode, broken.stderr, "HEARTBEAT_INTERVAL='x'", "--heartbeat-interval 10")
    fine = cli("backends", env={"HEARTBEAT_INTERVAL": "x"})
    assert fine.returncode == 0 and "memory://" in fine.stdout, fine.stderr


def test_the_flag_wins_over_a_bad_environment_value(app_dir: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEARTBEAT_INTERVAL", "x")
    monkeypatch.setenv("CAPACITY", "3")
    args = _parser().parse_args(["worker", "--heartbeat-interval", "2.5"])
    from distributed_agents.cli import CAPACITY, HEARTBEAT_INTERVAL
    assert HEARTBEAT_INTERVAL.resolve(args) == 2.5
    assert CAPACITY.resolve(args) == 3


# -- --log-level, --version, help ------------------------------------------------------------


@pytest.mark.parametrize("argv", [
    ["--log-level", "verbose", "backends"],
    ["backends", "--log-level", "verbose"],
    ["dead-letters", "list", "--log-level=verbose"],
])
def test_an_unknown_log_level_is_one_line_listing_the_valid_ones(capsys: pytest.CaptureFixture[str],
                                                                  argv: list[str]) -> None:
    status, _, err = in_process(capsys, *argv)
    assert_one_line_error(status, err, "'verbose' is not a log level", "debug, info, warning, error, critical")


def test_log_level_is_accepted_before_and_after_the_subcommand(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOG_LEVEL", raising=False)
    parse = _parser().parse_args
    assert parse(["--log-level", "debug", "backends"]).log_level == "debug"
    assert parse(["backends", "--log-level", "WARNING"]).log_level == "warning"
    assert parse(["dead-letters", "list", "--log-level", "error"]).log_level == "error"
    assert parse(["--log-level", "debug", "worker", "--log-level", "error"]).log_level == "error"  # the last wins
    assert parse(["backends"]).log_level is None  # then LOG_LEVEL, then info


def test_log_level_after_the_subcommand_takes_effect_in_a_real_process() -> None:
    # asyncio logs its selector at DEBUG when the command's event loop starts.
    debug = cli("backends", "--log-level", "debug")
    assert debug.returncode == 0 and "DEBUG" in debug.stderr, debug.stderr
    quiet = cli("backends", "--log-level", "warning")
    assert quiet.returncode == 0 and quiet.stderr == ""
    from_env = cli("backends", env={"LOG_LEVEL": "debug"})
    assert "DEBUG" in from_env.stderr
    bad_env = cli("backends", env={"LOG_LEVEL": "loud"})
    assert_one_line_error(bad_env.returncode, bad_env.stderr, "LOG_LEVEL='loud'", "debug, info")


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from distributed_agents import __version__

    status, out, _ = in_process(capsys, "--version")
    assert status == 0 and out.strip() == f"distributed-agents {__version__}"


@pytest.mark.parametrize(("argv", "usage"), [
    (["worker", "--help"], "usage: distributed-agents worker "),
    (["--help", "worker"], "usage: distributed-agents worker "),
    (["help", "worker"], "usage: distributed-agents worker "),
    (["dead-letters", "-h"], "usage: distributed-agents dead-letters "),
    (["dead-letters", "list", "--help"], "usage: distributed-agents dead-letters list "),
    (["dead-letters", "show", "--help"], "usage: distributed-agents dead-letters show "),
    (["help", "dead-letters", "purge"], "usage: distributed-agents dead-letters purge "),
    (["dead-letters", "requeue", "-h"], "usage: distributed-agents dead-letters requeue "),
    (["help"], "usage: distributed-agents "),
])
def test_subcommand_help_is_the_subcommand_s_own(capsys: pytest.CaptureFixture[str], argv: list[str],
                                                 usage: str) -> None:
    status, out, _ = in_process(capsys, *argv)
    assert status == 0 and out.startswith(usage), out


def _all_parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                yield from _all_parsers(sub)


def test_every_option_shows_help_default_and_environment_variable() -> None:
    checked = 0
    for parser in _all_parsers(_parser()):
        for action in parser._actions:
            if not action.option_strings or action.help == argparse.SUPPRESS:
                continue
            if isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
                continue
            assert action.help and "default:" in action.help, (parser.prog, action.option_strings)
            if not isinstance(action, argparse._StoreTrueAction):
                assert "env: $" in action.help, (parser.prog, action.option_strings)
            checked += 1
    assert checked >= 20


# -- input errors: one line, what to do, exit 2 --------------------------------------------------


@pytest.mark.parametrize(("argv", "needles"), [
    (["worker", "--backend-url", "redis://127.0.0.1:1/0"], ["--app MODULE:ATTRIBUTE", "DA_APP"]),
    (["worker", "--app", "cliapp"], ["--app", "MODULE:ATTRIBUTE"]),
    (["worker", "--app", "nosuchmodule_xyz:registry", "--backend-url", "redis://127.0.0.1:1/0"],
     ["cannot import 'nosuchmodule_xyz'", "PYTHONPATH"]),
    (["worker", "--app", "needsdep:registry", "--backend-url", "redis://127.0.0.1:1/0"],
     ["importing 'needsdep' failed", "No module named 'some_missing_dependency'", "install what it needs"]),
    (["worker", "--app", "raisesatimport:registry", "--backend-url", "redis://127.0.0.1:1/0"],
     ["importing 'raisesatimport' raised RuntimeError: settings file missing", "raisesatimport.py:2",
      "fix the module"]),
    (["worker", "--app", "badsyntax:registry", "--backend-url", "redis://127.0.0.1:1/0"],
     ["'badsyntax' has a syntax error at", "badsyntax.py:1"]),
    (["worker", "--app", "cliapp:nothing", "--backend-url", "redis://127.0.0.1:1/0"],
     ["no attribute 'nothing'", "cliapp:registry"]),
    (["worker", "--app", "cliapp:not_a_registry", "--backend-url", "redis://127.0.0.1:1/0"],
     ["not a NodeRegistry"]),
    (["worker", "--app", "cliapp:registry", "--node-types", "researcher,writer,analyzer",
      "--backend-url", "redis://127.0.0.1:1/0"], ["'analyzer'", "researcher, writer"]),
    (["worker", "--app", "cliapp:registry"], ["--backend-url", "BACKEND_URL"]),
    (["worker", "--app", "cliapp:registry", "--capacity", "-2"], ["--capacity", "positive"]),
    (["worker", "--app", "cliapp:registry", "--backend-url", "bogus://x"], ["bogus"]),
    (["worker", "--app", "cliapp:registry", "--backend-url", "memory://"], ["memory://", "--backend-url redis://"]),
    (["worker", "--app", "cliapp:registry", "--backend-url", "redis://h:1/0?visibility_timeout=abc"],
     ["visibility_timeout"]),
    (["dead-letters"], ["ACTION", "--help"]),
    (["dead-letters", "explode"], ["invalid choice", "--help"]),
    (["dead-letters", "list"], ["--backend-url", "BACKEND_URL"]),
    (["dead-letters", "show"], ["TASK_ID"]),
    (["dead-letters", "requeue", "--backend-url", "memory://"], ["TASK_ID"]),
    (["dead-letters", "list", "--limit", "0", "--backend-url", "memory://"], ["--limit"]),
    (["worker", "--app", "cliapp:registry", "--bogus-flag"], ["unrecognized arguments: --bogus-flag"]),
    ([], ["COMMAND"]),
])
def test_every_input_error_is_one_line_saying_what_to_do(
    app_dir: pathlib.Path, capsys: pytest.CaptureFixture[str], argv: list[str], needles: list[str]
) -> None:
    status, _, err = in_process(capsys, *argv)
    assert_one_line_error(status, err, *needles)
    assert "redis_url=" not in err and "backend_url=" not in err  # hints name flags, not Python keywords


def test_the_kubernetes_case_a_node_type_without_function_exits_2_before_connecting(app_dir: pathlib.Path) -> None:
    done = cli("worker", "--app", "cliapp:registry", cwd=app_dir,
               env={"REDIS_URL": "redis://127.0.0.1:1/0", "NODE_TYPES": "researcher,writer,analyzer"})
    assert_one_line_error(done.returncode, done.stderr, "'analyzer'", "no function")


# -- dead letters on every backend ------------------------------------------------------------------


@pytest.fixture(params=["memory", "redis", "nats"])
def backend_url(request: pytest.FixtureRequest) -> str:
    if request.param == "memory":
        return "memory://"
    url: str = request.getfixturevalue(f"{request.param}_url")
    return url


def _failure_text(attempt: int) -> str:
    try:
        raise ValueError(f"smtp refused on attempt {attempt}")
    except ValueError:
        return f"ValueError: smtp refused on attempt {attempt}\n{traceback.format_exc()}"


def make_dead_letters(url: str, prefix: str, specs: list[tuple[str, str, int]]) -> None:
    """Dead-letter one task per (task id, node type, attempts), each attempt failing with a traceback."""

    async def scenario() -> None:
        backend = open_backend(url, prefix=prefix, max_attempts=5)
        await backend.connect()
        try:
            queue = backend.task_queue
            for task_id, node_type, attempts in specs:
                await queue.enqueue(Task(task_id, f"wf-{task_id}", node_type, node_type, {"step": 2}))
                for attempt in range(1, attempts + 1):
                    [claim] = await queue.claim([node_type], worker_id="w", wait=5)
                    await queue.nack(claim, _failure_text(attempt), final=attempt == attempts)
        finally:
            await backend.close()

    run(scenario(), 60)


def listed(capsys: pytest.CaptureFixture[str], where: list[str], *extra: str) -> list[dict[str, Any]]:
    status, out, err = in_process(capsys, "dead-letters", "list", *where, *extra)
    assert status == 0, err
    return [json.loads(line) for line in out.splitlines()]


@pytest.mark.timeout(120)
def test_dead_letters_list_show_and_purge(backend_url: str, capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    prefix = f"cli{uuid.uuid4().hex[:8]}"
    where = ["--backend-url", backend_url, "--prefix", prefix]
    make_dead_letters(backend_url, prefix, [("t-notify", "notify", 3), ("t-archive", "archive", 1),
                                            ("t-notify2", "notify", 1)])

    # list needs no task ids; --node-type filters.
    assert [e["task_id"] for e in listed(capsys, where)] == ["t-notify", "t-archive", "t-notify2"]
    assert [e["task_id"] for e in listed(capsys, where, "--node-type", "archive")] == ["t-archive"]

    # show: the full error history, every attempt's traceback included.
    status, out, err = in_process(capsys, "dead-letters", "show", "t-notify", *where)
    assert status == 0, err
    assert "workflow:   wf-t-notify" in out and "attempts:   3" in out and "node type:  notify" in out
    for attempt in (1, 2, 3):
        assert f"attempt {attempt}: ValueError: smtp refused on attempt {attempt}" in out
    assert out.count("Traceback (most recent call last):") == 3
    assert 'raise ValueError(f"smtp refused on attempt {attempt}")' in out
    status, out, _ = in_process(capsys, "dead-letters", "show", "t-notify", "--json", *where)
    shown = json.loads(out)
    assert shown["workflow_id"] == "wf-t-notify" and len(shown["errors"]) == 3
    assert shown["task"]["payload"] == {"step": 2}
    status, _, err = in_process(capsys, "dead-letters", "show", "t-missing", *where)
    assert_one_line_error(status, err, "'t-missing'", "dead-letters list", code=1)

    # purge without --yes and without a terminal refuses, and purges nothing.
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n"))
    status, _, err = in_process(capsys, "dead-letters", "purge", "t-archive", *where)
    assert_one_line_error(status, err, "--yes")
    assert len(listed(capsys, where)) == 3

    # purge by id, answering the confirmation on a terminal.
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stdin", Terminal("n\n"))
    status, out, _ = in_process(capsys, "dead-letters", "purge", "t-archive", *where)
    assert status == 1 and "nothing purged" in out and len(listed(capsys, where)) == 3
    monkeypatch.setattr(sys, "stdin", Terminal("y\n"))
    status, out, err = in_process(capsys, "dead-letters", "purge", "t-archive", "t-nope", *where)
    assert status == 1 and "purge 1 dead letter(s) for good? [y/N]" in out and "purged 1" in out
    assert "t-nope: not found" in err
    assert [e["task_id"] for e in listed(capsys, where)] == ["t-notify", "t-notify2"]
    # A purged dead letter cannot be requeued or shown.
    status, out, err = in_process(capsys, "dead-letters", "requeue", "t-archive", *where)
    assert status == 1 and out == ""
    assert_one_line_error(status, err, "distributed-agents: error: t-archive: not found", code=1)

    # purge by node type with --yes, then everything.
    make_dead_letters(backend_url, prefix, [("t-other", "other", 1)])
    status, out, _ = in_process(capsys, "dead-letters", "purge", "--node-type", "notify", "--yes", *where)
    assert status == 0 and "purged 2 dead letter(s)" in out
    assert [e["task_id"] for e in listed(capsys, where)] == ["t-other"]
    status, out, _ = in_process(capsys, "dead-letters", "purge", "-y", *where)
    assert status == 0 and "purged 1 dead letter(s)" in out
    assert listed(capsys, where) == []
    status, out, _ = in_process(capsys, "dead-letters", "purge", "-y", *where)
    assert status == 0 and "no dead letters to purge" in out


def test_purge_keeps_the_failed_result_and_the_id(backend_url: str) -> None:
    """The port contract: purged, the letter is gone from list and stats; result and id stay known."""
    prefix = f"pur{uuid.uuid4().hex[:8]}"
    make_dead_letters(backend_url, prefix, [("t1", "notify", 1)])

    async def scenario() -> None:
        backend = open_backend(backend_url, prefix=prefix)
        await backend.connect()
        try:
            queue = backend.task_queue
            assert (await queue.stats("notify")).dead == 1
            assert await queue.purge_dead_letter("t1") is True
            assert await queue.purge_dead_letter("t1") is False
            assert await queue.purge_dead_letter("never-seen") is False
            assert await queue.dead_letters() == []
            assert (await queue.stats("notify")).dead == 0
            result = await queue.get_result("t1")
            assert result is not None and result.status == "failed"
            assert await queue.requeue_dead_letter("t1") is False
            assert await queue.enqueue(Task("t1", "wf", "notify", "notify", {})) is False
        finally:
            await backend.close()

    run(scenario(), 60)


# -- unreachable and misconfigured backends ---------------------------------------------------------


def first_stderr_line(argv: list[str], cwd: pathlib.Path) -> tuple[str, subprocess.Popen[str]]:
    """Start the command; return its first line of output (it may keep running) and the process."""
    environment = {k: v for k, v in os.environ.items() if k not in ENV_NAMES}
    process = subprocess.Popen([sys.executable, "-m", "distributed_agents", *argv], cwd=cwd, env=environment,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert process.stdout is not None
    return process.stdout.readline(), process


@pytest.mark.timeout(90)
@pytest.mark.parametrize(("scheme", "needles"), [
    ("redis", ["redis://127.0.0.1:{port}/0", "connection refused", "redis-server is running"]),
    ("nats", ["nats://127.0.0.1:{port}", "connection refused", "nats-server -js"]),
])
def test_a_worker_whose_backend_is_down_says_so_in_its_first_line_and_waits(
    app_dir: pathlib.Path, scheme: str, needles: list[str]
) -> None:
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0" if scheme == "redis" else f"nats://127.0.0.1:{port}?connect_attempts=1"
    line, process = first_stderr_line(["worker", "--app", "cliapp:registry", "--backend-url", url], app_dir)
    try:
        assert process.poll() is None  # it waits for the backend to come up, as in a cluster
        assert "Traceback" not in line and "WARNING" in line
        for needle in needles:
            assert needle.format(port=port) in line, line
    finally:
        process.kill()
        process.wait(timeout=10)
        assert process.stdout is not None
        process.stdout.close()


@pytest.mark.timeout(90)
def test_rediss_to_a_plain_redis_says_tls_failed_and_exits(app_dir: pathlib.Path, redis_url: str) -> None:
    tls_url = redis_url.replace("redis://", "rediss://", 1)
    done = cli("worker", "--app", "cliapp:registry", "--backend-url", tls_url, cwd=app_dir)
    assert_one_line_error(done.returncode, done.stderr.splitlines()[-1] + "\n", "TLS handshake", "plain (non-TLS)",
                          "use redis://")
    assert "redis-server is running" not in done.stderr and "Traceback" not in done.stderr
    listing = cli("dead-letters", "list", "--backend-url", tls_url)
    assert_one_line_error(listing.returncode, listing.stderr, "TLS handshake", "plain (non-TLS)")


@pytest.mark.timeout(90)
def test_dead_letters_against_a_down_backend_is_one_line_exit_1() -> None:
    done = cli("dead-letters", "list", "--backend-url", f"redis://127.0.0.1:{free_port()}/0")
    assert_one_line_error(done.returncode, done.stderr, "cannot connect to Redis", "connection refused", code=1)


# -- property: any environment text is a valid value or one line naming the variable --------------

env_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=30)


@settings(max_examples=300, deadline=None)
@given(option=st.sampled_from([o for o in WORKER_OPTIONS if o.env]), raw=env_text)
def test_any_environment_value_parses_or_is_one_line_naming_the_variable(option: Option, raw: str) -> None:
    name = option.env[0]
    saved = {n: os.environ.pop(n, None) for n in option.env}
    os.environ[name] = raw
    try:
        value = option.resolve(argparse.Namespace())
    except UsageError as exc:
        message = str(exc)
        assert "\n" not in message and f"environment variable {name}=" in message and option.flag in message
        return
    finally:
        for n, old in saved.items():
            os.environ.pop(n, None)
            if old is not None:
                os.environ[n] = old
    if raw == "":
        assert value == option.default  # an empty variable counts as unset
    elif option.dest in ("capacity",):
        assert isinstance(value, int) and value >= 1
    elif option.dest in ("heartbeat_interval", "visibility_timeout"):
        assert isinstance(value, float) and value > 0 and value != float("inf")
    elif option.dest == "shutdown_grace":
        assert isinstance(value, float) and value >= 0 and value != float("inf")


@pytest.mark.parametrize(("module", "url", "extra"), [
    ("redis", "redis://127.0.0.1:1/0", "[redis]"),
    ("nats", "nats://127.0.0.1:1", "[nats]"),
])
def test_a_missing_client_library_is_one_line_naming_the_extra(module: str, url: str, extra: str) -> None:
    code = (f"import sys; sys.modules[{module!r}] = None\n"
            "from distributed_agents.cli import main\n"
            f"sys.exit(main(['dead-letters', 'list', '--backend-url', {url!r}]))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert_one_line_error(done.returncode, done.stderr, extra, "pip install")


# -- heartbeat interval against the registry's TTL ----------------------------------------------------


@pytest.mark.timeout(90)
@pytest.mark.parametrize("scheme", ["redis", "nats"])
def test_a_heartbeat_interval_the_registry_would_outlive_is_refused(
    app_dir: pathlib.Path, scheme: str, request: pytest.FixtureRequest
) -> None:
    """Ops finding: --heartbeat-interval 100 with the default 30 s TTL made a live worker vanish."""
    url: str = request.getfixturevalue(f"{scheme}_url")
    done = cli("worker", "--app", "cliapp:registry", "--backend-url", url, "--heartbeat-interval", "100", cwd=app_dir)
    assert_one_line_error(done.returncode, done.stderr, "heartbeat interval 100s", "heartbeat_ttl 30s",
                          "at most 15s", "--heartbeat-interval")
    sep = "&" if "?" in url else "?"
    raised = cli("worker", "--app", "cliapp:registry", "--backend-url", f"{url}{sep}heartbeat_ttl=4",
                 "--heartbeat-interval", "3", cwd=app_dir)
    assert_one_line_error(raised.returncode, raised.stderr, "heartbeat interval 3s", "heartbeat_ttl 4s")


@pytest.mark.parametrize(("argv", "command"), [
    (["worker", "--app", "cliapp:registry", "--bogus", "1"], "worker"),
    (["dead-letters", "list", "--bogus"], "dead-letters list"),
    (["dead-letters", "requeue", "t1", "--bogus"], "dead-letters requeue"),
])
def test_an_unknown_flag_points_to_its_command_s_own_help(app_dir: pathlib.Path, argv: list[str],
                                                           command: str) -> None:
    done = cli(*argv, cwd=app_dir)
    assert_one_line_error(done.returncode, done.stderr, f"distributed-agents {command}: error:", "--bogus",
                          f"see 'distributed-agents {command} --help'")


@pytest.mark.timeout(90)
def test_nats_at_a_closed_port_is_exit_1_and_at_a_redis_port_exit_2(redis_url: str) -> None:
    """Ops finding: these took 7-14 s of nats-py retries; the probe reports them without retrying. A Redis
    server there is a server of another kind (exit 2, as the README's table says): a retry cannot help."""
    patient = "connect_attempts=1000&reconnect_wait=30"  # only the probe can end these before the timeout
    port = free_port()
    done = cli("dead-letters", "list", "--backend-url", f"nats://127.0.0.1:{port}?{patient}")
    assert_one_line_error(done.returncode, done.stderr, f"connection refused by 127.0.0.1:{port}", code=1)
    address = redis_url.split("://", 1)[1].split("/", 1)[0]
    done = cli("dead-letters", "list", "--backend-url", f"nats://{address}?{patient}")
    assert_one_line_error(done.returncode, done.stderr, "is a Redis server, not a NATS server", "4222", code=2)


GRAPH_APP = '''
from typing import TypedDict
from distributed_agents import END, START, Graph, StateGraph

class State(TypedDict, total=False):
    q: str
    a: str
    inner: str

def answer(s):
    return {"a": "answer to " + s["q"]}

def deep(s):
    return {"inner": "deep"}

sub = Graph("sub").add_node("deep", deep).set_entry_point("deep").set_finish_point("deep").compile()
g = StateGraph(State)
g.add_node(answer)
g.add_node("nested", sub)
g.add_edge(START, "answer").add_edge("answer", "nested").add_edge("nested", END)
app = g.compile()
typed_only = Graph("typed_only").add_node("x", node_type="served_elsewhere").set_entry_point("x").set_finish_point("x")
'''


def test_app_may_name_a_graph_whose_node_functions_and_subgraphs_functions_are_served(
        app_dir: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    from distributed_agents.cli import load_app
    from distributed_agents.core.errors import ConfigurationError

    (app_dir / "lgapp.py").write_text(GRAPH_APP)
    registry = load_app("lgapp:app")
    assert sorted(registry.node_types()) == ["answer", "deep"]
    with pytest.raises(ConfigurationError, match="has no node functions of its own"):
        load_app("lgapp:typed_only")
    with pytest.raises(ConfigurationError, match="it has lgapp:app"):
        load_app("lgapp:missing")
