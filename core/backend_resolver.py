"""How core code opens a backend by URL without importing any adapter or plugin code.

Backend discovery needs pluggy, which the core must not import; the package facade
(``distributed_agents/__init__``, always imported before any core module) installs the
plugin-based opener here. Core code calls ``open_backend`` and never knows which
adapters exist.
"""

from __future__ import annotations

from typing import Any, Protocol

from distributed_agents.core.errors import BackendNotFoundError
from distributed_agents.core.redaction import redact_url
from distributed_agents.core.ports.backend import Backend

__all__ = ["BackendOpener", "DEFAULT_BACKEND_URL", "install_backend_opener", "open_backend"]

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
