"""``HotRoutes``: the key routes and ``/batch`` answered without the framework's inner layers.

Between ``RequestMiddleware`` and a handler, Starlette and FastAPI run four more layers on every
request: the ``ExceptionMiddleware``, FastAPI's ``AsyncExitStackMiddleware`` (an exit stack per
request, for dependencies with ``yield``, which these routes have none of), the router, and the
route's own exception wrapper, each wrapping ``send`` once more. Under ``wrk`` PUTs, py-spy put
them at about a third of the event loop's time, more than the handler and the store together
(docs/PERFORMANCE.md has the figures).

This middleware sits just inside ``RequestMiddleware``. When one of the given plain routes fully
matches a request (path and method, by the route's own ``matches``, so the rules are the
router's), it calls that route's endpoint itself and answers the endpoint's exceptions from the
application's handler table, looked up as Starlette's ``ExceptionMiddleware`` looks them up (an
``HTTPException``'s status first, then the exception's classes in order). Every other request
(other paths, ``HEAD``, a method the path lacks: the router's 405) goes down the usual stack,
where the same routes are registered too.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeAlias

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.routing import Match, Route

if TYPE_CHECKING:
    from starlette.responses import Response
    from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["HotRoutes"]

Handler: TypeAlias = Callable[[Request, Exception], Any]


class HotRoutes:
    """Answer requests for ``routes`` directly; ``exception_handlers`` is read at first use
    (the application's table, complete once the app is built)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        routes: Sequence[Route],
        exception_handlers: Callable[[], Mapping[Any, Handler]],
    ) -> None:
        self.app = app
        # Per method, so a PUT tries only the PUT routes' patterns (HEAD is left to the router).
        self.by_method: dict[str, tuple[Route, ...]] = {}
        for route in routes:
            for method in route.methods or ():
                if method != "HEAD":
                    self.by_method[method] = (*self.by_method.get(method, ()), route)
        self._table_of = exception_handlers
        self._tables: tuple[dict[type, Handler], dict[int, Handler]] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for route in self.by_method.get(scope["method"], ()):
                match, child_scope = route.matches(scope)
                if match is Match.FULL:
                    scope.update(child_scope)  # path_params, and the endpoint for the metrics
                    await self._answer(route.endpoint, scope, receive, send)
                    return
        await self.app(scope, receive, send)

    async def _answer(
        self,
        endpoint: Callable[[Request], Awaitable[Response]],
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        request = Request(scope, receive, send)
        try:
            response = await endpoint(request)
        except Exception as exc:
            handler = self._handler_for(exc)
            if handler is None:
                raise  # a bug: RequestMiddleware answers 500 and the server logs it
            response = await _call(handler, request, exc)
            exc.__traceback__ = None  # as Starlette: a reused exception would keep old frames
        await response(scope, receive, send)

    def _handler_for(self, exc: Exception) -> Handler | None:
        tables = self._tables
        if tables is None:
            tables = self._tables = _split(self._table_of())
        by_class, by_status = tables
        if isinstance(exc, HTTPException):
            handler = by_status.get(exc.status_code)
            if handler is not None:
                return handler
        for cls in type(exc).__mro__:
            handler = by_class.get(cls)
            if handler is not None:
                return handler
        return None


def _split(table: Mapping[Any, Handler]) -> tuple[dict[type, Handler], dict[int, Handler]]:
    # As Starlette builds its stack: 500 and Exception belong to the outermost error
    # middleware, integer keys are status handlers, the rest exception classes.
    by_class: dict[type, Handler] = {}
    by_status: dict[int, Handler] = {}
    for key, handler in table.items():
        if key in (500, Exception):
            continue
        if isinstance(key, int):
            by_status[key] = handler
        else:
            by_class[key] = handler
    return by_class, by_status


async def _call(handler: Handler, request: Request, exc: Exception) -> Response:
    if inspect.iscoroutinefunction(handler):
        return await handler(request, exc)  # type: ignore[no-any-return]
    return await run_in_threadpool(handler, request, exc)
