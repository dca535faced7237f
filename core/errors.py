"""Every exception the framework raises on purpose.

One base class, so ``except DistributedAgentsError`` catches everything we raise and
nothing we do not. Each message says what went wrong, where (graph, node, key, URL) and
what to do about it.

The tree::

    DistributedAgentsError
    ├── GraphError
    │   ├── GraphValidationError          compile() found a structural problem
    │   ├── GraphNotCompiledError         execute() on a graph that was not compiled
    │   └── GraphFrozenError              a compiled graph was changed
    ├── StateError
    │   ├── StateNotSerializableError     a value that JSON cannot carry was written
    │   └── StateValidationError          a key or value the graph's state schema refuses
    ├── ExecutionError
    │   ├── NodeNotFoundError             no function or worker serves a node's type
    │   ├── NodeExecutionError            a node failed after all its attempts
    │   │   └── NodeTimeoutError          ... because an attempt ran past its timeout
    │   ├── InvalidNodeOutputError        a node returned something other than a dict/None
    │   ├── PayloadTooLargeError          a result or state is over the backend's size limit
    │   ├── ReducerConflictError          two nodes wrote one key in a step, no reducer (alias InvalidUpdateError)
    │   ├── RoutingError                  a condition failed, wrote state or chose no node
    │   ├── StepLimitExceededError        a loop ran past the step limit (a RecursionError; alias GraphRecursionError)
    │   ├── WorkflowCancelledError        the workflow was cancelled
    │   ├── WorkflowFailedError           waiting on a workflow that failed
    │   ├── WorkflowLeaseHeldError        another orchestrator drives the workflow (holds its lease)
    │   └── WorkflowNotFoundError         no workflow with that id
    ├── BackendError
    │   ├── BackendNotFoundError          no installed backend serves a URL scheme
    │   ├── MissingExtraError             the backend's optional dependency is missing
    │   ├── BackendConfigError            a backend URL or option is malformed
    │   ├── BackendUnavailableError       the engine cannot be reached
    │   ├── LeaseLostError                a task or workflow lease expired or was taken
    │   ├── VersionConflictError          compare-and-set saw a newer version
    │   ├── FencingTokenRejectedError     a stale lease holder tried to write
    │   ├── WorkflowExistsError           creating a workflow id that already exists
    │   └── PayloadDecodeError            bytes from the engine are not a valid message
    └── ConfigurationError                an argument to a public API is invalid
"""

from __future__ import annotations

__all__ = [
    "BackendConfigError",
    "BackendError",
    "BackendNotFoundError",
    "BackendUnavailableError",
    "ConfigurationError",
    "DistributedAgentsError",
    "ExecutionError",
    "FencingTokenRejectedError",
    "GraphError",
    "GraphFrozenError",
    "GraphNotCompiledError",
    "GraphRecursionError",
    "GraphValidationError",
    "InvalidNodeOutputError",
    "InvalidUpdateError",
    "LeaseLostError",
    "MissingExtraError",
    "NodeExecutionError",
    "NodeNotFoundError",
    "NodeTimeoutError",
    "PayloadDecodeError",
    "PayloadTooLargeError",
    "ReducerConflictError",
    "RoutingError",
    "StateError",
    "StateNotSerializableError",
    "StateValidationError",
    "StepLimitExceededError",
    "VersionConflictError",
    "WorkflowCancelledError",
    "WorkflowExistsError",
    "WorkflowFailedError",
    "WorkflowLeaseHeldError",
    "WorkflowNotFoundError",
]


class DistributedAgentsError(Exception):
    """Base class of every error this framework raises on purpose."""


# --- graphs -----------------------------------------------------------------------


class GraphError(DistributedAgentsError):
    """A problem with a graph's definition or use."""


class GraphValidationError(GraphError, ValueError):
    """``compile()`` found a structural problem; ``culprit`` names the node or edge."""

    def __init__(self, message: str, *, graph: str = "", culprit: str = "") -> None:
        super().__init__(message)
        self.graph = graph
        self.culprit = culprit


