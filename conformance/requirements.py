"""What a backend declares about itself, once, so that missing features are skipped visibly.

The SQLAlchemy dialect-suite idea: the suite assumes every capability; a backend that
lacks an optional one says so here, with a reason, and the checks that need it are
reported as skipped (never counted as passed). Timing knobs say how much slack the
engine needs around deadlines, so the same checks run on in-process and networked
backends.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

__all__ = ["CAPABILITIES", "Requirements"]

CAPABILITIES: Mapping[str, str] = {
    "undecodable_payloads": "TaskQueue.enqueue_raw accepts foreign bytes, dead-lettered at claim time",
    "dead_letter_requeue": "TaskQueue.requeue_dead_letter puts a dead letter back on the queue",
    "result_expiry": "task results expire after result_ttl",
    "state_ttl": "workflow records expire after state_ttl",
    "pattern_subscriptions": "MessageBus.subscribe accepts '*' and '>' patterns",
    "shared_prefix": "two Backend objects opened on one URL and prefix see the same data",
    "node_cache": "StateStore.cache_get/cache_set/cache_clear keep node outputs (add_node(cache_policy=))",
}


@dataclass(frozen=True)
class Requirements:
    """Capabilities (all assumed present) and timing of the backend under test.

    ``unsupported`` maps a capability name from ``CAPABILITIES`` to the reason the
    backend lacks it. ``timing_slack`` is the seconds by which the engine may be late
    or early on a deadline (lease, delay, TTL); ``short_timeout`` the lease/TTL the
    time-based checks use; ``delivery_timeout`` how long to wait for a message or task
    that must arrive.
    """

    unsupported: Mapping[str, str] = field(default_factory=dict)
    timing_slack: float = 0.05
    short_timeout: float = 0.3
    delivery_timeout: float = 2.0

    def __post_init__(self) -> None:
        unknown = sorted(set(self.unsupported) - set(CAPABILITIES))
        if unknown:
            raise ValueError(f"unknown capabilities {unknown}; known: {sorted(CAPABILITIES)}")
        if self.timing_slack < 0 or self.short_timeout <= 2 * self.timing_slack:
            raise ValueError("short_timeout must exceed twice timing_slack, and timing_slack must be >= 0")

    def supports(self, capability: str) -> bool:
        """Whether the backend has ``capability`` (a key of ``CAPABILITIES``)."""
        if capability not in CAPABILITIES:
            raise KeyError(f"unknown capability {capability!r}; known: {sorted(CAPABILITIES)}")
        return capability not in self.unsupported

    def skip_reason(self, capabilities: tuple[str, ...]) -> str | None:
        """Why a check needing ``capabilities`` must be skipped, or None if it can run."""
        missing = [c for c in capabilities if not self.supports(c)]
        if not missing:
            return None
        return "; ".join(f"backend lacks capability {c!r} ({self.unsupported[c]})" for c in missing)

    def without(self, **reasons: str) -> Requirements:
        """A copy that declares more capabilities unsupported: ``req.without(state_ttl="no TTL")``."""
        return replace(self, unsupported={**self.unsupported, **reasons})
