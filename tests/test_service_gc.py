"""The collector settings of the processes the command line starts (``service_gc``).

Each case runs in a fresh interpreter: freezing and thresholds are process-wide, and this
test process keeps its own. The worker case starts the real ``distributed-agents worker``
against a real Redis and reads its log."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.timeout(60)

PROBE = (
    "import gc, json\n"
    "from distributed_agents.service_gc import keep_defaults_from, settle_for_service\n"
    "kept = [object() for _ in range(10)], [[] for _ in range(1000)]\n"
    "{before}\n"
    "settled = settle_for_service(keep_defaults_from(None))\n"
    "print(json.dumps([settled, gc.get_threshold(), gc.get_freeze_count(), gc.isenabled()]))\n"
)


def _probe(before: str = "", env: dict[str, str] | None = None) -> list[object]:
    environment = {k: v for k, v in os.environ.items() if k != "DA_GC_DEFAULTS"}
    done = subprocess.run([sys.executable, "-c", PROBE.format(before=before)], capture_output=True, text=True,
                          env={**environment, **(env or {})}, timeout=30)
    assert done.returncode == 0, done.stderr
    import json

    result: list[object] = json.loads(done.stdout)
    return result


def test_a_service_freezes_its_start_up_objects_and_leaves_the_thresholds() -> None:
    settled, threshold, frozen, enabled = _probe()
    assert settled is True and enabled is True
    assert threshold == [700, 10, 10]  # CPython's: a node's garbage is collected as always
    assert isinstance(frozen, int) and frozen > 1000  # the probe's own thousand lists at least


def test_garbage_left_by_start_up_is_collected_before_the_freeze() -> None:
    before = ("import weakref\nclass Cyclic: pass\n"
              "a = Cyclic(); a.me = a; probe = weakref.ref(a); del a")
    settled, _, _, _ = _probe(before + "\nsettle_for_service(); assert probe() is None, 'frozen garbage'")
    assert settled is True  # (and the probe process asserted the cycle was freed before the freeze)


@pytest.mark.parametrize("value", ["1", "true", "YES", " on "])
def test_da_gc_defaults_keeps_cpythons_settings(value: str) -> None:
    settled, threshold, frozen, _ = _probe(env={"DA_GC_DEFAULTS": value})
    assert settled is False and threshold == [700, 10, 10] and frozen == 0


@pytest.mark.parametrize("value", ["", "0", "false", "No", "off"])
def test_da_gc_defaults_off_settles(value: str) -> None:
    settled, _, frozen, _ = _probe(env={"DA_GC_DEFAULTS": value})
    assert settled is True and isinstance(frozen, int) and frozen > 1000


@pytest.mark.parametrize("value", ["2", "maybe", "y"])
def test_a_da_gc_defaults_value_that_is_not_on_or_off_stops_the_command(value: str) -> None:
    environment = {k: v for k, v in os.environ.items() if k != "DA_GC_DEFAULTS"}
    done = subprocess.run([sys.executable, "-m", "distributed_agents", "worker", "--app", "nowhere:registry",
                           "--backend-url", "redis://127.0.0.1:1/0"], capture_output=True, text=True, timeout=30,
                          env={**environment, "DA_GC_DEFAULTS": value})
    assert done.returncode == 2, done.stderr
    assert f"DA_GC_DEFAULTS={value!r} is not on or off" in done.stderr and "set it to 1" in done.stderr


@pytest.mark.parametrize("before", ["gc.disable()", "gc.set_threshold(0)"])
def test_a_process_that_turned_the_collector_off_keeps_it_off(before: str) -> None:
    settled, threshold, frozen, enabled = _probe(before)
    assert settled is False and frozen == 0
    assert threshold[0] == (0 if "threshold" in before else 700)  # type: ignore[index]
    assert enabled is ("disable" not in before)


def test_the_worker_command_settles_its_collector_before_serving(tmp_path: pathlib.Path, redis_url: str) -> None:
    (tmp_path / "gcapp.py").write_text(
        "from distributed_agents import NodeRegistry\nregistry = NodeRegistry()\n\n"
        "@registry.register('noop')\ndef noop(state):\n    return {}\n")
    environment = {k: v for k, v in os.environ.items() if k != "DA_GC_DEFAULTS"}
    worker = subprocess.Popen(
        [sys.executable, "-m", "distributed_agents", "--log-level", "DEBUG", "worker", "--app", "gcapp:registry",
         "--backend-url", redis_url, "--prefix", f"gc{os.getpid()}", "--shutdown-grace", "1"],
        cwd=tmp_path, env={**environment, "PYTHONPATH": str(tmp_path)}, stderr=subprocess.PIPE, text=True)
    try:
        assert worker.stderr is not None
        lines: list[str] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = worker.stderr.readline()
            if not line:
                break
            lines.append(line)
            if "garbage collector:" in line:
                break
        found = [line for line in lines if "garbage collector:" in line]
        assert found, "".join(lines)
        assert "start-up objects frozen out of its passes" in found[0], found[0]
    finally:
        worker.terminate()
        worker.wait(timeout=20)
        if worker.stderr is not None:
            worker.stderr.close()
