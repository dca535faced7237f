"""Scenario checks of the StateStore port: CAS, checkpoints, fenced leases, status, TTL."""

from __future__ import annotations

import asyncio

from distributed_agents.conformance.catalog import conformance_check
from distributed_agents.conformance.clauses import expect
from distributed_agents.conformance.context import Session, monotonic
from distributed_agents.conformance.helpers import refused, sleep_past
from distributed_agents.core.errors import (
    FencingTokenRejectedError,
    LeaseLostError,
    VersionConflictError,
    WorkflowExistsError,
)
from distributed_agents.core.ports.state_store import Checkpoint, WorkflowRecord, WorkflowStatus

PORT = "state_store"


def record(workflow_id: str, *, status: str = WorkflowStatus.RUNNING, step: int = 0, created_at: float = 1.0, **state: object) -> WorkflowRecord:
    """A small record whose state says what wrote it."""
    return WorkflowRecord(workflow_id, "graph", status, dict(state), step=step, created_at=created_at, updated_at=created_at)


@conformance_check(PORT, ("state_store.cas",))
async def check_compare_and_set(session: Session) -> None:
    """Create with version 0, update with the current version; stale versions change nothing."""
    store = (await session.open()).state_store
    clause = "state_store.cas"
    saved = await store.save(record("w1", n=1), expected_version=0)
    expect(saved.version == 1, clause, f"a created record has version {saved.version}, expected 1")
    await refused(store.save(record("w1", n=99), expected_version=0), WorkflowExistsError, clause, "creating w1 twice")
    second = await store.save(record("w1", n=2), expected_version=1)
    expect(second.version == 2, clause, f"saving on version 1 stored version {second.version}, expected 2")
    error = await refused(store.save(record("w1", n=3), expected_version=1), VersionConflictError, clause, "save with stale version 1")
    expect(getattr(error, "expected", None) == 1, clause, f"the conflict error reports expected={getattr(error, 'expected', None)}")
    expect(getattr(error, "actual", None) == 2, clause, f"the conflict error reports actual={getattr(error, 'actual', None)}, expected 2")
    await refused(store.save(record("w1", n=4), expected_version=7), VersionConflictError, clause, "save with future version 7")
    await refused(store.save(record("ghost", n=1), expected_version=3), VersionConflictError, clause, "update of a missing record")
    current = await store.get("w1")
    expect(current is not None and current.version == 2 and dict(current.state) == {"n": 2}, clause,
           f"after refused saves the record is {current!r}, expected version 2 with n=2")
    expect(await store.get("ghost") is None, clause, "a refused update created a record")


@conformance_check(PORT, ("state_store.checkpoint-order", "state_store.cas"))
async def check_checkpoint_history(session: Session) -> None:
    """Checkpoints are appended with their save, listed newest first, honouring limit/before."""
    store = (await session.open()).state_store
    clause = "state_store.checkpoint-order"
    version = 0
    for step in range(6):
        saved = await store.save(record("w1", step=step, s=step), expected_version=version,
                                 checkpoint=Checkpoint("w1", step, {"s": step}, writes={"node": {"s": step}}))
        version = saved.version
    await refused(store.save(record("w1", step=99), expected_version=1, checkpoint=Checkpoint("w1", 99, {})),
                  VersionConflictError, "state_store.cas", "a stale save with a checkpoint")
    steps = [cp.step for cp in await store.list_checkpoints("w1")]
    expect(steps == [5, 4, 3, 2, 1, 0], clause, f"checkpoints listed as steps {steps}, expected newest first [5..0]")
    limited = [cp.step for cp in await store.list_checkpoints("w1", limit=2)]
    expect(limited == [5, 4], clause, f"limit=2 gave {limited}")
    before = [cp.step for cp in await store.list_checkpoints("w1", before=3)]
    expect(before == [2, 1, 0], clause, f"before=3 gave {before}")
    both = [cp.step for cp in await store.list_checkpoints("w1", before=5, limit=3)]
    expect(both == [4, 3, 2], clause, f"before=5, limit=3 gave {both}")
    [latest] = await store.list_checkpoints("w1", limit=1)
    expect(dict(latest.state) == {"s": 5} and dict(latest.writes) == {"node": {"s": 5}}, clause, f"checkpoint content {latest!r}")
    expect(await store.list_checkpoints("other") == [], clause, "an unknown workflow has checkpoints")


