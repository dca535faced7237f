"""The StateStore state machine: random saves, stale saves, checkpoints and leases vs ``StoreModel``.

Lease TTLs are long, so the only way a lease changes hands is a release; fencing is
exercised by saving with tokens of superseded leases.
"""

from __future__ import annotations

from hypothesis import strategies as st
from hypothesis.stateful import invariant, precondition, rule

from distributed_agents.conformance.catalog import conformance_check
from distributed_agents.conformance.clauses import ContractViolation, expect
from distributed_agents.conformance.context import CheckContext
from distributed_agents.conformance.machine_base import BackendMachine, run_machine
from distributed_agents.conformance.models import ModelLease, ModelWorkflow, StoreModel
from distributed_agents.conformance.state_store_checks import comparable_fields
from distributed_agents.core.errors import FencingTokenRejectedError, VersionConflictError, WorkflowExistsError
from distributed_agents.core.ports.state_store import Checkpoint, WorkflowLease, WorkflowRecord, WorkflowStatus

WORKFLOWS = ("w1", "w2", "w3")
OWNERS = ("o1", "o2")
STATUSES = sorted(WorkflowStatus.ALL)


def _full_record(workflow_id: str, *, status: str, step: int, created_at: float, value: int) -> WorkflowRecord:
    """A record with every field set, varied by ``value`` (fields emptied and refilled across saves)."""
    return WorkflowRecord(
        workflow_id, f"graph-{value % 2}", status, {"v": value, "text": "ä" * value, "list": list(range(value))}, step=step,
        frontier={"run": [f"n{value}"], "joins": {"j": [value]}} if value % 2 else {},
        error={"message": f"failed ✗ {value}", "node": "n"} if status == WorkflowStatus.FAILED else None,
        graph={"name": f"graph-{value % 2}", "hash": f"h{value}"} if value % 3 else None,
        metadata={"owner": "zoë", "n": value} if value % 4 else {}, created_at=created_at, updated_at=0.0,
    )