class GraphNotCompiledError(GraphError):
    """A graph was executed (or described) before ``compile()`` was called."""


class GraphFrozenError(GraphError):
    """A compiled graph was modified; graphs are immutable once compiled."""


# --- state ------------------------------------------------------------------------


class StateError(DistributedAgentsError):
    """A problem with workflow state."""


class StateNotSerializableError(StateError, TypeError):
    """A value written to state cannot be represented as JSON; ``key`` names where."""

    def __init__(self, message: str, *, key: str) -> None:
        super().__init__(message)
        self.key = key


class StateValidationError(StateError, ValueError):
    """A key the graph's state schema does not declare, or a value of the wrong type.

    ``key`` is the state key, ``node`` the node whose write was refused (None for the
    input state) and ``graph`` the graph's name.
    """

    def __init__(self, message: str, *, key: str, graph: str, node: str | None = None) -> None:
        super().__init__(message)
        self.key = key
        self.graph = graph
        self.node = node


# --- execution --------------------------------------------------------------------


class ExecutionError(DistributedAgentsError):
    """A workflow could not run to completion."""


class RoutingError(ExecutionError):
    """A condition failed, wrote to the state, or chose a route that does not exist.

    ``node`` is the node it routes from (``"__start__"`` for a conditional entry),
    ``condition`` the condition's name; the workflow's error record carries both.
    """

    def __init__(self, message: str, *, node: str, condition: str) -> None:
        super().__init__(message)
        self.node = node
        self.condition = condition


class NodeNotFoundError(ExecutionError):
    """No function is registered for a node's type, locally or on a worker."""


class NodeExecutionError(ExecutionError):
    """A node failed on its last allowed attempt.

    ``node`` and ``attempts`` say where and how often; ``error_type``, ``error_message``
    and ``traceback_text`` carry the original exception, which may have been raised in
    another process.
    """

    def __init__(
        self,
        message: str,
        *,
        node: str,
        attempts: int,
        error_type: str = "",
        error_message: str = "",
        traceback_text: str = "",
    ) -> None:
        super().__init__(message)
        self.node = node
        self.attempts = attempts
        self.error_type = error_type
        self.error_message = error_message
        self.traceback_text = traceback_text


class NodeTimeoutError(NodeExecutionError):
    """A node's last attempt ran past its timeout and was cancelled."""


class InvalidNodeOutputError(ExecutionError, TypeError):
    """A node returned something other than a dict of updates or None."""


class PayloadTooLargeError(ExecutionError):
    """A node result or a workflow state encodes to more bytes than the backend accepts.

    ``size`` and ``limit`` are in bytes (UTF-8 JSON); ``node`` names the node whose
    result was too large, or is empty for a state too large to commit. Checked before
    anything is written, so the node is not retried and nothing half-written remains.
    """

    def __init__(self, message: str, *, size: int, limit: int, node: str = "") -> None:
        super().__init__(message)
        self.size = size
        self.limit = limit
        self.node = node


class ReducerConflictError(ExecutionError):
    """Two nodes wrote one key in the same step and the key has no reducer. Importable as
    ``InvalidUpdateError`` too, LangGraph's name for this error."""

    def __init__(self, message: str, *, key: str, nodes: tuple[str, ...]) -> None:
        super().__init__(message)
        self.key = key
        self.nodes = nodes


class StepLimitExceededError(ExecutionError, RecursionError):
    """The workflow ran more steps than allowed; ``nodes`` were still being triggered.

    A ``RecursionError`` too, and importable as ``GraphRecursionError``, as LangGraph's error
    for its recursion limit is: ported ``except GraphRecursionError`` / ``except
    RecursionError`` clauses catch it.
    """

    def __init__(self, message: str, *, limit: int, nodes: tuple[str, ...]) -> None:
        super().__init__(message)
        self.limit = limit
        self.nodes = nodes