@conformance_check(PORT, ("state_store.lease", "state_store.fencing"))
async def check_leases_and_fencing(session: Session) -> None:
    """One holder at a time; renewal; expiry frees it; tokens grow; a superseded holder cannot commit."""
    store = (await session.open()).state_store
    short = session.short
    await store.save(record("w1"), expected_version=0)
    first = await store.acquire_lease("w1", "orch-a", short)
    expect(first is not None, "state_store.lease", "a free lease was not granted")
    assert first is not None
    expect(await store.acquire_lease("w1", "orch-b", 30.0) is None, "state_store.lease", "a held lease was granted to another owner")
    again = await store.acquire_lease("w1", "orch-a", short)
    expect(again is not None and again.fencing_token == first.fencing_token, "state_store.lease",
           f"re-acquiring one's own live lease changed the token: {first} -> {again}")
    renewed = await store.renew_lease(first, short)
    expect(renewed.fencing_token == first.fencing_token, "state_store.lease", "renewal changed the fencing token")
    saved = await store.save(record("w1", by="a"), expected_version=1, fencing_token=first.fencing_token)
    await sleep_past(short, session.slack)
    await refused(store.renew_lease(first, short), LeaseLostError, "state_store.lease", "renewing an expired lease")
    second = await store.acquire_lease("w1", "orch-b", 30.0)
    expect(second is not None, "state_store.lease", "an expired lease could not be taken over")
    assert second is not None
    expect(second.fencing_token > first.fencing_token, "state_store.fencing",
           f"the takeover token {second.fencing_token} is not greater than {first.fencing_token}")
    await refused(store.save(record("w1", by="zombie"), expected_version=saved.version, fencing_token=first.fencing_token),
                  FencingTokenRejectedError, "state_store.fencing", "a commit by the superseded lease holder")
    current = await store.get("w1")
    expect(current is not None and dict(current.state) == {"by": "a"}, "state_store.fencing", f"the refused commit changed the record: {current!r}")
    await store.save(record("w1", by="b"), expected_version=saved.version, fencing_token=second.fencing_token)
    await store.release_lease(second)
    third = await store.acquire_lease("w1", "orch-c", 30.0)
    expect(third is not None, "state_store.lease", "a released lease was not free")
    assert third is not None
    expect(third.fencing_token > second.fencing_token, "state_store.fencing", "a grant after release reused an old token")
    await store.release_lease(first)  # released long ago: must not free orch-c's lease
    expect(await store.acquire_lease("w1", "orch-d", 30.0) is None, "state_store.lease", "releasing a lost lease freed the new holder's lease")
    # lease_holder (for messages only) tells the live holder, or None where a store does not tell.
    holder = await store.lease_holder("w1")
    expect(holder is None or (holder.owner == "orch-c" and holder.fencing_token == third.fencing_token
                              and abs(holder.deadline - third.deadline) < 5.0),
           "state_store.lease", f"lease_holder reported {holder!r} while {third!r} holds the lease")
    await store.release_lease(third)
    expect(await store.lease_holder("w1") is None, "state_store.lease", "lease_holder reported a released lease")


@conformance_check(PORT, ("state_store.list-by-status",))
async def check_list_by_status(session: Session) -> None:
    """list_workflows filters by status and lists oldest first."""
    store = (await session.open()).state_store
    clause = "state_store.list-by-status"
    statuses = [WorkflowStatus.RUNNING, WorkflowStatus.COMPLETED, WorkflowStatus.RUNNING, WorkflowStatus.FAILED]
    for index, status in enumerate(statuses):
        await store.save(record(f"w{index}", status=status, created_at=100.0 + index), expected_version=0)
    await store.save(record("w0", status=WorkflowStatus.COMPLETED, created_at=100.0), expected_version=1)
    listed = {s: [r.workflow_id for r in await store.list_workflows(s)] for s in sorted(WorkflowStatus.ALL)}
    expected = {s: [] for s in WorkflowStatus.ALL} | {"running": ["w2"], "completed": ["w0", "w1"], "failed": ["w3"]}
    expect(listed == expected, clause, f"by status: {listed}, expected {expected}")
    everything = [r.workflow_id for r in await store.list_workflows()]
    expect(everything == ["w0", "w1", "w2", "w3"], clause, f"all workflows listed as {everything}")
    expect(await store.delete("w1") is True and await store.delete("w1") is False, clause, "delete did not report existence")
    remaining = [r.workflow_id for r in await store.list_workflows(WorkflowStatus.COMPLETED)]
    expect(remaining == ["w0"], clause, f"after deleting w1 completed lists {remaining}")


