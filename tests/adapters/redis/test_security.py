"""Redis with passwords, ACL users, TLS with client certificates, and tenants isolated by ACL.

Two real servers for the module: one plain with ACL users (two tenants, each limited to
its prefix by the rule docs/security.md gives), one TLS-only that asks for a client
certificate signed by the test CA (made with trustme).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import security_app
from support.aio import run
from support.secure_redis import SecureRedisServer
from support.tls import Certificates, make_certificates

from distributed_agents import Orchestrator, Worker, open_backend
from distributed_agents.adapters.redis.connection import redis_client_url
from distributed_agents.core.errors import BackendConfigError, BackendError, BackendUnavailableError
from distributed_agents.core.ports.state_store import WorkflowRecord

pytestmark = pytest.mark.timeout(120)


def tenant_rule(prefix: str) -> str:
    """The ACL rule docs/security.md tells users to write for a prefix (kept identical to it)."""
    return (f"resetkeys ~{prefix}:* resetchannels &{prefix}:* &{prefix}:bus:* "
            "-@all +@read +@write +@keyspace +@pubsub +@connection +@transaction +time "
            "+evalsha +eval +script|load +script|exists -@dangerous")


PASSWORDS = {"tenant_a": f"pw-a-{uuid.uuid4().hex}", "tenant_b": f"pw-b-{uuid.uuid4().hex}"}


@pytest.fixture(scope="module")
def acl_redis() -> Iterator[SecureRedisServer]:
    acl = [f"user tenant_a on >{PASSWORDS['tenant_a']} {tenant_rule('ta')}",
           f"user tenant_b on >{PASSWORDS['tenant_b']} {tenant_rule('tb')}"]
    with SecureRedisServer(acl=acl) as server:
        yield server


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("redis-tls"))


@pytest.fixture(scope="module")
def tls_redis(certs: Certificates) -> Iterator[SecureRedisServer]:
    with SecureRedisServer(certs=certs, client_certs="yes") as server:
        yield server


def tenant_url(server: SecureRedisServer, user: str, password: str | None = None) -> str:
    return server.url_for(user, password or PASSWORDS[user]) + "?bus_subscribe=prefix"


async def connect_error(url: str, **options: Any) -> BaseException:
    backend = open_backend(url, **options)
    try:
        await backend.connect()
        await backend.state_store.get("nothing")
    except (BackendError, BackendConfigError) as exc:
        return exc
    finally:
        await backend.close()
    raise AssertionError(f"connecting to {url} did not fail")


async def save_and_load(url: str, **options: Any) -> str:
    backend = open_backend(url, **options)
    try:
        await backend.connect()
        await backend.state_store.save(WorkflowRecord("w1", "g", "completed", {"ok": True}), expected_version=0)
        record = await backend.state_store.get("w1")
        assert record is not None
        return record.status
    finally:
        await backend.close()


# -- passwords and ACL users ---------------------------------------------------------------------
def test_an_acl_user_connects_with_its_password_and_a_wrong_one_is_refused_without_echoing_it(
        acl_redis: SecureRedisServer) -> None:
    assert run(save_and_load(tenant_url(acl_redis, "tenant_a"), prefix="ta"), 30) == "completed"
    wrong = f"wrong-{uuid.uuid4().hex}"
    error = run(connect_error(tenant_url(acl_redis, "tenant_a", wrong), prefix="ta"), 30)
    message = str(error)
    assert isinstance(error, BackendError) and not isinstance(error, BackendUnavailableError), message
    assert "refused the credentials" in message and "tenant_a" in message and "check the username" in message
    assert wrong not in message and wrong not in repr(error)
    # The admin (the default user, requirepass style) connects too.
    assert run(save_and_load(acl_redis.admin_url, prefix="admin"), 30) == "completed"


# -- TLS -----------------------------------------------------------------------------------------
def test_rediss_with_the_ca_and_a_client_certificate_works_from_url_options_or_extra(
        tls_redis: SecureRedisServer, certs: Certificates) -> None:
    base = tls_redis.admin_url
    query = f"?tls_ca={certs.ca}&tls_cert={certs.client_cert}&tls_key={certs.client_key}"
    assert run(save_and_load(base + query, prefix="tls1"), 30) == "completed"
    redis_py_names = f"?ssl_ca_certs={certs.ca}&ssl_certfile={certs.client_cert}&ssl_keyfile={certs.client_key}"
    assert run(save_and_load(base + redis_py_names, prefix="tls2"), 30) == "completed"
    extra = {"tls_ca": certs.ca, "tls_cert": certs.client_cert, "tls_key": certs.client_key}
    assert run(save_and_load(base, prefix="tls3", extra=extra), 30) == "completed"


def test_rediss_verifies_the_server_certificate_and_host_name_by_default(
        tls_redis: SecureRedisServer, certs: Certificates) -> None:
    client = f"tls_cert={certs.client_cert}&tls_key={certs.client_key}"
    for ca in ("", f"tls_ca={certs.other_ca}&"):  # the system's CAs, then a CA that did not sign the server's
        error = run(connect_error(f"{tls_redis.admin_url}?{ca}{client}", prefix="tlsbad"), 30)
        assert isinstance(error, BackendConfigError), error  # not "unavailable": a worker exits, saying why
        assert "certificate is not trusted" in str(error) and "?tls_ca=" in str(error)
    # Host names are checked too, whatever the redis-py version's default.
    assert "ssl_check_hostname=true" in redis_client_url("rediss://h:1/0?tls_ca=/ca.pem")
    assert "ssl_cert_reqs=required" in redis_client_url("rediss://h:1/0")
    assert "ssl_check_hostname=false" in redis_client_url("rediss://h:1/0?ssl_cert_reqs=none")


def test_a_certificate_for_another_host_name_is_refused(tmp_path: Path) -> None:
    certs = make_certificates(tmp_path, server_names=("redis.example.test",))  # not 127.0.0.1
    with SecureRedisServer(certs=certs, client_certs="no") as server:
        query = f"?tls_ca={certs.ca}"
        error = run(connect_error(server.admin_url + query, prefix="host"), 30)
        assert isinstance(error, BackendConfigError) and "TLS handshake failed" in str(error), error
        assert "certificate is not for '127.0.0.1'" in str(error) and "ssl_check_hostname" in str(error), error
        # Turning the check off (as a test might) connects: the rest of the setup was right.
        assert run(save_and_load(server.admin_url + query + "&ssl_check_hostname=false", prefix="host"), 30) \
            == "completed"


def test_a_server_that_requires_a_client_certificate_refuses_a_client_without_one(
        tls_redis: SecureRedisServer, certs: Certificates) -> None:
    error = run(connect_error(tls_redis.admin_url + f"?tls_ca={certs.ca}", prefix="nocert"), 30)
    assert isinstance(error, BackendError), error
    assert "cannot connect to Redis" in str(error) and tls_redis.password not in str(error)


def test_tls_options_on_a_plain_url_and_unknown_options_are_refused_before_connecting(certs: Certificates) -> None:
    with pytest.raises(BackendConfigError, match=r"needs a rediss:// URL.*unencrypted") as plain:
        open_backend(f"redis://:secret-pw@127.0.0.1:1/0?tls_ca={certs.ca}")
    with pytest.raises(BackendConfigError, match="unknown Redis option 'ssl_ca_cert'") as typo:
        open_backend(f"rediss://:secret-pw@127.0.0.1:1/0?ssl_ca_cert={certs.ca}")
    with pytest.raises(BackendConfigError, match="unknown Redis option 'tls_cafile'"):
        open_backend("rediss://127.0.0.1:1/0", extra={"tls_cafile": certs.ca})
    with pytest.raises(BackendConfigError, match="bus_subscribe='all' .* is not one of pattern, prefix"):
        open_backend("redis://127.0.0.1:1/0?bus_subscribe=all")
    assert "secret-pw" not in str(plain.value) + str(typo.value)


# -- tenants isolated by ACL ---------------------------------------------------------------------
@contextlib.asynccontextmanager
async def serving(url: str, prefix: str) -> Any:
    worker = Worker(backend=url, backend_options={"prefix": prefix}, registry=security_app.registry,
                    poll_wait=0.1, heartbeat_interval=0.5)
    task = asyncio.ensure_future(worker.start())
    try:
        yield task
    finally:
        await worker.stop(grace=1)
        with contextlib.suppress(Exception):
            await task


async def run_workflow(url: str, prefix: str, name: str) -> dict[str, Any]:
    async with serving(url, prefix), \
            Orchestrator(backend=url, backend_options={"prefix": prefix}, worker_timeout=30) as orchestrator:
        state = await asyncio.wait_for(orchestrator.execute(security_app.graph, {"name": name}), 60)
        return dict(state)


def assert_permission_error(error: BaseException) -> None:
    message = str(error)
    assert isinstance(error, BackendError), message
    assert "lacks the permission" in message and "docs/security.md" in message, message
    assert PASSWORDS["tenant_b"] not in message


def test_a_tenant_cannot_read_or_claim_another_tenants_tasks_and_both_still_run(acl_redis: SecureRedisServer) -> None:
    url_a, url_b = tenant_url(acl_redis, "tenant_a"), tenant_url(acl_redis, "tenant_b")

    async def scenario() -> None:
        # Tenant A has a queued task and a stored workflow, with no worker of its own yet.
        orchestrator = Orchestrator(backend=url_a, backend_options={"prefix": "ta"}, wait_for_workers=True,
                                    worker_timeout=60)
        workflow_id = await orchestrator.submit(security_app.graph, {"name": "alice"})
        # Tenant B's credentials, pointed at A's prefix: every port refuses, with a clear error.
        intruder = open_backend(url_b, prefix="ta")
        try:
            await intruder.connect()
            attempts = [
                intruder.task_queue.claim(["greet"], worker_id="w-intruder"),
                intruder.state_store.get(workflow_id),
                intruder.state_store.list_workflows(),
                intruder.worker_registry.list_workers(),
            ]
            for attempt in attempts:
                with pytest.raises(BackendError) as caught:
                    await attempt
                assert_permission_error(caught.value)
            with pytest.raises(BackendError) as caught:
                subscription = await intruder.message_bus.subscribe("events.>")
                await subscription.close()
            assert_permission_error(caught.value)
        finally:
            await intruder.close()
        # A worker of tenant B on A's prefix fails to start, saying why.
        worker = Worker(backend=url_b, backend_options={"prefix": "ta"}, registry=security_app.registry,
                        poll_wait=0.1, heartbeat_interval=0.5)
        with pytest.raises(BackendError) as caught:
            await asyncio.wait_for(worker.start(), 30)
        assert_permission_error(caught.value)
        # A's own work runs to the end, B's too.
        async with serving(url_a, "ta"):
            final = await asyncio.wait_for(orchestrator.wait(workflow_id), 60)
        await orchestrator.close()
        assert final["greeting"] == "HELLO ALICE"
        assert (await run_workflow(url_b, "tb", "bob"))["greeting"] == "HELLO BOB"

    run(scenario(), 100)


def test_docs_give_exactly_the_acl_rule_these_tests_run() -> None:
    docs = (Path(__file__).resolve().parents[3] / "docs" / "security.md").read_text()
    assert f"user tenant_a on >PASSWORD {tenant_rule('ta')}" in docs
