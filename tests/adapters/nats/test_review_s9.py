"""The hand-rolled publish (``replies.send``), acks whose done event and confirmed ack leave from
the client's reader, and records created from the reader by ``enqueue_many``, attacked.

The same message through ``send`` and nats-py's ``publish`` must arrive the same (headers with
odd spacing, line breaks, empty names, non-ASCII values) and fail the same; a chained ack must
store its result once, announce it, ack its message, refuse a second ack, a stale lease and a
lease that expired; enqueue_many must keep priority order, idempotency and exact stats with
duplicates within and across calls and processes, and with a message whose producer died before
writing its record; an ack across a server restart lands once.
"""

from __future__ import annotations

import asyncio
from typing import Any

import nats
import nats.errors
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.aio import run
from support.nats_server import NatsServer, find_nats_server

from distributed_agents.adapters.nats import naming, replies
from distributed_agents.core.errors import BackendUnavailableError, LeaseLostError
from distributed_agents.core.ports.task_queue import Task

from .conftest import open_nats
from distributed_agents.adapters.nats.message_bus import flush_in_order

pytestmark = pytest.mark.timeout(90)


def _task(task_id: str, priority: int = 0, node_type: str = "n") -> Task:
    return Task(task_id, "wf", "n", node_type, {"i": task_id}, priority=priority)


_HEADERS: list[dict[str, str] | None] = [
    None,
    {},
    {"A": "1"},
    {"  Spaced  ": "  value with spaces  ", "B": "x"},
    {"Line": "one\r\ntwo\nthree\rfour", "Empty": ""},
    {"": "skipped", "K": "kept"},
    {"Uni": "caf\u00e9 \u2603", "Nats-Msg-Id": "id-1"},
]


