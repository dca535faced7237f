"""Chaos suite: workflows survive SIGKILLed workers, a SIGKILLed orchestrator and backend restarts.

For each backend (Redis with ``appendonly yes``; NATS JetStream with its file store) a
server of its own is started, then real processes: several workers (the
``distributed-agents worker`` CLI serving ``chaos_app``) and two orchestrator processes
(``orchestrate.py``, each a ``DistributedOrchestrator`` with recovery on) that submit W
workflows mixing chains, fan-outs with reducers and a join, the writer/reviewer
revise loop, Send maps, a map whose tasks pause in ``interrupt()``, a subgraph node and
a node whose failure its ``on_error`` handler takes (see ``chaos_app``). Meanwhile a schedule drawn from a seeded RNG

* SIGKILLs workers (a replacement is started at once; until one kill landed while
  workers held Send tasks of a map, each waits up to 2 s for that),
* SIGKILLs one orchestrator (a replacement is started that, like a retrying client,
  waits for that orchestrator's workflows; the surviving orchestrator or the
  replacement takes each over once its lease expires). The kill waits until a
  workflow of the victim is paused in ``interrupt()`` (mid-map: the other tasks of its
  Send step are pending writes), and picks a victim that has one; only after the last
  orchestrator kill does a separate process (``answer.py``) answer the interrupts, by
  id, and drive those workflows on,
* restarts the backend server (stop, stay down for a few seconds, start on the same port
  and data directory).

Proven at the end, per backend:

* none lost, none stuck: every workflow exists and reached COMPLETED, or FAILED with a
  recorded reason, within a generous deadline (the subgraphs' child workflows too);
* every orchestrator kill hit a workflow of the victim's while it was interrupted, and
  each interrupted workflow was answered from the answering process;
* results are right: every completed workflow's final state equals the state of the
  same graph and input run in-process without faults;
* no step was committed twice: the checkpoint history of each workflow (and child
  workflow) has exactly one entry per step, steps 0..N contiguous, N being the record's step;
* no side effect happened twice: every node applies one through its idempotency key
  (``chaos_app._apply_effect``), and each (workflow, step, node, ``Send`` item) has at
  most one effect, i.e. every re-delivery of a task, a takeover's included, carried the
  same key;
* nothing is left behind: for every node type nothing is queued or leased, and nothing
  is dead-lettered (a failure an ``on_error`` handler took included);
* a caller of ``execute`` in a surviving orchestrator got the workflow's result, not an
  error (the outage and the takeover are invisible to it).

The seed is printed (``chaos seed: N``); ``DA_CHAOS_SEED=N`` replays the same schedule.
``DA_CHAOS_WORKFLOWS=N`` runs N workflows instead of the profile's count (the same
faults). ``DA_CHAOS_LOGS=DIR`` keeps the process logs in ``DIR/<backend>-<seed>`` (pytest removes
old temporary directories once later sessions start, which a long soak can outlive).
``DA_TEST_PROFILE=thorough`` (``./scripts/test --thorough``) runs more workflows and
faults. ``DA_TEST_PROFILE=soak`` is the soak: 1,000 workflows per backend, 50 worker
SIGKILLs, 5 orchestrator SIGKILLs and 3 server restarts over about 5 minutes of
submissions; expect 10-25 minutes per backend on a small machine (never in the default
run). Run alone with ``pytest -m chaos -s``: each backend prints a summary line and a table.

The soak also runs on a NATS cluster (``nats-cluster``, soak profile only: three routed
``nats-server -js`` of ``support.nats_cluster``, streams and buckets at ``?replicas=3``).
There each "server restart" is a cluster node failure: a randomly chosen server is
SIGKILLed (no clean shutdown), stays down for the outage, and is started again on its
ports and store directory; clients reconnect to the survivors meanwhile. The invariants
are the same.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import pathlib
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from chaos.chaos_app import NODE_TYPES, answers_for, build_graphs, read_effects, registry, workflow_spec
from support.aio import run
from support.nats_cluster import NatsCluster
from support.nats_server import NatsServer, require_nats_server
from support.redis_server import RedisServer

from distributed_agents import Command, Orchestrator
from distributed_agents.core.engine import node_task_id
from distributed_agents.core.errors import BackendUnavailableError
from distributed_agents.core.ports.state_store import WorkflowStatus
from distributed_agents.plugins import open_backend

HERE = pathlib.Path(__file__).resolve().parent
THOROUGH = os.environ.get("DA_TEST_PROFILE") == "thorough"
SOAK = os.environ.get("DA_TEST_PROFILE") == "soak"


@dataclass(frozen=True)
class Profile:
    """How much work and how many faults one backend's run gets."""

    workflows: int
    workers: int
    worker_kills: int
    orchestrator_kills: int
    backend_restarts: int
    window: float  # faults happen in [1, window] seconds after the start
    stagger: float  # seconds between one orchestrator's submissions (they span about the window)
    deadline: float  # how long all workflows may take to end after the last fault
    outage: tuple[float, float]  # a restarted backend stays down this long (uniform, seconds)


