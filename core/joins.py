"""Join barriers: ``add_edge(["a", "b"], "c")`` runs ``c`` once all of a and b have run.

A join is identified by its target and the *set* of its sources: declaring the same
join twice, or with its sources in another order, gives one join. Its progress is the
set of sources that ran since the join last fired; it lives in the checkpoint's
frontier as ``{"joins": {key: [sources seen, sorted]}}`` under ``join_key``, so any
process can continue a workflow half-way through a join.

Joins advance once per super-step, as barriers: after a step, each join adds *the set*
of its sources that ran in that step to its progress and fires (its target runs in the
next step, progress starts empty again) when progress covers every source. Whether a
join fires therefore depends only on which nodes ran in which step, never on the order
in which nodes were declared or finished; a source that runs again before the join
fires counts once.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

__all__ = ["Join", "advance_joins", "join_key"]


def join_key(target: str, sources: Iterable[str]) -> str:
    """The frontier key of the join of ``sources`` into ``target``.

    The JSON text of ``[target, [sources, sorted, without duplicates]]``: distinct joins
    never share a key, whatever characters their node names contain.
    """
    return json.dumps([target, sorted(set(sources))], ensure_ascii=False, separators=(",", ":"))


def legacy_join_key(target: str, sources: Iterable[str]) -> str:
    """The ambiguous key older versions stored (``"target<-a+b"``), read for compatibility."""
    return f"{target}<-{'+'.join(sorted(set(sources)))}"


@dataclass(frozen=True)
class Join:
    """One join: ``target`` runs after every node of ``sources`` ran since it last fired."""

    target: str
    sources: frozenset[str]

    @property
    def key(self) -> str:
        """Where the join's progress is kept in the frontier."""
        return join_key(self.target, self.sources)


def advance_joins(
    joins: Sequence[Join], ran: Iterable[str], progress: Mapping[str, Sequence[str]]
) -> tuple[list[str], dict[str, list[str]]]:
    """The targets of ``joins`` that fire after a step that ran ``ran``, and the new progress.

    ``progress`` is the frontier's ``"joins"`` mapping as stored by the previous step
    (keys of joins not in ``joins`` are dropped; keys in the older ``"target<-a+b"``
    form are read as the join they name). The result's progress holds only joins that
    have seen some but not all of their sources, each as a sorted list.
    """
    ran_now = set(ran)
    seen_before = _read_progress(joins, progress)
    fired: list[str] = []
    after: dict[str, list[str]] = {}
    for join in joins:
        seen = seen_before.get(join.key, frozenset()) | (join.sources & ran_now)
        if seen >= join.sources:
            fired.append(join.target)
        elif seen:
            after[join.key] = sorted(seen)
    return fired, after


def _read_progress(joins: Sequence[Join], progress: Mapping[str, Sequence[str]]) -> dict[str, frozenset[str]]:
    by_key = {join.key: join for join in joins}
    legacy: dict[str, list[Join]] | None = None  # built only if an old checkpoint needs it
    read: dict[str, frozenset[str]] = {}
    for key, seen in progress.items():
        if key in by_key:
            matching = [by_key[key]]
        else:
            if legacy is None:
                legacy = {}
                for join in joins:
                    legacy.setdefault(legacy_join_key(join.target, join.sources), []).append(join)
            # Old keys could be shared by several joins (that was their flaw); each gets the progress.
            matching = legacy.get(key, [])
        for join in matching:
            read[join.key] = read.get(join.key, frozenset()) | (join.sources & set(seen))
    return read
