"""The benchmark scripts' shared checks and stops (``benchmarks/bench_support.py``), run as a user runs
them: a bad output path or peers' interpreter fails before anything starts, with one line and no
traceback; Ctrl-C stops a run with its servers and worker processes, and says so."""

from __future__ import annotations

import contextlib
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import pytest

BENCHMARKS = pathlib.Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import bench_support  # noqa: E402


def script(name: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(BENCHMARKS / name), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=BENCHMARKS.parent)


def test_writable_file_makes_the_missing_folder_and_refuses_a_directory_or_a_file_above_it(tmp_path: pathlib.Path) -> None:
    target = bench_support.writable_file(tmp_path / "new" / "deeper" / "results.json", "--results")
    assert target.parent.is_dir() and not target.exists()  # the folder is made, nothing written
    with pytest.raises(SystemExit, match=r"--results: .* is a directory; give a file path"):
        bench_support.writable_file(tmp_path, "--results")
    (tmp_path / "plain").write_text("x")
    with pytest.raises(SystemExit, match=r"--results: .*plain.* is a file, not a directory"):
        bench_support.writable_file(tmp_path / "plain" / "results.json", "--results")
    with pytest.raises(SystemExit, match=r"--charts: .*plain.* is a file, not a directory"):
        bench_support.writable_directory(tmp_path / "plain" / "charts", "--charts")


def test_peers_interpreter_names_what_is_missing(tmp_path: pathlib.Path) -> None:
    assert bench_support.peers_interpreter(sys.executable, "--peers-python", ["json"]) == sys.executable
    with pytest.raises(SystemExit, match=r"--peers-python .*nope: no such file; .*requirements-bench.txt"):
        bench_support.peers_interpreter(str(tmp_path / "nope"), "--peers-python", ["arq"])
    with pytest.raises(SystemExit, match=r"--arq-python .*: not an executable file"):
        bench_support.peers_interpreter(str(tmp_path), "--arq-python", ["arq"])
    with pytest.raises(SystemExit, match=r"cannot import no_such_module_da \(ModuleNotFoundError"):
        bench_support.peers_interpreter(sys.executable, "--peers-python", ["no_such_module_da"])
    # A program that exits 0 whatever it is given is not taken for an interpreter.
    true = tmp_path / "true"
    true.write_text("#!/bin/sh\nexit 0\n")
    true.chmod(0o755)
    with pytest.raises(SystemExit, match=r"--arq-python .*true: not a Python interpreter"):
        bench_support.peers_interpreter(str(true), "--arq-python", ["arq"])


@pytest.mark.parametrize("args, says", [
    (["--start", "redis", "--arq-python", "/nonexistent/python"], "--arq-python /nonexistent/python: no such file"),
    (["--start", "redis", "--results", "."], "--results: . is a directory"),
])
def test_distributed_benchmark_refuses_a_bad_path_before_starting_anything(args: list[str], says: str) -> None:
    done = script("distributed_benchmark.py", *args)
    assert done.returncode == 1, done
    assert says in done.stderr and "Traceback" not in done.stderr
    assert "backend " not in done.stdout  # no server was started: the banner comes once one serves


# Every script with a --results option, found in the scripts themselves (a new one is covered too).
# The peers' scripts run in their own environment (arq, matplotlib), not this one; bench_support is no script.
_PEERS_ONLY = {"arq_benchmark.py", "plot_results.py", "bench_support.py"}
_WITH_RESULTS = sorted(path.name for path in BENCHMARKS.glob("*.py")
                       if '"--results"' in path.read_text() and path.name not in _PEERS_ONLY)


def test_the_scripts_with_results_are_found() -> None:
    assert {"latency_layers.py", "round_trips.py", "payload_bytes.py", "queue_layers.py",
            "distributed_benchmark.py", "run_all.py"} <= set(_WITH_RESULTS)


@pytest.mark.parametrize("name", _WITH_RESULTS)
def test_every_script_refuses_a_bad_results_path_before_measuring_anything(name: str, tmp_path: pathlib.Path) -> None:
    afile = tmp_path / "a-file"
    afile.write_text("x")
    for bad, says in ((tmp_path, f"--results: {tmp_path} is a directory"),
                      (afile / "results.json", f"--results: {afile} (or a folder above it) is a file")):
        extra = ["--start", "redis"] if name == "distributed_benchmark.py" else []
        done = script(name, *extra, "--results", str(bad))
        assert done.returncode == 1, (name, done)
        assert says in done.stderr and "Traceback" not in done.stderr, (name, done.stderr)
        assert done.stdout.strip() == "", (name, done.stdout)  # nothing measured, nothing started


