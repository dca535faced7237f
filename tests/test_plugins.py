"""Backend discovery by URL through pluggy entry points."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from distributed_agents import available_backends, open_backend
from distributed_agents.core.errors import BackendConfigError, BackendNotFoundError
from distributed_agents.plugins import BackendSpec, hookimpl, register_plugin, unregister_plugin


def test_builtin_backends_come_from_entry_points() -> None:
    backends = available_backends()
    assert backends["memory"].name == "memory"
    assert backends["redis"].name == "redis" and backends["rediss"].name == "redis"
    assert backends["nats"].name == "nats"


def test_unknown_scheme_lists_installed_backends_and_extras() -> None:
    with pytest.raises(BackendNotFoundError) as caught:
        open_backend("kafka://localhost:9092")
    message = str(caught.value)
    assert "kafka://" in message and "memory://" in message
    assert "distributed-agents[redis]" in message and "distributed-agents[nats]" in message


def test_url_without_scheme_is_a_config_error() -> None:
    with pytest.raises(BackendConfigError, match="no scheme"):
        open_backend("localhost:6379")


def test_options_from_query_string_and_keywords() -> None:
    backend = open_backend("memory://?prefix=app&visibility_timeout=5&max_attempts=7", max_attempts=9)
    assert backend.options.prefix == "app"
    assert backend.options.visibility_timeout == 5.0
    assert backend.options.max_attempts == 9
    assert backend.task_queue.max_attempts == 9
    with pytest.raises(BackendConfigError, match="visibility_timeout"):
        open_backend("memory://?visibility_timeout=abc")
    with pytest.raises(BackendConfigError, match="unknown backend option 'colour'"):
        open_backend("memory://", colour="blue")


def test_runtime_plugin_registration_serves_a_new_scheme() -> None:
    class Toy:
        @hookimpl
        def distributed_agents_backends(self) -> list[BackendSpec]:
            return [BackendSpec("toy", ("toy",), "distributed_agents.adapters.memory.backend:open_memory_backend")]

    plugin = Toy()
    register_plugin(plugin, name="toy-test")
    try:
        assert open_backend("toy://space").url == "toy://space"
    finally:
        unregister_plugin(plugin)
    with pytest.raises(BackendNotFoundError):
        open_backend("toy://space")


@pytest.mark.parametrize(("module", "url", "extra"), [("redis", "redis://localhost:6379/0", "redis"),
                                                       ("nats", "nats://localhost:4222", "nats")])
def test_missing_extra_imports_cleanly_and_says_what_to_install(module: str, url: str, extra: str) -> None:
    code = textwrap.dedent(f"""
        import sys
        sys.modules[{module!r}] = None  # as if the extra were not installed
        import distributed_agents.adapters.{extra}
        import distributed_agents.adapters.{extra}.plugin
        from distributed_agents import open_backend
        try:
            open_backend({url!r})
        except ImportError as exc:
            print(type(exc).__name__, exc)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "MissingExtraError" in done.stdout
    assert f"pip install 'distributed-agents[{extra}]'" in done.stdout
