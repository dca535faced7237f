"""The dashboard in a real browser: Debian's chromium driven by Playwright, over real Redis and processes.

One deployment for the whole story (each process costs seconds): redis-server, a
worker process serving ``dashboard_app``, the dashboard itself as the CLI starts it
(``distributed-agents dashboard --token ... --graph ...``), and in this process an
orchestrator on its own event-loop thread that starts the workflows (nodes on the
worker) and serves a read-only dashboard through the embedding API. What a person sees is checked:
a workflow appears and finishes on the open list page without a reload, its graph and
timeline render, an interrupt is answered from the page (refused without the token and
with a wrong one) and the workflow goes on, a dead letter is shown, requeued and its
workflow resumed to the end, workers and queues are listed, the read-only dashboard
refuses actions, and SIGTERM stops the dashboard with pages still connected.

Screenshots of each page go to ``$DA_SCREENSHOT_DIR`` when set (the README's come from
``DA_SCREENSHOT_DIR=docs/screenshots``), else to the test's temporary folder.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from distributed_agents import Orchestrator
from support.embedded_dashboard import EmbeddedDashboard
from support.server_process import free_port

pytestmark = [pytest.mark.redis, pytest.mark.timeout(240)]

HERE = pathlib.Path(__file__).resolve().parent
CHROMIUM = "/usr/bin/chromium"
TOKEN = "s3cret-token"
_spec = importlib.util.spec_from_file_location("dashboard_app", HERE / "dashboard_app.py")
assert _spec is not None and _spec.loader is not None
app = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(app)
WAIT_MS = 60_000  # how long the page may take to show something (a wait, not a timing assertion)


def Driver(url: str, prefix: str) -> EmbeddedDashboard:
    """An orchestrator on its own event-loop thread (nodes on workers), and a read-only dashboard over it."""
    orchestrator = Orchestrator(backend=url, backend_options={"prefix": prefix}, local_nodes=False,
                                wait_for_workers=True)
    return EmbeddedDashboard(orchestrator, read_only=True, graphs=[app.essay, app.approval])


class Deployment:
    """A worker process and the CLI's dashboard (with a token) on one Redis prefix."""

    def __init__(self, url: str, folder: pathlib.Path) -> None:
        self.url, self.folder = url, folder
        self.prefix = f"dash{uuid.uuid4().hex[:8]}"
        names = ("DA_BACKEND_URL", "BACKEND_URL", "REDIS_URL", "NATS_URL", "DA_PREFIX", "DA_DASHBOARD_TOKEN")
        self.env = {**{k: v for k, v in os.environ.items() if k not in names}, "PYTHONPATH": str(HERE),
                    "DA_MARKER_DIR": str(folder)}
        self.processes: list[subprocess.Popen[str]] = []
        self.worker = self.start("worker", "worker", "--app", "dashboard_app:registry", "--worker-id", "dash-worker",
                                 "--capacity", "2", "--heartbeat-interval", "0.5")
        graphs = [arg for name in ("essay", "approval", "archive") for arg in ("--graph", f"dashboard_app:{name}")]
        self.port = free_port()
        self.board = self.start("dashboard", "dashboard", "--port", str(self.port), "--token", TOKEN, *graphs)
        self.driver = Driver(url, self.prefix)
        self.wait_listening(self.port, self.board)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, log: str, *argv: str) -> subprocess.Popen[str]:
        with open(self.folder / f"{log}.log", "a") as out:
            process = subprocess.Popen([sys.executable, "-m", "distributed_agents", *argv, "--backend-url", self.url,
                                        "--prefix", self.prefix], cwd=HERE, env=self.env, stdout=out,
                                       stderr=subprocess.STDOUT, text=True)
        self.processes.append(process)
        return process

    def wait_listening(self, port: int, process: subprocess.Popen[str]) -> None:
        for _ in range(600):
            assert process.poll() is None, self.logs()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"the dashboard on port {port} never answered\n{self.logs()}")

    def logs(self) -> str:
        return "\n".join(f"== {p.name}\n{p.read_text()}" for p in sorted(self.folder.glob("*.log")))

    def close(self) -> None:
        self.driver.close()
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=10)


@pytest.fixture
def deployment(redis_url: str, tmp_path: pathlib.Path) -> Iterator[Deployment]:
    if not os.path.exists(CHROMIUM):
        pytest.fail("the browser tests need Debian's chromium: apt-get install chromium (scripts/test installs it)",
                    pytrace=False)
    deployed = Deployment(redis_url, tmp_path)
    try:
        yield deployed
    finally:
        deployed.close()


