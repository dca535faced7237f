"""Review of f892713 (task id headers), 5ea9ba3 (a racing requeue and purge of one dead
letter), d9d2190 (a batched claim's letter-size check) and 035996a (test launchers: port
collisions, restarts, cluster route ports), on real nats-servers, with producers and
claimers of older trees in subprocesses.

Older trees: 3d8a7a8 (installed at ``/work/scratch/s13/old``: ``Da-Task-Id`` and
``Nats-Msg-Id`` are the id itself) and 1e3c921 (the version just before f892713: both
headers are ``_carried_id``, "=" and the token for an id a header cannot carry exactly or
one starting with "="), extracted from git into a temporary directory laid out as the
package is installed. Tests needing a tree that is missing are skipped.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from support.aio import run

from distributed_agents.adapters.nats import kv
from distributed_agents.adapters.nats.naming import token
from distributed_agents.core.codec import encode
from distributed_agents.core.errors import LeaseLostError
from distributed_agents.core.ports.task_queue import Task, task_to_dict

from .conftest import open_nats, settle

pytestmark = pytest.mark.timeout(120)

OLD_TREE = Path("/work/scratch/s13/old")
REPO = Path(__file__).resolve().parents[3]

# Ids a header carries exactly (kept as Da-Task-Id by every version) and ids it cannot.
CARRIED = ["plain", "=eq", "=", "=_20a", "a\tb", "ünï", "wf:r.1:0:n", "a b", "a\x00b", "a\u2028b", "a\x85b",
           "e\u0301", "\u00e9", "x:y: z"]
NOT_CARRIED = [" lead", "trail ", "line\nbreak", "cr\rlf", "\ttab", "\u00a0nbsp", " a", "\x1ca", "a\u2028", "\u3000w"]

# Run in a subprocess with PYTHONPATH set to a tree: enqueue ids, or claim and ack until empty.
CHILD = r"""
import asyncio, json, sys
from distributed_agents.adapters.nats.backend import NatsBackend
from distributed_agents.core.ports.backend import BackendOptions
from distributed_agents.core.ports.task_queue import Task

async def main(job):
    backend = NatsBackend(job["url"], BackendOptions.from_url(job["url"], prefix=job["prefix"]))
    await backend.connect()
    queue = backend.task_queue
    out = {}
    try:
        if job["op"] == "enqueue":
            out["enqueued"] = [await queue.enqueue(Task(i, "wf", "n", "alpha", {"id": i})) for i in job["ids"]]
        else:
            ran = []
            for _ in range(40):
                claims = await queue.claim(["alpha"], worker_id="old", max_tasks=job.get("max_tasks", 8), wait=1.0)
                if not claims:
                    break
                for claim in claims:
                    assert claim.task.payload == {"id": claim.task.id}, claim.task
                    ran.append(claim.task.id)
                    await queue.ack(claim, {"ran": claim.task.id})
            out["ran"] = ran
            out["dead"] = [[d.task_id, d.reason] for d in await queue.dead_letters()]
    finally:
        await backend.close()
    print("RESULT " + json.dumps(out))