@conformance_check(PORT, ("state_store.ttl",), requires=("state_ttl",))
async def check_state_ttl(session: Session) -> None:
    """Records, checkpoints and leases vanish state_ttl after the last save, not before."""
    store = (await session.open(state_ttl=session.short * 2)).state_store
    clause = "state_store.ttl"
    ttl = session.short * 2
    await store.save(record("w1"), expected_version=0, checkpoint=Checkpoint("w1", 0, {}))
    await store.save(record("w2"), expected_version=0)
    await store.acquire_lease("w1", "orch", 30.0)
    await asyncio.sleep(ttl * 0.5)
    await store.save(record("w2"), expected_version=1)  # a save restarts w2's clock
    await sleep_past(ttl * 0.5, session.slack)
    # The lease is probed first: reading the record must not be what expires it.
    expect(await store.acquire_lease("w1", "other", 30.0) is not None, clause, "w1's lease outlived its record")
    expect(await store.list_checkpoints("w1") == [], clause, "w1's checkpoints outlived its record")
    expect(await store.get("w1") is None, clause, f"w1 is still stored {ttl}s after its last save")
    expect(await store.get("w2") is not None, clause, "w2 expired although it was saved again within state_ttl")
    expect([r.workflow_id for r in await store.list_workflows()] == ["w2"], clause, "an expired workflow is still listed")


# --- everything a record holds, listings past ten, boundaries in time -----------------


def comparable_fields(rec: WorkflowRecord) -> dict[str, object]:
    """A record's fields that must read back as saved (the store sets version and updated_at)."""
    data = rec.to_dict()
    data.pop("version")
    data.pop("updated_at")
    return data


FULL_STATE = {
    "text": "héllo wörld ✓ 日本語 🚀", "int": 10**15, "neg": -7, "float": 0.1, "big": 1.5e300, "bool": False,
    "none": None, "list": [1, "two", [3.0], {"four": 4}], "nested": {"a": {"b": {"c": []}}}, "empty": {}, "": "empty key",
}


@conformance_check(PORT, ("state_store.round-trip",))
async def check_every_field_round_trips(session: Session) -> None:
    """Every field of a record (state, frontier, error, metadata, status, graph, step...) and of a checkpoint reads back."""
    store = (await session.open()).state_store
    clause = "state_store.round-trip"
    workflow_id = "wf-ünïcode-日本"
    versions = [
        WorkflowRecord(workflow_id, "graph-é", WorkflowStatus.PENDING, FULL_STATE, step=0,
                       frontier={"run": ["a", "b"], "joins": {"j": ["a"]}}, error=None, graph={"name": "graph-é", "hash": "abc123"},
                       metadata={"user": "zoë", "tags": ["x"], "n": 1}, created_at=1_700_000_000.123456, updated_at=5.0),
        WorkflowRecord(workflow_id, "graph-é", WorkflowStatus.RUNNING, {**FULL_STATE, "step": 1}, step=1,
                       frontier={}, error=None, graph={"name": "graph-é", "hash": "abc123"}, metadata={},
                       created_at=1_700_000_000.123456, updated_at=6.0),
        WorkflowRecord(workflow_id, "graph-é", WorkflowStatus.FAILED, {"only": "this"}, step=12,
                       frontier={"run": ["c"]}, error={"type": "ValueError", "message": "bäd ✗", "node": "n1", "trace": ["l1", "l2"]},
                       graph=None, metadata={"retry": {"left": 0}}, created_at=1_700_000_000.123456, updated_at=7.0),
    ]
    version = 0
    for index, rec in enumerate(versions):
        checkpoint = Checkpoint(workflow_id, rec.step, rec.state, frontier=rec.frontier,
                                writes={"node-ä": {"out": index, "deep": [{"x": None}]}} if index != 1 else {},
                                created_at=1_700_000_100.5 + index)
        saved = await store.save(rec, expected_version=version, checkpoint=checkpoint)
        version += 1
        expect(saved.version == version, "state_store.cas", f"save {index + 1} returned version {saved.version}, expected {version}")
        got = await store.get(workflow_id)
        expect(got is not None, clause, f"get after save {index + 1} returned None")
        assert got is not None
        diff = {k: (v, comparable_fields(got).get(k)) for k, v in comparable_fields(rec).items() if comparable_fields(got).get(k) != v}
        expect(not diff, clause, f"after save {index + 1} get() differs in (saved, read) {diff}")
        expect(got.version == version, clause, f"after save {index + 1} get() has version {got.version}, expected {version}")
        expect(saved.to_dict() == got.to_dict(), clause, f"save {index + 1} returned {saved!r}, but get() reads {got!r}")
        [listed] = [r for r in await store.list_workflows() if r.workflow_id == workflow_id] or [None]
        expect(listed is not None and comparable_fields(listed) == comparable_fields(rec) and listed.version == version, clause,
               f"after save {index + 1} list_workflows() returned {listed!r}")
        [latest] = await store.list_checkpoints(workflow_id, limit=1) or [None]
        expect(latest is not None and latest.to_dict() == checkpoint.to_dict(), clause,
               f"after save {index + 1} the newest checkpoint reads {None if latest is None else latest.to_dict()}, "
               f"saved {checkpoint.to_dict()}")


