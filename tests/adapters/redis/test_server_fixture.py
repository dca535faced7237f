"""The ``redis_url`` fixture fails, never skips, when there is no redis-server."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys


def test_missing_binary_fails_the_test_with_an_install_hint(tmp_path: pathlib.Path) -> None:
    (tmp_path / "test_needs_redis.py").write_text("def test_it(redis_url):\n    assert redis_url\n")
    tests_dir = pathlib.Path(__file__).resolve().parents[2]
    env = {**os.environ, "PATH": str(tmp_path), "PYTHONPATH": str(tests_dir)}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "support.redis_server", "-q", "-p", "no:cacheprovider",
         "--rootdir", str(tmp_path), "-c", os.devnull, str(tmp_path / "test_needs_redis.py")],
        capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path,
    )
    assert done.returncode != 0, done.stdout
    assert "1 error" in done.stdout and "skipped" not in done.stdout, done.stdout
    assert "no redis-server binary found on PATH" in done.stdout