def test_send_delivers_what_publish_delivers_and_fails_where_it_fails(nats_url: str) -> None:
    async def scenario() -> tuple[list[Any], list[Any], list[str], list[str]]:
        nc = await nats.connect(nats_url)
        try:
            got: dict[str, list[Any]] = {"pub": [], "send": []}
            subs = []
            for kind in got:
                async def handler(msg: Any, kind: str = kind) -> None:
                    got[kind].append((msg.subject.split(".", 1)[1], msg.reply, msg.headers, msg.data))
                subs.append(await nc.subscribe(f"{kind}.>", cb=handler))
            await flush_in_order(nc)
            for index, headers in enumerate(_HEADERS):
                for size in (0, 1, 1000):
                    payload = bytes(range(256)) * (size // 256) + b"\r\n" * (size % 3)
                    reply = f"reply.{index}" if size else ""
                    await nc.publish(f"pub.s{index}", payload, reply=reply, headers=headers)
                    replies.send(nc, f"send.s{index}", payload, reply, headers)
            await flush_in_order(nc)
            for _ in range(200):
                if len(got["pub"]) == len(got["send"]) == len(_HEADERS) * 3:
                    break
                await asyncio.sleep(0.02)
            errors: dict[str, list[str]] = {"pub": [], "send": []}
            big = b"x" * (nc.max_payload + 1)
            cases: list[tuple[str, bytes, str, dict[str, str] | None]] = [
                ("bad subject", b"", "", None), ("", b"", "", None), ("ok", b"", "bad reply", None),
                ("ok", b"", "", {"bad:name": "v"}), ("ok", b"", "", {"bad name": "v"}), ("ok", big, "", None)]
            for subject, payload, reply, headers in cases:
                for kind in errors:
                    try:
                        if kind == "pub":
                            await nc.publish(subject, payload, reply=reply, headers=headers)
                        else:
                            replies.send(nc, subject, payload, reply, headers)
                        errors[kind].append("sent")
                    except Exception as exc:  # noqa: BLE001 - the error type is what is compared
                        errors[kind].append(type(exc).__name__)
            return got["pub"], got["send"], errors["pub"], errors["send"]
        finally:
            await nc.close()

    published, sent, publish_errors, send_errors = run(scenario())
    assert len(published) == len(_HEADERS) * 3
    assert sorted(published, key=repr) == sorted(sent, key=repr)
    assert publish_errors == send_errors
    assert "MaxPayloadError" in send_errors and "BadHeaderError" in send_errors


def test_send_on_a_closed_client_raises_what_publish_raises(nats_url: str) -> None:
    async def scenario() -> tuple[str, str]:
        nc = await nats.connect(nats_url)
        await nc.close()
        outcomes = []
        for call in (lambda: nc.publish("x", b"1"), lambda: asyncio.sleep(0, replies.send(nc, "x", b"1"))):
            try:
                await call()
                outcomes.append("sent")
            except Exception as exc:  # noqa: BLE001
                outcomes.append(type(exc).__name__)
        return outcomes[0], outcomes[1]

    published, sent = run(scenario())
    assert published == sent == "ConnectionClosedError"


def test_a_chained_ack_stores_announces_and_acks_once(nats_url: str) -> None:
    async def scenario() -> dict[str, Any]:
        producer = await open_nats(nats_url)
        worker = await open_nats(nats_url, prefix=producer.options.prefix, visibility_timeout=30)
        try:
            queue, wq = producer.task_queue, worker.task_queue
            small, large = {"v": 1}, {"blob": "z" * 40_000}  # inline in the done event, and not
            assert await queue.enqueue_many([_task("a"), _task("b"), _task("c")]) == [True, True, True]
            claims = {c.task.id: c for c in await wq.claim(["n"], worker_id="w", max_tasks=3)}
            waiting = asyncio.ensure_future(queue.wait_results(["a"], timeout=20))
            await asyncio.sleep(0.05)
            await wq.ack(claims["a"], small)
            first = await waiting
            await wq.ack(claims["b"], large)
            extended = await wq.extend(claims["c"], 30)  # the remembered revision moves on
            await wq.ack(extended, {"c": True})
            twice: list[str] = []
            for claim in (claims["a"], claims["b"], extended):
                try:
                    await wq.ack(claim, {"again": 1})
                    twice.append("acked")
                except LeaseLostError:
                    twice.append("lost")
            results = {k: await queue.wait_results([k], timeout=20) for k in "abc"}
            stats = await queue.stats("n")
            again = await wq.claim(["n"], worker_id="w2", max_tasks=3)
            return {"first": first, "results": results, "twice": twice, "stats": stats, "again": again,
                    "requeued": await queue.enqueue_many([_task("a"), _task("b")])}
        finally:
            await worker.close()
            await producer.close()

    out = run(scenario(), 60)
    assert out["first"]["a"].output == {"v": 1}
    assert out["results"]["b"]["b"].output == {"blob": "z" * 40_000}
    assert out["results"]["c"]["c"].output == {"c": True}
    assert out["twice"] == ["lost", "lost", "lost"]
    assert (out["stats"].queued, out["stats"].in_flight, out["stats"].dead) == (0, 0, 0)
    assert out["again"] == []
    assert out["requeued"] == [False, False]


def test_an_ack_after_the_lease_ran_out_is_refused_and_the_next_holder_settles(nats_url: str) -> None:
    async def scenario() -> tuple[str, Any, Any, int]:
        backend = await open_nats(nats_url, visibility_timeout=30)
        other = await open_nats(nats_url, prefix=backend.options.prefix, visibility_timeout=30)
        try:
            queue = backend.task_queue
            await queue.enqueue(_task("short"))
            [claim] = await queue.claim(["n"], worker_id="w1", lease_seconds=0.4)
            await asyncio.sleep(1.2)  # past the lease: its keeper gave the task back
            taken: list[Any] = []
            for _ in range(50):
                taken = await other.task_queue.claim(["n"], worker_id="w2", lease_seconds=30, wait=0.2)
                if taken:
                    break
            try:
                await queue.ack(claim, {"by": "w1"})
                late = "acked"
            except LeaseLostError:
                late = "lost"
            assert len(taken) == 1
            await other.task_queue.ack(taken[0], {"by": "w2"})
            result = await queue.wait_results(["short"], timeout=20)
            return late, result["short"], await queue.stats("n"), taken[0].attempt
        finally:
            await other.close()
            await backend.close()

    late, result, stats, attempt = run(scenario(), 60)
    assert late == "lost"
    assert result.output == {"by": "w2"} and result.worker_id == "w2"
    assert attempt == 2
    assert (stats.queued, stats.in_flight, stats.dead) == (0, 0, 0)


def test_enqueue_many_keeps_priority_order_idempotency_and_exact_stats(nats_url: str) -> None:
    tasks = [_task(f"p{i:03d}", priority=(i * 7) % 5 - 2, node_type="ab"[i % 2]) for i in range(150)]

    async def scenario() -> dict[str, Any]:
        one = await open_nats(nats_url)
        two = await open_nats(nats_url, prefix=one.options.prefix)
        try:
            batch = tasks[:100] + tasks[:10]  # repeats within the call
            flags_one, flags_two = await asyncio.gather(
                one.task_queue.enqueue_many(batch), two.task_queue.enqueue_many(tasks[50:]))
            stats_before = [await one.task_queue.stats(t) for t in "ab"]
            again = await one.task_queue.enqueue_many(tasks)
            order: list[Task] = []
            while True:
                got = await two.task_queue.claim(["a", "b"], worker_id="w", max_tasks=7)
                if not got:
                    break
                order.extend(c.task for c in got)
                for claim in got:
                    await two.task_queue.ack(claim, None)
            stats_after = [await one.task_queue.stats(t) for t in "ab"]
            return {"one": flags_one, "two": flags_two, "before": stats_before, "again": again, "order": order,
                    "after": stats_after}
        finally:
            await two.close()
            await one.close()

    out = run(scenario(), 80)
    assert out["one"][100:] == [False] * 10
    created: dict[str, int] = {}
    for task, flag in [*zip(tasks[:100], out["one"][:100]), *zip(tasks[50:], out["two"])]:
        created[task.id] = created.get(task.id, 0) + int(flag)
    assert created == {t.id: 1 for t in tasks}  # exactly one enqueue created each id
    assert [(s.queued, s.in_flight, s.dead) for s in out["before"]] == [(75, 0, 0), (75, 0, 0)]
    assert out["again"] == [False] * 150
    assert sorted(t.id for t in out["order"]) == sorted(t.id for t in tasks)
    priorities = [t.priority for t in out["order"]]
    assert priorities == sorted(priorities, reverse=True)
    assert [(s.queued, s.in_flight, s.dead) for s in out["after"]] == [(0, 0, 0), (0, 0, 0)]


def test_a_message_whose_producer_died_before_its_record_runs_once(nats_url: str) -> None:
    """An older version's producer stored the message (with its Nats-Msg-Id, message first) and
    died before creating the record: enqueue_many of the same id creates the record, the task
    runs once (its second message is acked away unrun), stats are exact."""

    async def scenario() -> dict[str, Any]:
        backend = await open_nats(nats_url)
        try:
            queue = backend.task_queue
            conn = backend.connection
            await queue.enqueue(_task("warm"))  # creates the consumer of this node type and priority
            [warm] = await queue.claim(["n"], worker_id="w")
            await queue.ack(warm, None)
            from distributed_agents.core.codec import encode
            from distributed_agents.core.ports.task_queue import task_to_dict

            orphan = _task("orphan")
            await conn.js.publish(conn.names.task_subject("n", 0), encode(task_to_dict(orphan)),
                                  headers={"Nats-Msg-Id": "orphan", "Da-Task-Id": "orphan"})
            flags = await queue.enqueue_many([orphan, _task("fresh")])
            claimed: list[str] = []
            for _ in range(20):
                got = await queue.claim(["n"], worker_id="w", max_tasks=5, wait=0.2)
                for claim in got:
                    claimed.append(claim.task.id)
                    await queue.ack(claim, {"id": claim.task.id})
                if sorted(claimed) == ["fresh", "orphan"]:
                    break
            late = await queue.claim(["n"], worker_id="w", max_tasks=5, wait=0.3)
            return {"flags": flags, "claimed": sorted(claimed), "late": late, "stats": await queue.stats("n"),
                    "result": await queue.get_result("orphan")}
        finally:
            await backend.close()

    out = run(scenario(), 60)
    assert out["flags"] == [True, True]
    assert out["claimed"] == ["fresh", "orphan"] and out["late"] == []
    assert out["result"] is not None and out["result"].output == {"id": "orphan"}
    assert (out["stats"].queued, out["stats"].in_flight, out["stats"].dead) == (0, 0, 0)


def test_an_ack_across_a_server_restart_lands_once() -> None:
    binary = find_nats_server()
    assert binary is not None

    async def scenario(server: NatsServer) -> tuple[Any, Any, list[Any]]:
        backend = await open_nats(server.url + "?reconnect_wait=0.2")
        try:
            queue = backend.task_queue
            await queue.enqueue_many([_task("r1"), _task("r2")])
            claims = await queue.claim(["n"], worker_id="w", max_tasks=2, lease_seconds=120)
            await queue.ack(claims[0], {"before": True})
            await asyncio.to_thread(server.restart)
            for _ in range(100):
                try:
                    await queue.ack(claims[1], {"after": True})
                    break
                except BackendUnavailableError:
                    await asyncio.sleep(0.2)
            results = await queue.wait_results(["r1", "r2"], timeout=20)
            for _ in range(20):
                if len(results) == 2:
                    break
                results.update(await queue.wait_results(["r1", "r2"], timeout=1))
            late = await queue.claim(["n"], worker_id="w2", max_tasks=2, wait=0.5)
            return results, await queue.stats("n"), late
        finally:
            await backend.close()

    with NatsServer(binary) as server:
        results, stats, late = run(scenario(server), 80)
    assert results["r1"].output == {"before": True} and results["r2"].output == {"after": True}
    assert (stats.queued, stats.in_flight, stats.dead) == (0, 0, 0)
    assert late == []



@settings(max_examples=120, deadline=None)
@given(st.text(alphabet=st.characters(max_codepoint=0x7F), max_size=40) | st.text(max_size=12))
def test_token_escapes_ascii_ids_as_the_regex_does_and_round_trips(value: str) -> None:
    """``token``'s one-call escape of ASCII ids (aef949a) makes what the regex makes: the same keys
    for ids queued before, and still injective."""
    expected = "_" if not value else naming._UNSAFE.sub(naming._escape, value)
    assert naming.token(value) == expected
    assert naming.untoken(naming.token(value)) == value


_AWKWARD = ['plain', 'q"uote', 'back\\\\slash\\\\', '","status":"running', 'caf\u00e9-\u2603', '\\\\"', 'a.b', '_5f']


def test_list_workflows_by_status_with_ids_and_graph_names_that_look_like_a_head(nats_url: str) -> None:
    """list_workflows(status) reads the status from the record's head without decoding (8124152):
    ids and graph names holding quotes, backslashes and a fake status must not fool it."""
    from distributed_agents.core.ports.state_store import WorkflowRecord

    async def scenario() -> dict[str, list[str]]:
        backend = await open_nats(nats_url)
        try:
            store = backend.state_store
            for index, name in enumerate(_AWKWARD):
                status = ("running", "completed", "paused")[index % 3]
                record = WorkflowRecord(workflow_id=f"wf{index}{name}", graph_name=f"g{name}", status=status,
                                        state={"status": "running", "x": name})
                await store.save(record, expected_version=0)
            return {status: sorted(r.workflow_id for r in await store.list_workflows(status))
                    for status in ("running", "completed", "paused", "failed")}
        finally:
            await backend.close()

    listed = run(scenario())
    expected: dict[str, list[str]] = {"running": [], "completed": [], "paused": [], "failed": []}
    for index, name in enumerate(_AWKWARD):
        expected[("running", "completed", "paused")[index % 3]].append(f"wf{index}{name}")
    assert listed == {status: sorted(ids) for status, ids in expected.items()}


# (A result at the payload limit, after 0 to 9 failed attempts: tests/adapters/nats/test_error_history.py.)


def test_a_record_just_under_max_payload_with_its_headers_over_it_fails_cleanly(nats_url: str) -> None:
    from distributed_agents.core.codec import encode
    from distributed_agents.core.ports.task_queue import TaskResult

    async def scenario() -> tuple[str, int]:
        backend = await open_nats(nats_url)
        try:
            queue = backend.task_queue
            nc = backend.connection.nc
            await queue.enqueue(Task("edge", "wf", "n", "n", {}, max_attempts=5))
            for _ in range(3):
                [claim] = await queue.claim(["n"], worker_id="w")
                await queue.nack(claim, "ValueError: " + "m" * 4000 + "\n" + "t" * 16000)
            [claim] = await queue.claim(["n"], worker_id="w")
            held = queue._held[claim.lease_id].record  # what the ack writes, to size the result
            fields = {**held, "state": "done", "lease": "", "expires_at": 1796030000.123456}
            fields.pop("result", None)
            base = len(encode(fields)) - 1 + len(',"result":') + 1
            empty = TaskResult("edge", "succeeded", output={"x": ""}, attempts=claim.attempt, worker_id="w")
            base += len(encode(empty.to_dict()))
            # The record's payload about 35 bytes under max_payload: its headers (~70 bytes) take it over.
            output = {"x": "y" * (nc.max_payload - 35 - base)}
            try:
                await asyncio.wait_for(queue.ack(claim, output), 30)
                outcome = "acked"
            except Exception as exc:  # noqa: BLE001 - the error is what is checked
                outcome = f"{type(exc).__name__}: {exc}"
            return outcome, int(nc.stats.get("reconnects", 0))
        finally:
            await backend.close()

    outcome, _ = run(scenario(), 60)
    assert outcome == "acked" or "MaxPayload" in outcome or "payload" in outcome.lower(), outcome


def test_tasks_published_with_foreign_headers_are_claimed_through_the_direct_reader(nats_url: str) -> None:
    """Messages pulled through the adapter's own reader path (405114d) carry whatever headers their
    producer set: odd values, status-like text, non-ASCII. Each is claimed (or dead-lettered when its
    Da-Task-Id names another task), and the client keeps working."""
    from distributed_agents.core.codec import encode
    from distributed_agents.core.ports.task_queue import task_to_dict

    odd: list[dict[str, str]] = [
        {"Da-Task-Id": "h0", "X-Colons": "a: b: c", "X-Empty": ""},
        {"Da-Task-Id": "h1", "X-Status": "NATS/1.0 503", "Status": "200"},
        {"Da-Task-Id": "h2", "X-Uni": "caf\u00e9 \u2603", "Nats-Msg-Id": "h2"},
        {"Da-Task-Id": "someone-else"},  # names another task than its body: dead-lettered
        {},
    ]

    async def scenario() -> tuple[list[str], list[Any], Any, list[bool]]:
        backend = await open_nats(nats_url)
        try:
            queue, conn = backend.task_queue, backend.connection
            await queue.enqueue(_task("warm"))  # the consumer of this node type and priority exists
            [warm] = await queue.claim(["n"], worker_id="w")
            await queue.ack(warm, None)
            for index, headers in enumerate(odd):
                body = encode(task_to_dict(_task(f"h{index}")))
                await conn.js.publish(conn.names.task_subject("n", 0), body, headers=headers or None)
            claimed: list[str] = []
            for _ in range(20):
                got = await queue.claim(["n"], worker_id="w", max_tasks=10, wait=0.2)
                for claim in got:
                    claimed.append(claim.task.id)
                    await queue.ack(claim, {"id": claim.task.id})
                if len(claimed) >= 4:
                    break
            dead = await queue.dead_letters("n")
            after = await queue.enqueue_many([_task("after")])
            [late] = await queue.claim(["n"], worker_id="w", wait=2)
            await queue.ack(late, None)
            return sorted(claimed), dead, await queue.stats("n"), after
        finally:
            await backend.close()

    claimed, dead, stats, after = run(scenario(), 60)
    assert claimed == ["h0", "h1", "h2", "h4"]
    assert [d.task_id for d in dead] and all("malformed" in d.reason or "names" in d.reason for d in dead), dead
    assert after == [True]
    assert (stats.queued, stats.in_flight) == (0, 0)


def test_one_pass_of_acks_with_a_duplicate_an_oversized_one_and_a_stale_lease_settles_each_exactly(
        nats_url: str) -> None:
    """Acks batched per event-loop pass (2c6722f): in one pass, the same claim acked twice, a result over
    max_payload, a claim whose lease another claimer took over, and 30 plain ones. Each plain task ends
    with its own result once; the duplicate and the stale lease are refused; the oversized one fails alone
    and its task is still leased to its claimer, who settles it afterwards; stats are exact."""

    async def scenario() -> dict[str, Any]:
        backend = await open_nats(nats_url, visibility_timeout=30)
        other = await open_nats(nats_url, prefix=backend.options.prefix, visibility_timeout=30)
        try:
            queue = backend.task_queue
            await queue.enqueue_many([_task(f"b{i:02d}") for i in range(33)])
            claims = await queue.claim(["n"], worker_id="w", max_tasks=33, lease_seconds=30)
            assert len(claims) == 33
            by_id = {c.task.id: c for c in claims}
            stale = by_id["b32"]
            # The stale one: its lease runs out (a claim with a short lease), another claimer takes it.
            await queue.release(stale)
            [stale] = await queue.claim(["n"], worker_id="w", lease_seconds=0.3)
            await asyncio.sleep(0.8)
            taken = []
            for _ in range(40):
                taken = await other.task_queue.claim(["n"], worker_id="w2", lease_seconds=30, wait=0.2)
                if taken:
                    break
            assert [t.task.id for t in taken] == ["b32"]
            big = {"x": "y" * (backend.connection.nc.max_payload + 10)}
            calls = [queue.ack(by_id[f"b{i:02d}"], {"i": i}) for i in range(30)]
            calls += [queue.ack(by_id["b00"], {"i": "again"}), queue.ack(by_id["b30"], big), queue.ack(stale, {"i": "stale"})]
            outcomes = await asyncio.gather(*calls, return_exceptions=True)
            await queue.ack(by_id["b30"], {"i": 30})  # still leased: settled with a result that fits
            await queue.ack(by_id["b31"], {"i": 31})
            await other.task_queue.ack(taken[0], {"i": "taken"})
            results = {f"b{i:02d}": await queue.get_result(f"b{i:02d}") for i in range(33)}
            again = await queue.claim(["n"], worker_id="w3", max_tasks=33, wait=0.3)
            return {"outcomes": outcomes, "results": results, "stats": await queue.stats("n"), "again": again}
        finally:
            await other.close()
            await backend.close()

    out = run(scenario(), 60)
    outcomes = out["outcomes"]
    assert outcomes[:30] == [None] * 30, outcomes[:30]
    duplicate, oversized, stale = outcomes[30:]
    assert isinstance(duplicate, LeaseLostError), repr(duplicate)
    assert isinstance(oversized, Exception) and "payload" in str(oversized).lower(), repr(oversized)
    assert isinstance(stale, LeaseLostError), repr(stale)
    expected = {f"b{i:02d}": {"i": i} for i in range(32)} | {"b32": {"i": "taken"}}
    assert {k: (r.output if r is not None else None) for k, r in out["results"].items()} == expected
    assert (out["stats"].queued, out["stats"].in_flight, out["stats"].dead) == (0, 0, 0)
    assert out["again"] == []
