"""How core code opens a backend by URL without importing any adapter or plugin code.

Backend discovery needs pluggy, which the core must not import; the package facade
(``distributed_agents/__init__``, always imported before any core module) installs the
plugin-based opener here. Core code calls ``open_backend`` and never knows which
adapters exist.
"""

from __future__ import annotations

from typing import Any, Protocol

from distributed_agents.core.errors import BackendNotFoundError, ConfigurationError
from distributed_agents.core.redaction import redact_text, redact_url
from distributed_agents.core.ports.backend import Backend

__all__ = ["BackendOpener", "DEFAULT_BACKEND_URL", "check_backend_argument", "install_backend_opener", "open_backend"]

DEFAULT_BACKEND_URL = "memory://"


class BackendOpener(Protocol):
    """Turns a URL and option overrides into an unconnected ``Backend``."""

    def __call__(self, url: str, **options: Any) -> Backend: ...


_opener: BackendOpener | None = None


def install_backend_opener(opener: BackendOpener) -> None:
    """Make ``opener`` the function ``open_backend`` delegates to."""
    global _opener
    _opener = opener


def open_backend(url: str = DEFAULT_BACKEND_URL, **options: Any) -> Backend:
    """Open (but do not connect) the backend for ``url``, e.g. ``memory://`` or ``redis://...``."""
    if _opener is None:
        raise BackendNotFoundError(
            f"cannot open {redact_url(url)!r}: no backend opener is installed; import distributed_agents first"
        )
    return _opener(url, **options)


def check_backend_argument(backend: object, where: str) -> None:
    """Raise ``ConfigurationError`` unless ``backend`` is None, a URL string or a ``Backend``.

    ``where`` names the call (``"Orchestrator(backend=...)"``). Anything else (bytes, a
    number, a dict of options) would otherwise run on ``memory://`` without a word.
    """
    if backend is None or isinstance(backend, (str, Backend)):
        return
    hint = ("decode it first: backend=url.decode()" if isinstance(backend, (bytes, bytearray))
            else "pass a URL such as 'redis://host:6379/0', 'nats://host:4222' or 'memory://', or an opened Backend")
    raise ConfigurationError(f"{where} takes a backend URL string or a Backend, got {type(backend).__name__} "
                             f"{redact_text(repr(backend))[:120]}; {hint}")