class StateStoreMachine(BackendMachine):
    """Backend and ``StoreModel`` side by side."""

    def __init__(self) -> None:
        super().__init__()
        self.store = self.backend.state_store
        self.model = StoreModel()
        self.leases: list[WorkflowLease] = []  # every lease ever granted
        self.clock = 0.0
        self.saved: dict[str, WorkflowRecord] = {}  # the last record saved per workflow
        self._saved_since_check = True
        self.bodies: dict[tuple[str, int], dict[str, object]] = {}  # checkpoint contents

    @rule(workflow_id=st.sampled_from(WORKFLOWS), version_delta=st.sampled_from([0, 0, 0, -1, 1, -5]),
          status=st.sampled_from(STATUSES), with_checkpoint=st.booleans(), value=st.integers(0, 9),
          use_token=st.booleans(), lease_pick=st.integers(0, 1000))
    def save(self, workflow_id: str, version_delta: int, status: str, with_checkpoint: bool, value: int,
             use_token: bool, lease_pick: int) -> None:
        stored = self.model.workflows.get(workflow_id)
        current = 0 if stored is None else stored.version
        expected_version = max(0, current + version_delta)
        own = [lease for lease in self.leases if lease.workflow_id == workflow_id]
        token = own[lease_pick % len(own)].fencing_token if use_token and own else None
        step = 0 if stored is None else len(stored.checkpoints)
        self.clock += 1.0
        created_at = self.clock if stored is None else stored.created_at
        rec = _full_record(workflow_id, status=status, step=step, created_at=created_at, value=value)
        checkpoint = Checkpoint(workflow_id, step, {"v": value, "ü": "✓" * value}, frontier=dict(rec.frontier),
                                writes={f"node-{value}": {"v": value}} if value % 2 else {},
                                created_at=1_000.5 + self.clock) if with_checkpoint else None
        outcome = self.model.save_outcome(workflow_id, expected_version, token)
        self._saved_since_check = True
        try:
            saved = self.call(self.store.save(rec, expected_version=expected_version, checkpoint=checkpoint, fencing_token=token))
        except WorkflowExistsError:
            expect(outcome == "exists" or (outcome == "fenced" and stored is not None), "state_store.cas", f"creating {workflow_id} raised WorkflowExistsError; model: {outcome}")
            return
        except VersionConflictError:
            expect(outcome in ("conflict", "fenced"), "state_store.cas",
                   f"save of {workflow_id} with version {expected_version} (stored {current}) was refused; model: {outcome}")
            return
        except FencingTokenRejectedError:
            expect(outcome == "fenced", "state_store.fencing",
                   f"save of {workflow_id} with token {token} was fenced off; newest token is {self.model.max_token.get(workflow_id)}")
            return
        if outcome == "fenced":
            raise ContractViolation("state_store.fencing", f"save of {workflow_id} with superseded token {token} "
                                    f"(newest {self.model.max_token[workflow_id]}) was accepted")
        if outcome != "ok":
            raise ContractViolation("state_store.cas", f"save of {workflow_id} with expected_version={expected_version} "
                                    f"was accepted, but the stored version is {current if stored else 'none'} ({outcome})")
        expect(saved.version == expected_version + 1, "state_store.cas", f"save returned version {saved.version}")
        if stored is None:
            stored = self.model.workflows[workflow_id] = ModelWorkflow(0, status, {}, created_at)
        stored.version, stored.status, stored.state = expected_version + 1, status, dict(rec.state)
        self.saved[workflow_id] = rec
        if checkpoint is not None:
            stored.checkpoints.append(step)
            self.bodies[(workflow_id, step)] = checkpoint.to_dict()

    @rule(workflow_id=st.sampled_from(WORKFLOWS))
    def get(self, workflow_id: str) -> None:
        got = self.call(self.store.get(workflow_id))
        stored = self.model.workflows.get(workflow_id)
        if stored is None:
            expect(got is None, "state_store.cas", f"get({workflow_id}) returned a record that was never saved")
            return
        expect(got is not None and (got.version, got.status, dict(got.state)) == (stored.version, stored.status, stored.state),
               "state_store.cas", f"get({workflow_id}) = {got!r}; model: version {stored.version}, {stored.status}, {stored.state}")
        assert got is not None
        want = comparable_fields(self.saved[workflow_id])
        diff = {k: (v, comparable_fields(got).get(k)) for k, v in want.items() if comparable_fields(got).get(k) != v}
        expect(not diff, "state_store.round-trip", f"get({workflow_id}) differs from the last save in (saved, read) {diff}")

    @rule(workflow_id=st.sampled_from(WORKFLOWS), limit=st.sampled_from([None, 1, 2, 5]), before=st.sampled_from([None, 0, 1, 2, 4]))
    def list_checkpoints(self, workflow_id: str, limit: int | None, before: int | None) -> None:
        listed = self.call(self.store.list_checkpoints(workflow_id, limit=limit, before=before))
        got = [cp.step for cp in listed]
        want = self.model.list_checkpoints(workflow_id, limit, before)
        expect(got == want, "state_store.checkpoint-order",
               f"list_checkpoints({workflow_id}, limit={limit}, before={before}) = {got}, expected {want}")
        for cp in listed:
            body = self.bodies[(workflow_id, cp.step)]
            expect(cp.to_dict() == body, "state_store.round-trip", f"checkpoint {cp.step} of {workflow_id} reads {cp.to_dict()}, saved {body}")

    @rule(status=st.sampled_from([None, *STATUSES]))
    def list_workflows(self, status: str | None) -> None:
        records = self.call(self.store.list_workflows(status))
        got = [r.workflow_id for r in records]
        want = self.model.list_workflows(status)
        expect(got == want, "state_store.list-by-status", f"list_workflows({status!r}) = {got}, expected {want}")
        for rec in records:
            expect(comparable_fields(rec) == comparable_fields(self.saved[rec.workflow_id]), "state_store.round-trip",
                   f"list_workflows lists {rec!r}, last saved {self.saved[rec.workflow_id]!r}")

    @rule(workflow_id=st.sampled_from(WORKFLOWS), owner=st.sampled_from(OWNERS))
    def acquire(self, workflow_id: str, owner: str) -> None:
        lease = self.call(self.store.acquire_lease(workflow_id, owner, 60.0))
        held = self.model.leases.get(workflow_id)
        if held is not None and held.owner != owner:
            expect(lease is None, "state_store.lease", f"{owner} got {workflow_id}'s lease while {held.owner} holds it")
            return
        expect(lease is not None, "state_store.lease", f"{owner} was refused {workflow_id}'s lease (holder: {held})")
        assert lease is not None
        if held is not None:
            expect(lease.fencing_token == held.token, "state_store.lease", "re-acquiring one's own lease changed its token")
            return
        previous = self.model.max_token.get(workflow_id)
        expect(previous is None or lease.fencing_token > previous, "state_store.fencing",
               f"new grant of {workflow_id} has token {lease.fencing_token}, not above {previous}")
        self.model.leases[workflow_id] = ModelLease(owner, lease.fencing_token)
        self.model.max_token[workflow_id] = lease.fencing_token
        self.leases.append(lease)

    @precondition(lambda self: bool(self.leases))
    @rule(pick=st.integers(0, 1000))
    def release(self, pick: int) -> None:
        lease = self.leases[pick % len(self.leases)]
        self.call(self.store.release_lease(lease))
        held = self.model.leases.get(lease.workflow_id)
        if held is not None and held.token == lease.fencing_token:
            del self.model.leases[lease.workflow_id]

    @invariant()
    def all_records_agree(self) -> None:
        # Only a save (accepted or refused) can change the records: list them after each one.
        if not self._saved_since_check:
            return
        self._saved_since_check = False
        got = {r.workflow_id: r.version for r in self.call(self.store.list_workflows())}
        want = {wid: w.version for wid, w in self.model.workflows.items()}
        expect(got == want, "state_store.cas", f"stored versions {got}, model says {want}")


@conformance_check("state_store", (
    "state_store.cas", "state_store.checkpoint-order", "state_store.fencing", "state_store.lease", "state_store.list-by-status",
    "state_store.round-trip",
), timeout=300.0)
def check_state_store_state_machine(context: CheckContext) -> None:
    """Random sequences of store operations agree with the reference model after every step."""
    run_machine(StateStoreMachine, context)
