"""Reading what the observability tests' processes export: console spans, metrics scrapes, the metrics URL."""

from __future__ import annotations

import json
import pathlib
import re
import subprocess
import time
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def console_spans(text: str) -> list[dict[str, Any]]:
    """The JSON objects OpenTelemetry's ConsoleSpanExporter printed, one after another."""
    decoder, spans, at = json.JSONDecoder(), [], 0
    while True:
        while at < len(text) and text[at].isspace():
            at += 1
        if at >= len(text):
            return spans
        span, at = decoder.raw_decode(text, at)
        spans.append(span)


def samples(text: str) -> Samples:
    """Every sample of a Prometheus scrape by (name, sorted labels)."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(scraped: Samples, name: str, **labels: str) -> float | None:
    """One sample's value, or None if the scrape has no such sample."""
    return scraped.get((name, tuple(sorted(labels.items()))))


def metrics_url(log: pathlib.Path, process: subprocess.Popen[str]) -> str:
    """The URL a process logged it serves metrics on (it was given port 0)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = re.search(r"serving (http://\S+/metrics)", log.read_text())
        if found:
            return found.group(1)
        assert process.poll() is None, log.read_text()
        time.sleep(0.05)
    raise AssertionError(f"the process never said where it serves metrics:\n{log.read_text()}")
