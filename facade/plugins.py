"""Backend discovery through pluggy, the same way for built-in and third-party backends.

A backend package exposes a module with a ``distributed_agents_backends`` hook
implementation and registers that module under the ``distributed_agents`` entry-point
group::

    [project.entry-points.distributed_agents]
    mybackend = "mybackend.plugin"

The hook returns ``BackendSpec``s. Each names its URL scheme(s) and its factory as a
``"module:callable"`` string that is imported only when a URL of that scheme is opened,
so a backend whose optional dependency is missing costs nothing until it is used.
The factory is called as ``factory(url, options)`` with parsed ``BackendOptions`` and
returns an unconnected ``Backend``.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import pluggy

from distributed_agents.core.errors import BackendConfigError, BackendNotFoundError, MissingExtraError
from distributed_agents.core.ports.backend import Backend, BackendOptions, split_backend_url
from distributed_agents.core.redaction import redact_url

__all__ = [
    "PROJECT_NAME",
    "BackendSpec",
    "available_backends",
    "hookimpl",
    "hookspec",
    "open_backend",
    "plugin_manager",
    "register_plugin",
    "unregister_plugin",
]

PROJECT_NAME = "distributed_agents"
hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@dataclass(frozen=True)
class BackendSpec:
    """One backend as a plugin announces it.

    ``schemes``: URL schemes it serves (``("redis", "rediss", "unix")``);
    ``factory``: ``"module:callable"`` imported lazily, called as ``factory(url, options)``;
    ``install_hint``: what to install when its dependency is missing;
    ``description``: one line for listings.
    """

    name: str
    schemes: Sequence[str]
    factory: str
    install_hint: str = ""
    description: str = ""


class BackendHookSpecs:
    """The hooks a distributed-agents plugin may implement."""

    @hookspec
    def distributed_agents_backends(self) -> Sequence[BackendSpec]:  # type: ignore[empty-body]
        """Return the backends this plugin provides. Called once, when discovery runs."""


_lock = threading.RLock()
_manager: pluggy.PluginManager | None = None
_by_scheme: dict[str, BackendSpec] = {}


def plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, with every installed entry point loaded."""
    global _manager
    with _lock:
        if _manager is None:
            manager = pluggy.PluginManager(PROJECT_NAME)
            manager.add_hookspecs(BackendHookSpecs)
            manager.load_setuptools_entrypoints(PROJECT_NAME)
            manager.check_pending()
            _manager = manager
            _rebuild_scheme_table()
        return _manager


def register_plugin(plugin: object, name: str | None = None) -> None:
    """Register a plugin object (module or instance with hook implementations) at runtime."""
    with _lock:
        plugin_manager().register(plugin, name=name)
        _rebuild_scheme_table()


def unregister_plugin(plugin: object) -> None:
    """Undo ``register_plugin``."""
    with _lock:
        plugin_manager().unregister(plugin)
        _rebuild_scheme_table()


def _rebuild_scheme_table() -> None:
    assert _manager is not None
    _by_scheme.clear()
    # pluggy calls the most recently registered plugin first: it wins a scheme clash.
    for specs in _manager.hook.distributed_agents_backends():
        for spec in specs:
            for scheme in spec.schemes:
                _by_scheme.setdefault(scheme.lower(), spec)


def available_backends() -> Mapping[str, BackendSpec]:
    """Installed backends by URL scheme (read-only)."""
    plugin_manager()
    return MappingProxyType(dict(_by_scheme))


def open_backend(url: str, **options: Any) -> Backend:
    """Open (not connect) the backend serving ``url``'s scheme, with ``options`` applied."""
    scheme, _ = split_backend_url(url)
    spec = available_backends().get(scheme)
    if spec is None:
        installed = ", ".join(f"{s}:// ({b.name})" for s, b in sorted(available_backends().items())) or "none"
        raise BackendNotFoundError(
            f"no installed backend serves {scheme}:// (from {redact_url(url)!r}). Installed: {installed}. "
            "Redis needs pip install 'distributed-agents[redis]', NATS needs pip install "
            "'distributed-agents[nats]' (from a checkout: pip install '.[redis]' or '.[nats]'); a third-party "
            "backend registers a plugin under the "
            f"{PROJECT_NAME!r} entry-point group."
        )
    factory = _load_factory(spec, url)
    backend_options = BackendOptions.from_url(url, **options)
    backend = factory(url, backend_options)
    if not isinstance(backend, Backend):
        raise BackendConfigError(f"backend factory {spec.factory} returned {type(backend).__name__}, not a Backend")
    return backend


def _load_factory(spec: BackendSpec, url: str) -> Callable[[str, BackendOptions], Backend]:
    module_name, _, attr = spec.factory.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        hint = spec.install_hint or f"the dependencies of backend {spec.name!r}"
        hint = hint if hint.startswith("pip ") else f"install {hint}"
        raise MissingExtraError(f"backend {spec.name!r} for {redact_url(url)!r} cannot load ({exc}); run: {hint}") from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise BackendConfigError(f"backend {spec.name!r}: {spec.factory} is not a callable factory")
    return factory  # type: ignore[no-any-return]
