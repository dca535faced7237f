"""How the command-line tool writes its log: human lines (the default) or one JSON object per line.

Both formats carry the workflow, step, node, task and attempt a record was emitted for
(``core.log_context``): the human format as ``[wf=wf_1 step=3 node=writer task=... attempt=1]``
before the message, the JSON format as fields.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys

from distributed_agents.core.log_context import FIELDS, LogContextFilter
from distributed_agents.core.redaction import redact_text

__all__ = ["LOG_FORMATS", "JsonFormatter", "configure_logging", "log_handler"]

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(log_context)s%(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line.

    Fields: ``time`` (UTC, ISO 8601 with milliseconds), ``level``, ``logger``, ``message``;
    then ``workflow_id``, ``step``, ``node``, ``task_id``, ``attempt`` when bound (see
    ``core.log_context``); ``trace_id`` and ``span_id`` (hex) of the current OpenTelemetry
    span when tracing is on (``--otel``); ``exception`` (the formatted traceback) when the
    record has one. A value JSON cannot hold is written as its ``str``.
    """

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, object] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc)
            .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                data[name] = value
        data.update(_trace_ids())
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            data["exception"] = record.exc_text
        if record.stack_info:
            data["stack"] = self.formatStack(record.stack_info)
        # A URL anywhere in the record (a library's message, a traceback) shows no credentials.
        return redact_text(json.dumps(data, default=str, ensure_ascii=False))


def _trace_ids() -> dict[str, str]:
    """The current OpenTelemetry span's ids (log data model names), or none when OpenTelemetry is not in use."""
    otel = sys.modules.get("opentelemetry.trace")  # never imported here: only a process that traces has it
    if otel is None:
        return {}
    context = otel.get_current_span().get_span_context()
    if not context.is_valid:
        return {}
    return {"trace_id": f"{context.trace_id:032x}", "span_id": f"{context.span_id:016x}"}


class RedactingFormatter(logging.Formatter):
    """The human format, with the credentials of every URL in a line masked (``core.redaction``)."""

    def format(self, record: logging.LogRecord) -> str:
        return redact_text(super().format(record))


def log_handler(log_format: str) -> logging.Handler:
    """A stderr handler in ``log_format`` (one of ``LOG_FORMATS``) that adds the log context to records."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else RedactingFormatter(TEXT_FORMAT))
    handler.addFilter(LogContextFilter())
    return handler


def configure_logging(level: str, log_format: str) -> None:
    """Log at ``level`` (a ``logging`` level name) to stderr in ``log_format``, unless logging is already set up."""
    logging.basicConfig(level=level.upper(), handlers=[log_handler(log_format)])