PROFILE = (
    Profile(workflows=1000, workers=6, worker_kills=50, orchestrator_kills=5, backend_restarts=3,
            window=300.0, stagger=0.6, deadline=1200.0, outage=(1.0, 4.0))
    if SOAK else
    Profile(workflows=36, workers=4, worker_kills=10, orchestrator_kills=2, backend_restarts=3,
            window=30.0, stagger=1.4, deadline=240.0, outage=(0.5, 8.0))
    if THOROUGH else
    Profile(workflows=12, workers=3, worker_kills=3, orchestrator_kills=1, backend_restarts=2,
            window=8.0, stagger=1.0, deadline=90.0, outage=(1.0, 4.0))
)
if os.environ.get("DA_CHAOS_WORKFLOWS"):  # fewer (or more) workflows, the same faults: for a loaded machine
    PROFILE = dataclasses.replace(PROFILE, workflows=int(os.environ["DA_CHAOS_WORKFLOWS"]))
NODE_DELAY = "0.1" if SOAK else "0.3"
VISIBILITY = 2.0
LEASE_TTL = 3.0
# The cluster variant is soak-only: three servers and their replication double a run's cost.
BACKENDS = ["redis", "nats", "nats-cluster"] if SOAK else ["redis", "nats"]

pytestmark = [pytest.mark.chaos, pytest.mark.slow, pytest.mark.timeout(5400 if SOAK else 900 if THOROUGH else 240)]
# Three servers replicating every write do the same work about twice as slowly on one small machine.
CLUSTER_DEADLINE = 2.0


class Server:
    """The backend of one run: a Redis with AOF, a NATS with its file store, or a 3-server NATS cluster."""

    def __init__(self, kind: str, rng: random.Random | None = None) -> None:
        self.kind = kind
        self.rng = rng or random.Random(0)
        self.cluster: NatsCluster | None = None
        self.node_failures: list[int] = []  # which cluster server each restart SIGKILLed
        self.redis: RedisServer | None = None
        self.nats: NatsServer | None = None
        if kind == "redis":
            self.redis = RedisServer(appendonly=True)
        else:
            binary = require_nats_server()
            if kind == "nats-cluster":
                self.cluster = NatsCluster(binary)
            else:
                self.nats = NatsServer(binary)

    @property
    def url(self) -> str:
        if self.cluster is not None:
            return self.cluster.url + "?replicas=3"
        return self.redis.url if self.redis is not None else self.nats.url  # type: ignore[union-attr]

    def start(self) -> None:
        (self.cluster or self.redis or self.nats).start()  # type: ignore[union-attr]

    def restart(self, outage: float) -> None:
        """Stop (SIGTERM), stay down ``outage`` seconds, start again on the same port and data directory.

        On a cluster: SIGKILL one server (the others keep serving), and start it again after ``outage``.
        """
        if self.cluster is not None:
            index = self.rng.randrange(len(self.cluster.servers))
            self.node_failures.append(index)
            self.cluster.kill(index)
            time.sleep(outage)
            self.cluster.restart(index)
            self.cluster.wait_ready(timeout=180.0, servers=[index])
            return
        launcher = self.redis or self.nats
        assert launcher is not None
        launcher.stop()
        time.sleep(outage)
        # Generous: on a loaded machine a soak's append-only file takes a while to load.
        launcher.start(timeout=180.0)

    def cleanup(self) -> None:
        (self.cluster or self.redis or self.nats).cleanup()  # type: ignore[union-attr]


