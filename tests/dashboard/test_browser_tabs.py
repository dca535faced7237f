"""Many dashboard tabs in one Chromium context: they share one event stream, so all load, go live and act.

Chromium opens at most 6 HTTP/1.1 connections per host; with one Server-Sent Events
connection per tab, the 7th tab and every fetch stalled. The dashboard here is embedded
over a ``memory://`` orchestrator on its own event-loop thread (nodes in this process):
cheap, and the browser side is what is under test.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

import pytest

from distributed_agents import Graph, Orchestrator, State, interrupt
from support.embedded_dashboard import EmbeddedDashboard

pytestmark = [pytest.mark.timeout(180)]

CHROMIUM = "/usr/bin/chromium"
TOKEN = "tabs-token"
WAIT_MS = 60_000  # how long a page may take to show something (a wait, not a timing assertion)
TABS = 8


def draft(state: State) -> dict[str, Any]:
    return {"text": f"draft about {state['topic']}"}


def ask(state: State) -> dict[str, Any]:
    return {"answer": interrupt({"question": "publish?"})}


def sprawl(state: State) -> dict[str, Any]:
    return {"blob": "x" * 5000, "k" * 300: list(range(2000)), "text": "word " * 3000}


def crash(state: State) -> dict[str, Any]:
    raise ValueError("unreachable:" + "/segment" * 400)


wide = Graph("wide").add_node("sprawl", sprawl).set_entry_point("sprawl").set_finish_point("sprawl").compile()
failing = Graph("failing").add_node("crash", crash).set_entry_point("crash").set_finish_point("crash").compile()
essay = Graph("essay").add_node("draft", draft).set_entry_point("draft").set_finish_point("draft").compile()
approval = (Graph("approval").add_node("draft", draft).add_node("ask", ask).set_entry_point("draft")
            .add_edge("draft", "ask").set_finish_point("ask").compile())


def Embedded() -> EmbeddedDashboard:
    """An in-process orchestrator and a dashboard with a token, on their own loop thread."""
    return EmbeddedDashboard(Orchestrator(), token=TOKEN, graphs=[essay, approval, wide, failing])


@pytest.fixture
def embedded() -> Any:
    if not os.path.exists(CHROMIUM):
        pytest.fail("the browser tests need Debian's chromium: apt-get install chromium (scripts/test installs it)",
                    pytrace=False)
    board = Embedded()
    try:
        yield board
    finally:
        board.close()


def test_eight_tabs_all_load_go_live_get_updates_and_act(embedded: Embedded) -> None:
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=WAIT_MS)
    base = embedded.board.url
    suffix = uuid.uuid4().hex[:6]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 800})
            context.set_default_timeout(WAIT_MS)
            pages = []
            for _ in range(TABS):
                page = context.new_page()
                page.goto(base + "/")
                expect(page.locator("body")).to_have_attribute("data-connected", "true")
                pages.append(page)
            # a workflow started now appears, finished, on every open tab (live, not reloaded)
            workflow_id = f"essay-{suffix}"
            embedded.call(embedded.orchestrator.execute(essay, {"topic": "tides"}, workflow_id=workflow_id))
            for page in pages:
                expect(page.locator(f'tr[data-workflow="{workflow_id}"] .badge')).to_have_text("completed")
            # the last tab still fetches and acts: cancel an interrupted workflow from its page
            paused = f"approval-{suffix}"
            embedded.call(embedded.orchestrator.execute(approval, {"topic": "moon"}, workflow_id=paused))
            last = pages[-1]
            last.goto(f"{base}/workflows/{paused}")
            expect(last.locator("body")).to_have_attribute("data-connected", "true")
            last.on("dialog", lambda dialog: dialog.accept())  # "Cancel workflow ...?"
            last.get_by_label("Dashboard token").fill(TOKEN)
            last.get_by_role("button", name="Cancel workflow").click()
            expect(last.locator("#messages")).to_contain_text(f"cancelled {paused}")
            # keyboard and screen-reader users land on the result (aria-live), not back at the top
            assert last.evaluate("document.getElementById('messages').contains(document.activeElement)")
            expect(last.locator("#part-summary .badge")).to_have_text("cancelled")
            status = last.evaluate("fetch('/api/workers').then(r => r.status)")
            assert status == 200
            for page in pages[:-1]:
                expect(page.locator(f'tr[data-workflow="{paused}"] .badge')).to_have_text("cancelled")
        finally:
            browser.close()


def test_no_page_scrolls_sideways_with_long_values_at_1366_and_1024_px(embedded: Embedded) -> None:
    from playwright.sync_api import sync_playwright

    suffix = uuid.uuid4().hex[:6]
    long_id = f"wide-{'y' * 180}-{suffix}"
    embedded.call(embedded.orchestrator.execute(wide, {"topic": "t" * 3000}, workflow_id=long_id))
    failed = f"failing-{suffix}"
    with pytest.raises(Exception, match="unreachable"):
        embedded.call(embedded.orchestrator.execute(failing, {"topic": "x"}, workflow_id=failed))
    paths = ["/", "/workers", "/queues", "/dead-letters", f"/workflows/{long_id}?step=1", f"/workflows/{failed}"]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            too_wide = []
            for width, height in ((1366, 768), (1024, 700)):
                page = browser.new_page(viewport={"width": width, "height": height})
                page.set_default_timeout(WAIT_MS)
                for path in paths:
                    page.goto(embedded.board.url + path)
                    page.evaluate("document.querySelectorAll('details').forEach(d => d.open = true)")
                    scroll = page.evaluate("document.documentElement.scrollWidth")
                    if scroll > width:
                        too_wide.append((width, path[:40], scroll))
                page.close()
            assert too_wide == []
        finally:
            browser.close()