@conformance_check(PORT, ("state_store.checkpoint-order",))
async def check_checkpoints_past_ten(session: Session) -> None:
    """150 checkpoints (past a page of 100) list newest first by numeric step (10 before 9), honouring limit and before."""
    store = (await session.open()).state_store
    clause = "state_store.checkpoint-order"
    count = 150
    top = count - 1
    for step in range(count):
        await store.save(record("w1", step=step, s=step), expected_version=step, checkpoint=Checkpoint("w1", step, {"s": step}))
    steps = [cp.step for cp in await store.list_checkpoints("w1")]
    expect(steps == list(range(count - 1, -1, -1)), clause, f"{count} checkpoints listed as steps {steps}")
    cases = [({"limit": 12}, list(range(top, top - 12, -1))), ({"before": 11}, list(range(10, -1, -1))),
             ({"before": 11, "limit": 3}, [10, 9, 8]), ({"before": 1000}, list(range(top, -1, -1))), ({"before": 0}, []),
             ({"limit": 1000}, list(range(top, -1, -1))), ({"before": 20, "limit": 15}, list(range(19, 4, -1))),
             ({"limit": 0}, []), ({"limit": 0, "before": 5}, []), ({"limit": 1}, [top]), ({"before": 140, "limit": 130}, list(range(139, 9, -1)))]
    for kwargs, want in cases:
        got = [cp.step for cp in await store.list_checkpoints("w1", **kwargs)]
        expect(got == want, clause, f"list_checkpoints({kwargs}) gave {got}, expected {want}")
    contents = [dict(cp.state) for cp in await store.list_checkpoints("w1", before=12, limit=3)]
    expect(contents == [{"s": 11}, {"s": 10}, {"s": 9}], clause, f"checkpoints 11, 10, 9 hold {contents}")


