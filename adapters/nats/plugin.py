"""Entry point of the NATS backend, registered like any third-party backend.

Importing this module never imports the NATS client library; the factory module is
imported only when a URL of its scheme is opened.
"""

from __future__ import annotations

from collections.abc import Sequence

from distributed_agents.plugins import BackendSpec, hookimpl

__all__ = ["distributed_agents_backends"]


@hookimpl
def distributed_agents_backends() -> Sequence[BackendSpec]:
    """The NATS backend."""
    return [
        BackendSpec(
            name="nats",
            schemes=("nats", "tls"),
            factory="distributed_agents.adapters.nats.backend:open_nats_backend",
            install_hint="pip install 'distributed-agents[nats]' (from a checkout: pip install '.[nats]')",
            description="NATS coordination backend",
        )
    ]