@dataclass
class Processes:
    """Every worker and orchestrator process of one run, with its log file."""

    url: str
    prefix: str
    logs: pathlib.Path
    effects: pathlib.Path
    workers: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    orchestrators: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    assignments: dict[str, list[int]] = field(default_factory=dict)
    answerers: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    dead: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        return {**os.environ, "PYTHONPATH": str(HERE), "DA_CHAOS_NODE_DELAY": NODE_DELAY,
                "DA_CHAOS_EFFECTS": str(self.effects)}

    def start_worker(self, name: str) -> None:
        with open(self.logs / f"{name}.log", "wb") as log:
            self.workers[name] = subprocess.Popen(
                [sys.executable, "-m", "distributed_agents", "worker", "--app", "chaos_app:registry",
                 "--backend-url", self.url, "--prefix", self.prefix, "--worker-id", name, "--capacity", "2",
                 "--visibility-timeout", str(VISIBILITY), "--heartbeat-interval", "0.5",
                 "--shutdown-grace", "5"],
                cwd=HERE, env=self.env(), stdout=log, stderr=subprocess.STDOUT,
            )

    def start_orchestrator(self, name: str, workflows: list[int], *, resubmit: bool = False) -> None:
        self.assignments[name] = workflows
        with open(self.logs / f"{name}.log", "wb") as log:
            self.orchestrators[name] = subprocess.Popen(
                [sys.executable, str(HERE / "orchestrate.py"), "--backend-url", self.url, "--prefix", self.prefix,
                 "--orchestrator-id", name, "--workflows", ",".join(map(str, workflows)),
                 "--lease-ttl", str(LEASE_TTL), "--visibility-timeout", str(VISIBILITY),
                 "--stagger", str(PROFILE.stagger)] + (["--resubmit"] if resubmit else []),
                cwd=HERE, env=self.env(), stdout=log, stderr=subprocess.STDOUT,
            )

    def start_answerer(self, name: str, workflows: list[int]) -> None:
        """Start the answering process; it answers once ``answer_now`` was called."""
        with open(self.logs / f"{name}.log", "wb") as log:
            self.answerers[name] = subprocess.Popen(
                [sys.executable, str(HERE / "answer.py"), "--backend-url", self.url, "--prefix", self.prefix,
                 "--orchestrator-id", name, "--workflows", ",".join(map(str, workflows)),
                 "--go-file", str(self.logs / "answer-now"), "--lease-ttl", str(LEASE_TTL)],
                cwd=HERE, env=self.env(), stdout=log, stderr=subprocess.STDOUT,
            )

    def answer_now(self) -> None:
        (self.logs / "answer-now").touch()

    def answered(self) -> Counter[str]:
        """How many times the answering processes resumed each workflow with answers."""
        found: Counter[str] = Counter()
        for name in self.answerers:
            for line in (self.logs / f"{name}.log").read_text(errors="replace").splitlines():
                if line.startswith("ANSWERING "):
                    found[line.split()[1]] += 1
        return found

    def kill(self, group: dict[str, subprocess.Popen[bytes]], name: str) -> None:
        process = group.pop(name)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        self.dead.append(process)

    def stop_all(self) -> dict[str, int]:
        """SIGTERM every live process (they drain / close), then their exit codes by name."""
        live = {**self.workers, **self.orchestrators, **self.answerers}
        for process in live.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        codes = {}
        for name, process in live.items():
            try:
                codes[name] = process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                codes[name] = process.wait(timeout=10)
        return codes

    def kill_all(self) -> None:
        for process in [*self.workers.values(), *self.orchestrators.values(), *self.answerers.values()]:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)

    def all_reported(self) -> bool:
        """Whether every live orchestrator (and answerer) has finished waiting for its workflows."""
        return all("\nDONE\n" in (self.logs / f"{name}.log").read_text(errors="replace")
                   for name in [*self.orchestrators, *self.answerers])

    def results(self) -> dict[str, dict[str, Any]]:
        """``RESULT`` lines printed by orchestrators that were not killed, by workflow id."""
        found: dict[str, dict[str, Any]] = {}
        for name in self.orchestrators:
            for line in (self.logs / f"{name}.log").read_text(errors="replace").splitlines():
                if line.startswith("RESULT "):
                    outcome = json.loads(line[len("RESULT "):])
                    found[outcome["workflow_id"]] = {**outcome, "orchestrator": name}
        return found


