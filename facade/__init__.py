"""distributed-agents: agent workflows as graphs, on one machine or across many."""

from __future__ import annotations

from distributed_agents import plugins as _plugins
from distributed_agents.core.backend_resolver import install_backend_opener as _install_backend_opener

_install_backend_opener(_plugins.open_backend)

__all__: list[str] = []