def test_distributed_benchmark_without_a_backend_is_a_usage_error() -> None:
    done = script("distributed_benchmark.py")
    assert done.returncode == 2, done  # as every other option error (argparse)
    assert "error: pass --backend-url URL or --start redis|nats" in done.stderr and "usage:" in done.stderr


def test_run_all_refuses_a_bad_peers_interpreter_before_running_anything(tmp_path: pathlib.Path) -> None:
    started = time.monotonic()
    done = script("run_all.py", "--start", "redis", "--peers-python", str(tmp_path / "python"),
                  "--results", str(tmp_path / "r.json"))
    assert done.returncode == 1 and "no such file" in done.stderr and "Traceback" not in done.stderr
    assert "== " not in done.stdout and not (tmp_path / "r.json").exists()  # no step ran
    assert time.monotonic() - started < 30


def _serves(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _processes_naming(text: str) -> list[int]:
    found = []
    for entry in pathlib.Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


@pytest.mark.redis
@pytest.mark.timeout(120)
@pytest.mark.parametrize("how, ignored, code, says", [
    ("ctrl-c", False, 130, "interrupted (Ctrl-C): the servers and worker processes this run started are stopped"),
    ("ctrl-c", True, 130, "interrupted (Ctrl-C): the servers and worker processes this run started are stopped"),
    ("hang-up", False, 129, "stopped (SIGHUP): the servers and worker processes this run started are stopped"),
    ("ctrl-c twice", False, 130, "SIGINT again: the servers and worker processes this run started are killed"),
    ("sigterm twice", False, 143, "SIGTERM again: the servers and worker processes this run started are killed"),
], ids=["terminal-ctrl-c", "ctrl-c-started-with-sigint-ignored", "terminal-closed", "ctrl-c-twice",
        "sigterm-twice-as-a-parent-passing-it-on"])
def test_a_signal_stops_a_run_its_workers_and_its_server_with_one_line(how: str, ignored: bool, code: int,
                                                                        says: str) -> None:
    """Ctrl-C in a terminal signals the whole foreground process group: here the script's own, since
    its server and workers run in sessions of their own and are stopped by it, in order. A script
    started with SIGINT ignored (a background job of a non-interactive shell) stops on it too. A
    closed terminal hangs up the script alone (its servers are in other sessions): it stops them.
    A second signal while it stops ends it at once, but kills what it started rather than leave it
    (the workers and servers, in sessions of their own, would otherwise outlive it)."""
    def start() -> subprocess.Popen[str]:
        if ignored:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            return subprocess.Popen([sys.executable, str(BENCHMARKS / "distributed_benchmark.py"), "--start", "redis",
                                     "--workers", "1", "--workflows", "100000", "--rounds", "3"],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    cwd=BENCHMARKS.parent, start_new_session=True)
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)

    run = start()
    try:
        assert run.stdout is not None
        banner = run.stdout.readline()  # "backend redis://127.0.0.1:PORT/0 (persistence: none)"
        assert banner.startswith("backend redis://"), banner
        url = banner.split()[1]
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        give_up = time.monotonic() + 30
        while not _processes_naming(url) and time.monotonic() < give_up:
            time.sleep(0.1)
        workers = _processes_naming(url)
        assert workers, "the worker processes did not start"
        time.sleep(2)  # into the measured passes
        if how.startswith("ctrl-c"):
            os.killpg(run.pid, signal.SIGINT)
        elif how == "hang-up":
            os.kill(run.pid, signal.SIGHUP)
        else:
            os.kill(run.pid, signal.SIGTERM)
        if how.endswith("twice"):
            # Again while it stops its workers: repeated until it exits, so that one lands during the
            # stop however fast this machine makes it (a lone second signal after 0.1 s could come late).
            give_up = time.monotonic() + 5
            while run.poll() is None and time.monotonic() < give_up:
                time.sleep(0.02)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(run.pid, signal.SIGINT if how.startswith("ctrl-c") else signal.SIGTERM)
        _, stderr = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    assert run.returncode == code, stderr[-2000:]
    assert says in stderr
    assert "Traceback" not in stderr
    assert not _serves(port), "the run's redis-server still serves"
    assert not [pid for pid in workers if pathlib.Path(f"/proc/{pid}").exists()
                and "zombie" not in (pathlib.Path(f"/proc/{pid}/status").read_text().lower())], "a worker still runs"