@conformance_check(PORT, ("state_store.get-checkpoint",))
async def check_get_checkpoint(session: Session) -> None:
    """get_checkpoint reads each step's checkpoint as list_checkpoints does (states large enough to be stored as
    changes, steps with gaps, a first step other than 0), and None for steps without one, unknown or deleted workflows."""
    store = (await session.open()).state_store
    clause = "state_store.get-checkpoint"
    steps = [3, 4, 5, 8, 9, 10, 11, 12]  # a fork's first step, then a gap (durability "exit" writes fewer steps)
    version = 0
    log: list[str] = []
    for index, step in enumerate(steps):
        log.append(f"entry {step} " + "x" * 300)  # grows by appends: stored as deltas where the store does so
        state = {"log": list(log), "at": step, "other": {"n": index, "text": "y" * (2000 if index % 3 else 10)}}
        saved = await store.save(record("w1", step=step, **state), expected_version=version,
                                 checkpoint=Checkpoint("w1", step, state, {"next": ["n"]}, writes={"n": {"i": index}},
                                                       created_at=100.0 + index, metadata={"i": index}))
        version = saved.version
    listed = {cp.step: cp.to_dict() for cp in await store.list_checkpoints("w1")}
    for step in steps:
        got = await store.get_checkpoint("w1", step)
        expect(got is not None and got.to_dict() == listed[step], clause,
               f"get_checkpoint('w1', {step}) gave {None if got is None else got.to_dict()}, expected {listed[step]}")
    for step in (0, 2, 6, 7, 13, 1000):
        got = await store.get_checkpoint("w1", step)
        expect(got is None, clause, f"get_checkpoint('w1', {step}) of a step never written gave {got!r}, expected None")
    expect(await store.get_checkpoint("ghost", 0) is None, clause, "get_checkpoint of an unknown workflow is not None")
    await store.delete("w1")
    expect(await store.get_checkpoint("w1", 12) is None, clause, "get_checkpoint of a deleted workflow is not None")


@conformance_check(PORT, ("state_store.list-by-status",))
async def check_list_workflows_past_ten(session: Session) -> None:
    """Many records list oldest created_at first (compared as numbers), every one of them, filtered exactly."""
    store = (await session.open()).state_store
    clause = "state_store.list-by-status"
    # 110 records (past a page of 100), created_at spread over many magnitudes, out of order.
    created = [round(10 ** ((i * 37 % 110) / 12), 3) for i in range(110)]
    for index, at in enumerate(created):
        status = WorkflowStatus.COMPLETED if index % 3 == 0 else WorkflowStatus.RUNNING
        await store.save(record(f"w{index}", status=status, created_at=at), expected_version=0)
    want = [f"w{i}" for i, _ in sorted(enumerate(created), key=lambda item: item[1])]
    got = [r.workflow_id for r in await store.list_workflows()]
    expect(got == want, clause, f"{len(created)} workflows listed as {got}, expected oldest created_at first {want}")
    done = [r.workflow_id for r in await store.list_workflows(WorkflowStatus.COMPLETED)]
    expect(done == [w for w in want if int(w[1:]) % 3 == 0], clause, f"list_workflows('completed') gave {done}")


@conformance_check(PORT, ("state_store.fencing",))
async def check_fencing_token_stays_rejected(session: Session) -> None:
    """A token stays refused after a newer lease was granted, even once that lease expired or was released."""
    store = (await session.open()).state_store
    clause = "state_store.fencing"
    short = session.short
    await store.save(record("w1"), expected_version=0)
    first = await store.acquire_lease("w1", "a", short)
    assert first is not None
    await sleep_past(short, session.slack)
    second = await store.acquire_lease("w1", "b", short)
    expect(second is not None and second.fencing_token > first.fencing_token, clause, f"takeover lease {second} after {first}")
    assert second is not None
    await sleep_past(short, session.slack)  # now nobody holds a live lease
    await refused(store.save(record("w1", by="a"), expected_version=1, fencing_token=first.fencing_token),
                  FencingTokenRejectedError, clause, "a save with a token superseded by a lease that since expired")
    saved = await store.save(record("w1", by="b"), expected_version=1, fencing_token=second.fencing_token)
    third = await store.acquire_lease("w1", "c", 30.0)
    assert third is not None
    await store.release_lease(third)
    for lease in (first, second):
        await refused(store.save(record("w1", by=lease.owner), expected_version=saved.version, fencing_token=lease.fencing_token),
                      FencingTokenRejectedError, clause, f"a save with token {lease.fencing_token} after token {third.fencing_token} "
                      "was granted and released")
    current = await store.get("w1")
    expect(current is not None and dict(current.state) == {"by": "b"}, clause, f"refused saves changed the record: {current!r}")


