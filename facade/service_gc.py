"""Garbage-collector settings of the long-running processes the command line starts.

``distributed-agents worker`` and ``distributed-agents orchestrator`` call ``settle_for_service``
once their application is loaded, before they serve:

* ``gc.freeze()``: what start-up made (modules, the app's graphs and functions, the backend
  client) moves to the collector's permanent generation, which its passes skip. Those objects
  live as long as the process; a full pass used to walk all of them again (tens of thousands of
  objects: about 10 ms a pass on a small machine).
* ``gc.set_threshold(GEN0_THRESHOLD, 10, 10)``: a young-generation pass after 10,000 net
  allocations of container objects instead of CPython's 700. Every task in flight holds a few
  dozen containers (its claim, payload, futures, the backend's bookkeeping), so each pass walked
  the same live objects again; passes were about a tenth of a worker's CPU per task on a
  NATS fan-out. Cyclic garbage waits for a pass a little longer (bounded by the threshold).

Measured with ``benchmarks/distributed_benchmark.py --start nats --workers 1``: the worker
process's time in collector passes over one run fell from about 0.16 s to 0.03 s (``gc.callbacks``).
A process that embeds ``DistributedOrchestrator`` or ``Worker`` keeps its own settings; it can
call this function itself (after loading what it serves) for the same effect.

``DA_GC_DEFAULTS=1`` in the environment keeps CPython's settings (for a node that relies on
prompt collection of reference cycles, say).
"""

from __future__ import annotations

import gc
import logging
import os

__all__ = ["GEN0_THRESHOLD", "settle_for_service"]

log = logging.getLogger(__name__)

#: Net allocations of container objects between young-generation passes (CPython's default: 700).
GEN0_THRESHOLD = 10_000


def settle_for_service() -> bool:
    """Freeze what the process made so far out of the collector's passes and raise the
    young-generation threshold to ``GEN0_THRESHOLD`` (a higher one is kept; the older
    generations' are left as they are); once start-up is done. Returns False, changing
    nothing, when ``DA_GC_DEFAULTS`` is set to a true value (``1``, ``true``, ``yes``) or the
    collector is off (``gc.disable()``, a threshold of 0: the process manages it). Raises nothing."""
    young, older, oldest = gc.get_threshold()
    if (os.environ.get("DA_GC_DEFAULTS", "").strip().lower() in ("1", "true", "yes")
            or not gc.isenabled() or young == 0):
        return False
    gc.collect()  # what start-up left as garbage goes first: a frozen object is never collected
    gc.freeze()
    gc.set_threshold(max(GEN0_THRESHOLD, young), older, oldest)
    log.debug("garbage collector: %d start-up objects frozen, young-generation threshold %d "
              "(DA_GC_DEFAULTS=1 keeps CPython's settings)", gc.get_freeze_count(), gc.get_threshold()[0])
    return True
