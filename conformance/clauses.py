"""The contract as a list of named clauses, and the error that names a broken one.

Every check in the suite fails by raising ``ContractViolation`` with the id of the
clause it proves broken (``task_queue.priority-fifo``), so a report can say *which*
promise a backend breaks, not only that a test failed.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CLAUSES", "PORTS", "Clause", "ContractViolation", "clause", "expect"]

PORTS = ("task_queue", "state_store", "worker_registry", "message_bus", "concurrency")


@dataclass(frozen=True)
class Clause:
    """One promise of one port: ``id`` is ``"<port>.<name>"``; ``text`` states it."""

    id: str
    text: str

    @property
    def port(self) -> str:
        """The port the clause belongs to (the part of ``id`` before the dot)."""
        return self.id.split(".", 1)[0]


_TEXTS = {
    # TaskQueue
    "task_queue.signatures": "every TaskQueue method accepts exactly the port's parameters (names, kinds, defaults)",
    "task_queue.priority-fifo": "claim hands out the highest priority first (any integer), FIFO by enqueue order within a priority",
    "task_queue.node-types": "claim returns only the requested node types (exact names), several merged by priority then FIFO",
    "task_queue.claim-wait": "claim(wait=) returns promptly once a task becomes ready during the wait (enqueue, nack delay, lease end), [] when none does",
    "task_queue.wait-results": "wait_results returns promptly once a result is stored during the wait, {} after its timeout",
    "task_queue.round-trip": "every field of a task, of its result and of its dead letter reads back exactly as given",
    "task_queue.idempotent-enqueue": "enqueue is idempotent on task id (queued, delayed, claimed, dead; finished until its result expires)",
    "task_queue.enqueue-many": "enqueue_many is enqueue of each task: one flag per task in order (a repeated id, even within the batch, is False), after tasks of earlier calls",
    "task_queue.invisible-while-claimed": "a claimed task is invisible to other claimers until ack/nack/release/expiry",
    "task_queue.lease-expiry": "a task whose lease expired is delivered again (or dead-lettered at the limit)",
    "task_queue.lease-extension": "extend pushes the lease deadline forward so the task stays claimed",
    "task_queue.ack-result": "ack stores the result and removes the task, atomically",
    "task_queue.lost-lease-refused": "ack/nack/extend/release on a lost lease raise LeaseLostError and change nothing",
    "task_queue.nack-redelivery": "nack re-delivers at once, or not before its delay, at the end of its priority",
    "task_queue.release": "release gives the task back at once without counting the attempt",
    "task_queue.attempts": "attempts are counted across nacks and lease expiries (1 on first delivery)",
    "task_queue.dead-letter": "past max_attempts a task is dead-lettered with its error history and a failed result",
    "task_queue.final-nack": "nack(final=True) dead-letters at once, whatever attempts remain",
    "task_queue.dead-letter-listing": "dead_letters lists oldest first, exact node type filter, at most limit (default 100)",
    "task_queue.requeue": "a dead letter can be re-queued at the end of its priority with a fresh attempt count; its result is pending until the new run ends; of requeues of one letter at once exactly one returns True",
    "task_queue.purge": "a purged dead letter is no longer listed, counted or requeueable; its failed result and id stay until result_ttl; of a purge and a requeue of one letter at once exactly one returns True",
    "task_queue.undecodable": "enqueue_raw bytes keep their priority; undecodable ones are dead-lettered with a reason at claim time, never returned",
    "task_queue.stats": "queued, in-flight and dead-letter counts per node type are exact",
    "task_queue.result-expiry": "results are kept result_ttl seconds, then forgotten",
    "task_queue.cancel": "cancel removes a queued (not claimed) task",
    "task_queue.prefix-isolation": "two prefixes never see each other's tasks",
    # StateStore
    "state_store.signatures": "every StateStore method accepts exactly the port's parameters (names, kinds, defaults)",
    "state_store.cas": "save is compare-and-set on version: a stale version is refused and changes nothing",
    "state_store.round-trip": "every field of a record and of a checkpoint reads back exactly as saved",
    "state_store.checkpoint-order": "checkpoints are append-only, listed newest first by numeric step with limit/before (limit=0 is none, no limit is all)",
    "state_store.get-checkpoint": "get_checkpoint(workflow, step) returns exactly the checkpoint list_checkpoints holds for that step (full state), None when there is none",
    "state_store.delete": "delete removes the record, all its checkpoints and its lease; the id is then new",
    "state_store.fencing": "lease grants carry strictly increasing fencing tokens; a superseded holder cannot commit (neither record nor checkpoint)",
    "state_store.lease": "a workflow lease has one live holder, renewable (or re-acquired: same token, new deadline) until it expires, then free for anyone",
    "state_store.create-leased": "create_leased grants a fresh lease and creates the record under it as one step: None and nothing written while another owner holds the lease; WorkflowExistsError keeps no lease it granted",
    "state_store.save-releasing": "save_releasing is a fenced save that frees the lease once it succeeds; a refused one writes nothing and keeps the lease",
    "state_store.list-by-status": "list_workflows returns the records, filtered by status, oldest first",
    "state_store.ttl": "records, all their checkpoints and leases expire state_ttl seconds after the last save, not before",
    "state_store.prefix-isolation": "two prefixes never see each other's workflows",
    "state_store.cache": "cache_get returns exactly the bytes of the latest cache_set of that namespace and key, None if none",
    "state_store.cache-isolation": "two different (namespace, key) pairs never share a node cache entry, whatever characters they hold",
    "state_store.cache-clear": "cache_clear(namespace) removes every entry of that namespace and nothing else",
    "state_store.cache-ttl": "a node cache entry set with ttl is gone ttl seconds after its set, not before; without ttl it stays",
    # WorkerRegistry
    "worker_registry.signatures": "every WorkerRegistry method accepts exactly the port's parameters (names, kinds, defaults)",
    "worker_registry.register": "register records every field of a worker (node types, capacity, host, pid, started_at, metadata) and counts as a heartbeat",
    "worker_registry.listing": "list_workers lists every live worker (no page limit) sorted by id as exact strings",
    "worker_registry.heartbeat": "heartbeat keeps a registered worker listed; False for unknown workers",
    "worker_registry.expiry": "a worker without a heartbeat for heartbeat_ttl seconds is no longer listed",
    "worker_registry.deregister": "deregister removes a worker at once",
    "worker_registry.lookup": "list_workers(node_type=) returns exactly the live workers serving that type",
    "worker_registry.prefix-isolation": "two prefixes never see each other's workers",
    # MessageBus
    "message_bus.signatures": "every MessageBus method accepts exactly the port's parameters (names, kinds, defaults)",
    "message_bus.fanout": "every current subscriber gets every message",
    "message_bus.publish-many": "publish_many delivers each message like publish, in order, across channels and patterns",
    "message_bus.overlap": "a message matching several subscriptions is delivered once to each of them",
    "message_bus.burst": "a burst larger than any buffer reaches every subscriber in full and in order",
    "message_bus.order": "messages arrive in publish order per publisher",
    "message_bus.fidelity": "a message arrives exactly as published (None values, nesting, Unicode, numbers)",
    "message_bus.receive": "get(timeout=0) returns a buffered message; async iteration waits through lulls until close",
    "message_bus.patterns": "pattern subscriptions ('*' one token, '>' the rest) get exactly the matching channels",
    "message_bus.unsubscribe": "after close a subscription gets nothing more",
    "message_bus.slow-subscriber": "a subscriber that never reads does not stall publishers or other subscribers",
    "message_bus.prefix-isolation": "two prefixes never see each other's messages",
    # Concurrency
    "concurrency.exclusive-claim": "N concurrent claimers never hold the same task at once",
    "concurrency.no-loss": "every enqueued task is eventually acked or dead-lettered, never lost or duplicated",
    "concurrency.cas-race": "of two concurrent compare-and-set writers of one version exactly one wins",
}

CLAUSES: dict[str, Clause] = {key: Clause(key, text) for key, text in _TEXTS.items()}


def clause(clause_id: str) -> Clause:
    """The clause named ``clause_id``; ``KeyError`` for an unknown id (a typo in a check)."""
    return CLAUSES[clause_id]


# Lists that collect every violation raised while they are registered (see ``observing``):
# a state machine whose replay of a failing example goes another way (a timing rule) makes
# Hypothesis report a Flaky error; the violation it saw first is still the finding.
_OBSERVERS: list[list[ContractViolation]] = []


class ContractViolation(AssertionError):
    """A backend broke ``clause``; the message starts with ``[clause id]`` and says how."""

    def __init__(self, clause_id: str, detail: str) -> None:
        self.clause = clause(clause_id)
        self.detail = detail
        super().__init__(f"[{clause_id}] {self.clause.text}: {detail}")
        for seen in _OBSERVERS:
            seen.append(self)


def observing(seen: list[ContractViolation]) -> _Observing:
    """A context manager that appends every ``ContractViolation`` created inside it to ``seen``."""
    return _Observing(seen)


class _Observing:
    def __init__(self, seen: list[ContractViolation]) -> None:
        self.seen = seen

    def __enter__(self) -> list[ContractViolation]:
        _OBSERVERS.append(self.seen)
        return self.seen

    def __exit__(self, *exc_info: object) -> None:
        _OBSERVERS.remove(self.seen)


def expect(condition: object, clause_id: str, detail: str) -> None:
    """Raise ``ContractViolation(clause_id, detail)`` unless ``condition`` is truthy."""
    if not condition:
        raise ContractViolation(clause_id, detail)
