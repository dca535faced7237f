"""The operator commands of ``distributed-agents`` as subprocesses against a real Redis.

One redis-server (the session's) and one worker process (serving ``opsapp:graph``) per
module, each test on its own workflows; ``memory://`` where a command lives in one
process (``run``). Input errors exit 2 with one line and no traceback; failures exit 1.
The README's command table is checked against ``--help``.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from distributed_agents import __version__

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
APP = '''
from typing import Any
from distributed_agents import Graph, State, interrupt


def draft(state: State) -> dict[str, Any]:
    return {"text": f"draft about {state['topic']}"}


def polish(state: State) -> dict[str, Any]:
    return {"text": state["text"] + ", polished"}


def ask(state: State) -> dict[str, Any]:
    return {"answer": interrupt({"question": f"approve {state['topic']}?"})}


graph = (Graph("essay").add_node("draft", draft).add_node("polish", polish)
         .set_entry_point("draft").add_edge("draft", "polish").set_finish_point("polish").compile())
def boom(state: State) -> dict[str, Any]:
    raise ValueError("the model said no\\nand explained at length")


failing = Graph("failing").add_node("boom", boom).set_entry_point("boom").set_finish_point("boom").compile()
approval = Graph("approval").add_node("ask", ask).set_entry_point("ask").set_finish_point("ask").compile()
checked = (Graph("checked").add_node("draft", draft).add_node("polish", polish).set_entry_point("draft")
           .add_edge("draft", "polish").set_finish_point("polish")
           .compile(interrupt_after=["draft"], interrupt_before=["polish"]))
'''
ENV_NAMES = ("DA_BACKEND_URL", "BACKEND_URL", "REDIS_URL", "NATS_URL", "DA_PREFIX", "DA_LIMIT", "DA_NODE_TYPE")


class Deployment:
    """A Redis URL and prefix with one worker process serving ``opsapp:graph``."""

    def __init__(self, url: str, folder: pathlib.Path) -> None:
        self.url, self.folder = url, folder
        self.prefix = f"cliops{uuid.uuid4().hex[:8]}"
        environment = {k: v for k, v in os.environ.items() if k not in ENV_NAMES}
        self.env = {**environment, "PYTHONPATH": str(folder)}
        self.log = open(folder / "worker.log", "w")
        self.worker = subprocess.Popen(
            [sys.executable, "-m", "distributed_agents", "worker", "--app", "opsapp:graph", "--backend-url", url,
             "--prefix", self.prefix, "--worker-id", "ops-worker", "--capacity", "2", "--heartbeat-interval", "0.5"],
            cwd=folder, env=self.env, stdout=self.log, stderr=subprocess.STDOUT, text=True)

    def cli(self, *argv: str, backend: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        where = ["--backend-url", self.url, "--prefix", self.prefix] if backend else []
        return subprocess.run([sys.executable, "-m", "distributed_agents", *argv, *where], capture_output=True,
                              text=True, cwd=self.folder, env={**self.env, **(env or {})}, timeout=60)

    def ok(self, *argv: str, backend: bool = True) -> str:
        done = self.cli(*argv, backend=backend)
        assert done.returncode == 0, (argv, done.stdout, done.stderr, (self.folder / "worker.log").read_text())
        return done.stdout

    def close(self) -> None:
        if self.worker.poll() is None:
            self.worker.kill()
        self.worker.wait(timeout=10)
        self.log.close()


def _deployment(url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    folder = tmp_path_factory.mktemp("cliops")
    (folder / "opsapp.py").write_text(APP)
    deployment = Deployment(url, folder)
    try:
        yield deployment
    finally:
        deployment.close()


@pytest.fixture(scope="module")
def deployment(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    yield from _deployment(redis_url, tmp_path_factory)


@pytest.fixture(scope="module")
def nats_deployment(nats_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    yield from _deployment(nats_url, tmp_path_factory)


def lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def assert_one_line_error(done: subprocess.CompletedProcess[str], status: int, *words: str) -> None:
    assert done.returncode == status, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert re.match(r"distributed-agents( [a-z-]+)*: error: ", line), line
    for word in words:
        assert word in line


def test_run_through_a_worker_then_status_history_list_workers_and_queues_read_it(deployment: Deployment) -> None:
    run_and_read(deployment)


def test_the_same_on_nats(nats_deployment: Deployment) -> None:
    run_and_read(nats_deployment)
    workflow_id = nats_deployment.ok("submit", "opsapp:graph", "--input", '{"topic": "gas"}').strip()
    result = json.loads(nats_deployment.ok("resume", workflow_id, "--graph", "opsapp:graph"))
    assert result["status"] == "completed"
    assert_one_line_error(nats_deployment.cli("cancel", workflow_id), 1, "already finished (completed)")
    assert lines(nats_deployment.ok("dead-letters", "list", "--json")) == []


def run_and_read(deployment: Deployment) -> None:
    """run through the worker, then read the workflow back with every read command."""
    done = deployment.cli("run", "opsapp:graph", "--input", '{"topic": "tides"}')
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["status"] == "completed"
    assert result["values"] == {"topic": "tides", "text": "draft about tides, polished"}
    # Progress, plain lines since stderr is not a terminal: every node started and done (on the worker).
    assert "step 0: draft started (worker)" in done.stderr and "polish done" in done.stderr
    assert "workflow completed at step 2" in done.stderr
    workflow_id = result["workflow_id"]

    status = json.loads(deployment.ok("status", workflow_id, "--json"))
    assert status == {**status, "workflow_id": workflow_id, "graph": "essay", "status": "completed", "step": 2,
                      "next_nodes": [], "error": None, "interrupts": [], "waiting_for": None}
    assert "status:    completed" in deployment.ok("status", workflow_id)

    history = lines(deployment.ok("history", workflow_id, "--json"))
    assert [h["step"] for h in history] == sorted((h["step"] for h in history), reverse=True)
    assert history[0]["values"]["text"] == "draft about tides, polished"
    assert len(lines(deployment.ok("history", workflow_id, "--json", "--limit", "1"))) == 1
    assert workflow_id in deployment.ok("history", workflow_id).splitlines()[1]

    listed = lines(deployment.ok("list", "--json", "--graph", "essay", "--status", "completed"))
    assert workflow_id in [w["workflow_id"] for w in listed]
    assert all(set(w) >= {"workflow_id", "graph", "status", "step", "cursor"} for w in listed)
    assert workflow_id in deployment.ok("list")

    (worker,) = lines(deployment.ok("workers", "--json"))
    assert worker["worker_id"] == "ops-worker" and worker["node_types"] == ["draft", "polish"]
    assert worker["capacity"] == 2 and worker["in_flight"] == 0 and worker["heartbeat_age"] >= 0

    # The worker's types (another test of this module may have added a dead letter's).
    queues = [q for q in lines(deployment.ok("queues", "--json")) if q["node_type"] in ("draft", "polish")]
    assert [q["node_type"] for q in queues] == ["draft", "polish"]
    assert all(q["queued"] == 0 and q["in_flight"] == 0 and q["dead"] == 0 for q in queues)
    assert re.search(r"^draft\s+0\s+0\s+0$", deployment.ok("queues"), re.MULTILINE)


def test_queues_count_queued_in_flight_and_dead_tasks_per_node_type(deployment: Deployment) -> None:
    from support.aio import run

    from distributed_agents import open_backend
    from distributed_agents.core.ports.task_queue import Task

    async def fill() -> None:  # node types no worker serves: 2 queued + 1 claimed of "ghost", 1 dead "spectre"
        backend = open_backend(deployment.url, prefix=deployment.prefix)
        await backend.connect()
        try:
            queue = backend.task_queue
            for task_id, node_type in (("g1", "ghost"), ("g2", "ghost"), ("g3", "ghost"), ("s1", "spectre")):
                await queue.enqueue(Task(task_id, f"wf_{task_id}", node_type, node_type, {"step": 0}))
            [_claim] = await queue.claim(["ghost"], worker_id="holder", lease_seconds=300, wait=5)
            [claim] = await queue.claim(["spectre"], worker_id="holder", wait=5)
            await queue.nack(claim, "RuntimeError: gone for good", final=True)
        finally:
            await backend.close()

    run(fill(), 60)
    counts = {q["node_type"]: q for q in lines(deployment.ok("queues", "--json", "--node-types", "ghost,spectre"))}
    assert counts == {"ghost": {"node_type": "ghost", "queued": 2, "in_flight": 1, "dead": 0},
                      "spectre": {"node_type": "spectre", "queued": 0, "in_flight": 0, "dead": 1}}
    # Without --node-types: the live worker's types and those of dead letters.
    assert [q["node_type"] for q in lines(deployment.ok("queues", "--json"))] == ["draft", "polish", "spectre"]
    assert re.search(r"^ghost\s+2\s+1\s+0$", deployment.ok("queues", "--node-types", "ghost"), re.MULTILINE)


def test_list_pages_with_limit_and_cursor(deployment: Deployment) -> None:
    ids = [json.loads(deployment.ok("run", "opsapp:graph", "--input", json.dumps({"topic": f"t{i}"})))["workflow_id"]
           for i in range(2)]
    everything = [w["workflow_id"] for w in lines(deployment.ok("list", "--json"))]
    first = lines(deployment.ok("list", "--json", "--limit", "1"))
    rest = lines(deployment.ok("list", "--json", "--cursor", first[-1]["cursor"]))
    assert [w["workflow_id"] for w in first + rest] == everything
    assert set(ids) <= set(everything)
    assert "more: --cursor" in deployment.ok("list", "--limit", "1")


def test_submit_prints_the_id_and_resume_drives_it_to_the_end(deployment: Deployment) -> None:
    workflow_id = deployment.ok("submit", "opsapp:graph", "--input", '{"topic": "moons"}').strip()
    assert re.fullmatch(r"wf_[0-9a-f]+", workflow_id)
    assert json.loads(deployment.ok("status", workflow_id, "--json"))["status"] in ("pending", "running", "completed")
    result = json.loads(deployment.ok("resume", workflow_id, "--graph", "opsapp:graph"))
    assert result["status"] == "completed" and result["values"]["text"] == "draft about moons, polished"


def test_cancel_stops_a_workflow_once(deployment: Deployment) -> None:
    workflow_id = deployment.ok("submit", "opsapp:graph", "--workflow-id", f"wf_cancel{uuid.uuid4().hex[:6]}",
                                "--input", '{"topic": "x"}').strip()
    done = deployment.cli("cancel", workflow_id)
    if done.returncode == 1:  # the worker was quicker: the workflow had completed
        assert_one_line_error(done, 1, "already finished")
        return
    assert done.stdout.strip() == f"cancelled {workflow_id}"
    assert json.loads(deployment.ok("status", workflow_id, "--json"))["status"] == "cancelled"
    assert_one_line_error(deployment.cli("cancel", workflow_id), 1, workflow_id, "already finished (cancelled)")


def test_an_interrupt_is_shown_by_status_and_answered_by_resume_value(deployment: Deployment) -> None:
    run = deployment.cli("run", "opsapp:approval", "--input", '{"topic": "bridge"}', "--local-nodes")
    paused = json.loads(run.stdout)
    assert paused["status"] == "interrupted"
    workflow_id = paused["workflow_id"]
    assert f"resume {workflow_id} --value JSON --graph opsapp:approval" in run.stderr
    status = json.loads(deployment.ok("status", workflow_id, "--json"))
    (pause,) = status["interrupts"]
    assert pause["node"] == "ask" and pause["value"] == {"question": "approve bridge?"}
    assert "interrupt: " in deployment.ok("status", workflow_id)
    done = json.loads(deployment.ok("resume", workflow_id, "--value", '"yes"', "--graph", "opsapp:approval",
                                    "--local-nodes"))
    assert done["status"] == "completed" and done["values"]["answer"] == "yes"


def test_resume_after_an_interrupt_after_pause_and_update_state_continues_without_pausing_again(
        deployment: Deployment) -> None:
    """Paused after draft (polish also has a breakpoint before it, at the same point); the text is
    edited with update_state; 'resume' runs polish on the edit and completes: no second pause."""
    from distributed_agents import Orchestrator

    run = deployment.cli("run", "opsapp:checked", "--input", '{"topic": "tides"}', "--local-nodes")
    paused = json.loads(run.stdout)
    assert paused["status"] == "interrupted", run
    workflow_id = paused["workflow_id"]
    import importlib.util

    # The graph the CLI ran, from the deployment's folder (under a name of its own: nothing else imports it).
    spec = importlib.util.spec_from_file_location(f"opsapp_{uuid.uuid4().hex}", deployment.folder / "opsapp.py")
    assert spec is not None and spec.loader is not None
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    orchestrator = Orchestrator(backend=deployment.url, backend_options={"prefix": deployment.prefix})
    orchestrator.sync.update_state(workflow_id, {"text": "edited by hand"}, graph=app.checked)
    done = json.loads(deployment.ok("resume", workflow_id, "--graph", "opsapp:checked", "--local-nodes"))
    assert done["status"] == "completed", done
    assert done["values"]["text"] == "edited by hand, polished"


def test_a_failed_run_is_one_line_and_status_shows_the_failure(deployment: Deployment) -> None:
    done = deployment.cli("run", "opsapp:failing", "--local-nodes")
    assert done.returncode == 1 and done.stdout == "" and "Traceback" not in done.stderr
    *progress, line = done.stderr.strip().splitlines()
    assert progress[-1] == "workflow failed at step 0"  # progress lines, then the error in one line
    assert line.startswith("distributed-agents: error: node 'boom'") and "ValueError: the model said no" in line
    found = re.search(r"'distributed-agents status (wf_[0-9a-f]+)' shows the failure in full", line)
    assert found is not None, line
    workflow_id = found.group(1)
    status = json.loads(deployment.ok("status", workflow_id, "--json"))
    assert status["status"] == "failed" and status["error"]["node"] == "boom"
    assert "and explained at length" in status["error"]["message"]
    assert "error:     " in deployment.ok("status", workflow_id)


def test_run_in_memory_streams_json_lines_and_takes_the_url_from_the_environment(deployment: Deployment) -> None:
    done = deployment.cli("run", "opsapp:graph", "--input", '{"topic": "ice"}', "--stream", backend=False,
                          env={"DA_BACKEND_URL": "memory://"})
    assert done.returncode == 0, done.stderr
    chunks = lines(done.stdout)
    assert [c["mode"] for c in chunks] == ["updates", "updates", "result"]
    assert chunks[0]["chunk"] == {"draft": {"text": "draft about ice"}} and chunks[0]["namespace"] == []
    assert chunks[-1]["chunk"]["values"]["text"] == "draft about ice, polished"
    debug = deployment.cli("run", "opsapp:graph", "--input", '{"topic": "ice"}', "--stream", "--stream-mode",
                           "debug", "--backend-url", "memory://", backend=False)
    events = [c["chunk"]["event"] for c in lines(debug.stdout) if c["mode"] == "debug"]
    assert events[:3] == ["workflow.started", "node.started", "node.completed"]


def test_progress_on_a_terminal_is_one_redrawn_line(deployment: Deployment) -> None:
    import pty

    controller, terminal = pty.openpty()
    try:
        done = subprocess.run([sys.executable, "-m", "distributed_agents", "run", "opsapp:graph", "--input",
                               '{"topic": "tty"}', "--backend-url", "memory://"], stdout=subprocess.PIPE,
                              stderr=terminal, text=True, cwd=deployment.folder, env=deployment.env, timeout=60)
        os.close(terminal)
        terminal = -1
        shown = b""
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # the terminal closed: all read
                break
            if not chunk:
                break
            shown += chunk
    finally:
        if terminal != -1:
            os.close(terminal)
        os.close(controller)
    assert done.returncode == 0 and json.loads(done.stdout)["status"] == "completed"
    text = shown.decode()
    assert "\r\x1b[Kstep 1 | running: polish | nodes done: 1" in text
    assert text.rstrip().endswith("step 2 | completed | nodes done: 2")
    assert "started (local)" not in text  # no plain lines on a terminal


def test_conformance_runs_the_suite_and_refuses_an_unknown_scheme(deployment: Deployment) -> None:
    done = deployment.cli("conformance", "nosuchscheme://x", backend=False)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "nosuchscheme" in done.stderr


def test_dead_letters_backends_and_version(deployment: Deployment) -> None:
    letters = deployment.ok("dead-letters", "list", "--json")
    assert letters == deployment.ok("dead-letters", "list")  # JSON lines either way
    assert all(set(letter) >= {"task_id", "node_type", "attempts", "reason", "workflow_id"} for letter in lines(letters))
    backends = lines(deployment.ok("backends", "--json", backend=False))
    assert {"scheme": "redis", "name": "redis"}.items() <= next(b for b in backends if b["scheme"] == "redis").items()
    assert "redis://\tredis\t" in deployment.ok("backends", backend=False)
    assert deployment.ok("--version", backend=False).strip() == f"distributed-agents {__version__}"


@pytest.mark.parametrize(("argv", "status", "words"), [
    (["status", "wf_nosuchworkflow"], 1, ["wf_nosuchworkflow", "list"]),
    (["history", "wf_nosuchworkflow"], 1, ["wf_nosuchworkflow"]),
    (["cancel", "wf_nosuchworkflow"], 1, ["wf_nosuchworkflow"]),
    (["run", "opsapp:graph", "--input", "{topic"], 2, ["--input", "not JSON"]),
    (["run", "opsapp:nothing"], 2, ["opsapp:nothing", "no attribute"]),
    (["resume", "wf_x"], 2, ["--graph"]),
    (["resume", "wf_x", "--graph", "opsapp:graph", "--value", "nope"], 2, ["--value"]),
    (["list", "--status", "finished"], 2, ["finished"]),
    (["list", "--limit", "0"], 2, ["--limit"]),
    (["run", "opsapp:graph", "--stream-mode", "loud"], 2, ["stream mode"]),
])
def test_bad_input_and_unknown_ids_are_one_line(deployment: Deployment, argv: list[str], status: int,
                                                words: list[str]) -> None:
    assert_one_line_error(deployment.cli(*argv), status, *words)


def test_a_graph_module_that_fails_to_import_is_one_line(deployment: Deployment) -> None:
    (deployment.folder / "brokenapp.py").write_text("def broken(:\n    pass\n")
    (deployment.folder / "raisingapp.py").write_text("raise RuntimeError('settings file missing')\n")
    assert_one_line_error(deployment.cli("run", "brokenapp:graph"), 2, "brokenapp", "syntax error")
    assert_one_line_error(deployment.cli("submit", "raisingapp:graph"), 2, "RuntimeError: settings file missing")


def test_delete_frees_finished_and_malformed_workflows_and_refuses_unfinished_ones(deployment: Deployment) -> None:
    """The command the malformed-record errors point to: a finished workflow goes, an unfinished
    one only with --force, a record that cannot be read (a string where a hash belongs) always."""
    import redis

    finished = json.loads(deployment.ok("run", "opsapp:graph", "--input", '{"topic": "ice"}', "--local-nodes"))
    paused = json.loads(deployment.cli("run", "opsapp:approval", "--input", '{"topic": "dam"}',
                                       "--local-nodes").stdout)
    assert paused["status"] == "interrupted"
    malformed = f"wf_bad{uuid.uuid4().hex[:6]}"
    client = redis.Redis.from_url(deployment.url)
    try:
        client.set(f"{deployment.prefix}:wf:r:{malformed}", "not a record")
    finally:
        client.close()
    refused = deployment.cli("delete", paused["workflow_id"], "--yes")
    assert refused.returncode == 1 and "still interrupted" in refused.stderr and "--force" in refused.stderr
    assert_one_line_error(deployment.cli("delete", finished["workflow_id"]), 2, "confirmation", "--yes")
    assert deployment.ok("delete", finished["workflow_id"], malformed, "--yes").strip() == "deleted 2 workflow(s)"
    assert deployment.ok("delete", paused["workflow_id"], "--yes", "--force").strip() == "deleted 1 workflow(s)"
    for workflow_id in (finished["workflow_id"], malformed, paused["workflow_id"]):
        assert_one_line_error(deployment.cli("status", workflow_id), 1, workflow_id)
    gone = deployment.cli("delete", malformed, "--yes")
    assert gone.returncode == 1 and f"{malformed}: not found" in gone.stderr


def test_a_missing_or_unreachable_backend_is_one_line(deployment: Deployment) -> None:
    assert_one_line_error(deployment.cli("list", backend=False), 2, "--backend-url", "DA_BACKEND_URL")
    assert_one_line_error(deployment.cli("submit", "opsapp:graph", "--backend-url", "memory://", backend=False), 2,
                          "memory://", "run")
    unreachable = deployment.cli("status", "wf_x", "--backend-url", "redis://127.0.0.1:1/0", backend=False)
    assert unreachable.returncode == 1 and "Traceback" not in unreachable.stderr
    assert "127.0.0.1:1" in unreachable.stderr


def readme_commands() -> list[str]:
    """The commands in the README's table under "Operating a deployment" (first column, `distributed-agents X`)."""
    section = README.read_text().split("## Operating a deployment", 1)[1].split("\n## ", 1)[0]
    found = re.findall(r"^\| `distributed-agents ([a-z-]+(?: (?:list|show|requeue|purge))?)", section, re.MULTILINE)
    return found


