"""The README's Streaming block runs as written and prints what the README shows."""

from __future__ import annotations

import contextlib
import io
from typing import Any

from support.aio import run
from support.readme import code_blocks, python_blocks, run_block


def test_streaming_block_streams_tokens_updates_and_attaches_by_id() -> None:
    namespace: dict[str, Any] = {}
    (block,) = python_blocks("Streaming")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        run(run_block(block, namespace))
    (shown,) = [source for language, source in code_blocks("Streaming") if language == "text"]
    assert printed.getvalue() == shown
    assert "answer (step 0): 'Streams'" in shown and shown.endswith("'STREAMS ARRIVE TOKEN BY TOKEN.'}\n")
