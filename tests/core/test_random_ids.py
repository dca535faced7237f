"""core.random_ids: ids from a pool of os.urandom bytes, never repeated across a fork."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap

import pytest

from distributed_agents.core import random_ids
from distributed_agents.core.incarnation import new_incarnation
from distributed_agents.core.state import new_workflow_id


def test_ids_are_hex_of_the_asked_length_and_unique_across_pool_refills() -> None:
    count = 3 * random_ids.POOL_BYTES // 16 + 7  # several refills, one mid-id
    ids = [random_ids.random_hex(16) for _ in range(count)]
    assert all(re.fullmatch(r"[0-9a-f]{32}", one) for one in ids)
    assert len(set(ids)) == count
    assert re.fullmatch(r"[0-9a-f]{%d}" % (2 * (random_ids.POOL_BYTES + 5)), random_ids.random_hex(
        random_ids.POOL_BYTES + 5))
    assert re.fullmatch(r"wf_[0-9a-f]{32}", new_workflow_id()) and re.fullmatch(r"[0-9a-f]{8}", new_incarnation())


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="os.fork is POSIX only")
def test_a_forked_child_never_hands_out_its_parents_next_ids() -> None:
    # In a fresh interpreter (forking the test process itself is unsafe with its threads).
    script = textwrap.dedent("""
        import os
        from distributed_agents.core.random_ids import random_hex
        random_hex(16)  # the pool is filled before the fork
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.write(write, " ".join(random_hex(16) for _ in range(3)).encode())
            os._exit(0)
        os.waitpid(pid, 0)
        child = os.read(read, 4096).decode().split()
        parent = [random_hex(16) for _ in range(3)]
        print(len(set(child) | set(parent)))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "6"
