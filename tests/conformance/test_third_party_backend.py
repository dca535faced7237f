"""A backend package written from the guide is found by URL scheme and passes the suite.

The package in tests/third_party_backend is really installed (into a temporary target
directory, so the shared environment is untouched) and the conformance command runs in
a subprocess that sees it only through its entry point.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "third_party_backend"


def _has_build_backend() -> bool:
    """Whether this environment already has the package's build backend (setuptools>=61 and
    wheel, which older setuptools needs to build one; the [dev] extra installs both)."""
    try:
        importlib.metadata.version("wheel")
        return int(importlib.metadata.version("setuptools").split(".")[0]) >= 61
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return False


# Its own bound: a real pip install and the whole conformance suite in a subprocess
# (about 90 checks; ~20 s on a quiet machine, over a minute on a loaded one), more than the
# default 120 s leaves room for when the machine is busy. The subprocess bounds sum below it.
@pytest.mark.timeout(300)
def test_toy_backend_is_discovered_and_conforms(tmp_path: Path) -> None:
    target = tmp_path / "site"
    # Built from a copy, so the build leaves nothing in the source tree.
    source = shutil.copytree(PACKAGE, tmp_path / "package", ignore=shutil.ignore_patterns("build", "*.egg-info"))
    # With setuptools at hand the build uses it (seconds); otherwise build isolation fetches
    # it from the index, as any user's pip install would (most of a minute under load).
    isolation = ["--no-build-isolation"] if _has_build_backend() else []
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", *isolation, "--target", str(target), str(source)],
        capture_output=True, text=True, timeout=120,
    )
    assert install.returncode == 0, install.stderr
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    run = subprocess.run([sys.executable, "-m", "distributed_agents.conformance", "toy://"],
                         capture_output=True, text=True, timeout=170, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Conformance report for toy://" in run.stdout
    assert "PASS        task_queue.priority-fifo" in run.stdout
    assert "OK: the backend conforms" in run.stdout


def test_unknown_scheme_is_reported(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, "-m", "distributed_agents.conformance", "nosuch://x"],
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert run.returncode == 2
    assert "no installed backend serves nosuch://" in run.stderr


def test_missing_capability_is_skipped_and_reported(tmp_path: Path) -> None:
    """Declaring a capability away is reported as skipped, never as passed."""
    run = subprocess.run([sys.executable, "-m", "distributed_agents.conformance", "memory://", "--without", "state_ttl",
                          "-k", "state_ttl or list_by_status"],
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "SKIP        state_store.ttl" in run.stdout
    assert "PASS        state_store.list-by-status" in run.stdout
