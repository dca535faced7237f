"""``--otel`` and ``--metrics-port``: the traces and metrics of a long-running command.

``add_flags(parser)`` gives a command the two flags; ``instrumentation_from(args)``
turns them (or their environment variables) into the observer to pass to the
``Worker`` / ``Orchestrator`` (``core.instrumentation``), importing OpenTelemetry or
prometheus-client only when asked for:

* ``--otel`` (``DA_OTEL=1``): spans of every task attempt, exported as the standard
  ``OTEL_*`` variables say (``distributed_agents.telemetry.configure_from_env``);
* ``--metrics-port PORT`` (``DA_METRICS_PORT``): Prometheus metrics at
  ``http://HOST:PORT/metrics`` on ``DA_METRICS_ADDR`` (default all interfaces), queues
  polled every ``DA_METRICS_INTERVAL`` seconds (default 5).
"""

from __future__ import annotations

import argparse
import os

from distributed_agents.core.errors import ConfigurationError
from distributed_agents.core.instrumentation import Instrumentation, combine

__all__ = ["add_flags", "instrumentation_from"]

TRUE = ("1", "true", "yes", "on")
FALSE = ("", "0", "false", "no", "off")


def add_flags(parser: argparse.ArgumentParser) -> None:
    """Add ``--otel`` and ``--metrics-port`` to ``parser``."""
    parser.add_argument("--otel", action="store_true", default=None,
                        help="export OpenTelemetry spans of the tasks it runs, as the OTEL_* environment variables "
                             "say (OTEL_TRACES_EXPORTER, default otlp; OTEL_EXPORTER_OTLP_ENDPOINT, "
                             "OTEL_SERVICE_NAME, ...); needs the [otel] extra (default: off; env: $DA_OTEL=1)")
    parser.add_argument("--metrics-port", dest="metrics_port", default=None, type=_port_arg, metavar="PORT",
                        help="serve Prometheus metrics at http://HOST:PORT/metrics; 0 picks a free port (logged); "
                             "needs the [metrics] extra (default: none; env: $DA_METRICS_PORT; bind address "
                             "$DA_METRICS_ADDR, default all interfaces; queue poll $DA_METRICS_INTERVAL seconds, "
                             "default 5)")


def port_number(text: str) -> int:
    """A TCP port from ``text`` (0 to 65535; 0 picks a free one); raises ``ValueError`` saying why not."""
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise ValueError(f"{value} is not a port number (0 to 65535; 0 picks a free one)")
    return value


def _port_arg(text: str) -> int:
    try:
        return port_number(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _env(name: str) -> str:
    return os.environ.get(name, "").strip()


def instrumentation_from(args: argparse.Namespace, service_name: str) -> Instrumentation | None:
    """The observer ``--otel`` / ``--metrics-port`` (or ``DA_OTEL`` / ``DA_METRICS_PORT``) ask for, or None.

    Starts the metrics HTTP server and sets the global TracerProvider up as a side
    effect. Raises ``ConfigurationError`` for a malformed environment value, a port
    that cannot be bound, or a missing extra (``MissingExtraError``).
    """
    otel = getattr(args, "otel", None)
    if otel is None:
        flag = _env("DA_OTEL").lower()
        if flag not in TRUE + FALSE:
            raise ConfigurationError(f"environment variable DA_OTEL={flag!r} is not on or off; set it to 1 or 0")
        otel = flag in TRUE
    port = getattr(args, "metrics_port", None)
    if port is None and _env("DA_METRICS_PORT"):
        try:
            port = port_number(_env("DA_METRICS_PORT"))
        except ValueError as exc:
            raise ConfigurationError(f"environment variable DA_METRICS_PORT is invalid: {exc}; set it to a port "
                                     "such as 9464, or unset it") from None
    observers: list[Instrumentation] = []
    if otel:
        from distributed_agents import telemetry

        telemetry.configure_from_env(service_name)
        observers.append(telemetry.Tracing())
    if port is not None:
        from distributed_agents.metrics import DEFAULT_POLL_INTERVAL, Metrics

        interval = DEFAULT_POLL_INTERVAL
        if _env("DA_METRICS_INTERVAL"):
            try:
                interval = float(_env("DA_METRICS_INTERVAL"))
                if not interval > 0:
                    raise ValueError
            except ValueError:
                raise ConfigurationError(f"environment variable DA_METRICS_INTERVAL={_env('DA_METRICS_INTERVAL')!r} "
                                         "is not a positive number of seconds; set it to e.g. 5") from None
        metrics = Metrics(poll_interval=interval)
        addr = _env("DA_METRICS_ADDR") or "0.0.0.0"
        try:
            metrics.serve(port, addr)
        except OSError as exc:
            raise ConfigurationError(f"--metrics-port {port}: cannot serve metrics on {addr}:{port} ({exc}); pick a "
                                     "free port (or 0 for any)") from None
        observers.append(metrics)
    return combine(*observers)
