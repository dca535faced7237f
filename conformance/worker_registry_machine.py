"""The WorkerRegistry state machine: register, heartbeat, deregister, wait and list vs ``RegistryModel``.

``heartbeat_ttl`` is the requirements' ``short_timeout``, so workers really expire while
the machine waits. Every operation is timed (monotonic clock, before and after), and a
worker's liveness during it is judged from its ``Window``: certainly live (it must be
listed, its heartbeat must succeed), certainly expired (it must be absent, its heartbeat
must fail) or uncertain within ``timing_slack`` (either answer is accepted; a heartbeat
that succeeds starts a new window, one that fails ends the worker in the model). After every step the full listing is compared with the model.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st
from hypothesis.stateful import invariant, precondition, rule

from distributed_agents.conformance.catalog import conformance_check
from distributed_agents.conformance.clauses import ContractViolation, expect
from distributed_agents.conformance.context import CheckContext, Window, monotonic
from distributed_agents.conformance.machine_base import BackendMachine, run_machine
from distributed_agents.conformance.models import ModelWorker, RegistryModel
from distributed_agents.core.ports.worker_registry import WorkerInfo

WORKERS = ("w1", "w2", "w3")
NODE_TYPES = ("alpha", "beta", "gamma")
# Each example waits at most this many heartbeat_ttl's in all (bounds the run time).
WAIT_PER_EXAMPLE = 3.0
node_type_sets = st.frozensets(st.sampled_from(NODE_TYPES), min_size=1, max_size=2)


class WorkerRegistryMachine(BackendMachine):
    """Backend and ``RegistryModel`` side by side, with real expiry after ``heartbeat_ttl``."""

    def __init__(self) -> None:
        super().__init__()
        self.registry = self.backend.worker_registry
        # A second connection on the same prefix heartbeats and lists too, where the engine shares.
        self.peer = self.open_peer().worker_registry
        self.model = RegistryModel()
        self.ttl = self.context.requirements.short_timeout
        self.slack = self.context.requirements.timing_slack

    def open_options(self) -> dict[str, Any]:
        return {**super().open_options(), "heartbeat_ttl": self.context.requirements.short_timeout}

    def _window(self, started: float, finished: float) -> Window:
        return Window.after(started, finished, self.ttl, self.slack)

    def _liveness(self, worker: ModelWorker, started: float, finished: float) -> str:
        """``pending`` (certainly live), ``due`` (certainly expired) or ``uncertain`` during an operation."""
        return str(worker.expires.state(started, finished - started))

    # -- rules ---------------------------------------------------------------------------

    @rule(worker_id=st.sampled_from(WORKERS), node_types=node_type_sets, capacity=st.integers(1, 4), via_peer=st.booleans())
    def register(self, worker_id: str, node_types: frozenset[str], capacity: int, via_peer: bool) -> None:
        info = WorkerInfo(worker_id, node_types, capacity=capacity, host=f"host-{capacity}", pid=100 + capacity)
        started = monotonic()
        self.call((self.peer if via_peer else self.registry).register(info))
        finished = monotonic()
        self.model.register(worker_id, ModelWorker(node_types, capacity, info.host, info.pid, self._window(started, finished)))

    @rule(worker_id=st.sampled_from(WORKERS), via_peer=st.booleans())
    def heartbeat(self, worker_id: str, via_peer: bool) -> None:
        started = monotonic()
        alive = self.call((self.peer if via_peer else self.registry).heartbeat(worker_id))
        finished = monotonic()
        worker = self.model.workers.get(worker_id)
        if worker is None:
            why = self.model.gone.get(worker_id)
            clause = {"deregistered": "worker_registry.deregister", "expired": "worker_registry.expiry"}.get(why or "", "worker_registry.heartbeat")
            expect(alive is False, clause, f"heartbeat({worker_id!r}) of a worker that is {why or 'never registered'} returned {alive!r}")
            return
        state = self._liveness(worker, started, finished)
        if state == "pending":
            expect(alive is True, "worker_registry.heartbeat",
                   f"heartbeat({worker_id!r}) returned {alive!r} {worker.expires.earliest - finished:.3f}s before its heartbeat_ttl could end")
        elif state == "due":
            expect(alive is False, "worker_registry.expiry",
                   f"heartbeat({worker_id!r}) returned {alive!r} {started - worker.expires.latest:.3f}s after its heartbeat_ttl ended")
        if alive:
            worker.expires, worker.beat = self._window(started, finished), "heartbeat"
        else:
            self.model.remove(worker_id, "expired")

    @rule(worker_id=st.sampled_from(WORKERS))
    def deregister(self, worker_id: str) -> None:
        self.call(self.registry.deregister(worker_id))
        self.model.remove(worker_id, "deregistered")

    @rule(node_type=st.sampled_from(NODE_TYPES), via_peer=st.booleans())
    def lookup(self, node_type: str, via_peer: bool) -> None:
        self._compare((self.peer if via_peer else self.registry), node_type)

    @precondition(lambda self: bool(self.model.workers) and self.may_wait(self.ttl / 3))
    @rule(how=st.sampled_from(["third", "over-half", "expire"]))
    def wait(self, how: str) -> None:
        """Let time pass: a third of the TTL; just over half of it (two such waits end a registration
        that a heartbeat between them must keep alive); or until every current heartbeat has
        certainly expired."""
        seconds = {"third": self.ttl / 3, "over-half": self.ttl / 2 + self.slack, "expire": self.ttl + 2 * self.slack}[how]
        self.charge(seconds)
        self.sleep_until(monotonic() + seconds)

    # -- comparison after every step -------------------------------------------------------

    @invariant()
    def listings_agree(self) -> None:
        for node_type in (None, *NODE_TYPES):
            self._compare(self.registry, node_type)

    def _compare(self, registry: Any, node_type: str | None) -> None:
        started = monotonic()
        listed: list[WorkerInfo] = self.call(registry.list_workers(node_type))
        finished = monotonic()
        what = "list_workers()" if node_type is None else f"list_workers({node_type!r})"
        ids = [w.worker_id for w in listed]
        expect(ids == sorted(set(ids)), "worker_registry.register", f"{what} returned {ids}, not unique ids sorted")
        for info in listed:
            worker = self.model.workers.get(info.worker_id)
            if worker is None:
                why = self.model.gone.get(info.worker_id)
                clause = {"deregistered": "worker_registry.deregister", "expired": "worker_registry.expiry"}.get(why or "", "worker_registry.register")
                raise ContractViolation(clause, f"{what} lists {info.worker_id!r}, which is {why or 'never registered'}")
            if node_type is not None:
                expect(node_type in info.node_types and node_type in worker.node_types, "worker_registry.lookup",
                       f"{what} lists {info.worker_id!r}, registered for {sorted(worker.node_types)}")
            got = (info.node_types, info.capacity, info.host, info.pid)
            want = (worker.node_types, worker.capacity, worker.host, worker.pid)
            expect(got == want, "worker_registry.register", f"{what} shows {info.worker_id!r} as {got}, registered as {want}")
            if self._liveness(worker, started, finished) == "due":
                raise ContractViolation("worker_registry.expiry", f"{what} lists {info.worker_id!r} "
                                        f"{started - worker.expires.latest:.3f}s after its heartbeat_ttl={self.ttl}s ended")
        for worker_id, worker in list(self.model.serving(node_type).items()):
            state = self._liveness(worker, started, finished)
            if state == "pending" and worker_id not in ids:
                clause = "worker_registry.lookup" if node_type is not None else f"worker_registry.{worker.beat}"
                raise ContractViolation(clause, f"{what} lacks {worker_id!r} (last {worker.beat} "
                                        f"{self.ttl - (worker.expires.earliest - finished) - self.slack:.3f}s ago, ttl {self.ttl}s): {ids}")
            if state == "due":
                self.model.remove(worker_id, "expired")


@conformance_check("worker_registry", (
    "worker_registry.register", "worker_registry.heartbeat", "worker_registry.expiry", "worker_registry.deregister",
    "worker_registry.lookup",
), timeout=300.0)
def check_worker_registry_state_machine(context: CheckContext) -> None:
    """Random registers, heartbeats, deregisters, lookups and waits agree with the model after every step."""
    run_machine(WorkerRegistryMachine, context, examples=0.25, steps=0.5, wait=WAIT_PER_EXAMPLE * context.requirements.short_timeout)
