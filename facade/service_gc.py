"""Garbage-collector settings of the long-running processes the command line starts.

``distributed-agents worker`` and ``distributed-agents orchestrator`` call ``settle_for_service``
once their application is loaded, before they connect and serve: ``gc.freeze()`` moves what
start-up made (modules, the app's graphs and functions, their imports) to the collector's
permanent generation, which its passes skip. Those objects live as long as the process; each
full pass used to walk all of them again (tens of thousands of objects, about 10 ms a pass on
a small machine: with the passes of the young generations, about a tenth of a NATS worker's
CPU per no-op task). Garbage made later, a node's included, is collected as CPython always
does (its thresholds are left as they are).

Measured with ``benchmarks/distributed_benchmark.py --start nats --workers 1`` and
``gc.callbacks``: the worker's full passes took 0.07 s of a run of about 10,000 tasks before,
0.01 s after.

The cost: an object made during start-up and dropped later, inside a reference cycle (a
warm-up cache the app replaces, say), is never freed. ``--gc-defaults`` (``DA_GC_DEFAULTS=1``)
keeps CPython's settings for an app that does that. A process that embeds ``Worker`` or
``DistributedOrchestrator`` keeps its own settings; it can call ``settle_for_service()`` itself
once it has loaded what it serves.
"""

from __future__ import annotations

import gc
import logging
import os

from distributed_agents.core.errors import ConfigurationError
from distributed_agents.observability import FALSE, TRUE

__all__ = ["keep_defaults_from", "settle_for_service"]

log = logging.getLogger(__name__)

def keep_defaults_from(flag: bool | None) -> bool:
    """Whether to keep CPython's collector settings: ``flag`` (``--gc-defaults``) when given,
    else the ``DA_GC_DEFAULTS`` environment variable (``1``/``true``/``yes``/``on`` keep them;
    unset, empty, ``0``/``false``/``no``/``off`` do not; any case). ``ConfigurationError`` for
    another value, as for the command's other variables."""
    if flag is not None:
        return flag
    value = os.environ.get("DA_GC_DEFAULTS", "").strip().lower()
    if value not in TRUE + FALSE:
        raise ConfigurationError(f"environment variable DA_GC_DEFAULTS={value!r} is not on or off; set it to 1 "
                                 "(keep CPython's garbage-collector settings) or 0")
    return value in TRUE


def settle_for_service(keep_defaults: bool = False) -> bool:
    """Collect what start-up left as garbage, then freeze what the process made so far out of
    the collector's passes (``gc.freeze()``); once start-up is done. Returns False, changing
    nothing, when ``keep_defaults`` (``keep_defaults_from``) or the collector is off
    (``gc.disable()``, a threshold of 0: the process manages it). Logs what it did at DEBUG.
    Raises nothing."""
    if keep_defaults or not gc.isenabled() or gc.get_threshold()[0] == 0:
        log.debug("garbage collector: CPython's settings kept (%s)",
                  "--gc-defaults or DA_GC_DEFAULTS" if keep_defaults else "the collector is off")
        return False
    gc.collect()  # what start-up left as garbage goes first: a frozen object is never collected
    gc.freeze()
    log.debug("garbage collector: %d start-up objects frozen out of its passes (--gc-defaults or "
              "DA_GC_DEFAULTS=1 keeps CPython's settings)", gc.get_freeze_count())
    return True