def schedule(rng: random.Random) -> list[tuple[float, str]]:
    """Fault times (seconds after start) and kinds; backend restarts at least 2s apart.

    Faults fall due one after the other: one scheduled during an outage happens after it.
    """
    faults: list[tuple[float, str]] = []
    kinds = (["kill_worker"] * PROFILE.worker_kills + ["kill_orchestrator"] * PROFILE.orchestrator_kills
             + ["restart_backend"] * PROFILE.backend_restarts)
    for kind in kinds:
        for _ in range(100):
            at = rng.uniform(1.0, PROFILE.window)
            if kind != "restart_backend" or all(abs(at - t) >= 2.0 for t, k in faults if k == kind):
                break
        faults.append((round(at, 2), kind))
    return sorted(faults)


def expected_states() -> dict[int, dict[str, Any]]:
    """Final state of every workflow run in-process on ``memory://`` without faults."""
    graphs = build_graphs()

    async def compute() -> dict[int, dict[str, Any]]:
        orchestrator = Orchestrator(registry=registry)
        try:
            out = {}
            for index in range(PROFILE.workflows):
                name, state = workflow_spec(index)
                final = await orchestrator.execute(graphs[name], state, workflow_id=f"ref-{index}")
                while "__interrupt__" in final:
                    answers = answers_for(final["__interrupt__"])
                    final = await orchestrator.resume(f"ref-{index}", graphs[name], Command(resume=answers))
                out[index] = dict(final)
            return out
        finally:
            await orchestrator.close()

    previous = os.environ.get("DA_CHAOS_NODE_DELAY")
    os.environ["DA_CHAOS_NODE_DELAY"] = "0"
    try:
        return run(compute(), timeout=60 + PROFILE.workflows * 0.5)
    finally:
        if previous is None:
            os.environ.pop("DA_CHAOS_NODE_DELAY", None)
        else:
            os.environ["DA_CHAOS_NODE_DELAY"] = previous


async def snapshot(url: str, prefix: str, workflow_ids: list[str]) -> dict[str, Any]:
    """Records, checkpoint steps and queue stats as the backend has them now."""
    backend = open_backend(url, prefix=prefix)
    await backend.connect()
    try:
        records = {wf: await backend.state_store.get(wf) for wf in workflow_ids}
        steps = {wf: [cp.step for cp in await backend.state_store.list_checkpoints(wf)] for wf in workflow_ids}
        stats = {t: await backend.task_queue.stats(t) for t in NODE_TYPES}
        everything = await backend.state_store.list_workflows()
        # Child workflows of subgraph nodes (``<parent>:sub:<step>:<task>``): checked like the rest.
        children = sorted(r.workflow_id for r in everything
                          if r.workflow_id.startswith(f"{prefix}-") and ":sub:" in r.workflow_id)
        for child in children:
            records[child] = await backend.state_store.get(child)
            steps[child] = [cp.step for cp in await backend.state_store.list_checkpoints(child)]
        pending: dict[str, Any] = {}  # for a stuck workflow: its pending tasks and their results
        for wf, record in records.items():
            if record is not None and record.status not in WorkflowStatus.TERMINAL:
                for node in record.frontier.get("next", ()):
                    task_id = node_task_id(record, node)  # run, incarnation and step, as the engine names it
                    pending[task_id] = await backend.task_queue.get_result(task_id)
        return {"records": records, "steps": steps, "stats": stats, "all_ids": [r.workflow_id for r in everything],
                "pending": pending, "children": children}
    finally:
        await backend.close()


async def statuses(url: str, prefix: str, workflow_ids: list[str]) -> dict[str, tuple[str, bool]]:
    """Each stored workflow's status and whether its next step runs Send tasks (it is mid-map)."""
    backend = open_backend(url, prefix=prefix)
    await backend.connect()
    try:
        found = {}
        for wf in workflow_ids:
            record = await backend.state_store.get(wf)
            if record is not None:
                found[wf] = (str(record.status), bool(record.frontier.get("sends")))
        return found
    finally:
        await backend.close()


async def mapped_in_flight(url: str, prefix: str) -> int:
    """How many Send tasks of a map (``mapped``, ``review``) workers hold right now."""
    backend = open_backend(url, prefix=prefix)
    await backend.connect()
    try:
        return sum([(await backend.task_queue.stats(node_type)).in_flight for node_type in ("mapped", "review")])
    finally:
        await backend.close()