@conformance_check(PORT, ("state_store.ttl",), requires=("state_ttl",))
async def check_state_ttl_covers_checkpoints(session: Session) -> None:
    """Every save restarts the clock of the record and of all its checkpoints; after it all expire together."""
    ttl = session.short * 2
    store = (await session.open(state_ttl=ttl)).state_store
    clause = "state_store.ttl"
    started = monotonic()
    await store.save(record("w1", step=0), expected_version=0, checkpoint=Checkpoint("w1", 0, {"s": 0}))
    # Saves without a checkpoint every 0.6 ttl keep w1 alive; checkpoint 0 must live as long
    # (looked at 2.4 ttl after it was written, past any rounding of a per-write TTL).
    version, saved_at = 1, started
    for share in (0.6, 1.2, 1.8):
        await asyncio.sleep(max(0.0, started + ttl * share - monotonic()))
        if monotonic() - saved_at > ttl * 0.8:
            return  # a slow run: w1 may have expired between saves, nothing to judge
        saved_at = monotonic()
        await store.save(record("w1", step=0), expected_version=version)
        version += 1
    await asyncio.sleep(max(0.0, started + ttl * 2.4 - monotonic()))
    if monotonic() - saved_at > ttl * 0.8:
        return
    steps = [cp.step for cp in await store.list_checkpoints("w1")]
    alive = await store.get("w1") is not None
    if monotonic() - saved_at > ttl * 0.9:
        return  # the reads themselves ran into the expiry (a loaded machine): nothing to judge
    expect(alive, clause, f"w1 expired although it was saved every {ttl * 0.6:.2f}s (state_ttl={ttl}s)")
    expect(steps == [0], clause, f"checkpoint 0 of live w1 expired {ttl * 2.4:.2f}s after it was written, although w1 was saved "
           f"since (state_ttl={ttl}s): {steps}")
    await store.save(record("w1", step=1), expected_version=version, checkpoint=Checkpoint("w1", 1, {"s": 1}))
    await store.acquire_lease("w1", "owner", 60.0)
    await sleep_past(ttl, session.slack)
    expect(await store.acquire_lease("w1", "other", 30.0) is not None, clause, "w1's lease outlived its record")
    expect(await store.list_checkpoints("w1") == [], clause, "w1's checkpoints outlived its record")
    expect(await store.get("w1") is None, clause, f"w1 is still stored {ttl}s after its last save")


@conformance_check(PORT, ("state_store.lease",))
async def check_renewal_moves_the_deadline(session: Session) -> None:
    """renew_lease(ttl) holds the lease past its first deadline, until the renewed one."""
    store = (await session.open()).state_store
    short = session.short
    lease = await store.acquire_lease("w1", "a", short)
    assert lease is not None
    started = monotonic()
    renewed = await store.renew_lease(lease, short * 3)
    finished = monotonic()
    await sleep_past(short, session.slack)
    if monotonic() < started + short * 3 - session.slack:
        expect(await store.acquire_lease("w1", "b", 30.0) is None, "state_store.lease",
               f"a lease renewed for {short * 3}s was free again after its first {short}s")
    await asyncio.sleep(max(0.0, finished + short * 3 + session.slack - monotonic()))
    taken = await store.acquire_lease("w1", "b", 30.0)
    expect(taken is not None, "state_store.lease", f"a lease renewed for {short * 3}s was still held after that")
    del renewed


@conformance_check(PORT, ("state_store.delete",))
async def check_delete_removes_everything(session: Session) -> None:
    """delete removes the record, its checkpoints and its lease; the id is then new (nothing inherited)."""
    store = (await session.open()).state_store
    clause = "state_store.delete"
    await store.save(record("w1", step=0), expected_version=0, checkpoint=Checkpoint("w1", 0, {"old": 0}))
    await store.save(record("w1", step=1), expected_version=1, checkpoint=Checkpoint("w1", 1, {"old": 1}))
    lease = await store.acquire_lease("w1", "orch-1", 30.0)
    expect(lease is not None, "state_store.lease", "a free lease was not granted")
    expect(await store.delete("w1") is True, clause, "delete of an existing workflow returned False")
    expect(await store.delete("w1") is False, clause, "a second delete returned True")
    expect(await store.delete("never") is False, clause, "delete of an unknown workflow returned True")
    expect(await store.get("w1") is None, clause, "the record is still readable after delete")
    expect(await store.list_workflows() == [], clause, "the record is still listed after delete")
    left = [cp.step for cp in await store.list_checkpoints("w1")]
    expect(left == [], clause, f"after delete the checkpoints of steps {left} are still listed")
    other = await store.acquire_lease("w1", "orch-2", 30.0)
    expect(other is not None, clause, "after delete the old holder's lease still blocks another owner")
    created = await store.save(record("w1", step=0, fresh=True), expected_version=0, checkpoint=Checkpoint("w1", 0, {"new": 0}))
    expect(created.version == 1, clause, f"a workflow re-created after delete has version {created.version}")
    inherited = [dict(cp.state) for cp in await store.list_checkpoints("w1")]
    expect(inherited == [{"new": 0}], clause, f"a workflow re-created after delete lists checkpoints {inherited}, expected only its own")


