"""examples/llm_agents.py with an endpoint nobody listens at: one line naming the URL, never the key."""

from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import sys

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def _closed_port() -> int:
    with socket.socket() as probe:  # bound then closed: connecting to it is refused
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_an_unreachable_endpoint_is_one_line_naming_the_url() -> None:
    url = f"http://127.0.0.1:{_closed_port()}/v1"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "DA_"))},
           "OPENAI_API_KEY": "sk-test-never-printed", "OPENAI_BASE_URL": url, "OPENAI_MAX_RETRIES": "0"}
    done = subprocess.run([sys.executable, "llm_agents.py", "--approve", "yes"], cwd=EXAMPLES, env=env,
                          capture_output=True, text=True, timeout=90)
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr and "sk-test-never-printed" not in done.stderr + done.stdout
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("error: ") and url in line and "OPENAI_BASE_URL" in line, line