def wait_mid_map(procs: Processes, patience: float) -> bool:
    """Wait (at most ``patience`` s) until workers hold Send tasks of a map; whether they do."""
    give_up = time.monotonic() + patience
    while time.monotonic() < give_up:
        try:
            if run(mapped_in_flight(procs.url, procs.prefix), timeout=10):
                return True
        except Exception:  # the server may be down right now
            pass
        time.sleep(0.1)
    return False


def interrupted_owners(procs: Processes, workflow_ids: dict[int, str], patience: float) -> tuple[list[str], int]:
    """Live orchestrators owning a workflow paused in ``interrupt()``, once there is one (or after ``patience`` s).

    Also how many workflows are mid-map (RUNNING or paused with Send tasks pending) at that moment.
    """
    give_up = time.monotonic() + patience
    while True:
        try:
            now = run(statuses(procs.url, procs.prefix, list(workflow_ids.values())), timeout=15)
        except Exception:  # the server may be down right now
            now = {}
        paused = {wf for wf, (status, _) in now.items() if status == WorkflowStatus.INTERRUPTED}
        owners = [name for name in sorted(procs.orchestrators)
                  if any(workflow_ids[i] in paused for i in procs.assignments[name])]
        mid_map = sum(1 for status, sends in now.values() if sends and status not in WorkflowStatus.TERMINAL)
        if owners or time.monotonic() > give_up:
            return owners, mid_map
        time.sleep(0.2)


def all_ended(url: str, prefix: str, workflow_ids: list[str]) -> bool:
    try:
        now = run(statuses(url, prefix, workflow_ids), timeout=60)
    except Exception:  # the server may be down right now
        return False
    return all(wf in now and now[wf][0] in WorkflowStatus.TERMINAL for wf in workflow_ids)


def duplicated_effects(effects: list[dict[str, Any]]) -> dict[tuple[str, int, str, str], list[str]]:
    """(workflow, step, node, Send item) that took more than one side effect, with their keys."""
    keys: dict[tuple[str, int, str, str], list[str]] = {}
    for effect in effects:
        keys.setdefault((effect["workflow_id"], effect["step"], effect["node"], effect["item"]), []).append(effect["key"])
    return {where: sorted(found) for where, found in keys.items() if len(found) > 1}


def summary_table(kind: str, rows: dict[str, Any]) -> str:
    """The run's numbers as a two-column table (printed with ``-s``)."""
    width = max(map(len, rows))
    lines = [f"chaos summary [{kind}]", "-" * (width + 14)]
    lines += [f"{name:<{width}}  {value}" for name, value in rows.items()]
    return "\n".join(lines)


@pytest.fixture
def chaos_seed() -> Iterator[int]:
    seed = int(os.environ.get("DA_CHAOS_SEED") or random.SystemRandom().randrange(2**32))
    print(f"\nchaos seed: {seed} (replay with DA_CHAOS_SEED={seed})", flush=True)
    yield seed