@conformance_check(PORT, ("state_store.lease",))
async def check_reacquire_extends_the_deadline(session: Session) -> None:
    """Re-acquiring one's own live lease keeps its token and moves its deadline to now + ttl."""
    store = (await session.open()).state_store
    clause = "state_store.lease"
    short = session.short
    first = await store.acquire_lease("w1", "orch", short)
    expect(first is not None, clause, "a free lease was not granted")
    assert first is not None
    again = await store.acquire_lease("w1", "orch", 30.0)
    expect(again is not None, clause, "the holder's re-acquire of its own live lease was refused")
    assert again is not None
    expect(again.fencing_token == first.fencing_token, clause,
           f"re-acquiring one's own live lease changed the token from {first.fencing_token} to {again.fencing_token}")
    expect(again.deadline > first.deadline + 5.0, clause,
           f"re-acquire with ttl=30 kept the deadline {again.deadline} (was {first.deadline}), expected about now + 30")
    await sleep_past(short, session.slack)
    taken = await store.acquire_lease("w1", "intruder", 30.0)
    expect(taken is None, clause, f"after re-acquiring for 30s the lease went to another owner once the first {short}s passed")


@conformance_check(PORT, ("state_store.fencing",))
async def check_fenced_save_writes_nothing(session: Session) -> None:
    """A save refused for a stale fencing token writes neither the record nor its checkpoint."""
    store = (await session.open()).state_store
    clause = "state_store.fencing"
    await store.save(record("w1", step=0), expected_version=0, checkpoint=Checkpoint("w1", 0, {"s": 0}))
    old = await store.acquire_lease("w1", "orch-1", session.short)
    assert old is not None
    await sleep_past(session.short, session.slack)
    new = await store.acquire_lease("w1", "orch-2", 30.0)
    expect(new is not None and old is not None and new.fencing_token > old.fencing_token, clause, "a newer lease has no greater token")
    await refused(store.save(record("w1", step=1, by="old"), expected_version=1, checkpoint=Checkpoint("w1", 1, {"by": "old"}),
                             fencing_token=old.fencing_token),
                  FencingTokenRejectedError, clause, "a save with the superseded token")
    steps = [cp.step for cp in await store.list_checkpoints("w1")]
    expect(steps == [0], clause, f"a save refused for its fencing token left checkpoints of steps {steps}, expected [0]")
    current = await store.get("w1")
    expect(current is not None and current.version == 1 and dict(current.state) == {}, clause,
           f"a save refused for its fencing token changed the record to {current!r}")


