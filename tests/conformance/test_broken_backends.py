"""The suite must be able to fail: each broken memory variant is caught, naming its clause.

For every variant, every check that proves the clause runs against it (with Hypothesis
shrinking off, since a failure is expected); at least one must raise a
``ContractViolation`` for exactly that clause.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import Phase

from conformance import broken_backends as bb
from distributed_agents.conformance import (
    BackendFactory,
    CheckContext,
    CheckSkipped,
    ContractViolation,
    Requirements,
    all_checks,
    checks_for_clause,
    current_profile,
    run_check,
)
from distributed_agents.core.ports.backend import Backend

CASES: dict[str, tuple[str, Callable[..., Backend]]] = {
    "lifo-within-priority": ("task_queue.priority-fifo", bb.broken_opener(task_queue=bb.LifoQueue)),
    "enqueue-not-idempotent": ("task_queue.idempotent-enqueue", bb.broken_opener(task_queue=bb.NonIdempotentEnqueueQueue)),
    "batch-repeats-queued-twice": ("task_queue.enqueue-many", bb.broken_opener(task_queue=bb.BatchRepeatsQueue)),
    "claimed-task-visible": ("task_queue.invisible-while-claimed", bb.broken_opener(task_queue=bb.VisibleWhileClaimedQueue)),
    "lease-never-expires": ("task_queue.lease-expiry", bb.broken_opener(task_queue=bb.NeverExpiringLeaseQueue)),
    "extend-does-nothing": ("task_queue.lease-extension", bb.broken_opener(task_queue=bb.ExtendDoesNothingQueue)),
    "ack-ignores-lease": ("task_queue.lost-lease-refused", bb.broken_opener(task_queue=bb.AckIgnoresLeaseQueue)),
    "nack-not-counted": ("task_queue.attempts", bb.broken_opener(task_queue=bb.NackDoesNotCountQueue)),
    "no-dead-letters": ("task_queue.dead-letter", bb.broken_opener(task_queue=bb.NoDeadLetterQueue)),
    "delayed-nack-loses-task": ("task_queue.nack-redelivery", bb.broken_opener(task_queue=bb.DelayedNackLosesTaskQueue)),
    "undecodable-dropped": ("task_queue.undecodable", bb.broken_opener(task_queue=bb.UndecodableDroppedQueue)),
    "wrong-depth-count": ("task_queue.stats", bb.broken_opener(task_queue=bb.DelayedNotCountedQueue)),
    "results-never-expire": ("task_queue.result-expiry", bb.broken_opener(task_queue=bb.ImmortalResultQueue)),
    "ack-drops-output": ("task_queue.ack-result", bb.broken_opener(task_queue=bb.AckDropsOutputQueue)),
    "release-counts-attempt": ("task_queue.release", bb.broken_opener(task_queue=bb.ReleaseCountsAttemptQueue)),
    "requeue-keeps-attempts": ("task_queue.requeue", bb.broken_opener(task_queue=bb.RequeueKeepsAttemptsQueue)),
    "cancel-takes-claimed": ("task_queue.cancel", bb.broken_opener(task_queue=bb.CancelTakesClaimedQueue)),
    "queue-prefix-leak": ("task_queue.prefix-isolation", bb.broken_opener(leak_prefix="task_queue")),
    "cas-does-not-compare": ("state_store.cas", bb.broken_opener(state_store=bb.NoCompareStore)),
    "fencing-ignored": ("state_store.fencing", bb.broken_opener(state_store=bb.NoFencingStore)),
    "checkpoints-oldest-first": ("state_store.checkpoint-order", bb.broken_opener(state_store=bb.OldestFirstCheckpointsStore)),
    "get-checkpoint-nearest-step": ("state_store.get-checkpoint", bb.broken_opener(state_store=bb.NewestCheckpointStore)),
    "status-filter-ignored": ("state_store.list-by-status", bb.broken_opener(state_store=bb.StatusFilterIgnoredStore)),
    "lease-shared": ("state_store.lease", bb.broken_opener(state_store=bb.SharedLeaseStore)),
    "create-leased-keeps-lease": ("state_store.create-leased", bb.broken_opener(state_store=bb.CreateLeasedKeepsLeaseStore)),
    "save-releasing-keeps-lease": ("state_store.save-releasing",
                                   bb.broken_opener(state_store=bb.SaveReleasingKeepsLeaseStore)),
    "state-ttl-never-expires": ("state_store.ttl", bb.broken_opener(ignore_state_ttl=True)),
    "state-prefix-leak": ("state_store.prefix-isolation", bb.broken_opener(leak_prefix="state_store")),
    "registry-prefix-leak": ("worker_registry.prefix-isolation", bb.broken_opener(leak_prefix="worker_registry")),
    "register-drops-fields": ("worker_registry.register", bb.broken_opener(worker_registry=bb.FieldsDroppedRegistry)),
    "workers-never-expire": ("worker_registry.expiry", bb.broken_opener(worker_registry=bb.ImmortalWorkerRegistry)),
    "heartbeat-not-recorded": ("worker_registry.heartbeat", bb.broken_opener(worker_registry=bb.HeartbeatIgnoredRegistry)),
    "deregister-ignored": ("worker_registry.deregister", bb.broken_opener(worker_registry=bb.DeregisterIgnoredRegistry)),
    "lookup-ignores-node-type": ("worker_registry.lookup", bb.broken_opener(worker_registry=bb.NodeTypeIgnoredRegistry)),
    "bus-drops-second-subscriber": ("message_bus.fanout", bb.broken_opener(message_bus=bb.FirstSubscriberOnlyBus)),
    "bus-loses-order": ("message_bus.order", bb.broken_opener(message_bus=bb.ReorderingBus)),
    "bus-exact-match-only": ("message_bus.patterns", bb.broken_opener(message_bus=bb.ExactMatchBus)),
    "unsubscribe-ignored": ("message_bus.unsubscribe", bb.broken_opener(message_bus=bb.StickyBus)),
    "slow-subscriber-blocks": ("message_bus.slow-subscriber", bb.broken_opener(message_bus=bb.BlockingBus)),
    "bus-prefix-leak": ("message_bus.prefix-isolation", bb.broken_opener(leak_prefix="message_bus")),
    "double-claim": ("concurrency.exclusive-claim", bb.broken_opener(task_queue=bb.VisibleWhileClaimedQueue)),
    "tasks-lost": ("concurrency.no-loss", bb.broken_opener(task_queue=bb.DelayedNackLosesTaskQueue)),
    "racy-cas": ("concurrency.cas-race", bb.broken_opener(state_store=bb.RacyCompareStore)),
    # The four examples of a backend that passed the suite before, each now caught.
    "priority-15-after-9": ("task_queue.priority-fifo", bb.broken_opener(task_queue=bb.StringPriorityQueue)),
    "final-nack-requeues": ("task_queue.final-nack", bb.broken_opener(task_queue=bb.FinalNackRequeuesQueue)),
    "checkpoints-sorted-as-text": ("state_store.checkpoint-order", bb.broken_opener(state_store=bb.StringSortedCheckpointsStore)),
    "prefix-app-1-sees-app-12": ("state_store.prefix-isolation", bb.broken_opener(nested_prefix_leak="state_store")),
    # Kind 1, every parameter the core passes: a missing keyword, a wait that ignores delays,
    # a requeue that keeps the old result, a listing filter, publish_many.
    "nack-without-final": ("task_queue.signatures", bb.broken_opener(task_queue=bb.NoFinalParameterQueue)),
    "wait-ignores-delays": ("task_queue.claim-wait", bb.broken_opener(task_queue=bb.WaitIgnoresDelaysQueue)),
    "requeue-keeps-result": ("task_queue.requeue", bb.broken_opener(task_queue=bb.RequeueKeepsResultQueue)),
    "dead-letters-prefix-filter": ("task_queue.dead-letter-listing", bb.broken_opener(task_queue=bb.PrefixDeadLetterFilterQueue)),
    # Round 2 of outside bugs: parameters and listings a backend got subtly wrong.
    "claim-max-tasks-zero-claims-one": ("task_queue.priority-fifo", bb.broken_opener(task_queue=bb.ZeroMaxTasksClaimsOneQueue)),
    "wait-results-first-only": ("task_queue.ack-result", bb.broken_opener(task_queue=bb.FirstResultOnlyQueue)),
    "release-uncounts-first-attempt-only": ("task_queue.release", bb.broken_opener(task_queue=bb.ReleaseUncountsFirstAttemptOnlyQueue)),
    "requeue-at-priority-zero": ("task_queue.requeue", bb.broken_opener(task_queue=bb.RequeueAtPriorityZeroQueue)),
    "dead-letters-limit-before-filter": ("task_queue.dead-letter-listing", bb.broken_opener(task_queue=bb.DeadLettersLimitBeforeFilterQueue)),
    "conflict-without-actual": ("state_store.cas", bb.broken_opener(state_store=bb.ConflictWithoutActualStore)),
    "save-returns-other-updated-at": ("state_store.round-trip", bb.broken_opener(state_store=bb.ReturnedUpdatedAtDiffersStore)),
    "heartbeat-resets-started-at": ("worker_registry.heartbeat", bb.broken_opener(worker_registry=bb.HeartbeatResetsStartedAtRegistry)),
    "close-keeps-buffer": ("message_bus.unsubscribe", bb.broken_opener(message_bus=bb.CloseKeepsBufferBus)),
    "publish-shares-dict": ("message_bus.fidelity", bb.broken_opener(message_bus=bb.SharedDictBus)),
    "publish-many-grouped": ("message_bus.publish-many", bb.broken_opener(message_bus=bb.GroupedPublishManyBus)),
    "store-other-defaults": ("state_store.signatures", bb.broken_opener(state_store=bb.OtherDefaultsStore)),
    "registry-required-argument": ("worker_registry.signatures", bb.broken_opener(worker_registry=bb.RequiredNodeTypeRegistry)),
    "publish-many-varargs": ("message_bus.signatures", bb.broken_opener(message_bus=bb.VarargsPublishManyBus)),
    # Kind 2, full value ranges: overlapping node-type names, counts past a page.
    "node-type-prefix-match": ("task_queue.node-types", bb.broken_opener(task_queue=bb.PrefixTypeQueue)),
    "workflows-first-page-only": ("state_store.list-by-status", bb.broken_opener(state_store=bb.FirstPageOnlyStore)),
    "queue-nested-prefix-leak": ("task_queue.prefix-isolation", bb.broken_opener(nested_prefix_leak="task_queue")),
    # Kind 3, boundaries in time.
    "lease-ends-early": ("task_queue.invisible-while-claimed", bb.broken_opener(task_queue=bb.EarlyLeaseExpiryQueue)),
    "fencing-only-while-live": ("state_store.fencing", bb.broken_opener(state_store=bb.LiveLeaseFencingStore)),
    "checkpoint-ttl-from-write": ("state_store.ttl", bb.broken_opener(state_store=bb.CheckpointTtlFromWriteStore)),
    "heartbeat-edge-refused": ("worker_registry.heartbeat", bb.broken_opener(worker_registry=bb.EdgeHeartbeatRegistry)),
    # Kind 4, everything a record holds round-trips.
    "metadata-dropped-with-checkpoint": ("state_store.round-trip", bb.broken_opener(state_store=bb.MetadataDroppedStore)),
    # Kind 5, bus delivery.
    "one-copy-per-bus": ("message_bus.overlap", bb.broken_opener(message_bus=bb.OneCopyBus)),
    "bounded-buffer": ("message_bus.burst", bb.broken_opener(message_bus=bb.BoundedBufferBus)),
    # Second round: plausible one-method bugs that passed the suite before.
    "purge-forgets-id": ("task_queue.purge", bb.broken_opener(task_queue=bb.PurgeForgetsIdQueue)),
    "purge-keeps-counting": ("task_queue.purge", bb.broken_opener(task_queue=bb.SoftPurgeQueue)),
    "requeue-races-purge": ("task_queue.purge", bb.broken_opener(task_queue=bb.RacyRequeueQueue)),
    "requeue-races-requeue": ("task_queue.requeue", bb.broken_opener(task_queue=bb.RacyRequeueQueue)),
    "claim-wait-polls-at-end": ("task_queue.claim-wait", bb.broken_opener(task_queue=bb.SleepyClaimQueue)),
    "wait-ignores-lease-expiry": ("task_queue.claim-wait", bb.broken_opener(task_queue=bb.WaitIgnoresLeasesQueue)),
    "wait-results-sleeps": ("task_queue.wait-results", bb.broken_opener(task_queue=bb.SleepyWaitResultsQueue)),
    "task-fields-lost": ("task_queue.round-trip", bb.broken_opener(task_queue=bb.ForgetfulFieldsQueue)),
    "requeue-at-front": ("task_queue.requeue", bb.broken_opener(task_queue=bb.RequeueAtFrontQueue)),
    "enqueue-raw-priority-ignored": ("task_queue.undecodable", bb.broken_opener(task_queue=bb.RawPriorityIgnoredQueue)),
    "nack-keeps-place": ("task_queue.nack-redelivery", bb.broken_opener(task_queue=bb.NackKeepsPlaceQueue)),
    "node-types-casefolded": ("task_queue.node-types", bb.broken_opener(task_queue=bb.CasefoldTypesQueue)),
    "delete-keeps-checkpoints": ("state_store.delete", bb.broken_opener(state_store=bb.DeleteKeepsCheckpointsStore)),
    "delete-keeps-lease": ("state_store.delete", bb.broken_opener(state_store=bb.DeleteKeepsLeaseStore)),
    "reacquire-keeps-deadline": ("state_store.lease", bb.broken_opener(state_store=bb.ReacquireKeepsDeadlineStore)),
    "fenced-save-writes-checkpoint": ("state_store.fencing", bb.broken_opener(state_store=bb.FencedCheckpointLeaksStore)),
    "checkpoints-limit-zero-means-all": ("state_store.checkpoint-order", bb.broken_opener(state_store=bb.LimitZeroMeansAllStore)),
    "checkpoints-first-page-only": ("state_store.checkpoint-order", bb.broken_opener(state_store=bb.CheckpointsFirstPageStore)),
    "worker-metadata-dropped": ("worker_registry.register", bb.broken_opener(worker_registry=bb.MetadataDroppedRegistry)),
    "register-trusts-client-clock": ("worker_registry.register", bb.broken_opener(worker_registry=bb.ClientClockRegistry)),
    "workers-sorted-casefolded": ("worker_registry.listing", bb.broken_opener(worker_registry=bb.CasefoldSortRegistry)),
    "registry-colon-prefix-leak": ("worker_registry.prefix-isolation", bb.broken_opener(separator_prefix_leak="worker_registry")),
    "workers-first-page-only": ("worker_registry.listing", bb.broken_opener(worker_registry=bb.FirstPageRegistry)),
    "bus-drops-none-values": ("message_bus.fidelity", bb.broken_opener(message_bus=bb.NoNoneBus)),
    "get-zero-timeout-blind": ("message_bus.receive", bb.broken_opener(message_bus=bb.PollBlindBus)),
    "iteration-ends-on-lull": ("message_bus.receive", bb.broken_opener(message_bus=bb.LullEndsBus)),
    # The node cache: the latest set wins, pairs stay apart, clear stays in its namespace, ttl counts.
    "cache-first-set-wins": ("state_store.cache", bb.broken_opener(state_store=bb.FirstSetWinsCacheStore)),
    "cache-joined-keys": ("state_store.cache-isolation", bb.broken_opener(state_store=bb.JoinedKeyCacheStore)),
    "cache-clear-by-text-prefix": ("state_store.cache-clear", bb.broken_opener(state_store=bb.PrefixClearCacheStore)),
    "cache-ttl-ignored": ("state_store.cache-ttl", bb.broken_opener(state_store=bb.TtlIgnoredCacheStore)),
}


def violations_for(clause_id: str, opener: Callable[..., Backend], name: str) -> list[ContractViolation]:
    """Run every check proving ``clause_id`` against the variant; the violations they raised."""
    context = CheckContext(
        BackendFactory(f"memory://broken-{name}", opener=opener),
        Requirements(delivery_timeout=0.5),
        current_profile("default"),
        {"phases": [Phase.explicit, Phase.generate]},
    )
    found: list[ContractViolation] = []
    for check in checks_for_clause(clause_id):
        try:
            run_check(check, context)
        except ContractViolation as exc:
            found.append(exc)
        except CheckSkipped:
            pass
    return found


@pytest.mark.parametrize("name", sorted(CASES))
def test_broken_variant_is_caught_naming_its_clause(name: str) -> None:
    clause_id, opener = CASES[name]
    # Timed checks (TTLs, lease expiry) decline to judge a run the machine slowed past their
    # margins and report nothing: a broken variant must be caught by one of a few runs; an
    # uncaught one is reported by all of them.
    for _ in range(3):
        found = violations_for(clause_id, opener, name)
        named = sorted({v.clause.id for v in found})
        if clause_id in named:
            break
    assert clause_id in named, f"variant {name!r} breaks {clause_id} but the suite reported {named or 'nothing'}"


def test_every_clause_has_a_broken_variant() -> None:
    from distributed_agents.conformance import CLAUSES

    covered = {clause_id for clause_id, _ in CASES.values()}
    assert sorted(set(CLAUSES) - covered) == [], "every clause needs a broken variant that proves the suite catches it"
    assert covered <= set(CLAUSES), f"variants name unknown clauses: {sorted(covered - set(CLAUSES))}"


def test_the_reference_backend_passes_the_same_checks() -> None:
    """Control: the unbroken opener passes every check that proves a clause the variants break (each once)."""
    opener: Any = bb.broken_opener()
    clauses = {c for c, _ in CASES.values()}
    checks = {check.name: check for check in all_checks() if clauses & set(check.clauses)}
    context = CheckContext(BackendFactory("memory://broken-control", opener=opener), Requirements(delivery_timeout=0.5),
                           current_profile("default"))
    for check in checks.values():
        run_check(check, context)
