"""Random hex strings for ids, from a pool of operating-system randomness.

``os.urandom`` is a system call (several microseconds on a virtual machine) and
``uuid.uuid4`` wraps an object around it (about 25 microseconds in all there); every
new workflow needs two random ids (its id and its incarnation). The pool is read from
``os.urandom`` 4 KiB at a time, so the ids are as unpredictable as before. A forked
child starts with an empty pool (it must never hand out its parent's ids); threads
share the pool under a lock. Standard library only.
"""

from __future__ import annotations

import os
import threading

__all__ = ["random_hex"]

POOL_BYTES = 4096

_lock = threading.Lock()
_pool = b""
_taken = 0  # bytes of _pool handed out


def random_hex(nbytes: int) -> str:
    """``2 * nbytes`` lowercase hex digits of fresh ``os.urandom`` randomness (``nbytes`` >= 1)."""
    global _pool, _taken
    with _lock:
        start = _taken
        if start + nbytes > len(_pool):
            _pool, start = os.urandom(max(POOL_BYTES, nbytes)), 0
        _taken = start + nbytes
        return _pool[start:start + nbytes].hex()


def _forget_in_child() -> None:
    # The parent's pool (and a lock another of its threads may have held) stays behind.
    global _lock, _pool, _taken
    _lock, _pool, _taken = threading.Lock(), b"", 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)
