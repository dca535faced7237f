"""The NATS subject permissions that confine a user to one prefix (a tenant).

``tenant_permissions(prefix)`` lists every subject this adapter publishes to or
subscribes to for ``prefix``: its own subjects (``BASE.>``), its KV buckets' subjects,
the JetStream API subjects naming its stream and buckets (NATS wildcards match whole
tokens only, so each stream is listed), acks and flow control of its consumers, and its
reply inbox. A user given exactly these permissions can run workers and orchestrators
on ``prefix`` and nothing else: any request about another prefix's stream or bucket is
refused by the server ("Permissions Violation"). Connect such a user with
``?inbox_prefix=`` set to ``tenant_inbox(prefix)``, so replies to it travel on subjects
no other tenant may subscribe to. docs/security.md shows the resulting server
configuration; tests/adapters/nats/test_security_isolation.py runs it.

Limit: JetStream does not check a stream's configured subjects against its creator's
publish permissions, so a hostile user of one account could reconfigure its own stream
to capture another prefix's subjects. Permissions keep honest tenants (and mistakes)
apart; tenants that do not trust each other belong in separate NATS accounts.
"""

from __future__ import annotations

from distributed_agents.adapters.nats.naming import Names

__all__ = ["server_config_permissions", "tenant_inbox", "tenant_permissions"]


def tenant_inbox(prefix: str) -> str:
    """The reply-subject prefix for ``prefix``'s users (``?inbox_prefix=`` in their URL)."""
    return f"_INBOX_{Names(prefix).base}"


def tenant_permissions(prefix: str) -> dict[str, list[str]]:
    """``{"publish": [...], "subscribe": [...]}``: the subjects a user of ``prefix`` needs."""
    names = Names(prefix)
    buckets = [names.task_bucket, names.claim_bucket, names.dead_bucket, names.state_bucket, names.worker_bucket]
    streams = [names.task_stream, *(f"KV_{bucket}" for bucket in buckets)]
    inbox = tenant_inbox(prefix)
    publish = [f"{names.base}.>"]
    for stream in streams:
        publish += [
            f"$JS.API.STREAM.*.{stream}",  # CREATE, UPDATE, INFO, PURGE, DELETE
            f"$JS.API.STREAM.MSG.*.{stream}",  # GET, DELETE
            f"$JS.API.DIRECT.GET.{stream}",
            f"$JS.API.DIRECT.GET.{stream}.>",
            f"$JS.API.CONSUMER.*.{stream}",  # CREATE (ephemeral), LIST, NAMES
            f"$JS.API.CONSUMER.*.{stream}.>",  # CREATE.<stream>.<name>[.filter], INFO, DELETE
            # Not CONSUMER.*.*.<stream>.>: it would match CREATE.<another stream>.<a consumer named like ours>.
            f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.>",
            f"$JS.API.CONSUMER.MSG.NEXT.{stream}.>",
            f"$JS.ACK.{stream}.>",
            f"$JS.FC.{stream}.>",
        ]
    publish += [f"$KV.{bucket}.>" for bucket in buckets]
    subscribe = [f"{names.base}.>", f"{inbox}.>"]
    return {"publish": publish, "subscribe": subscribe}


def server_config_permissions(prefix: str) -> str:
    """``tenant_permissions(prefix)`` as a nats-server configuration ``permissions`` block."""
    rules = tenant_permissions(prefix)

    def subjects(kind: str) -> str:
        return ", ".join(f'"{subject}"' for subject in rules[kind])

    return (f"permissions: {{ publish: {{ allow: [{subjects('publish')}] }}, "
            f"subscribe: {{ allow: [{subjects('subscribe')}] }} }}")