def _screenshots(tmp_path: pathlib.Path) -> pathlib.Path:
    wanted = os.environ.get("DA_SCREENSHOT_DIR")
    folder = pathlib.Path(wanted) if wanted else tmp_path / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_a_person_watches_answers_requeues_and_is_refused_in_chromium(deployment: Deployment,
                                                                      tmp_path: pathlib.Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=WAIT_MS)
    shots = _screenshots(tmp_path)
    suffix = uuid.uuid4().hex[:6]
    essay_id, ask_id, archive_id = f"essay-{suffix}", f"approval-{suffix}", f"archive-{suffix}"
    base = deployment.base
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.set_default_timeout(WAIT_MS)

            # -- a workflow appears on the open list and finishes there, live ------------------------
            page.goto(base + "/")
            expect(page.locator("body")).to_have_attribute("data-connected", "true")
            page.evaluate("window.__sameDocument = true")
            run = deployment.driver.start(app.essay, essay_id, topic="tides")
            badge = page.locator(f'tr[data-workflow="{essay_id}"] .badge')
            expect(badge).to_have_text("completed")
            assert run.result(timeout=60)["text"] == "draft about tides, polished"
            assert page.evaluate("window.__sameDocument === true"), "the list page was reloaded"

            # -- its graph (finished nodes marked) and step timeline (worker, duration, attempts) ----
            page.get_by_role("link", name=essay_id).click()
            expect(page.locator('#part-graph svg g[data-node="draft"]')).to_have_class("node da-node state-finished")
            expect(page.locator('#part-graph svg g[data-node="polish"]')).to_have_class("node da-node state-finished")
            timeline = page.locator("#part-timeline tbody tr")
            expect(timeline).to_have_count(2)
            expect(timeline.nth(0)).to_contain_text("draft")
            expect(timeline.nth(0)).to_contain_text("dash-worker")
            expect(timeline.nth(1)).to_contain_text("polish")
            page.locator('#part-timeline a[data-step="2"]').click()  # the state after polish, and what changed
            expect(page.locator("#part-state table.diff")).to_contain_text("words")
            expect(page.locator("#part-state caption")).to_contain_text("Changes since step 1")
            page.screenshot(path=str(shots / "workflow.png"), full_page=True)

            # -- an interrupt is answered from the page: refused without / with a wrong token -------
            paused = deployment.driver.start(app.approval, ask_id, topic="moon")
            assert "__interrupt__" in paused.result(timeout=60)
            page.goto(f"{base}/workflows/{ask_id}")
            expect(page.locator("#part-interrupts")).to_contain_text("publish the piece about moon?")
            expect(page.locator('#part-graph svg g[data-node="ask"]')).to_have_class("node da-node state-interrupted")
            page.get_by_label("Answer (JSON, or plain text)").fill("yes")
            page.get_by_label("Send as plain text").check()  # "yes" is not JSON: sent as text only when asked
            page.screenshot(path=str(shots / "interrupt.png"), full_page=True)
            send = page.get_by_role("button", name="Send answer and resume")
            send.click()
            expect(page.locator("#messages")).to_contain_text("needs the dashboard token")
            page.get_by_label("Dashboard token").fill("not-the-token")
            send.click()
            expect(page.locator("#messages")).to_contain_text("wrong dashboard token")
            expect(page.locator("#part-summary .badge")).to_have_text("interrupted")
            page.get_by_label("Dashboard token").fill(TOKEN)
            send.click()
            expect(page.locator("#messages")).to_contain_text(f"resuming {ask_id} with the answer")
            expect(page.locator("#part-summary .badge")).to_have_text("completed")
            expect(page.locator('#part-graph svg g[data-node="publish"]')).to_have_class("node da-node state-finished")
            expect(page.locator("#part-state pre.values")).to_contain_text('"published": true')

            # -- a dead letter: shown with its traceback, requeued, its workflow resumed to the end --
            (deployment.folder / "broken").touch()
            failed = deployment.driver.start(app.archive, archive_id, topic="logs")
            assert "the archive is unreachable" in str(failed.exception(timeout=60))
            page.goto(base + "/dead-letters")
            row = page.locator("tr[data-task]").filter(has_text=archive_id)
            expect(row).to_contain_text("the archive is unreachable")
            page.screenshot(path=str(shots / "dead-letters.png"))
            row.get_by_role("link").first.click()
            expect(page.locator("ol.errors")).to_contain_text("RuntimeError: the archive is unreachable")
            page.screenshot(path=str(shots / "dead-letter.png"), full_page=True)
            (deployment.folder / "broken").unlink()
            page.get_by_role("button", name="Requeue").click()
            # The page itself goes on to the dead-letter list, with the outcome as its notice.
            page.wait_for_url(re.compile(r".*/dead-letters\?notice="), timeout=WAIT_MS)
            expect(page.locator("#messages")).to_contain_text(archive_id)
            expect(page.locator("#part-rows")).to_contain_text("No dead letters.")
            page.goto(f"{base}/workflows/{archive_id}")
            expect(page.locator("#part-summary .badge")).to_have_text("running")  # reopened by the requeue
            page.get_by_role("button", name="Resume workflow").click()
            expect(page.locator("#part-summary .badge")).to_have_text("completed")

            # -- workers and queues ------------------------------------------------------------------
            page.goto(base + "/workers")
            workers = page.locator("#part-rows tbody tr").filter(has_text="dash-worker")
            expect(workers).to_contain_text("fragile")
            page.screenshot(path=str(shots / "workers.png"))
            page.goto(base + "/queues")
            expect(page.locator("#part-rows")).to_contain_text("fragile")
            page.screenshot(path=str(shots / "queues.png"))

            # -- the read-only dashboard shows no action and refuses one posted anyway --------------
            page.goto(f"{deployment.driver.board.url}/workflows/{ask_id}")
            expect(page.locator("main")).to_contain_text("Read-only")
            expect(page.get_by_role("button")).to_have_count(1)  # only the state picker's Show
            status = page.evaluate(f"""fetch('/workflows/{ask_id}/cancel', {{method: 'POST',
                headers: {{Accept: 'application/json'}}}}).then(r => r.status)""")
            assert status == 403

            # -- SIGTERM stops the dashboard while a page is still connected to its event stream -----
            page.goto(base + "/")
            expect(page.locator("body")).to_have_attribute("data-connected", "true")
            expect(page.locator("#part-rows tbody tr")).to_have_count(3)
            page.screenshot(path=str(shots / "workflows.png"))
            deployment.board.send_signal(signal.SIGTERM)
            assert deployment.board.wait(timeout=30) == 0, deployment.logs()
        finally:
            browser.close()
    assert shutil.which("dot"), "graphviz draws the graph"