@pytest.mark.parametrize("kind", BACKENDS)
def test_workflows_survive_killed_workers_killed_orchestrator_and_backend_restarts(
    kind: str, chaos_seed: int, tmp_path: pathlib.Path
) -> None:
    rng = random.Random(f"{chaos_seed}-{kind}")
    faults = schedule(rng)
    expected = expected_states()
    prefix = f"chaos{uuid.uuid4().hex[:6]}"
    workflow_ids = {index: f"{prefix}-{index}" for index in range(PROFILE.workflows)}
    ids = list(workflow_ids.values())
    server = Server(kind, random.Random(f"{chaos_seed}-{kind}-nodes"))
    server.start()
    if os.environ.get("DA_CHAOS_LOGS"):  # a directory that outlives pytest's own clean-up of old tmp paths
        tmp_path = pathlib.Path(os.environ["DA_CHAOS_LOGS"]) / f"{kind}-{chaos_seed}"
        tmp_path.mkdir(parents=True, exist_ok=True)
    effects_dir = tmp_path / "effects"
    effects_dir.mkdir(exist_ok=True)  # a replayed seed reuses the directory; its workflow ids differ
    procs = Processes(server.url, prefix, tmp_path, effects_dir)
    injected: Counter[str] = Counter()
    began = time.monotonic()
    try:
        for n in range(PROFILE.workers):
            procs.start_worker(f"worker{n}")
        indexes = list(range(PROFILE.workflows))
        procs.start_orchestrator("orchA", indexes[0::2])
        procs.start_orchestrator("orchB", indexes[1::2])
        spawned = PROFILE.workers
        killed_orchestrators = 0
        worker_kill_mid_map = False
        paused_kills: list[tuple[str, int]] = []  # (victim, workflows mid-map) of kills with a paused workflow
        asking = [i for i in indexes if workflow_spec(i)[0] == "chaos_approval"]
        procs.start_answerer("answerer", asking)
        if PROFILE.orchestrator_kills == 0:
            procs.answer_now()
        for at, fault in faults:
            time.sleep(max(0.0, began + at - time.monotonic()))
            if fault == "kill_worker":
                if not worker_kill_mid_map:  # until one did, a kill waits a little for workers to hold Send tasks
                    worker_kill_mid_map = wait_mid_map(procs, patience=2.0)
                procs.kill(procs.workers, rng.choice(sorted(procs.workers)))
                procs.start_worker(f"worker{spawned}")
                spawned += 1
            elif fault == "kill_orchestrator":
                # Kill one that has a workflow paused in interrupt() (waiting for one if need be).
                owners, mid_map = interrupted_owners(procs, workflow_ids, patience=30.0)
                victim = rng.choice(owners or sorted(procs.orchestrators))
                procs.kill(procs.orchestrators, victim)
                if owners:
                    paused_kills.append((victim, mid_map))
                killed_orchestrators += 1
                procs.start_orchestrator(f"{victim[:5]}{killed_orchestrators}", procs.assignments[victim],
                                         resubmit=True)
                if killed_orchestrators == PROFILE.orchestrator_kills:
                    # After the restart, the interrupts are answered from another process.
                    procs.answer_now()
            else:
                server.restart(outage=rng.uniform(*PROFILE.outage))
            injected[fault] += 1
        faults_done = time.monotonic() - began

        deadline = time.monotonic() + PROFILE.deadline * (CLUSTER_DEADLINE if server.cluster is not None else 1.0)
        while time.monotonic() < deadline and not (
            procs.all_reported() and all_ended(server.url, prefix, ids)
        ):
            time.sleep(0.5)
        # Whatever the ending, give queues a moment to settle (a late ack), then look.
        settle = time.monotonic() + 15
        while True:
            # One read per record and checkpoint list: a soak's 1,000 on a loaded cluster take minutes.
            try:
                snap = run(snapshot(server.url, prefix, ids), timeout=30 + len(ids) * 0.5)
            except BackendUnavailableError:
                # A server restarted (or a cluster node killed) shortly before: its streams' leaders
                # may still be elected. Read again until the settle time is out.
                if time.monotonic() > settle + 60:
                    raise
                time.sleep(1.0)
                continue
            busy = {t: s for t, s in snap["stats"].items() if s.queued or s.in_flight}
            if not busy or time.monotonic() > settle:
                break
            time.sleep(0.5)
        elapsed = time.monotonic() - began
        results = procs.results()
        answered = procs.answered()
        exit_codes = procs.stop_all()
    except BaseException:
        procs.kill_all()
        raise
    finally:
        server.cleanup()

    records = snap["records"]
    children = snap["children"]
    lost = [wf for wf in ids if records[wf] is None]
    stuck_children = [wf for wf in children if records[wf] is None or records[wf].status != WorkflowStatus.COMPLETED]
    stuck = [wf for wf in ids if records[wf] is not None and records[wf].status not in WorkflowStatus.TERMINAL]
    failed = {wf: records[wf].error for wf in ids if records[wf] is not None and records[wf].status == WorkflowStatus.FAILED}
    completed = [wf for wf in ids if records[wf] is not None and records[wf].status == WorkflowStatus.COMPLETED]
    wrong = {wf: (records[wf].state, expected[i]) for i, wf in workflow_ids.items()
             if wf in completed and dict(records[wf].state) != expected[i]}
    duplicated = {wf: snap["steps"][wf] for wf in [*ids, *children] if records[wf] is not None
                  and sorted(snap["steps"][wf]) != list(range(records[wf].step + 1))}
    caller_errors = {wf: r["error"] for wf, r in results.items() if "error" in r and wf not in failed}
    caller_wrong = [wf for i, wf in workflow_ids.items() if "state" in results.get(wf, {})
                    and results[wf]["state"] != expected[i]]
    summary = (f"chaos[{kind}] seed={chaos_seed} workflows={len(ids)} completed={len(completed)} "
               f"failed={len(failed)} lost={len(lost)} stuck={len(stuck)} duplicated={len(duplicated)} "
               f"wrong={len(wrong)} faults={dict(sorted(injected.items()))} "
               f"faults_done_at={faults_done:.1f}s elapsed={elapsed:.1f}s "
               f"caller_results={len(results)} children={len(children)} "
               f"kills_while_paused={len(paused_kills)} mid_map_at_kills={[m for _, m in paused_kills]} "
               f"answered={sum(answered.values())} worker_kill_mid_map={worker_kill_mid_map}")
    effects = read_effects(str(effects_dir))
    twice = duplicated_effects(effects)
    print(summary, flush=True)
    print(summary_table(kind, {
        "seed": chaos_seed, "workflows": len(ids), "child workflows": len(children), "completed": len(completed),
        "failed": len(failed), "worker SIGKILLs": injected["kill_worker"],
        "orchestrator SIGKILLs": injected["kill_orchestrator"],
        **({"cluster node SIGKILLs (server)": " ".join(f"n{i}" for i in server.node_failures)}
           if server.cluster is not None else {"server restarts": injected["restart_backend"]}),
        "lost": len(lost), "stuck": len(stuck) + len(stuck_children), "duplicated steps": len(duplicated),
        "duplicated effects": len(twice), "side effects": len(effects), "wrong": len(wrong),
        "faults done at": f"{faults_done:.0f} s", "duration": f"{elapsed:.0f} s", "logs": str(tmp_path),
    }), flush=True)
    report = os.environ.get("DA_CHAOS_REPORT")
    if report:
        with open(report, "a") as out:
            out.write(summary + "\n")
    logs = f"(seed {chaos_seed}; process logs in {tmp_path})"

    assert injected == Counter(kind for _, kind in faults), logs
    assert not lost, f"workflows never recorded: {lost} {logs}"
    assert len(paused_kills) == PROFILE.orchestrator_kills, (
        f"an orchestrator kill found no workflow of its victim paused in interrupt(): {paused_kills} {logs}")
    unanswered = [workflow_ids[i] for i in asking if answered[workflow_ids[i]] == 0]
    assert not unanswered, f"interrupted workflows never answered by the answering process: {unanswered} {logs}"
    assert len(children) == sum(1 for i in indexes if workflow_spec(i)[0] == "chaos_nested"), (
        f"one child workflow per subgraph node run expected, found {children} {logs}")
    assert not stuck_children, f"subgraph child workflows not completed: {stuck_children} {logs}"
    assert not stuck, (f"workflows not ended after {PROFILE.deadline}s: {stuck}; pending tasks {snap['pending']}; "
                       f"queues {snap['stats']} {logs}")
    assert all(error and error.get("summary") for error in failed.values()), f"failures without a reason {failed}"
    assert not wrong, f"completed workflows whose state differs from a fault-free run: {wrong} {logs}"
    assert not duplicated, f"checkpoint histories not one entry per step: {duplicated} {logs}"
    assert not twice, f"side effects applied twice for one step (different idempotency keys): {twice} {logs}"
    assert effects, f"no side effect recorded at all {logs}"
    assert set(ids) <= set(snap["all_ids"]), logs
    busy = {t: (s.queued, s.in_flight) for t, s in snap["stats"].items() if s.queued or s.in_flight}
    assert not busy, f"tasks left queued or leased (queued, in flight): {busy} {logs}"
    dead = {t: s.dead for t, s in snap["stats"].items() if s.dead}
    assert not dead, f"tasks dead-lettered: {dead} {logs}"
    assert not caller_errors, f"execute() in a surviving orchestrator raised: {caller_errors} {logs}"
    assert not caller_wrong, f"execute() returned a state that differs from a fault-free run {logs}"
    # Every orchestrator that was not killed reported each of its workflows.
    survivors = {wf for name in procs.orchestrators for wf in (workflow_ids[i] for i in procs.assignments[name])}
    assert survivors <= set(results), f"no RESULT for {sorted(survivors - set(results))} {logs}"
    assert all(code == 0 for code in exit_codes.values()), f"exit codes {exit_codes} {logs}"
    assert not failed, f"workflows failed: {failed} {logs}"
