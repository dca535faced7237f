"""Review of c870fc8 (NATS: the letter of a requeue that died before publishing can be purged
once that requeue must have died, ``_REQUEUE_TAKEOVER_SECONDS``) and of b36bd04's
conformance check of racing requeues, on real nats-servers (one, and the 3-server cluster)
and processes.

A requeue that died leaves the task's record queued with no message bound (``seq`` 0) and a
``requeued_at`` time; such a record is made here as the tests of c870fc8 make it (CAS over
the dead record), ``requeued_at`` older than the takeover time. A requeue that died after
its publish (before binding) leaves the same record and its message in the stream; that
message is published here with the headers a requeue gives it. A requeue paused between its
record write and its publish is a real process stopped there (SIGSTOP), resumed after."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from support.aio import run

from distributed_agents.adapters.nats import kv
from distributed_agents.adapters.nats.naming import token
from distributed_agents.core.codec import encode
from distributed_agents.core.ports.task_queue import Task, task_to_dict

from .conftest import open_nats, settle
from .test_review_s13 import PROCESS_RACE

pytestmark = pytest.mark.timeout(120)

AWKWARD = ["plain", " a", "=x"]  # carried as itself, as a token (a header strips it), "="-led


def _prefix(tag: str) -> str:
    return f"{tag}{uuid.uuid4().hex[:8]}"


def _task(task_id: str, **fields: Any) -> Task:
    return Task(task_id, "wf", "n", "alpha", {"id": task_id}, **fields)


async def _make_dead(queue: Any, task_id: str, reason: str = "boom") -> None:
    assert await queue.enqueue(_task(task_id, max_attempts=1))
    claims = await queue.claim(["alpha"], worker_id="w", max_tasks=1, wait=5)
    assert [c.task.id for c in claims] == [task_id]
    await queue.nack(claims[0], reason, final=True)


async def _requeue_died(backend: Any, task_id: str, *, age: float = 31.0) -> None:
    """The record a requeue of dead ``task_id`` leaves when it dies before binding a message,
    ``age`` seconds ago."""
    from distributed_agents.adapters.nats.task_queue import _new_record

    queue = backend.task_queue
    found = await queue._read_from_leader(task_id)  # noqa: SLF001
    assert found.record is not None and found.record["state"] == "dead", found.record
    record = {**_new_record(task_id, "alpha", 0, 1, seq=0), "requeued_at": time.time() - age}
    assert await kv.cas(backend.connection.js, queue._tasks, token(task_id), encode(record),  # noqa: SLF001
                        last=found.revision) is not None


async def _requeue_message(backend: Any, task_id: str) -> int:
    """Publish the message a requeue of ``task_id`` publishes (its payload, its headers); its stream sequence."""
    from distributed_agents.adapters.nats.task_queue import _carried_id, _id_headers

    ack = await backend.connection.js.publish(
        backend.connection.names.task_subject("alpha", 0), encode(task_to_dict(_task(task_id, max_attempts=1))),
        headers=_id_headers(task_id, f"{_carried_id(task_id)}/requeue/{uuid.uuid4().hex}"))
    return int(ack.seq)


async def _drain(queue: Any, *, wait: float = 1.0) -> list[str]:
    ran: list[str] = []
    for _ in range(20):
        claims = await queue.claim(["alpha"], worker_id="drain", max_tasks=8, wait=wait)
        if not claims:
            return ran
        for claim in claims:
            ran.append(claim.task.id)
            await queue.ack(claim, {"ran": claim.task.id})
    return ran


async def _letters(queue: Any) -> list[str]:
    return sorted(d.task_id for d in await queue.dead_letters())


# -- races between purges and requeues of such letters -----------------------------------------

def test_racing_purges_and_requeues_of_died_requeues_letters_answer_true_once(nats_url: str) -> None:
    """Two connections, each round a purge and a requeue (or two purges) of a died requeue's
    letter, the second 0-4 ms after the first, either first; ids a header carries and not.
    Exactly one True; a requeued task runs once; a purged one never, its failed result (the
    letter's reason) is read, requeue and enqueue of it answer False; no letter is left."""

    async def scenario() -> list[tuple[Any, ...]]:
        prefix = _prefix("rp")
        one, two = await open_nats(nats_url, prefix=prefix), await open_nats(nats_url, prefix=prefix)
        outcomes = []
        try:
            for round_ in range(18):
                task_id = f"{AWKWARD[round_ % 3]}{round_}"
                await _make_dead(one.task_queue, task_id, reason=f"boom {round_}")
                await _requeue_died(one, task_id)
                kinds = ("purge", "requeue") if round_ % 6 < 4 else ("purge", "purge")
                if round_ % 2:
                    kinds = kinds[::-1]
                delay = (round_ % 5) * 0.001

                async def act(queue: Any, kind: str, wait: float) -> bool:
                    await asyncio.sleep(wait)
                    call = queue.purge_dead_letter if kind == "purge" else queue.requeue_dead_letter
                    return bool(await call(task_id))

                answers = await asyncio.gather(act(one.task_queue, kinds[0], 0), act(two.task_queue, kinds[1], delay))
                ran = await _drain(one.task_queue, wait=0.5)
                purged = any(a for a, k in zip(answers, kinds) if k == "purge")
                result = await one.task_queue.get_result(task_id)
                after = (await one.task_queue.requeue_dead_letter(task_id),
                         await one.task_queue.enqueue(_task(task_id)) if purged else None)
                outcomes.append((task_id, f"boom {round_}", kinds, answers, ran, purged,
                                 None if result is None else (result.status, result.error),
                                 after, await _letters(one.task_queue)))
        finally:
            await one.close()
            await two.close()
        return outcomes

    for task_id, reason, kinds, answers, ran, purged, result, after, letters in run(scenario(), 110):
        where = (task_id, kinds, answers, ran, result, after, letters)
        assert sorted(answers) == [False, True] and letters == [], where
        if purged:
            assert ran == [] and after == (False, False), where
            assert result == ("failed", reason), where
        else:
            assert ran == [task_id] and result is not None and result[0] == "succeeded", where


def _died_letters_in_two_processes(url: str, other: str,
                                   ids: list[str]) -> tuple[list[bool], list[bool], list[str], list[str]]:
    prefix = _prefix("pp")

    async def make() -> None:
        backend = await open_nats(url, prefix=prefix)
        try:
            await settle(backend)  # on the cluster: the streams and consumer just made answer
            for task_id in ids:
                await _make_dead(backend.task_queue, task_id)
                await _requeue_died(backend, task_id)
        finally:
            await backend.close()

    run(make(), 90)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH")]))}
    errors = [tempfile.TemporaryFile(mode="w+") for _ in range(2)]
    procs = [subprocess.Popen([sys.executable, "-c", PROCESS_RACE,
                               json.dumps({"url": u, "prefix": prefix, "ids": ids, "op": op})],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True, env=env,
                              cwd=tempfile.gettempdir())
             for (u, op), err in zip(((url, "requeue"), (other, "purge")), errors)]
    results = []
    try:
        for proc in procs:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "READY"
        for index, _ in enumerate(ids):
            # The second go 0-6 ms after the first, the requeuer or the purger first by turns.
            for proc in procs[::-1] if index % 2 else procs:
                assert proc.stdin is not None
                proc.stdin.write("go\n")
                proc.stdin.flush()
                time.sleep((index % 4) * 0.002)
            for proc in procs:
                assert proc.stdout is not None and proc.stdout.readline().strip() == "DONE"
        for proc, err in zip(procs, errors):
            assert proc.stdout is not None and proc.stdin is not None
            out = proc.stdout.readline()
            proc.stdin.close()
            proc.wait(60)
            lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
            err.seek(0)
            assert lines, (proc.returncode, out[-1000:], err.read()[-4000:])
            results.append(json.loads(lines[-1][7:]))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    pipe.close()
        for err in errors:
            err.close()

    async def check() -> tuple[list[str], list[str]]:
        backend = await open_nats(url, prefix=prefix)
        try:
            return await _drain(backend.task_queue, wait=1.5), await _letters(backend.task_queue)
        finally:
            await backend.close()

    ran, letters = run(check(), 60)
    return results[0], results[1], ran, letters


@pytest.mark.parametrize("where", ["one_server", "cluster"])
def test_a_requeue_and_a_purge_of_died_requeues_letters_in_two_processes_agree(
        where: str, request: pytest.FixtureRequest) -> None:
    """Two processes, one requeueing and one purging each of nine died requeues' letters,
    their goes 0-6 ms apart either way (on the cluster through different servers, replicas
    3): one True per letter, a requeued task runs once, a purged one never, no letter left."""
    if where == "cluster":
        cluster = request.getfixturevalue("nats_cluster")
        url, other = cluster.server(0).url + "?replicas=3", cluster.server(2).url + "?replicas=3"
    else:
        url = other = request.getfixturevalue("nats_url")
    ids = [f"{lead}{i}" for i, lead in enumerate(AWKWARD * 3)]
    requeued, purged, ran, letters = _died_letters_in_two_processes(url, other, ids)
    assert [r != p for r, p in zip(requeued, purged)] == [True] * len(ids), list(zip(ids, requeued, purged))
    assert sorted(ran) == sorted(i for i, r in zip(ids, requeued) if r), (ran, requeued)
    assert letters == [], letters


def test_racing_purges_through_different_cluster_servers_answer_true_once(nats_cluster: Any) -> None:
    """On the 3-server cluster (replicas 3), the died record written through one server and
    purged at once through the two others (whose replicas may not have it yet): one True,
    the other False; nothing listed; the failed result read everywhere."""
    urls = [nats_cluster.server(i).url + "?replicas=3" for i in range(3)]

    async def scenario() -> list[tuple[Any, ...]]:
        prefix = _prefix("cp")
        backends = [await open_nats(u, prefix=prefix) for u in urls]
        writer, one, two = backends
        outcomes = []
        try:
            for backend in backends:  # the streams and consumer just made answer through each
                await settle(backend)
            for round_ in range(6):
                task_id = f"{AWKWARD[round_ % 3]}c{round_}"
                await _make_dead(writer.task_queue, task_id)
                await _requeue_died(writer, task_id)
                answers = await asyncio.gather(one.task_queue.purge_dead_letter(task_id),
                                               two.task_queue.purge_dead_letter(task_id))
                results = [await b.task_queue.get_result(task_id) for b in backends]
                outcomes.append((task_id, sorted(answers), [None if r is None else r.status for r in results],
                                 await _letters(writer.task_queue)))
            return outcomes
        finally:
            for backend in backends:
                await backend.close()

    for task_id, answers, statuses, letters in run(scenario(), 110):
        assert (answers, letters) == ([False, True], []), (task_id, answers, letters)
        assert statuses == ["failed"] * 3, (task_id, statuses)


# -- what the letter holds -----------------------------------------------------------------------

def test_a_died_requeues_raw_letter_purges_once_and_never_requeues(nats_url: str) -> None:
    """A died requeue whose letter holds raw bytes and no task (as a death at claim writes
    it): purge True once (the result is the letter's reason), requeue False, nothing runs."""

    async def scenario() -> tuple[Any, ...]:
        backend = await open_nats(nats_url, prefix=_prefix("rl"))
        queue = backend.task_queue
        try:
            await _make_dead(queue, " r")
            await _requeue_died(backend, " r")
            key = f"{token('alpha')}.{token(' r')}"
            letter = {"task_id": " r", "node_type": "alpha", "reason": "undecodable", "errors": ["undecodable"],
                      "attempts": 0, "task": None, "raw": base64.b64encode(b"{junk").decode(), "dead_at": time.time(),
                      "priority": 0, "max_attempts": None}
            await kv.put(backend.connection.js, queue._dead, key, encode(letter))  # noqa: SLF001
            answers = [await queue.requeue_dead_letter(" r"), await queue.purge_dead_letter(" r"),
                       await queue.purge_dead_letter(" r"), await queue.requeue_dead_letter(" r")]
            result = await queue.get_result(" r")
            return answers, await _letters(queue), await _drain(queue, wait=0.5), result and result.error
        finally:
            await backend.close()

    assert run(scenario(), 60) == ([False, True, False, False], [], [], "undecodable")


def test_a_died_requeues_letter_is_purged_as_the_newest_death_it_describes(nats_url: str) -> None:
    """The letter a died requeue left was since rewritten (a newer death of the task under the
    same key): the purge's failed result and attempts are the newest letter's."""

    async def scenario() -> tuple[Any, ...]:
        backend = await open_nats(nats_url, prefix=_prefix("nw"))
        queue = backend.task_queue
        try:
            await _make_dead(queue, "=n", reason="first")
            await _requeue_died(backend, "=n")
            key = f"{token('alpha')}.{token('=n')}"
            entry = await kv.get(queue._dead, key)  # noqa: SLF001
            letter = {**json.loads(entry.value), "reason": "second", "errors": ["first", "second"], "attempts": 2}
            await kv.put(backend.connection.js, queue._dead, key, encode(letter))  # noqa: SLF001
            purged = await queue.purge_dead_letter("=n")
            result = await queue.get_result("=n")
            return purged, result and (result.status, result.error, result.attempts), await _letters(queue)
        finally:
            await backend.close()

    assert run(scenario(), 60) == (True, ("failed", "second", 2), [])


def test_a_damaged_letter_of_a_died_requeue_can_be_purged(nats_url: str) -> None:
    """A died requeue whose letter is damaged (not JSON): listed with the reason "damaged dead
    letter ...; purge it". As for a dead record's damaged letter, a purge removes it (True)."""

    async def scenario() -> tuple[Any, ...]:
        backend = await open_nats(nats_url, prefix=_prefix("dl"))
        queue = backend.task_queue
        try:
            await _make_dead(queue, "dmg")
            await _requeue_died(backend, "dmg")
            await kv.put(backend.connection.js, queue._dead, f"{token('alpha')}.{token('dmg')}",  # noqa: SLF001
                         b"\x00not a letter")
            reasons = [d.reason for d in await queue.dead_letters()]
            assert len(reasons) == 1 and "purge it" in reasons[0], reasons
            return await queue.requeue_dead_letter("dmg"), await queue.purge_dead_letter("dmg"), await _letters(queue)
        finally:
            await backend.close()

    assert run(scenario(), 60) == (False, True, [])


def test_the_control_a_dead_records_damaged_letter_purges(nats_url: str) -> None:
    """The control of the test above: the same damaged letter with the task's record dead
    (no requeue in between) purges: True, nothing listed."""

    async def scenario() -> tuple[Any, ...]:
        backend = await open_nats(nats_url, prefix=_prefix("dc"))
        queue = backend.task_queue
        try:
            await _make_dead(queue, "dmg")
            await kv.put(backend.connection.js, queue._dead, f"{token('alpha')}.{token('dmg')}",  # noqa: SLF001
                         b"\x00not a letter")
            return await queue.requeue_dead_letter("dmg"), await queue.purge_dead_letter("dmg"), await _letters(queue)
        finally:
            await backend.close()

    assert run(scenario(), 60) == (False, True, [])


# -- a requeue that died after publishing: its message is in the stream --------------------------

def test_a_purge_racing_a_claim_of_a_died_requeues_message_one_wins(nats_url: str) -> None:
    """A requeue died after its publish (its message in the stream, the record unbound): a
    purge and a claim of that message at once (two connections). Either the claim runs the
    task and the purge answers False, or the purge answers True and the task never runs;
    no letter is left either way."""

    async def scenario() -> list[tuple[Any, ...]]:
        prefix = _prefix("pc")
        one, two = await open_nats(nats_url, prefix=prefix), await open_nats(nats_url, prefix=prefix)
        outcomes = []
        try:
            for round_ in range(12):
                task_id = f"{AWKWARD[round_ % 3]}m{round_}"
                await _make_dead(one.task_queue, task_id)
                await _requeue_died(one, task_id)
                await _requeue_message(one, task_id)
                delay = (round_ % 4) * 0.002

                async def purge() -> bool:
                    await asyncio.sleep(delay)
                    return bool(await two.task_queue.purge_dead_letter(task_id))

                claims, purged = await asyncio.gather(
                    one.task_queue.claim(["alpha"], worker_id="w", max_tasks=2, wait=0), purge())
                ran = [c.task.id for c in claims]
                for claim in claims:
                    await one.task_queue.ack(claim, {})
                ran += await _drain(one.task_queue, wait=0.3)
                outcomes.append((task_id, purged, ran, await _letters(one.task_queue)))
        finally:
            await one.close()
            await two.close()
        return outcomes

    for task_id, purged, ran, letters in run(scenario(), 110):
        assert ran == ([] if purged else [task_id]) and letters == [], (task_id, purged, ran, letters)


def test_a_purged_died_requeues_message_never_runs(nats_url: str) -> None:
    """A requeue died after its publish, before binding (no claimer was running). A purge once
    the requeue must have died that answers True means the task never runs, also once
    result_ttl (2 s here) passed and its record expired."""

    async def scenario() -> tuple[Any, ...]:
        backend = await open_nats(nats_url, prefix=_prefix("pm"), result_ttl=2.0)
        queue = backend.task_queue
        try:
            await _make_dead(queue, "pm")
            await _requeue_died(backend, "pm")
            await _requeue_message(backend, "pm")
            purged = await queue.purge_dead_letter("pm")
            for _ in range(100 if purged else 0):  # the record's TTL (the result's) passes
                if await kv.get(queue._tasks, token("pm")) is None:  # noqa: SLF001
                    break
                await asyncio.sleep(0.2)
            return purged, await _drain(queue, wait=0.5), await _letters(queue)
        finally:
            await backend.close()

    purged, ran, letters = run(scenario(), 60)
    # Purged: never runs. (Or the purge declines, the message being the requeue's: it runs once.)
    assert (purged, ran, letters) in [(True, [], []), (False, ["pm"], [])], (purged, ran, letters)


def test_a_purged_died_requeues_message_is_not_run_while_its_result_is_kept(nats_url: str) -> None:
    """The same message claimed within result_ttl: acked away, the task does not run, the
    failed result stays, no letter comes back."""

    async def scenario() -> tuple[Any, ...]:
        backend = await open_nats(nats_url, prefix=_prefix("pk"))
        queue = backend.task_queue
        try:
            await _make_dead(queue, " k")
            await _requeue_died(backend, " k")
            await _requeue_message(backend, " k")
            purged = await queue.purge_dead_letter(" k")
            ran = await _drain(queue, wait=0.5)
            result = await queue.get_result(" k")
            return purged, ran, await _letters(queue), result and result.status, await queue.enqueue(_task(" k"))
        finally:
            await backend.close()

    assert run(scenario(), 60) == (True, [], [], "failed", False)


def test_a_requeue_taking_over_from_one_that_died_after_publishing_runs_the_task_once(nats_url: str) -> None:
    """A requeue died after its publish (its message in the stream, the record unbound); the
    next requeue takes over (True) and publishes its own message: the task runs once (the
    older message is a stale duplicate), no letter is left, a purge after answers False."""

    async def scenario() -> tuple[Any, ...]:
        backend = await open_nats(nats_url, prefix=_prefix("to"))
        queue = backend.task_queue
        try:
            await _make_dead(queue, " o")
            await _requeue_died(backend, " o")
            await _requeue_message(backend, " o")
            requeued = await queue.requeue_dead_letter(" o")
            ran = await _drain(queue, wait=0.5)
            return requeued, ran, await _letters(queue), await queue.purge_dead_letter(" o")
        finally:
            await backend.close()

    assert run(scenario(), 60) == (True, [" o"], [], False)


# -- result_ttl and the record's TTL -----------------------------------------------------------

def test_a_purged_died_requeue_keeps_its_result_then_frees_its_id(nats_url: str) -> None:
    """result_ttl (3 s) shorter than the died record's age (31 s): right after the purge the
    failed result is read and enqueue answers False; the record then expires (its TTL), and
    the id is free: enqueue True, the new task runs once."""

    async def scenario() -> tuple[Any, ...]:
        backend = await open_nats(nats_url, prefix=_prefix("tt"), result_ttl=3.0)
        queue = backend.task_queue
        try:
            await _make_dead(queue, "=t")
            await _requeue_died(backend, "=t")
            purged = await queue.purge_dead_letter("=t")
            found = await queue._read_from_leader("=t")  # noqa: SLF001
            kept = (found.record or {}).get("expires_at", 0) - time.time()
            result = await queue.get_result("=t")
            refused = await queue.enqueue(_task("=t"))
            gone = False
            for _ in range(100):
                if await kv.get(queue._tasks, token("=t")) is None:  # noqa: SLF001
                    gone = True
                    break
                await asyncio.sleep(0.2)
            after = await queue.get_result("=t")
            enqueued = await queue.enqueue(_task("=t"))
            return purged, kept > 0, result and result.status, refused, gone, after, enqueued, await _drain(queue)
        finally:
            await backend.close()

    assert run(scenario(), 60) == (True, True, "failed", False, True, None, True, ["=t"])


def test_within_the_takeover_time_a_purge_keeps_the_letter_and_a_later_one_takes_it(nats_url: str) -> None:
    """A record 25 s old (the requeue may still be under way): purge False, the letter stays
    listed and nothing runs; the same record past the takeover time purges: True."""

    async def scenario() -> tuple[Any, ...]:
        backend = await open_nats(nats_url, prefix=_prefix("yw"))
        queue = backend.task_queue
        try:
            await _make_dead(queue, " y")
            found = await queue._read_from_leader(" y")  # noqa: SLF001
            await _requeue_died(backend, " y", age=25.0)
            young = await queue.purge_dead_letter(" y")
            listed = await _letters(queue)
            # The same record, aged: written again over the young one.
            from distributed_agents.adapters.nats.task_queue import _new_record

            now = await queue._read_from_leader(" y")  # noqa: SLF001
            record = {**_new_record(" y", "alpha", 0, 1, seq=0), "requeued_at": time.time() - 31.0}
            assert found.revision != now.revision
            assert await kv.cas(backend.connection.js, queue._tasks, token(" y"), encode(record),  # noqa: SLF001
                                last=now.revision) is not None
            old = await queue.purge_dead_letter(" y")
            return young, listed, old, await _letters(queue), await _drain(queue, wait=0.5)
        finally:
            await backend.close()

    assert run(scenario(), 60) == (False, [" y"], True, [], [])


# -- a requeue that stalled (not died) past the takeover time ---------------------------------------

STALLED_REQUEUE = r"""
import asyncio, json, os, signal, sys
from distributed_agents.adapters.nats.backend import NatsBackend
from distributed_agents.core.ports.backend import BackendOptions

async def main(job):
    backend = NatsBackend(job["url"], BackendOptions.from_url(job["url"], prefix=job["prefix"]))
    await backend.connect()
    try:
        queue = backend.task_queue

        def stop_once_written(frame, event, arg):
            # The record is written (its CAS answered) when the requeue goes on to the consumer:
            # the process stops there, as one paused by the machine would.
            if event == "call" and frame.f_code.co_name in ("_ensure_level", "_ensure_consumer"):
                sys.setprofile(None)
                print("STOPPING", flush=True)
                os.kill(os.getpid(), signal.SIGSTOP)

        sys.setprofile(stop_once_written)
        answer = await queue.requeue_dead_letter(job["id"])
        sys.setprofile(None)
        print("RESULT " + json.dumps(bool(answer)), flush=True)
    finally:
        await backend.close()

asyncio.run(main(json.loads(sys.argv[1])))
"""


def _stopped(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0] == "T"


@pytest.fixture(scope="module")
def tree_before_requeued_at() -> Any:
    """The tree of d29d1f1^ (77ce1a5), the last version whose requeue writes no
    ``requeued_at``, laid out as installed (facade is the package)."""
    repo = Path(__file__).resolve().parents[3]
    root = Path(tempfile.mkdtemp(prefix="da-77ce1a5-"))
    try:
        raw = subprocess.run(["git", "-C", str(repo), "archive", "77ce1a5", "facade", "core", "adapters",
                              "conformance"], capture_output=True, timeout=60)
        if raw.returncode != 0:
            pytest.skip(f"no commit 77ce1a5 in {repo}")
        extract = root / "x"
        extract.mkdir()
        subprocess.run(["tar", "-x", "-C", str(extract)], input=raw.stdout, check=True, timeout=60)
        package = root / "distributed_agents"
        shutil.copytree(extract / "facade", package)
        for part in ("core", "adapters", "conformance"):
            shutil.copytree(extract / part, package / part)
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _paused_requeue(url: str, task_id: str, meanwhile: Callable[[str], Awaitable[Any]],
                    tree: Path | None = None) -> tuple[Any, bool, list[str], list[str]]:
    """A requeue of dead ``task_id`` in another process (of ``tree``, or this version) stopped
    between its record write and its publish; ``meanwhile(prefix)`` runs; then the requeue goes
    on. What ``meanwhile`` returned, the requeue's answer, what ran after, the letters left."""
    prefix = _prefix("pq")

    async def setup() -> None:
        backend = await open_nats(url, prefix=prefix)
        try:
            await _make_dead(backend.task_queue, task_id)
        finally:
            await backend.close()

    run(setup(), 60)
    err = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen([sys.executable, "-c", STALLED_REQUEUE,
                             json.dumps({"url": url, "prefix": prefix, "id": task_id})],
                            stdout=subprocess.PIPE, stderr=err, text=True, cwd=tempfile.gettempdir(),
                            env={**os.environ, "PYTHONPATH": str(tree)} if tree is not None else None)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        err.seek(0)
        assert line == "STOPPING", (line, err.read()[-4000:])
        for _ in range(200):
            if _stopped(proc.pid):
                break
            time.sleep(0.05)
        assert _stopped(proc.pid)
        seen = run(meanwhile(prefix), 60)
        os.kill(proc.pid, signal.SIGCONT)
        out, _ = proc.communicate(timeout=60)
        err.seek(0)
        lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
        assert lines, (proc.returncode, out[-1000:], err.read()[-4000:])
        requeued = json.loads(lines[-1][7:])
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
            proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
        err.close()

    async def after() -> tuple[list[str], list[str]]:
        backend = await open_nats(url, prefix=prefix)
        try:
            return await _drain(backend.task_queue, wait=1.0), await _letters(backend.task_queue)
        finally:
            await backend.close()

    ran, letters = run(after(), 60)
    return seen, requeued, ran, letters


async def _age(backend: Any, task_id: str, age: float) -> None:
    """Make the paused requeue's record ``age`` seconds older (standing in for the pause lasting that long)."""
    queue = backend.task_queue
    found = await queue._read_from_leader(task_id)  # noqa: SLF001
    assert found.record is not None and found.record["state"] == "queued" and not found.record["seq"], found.record
    aged = {**found.record, "requeued_at": found.record["requeued_at"] - age}
    assert await kv.cas(backend.connection.js, queue._tasks, token(task_id), encode(aged),  # noqa: SLF001
                        last=found.revision) is not None


def _paused_requeue_and_purge(url: str, tree: Path | None, task_id: str, *, age: float) -> tuple[Any, ...]:
    """``_paused_requeue`` with, meanwhile, its record aged ``age`` seconds (standing in for the
    pause lasting that long; 0: not aged) and a purge: the purge's and the requeue's answers,
    what ran after, the letters left."""

    async def purge_meanwhile(prefix: str) -> bool:
        backend = await open_nats(url, prefix=prefix)
        try:
            found = await backend.task_queue._read_from_leader(task_id)  # noqa: SLF001
            assert found.record is not None and found.record["state"] == "queued" and not found.record["seq"]
            if age:
                await _age(backend, task_id, age)
            return bool(await backend.task_queue.purge_dead_letter(task_id))
        finally:
            await backend.close()

    return _paused_requeue(url, task_id, purge_meanwhile, tree)


def test_a_requeue_paused_past_the_takeover_time_and_a_purge_are_not_both_true(nats_url: str) -> None:
    """A requeue (another process) stops between its record write and its publish, for longer
    than ``_REQUEUE_TAKEOVER_SECONDS`` (its record is aged here instead of waiting); a purge
    then takes the letter: True. The requeue, resumed, must not answer True as well: the
    task it would have requeued never runs."""
    purged, requeued, ran, letters = _paused_requeue_and_purge(nats_url, None, "=s", age=31.0)
    assert letters == [], letters
    assert sorted([purged, requeued]) == [False, True], (purged, requeued, ran)
    assert ran == ([] if purged else ["=s"]), (purged, requeued, ran)


def test_a_purge_during_a_previous_versions_requeue_and_that_requeue_are_not_both_true(
        nats_url: str, tree_before_requeued_at: Path) -> None:
    """Mixed versions (a rolling upgrade): a requeue by 77ce1a5, which writes no ``requeued_at``,
    is between its record write and its publish (held there, a few ms in real runs) when
    this version purges the letter. Exactly one of the two may answer True."""
    purged, requeued, ran, letters = _paused_requeue_and_purge(nats_url, tree_before_requeued_at, "old", age=0.0)
    assert letters == [], letters
    assert sorted([purged, requeued]) == [False, True], (purged, requeued, ran)
    assert ran == ([] if purged else ["old"]), (purged, requeued, ran)


# -- cancel of a died requeue's task ---------------------------------------------------------------

def test_a_cancel_of_a_died_requeues_task_leaves_no_letter_nothing_can_take(nats_url: str) -> None:
    """A requeue died before publishing (31 s ago): nothing will run the task, its letter is
    listed. A cancel of it then either answers False (the task is dead: the purge answers True)
    or takes the task and its letter with it (nothing listed after)."""

    async def scenario() -> tuple[Any, ...]:
        backend = await open_nats(nats_url, prefix=_prefix("cn"))
        queue = backend.task_queue
        try:
            await _make_dead(queue, "cn")
            await _requeue_died(backend, "cn")
            cancelled = await queue.cancel("cn")
            listed = await _letters(queue)
            requeued = await queue.requeue_dead_letter("cn")
            purged = await queue.purge_dead_letter("cn")
            return cancelled, listed, requeued, purged, await _drain(queue, wait=0.5)
        finally:
            await backend.close()

    outcome = run(scenario(), 60)
    assert outcome in [(False, ["cn"], False, True, []), (True, [], False, False, [])], outcome


# -- b36bd04: the conformance check of racing requeues ---------------------------------------------

def _requeue_check_violations(queue_class: type) -> list[str]:
    """The clauses the ``requeue_dead_letter`` conformance check reports against the memory
    backend with ``queue_class`` as its task queue (none: it passed)."""
    from conformance import broken_backends as bb

    from distributed_agents.conformance import (
        BackendFactory,
        CheckContext,
        ContractViolation,
        Requirements,
        checks_for_clause,
        current_profile,
        run_check,
    )

    [check] = [c for c in checks_for_clause("task_queue.requeue") if c.name == "requeue_dead_letter"]
    context = CheckContext(BackendFactory("memory://review-s14", opener=bb.broken_opener(task_queue=queue_class)),
                           Requirements(delivery_timeout=0.5), current_profile("default"))
    try:
        run_check(check, context)
    except ContractViolation as exc:
        return [f"{exc.clause.id}: {exc}"]
    return []


def test_the_racing_requeues_check_catches_a_requeue_that_answers_true_once_but_delivers_twice() -> None:
    """The check's second half (delivered once) has teeth of its own: a variant whose racing
    requeues answer True once, but whose losers leave the task to be delivered again after
    its first delivery, is reported under task_queue.requeue; the unbroken queue passes."""
    from distributed_agents.adapters.memory.task_queue import MemoryTaskQueue

    again: dict[int, set[str]] = {}

    class LoserQueuesAgainQueue(MemoryTaskQueue):
        async def requeue_dead_letter(self, task_id: str) -> bool:
            seen = task_id in self._data.dead
            await asyncio.sleep(0)  # the racing requeues all see the letter
            done = await super().requeue_dead_letter(task_id)
            if seen and not done:
                again.setdefault(id(self._data), set()).add(task_id)
            return done

        async def claim(self, node_types: Any, **options: Any) -> Any:
            claims = await super().claim(node_types, **options)
            for claim in claims:
                if claim.task.id in again.get(id(self._data), set()):
                    again[id(self._data)].discard(claim.task.id)
                    with self._data.lock:
                        self._push_ready(self._data.entries[claim.task.id])
            return claims

    assert _requeue_check_violations(MemoryTaskQueue) == []
    [violation] = _requeue_check_violations(LoserQueuesAgainQueue)
    assert violation.startswith("task_queue.requeue:") and "delivered ['t2', 't2']" in violation, violation