@conformance_check(PORT, ("state_store.create-leased", "state_store.fencing"))
async def check_create_leased(session: Session) -> None:
    """create_leased: the lease and the record together, or neither."""
    store = (await session.open()).state_store
    clause = "state_store.create-leased"
    made = await store.create_leased(record("w1", n=1), owner="orch-a", ttl=30.0,
                                     checkpoint=Checkpoint("w1", 0, {"n": 1}))
    expect(made is not None, clause, "create_leased of a new workflow with a free lease returned None")
    assert made is not None
    saved, lease = made
    expect(saved.version == 1 and lease.owner == "orch-a" and lease.workflow_id == "w1", clause,
           f"create_leased returned {saved!r} and {lease!r}, expected version 1 leased to 'orch-a'")
    current = await store.get("w1")
    expect(current is not None and current.version == 1 and dict(current.state) == {"n": 1}, clause,
           f"the created record reads back as {current!r}")
    steps = [cp.step for cp in await store.list_checkpoints("w1")]
    expect(steps == [0], clause, f"the created workflow has checkpoints {steps}, expected [0]")
    expect(await store.acquire_lease("w1", "orch-b", 30.0) is None, clause,
           "the lease create_leased granted was granted to another owner too")
    updated = await store.save(record("w1", n=2), expected_version=1, fencing_token=lease.fencing_token)
    expect(updated.version == 2, clause, "a save fenced by the lease create_leased granted was refused")
    # Another owner's live lease: nothing is written.
    other = await store.acquire_lease("w2", "orch-b", 30.0)
    assert other is not None
    held = await store.create_leased(record("w2", n=1), owner="orch-a", ttl=30.0)
    expect(held is None, clause, f"create_leased under another owner's live lease returned {held!r}, expected None")
    expect(await store.get("w2") is None, clause, "create_leased under another owner's live lease created the record")
    await store.release_lease(other)
    # An existing record: WorkflowExistsError, and the lease it would have granted stays free.
    await store.save(record("w3", n=1), expected_version=0)
    await refused(store.create_leased(record("w3", n=9), owner="orch-a", ttl=30.0), WorkflowExistsError, clause,
                  "create_leased of an existing workflow")
    taken = await store.acquire_lease("w3", "orch-b", 30.0)
    expect(taken is not None, clause, "after a refused create_leased the lease was still held")
    current = await store.get("w3")
    expect(current is not None and dict(current.state) == {"n": 1}, clause, f"a refused create_leased changed {current!r}")
    # A later grant supersedes it: its token is refused.
    await store.release_lease(lease)
    newer = await store.acquire_lease("w1", "orch-c", 30.0)
    expect(newer is not None and newer.fencing_token > lease.fencing_token, "state_store.fencing",
           f"a grant after create_leased's token {lease.fencing_token} has {newer!r}")
    await refused(store.save(record("w1", n=3), expected_version=2, fencing_token=lease.fencing_token),
                  FencingTokenRejectedError, "state_store.fencing", "a save with create_leased's superseded token")


@conformance_check(PORT, ("state_store.save-releasing", "state_store.fencing", "state_store.cas"))
async def check_save_releasing(session: Session) -> None:
    """save_releasing: a fenced save, then the lease is free; a refused one keeps the lease."""
    store = (await session.open()).state_store
    clause = "state_store.save-releasing"
    await store.save(record("w1", n=1), expected_version=0)
    lease = await store.acquire_lease("w1", "orch-a", 30.0)
    assert lease is not None
    await refused(store.save_releasing(record("w1", n=9), expected_version=7, lease=lease), VersionConflictError,
                  "state_store.cas", "save_releasing with a stale version")
    expect(await store.acquire_lease("w1", "orch-b", 30.0) is None, clause,
           "a save_releasing refused for its version freed the lease")
    saved = await store.save_releasing(record("w1", n=2, status=WorkflowStatus.COMPLETED), expected_version=1,
                                       lease=lease, checkpoint=Checkpoint("w1", 1, {"n": 2}))
    expect(saved.version == 2, clause, f"save_releasing stored version {saved.version}, expected 2")
    current = await store.get("w1")
    expect(current is not None and current.version == 2 and dict(current.state) == {"n": 2}
           and current.status == WorkflowStatus.COMPLETED, clause, f"save_releasing stored {current!r}")
    steps = [cp.step for cp in await store.list_checkpoints("w1")]
    expect(steps == [1], clause, f"save_releasing's checkpoint is missing: checkpoints {steps}")
    taken = await store.acquire_lease("w1", "orch-b", 30.0)
    expect(taken is not None, clause, "after save_releasing the lease was still held")
    assert taken is not None
    # The old holder is superseded now: its save_releasing is refused and frees nothing.
    await refused(store.save_releasing(record("w1", n=3), expected_version=2, lease=lease), FencingTokenRejectedError,
                  "state_store.fencing", "save_releasing by a superseded lease holder")
    expect(await store.acquire_lease("w1", "orch-c", 30.0) is None, clause,
           "a refused save_releasing by a superseded holder freed the new holder's lease")
    current = await store.get("w1")
    expect(current is not None and dict(current.state) == {"n": 2}, clause, f"a refused save_releasing changed {current!r}")
