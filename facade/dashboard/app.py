"""The dashboard's ASGI application (Starlette): pages, their live parts, actions, events, a JSON API.

Routes (GET unless marked POST):

* ``/`` workflows (``?status=&graph=&cursor=``), ``/workflows/{id}`` (``?step=N``: the state at
  step N and its diff), ``/workers``, ``/queues``, ``/dead-letters`` (``?node_type=``),
  ``/dead-letters/{task_id}``: HTML pages;
* ``/parts/workflows``, ``/parts/workers``, ``/parts/queues``, ``/parts/dead-letters`` and
  ``/workflows/{id}/parts``: ``{"part-<name>": html}`` for the page script to swap in;
* ``/events`` (``?workflow=ID``): Server-Sent Events, one ``data:`` JSON event per message;
* ``/api/workflows``, ``/api/workflows/{id}``, ``/api/workflows/{id}/state``,
  ``/api/workers``, ``/api/queues``, ``/api/dead-letters``, ``/api/dead-letters/{task_id}``: JSON;
* POST ``/workflows/{id}/cancel``, ``/workflows/{id}/resume`` (form ``answer``, optional
  ``interrupt_id``), ``/fork`` (``checkpoint_id``), ``/dead-letters/{task_id}/requeue``,
  ``/dead-letters/{task_id}/purge``, ``/dead-letters/purge`` (``node_type``): actions.

Actions answer JSON ``{"ok", "message", "location"?}`` to a request that accepts JSON (the
page script), else redirect back (303) with the message. They are refused with 403 in
read-only mode, without the token when one is configured (header ``X-Dashboard-Token``,
``Authorization: Bearer T`` or form field ``token``; compared in constant time; never a
cookie, so another site cannot borrow it), and when the request comes from another origin.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import (HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response,
                                 StreamingResponse)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from distributed_agents.core.errors import (BackendUnavailableError, ConfigurationError, DistributedAgentsError,
                                            PayloadDecodeError, WorkflowNotFoundError)
from distributed_agents.core.orchestrator import Orchestrator
from distributed_agents.core.redaction import redact_text, redact_url
from distributed_agents.core.timeouts import within

from . import graph_svg
from .hub import CLOSED, EventHub
from .render import Page
from .service import PAGE_SIZE, ActionRefused, DashboardService, parse_answer

__all__ = ["HostCheck", "allowed_hosts", "create_app"]

log = logging.getLogger("distributed_agents.dashboard")

STATIC = __file__.rsplit("/", 1)[0] + "/static"
MAX_PAGE = 500  # workflows per page at most
LETTERS_PER_PAGE = 100  # dead letters per page
KEEPALIVE = 15.0  # seconds between SSE comments on a quiet stream, so proxies keep it open
REGISTRY_POLL = 3.0  # seconds between the server's reads of workers and queues (changes are pushed)


class Forbidden(Exception):
    pass


def _wants_json(request: Request) -> bool:
    return "application/json" in request.headers.get("accept", "")


async def _form(request: Request) -> dict[str, str]:
    """The fields of a urlencoded POST body (what forms and the page script send); {} for another type."""
    if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        return {}
    pairs = urllib.parse.parse_qsl((await request.body()).decode("utf-8", "replace"), keep_blank_values=True)
    return dict(pairs)


def _offset(request: Request) -> int:
    text = request.query_params.get("offset", "")
    return int(text) if text.isdigit() else 0


def _query(request: Request, *names: str) -> dict[str, str]:
    return {n: request.query_params[n] for n in names if request.query_params.get(n)}


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")
WILDCARD_BINDS = ("0.0.0.0", "::", "")


def allowed_hosts(host: str = "127.0.0.1", extra: Sequence[str] = ()) -> list[str]:
    """The Host header names the dashboard answers to: loopback names, the address it binds (unless a
    wildcard such as 0.0.0.0) and ``extra`` (``--allowed-host``, e.g. a reverse proxy's name)."""
    names = list(LOOPBACK_HOSTS)
    bound = f"[{host}]" if ":" in host and not host.startswith("[") else host
    for name in [bound, *extra]:
        name = name.strip().lower()
        if name and name not in WILDCARD_BINDS and name not in names:
            names.append(name)
    return names


class HostCheck:
    """Refuses (400) a request whose Host header is not an allowed name: a DNS-rebinding page gets
    nothing. Starlette's ``TrustedHostMiddleware`` decides; this adds a message saying what to do."""

    def __init__(self, app: ASGIApp, hosts: Sequence[str]) -> None:
        self.app = app
        self.hosts = list(hosts)
        self._check = TrustedHostMiddleware(self._accepted, allowed_hosts=self.hosts, www_redirect=False)

    @staticmethod
    async def _accepted(scope: Scope, receive: Receive, send: Send) -> None:
        scope["da.host_ok"] = True

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return

        async def discard(message: Any) -> None:
            return None

        await self._check(scope, receive, discard)
        if scope.pop("da.host_ok", False):
            await self.app(scope, receive, send)
            return
        given = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1")
        message = (f"refused: the Host header {given!r} is not a name this dashboard answers to "
                   f"({', '.join(self.hosts)}); open it as http://127.0.0.1:PORT, or start it with "
                   "--allowed-host NAME for a reverse proxy's name (this guards against DNS rebinding)")
        await PlainTextResponse(message, status_code=400)(scope, receive, send)


def backend_unreachable(error: BaseException) -> bool:
    """Whether ``error`` means the backend cannot be reached (down, refused, timed out), not a bug."""
    if isinstance(error, (BackendUnavailableError, ConnectionError, TimeoutError, asyncio.TimeoutError, OSError)):
        return True
    # redis-py and nats-py raise their own connection errors (not ConnectionError subclasses)
    return any(kind.__module__.split(".")[0] in ("redis", "nats") and
               any(word in kind.__name__ for word in ("Connection", "Timeout", "NoServers", "Closed"))
               for kind in type(error).__mro__)


class BackendDown:
    """Answers 503 with what is unreachable and what to do when a request fails because the backend
    is down: an HTML page for a page, JSON ``{"error", "backend"}`` for the API and page parts."""

    def __init__(self, app: ASGIApp, backend_url: str, page: Page) -> None:
        self.app = app
        self.backend_url = backend_url
        self.page = page

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking(message: Any) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking)
        except Exception as exc:
            if started or not backend_unreachable(exc):
                raise
            log.warning("the backend %s is unreachable: %s", self.backend_url, exc)
            message = (f"the backend {self.backend_url} is unreachable ({type(exc).__name__}: "
                       f"{redact_text(str(exc)).splitlines()[0] if str(exc) else 'no answer'}); check that the "
                       "server runs and this machine reaches it, then reload this page (the dashboard keeps running)")
            path = str(scope.get("path", ""))
            response: Response
            if path.startswith(("/api/", "/parts/")) or path.endswith("/parts") or \
                    b"application/json" in dict(scope.get("headers") or []).get(b"accept", b""):
                response = JSONResponse({"error": message, "backend": self.backend_url}, status_code=503)
            else:
                response = HTMLResponse(self.page.message_page("Backend unreachable", message, path or "/"),
                                        status_code=503)
            await response(scope, receive, send)