asyncio.run(main(json.loads(sys.stdin.read())))
"""


def _child(tree: Path, job: dict[str, Any]) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run([sys.executable, "-c", CHILD], input=json.dumps(job), capture_output=True, text=True,
                          timeout=90, env=env, cwd=tempfile.gettempdir())
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, (done.returncode, done.stdout[-2000:], done.stderr[-4000:])
    return json.loads(lines[-1][len("RESULT "):])


@pytest.fixture(scope="module")
def old_tree() -> Path:
    if not (OLD_TREE / "distributed_agents" / "adapters" / "nats" / "task_queue.py").exists():
        pytest.skip("no 3d8a7a8 tree at /work/scratch/s13/old")
    return OLD_TREE


@pytest.fixture(scope="module")
def previous_tree() -> Any:
    """1e3c921 laid out as installed (facade is the package; core, adapters, conformance in it)."""
    root = Path(tempfile.mkdtemp(prefix="da-1e3c921-"))
    try:
        raw = subprocess.run(["git", "-C", str(REPO), "archive", "1e3c921", "facade", "core", "adapters", "conformance"],
                             capture_output=True, timeout=60)
        if raw.returncode != 0:
            pytest.skip(f"no commit 1e3c921 in {REPO}")
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


def _prefix(tag: str) -> str:
    return f"{tag}{uuid.uuid4().hex[:8]}"


def _task(task_id: str, **fields: Any) -> Task:
    return Task(task_id, "wf", "n", "alpha", {"id": task_id}, **fields)


async def _drain(queue: Any, *, max_tasks: int = 8, wait: float = 1.0) -> list[str]:
    ran: list[str] = []
    for _ in range(40):
        claims = await queue.claim(["alpha"], worker_id="new", max_tasks=max_tasks, wait=wait)
        if not claims:
            return ran
        for claim in claims:
            assert claim.task.payload == {"id": claim.task.id}, claim.task
            ran.append(claim.task.id)
            await queue.ack(claim, {"ran": claim.task.id})
    return ran


# -- f892713: mixed-version producers and claimers ------------------------------------------------

def test_an_older_claimer_runs_every_id_a_new_producer_enqueues(nats_url: str, old_tree: Path) -> None:
    """3d8a7a8 claimers run every id this version enqueues, each once under its own id, none
    dead-lettered: carried ids (the "=" ones too) and ids only a Da-Task-Token names, by
    ``enqueue`` and ``enqueue_many``."""
    prefix = _prefix("oc")
    ids = CARRIED + NOT_CARRIED
    many = [f"m{i}" + suffix for i, suffix in enumerate(["", " ", "\n", "="])] + ["=m", " m"]

    async def produce() -> list[Any]:
        backend = await open_nats(nats_url, prefix=prefix)
        try:
            single = [await backend.task_queue.enqueue(_task(i)) for i in ids]
            return single + list(await backend.task_queue.enqueue_many([_task(i) for i in many]))
        finally:
            await backend.close()

    assert run(produce(), 60) == [True] * (len(ids) + len(many))
    out = _child(old_tree, {"url": nats_url, "prefix": prefix, "op": "drain"})
    assert out["dead"] == []
    assert sorted(out["ran"]) == sorted(ids + many)


def test_a_new_claimer_runs_what_an_older_producer_enqueued_under_ids_a_header_carries(
        nats_url: str, old_tree: Path) -> None:
    """Messages of a 3d8a7a8 producer (Da-Task-Id and Nats-Msg-Id the id itself) are claimed by
    this version as before: ids a header carries run once each, batched and one by one."""
    for max_tasks in (8, 1):
        prefix = _prefix("op")
        out = _child(old_tree, {"url": nats_url, "prefix": prefix, "op": "enqueue", "ids": CARRIED})
        assert out["enqueued"] == [True] * len(CARRIED)

        async def consume() -> tuple[list[str], list[Any]]:
            backend = await open_nats(nats_url, prefix=prefix)
            try:
                ran = await _drain(backend.task_queue, max_tasks=max_tasks)
                return ran, [d.task_id for d in await backend.task_queue.dead_letters()]
            finally:
                await backend.close()

        ran, dead = run(consume(), 60)
        assert dead == [] and sorted(ran) == sorted(CARRIED), (max_tasks, ran, dead)


def test_a_new_claimer_runs_what_the_previous_version_enqueued(nats_url: str, previous_tree: Path) -> None:
    """1e3c921 wrote Da-Task-Id = "=" + token for " a" and for "=eq" (and its claimers ran
    them); messages it left queued are claimed by this version after an upgrade."""
    ids = ["plain", "=eq", " a", "trail ", "line\nbreak"]
    prefix = _prefix("pv")
    out = _child(previous_tree, {"url": nats_url, "prefix": prefix, "op": "enqueue", "ids": ids})
    assert out["enqueued"] == [True] * len(ids)

    async def consume() -> tuple[list[str], list[Any]]:
        backend = await open_nats(nats_url, prefix=prefix)
        try:
            ran = await _drain(backend.task_queue)
            return ran, [(d.task_id, d.reason[:70]) for d in await backend.task_queue.dead_letters()]
        finally:
            await backend.close()

    ran, dead = run(consume(), 60)
    assert dead == [], dead
    assert sorted(ran) == sorted(ids)


def test_the_previous_version_ran_its_own_messages_of_those_ids(nats_url: str, previous_tree: Path) -> None:
    """The control of the test above: 1e3c921 claimers run what 1e3c921 enqueued, none
    dead-lettered (so the dead letters above are this version's change)."""
    ids = ["plain", "=eq", " a", "trail ", "line\nbreak"]
    prefix = _prefix("pp")
    assert _child(previous_tree, {"url": nats_url, "prefix": prefix, "op": "enqueue", "ids": ids})["enqueued"] == [True] * 5
    out = _child(previous_tree, {"url": nats_url, "prefix": prefix, "op": "drain"})
    assert out["dead"] == [] and sorted(out["ran"]) == sorted(ids), out


def test_the_previous_version_claims_what_this_version_enqueues(nats_url: str, previous_tree: Path) -> None:
    """The other way round: 1e3c921 claimers run every id this version enqueues."""
    prefix = _prefix("pc")
    ids = CARRIED + NOT_CARRIED

    async def produce() -> list[bool]:
        backend = await open_nats(nats_url, prefix=prefix)
        try:
            return [await backend.task_queue.enqueue(_task(i)) for i in ids]
        finally:
            await backend.close()

    assert run(produce(), 60) == [True] * len(ids)
    out = _child(previous_tree, {"url": nats_url, "prefix": prefix, "op": "drain"})
    assert out["dead"] == []
    assert sorted(out["ran"]) == sorted(ids)


def test_an_id_equal_to_another_ids_carried_form_from_an_older_producer_does_not_swallow_it(
        nats_url: str, old_tree: Path) -> None:
    """A 3d8a7a8 producer enqueues "=_20a" (its message id is the id itself); this version then
    enqueues " a", whose message id is "=" + token(" a") == "=_20a". Two distinct ids: both
    are enqueued and both run."""
    prefix = _prefix("dd")
    assert "=" + token(" a") == "=_20a"
    out = _child(old_tree, {"url": nats_url, "prefix": prefix, "op": "enqueue", "ids": ["=_20a"]})
    assert out["enqueued"] == [True]

    async def scenario() -> tuple[bool, list[str]]:
        backend = await open_nats(nats_url, prefix=prefix)
        try:
            created = await backend.task_queue.enqueue(_task(" a"))
            return created, await _drain(backend.task_queue)
        finally:
            await backend.close()

    created, ran = run(scenario(), 60)
    assert sorted(ran) == sorted(["=_20a", " a"]) and created, (created, ran)


@pytest.mark.parametrize("many", [False, True], ids=["enqueue", "enqueue_many"])
def test_an_older_producers_stripped_message_id_does_not_swallow_the_id_it_was_stripped_to(
        nats_url: str, old_tree: Path, many: bool) -> None:
    """A 3d8a7a8 producer enqueues " b" and "c\n" (a header strips its value and makes line
    breaks spaces: their message ids arrive as "b" and "c"); this version then enqueues "b" and
    "c", within the dedup window. Distinct ids: all four are enqueued and run once each, and a
    second enqueue of "b" (now pending) answers False."""
    prefix = _prefix("ds")
    out = _child(old_tree, {"url": nats_url, "prefix": prefix, "op": "enqueue", "ids": [" b", "c\n"]})
    assert out["enqueued"] == [True, True]

    async def scenario() -> tuple[list[bool], bool, list[str]]:
        backend = await open_nats(nats_url, prefix=prefix)
        try:
            queue = backend.task_queue
            tasks = [_task("b"), _task("c")]
            created = list(await queue.enqueue_many(tasks)) if many else [await queue.enqueue(t) for t in tasks]
            again = await queue.enqueue(_task("b"))
            return created, again, await _drain(queue)
        finally:
            await backend.close()

    created, again, ran = run(scenario(), 60)
    assert created == [True, True] and again is False, (created, again)
    assert sorted(ran) == sorted([" b", "c\n", "b", "c"]), ran


def test_ids_equal_to_other_ids_carried_forms_and_tokens_never_merge_or_cross(nats_url: str) -> None:
    """Within this version: an id, the "=" + token form another id's message id takes, that
    token itself, and a forged Da-Task-Token-looking id all enqueue, run once each under
    their own ids, by enqueue and by enqueue_many, batched and one by one."""
    groups = [[" a", "=_20a", "_20a", "a", "=" + token("=_20a")],
              ["x\n", "=x_0a", "x_0a", "x", "=" + token("=x_0a")]]

    async def scenario(many: bool, max_tasks: int) -> tuple[list[Any], list[str], list[Any]]:
        backend = await open_nats(nats_url, prefix=_prefix("mg"))
        try:
            queue = backend.task_queue
            ids = [i for group in groups for i in group]
            if many:
                answers = list(await queue.enqueue_many([_task(i) for i in ids]))
            else:
                answers = [await queue.enqueue(_task(i)) for i in ids]
            again = [await queue.enqueue(_task(i)) for i in ids]  # pending: no
            ran = await _drain(queue, max_tasks=max_tasks)
            return answers + again, ran, [d.task_id for d in await queue.dead_letters()]
        finally:
            await backend.close()

    for many, max_tasks in ((False, 8), (True, 1), (True, 8)):
        answers, ran, dead = run(scenario(many, max_tasks), 60)
        ids = [i for group in groups for i in group]
        assert answers == [True] * len(ids) + [False] * len(ids), (many, answers)
        assert dead == [] and sorted(ran) == sorted(ids), (many, max_tasks, ran, dead)


def test_a_message_with_an_empty_or_conflicting_header_is_dead_lettered_under_no_other_id(nats_url: str) -> None:
    """Forged headers: an empty Da-Task-Id, a Da-Task-Token beside a Da-Task-Id naming
    another id, a Da-Task-Token naming no id. Each such message is dead-lettered unrun; a
    real task queued beside them runs once, its record untouched."""

    async def scenario() -> tuple[list[str], list[str], Any]:
        backend = await open_nats(nats_url, prefix=_prefix("fh"))
        queue = backend.task_queue
        names = backend.connection.names
        try:
            assert await queue.enqueue(_task("real"))
            for task_id, headers in (("p1", {"Da-Task-Id": ""}),
                                     ("p2", {"Da-Task-Id": "p2", "Da-Task-Token": token("zz")}),
                                     ("p3", {"Da-Task-Token": "_zz_"})):
                raw = encode(task_to_dict(_task(task_id)))
                await backend.connection.js.publish(names.task_subject("alpha", 0), raw,
                                                    headers={"Nats-Msg-Id": uuid.uuid4().hex, **headers})
            ran = await _drain(queue)
            dead = sorted(d.task_id for d in await queue.dead_letters())
            return ran, dead, await queue.get_result("real")
        finally:
            await backend.close()

    ran, dead, result = run(scenario(), 60)
    assert ran == ["real"], ran
    assert result is not None and result.status == "succeeded"
    assert len(dead) == 3 and "real" not in dead and "p1" not in dead and "p3" not in dead, dead


def test_a_forged_header_naming_a_live_task_does_not_fail_that_task(nats_url: str) -> None:
    """A message with payload id "intruder" but queued as "victim" (Da-Task-Id, or the
    Da-Task-Token of an id a header cannot carry) while the real "victim" task is queued:
    the intruder is dead-lettered, and the victim still runs and succeeds."""

    async def scenario(victim: str) -> tuple[list[str], Any]:
        backend = await open_nats(nats_url, prefix=_prefix("fv"))
        queue = backend.task_queue
        names = backend.connection.names
        try:
            assert await queue.enqueue(_task(victim))
            header = {"Da-Task-Id": victim} if victim.strip() == victim else {"Da-Task-Token": token(victim)}
            raw = encode(task_to_dict(_task("intruder")))
            await backend.connection.js.publish(names.task_subject("alpha", 0), raw,
                                                headers={"Nats-Msg-Id": uuid.uuid4().hex, **header})
            [first] = await queue.claim(["alpha"], worker_id="w", max_tasks=1, wait=2)
            assert first.task.id == victim
            assert await queue.claim(["alpha"], worker_id="w", max_tasks=1, wait=1) == []  # the intruder: dead
            try:
                await queue.ack(first, {"ok": True})
            except LeaseLostError as error:  # its record was taken from it
                return [f"lost: {error}"], await queue.get_result(victim)
            return [first.task.id], await queue.get_result(victim)
        finally:
            await backend.close()

    for victim in ("victim", " victim"):
        ran, result = run(scenario(victim), 60)
        assert ran == [victim] and result is not None and result.status == "succeeded", (victim, ran, result)


# -- d9d2190 with f892713: a long id only a Da-Task-Token carries --------------------------------

def test_a_long_id_a_header_cannot_carry_whose_letter_cannot_fit_is_dead_lettered_under_its_own_id(
        nats_server: Any) -> None:
    """As test_dead_letter_races' oversized check, with an id led by a blank (its message has
    Da-Task-Token, no Da-Task-Id) and with an "=" start: a batched claim sends it the
    one-by-one way, which dead-letters it unrun under its own id; the others run."""
    from distributed_agents.adapters.nats.task_queue import (LETTER_RESERVE_BYTES, _id_headers, _new_record,
                                                              letter_bytes)

    async def scenario(long_id: str) -> tuple[list[str], list[tuple[str, str]], int]:
        backend = await open_nats(nats_server.url)
        queue = backend.task_queue
        try:
            assert await queue.enqueue(_task("small-1"))
            limit = int(backend.connection.nc.max_payload)
            base = len(encode(task_to_dict(Task(long_id, "wf", "n", "alpha", {"f": ""}, created_at=1.0))))
            size = limit - LETTER_RESERVE_BYTES - 1000
            big = Task(long_id, "wf", "n", "alpha", {"f": "x" * (size - base)}, created_at=1.0)
            raw = encode(task_to_dict(big))
            ack = await backend.connection.js.publish(backend.connection.names.task_subject("alpha", 0), raw,
                                                      headers=_id_headers(long_id, uuid.uuid4().hex))
            record = _new_record(long_id, "alpha", 0, None, seq=ack.seq)
            assert await kv.cas(backend.connection.js, queue._tasks, token(long_id), encode(record), last=0)
            assert await queue.enqueue(_task("small-2"))
            claimed = [c.task.id for c in await queue.claim(["alpha"], worker_id="w", max_tasks=8, wait=2)]
            claimed += [c.task.id for c in await queue.claim(["alpha"], worker_id="w", max_tasks=8, wait=0.5)]
            letters = [(d.task_id, d.reason[:16]) for d in await queue.dead_letters("alpha")]
            return claimed, letters, letter_bytes(len(raw), long_id, "alpha") - limit
        finally:
            await backend.close()

    for long_id in (" " + "i" * 4000, "=" + "j" * 4000):
        claimed, letters, over = run(scenario(long_id), 60)
        assert over > 0
        assert sorted(claimed) == ["small-1", "small-2"], claimed
        assert letters == [(long_id, "oversized task: ")], [(t[:8], r) for t, r in letters]


@pytest.mark.parametrize("task_id", ["i" * 40000, " " + "\U0001F600" * 3000], ids=["ascii", "token"])
def test_a_long_id_task_whose_letter_fits_but_whose_message_does_not_is_refused_as_too_large(
        nats_url: str, task_id: str) -> None:
    """A task sized so that its dead letter just fits max_payload (the check enqueue makes),
    with a long id: its message is the task plus its id headers. enqueue and enqueue_many
    either queue it or refuse it with PayloadTooLargeError (nothing written)."""
    from distributed_agents.adapters.nats.task_queue import letter_bytes
    from distributed_agents.core.errors import PayloadTooLargeError

    async def scenario() -> list[str]:
        backend = await open_nats(nats_url, prefix=_prefix("lh"))
        queue = backend.task_queue
        try:
            limit = int(backend.connection.nc.max_payload)
            base = len(encode(task_to_dict(Task(task_id, "wf", "n", "alpha", {"f": ""}, created_at=1.0))))
            room = limit - (letter_bytes(base, task_id, "alpha") - base)
            task = Task(task_id, "wf", "n", "alpha", {"f": "x" * (room - base - 10)}, created_at=1.0)
            assert letter_bytes(len(encode(task_to_dict(task))), task_id, "alpha") <= limit
            outcomes = []
            for call in (lambda: queue.enqueue(task), lambda: queue.enqueue_many([task])):
                try:
                    outcomes.append(f"returned {await call()}")
                except PayloadTooLargeError:
                    outcomes.append("too large")
                except Exception as error:  # noqa: BLE001 - what else it raises is the finding
                    outcomes.append(f"{type(error).__name__}: {str(error)[-80:]}")
            return outcomes
        finally:
            await backend.close()

    outcomes = run(scenario(), 60)
    assert all(o in ("too large", "returned True", "returned [True]", "returned False", "returned [False]")
               for o in outcomes), outcomes


# -- 5ea9ba3: requeue and purge ------------------------------------------------------------------

async def _make_dead(queue: Any, task_id: str) -> None:
    assert await queue.enqueue(_task(task_id, max_attempts=1))
    claims = await queue.claim(["alpha"], worker_id="w", max_tasks=1, wait=5)
    assert [c.task.id for c in claims] == [task_id]
    await queue.nack(claims[0], "boom", final=True)


def test_requeue_after_purge_and_purge_after_requeue(nats_url: str) -> None:
    """Sequential: a purged letter cannot be requeued (False, never runs, nothing listed, the
    id stays taken until result_ttl); a requeued one cannot then be purged (False, it runs
    once, nothing listed); once the requeued task dies again its new letter purges (True)."""

    async def scenario() -> list[Any]:
        backend = await open_nats(nats_url, prefix=_prefix("sq"))
        queue = backend.task_queue
        try:
            ids = ["=p", " q"]
            for task_id in ids:
                await _make_dead(queue, task_id)
            steps: list[Any] = []
            steps.append(await queue.purge_dead_letter("=p"))
            steps.append(await queue.requeue_dead_letter("=p"))
            steps.append(await queue.purge_dead_letter("=p"))
            steps.append(await queue.requeue_dead_letter(" q"))
            steps.append(await queue.purge_dead_letter(" q"))
            steps.append([d.task_id for d in await queue.dead_letters()])
            claims = await queue.claim(["alpha"], worker_id="w", max_tasks=4, wait=2)
            steps.append([c.task.id for c in claims])
            for claim in claims:
                await queue.nack(claim, "again", final=True)
            steps.append(sorted(d.task_id for d in await queue.dead_letters()))
            steps.append(await queue.purge_dead_letter(" q"))
            steps.append(await queue.requeue_dead_letter(" q"))
            steps.append([d.task_id for d in await queue.dead_letters()])
            steps.append(await queue.claim(["alpha"], worker_id="w", max_tasks=4, wait=0.5))
            steps.append(await queue.enqueue(_task("=p")))
            return steps
        finally:
            await backend.close()

    steps = run(scenario(), 60)
    assert steps == [True, False, False, True, False, [], [" q"], [" q"], True, False, [], [], False], steps


def test_raw_dead_letters_never_requeue_and_purge_once(nats_url: str) -> None:
    """Letters of undecodable messages (enqueue_raw, and junk bytes whose Da-Task-Token names
    " raw"): listed under their ids, requeue answers False, purge True then False, nothing
    listed after."""

    async def scenario() -> tuple[list[Any], list[Any], list[Any]]:
        backend = await open_nats(nats_url, prefix=_prefix("rw"))
        queue = backend.task_queue
        try:
            await queue.enqueue_raw("alpha", b"\x00not json")
            await backend.connection.js.publish(backend.connection.names.task_subject("alpha", 0), b"{junk",
                                                headers={"Nats-Msg-Id": uuid.uuid4().hex, "Da-Task-Token": token(" raw")})
            assert await queue.claim(["alpha"], worker_id="w", max_tasks=4, wait=1) == []
            letters = sorted(d.task_id for d in await queue.dead_letters())
            answers = [(await queue.requeue_dead_letter(i), await queue.purge_dead_letter(i),
                        await queue.purge_dead_letter(i), await queue.requeue_dead_letter(i)) for i in letters]
            return letters, answers, [d.task_id for d in await queue.dead_letters()]
        finally:
            await backend.close()

    letters, answers, after = run(scenario(), 60)
    assert len(letters) == 2 and " raw" in letters, letters
    assert answers == [(False, True, False, False)] * 2, answers
    assert after == []


async def _racing_purges(one: Any, two: Any, rounds: int) -> list[list[bool]]:
    answers = []
    for round_ in range(rounds):
        task_id = f"{'= '[round_ % 2]}pp{round_}"
        await _make_dead(one.task_queue, task_id)
        first, second = await asyncio.gather(one.task_queue.purge_dead_letter(task_id),
                                             two.task_queue.purge_dead_letter(task_id))
        answers.append(sorted([bool(first), bool(second)]))
    return answers


def test_two_racing_purges_of_one_letter_answer_true_once_on_redis(redis_url: str) -> None:
    """The expectation the NATS test below holds that adapter to: Redis answers True once."""
    from distributed_agents.adapters.redis.backend import open_redis_backend
    from distributed_agents.core.ports.backend import BackendOptions

    async def scenario() -> list[list[bool]]:
        prefix = _prefix("rr")
        one, two = (open_redis_backend(redis_url, BackendOptions.from_url(redis_url, prefix=prefix)) for _ in "12")
        await one.connect()
        await two.connect()
        try:
            return await _racing_purges(one, two, 10)
        finally:
            await one.close()
            await two.close()

    assert run(scenario(), 60) == [[False, True]] * 10


def test_two_racing_purges_of_one_letter_answer_true_once_on_nats(nats_url: str) -> None:
    """Two backends purge the same dead letter at once (as the engine's handler and an
    operator may): exactly one purged it."""

    async def scenario() -> list[list[bool]]:
        prefix = _prefix("np")
        one, two = await open_nats(nats_url, prefix=prefix), await open_nats(nats_url, prefix=prefix)
        try:
            return await _racing_purges(one, two, 16)
        finally:
            await one.close()
            await two.close()

    answers = run(scenario(), 90)
    assert answers == [[False, True]] * 16, answers


PROCESS_RACE = r"""
import asyncio, json, sys
from distributed_agents.adapters.nats.backend import NatsBackend
from distributed_agents.core.ports.backend import BackendOptions

async def main(job):
    backend = NatsBackend(job["url"], BackendOptions.from_url(job["url"], prefix=job["prefix"]))
    await backend.connect()
    try:
        print("READY", flush=True)
        answers = []
        for task_id in job["ids"]:
            line = sys.stdin.readline()  # the go for this id
            if job["op"] == "purge":
                answers.append(bool(await backend.task_queue.purge_dead_letter(task_id)))
            else:
                answers.append(bool(await backend.task_queue.requeue_dead_letter(task_id)))
            print("DONE", flush=True)
        print("RESULT " + json.dumps(answers), flush=True)
    finally:
        await backend.close()

asyncio.run(main(json.loads(sys.argv[1])))
"""


@pytest.mark.parametrize("where", ["one_server", "cluster"])
def test_a_requeue_and_a_purge_in_two_processes_agree(where: str, request: pytest.FixtureRequest) -> None:
    """Two processes of this version, one requeueing and one purging each of a dozen dead
    letters (ids led by "=" or a blank among them) at the same go: exactly one answers True
    per letter; a requeued task runs once, a purged one never; no letter is left."""
    if where == "cluster":
        cluster = request.getfixturevalue("nats_cluster")
        url, other = cluster.server(0).url + "?replicas=3", cluster.server(1).url + "?replicas=3"
    else:
        url = other = request.getfixturevalue("nats_url")
    prefix = _prefix("pr")
    ids = [f"{lead}r{i}" for i, lead in enumerate(["", "=", " ", ""] * 3)]

    async def make() -> None:
        backend = await open_nats(url, prefix=prefix)
        try:
            await settle(backend)  # on the cluster: the streams and consumer just made answer
            for task_id in ids:
                await _make_dead(backend.task_queue, task_id)
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
    try:
        for proc in procs:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "READY"
        for _ in ids:
            for proc in procs:
                assert proc.stdin is not None
                proc.stdin.write("go\n")
                proc.stdin.flush()
            for proc in procs:
                assert proc.stdout is not None and proc.stdout.readline().strip() == "DONE"
        results = []
        for proc, err in zip(procs, errors):
            assert proc.stdout is not None and proc.stdin is not None
            out = proc.stdout.readline()  # (read as the lines before: the pipe's reader may hold it already)
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
    requeued, purged = results

    async def check() -> tuple[list[str], list[str]]:
        backend = await open_nats(url, prefix=prefix)
        try:
            ran = await _drain(backend.task_queue, max_tasks=16, wait=2.0)
            return ran, [d.task_id for d in await backend.task_queue.dead_letters()]
        finally:
            await backend.close()

    ran, letters = run(check(), 60)
    assert [r != p for r, p in zip(requeued, purged)] == [True] * len(ids), list(zip(ids, requeued, purged))
    assert sorted(ran) == sorted(i for i, r in zip(ids, requeued) if r), (ran, requeued)
    assert letters == [], letters


def test_a_purge_after_a_requeue_that_died_midway_leaves_the_task_recoverable_or_purged(nats_url: str) -> None:
    """A requeue that died between its record write (queued, seq 0, as requeue_dead_letter
    writes it) and its publish leaves the letter; requeue_dead_letter finishes such a
    requeue. A purge then either purges (True: never runs, not listed) or leaves the task to
    a requeue that runs it: it never answers False and loses both the letter and the task."""
    from distributed_agents.adapters.nats.task_queue import _new_record

    async def scenario() -> tuple[bool, list[str], bool, list[str]]:
        backend = await open_nats(nats_url, prefix=_prefix("dm"))
        queue = backend.task_queue
        try:
            await _make_dead(queue, " half")
            found = await queue._read_from_leader(" half")
            assert found.record is not None and found.record["state"] == "dead"
            # As a requeue of this version leaves it, dead for longer than the takeover time.
            record = {**_new_record(" half", "alpha", 0, 1, seq=0), "requeued_at": time.time() - 31}
            assert await kv.cas(backend.connection.js, queue._tasks, token(" half"), encode(record),
                                last=found.revision) is not None
            purged = await queue.purge_dead_letter(" half")
            listed = [d.task_id for d in await queue.dead_letters()]
            requeued = await queue.requeue_dead_letter(" half")
            ran = await _drain(queue, wait=1.0)
            return purged, listed, requeued, ran
        finally:
            await backend.close()

    purged, listed, requeued, ran = run(scenario(), 60)
    if purged:
        assert (listed, requeued, ran) == ([], False, []), (purged, listed, requeued, ran)
    else:
        assert (listed, requeued, ran) == ([" half"], True, [" half"]), (purged, listed, requeued, ran)


def test_a_requeue_that_died_midway_is_finished_by_the_next_requeue(nats_url: str) -> None:
    """The control of the test above: with no purge in between, the next requeue of such a
    letter answers True and the task runs once; nothing is listed after."""
    from distributed_agents.adapters.nats.task_queue import _new_record

    async def scenario() -> tuple[bool, list[str], list[str]]:
        backend = await open_nats(nats_url, prefix=_prefix("dr"))
        queue = backend.task_queue
        try:
            await _make_dead(queue, " half")
            found = await queue._read_from_leader(" half")
            # As a requeue of this version leaves it, dead for longer than the takeover time.
            record = {**_new_record(" half", "alpha", 0, 1, seq=0), "requeued_at": time.time() - 31}
            assert await kv.cas(backend.connection.js, queue._tasks, token(" half"), encode(record),
                                last=found.revision) is not None
            requeued = await queue.requeue_dead_letter(" half")
            ran = await _drain(queue, wait=1.0)
            return requeued, ran, [d.task_id for d in await queue.dead_letters()]
        finally:
            await backend.close()

    assert run(scenario(), 60) == (True, [" half"], [])


def test_a_task_cancelled_while_its_dead_letter_is_requeued_never_runs(nats_url: str) -> None:
    """One backend requeues a dead letter while another cancels the task as soon as it is
    queued again (polling cancel until it answers True or the requeue is over). A cancel
    that answered True means the task never runs, also after its cancelled record expired
    (result_ttl 1 s; the claim comes once the record is gone from the bucket)."""

    async def scenario() -> list[tuple[str, bool, bool, bool]]:
        prefix = _prefix("rc")
        one = await open_nats(nats_url, prefix=prefix, result_ttl=1.0)
        two = await open_nats(nats_url, prefix=prefix, result_ttl=1.0)
        rounds = []
        try:
            for round_ in range(6):
                node_type, task_id = f"rc{round_}", f"rc{round_}"
                assert await one.task_queue.enqueue(Task(task_id, "wf", "n", node_type, {}, max_attempts=1))
                [claim] = await one.task_queue.claim([node_type], worker_id="w", max_tasks=1, wait=5)
                await one.task_queue.nack(claim, "boom", final=True)
                requeue = asyncio.ensure_future(two.task_queue.requeue_dead_letter(task_id))
                cancelled = False
                while not cancelled:
                    done = requeue.done()
                    cancelled = await one.task_queue.cancel(task_id)
                    if done:
                        break
                rounds.append((node_type, bool(await requeue), cancelled))
            types = [node_type for node_type, _, _ in rounds]
            for node_type, _, cancelled in rounds:  # the cancelled records expired and are gone
                while cancelled and (await one.task_queue._read_from_leader(node_type)).record is not None:
                    await asyncio.sleep(0.2)
            ran = []
            for _ in range(20):
                claims = await one.task_queue.claim(types, worker_id="w", max_tasks=16, wait=1.0)
                if not claims:
                    break
                for claim in claims:
                    ran.append(claim.task.id)
                    await one.task_queue.ack(claim, {})
            return [(node_type, requeued, cancelled, node_type in ran) for node_type, requeued, cancelled in rounds]
        finally:
            await one.close()
            await two.close()

    outcomes = run(scenario(), 100)
    assert all(requeued for _, requeued, _, _ in outcomes), outcomes
    assert [task_id for task_id, _, cancelled, ran in outcomes if cancelled and ran] == [], outcomes
    assert [task_id for task_id, _, cancelled, ran in outcomes if not cancelled and not ran] == [], outcomes


# -- 035996a: launchers ------------------------------------------------------------------------

def test_a_restart_whose_port_another_server_took_fails_instead_of_passing_for_ready() -> None:
    """A server stopped, its port then taken by another nats-server: its restart (which must
    come back on its port) raises, naming the exit, instead of taking the other server's
    greeting for its own readiness; the other server is untouched."""
    from support.nats_server import NatsServer, require_nats_server

    binary = require_nats_server()
    server = NatsServer(binary)
    try:
        server.start()
        port = server.port
        server.stop(kill=True)
        intruder = NatsServer(binary, port=port)
        try:
            intruder.start()
            with pytest.raises(RuntimeError, match="exited"):
                server.start()
            assert server.port == port
            assert intruder.process is not None and intruder.process.poll() is None
        finally:
            intruder.cleanup()
        server.start()  # the port is free again: it comes back with its data
        assert server.port == port and server.process is not None and server.process.poll() is None
    finally:
        server.cleanup()


def test_jetstream_data_survives_a_killed_server_restarted_by_the_launcher(tmp_path: Path) -> None:
    """Tasks enqueued before SIGKILL are claimed after the launcher restarts the server (the
    restart is ready only once its own log says so, JetStream recovered)."""
    from support.nats_server import NatsServer, require_nats_server

    binary = require_nats_server()
    prefix = _prefix("rs")
    with NatsServer(binary, store_dir=str(tmp_path)) as server:

        async def produce() -> None:
            backend = await open_nats(server.url, prefix=prefix)
            try:
                for task_id in ("k1", " k2", "=k3"):
                    assert await backend.task_queue.enqueue(_task(task_id))
            finally:
                await backend.close()

        run(produce(), 60)
        server.restart(kill=True)

        async def consume() -> list[str]:
            backend = await open_nats(server.url, prefix=prefix)
            try:
                return await _drain(backend.task_queue, wait=2.0)
            finally:
                await backend.close()

        assert sorted(run(consume(), 60)) == sorted(["k1", " k2", "=k3"])


def test_a_cluster_whose_route_port_is_taken_starts_with_every_server_routed() -> None:
    """A route port of a cluster held by a plain listening socket (another process's) when
    the cluster starts is replaced: three servers, and a stream of three replicas is placed
    (a cluster run as two answers 'no suitable peers for placement')."""
    import socket

    import nats as nats_py
    from support.nats_cluster import NatsCluster, servers_of
    from support.nats_server import require_nats_server

    binary = require_nats_server()
    cluster = NatsCluster(binary)
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        holder.bind(("127.0.0.1", cluster.route_ports[1]))
        holder.listen(1)
        taken = cluster.route_ports[1]
        cluster.start()
        assert cluster.route_ports[1] != taken
        assert all(server.process is not None and server.process.poll() is None for server in cluster.servers)

        async def placed() -> int:
            nc = await nats_py.connect(servers=servers_of(cluster.url), connect_timeout=5)
            try:
                js = nc.jetstream()
                info = await js.add_stream(name=f"R{uuid.uuid4().hex[:6]}", subjects=[f"r.{uuid.uuid4().hex[:6]}"],
                                           num_replicas=3)
                return 1 + len(info.cluster.replicas or ()) if info.cluster else 0
            finally:
                await nc.close()

        assert run(placed(), 60) == 3
    finally:
        holder.close()
        cluster.cleanup()
