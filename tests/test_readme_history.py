"""The README's History and time travel, Client API and Drawing blocks run as written and show
what they print."""

from __future__ import annotations

import contextlib
import io
from typing import Any

from support.aio import run
from support.readme import code_blocks, python_blocks, run_block


def history_namespace() -> tuple[dict[str, Any], str]:
    namespace: dict[str, Any] = {}
    (block,) = python_blocks("History and time travel")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        run(run_block(block, namespace))
    return namespace, printed.getvalue()


def test_history_block_prints_the_documented_history_and_time_travels() -> None:
    namespace, printed = history_namespace()
    (shown,) = [source for language, source in code_blocks("History and time travel") if language == "text"]
    assert printed == shown
    assert namespace["rewritten"]["log"] == ["draft 1", "draft 2", "start over", "draft 1", "draft 2"]
    assert dict(namespace["forked"]) == {"drafts": 2, "log": ["draft 1", "draft 2"], "published": True}


def test_client_api_blocks_submit_page_and_call_without_an_event_loop() -> None:
    namespace, _ = history_namespace()
    submitting, blocking = python_blocks("Client API")
    run(run_block(submitting, namespace))
    assert namespace["status"].workflow_id == namespace["workflow_id"] and namespace["result"]["published"] is True
    pages = [[info.workflow_id for info in namespace[name]] for name in ("page", "more")]
    assert pages == [["essay-1", "essay-2"], [namespace["workflow_id"]]]
    exec(compile(blocking, "README.md", "exec"), namespace)  # no loop runs here: as in a script
    assert namespace["final"]["published"] is True and namespace["latest"].status == "completed"


def test_drawing_block_prints_the_drawings_the_readme_shows() -> None:
    namespace: dict[str, Any] = {}
    (block,) = python_blocks("Drawing")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        run(run_block(block, namespace))
    blocks = dict((language, source) for language, source in code_blocks("Drawing") if language != "python")
    assert printed.getvalue() == blocks["mermaid"] + "\n" + blocks["text"] + "\n"
    assert printed.getvalue().startswith("---\ntitle: \"research\"\n") and "join0 --> n3" in blocks["mermaid"]
