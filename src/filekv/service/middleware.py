"""``RequestMiddleware``: a request id on every answer, the access log and the HTTP metrics.

A pure ASGI middleware (Starlette's ``BaseHTTPMiddleware`` runs the app in a task and streams
the answer through a queue: it would cost more than the key routes themselves). Per request it
picks the request id, wraps ``send`` to add ``X-Request-ID`` and ``X-Content-Type-Options:
nosniff`` (no browser takes a JSON answer or a file for a script or a page) to the answer and
note its status,
and once the app is done hands the route template, status and duration to the metrics and the
access log, whichever are on.

The request id is the client's ``X-Request-ID`` when it is sane (1 to ``MAX_REQUEST_ID``
characters of ``[A-Za-z0-9._~:+/=-]``: nothing that could split a header or a log line), else 16
random hex digits (``new_request_id``). It is left in the ASGI scope (``SCOPE_REQUEST_ID``) so
that every JSON error body can carry it (``service/errors.py``).

The route template is read from what the router left in the ASGI scope (the same dict this
middleware passed on: ``RouteTemplates``), once the application is done. A request no route
matched is ``unmatched``.

An exception that escapes the application (a bug) is answered here with a JSON 500 that names the
request id, before Starlette's outer error middleware logs it (that middleware sees the answer
started and only re-raises).
"""

from __future__ import annotations

import contextlib
import re
import time
from random import getrandbits
from typing import TYPE_CHECKING, Any, Final

import orjson

from filekv.service.logs import SCOPE_REQUEST_ID

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from filekv.service.logs import AccessLog
    from filekv.service.metrics import Metrics, RouteTemplates

__all__ = ["MAX_REQUEST_ID", "RequestMiddleware", "new_request_id", "sane_request_id"]

MAX_REQUEST_ID: Final = 128
HEADER: Final = b"x-request-id"
NOSNIFF: Final = (b"x-content-type-options", b"nosniff")
_SANE: Final = re.compile(rb"[A-Za-z0-9._~:+/=-]{1,%d}" % MAX_REQUEST_ID)


def new_request_id() -> str:
    """64 random bits as 16 hex digits: unique in practice, and telling nothing of how many
    requests were served (a counter would). Not a secret, so not ``os.urandom``: its system
    call costs 2 µs a request, ``getrandbits`` 0.3 µs."""
    return f"{getrandbits(64):016x}"


def sane_request_id(headers: Any) -> str:
    """The client's ``X-Request-ID`` if it sent one sane one, else a new id."""
    for name, value in headers:
        if name == HEADER:
            if _SANE.fullmatch(value):
                return str(value.decode("ascii"))
            break
    return new_request_id()


class RequestMiddleware:
    """Request ids, and the access log and metrics when they are on (None: off, no cost)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        templates: RouteTemplates,
        access_log: AccessLog | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.app = app
        self.templates = templates
        self.access_log = access_log
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = sane_request_id(scope["headers"])
        scope[SCOPE_REQUEST_ID] = request_id
        id_header = (HEADER, request_id.encode("ascii"))
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), id_header, NOSNIFF]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            if status == 0:  # nothing sent yet: the client gets a JSON 500 naming the request
                status = 500
                start, body = _internal_error(request_id, id_header)
                with contextlib.suppress(Exception):  # a client gone: the bug is what to report
                    await send(start)
                    await send(body)
            raise
        finally:
            seconds = time.perf_counter() - started
            if self.metrics is not None or self.access_log is not None:
                route = self.templates.of(scope)
                if self.metrics is not None:
                    self.metrics.record(scope["method"], route, status, seconds)
                if self.access_log is not None:
                    self.access_log(scope, route, status, seconds, request_id)


def _internal_error(request_id: str, id_header: tuple[bytes, bytes]) -> tuple[Message, Message]:
    body = orjson.dumps({"detail": "internal error", "request_id": request_id})
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode("ascii")),
        id_header,
        NOSNIFF,
    ]
    return (
        {"type": "http.response.start", "status": 500, "headers": headers},
        {"type": "http.response.body", "body": body, "more_body": False},
    )