def test_readme_lists_every_command_and_each_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    from distributed_agents.cli import _parser, main

    listed = readme_commands()
    parser = _parser()
    choices = next(a for a in parser._actions if a.dest == "command").choices  # type: ignore[union-attr]
    expected = {name for name in choices if name not in ("help",)}
    assert {c.split()[0] for c in listed} == expected
    for command in listed:  # in this process: a subprocess each would cost seconds, and argparse is the same
        with pytest.raises(SystemExit) as exit_:
            main([*command.split(), "--help"])
        out, _ = capsys.readouterr()
        assert exit_.value.code == 0
        assert out.startswith(f"usage: distributed-agents {command}")


def test_delete_purges_the_dead_letters_of_the_deleted_workflows_and_no_others(deployment: Deployment) -> None:
    from support.aio import run

    from distributed_agents import open_backend
    from distributed_agents.core.ports.task_queue import Task

    done = deployment.cli("run", "opsapp:failing", "--local-nodes")
    found = re.search(r"'distributed-agents status (wf_[0-9a-f]+)'", done.stderr)
    assert done.returncode == 1 and found is not None, done.stderr
    workflow_id = found.group(1)
    mine, other = f"{workflow_id}:0:0:boom", f"wf_other{uuid.uuid4().hex[:6]}:0:0:boom"

    async def dead_letters() -> None:  # a dead letter of the failed workflow and one of another
        backend = open_backend(deployment.url, prefix=deployment.prefix)
        await backend.connect()
        try:
            queue = backend.task_queue
            for task_id in (mine, other):
                await queue.enqueue(Task(task_id, task_id.split(":")[0], "boom", "spectre", {"step": 0}))
                [claim] = await queue.claim(["spectre"], worker_id="holder", wait=5)
                await queue.nack(claim, "ValueError: the model said no", final=True)
        finally:
            await backend.close()

    run(dead_letters(), 60)
    listed = {letter["task_id"] for letter in lines(deployment.ok("dead-letters", "list", "--json"))}
    assert {mine, other} <= listed
    deleted = deployment.ok("delete", workflow_id, "--yes")
    assert deleted.splitlines() == ["deleted 1 workflow(s)", "purged 1 dead letter(s) of the deleted workflows"]
    left = {letter["task_id"] for letter in lines(deployment.ok("dead-letters", "list", "--json"))}
    assert mine not in left and other in left
    deployment.ok("dead-letters", "purge", other, "--yes")  # leaves the module's deployment as it was
