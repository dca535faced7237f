"""Entry point: announces the toy:// scheme; the factory module is imported only when used."""

from __future__ import annotations

from collections.abc import Sequence

from distributed_agents.plugins import BackendSpec, hookimpl


@hookimpl
def distributed_agents_backends() -> Sequence[BackendSpec]:
    """The toy backend."""
    return [
        BackendSpec(
            name="toy",
            schemes=("toy",),
            factory="toy_backend.backend:open_toy_backend",
            install_hint="pip install toy-distributed-agents-backend",
            description="toy backend for the plugin tests",
        )
    ]