def create_app(orchestrator: Orchestrator, *, token: str | None = None, read_only: bool = False,
               graphs: Sequence[Any] = (), title: str = "distributed-agents",
               own_orchestrator: bool = False, hosts: Sequence[str] | None = None,
               registry_poll: float = REGISTRY_POLL) -> Starlette:
    """The dashboard over ``orchestrator`` (connected on startup, closed on shutdown if ``own_orchestrator``).

    ``token``: required by every action when set. ``read_only``: every action is 403.
    ``graphs``: compiled graphs to draw, resume and fork (the orchestrator's own known
    graphs count too). ``hosts``: the Host header names accepted (default ``allowed_hosts()``:
    loopback names only); others get 400. ``registry_poll``: seconds between the server's reads
    of the worker registry and queue depths; a change is pushed to the pages as a
    ``{"type": "registry"}`` event (workers going late/offline or dropped, depths moving), so
    no page polls. The app's ``state.hub`` is the ``EventHub`` (``end_streams`` it
    before stopping the server, so open event streams end at once).
    """
    if token is not None and not token:
        raise ConfigurationError("the dashboard token is empty; pass a non-empty --token (or unset it)")
    page = Page(read_only=read_only, token_required=token is not None, title=title)
    holder: dict[str, Any] = {}

    def service() -> DashboardService:
        found: DashboardService = holder["service"]
        return found

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await orchestrator.connect()
        hub = app.state.hub
        hub.bus = orchestrator.backend.message_bus
        await hub.start()
        holder["service"] = DashboardService(orchestrator, hub, graphs)
        watcher = asyncio.ensure_future(watch_registry(hub))
        try:
            yield
        finally:
            watcher.cancel()
            with contextlib.suppress(BaseException):
                await watcher
            await holder["service"].close()
            await hub.close()
            if own_orchestrator:
                await orchestrator.close()

    async def watch_registry(hub: EventHub) -> None:
        previous: Any = None
        while True:
            await asyncio.sleep(registry_poll)
            try:
                snapshot = await service().registry_snapshot()
            except Exception as exc:  # the backend is down for now: tell the open pages once
                log.debug("reading the worker registry failed: %s", exc)
                if previous != "down":
                    hub.publish({"type": "backend", "ok": False, "time": time.time(),
                                 "message": f"the backend {redact_url(str(orchestrator.backend.url))} is unreachable"})
                previous = "down"
                continue
            if previous == "down":
                hub.publish({"type": "backend", "ok": True, "time": time.time(), "message": "the backend answers again"})
            elif previous is not None and snapshot != previous:
                hub.publish({"type": "registry", "time": time.time()})
            previous = snapshot

    # -- guards -------------------------------------------------------------------------------

    def check_allowed(request: Request, form: Mapping[str, Any]) -> None:
        if read_only:
            raise Forbidden("this dashboard is read-only (started with --read-only): actions are disabled")
        origin = request.headers.get("origin")
        if origin and origin != "null":
            parsed = urllib.parse.urlsplit(origin)
            if parsed.netloc != request.headers.get("host", ""):
                raise Forbidden(f"refused a request from another origin ({origin}); use the dashboard's own page")
        if request.headers.get("sec-fetch-site") == "cross-site":
            raise Forbidden("refused a cross-site request; use the dashboard's own page")
        if token is None:
            return
        given = request.headers.get("x-dashboard-token") or ""
        auth = request.headers.get("authorization", "")
        if not given and auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        if not given:
            given = str(form.get("token") or "")
        if not given:
            raise Forbidden("this action needs the dashboard token: enter it in the 'Dashboard token' field")
        if not hmac.compare_digest(given.encode("utf-8"), token.encode("utf-8")):
            raise Forbidden("wrong dashboard token: enter the token the dashboard was started with")

    def action(run: Callable[[Request, Mapping[str, Any]], Awaitable[tuple[str, str | None]]],
               back: Callable[[Request, Mapping[str, Any]], str]) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            form = await _form(request)
            target = back(request, form)
            try:
                check_allowed(request, form)
                message, location = await run(request, form)
            except Forbidden as exc:
                return _refusal(request, 403, str(exc), target)
            except WorkflowNotFoundError as exc:
                return _refusal(request, 404, str(exc), target)
            except (ActionRefused, ConfigurationError) as exc:
                return _refusal(request, 409, str(exc), target)
            except DistributedAgentsError as exc:
                return _refusal(request, 500, str(exc), target)
            location = location or target
            if _wants_json(request):
                return JSONResponse({"ok": True, "message": message, "location": location})
            separator = "&" if "?" in location else "?"
            return RedirectResponse(f"{location}{separator}{urllib.parse.urlencode({'notice': message})}", 303)

        return endpoint

    def _refusal(request: Request, status: int, message: str, back: str) -> Response:
        if _wants_json(request):
            return JSONResponse({"ok": False, "message": message}, status_code=status)
        return HTMLResponse(page.message_page("Not done", message, back), status_code=status)

    # -- pages --------------------------------------------------------------------------------

    def _wid(request: Request) -> str:
        return str(request.path_params["workflow_id"])

    def _workflow_url(workflow_id: str) -> str:
        return "/workflows/" + urllib.parse.quote(workflow_id)

    async def _list_data(request: Request) -> tuple[dict[str, Any], dict[str, str]]:
        query = _query(request, "status", "graph", "cursor", "limit", "order", "offset")
        limit_text = query.get("limit", "")
        if limit_text and not (limit_text.isdigit() and 1 <= int(limit_text) <= MAX_PAGE):
            raise _BadRequest(f"limit={limit_text!r}: pass a whole number from 1 to {MAX_PAGE}")
        if query.get("order", "newest") not in ("newest", "oldest"):
            raise _BadRequest(f"order={query['order']!r}: pass newest or oldest")
        try:
            data = await service().workflows(query.get("status"), query.get("graph"), query.get("cursor"),
                                             int(limit_text) if limit_text else PAGE_SIZE,
                                             query.get("order", "newest"), _offset(request))
        except ConfigurationError as exc:  # a bad status or cursor
            raise _BadRequest(str(exc)) from None
        return data, query

    async def workflows_page(request: Request) -> Response:
        data, query = await _list_data(request)
        names = sorted({w["graph"] for w in data["workflows"]})
        return HTMLResponse(page.workflows_page(data, query, names, request.query_params.get("notice", "")))

    async def workflows_part(request: Request) -> Response:
        data, query = await _list_data(request)
        return JSONResponse({"part-rows": page.rows_section("Workflows", page.workflow_rows(data, query))})

    async def _workflow_parts(request: Request) -> tuple[dict[str, Any], dict[str, str]]:
        workflow_id = _wid(request)
        data = await service().workflow(workflow_id)
        step_text = request.query_params.get("step", "")
        step = int(step_text) if step_text.lstrip("-").isdigit() else None
        state = await service().state_at(workflow_id, step)
        graph = service().graph(data["graph"])
        svg, problem = None, ""
        if graph is None:
            problem = (f"This dashboard does not have graph {data['graph']!r}, so it cannot draw it: start the "
                       "dashboard with --graph MODULE:GRAPH.")
        else:
            try:
                svg = graph_svg.mark(await asyncio.to_thread(graph_svg.graph_svg, graph), data["node_states"])
            except DistributedAgentsError as exc:
                problem = f"The graph cannot be drawn here: {exc}"
        return data, page.workflow_parts(data, svg, problem, state)

    async def workflow_page(request: Request) -> Response:
        data, parts = await _workflow_parts(request)
        return HTMLResponse(page.workflow_page(data, parts, request.query_params.get("notice", "")))

    async def workflow_part(request: Request) -> Response:
        _, parts = await _workflow_parts(request)
        return JSONResponse({f"part-{name}": html for name, html in parts.items() if name != "events"})

    async def workers_page(request: Request) -> Response:
        return HTMLResponse(page.workers_page(await service().workers()))

    async def workers_part(request: Request) -> Response:
        return JSONResponse({"part-rows": page.rows_section("Live workers", page.worker_rows(await service().workers()))})

    def _named_types(request: Request) -> list[str]:
        return [t.strip() for t in request.query_params.get("node_types", "").split(",") if t.strip()]

    async def queues_page(request: Request) -> Response:
        return HTMLResponse(page.queues_page(await service().queues(_named_types(request))))

    async def queues_part(request: Request) -> Response:
        rows = page.queue_rows(await service().queues(_named_types(request)))
        return JSONResponse({"part-rows": page.rows_section("Queue depth per node type", rows)})

    async def letters_page(request: Request) -> Response:
        node_type = request.query_params.get("node_type", "")
        data = await service().dead_letter_page(node_type, LETTERS_PER_PAGE, _offset(request))
        return HTMLResponse(page.dead_letters_page(data, node_type, request.query_params.get("notice", "")))

    async def letters_part(request: Request) -> Response:
        node_type = request.query_params.get("node_type", "")
        data = await service().dead_letter_page(node_type, LETTERS_PER_PAGE, _offset(request))
        return JSONResponse({"part-rows": page.rows_section("Dead letters", page.letters_content(data, node_type))})

    async def letter_page(request: Request) -> Response:
        letter = await service().dead_letter(str(request.path_params["task_id"]))
        if letter is None:
            return HTMLResponse(page.message_page(
                "No such dead letter", f"no dead letter with task id {request.path_params['task_id']!r} (requeued or "
                "purged?)", "/dead-letters"), status_code=404)
        return HTMLResponse(page.dead_letter_page(letter, request.query_params.get("notice", "")))

    # -- JSON API -----------------------------------------------------------------------------

    async def api_workflows(request: Request) -> Response:
        data, _ = await _list_data(request)
        return JSONResponse(data)

    async def api_workflow(request: Request) -> Response:
        return JSONResponse(_plain(await service().workflow(_wid(request))))

    async def api_state(request: Request) -> Response:
        step_text = request.query_params.get("step", "")
        step = int(step_text) if step_text.isdigit() else None
        state = await service().state_at(_wid(request), step)
        if state is None:
            return JSONResponse({"error": f"workflow {_wid(request)!r} has no checkpoint of step {step}"}, 404)
        return JSONResponse(_plain(state))

    async def api_workers(request: Request) -> Response:
        return JSONResponse(await service().workers())

    async def api_queues(request: Request) -> Response:
        return JSONResponse(await service().queues(_named_types(request)))

    async def api_letters(request: Request) -> Response:
        limit_text = request.query_params.get("limit", "")
        limit = min(int(limit_text), MAX_PAGE) if limit_text.isdigit() and int(limit_text) > 0 else LETTERS_PER_PAGE
        return JSONResponse(await service().dead_letters(request.query_params.get("node_type", ""), limit,
                                                         _offset(request)))

    async def api_letter(request: Request) -> Response:
        letter = await service().dead_letter(str(request.path_params["task_id"]))
        if letter is None:
            return JSONResponse({"error": f"no dead letter with task id {request.path_params['task_id']!r}"}, 404)
        return JSONResponse(_plain(letter))

    # -- events -------------------------------------------------------------------------------

    async def events(request: Request) -> Response:
        wanted = request.query_params.get("workflow")
        hub: EventHub = request.app.state.hub
        queue = hub.listen()

        async def stream() -> AsyncIterator[str]:
            try:
                yield "retry: 2000\n: connected\n\n"
                while True:
                    try:
                        event = await within(queue.get(), KEEPALIVE)  # not wait_for: core.timeouts
                    except asyncio.TimeoutError:
                        yield ": keepalive\n\n"
                        continue
                    if event is CLOSED:
                        return
                    if wanted and event.get("workflow_id") not in (wanted, None) and event.get("type") != "gap":
                        continue
                    yield f"data: {json.dumps(event, default=str)}\n\n"
            finally:
                hub.unlisten(queue)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    # -- actions ------------------------------------------------------------------------------

    async def do_cancel(request: Request, form: Mapping[str, Any]) -> tuple[str, str | None]:
        return await service().cancel(_wid(request)), None

    async def do_resume(request: Request, form: Mapping[str, Any]) -> tuple[str, str | None]:
        text = form.get("answer")
        if text is None:
            return await service().resume(_wid(request)), None
        answer = parse_answer(str(text), as_text=bool(form.get("as_text")))
        interrupt_id = form.get("interrupt_id")
        if interrupt_id:
            answer = {str(interrupt_id): answer}
        return await service().resume(_wid(request), answer, has_answer=True), None

    async def do_fork(request: Request, form: Mapping[str, Any]) -> tuple[str, str | None]:
        checkpoint = str(form.get("checkpoint_id") or "")
        if ":" not in checkpoint:
            raise ActionRefused("fork needs checkpoint_id, e.g. wf_1:2 (the Checkpoints table lists them)")
        new_id = await service().fork(checkpoint)
        return f"forked {checkpoint} into {new_id} (pending: resume it to run it)", _workflow_url(new_id)

    async def do_requeue(request: Request, form: Mapping[str, Any]) -> tuple[str, str | None]:
        return await service().requeue(str(request.path_params["task_id"])), "/dead-letters"

    async def do_purge(request: Request, form: Mapping[str, Any]) -> tuple[str, str | None]:
        return await service().purge([str(request.path_params["task_id"])]), "/dead-letters"

    async def do_purge_all(request: Request, form: Mapping[str, Any]) -> tuple[str, str | None]:
        listed = [t.strip() for t in str(form.get("task_ids") or "").splitlines() if t.strip()]
        if listed:  # "Purge the N listed": exactly the letters the page showed, not others that came since
            return await service().purge(listed), "/dead-letters"
        return await service().purge((), str(form.get("node_type") or "") or None), "/dead-letters"

    def to_workflow(request: Request, form: Mapping[str, Any]) -> str:
        return _workflow_url(_wid(request))

    def to_fork_source(request: Request, form: Mapping[str, Any]) -> str:
        checkpoint = str(form.get("checkpoint_id") or "")
        return _workflow_url(checkpoint.rpartition(":")[0]) if ":" in checkpoint else "/"

    def to_letters(request: Request, form: Mapping[str, Any]) -> str:
        return "/dead-letters"

    routes = [
        Route("/", workflows_page),
        Route("/workflows/{workflow_id:path}/parts", workflow_part),
        Route("/workflows/{workflow_id:path}/cancel", action(do_cancel, to_workflow), methods=["POST"]),
        Route("/workflows/{workflow_id:path}/resume", action(do_resume, to_workflow), methods=["POST"]),
        Route("/workflows/{workflow_id:path}", workflow_page),
        Route("/fork", action(do_fork, to_fork_source), methods=["POST"]),
        Route("/workers", workers_page),
        Route("/queues", queues_page),
        Route("/dead-letters", letters_page),
        Route("/dead-letters/purge", action(do_purge_all, to_letters), methods=["POST"]),
        Route("/dead-letters/{task_id:path}/requeue", action(do_requeue, to_letters), methods=["POST"]),
        Route("/dead-letters/{task_id:path}/purge", action(do_purge, to_letters), methods=["POST"]),
        Route("/dead-letters/{task_id:path}", letter_page),
        Route("/parts/workflows", workflows_part),
        Route("/parts/workers", workers_part),
        Route("/parts/queues", queues_part),
        Route("/parts/dead-letters", letters_part),
        Route("/events", events),
        Route("/api/workflows", api_workflows),
        Route("/api/workflows/{workflow_id:path}/state", api_state),
        Route("/api/workflows/{workflow_id:path}", api_workflow),
        Route("/api/workers", api_workers),
        Route("/api/queues", api_queues),
        Route("/api/dead-letters", api_letters),
        Route("/api/dead-letters/{task_id:path}", api_letter),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]

    async def not_found(request: Request, exc: Exception) -> Response:
        message = str(exc) if isinstance(exc, WorkflowNotFoundError) else "no such page"
        if request.url.path.startswith(("/api/", "/parts/")) or request.url.path.endswith("/parts"):
            return JSONResponse({"error": message}, 404)
        return HTMLResponse(page.message_page("Not found", message, "/"), status_code=404)

    async def damaged(request: Request, exc: Exception) -> Response:
        # A workflow's stored record or checkpoints are not what this engine wrote: say so, for that page only.
        message = redact_text(str(exc))
        if request.url.path.startswith(("/api/", "/parts/")) or request.url.path.endswith("/parts"):
            return JSONResponse({"error": message}, 500)
        return HTMLResponse(page.message_page("Stored data damaged", message, "/"), status_code=500)

    async def bad_request(request: Request, exc: Exception) -> Response:
        if request.url.path.startswith(("/api/", "/parts/")):
            return JSONResponse({"error": str(exc)}, 400)
        return HTMLResponse(page.message_page("Bad request", str(exc), "/"), status_code=400)

    app = Starlette(routes=routes, lifespan=lifespan, middleware=[
                        Middleware(HostCheck, hosts=list(hosts) if hosts is not None else allowed_hosts()),
                        Middleware(BackendDown, backend_url=redact_url(str(orchestrator.backend.url)), page=page)],
                    exception_handlers={WorkflowNotFoundError: not_found, 404: not_found, _BadRequest: bad_request,
                                        PayloadDecodeError: damaged})
    app.state.hub = EventHub(orchestrator.backend.message_bus)
    return app


class _BadRequest(Exception):
    pass


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))