#: LangGraph's name for the step limit's error (``langgraph.errors.GraphRecursionError``).
GraphRecursionError = StepLimitExceededError
InvalidUpdateError = ReducerConflictError  # LangGraph's name (langgraph.errors.InvalidUpdateError)


class WorkflowCancelledError(ExecutionError):
    """The workflow was cancelled before it finished."""


class WorkflowFailedError(ExecutionError):
    """The workflow ended in FAILED; ``status`` holds the recorded details."""

    def __init__(self, message: str, *, workflow_id: str, status: object = None) -> None:
        super().__init__(message)
        self.workflow_id = workflow_id
        self.status = status


class WorkflowLeaseHeldError(ExecutionError):
    """Another orchestrator drives the workflow (holds its lease); ``wait`` for it, or retry once the lease lapses."""


class WorkflowNotFoundError(ExecutionError, KeyError):
    """No workflow with that id is known to the state store."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


# --- backends ---------------------------------------------------------------------


class BackendError(DistributedAgentsError):
    """A problem talking to, or choosing, a coordination backend."""


class BackendNotFoundError(BackendError, LookupError):
    """No installed backend serves the URL's scheme."""


class MissingExtraError(BackendError, ImportError):
    """A backend's optional dependency is not installed; the message says what to install."""


class BackendConfigError(BackendError, ValueError):
    """A backend URL or option is malformed."""


class BackendUnavailableError(BackendError, ConnectionError):
    """The coordination engine could not be reached (after retries, where they apply)."""


class LeaseLostError(BackendError):
    """The caller's lease expired or was taken over; its write was refused."""


class VersionConflictError(BackendError):
    """A compare-and-set saw a version other than the one expected; nothing was written."""

    def __init__(self, message: str, *, expected: int, actual: int | None) -> None:
        super().__init__(message)
        self.expected = expected
        self.actual = actual


class FencingTokenRejectedError(BackendError):
    """A write carried a fencing token older than the newest lease issued; refused."""


class WorkflowExistsError(BackendError):
    """A workflow record was created under an id that is already taken."""


class PayloadDecodeError(BackendError, ValueError):
    """Bytes read from the engine are not a valid message of this framework."""


# --- configuration ----------------------------------------------------------------


class ConfigurationError(DistributedAgentsError, ValueError):
    """An argument to a public API is invalid; the message names it."""


_ALSO_AS: dict[tuple[type, type], type] = {}
# Not mixed in: what the framework (or Python itself) reads as something else than a node's
# failure - a backend outage (OSError, ConnectionError, TimeoutError), the end of an iterator,
# memory running out.
_NEVER_ALSO: tuple[type[BaseException], ...] = (OSError, StopIteration, StopAsyncIteration, MemoryError)


def node_error_class(base: type[NodeExecutionError], raised: BaseException | None) -> type[NodeExecutionError]:
    """``base``, or a subclass of it that is also of the type the node raised (``raised``, run in
    this process), so ``except ValueError`` around a run catches a node's ``ValueError``, as it
    does around LangGraph's ``invoke``, while ``except NodeExecutionError`` still does too. Only
    for ``Exception`` types outside this framework whose ``__init__`` takes the message alone,
    and not ``_NEVER_ALSO``'s (an ``OSError`` would read as a backend outage): else ``base``.
    Made once per pair."""
    kind = type(raised)
    if raised is None or not isinstance(raised, Exception) or kind is Exception \
            or isinstance(raised, (DistributedAgentsError, *_NEVER_ALSO)):
        return base
    key = (base, kind)
    made = _ALSO_AS.get(key)
    if made is None:
        try:
            made = type(base.__name__, (base, kind), {"__module__": base.__module__,
                                                      "__doc__": f"{base.__name__}, also a {kind.__qualname__}.",
                                                      "__str__": base.__str__})  # (not KeyError's repr of it)
            made("probe", node="", attempts=0)  # its __init__ chain must take the message alone
        except Exception:
            made = base
        _ALSO_AS[key] = made
    return made
