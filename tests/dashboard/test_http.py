"""The dashboard's endpoints over HTTP (Starlette's TestClient) on memory, Redis and NATS.

Workflows run through the dashboard's own orchestrator (nodes in this process), dead
letters are made through the task queue port (a task nacked for good), a worker is
registered through the registry port: every page, part, API route and action is then
checked on each backend. Guards (token, read-only, cross-origin) are backend-free and
checked on memory. The live event stream is checked over a real socket (uvicorn).
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from distributed_agents import Graph, Orchestrator, State, interrupt
from distributed_agents.core.ports.task_queue import Task
from distributed_agents.core.ports.worker_registry import WorkerInfo
from distributed_agents.dashboard import create_app, dashboard
from support.aio import run

JSON = {"accept": "application/json"}


def draft(state: State) -> dict[str, Any]:
    return {"text": f"draft about {state['topic']}"}


def polish(state: State) -> dict[str, Any]:
    return {"text": state["text"] + ", polished", "words": 3}


def ask(state: State) -> dict[str, Any]:
    return {"answer": interrupt({"question": f"publish {state['topic']}?"})}


def boom(state: State) -> dict[str, Any]:
    raise ValueError("the model said no")


essay = (Graph("essay").add_node("draft", draft).add_node("polish", polish).set_entry_point("draft")
         .add_edge("draft", "polish").set_finish_point("polish").compile())
approval = (Graph("approval").add_node("draft", draft).add_node("ask", ask).set_entry_point("draft")
            .add_edge("draft", "ask").set_finish_point("ask").compile())
failing = Graph("failing").add_node("boom", boom).set_entry_point("boom").set_finish_point("boom").compile()


@pytest.fixture(params=["memory", "redis", "nats"])
def backend_url(request: pytest.FixtureRequest) -> str:
    if request.param == "memory":
        return "memory://"
    url: str = request.getfixturevalue(f"{request.param}_url")
    return url


@pytest.fixture
def client(backend_url: str) -> Iterator[tuple[TestClient, Orchestrator]]:
    options = {} if backend_url == "memory://" else {"prefix": f"dash{uuid.uuid4().hex[:8]}"}
    orchestrator = Orchestrator(backend=backend_url, backend_options=options)
    app = create_app(orchestrator, graphs=[essay, approval, failing], own_orchestrator=True)
    with TestClient(app, base_url="http://127.0.0.1") as test_client:
        yield test_client, orchestrator


def _run(client: TestClient, coro_fn: Any) -> Any:
    return client.portal.call(coro_fn)


async def _dead_letter(orchestrator: Orchestrator, workflow_id: str, node_type: str = "writer") -> str:
    """A dead letter made through the queue port: a task claimed and nacked for good."""
    queue = orchestrator.backend.task_queue
    task_id = f"{workflow_id}:0:0:{node_type}"
    await queue.enqueue(Task(id=task_id, workflow_id=workflow_id, node=node_type, node_type=node_type, payload={}))
    claims = await queue.claim([node_type], worker_id="test", wait=5.0)
    assert [c.task.id for c in claims] == [task_id]
    await queue.nack(claims[0], "RuntimeError: out of ink\nTraceback: ...", final=True)
    return task_id


def _wait_status(client: TestClient, orchestrator: Orchestrator, workflow_id: str, wanted: str) -> None:
    async def wait() -> None:
        for _ in range(600):
            if (await orchestrator.get_workflow_status(workflow_id)).status == wanted:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"{workflow_id} never became {wanted}")

    _run(client, wait)


def test_every_page_part_and_api_route(client: tuple[TestClient, Orchestrator]) -> None:
    http, orchestrator = client
    _run(http, lambda: orchestrator.execute(essay, {"topic": "tides"}, workflow_id="wf-done"))
    _run(http, lambda: orchestrator.execute(approval, {"topic": "moon"}, workflow_id="wf-ask"))
    with pytest.raises(Exception, match="the model said no"):
        _run(http, lambda: orchestrator.execute(failing, {"topic": "x"}, workflow_id="wf-fail"))
    letter = _run(http, lambda: _dead_letter(orchestrator, "wf-other"))
    _run(http, lambda: orchestrator.backend.worker_registry.register(WorkerInfo(
        worker_id="w-1", node_types=frozenset({"draft", "writer"}), capacity=2, host="box", pid=42,
        last_heartbeat=time.time(), metadata={"in_flight": 1})))

    page = http.get("/")
    assert page.status_code == 200 and all(w in page.text for w in ("wf-done", "wf-ask", "wf-fail"))
    assert '<main id="main"' in page.text and "<nav" in page.text and '<label for="status">' in page.text
    assert "wf-done" not in http.get("/?status=failed").text
    assert "wf-fail" in http.get("/?status=failed").text
    assert "wf-done" not in http.get("/?graph=approval").text
    first = http.get("/api/workflows?limit=2&order=oldest").json()
    assert [w["workflow_id"] for w in first["workflows"]] == ["wf-done", "wf-ask"]
    rest = http.get("/api/workflows", params={"limit": 2, "cursor": first["next_cursor"]}).json()
    assert [w["workflow_id"] for w in rest["workflows"]] == ["wf-fail"] and rest["next_cursor"] is None
    assert "Next page" in http.get("/?limit=2").text
    rows = http.get("/parts/workflows").json()["part-rows"]
    assert rows.startswith('<section id="part-rows"') and "wf-done" in rows  # replaces the whole section
    assert http.get("/?status=bogus").status_code == 400

    done = http.get("/workflows/wf-done")
    assert done.status_code == 200 and 'data-node="draft"' in done.text and "state-finished" in done.text
    assert "<svg" in done.text and "Step timeline" in done.text
    detail = http.get("/api/workflows/wf-done").json()
    assert detail["status"] == "completed" and detail["node_states"] == {"draft": "finished", "polish": "finished"}
    assert [(r["step"], r["node"], r["outcome"], r["attempts"]) for r in detail["timeline"]] == [
        (0, "draft", "done", 1), (1, "polish", "done", 1)]
    assert all(isinstance(r["duration"], float) for r in detail["timeline"])
    state = http.get("/api/workflows/wf-done/state?step=2").json()
    assert state["values"]["text"] == "draft about tides, polished"
    assert {d["key"]: d["change"] for d in state["diff"]} == {"text": "changed", "words": "added"}
    assert "Changes since step 1" in http.get("/workflows/wf-done?step=2").text
    parts = http.get("/workflows/wf-done/parts?step=1").json()
    assert set(parts) >= {"part-summary", "part-graph", "part-timeline", "part-state", "part-history"}
    assert http.get("/api/workflows/wf-done/state?step=9").status_code == 404

    asking = http.get("/workflows/wf-ask")
    assert "publish moon?" in asking.text and 'name="answer"' in asking.text and "state-interrupted" in asking.text
    failed = http.get("/workflows/wf-fail")
    assert "the model said no" in failed.text and "Traceback" in failed.text and "state-failed" in failed.text

    workers = http.get("/api/workers").json()
    assert [(w["worker_id"], w["node_types"], w["in_flight"]) for w in workers] == [("w-1", ["draft", "writer"], 1)]
    assert "w-1" in http.get("/workers").text and "w-1" in http.get("/parts/workers").json()["part-rows"]
    queues = {q["node_type"]: q for q in http.get("/api/queues").json()}
    assert queues["writer"]["dead"] == 1 and "draft" in queues
    assert "writer" in http.get("/queues").text and "writer" in http.get("/parts/queues").json()["part-rows"]
    letters = http.get("/api/dead-letters").json()
    assert [(x["task_id"], x["reason"]) for x in letters] == [(letter, "RuntimeError: out of ink")]
    assert letter in http.get("/dead-letters").text and letter in http.get("/parts/dead-letters").json()["part-rows"]
    assert http.get("/api/dead-letters?node_type=other").json() == []
    full = http.get(f"/api/dead-letters/{letter}").json()
    assert full["errors"] and full["task"]["node"] == "writer"
    assert "out of ink" in http.get(f"/dead-letters/{letter}").text

    for missing in ("/workflows/nope", "/api/workflows/nope", "/workflows/nope/parts", "/dead-letters/nope",
                    "/api/dead-letters/nope", "/no-such-page"):
        assert http.get(missing).status_code == 404, missing
    assert "no workflow 'nope'" in http.get("/api/workflows/nope").json()["error"]
    assert http.get("/static/dashboard.js").status_code == 200
    assert http.get("/static/dashboard.css").status_code == 200


def test_actions_answer_fork_cancel_requeue_purge(client: tuple[TestClient, Orchestrator]) -> None:
    http, orchestrator = client
    _run(http, lambda: orchestrator.execute(approval, {"topic": "moon"}, workflow_id="wf-ask"))

    refused = http.post("/workflows/wf-ask/resume", headers=JSON)
    assert refused.status_code == 409 and "answer" in refused.json()["message"]
    not_json = http.post("/workflows/wf-ask/resume", data={"answer": "yes please"}, headers=JSON)
    assert not_json.status_code == 409 and "not valid JSON" in not_json.json()["message"]
    assert "Send as plain text" in not_json.json()["message"]
    assert http.get("/api/workflows/wf-ask").json()["status"] == "interrupted"  # nothing was sent
    answered = http.post("/workflows/wf-ask/resume", data={"answer": '"yes"'}, headers=JSON)
    assert answered.json() == {"ok": True, "message": "resuming wf-ask with the answer", "location": "/workflows/wf-ask"}
    _wait_status(http, orchestrator, "wf-ask", "completed")
    assert http.get("/api/workflows/wf-ask/state").json()["values"]["answer"] == "yes"

    forked = http.post("/fork", data={"checkpoint_id": "wf-ask:1"}, headers=JSON).json()
    assert forked["ok"] and forked["location"].startswith("/workflows/")
    fork_id = forked["location"].rsplit("/", 1)[1]
    assert http.get(f"/api/workflows/{fork_id}").json()["status"] == "pending"
    cancelled = http.post(f"/workflows/{fork_id}/cancel", follow_redirects=False)  # a plain form post
    assert cancelled.status_code == 303 and cancelled.headers["location"].startswith(f"/workflows/{fork_id}?notice=")
    assert http.get(f"/api/workflows/{fork_id}").json()["status"] == "cancelled"
    again = http.post(f"/workflows/{fork_id}/cancel")
    assert again.status_code == 409 and "already finished" in again.text
    assert http.post("/workflows/nope/cancel", headers=JSON).status_code == 404

    first = _run(http, lambda: _dead_letter(orchestrator, "wf-x"))
    second = _run(http, lambda: _dead_letter(orchestrator, "wf-y", "editor"))
    requeued = http.post(f"/dead-letters/{first}/requeue", headers=JSON).json()
    assert requeued["ok"], requeued
    assert [x["task_id"] for x in http.get("/api/dead-letters").json()] == [second]
    queued = {q["node_type"]: q["queued"] for q in http.get("/api/queues?node_types=writer").json()}
    assert queued == {"editor": 0, "writer": 1}  # a type no worker serves shows once it is named
    assert http.post(f"/dead-letters/{first}/requeue", headers=JSON).status_code == 409
    purged = http.post(f"/dead-letters/{second}/purge", headers=JSON).json()
    assert purged == {"ok": True, "message": "purged 1 dead letter(s)", "location": "/dead-letters"}
    _run(http, lambda: _dead_letter(orchestrator, "wf-z", "critic"))
    assert http.post("/dead-letters/purge", data={"node_type": "critic"}, headers=JSON).json()["message"] == \
        "purged 1 dead letter(s)"
    assert http.get("/api/dead-letters").json() == []


def _memory_client(**options: Any) -> TestClient:
    orchestrator = Orchestrator(backend_options={"prefix": f"dash{uuid.uuid4().hex[:8]}"})
    client = TestClient(create_app(orchestrator, graphs=[essay, approval], own_orchestrator=True, **options),
                        base_url="http://127.0.0.1:8080")
    client.app_state_orchestrator = orchestrator  # type: ignore[attr-defined]
    return client


POSTS = ["/workflows/wf/cancel", "/workflows/wf/resume", "/fork", "/dead-letters/t/requeue", "/dead-letters/t/purge",
         "/dead-letters/purge"]


def test_token_is_required_for_every_action_and_compared_exactly() -> None:
    with _memory_client(token="s3cret") as http:
        for url in POSTS:
            refused = http.post(url, headers=JSON)
            assert refused.status_code == 403 and "needs the dashboard token" in refused.json()["message"], url
            wrong = http.post(url, headers={**JSON, "X-Dashboard-Token": "s3cre"})
            assert wrong.status_code == 403 and "wrong dashboard token" in wrong.json()["message"], url
        # accepted: then the action itself answers (the workflow does not exist)
        assert http.post(POSTS[0], headers={**JSON, "X-Dashboard-Token": "s3cret"}).status_code == 404
        assert http.post(POSTS[0], headers={**JSON, "Authorization": "Bearer s3cret"}).status_code == 404
        assert http.post(POSTS[0], data={"token": "s3cret"}, headers=JSON).status_code == 404
        assert http.post(POSTS[0], data={"token": "nope"}, headers=JSON).status_code == 403
        assert http.post(POSTS[0], headers={"X-Dashboard-Token": "s3cret", "cookie": "token=s3cret"}).status_code == 404
        assert http.post(POSTS[0], headers={"cookie": "token=s3cret"}).status_code == 403  # never a cookie
        page = http.get("/").text
        assert 'id="dashboard-token"' in page and 'data-token-required="true"' in page


def test_without_javascript_each_action_form_carries_its_token_field_and_plain_text_is_explicit() -> None:
    with _memory_client(token="s3cret") as http:
        _run(http, lambda: http.app_state_orchestrator.execute(approval, {"topic": "moon"}, workflow_id="wf-nojs"))
        page = http.get("/workflows/wf-nojs").text
        forms = page.count('<form class="action"')
        assert forms >= 2 and page.count('class="form-token"') == forms  # a token field in every action form
        assert 'name="as_text"' in page
        assert '<tr class="outcome-waiting"><td class="num">1</td><td>ask</td>' in page  # waits: not "done"
        assert "<td>worker</td>" not in page and "<td>this process</td>" in page  # never the bare word
        for path in ("/", "/workers"):
            listed = http.get(path).text
            assert ("<table" not in listed or 'href="#after-rows">Skip table</a>' in listed) and 'id="after-rows"' in listed
        assert "Skip table" in http.get("/").text
        # a plain form post (no script, no header): the token comes from the form; text sent as text
        sent = http.post("/workflows/wf-nojs/resume", data={"answer": "yes please", "as_text": "1", "token": "s3cret"},
                         follow_redirects=False)
        assert sent.status_code == 303 and "resuming" in urllib.parse.unquote_plus(sent.headers["location"])


def test_read_only_refuses_every_action_and_shows_none() -> None:
    with _memory_client(read_only=True) as http:
        for url in POSTS:
            refused = http.post(url, headers=JSON)
            assert refused.status_code == 403 and "read-only" in refused.json()["message"], url
        html = http.post(POSTS[0])
        assert html.status_code == 403 and "read-only" in html.text
        assert "Read-only" in http.get("/").text


def test_cross_origin_posts_are_refused() -> None:
    with _memory_client() as http:
        foreign = http.post(POSTS[0], headers={**JSON, "Origin": "http://evil.example"})
        assert foreign.status_code == 403 and "another origin" in foreign.json()["message"]
        assert http.post(POSTS[0], headers={**JSON, "Sec-Fetch-Site": "cross-site"}).status_code == 403
        assert http.post(POSTS[0], headers={**JSON, "Origin": "http://127.0.0.1:8080"}).status_code == 404


@pytest.mark.parametrize("forged", ["evil.example:8080", "evil.example", "127.0.0.1.evil.example:8080",
                                    "rebind.attacker.test", "localhost.evil:8080", ""])
def test_a_forged_host_header_is_refused_before_any_read_or_action(forged: str) -> None:
    # DNS rebinding: the attacker's name resolves to 127.0.0.1, so the browser sends its own Host.
    with _memory_client() as http:
        for method, url in [("GET", "/"), ("GET", "/api/workflows"), ("GET", "/events"), ("POST", POSTS[0]),
                            ("POST", "/dead-letters/purge")]:
            answer = http.request(method, url, headers={**JSON, "Host": forged, "Origin": f"http://{forged}"})
            assert answer.status_code == 400, (method, url, forged)
            assert "not a name this dashboard answers to" in answer.text and "--allowed-host" in answer.text


@pytest.mark.parametrize("host", ["127.0.0.1:8080", "localhost:8080", "[::1]:8080", "LOCALHOST", "127.0.0.1"])
def test_loopback_host_names_are_answered(host: str) -> None:
    with _memory_client() as http:
        assert http.get("/api/workflows", headers={"Host": host}).status_code == 200


def test_allowed_host_adds_a_proxy_name_and_the_bound_address_counts() -> None:
    from distributed_agents.dashboard import allowed_hosts

    assert allowed_hosts("0.0.0.0") == ["127.0.0.1", "localhost", "[::1]"]
    assert allowed_hosts("::1") == ["127.0.0.1", "localhost", "[::1]"]
    hosts = allowed_hosts("10.0.0.5", ["Dash.Example.org"])
    assert hosts == ["127.0.0.1", "localhost", "[::1]", "10.0.0.5", "dash.example.org"]
    with _memory_client(hosts=hosts) as http:
        assert http.get("/api/workflows", headers={"Host": "dash.example.org"}).status_code == 200
        assert http.get("/api/workflows", headers={"Host": "10.0.0.5:8080"}).status_code == 200
        assert http.get("/api/workflows", headers={"Host": "other.example.org"}).status_code == 400


def test_empty_token_is_a_configuration_error() -> None:
    from distributed_agents.core.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="token is empty"):
        create_app(Orchestrator(), token="")


def test_events_stream_live_over_a_socket_and_end_when_the_server_stops(backend_url: str) -> None:
    run(_events_stream(backend_url))


async def _events_stream(url: str) -> None:
    options = {} if url == "memory://" else {"prefix": f"dash{uuid.uuid4().hex[:8]}"}
    orchestrator = Orchestrator(backend=url, backend_options=options)
    board = dashboard(orchestrator, port=0, graphs=[essay])
    await board.start()
    try:
        async with httpx.AsyncClient(base_url=board.url, timeout=30) as http:
            async with http.stream("GET", "/events", params={"workflow": "wf-live"}) as stream:
                assert stream.headers["content-type"].startswith("text/event-stream")
                lines = stream.aiter_lines()
                assert await anext(lines) == "retry: 2000"
                run = asyncio.ensure_future(orchestrator.execute(essay, {"topic": "tides"}, workflow_id="wf-live"))
                await orchestrator.execute(essay, {"topic": "other"}, workflow_id="wf-other")
                seen: list[str] = []
                async for line in lines:
                    if line.startswith("data: "):
                        event = json.loads(line[6:])
                        assert event["workflow_id"] == "wf-live"
                        seen.append(event["type"])
                        if event["type"] == "workflow.completed":
                            break
                await run
                assert seen[0] == "workflow.started" and seen.count("node.completed") == 2
                await board.stop()  # ends the open stream, so the server stops at once
                assert [line async for line in lines if line] == []  # the stream ended
    finally:
        await board.stop()
        await orchestrator.close()


def test_the_server_pushes_worker_changes_late_then_dropped_without_any_page_asking() -> None:
    # A worker that stops beating: the server's own registry reads push "registry" events to the
    # open pages (nothing polls from the page): it turns late, then the registry drops it.
    orchestrator = Orchestrator(backend="memory://", backend_options={"heartbeat_ttl": 2.0,
                                                                       "prefix": f"dash{uuid.uuid4().hex[:8]}"})
    app = create_app(orchestrator, own_orchestrator=True, registry_poll=0.1)
    with TestClient(app, base_url="http://127.0.0.1") as http:
        hub = app.state.hub
        queue = _run(http, lambda: _listen(hub))

        async def next_registry_event() -> dict[str, Any]:
            while True:
                event = await asyncio.wait_for(queue.get(), 60)
                if event["type"] == "registry":
                    return dict(event)

        _run(http, lambda: orchestrator.backend.worker_registry.register(WorkerInfo(
            worker_id="w-gone", node_types=frozenset({"draft"}), capacity=1, host="box", pid=7,
            last_heartbeat=time.time(), metadata={"in_flight": 0})))
        _run(http, next_registry_event)
        seen = [w["status"] for w in http.get("/api/workers").json()]
        assert seen in (["online"], ["late"])
        if seen == ["online"]:
            _run(http, next_registry_event)
            assert [w["status"] for w in http.get("/api/workers").json()] == ["late"]
            assert "status-late" in http.get("/parts/workers").json()["part-rows"]
        _run(http, next_registry_event)
        assert http.get("/api/workers").json() == []
        assert "No live worker" in http.get("/parts/workers").json()["part-rows"]


async def _listen(hub: Any) -> Any:
    return hub.listen()


def test_worker_status_follows_the_heartbeat_ttl() -> None:
    from distributed_agents.operations import worker_json

    info = WorkerInfo(worker_id="w", node_types=frozenset({"a"}), capacity=1, host="h", pid=1, last_heartbeat=100.0)
    assert worker_json(info, 104.9, ttl=10)["status"] == "online"
    assert worker_json(info, 105.1, ttl=10)["status"] == "late"
    assert worker_json(info, 110.0, ttl=10)["status"] == "offline"
    assert "status" not in worker_json(info, 110.0)


@pytest.mark.redis
@pytest.mark.timeout(120)
def test_backend_down_pages_say_what_is_unreachable_with_503_and_the_pages_are_told() -> None:
    from support.redis_server import RedisServer

    with RedisServer(password="hunter2") as server:
        orchestrator = Orchestrator(backend=server.url, backend_options={"prefix": f"dash{uuid.uuid4().hex[:8]}"})
        app = create_app(orchestrator, own_orchestrator=True, registry_poll=0.1)
        with TestClient(app, base_url="http://127.0.0.1") as http:
            assert http.get("/").status_code == 200
            queue = _run(http, lambda: _listen(app.state.hub))
            server.stop(kill=True)
            for path in ("/", "/workers", "/dead-letters", "/workflows/wf-x"):
                page = http.get(path)
                assert page.status_code == 503, (path, page.status_code)
                assert "Backend unreachable" in page.text and "is unreachable" in page.text
                assert "hunter2" not in page.text and f"127.0.0.1:{server.port}" in page.text  # redacted URL
            for path in ("/api/workflows", "/parts/workers", "/api/workers"):
                answer = http.get(path)
                assert answer.status_code == 503 and "is unreachable" in answer.json()["error"], path
                assert "hunter2" not in answer.text

            async def backend_event() -> dict[str, Any]:
                while True:
                    event = await asyncio.wait_for(queue.get(), 60)
                    if event["type"] == "backend":
                        return dict(event)

            down = _run(http, backend_event)
            assert down["ok"] is False and "unreachable" in down["message"] and "hunter2" not in down["message"]
            server.start()
            assert _run(http, backend_event)["ok"] is True
            assert http.get("/api/workflows").status_code == 200



def count(state: State) -> dict[str, Any]:
    return {"n": state.get("n", 0) + 1}


looping = (Graph("looping").add_node("count", count).set_entry_point("count")
           .add_conditional_edges("count", lambda s: "count" if s["n"] < 230 else "__end__").compile())


def test_a_step_older_than_the_newest_200_checkpoints_is_shown_with_its_diff() -> None:
    with _memory_client() as http:
        orchestrator = http.app_state_orchestrator  # type: ignore[attr-defined]
        _run(http, lambda: orchestrator.execute(looping, {}, workflow_id="wf-long", step_limit=300))
        state = http.get("/api/workflows/wf-long/state?step=5").json()
        assert state["step"] == 5 and state["values"]["n"] == 5 and state["previous_step"] == 4
        assert state["diff"] == [{"key": "n", "change": "changed", "before": 4, "after": 5}]
        page = http.get("/workflows/wf-long?step=5")
        assert page.status_code == 200 and "Changes since step 4" in page.text
        assert http.get("/api/workflows/wf-long/state?step=9999").status_code == 404


def test_dead_letters_are_paged_with_a_count_and_purge_listed_purges_exactly_those() -> None:
    import re

    with _memory_client() as http:
        orchestrator = http.app_state_orchestrator  # type: ignore[attr-defined]

        async def make(first: int, count: int) -> None:
            for i in range(first, first + count):
                await _dead_letter(orchestrator, f"wf-{i:03d}")

        _run(http, lambda: make(0, 130))
        first = http.get("/dead-letters").text
        assert "Showing 1–100 of 130 dead letter(s)" in first and first.count("<tr data-task=") == 100
        assert "Next page" in first and "Last page" in first and "/dead-letters?offset=100" in first
        second = http.get("/dead-letters?offset=100").text
        assert "Showing 101–130 of 130" in second and "First page" in second and "Next page" not in second
        assert len(http.get("/api/dead-letters?limit=500").json()) == 130
        listed = re.search(r'name="task_ids" value="([^"]*)"', second)
        assert listed is not None
        ids = listed.group(1).replace("&#x0A;", "\n").replace("&#10;", "\n")
        _run(http, lambda: make(200, 1))  # arrives after the page was shown: not listed, so not purged
        purged = http.post("/dead-letters/purge", data={"task_ids": ids}, headers=JSON)
        assert purged.json()["message"] == "purged 30 dead letter(s)"
        left = http.get("/api/dead-letters?limit=500").json()
        assert len(left) == 101 and "wf-200:0:0:writer" in {letter["task_id"] for letter in left}



def test_workflows_list_newest_first_with_first_and_last_pages_and_a_case_insensitive_graph_filter() -> None:
    with _memory_client() as http:
        orchestrator = http.app_state_orchestrator  # type: ignore[attr-defined]

        async def start() -> None:
            for i in range(5):
                await orchestrator.execute(essay, {"topic": "t"}, workflow_id=f"wf-{i}")
            await orchestrator.execute(approval, {"topic": "t"}, workflow_id="wf-ask")

        _run(http, start)
        newest = http.get("/api/workflows?limit=2").json()
        assert [w["workflow_id"] for w in newest["workflows"]] == ["wf-ask", "wf-4"] and newest["total"] == 6
        page = http.get("/?limit=2").text
        assert "Newest first; 1–2 of 6" in page and "Last page" in page and "offset=4" in page
        last = http.get("/?limit=2&offset=4").text
        assert "First page" in last and "wf-0" in last and "Next page" not in last
        oldest = http.get("/api/workflows?limit=2&order=oldest").json()
        assert [w["workflow_id"] for w in oldest["workflows"]] == ["wf-0", "wf-1"]
        assert "Last page (newest)" in http.get("/?limit=2&order=oldest").text
        for graph in ("ESSAY", "ss", "essay"):
            found = http.get("/api/workflows", params={"graph": graph}).json()
            assert {w["graph"] for w in found["workflows"]} == {"essay"} and found["total"] == 5, graph
        assert http.get("/api/workflows?graph=APPROV").json()["total"] == 1
        assert http.get("/api/workflows?order=sideways").status_code == 400
        # a workflow started now is on page 1 of the live part
        _run(http, lambda: orchestrator.execute(essay, {"topic": "t"}, workflow_id="wf-new"))
        rows = http.get("/parts/workflows?limit=2").json()["part-rows"]
        assert "wf-new" in rows


def test_the_timeline_shows_a_nodes_run_time_not_its_wait_in_the_queue() -> None:
    # A worker claims the task and dies (never settles); a live worker runs the node once
    # the dead attempt's lease expires. The timeline's duration is the run on the live
    # worker (result.started_at to finished_at), shorter than the time the task sat under
    # the dead lease, measured in the same run.
    from distributed_agents import Worker

    async def nap(state: State) -> dict[str, Any]:
        await asyncio.sleep(0.05)
        return {"text": "rested"}

    graph = Graph("queued").add_node("nap", node_type="nap").set_entry_point("nap").set_finish_point("nap").compile()
    with _memory_client() as http:
        orchestrator: Orchestrator = http.app_state_orchestrator  # type: ignore[attr-defined]

        async def go() -> tuple[float, str]:
            await orchestrator.backend.worker_registry.register(WorkerInfo(
                worker_id="w-dead", node_types=frozenset({"nap"}), capacity=1, host="box", pid=7,
                last_heartbeat=time.time()))
            submitted = time.time()
            running = asyncio.ensure_future(orchestrator.execute(graph, {"topic": "x"}, workflow_id="wf-queued"))
            queue = orchestrator.backend.task_queue
            [dead] = await queue.claim(["nap"], worker_id="w-dead", lease_seconds=1.0, wait=10.0)
            worker = Worker(node_types={"nap"}, backend=orchestrator.backend, poll_wait=0.05)
            worker.register_node("nap", nap)
            serving = asyncio.ensure_future(worker.start())
            try:
                await asyncio.wait_for(running, timeout=60)
            finally:
                await worker.stop(grace=1)
                await serving
            return dead.deadline - submitted, worker.worker_id

        under_dead_lease, live_worker = _run(http, go)
        [row] = [r for r in http.get("/api/workflows/wf-queued").json()["timeline"] if r["node"] == "nap"]
        assert (row["outcome"], row["worker"], row["attempts"]) == ("done", live_worker, 2)
        assert row["duration"] < under_dead_lease, (row["duration"], under_dead_lease)
