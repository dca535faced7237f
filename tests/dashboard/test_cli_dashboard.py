"""``distributed-agents dashboard`` input errors: one line saying what to do, exit status 2.

(The command serving for real, with --token and --graph, and stopping on SIGTERM is in
test_browser.py.)
"""

from __future__ import annotations

import pytest

from distributed_agents.cli import main


def _fails(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main(["dashboard", *argv]) == 2
    _, err = capsys.readouterr()
    assert len(err.strip().splitlines()) == 1, err
    return err


def test_memory_is_refused_with_the_embedding_api_named(capsys: pytest.CaptureFixture[str]) -> None:
    err = _fails(capsys, "--backend-url", "memory://")
    assert "memory://" in err and "dashboard(orchestrator)" in err


def test_no_backend_url(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DA_BACKEND_URL", "BACKEND_URL", "REDIS_URL", "NATS_URL"):
        monkeypatch.delenv(name, raising=False)
    assert "--backend-url" in _fails(capsys)


def test_a_graph_that_does_not_import(capsys: pytest.CaptureFixture[str]) -> None:
    err = _fails(capsys, "--backend-url", "redis://127.0.0.1:1/0", "--graph", "no_such_module_here:graph")
    assert "no_such_module_here" in err


def test_a_bad_port(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["dashboard", "--backend-url", "redis://127.0.0.1:1/0", "--port", "zero"])
    assert exit_.value.code == 2
    capsys.readouterr()
    monkeypatch.setenv("DA_DASHBOARD_PORT", "-3")
    assert "DA_DASHBOARD_PORT" in _fails(capsys, "--backend-url", "redis://127.0.0.1:1/0")


def test_a_port_in_use_is_one_line_and_exit_2_before_connecting(capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        # the backend URL is unreachable: the port is checked first, so the answer comes at once
        err = _fails(capsys, "--backend-url", "redis://127.0.0.1:1/0", "--port", str(port))
    assert f"127.0.0.1:{port}" in err and "already in use" in err and "--port" in err
