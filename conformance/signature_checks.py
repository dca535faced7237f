"""Signature parity checks: each port object of the backend accepts exactly the port's parameters."""

from __future__ import annotations

from distributed_agents.conformance.catalog import conformance_check
from distributed_agents.conformance.clauses import expect
from distributed_agents.conformance.context import Session
from distributed_agents.conformance.signatures import PORT_CLASSES, signature_mismatches, subscription_mismatches


async def _check_port(session: Session, port: str) -> None:
    backend = await session.open()
    problems = signature_mismatches(PORT_CLASSES[port], type(getattr(backend, port)))
    if port == "message_bus":
        subscription = await backend.message_bus.subscribe("conformance.signatures")
        try:
            problems += subscription_mismatches(type(subscription))
        finally:
            await subscription.close()
    expect(not problems, f"{port}.signatures", "; ".join(problems))


@conformance_check("task_queue", ("task_queue.signatures",))
async def check_task_queue_signatures(session: Session) -> None:
    """Every TaskQueue method has the port's parameters (nack(final=), claim(wait=), ...)."""
    await _check_port(session, "task_queue")


@conformance_check("state_store", ("state_store.signatures",))
async def check_state_store_signatures(session: Session) -> None:
    """Every StateStore method has the port's parameters."""
    await _check_port(session, "state_store")


@conformance_check("worker_registry", ("worker_registry.signatures",))
async def check_worker_registry_signatures(session: Session) -> None:
    """Every WorkerRegistry method has the port's parameters."""
    await _check_port(session, "worker_registry")


@conformance_check("message_bus", ("message_bus.signatures",))
async def check_message_bus_signatures(session: Session) -> None:
    """Every MessageBus and Subscription method has the port's parameters (publish_many included)."""
    await _check_port(session, "message_bus")
