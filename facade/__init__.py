"""distributed-agents: agent workflows as graphs, on one machine or across many.

The public API::

    from distributed_agents import Graph, State, Orchestrator, NodeRegistry, Worker
    from distributed_agents.core.graph import END, START

Backends are chosen by URL (``memory://`` by default; ``redis://`` and ``nats://``
with their extras) and discovered through the ``distributed_agents`` entry-point group.
"""

from __future__ import annotations

from distributed_agents import plugins as _plugins
from distributed_agents.core.backend_resolver import install_backend_opener as _install_backend_opener

# Core code opens backends through this hook; it must be in place before any use.
_install_backend_opener(_plugins.open_backend)

from distributed_agents.core.cache import CachePolicy  # noqa: E402
from distributed_agents.core.checkpointers import InMemoryCache, InMemorySaver, MemorySaver  # noqa: E402
from distributed_agents.core.graph import END, START, Graph, StateGraph  # noqa: E402
from distributed_agents.core.history import PregelTask, StateSnapshot  # noqa: E402
from distributed_agents.core.interrupts import Interrupt, interrupt  # noqa: E402
from distributed_agents.core.managed import IsLastStep, RemainingSteps  # noqa: E402
from distributed_agents.core.messages import (  # noqa: E402
    REMOVE_ALL_MESSAGES,
    MessagesState,
    RemoveMessage,
    add_messages,
)
from distributed_agents.core.node_runner import (  # noqa: E402
    NodeContext,
    current_context,
    get_runtime,
    get_stream_writer,
)

# LangGraph's Runtime (``def node(state, runtime: Runtime[Context])``) is a node's NodeContext here.
Runtime = NodeContext
from distributed_agents.core.orchestrator import Orchestrator  # noqa: E402
from distributed_agents.core.ports.state_store import WorkflowStatus  # noqa: E402
from distributed_agents.core.registry import NodeRegistry  # noqa: E402
from distributed_agents.core.retry import RetryPolicy  # noqa: E402
from distributed_agents.core.state import State  # noqa: E402
from distributed_agents.core.status import WorkflowStatusInfo  # noqa: E402
from distributed_agents.core.stream_writer import StreamWriter  # noqa: E402
from distributed_agents.core.streaming import ChunkStream, StreamGap, StreamGapError  # noqa: E402
from distributed_agents.core.types import Command, Send  # noqa: E402
from distributed_agents.core.worker import Worker  # noqa: E402
from distributed_agents.plugins import available_backends, open_backend  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "CachePolicy",
    "ChunkStream",
    "Command",
    "END",
    "Graph",
    "InMemoryCache",
    "InMemorySaver",
    "Interrupt",
    "IsLastStep",
    "MemorySaver",
    "MessagesState",
    "NodeContext",
    "NodeRegistry",
    "Orchestrator",
    "PregelTask",
    "REMOVE_ALL_MESSAGES",
    "RemainingSteps",
    "RemoveMessage",
    "RetryPolicy",
    "Runtime",
    "START",
    "Send",
    "State",
    "StateGraph",
    "StateSnapshot",
    "StreamGap",
    "StreamGapError",
    "StreamWriter",
    "Worker",
    "WorkflowStatus",
    "WorkflowStatusInfo",
    "add_messages",
    "available_backends",
    "current_context",
    "get_runtime",
    "get_stream_writer",
    "interrupt",
    "open_backend",
]
