"""Errors to HTTP answers: ONE table, looked up by walking the exception's class hierarchy.

Routes never catch domain errors. The engine raises ``StoreError`` subclasses, the auth service
``AuthError`` subclasses, and this module's own ``ServiceError`` subclasses come from the
transaction manager and the dependencies. ``install_error_handlers`` answers all of them with
``{"detail": "<human string>", "request_id": "<the X-Request-ID>"}`` and the status (and
headers) of the nearest class in ``ERRORS``. Every JSON error body names its request
(``RequestMiddleware`` picks the id), so a user's report can be found in the access log.

The service's own errors::

    ServiceError
    ├── NotAuthenticated       no, unknown, revoked or expired bearer token       401
    ├── Forbidden              a valid token whose user lacks the role (admin)    403
    ├── KeyNotFound            no such key                                        404
    ├── PreconditionFailed     a condition the service judges fails (If-Match *, ETag lists) 412
    ├── BadRequest             a malformed request line or header (Content-Length)    400
    ├── NoTransaction          the caller holds no transaction                    409
    │   ├── TransactionExpired the caller's transaction was rolled back by its lease  409
    │   ├── TransactionBroken  an admin broke the lock: the caller's was rolled back  409
    │   └── TransactionEnded   it ended, or changed level, while a write was received  409
    ├── Locked                 another client holds the transaction lock          423 + Retry-After
    ├── TransactionCooldown    the user's last one passed transaction_max_seconds 429 + Retry-After
    ├── BodyTooLarge           request body over the limit, refused unread        413
    ├── UnsupportedMediaType   a body whose Content-Type is not JSON              415
    │   └── UnsupportedContentEncoding  a content-coded body (gzip...) 415 + Accept-Encoding
    ├── HeadersTooLarge        request headers over the limit, refused            431
    ├── TooManyExports         export_max_concurrent exports already stream       429 + Retry-After
    ├── BackupRunning          a backup is streaming already (one at a time)      429 + Retry-After
    ├── TooManyWatchers        watch_max_watchers watchers already served         503 + Retry-After
    ├── RevisionAhead          a watch or long poll from a revision the store has not reached 409
    └── StoreUnavailable       the store is not open                              503

Request validation (422) has its own handler, ``validation_error_response``: FastAPI's list form,
but each item cut down to ``type``, ``loc``, ``msg`` and plain ``ctx`` values, so a rejected input
(a too-short password, say) is never echoed back. A table entry with a ``loc`` (the engine's
``InvalidKey``: an empty or too long key) is answered in that same list form. A body the
framework cannot parse at all (not UTF-8, a broken multipart) is answered the same way with 422,
the status every route declares, instead of Starlette's undeclared 400.

Logging: only a real 500 (a bug, damaged data, an unexpected I/O error) logs a traceback. The
other 5xx answers are expected conditions (disk full, store failed or closed) and log one WARNING
line each; 4xx answers log nothing.

Choices worth knowing: ``StoreFailed`` (an fsync failed; the store refuses writes until it is
reopened) is 503, because the server, not the request, is broken until an operator restarts it;
``DiskFull`` is 507 and retryable. ``CorruptStore`` and bare ``StorageError`` are 500 with a fixed
detail: their messages name files on the server, which are logged, not sent. A damaged or
unreadable ``users.json`` (``UsersUnavailable``) is 503, its detail a fixed sentence (what is wrong
with the file is logged once, never sent); no space to rewrite it (``UsersDiskFull``) is 507.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from orjson import dumps
from starlette.exceptions import HTTPException
from starlette.routing import Match
from starlette.status import HTTP_204_NO_CONTENT, HTTP_304_NOT_MODIFIED

from filekv.engine.errors import (
    Compacted,
    CorruptStore,
    DiskFull,
    InvalidBatch,
    InvalidKey,
    InvalidTTL,
    NoSavepoint,
    RecoveryInterrupted,
    StorageError,
    StoreClosed,
    StoreError,
    StoreFailed,
    StoreLocked,
    TransactionActive,
    TransactionClosed,
    TransactionTooDeep,
    TransactionTooLarge,
    ValueTooLarge,
    VersionMismatch,
)
from filekv.service.auth import (
    AuthError,
    InvalidCredentials,
    RegistrationClosed,
    TooManyAttempts,
    UsernameTaken,
    UsersDiskFull,
    UsersUnavailable,
)
from filekv.service.logs import SCOPE_REQUEST_ID

logger = logging.getLogger(__name__)


class ServiceError(Exception):
    """Base class of the errors the service itself raises."""


class NotAuthenticated(ServiceError):
    """The request needs a valid bearer token and has none."""


class Forbidden(ServiceError):
    """The caller is authenticated, but its role does not allow this (it needs an admin)."""


class KeyNotFound(ServiceError):
    """The key does not exist (in the caller's view)."""


class PreconditionFailed(ServiceError):
    """A conditional header that fails as the service judges it (``If-Match: *`` on an absent
    key, an ETag list that names none, or all, that it must); one revision expected by the
    store's compare-and-set that is not the current one is VersionMismatch."""


class BadRequest(ServiceError):
    """The request itself is malformed (a header no sane client sends)."""


class NoTransaction(ServiceError):
    """The caller holds no transaction."""


class TransactionExpired(NoTransaction):
    """The caller's transaction was idle past its lease and was rolled back whole."""


class TransactionBroken(NoTransaction):
    """An admin broke the lock: the caller's transaction was rolled back whole."""


class TransactionEnded(NoTransaction):
    """The transaction a write was sent into ended (or changed level) while it was received."""


class Locked(ServiceError):
    """Another client holds the transaction lock; ``retry_after`` is whole seconds."""

    def __init__(self, retry_after: float) -> None:
        self.retry_after = max(1, math.ceil(retry_after))
        super().__init__(
            "locked: another client holds the transaction; "
            f"retry after {self.retry_after} s or when it ends"
        )


class TransactionCooldown(ServiceError):
    """The caller's user may not begin a transaction yet: its last one was rolled back for
    passing ``transaction_max_seconds``; ``retry_after`` is whole seconds.

    429, not 423: nobody need hold the lock; it is this user who is refused for a while, and a
    client that waits out every 423 on its own (``wait_locked``) must not keep retrying this one.
    """

    def __init__(self, retry_after: float, max_seconds: float) -> None:
        self.retry_after = max(1, math.ceil(retry_after))
        super().__init__(
            f"your last transaction was open longer than {max_seconds:g} s "
            "(transaction_max_seconds) and was rolled back: you may begin another after "
            f"{self.retry_after} s, so that others get their turn"
        )


class BodyTooLarge(ServiceError):
    """The request body is larger than any acceptable request."""


class UnsupportedMediaType(ServiceError):
    """The request body's ``Content-Type`` is not one the route reads (JSON)."""


class UnsupportedContentEncoding(UnsupportedMediaType):
    """The request body has a ``Content-Encoding`` (gzip, br...): the service decodes none."""


class HeadersTooLarge(ServiceError):
    """The request's headers add up to more than the server accepts."""


class TooManyExports(ServiceError):
    """As many exports as ``export_max_concurrent`` allows are streaming; ``retry_after`` s."""

    def __init__(self, limit: int, retry_after: int) -> None:
        self.retry_after = retry_after
        super().__init__(
            f"too many exports: {limit} already streaming (export_max_concurrent); "
            f"retry after {retry_after} s"
        )


class BackupRunning(ServiceError):
    """A backup is streaming already (one at a time); ``retry_after`` is whole seconds."""

    def __init__(self, retry_after: int) -> None:
        self.retry_after = retry_after
        super().__init__(f"a backup is already running; retry after {retry_after} s")


class RevisionAhead(ServiceError):
    """A watch or long poll asked to start after a revision the store has not reached (its
    position comes from another store, or from writes a crash lost)."""


class TooManyWatchers(ServiceError):
    """The server already serves as many watchers (streams and long polls) as it may."""


class StoreUnavailable(ServiceError):
    """The store is not open (starting up, shutting down or failed)."""


def _retry_after(exc: BaseException) -> dict[str, str]:
    return {"Retry-After": str(getattr(exc, "retry_after", 1))}


def _identity_only(_: BaseException) -> dict[str, str]:
    # RFC 7694 §3: a 415 for a content coding names the codings the resource takes.
    return {"Accept-Encoding": "identity"}


def _bearer(_: BaseException) -> dict[str, str]:
    return {"WWW-Authenticate": "Bearer"}


def _oldest_revision(exc: BaseException) -> dict[str, Any]:
    return {"oldest_revision": getattr(exc, "oldest_available", None)}


@dataclass(frozen=True, slots=True)
class ErrorAnswer:
    """How one exception class is answered: status, extra headers, and a fixed detail if any."""

    status: int
    headers: Callable[[BaseException], dict[str, str]] | None = None
    # A fixed detail replaces str(exc) where the message could reveal something (paths, users).
    detail: str | None = field(default=None)
    # Set for a 422: answered in the validation list form, as an error of this input.
    loc: tuple[str, ...] | None = None
    error_type: str = "value_error"
    # Fields the body carries beside ``detail`` (Compacted: where the history now starts).
    extra: Callable[[BaseException], dict[str, Any]] | None = None


ERRORS: Final[Mapping[type[BaseException], ErrorAnswer]] = {
    # engine
    StoreError: ErrorAnswer(500, detail="internal store error"),
    StoreLocked: ErrorAnswer(503, detail="the data directory is in use by another process"),
    StoreClosed: ErrorAnswer(503, detail="the store is closed"),
    InvalidKey: ErrorAnswer(422, loc=("path", "key"), error_type="key_invalid"),
    InvalidBatch: ErrorAnswer(422, loc=("body", "ops"), error_type="batch_invalid"),
    InvalidTTL: ErrorAnswer(422, loc=("body", "ttl"), error_type="ttl_invalid"),
    ValueTooLarge: ErrorAnswer(413),
    VersionMismatch: ErrorAnswer(412),
    Compacted: ErrorAnswer(410, extra=_oldest_revision),
    TransactionActive: ErrorAnswer(423, _retry_after),
    TransactionClosed: ErrorAnswer(409, detail="the transaction has already ended"),
    NoSavepoint: ErrorAnswer(409),
    TransactionTooLarge: ErrorAnswer(413),
    # 409 as NoSavepoint: the request is fine, the transaction's state (its depth) refuses it.
    TransactionTooDeep: ErrorAnswer(409),
    RecoveryInterrupted: ErrorAnswer(503, detail="the store was stopped while recovering"),
    CorruptStore: ErrorAnswer(500, detail="the store found damaged data; see the server log"),
    StorageError: ErrorAnswer(500, detail="an I/O error occurred; see the server log"),
    DiskFull: ErrorAnswer(507, detail="the disk is full; the write was not done"),
    StoreFailed: ErrorAnswer(
        503, detail="the store failed to sync to disk and refuses writes until restarted"
    ),
    # auth
    AuthError: ErrorAnswer(401, _bearer),
    InvalidCredentials: ErrorAnswer(401, _bearer, detail="incorrect username or password"),
    RegistrationClosed: ErrorAnswer(403, detail="registration is closed"),
    UsernameTaken: ErrorAnswer(409, detail="that username is taken"),
    TooManyAttempts: ErrorAnswer(429, _retry_after),
    UsersUnavailable: ErrorAnswer(503),  # its messages are fixed strings, never the file's
    UsersDiskFull: ErrorAnswer(507),
    # service
    ServiceError: ErrorAnswer(500),
    NotAuthenticated: ErrorAnswer(401, _bearer),
    Forbidden: ErrorAnswer(403),
    KeyNotFound: ErrorAnswer(404),
    PreconditionFailed: ErrorAnswer(412),
    BadRequest: ErrorAnswer(400),
    NoTransaction: ErrorAnswer(409),
    TransactionExpired: ErrorAnswer(409),
    TransactionBroken: ErrorAnswer(409),
    TransactionEnded: ErrorAnswer(409),
    Locked: ErrorAnswer(423, _retry_after),
    TransactionCooldown: ErrorAnswer(429, _retry_after),
    BodyTooLarge: ErrorAnswer(413),
    UnsupportedMediaType: ErrorAnswer(415),
    UnsupportedContentEncoding: ErrorAnswer(415, _identity_only),
    HeadersTooLarge: ErrorAnswer(431),
    TooManyExports: ErrorAnswer(429, _retry_after),
    BackupRunning: ErrorAnswer(429, _retry_after),
    StoreUnavailable: ErrorAnswer(503, detail="the store is not open"),
    TooManyWatchers: ErrorAnswer(503, _retry_after),
    RevisionAhead: ErrorAnswer(409),
}

ROOTS: Final = (StoreError, AuthError, ServiceError)


def answer_for(exc: BaseException) -> ErrorAnswer | None:
    """The answer of the nearest class in ``ERRORS`` along ``type(exc).__mro__``."""
    for cls in type(exc).__mro__:
        found = ERRORS.get(cls)
        if found is not None:
            return found
    return None


def _body(detail: Any, request_id: str | None, extra: dict[str, Any] | None = None) -> bytes:
    if extra is not None:
        body = {"detail": detail, **extra}
        if request_id is not None:
            body["request_id"] = request_id
        return dumps(body)
    if request_id is None:
        return dumps({"detail": detail})
    return dumps({"detail": detail, "request_id": request_id})


def request_id_of(request: Request) -> str | None:
    """The request's id as ``RequestMiddleware`` chose it (None outside the middleware)."""
    found: str | None = request.scope.get(SCOPE_REQUEST_ID)
    return found


def error_response(exc: BaseException, request_id: str | None = None) -> Response:
    """The JSON response for a mapped exception (500 with a fixed detail if unmapped)."""
    answer = answer_for(exc) or ErrorAnswer(500, detail="internal error")
    if answer.loc is not None:
        # An error of one operation of a batch is located at that operation's key.
        index = getattr(exc, "op_index", None)
        loc = answer.loc if index is None else ("body", "ops", index, "key")
        item = {"type": answer.error_type, "loc": loc, "msg": str(exc)}
        return validation_error_response([item], request_id)
    if answer.status == 500:
        logger.error("answering 500 for %r", exc, exc_info=exc)
    elif answer.status > 500:
        # Expected and already explained by the error (ENOSPC, a failed fsync reported when it
        # happened): one line, or a full disk would flood the log with identical tracebacks.
        logger.warning("answering %d: %s: %s", answer.status, type(exc).__name__, exc)
    detail = answer.detail or str(exc) or (type(exc).__doc__ or type(exc).__name__).strip()
    headers = answer.headers(exc) if answer.headers else None
    return Response(
        _body(detail, request_id, answer.extra(exc) if answer.extra else None),
        status_code=answer.status,
        headers=headers,
        media_type="application/json",
    )


# What of a validation error item is sent back. Not ``input`` (the rejected value itself: a
# password, a token), nor ``url``; ``ctx`` only with plain values (``min_length``, ``pattern``).
_ITEM_FIELDS: Final = ("type", "loc", "msg")
_PLAIN: Final = (str, int, float, bool)


def _scrubbed(item: Mapping[str, Any]) -> dict[str, Any]:
    out = {name: item[name] for name in _ITEM_FIELDS if name in item}
    ctx = item.get("ctx")
    if isinstance(ctx, Mapping):
        plain = {name: value for name, value in ctx.items() if isinstance(value, _PLAIN)}
        if plain:
            out["ctx"] = plain
    return out


def validation_error_response(
    errors: Iterable[Mapping[str, Any]], request_id: str | None = None
) -> Response:
    """422 in FastAPI's list form, without the rejected inputs."""
    return Response(
        _body([_scrubbed(item) for item in errors], request_id),
        status_code=422,
        media_type="application/json",
    )


async def _handle(request: Request, exc: Exception) -> Response:
    return error_response(exc, request_id_of(request))


async def _handle_validation(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return validation_error_response(exc.errors(), request_id_of(request))


_METHODS: Final = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def _allowed_methods(request: Request) -> str:
    """Every method some route takes on this path (the router names only its first match's)."""
    routes = request.app.router.routes
    return ", ".join(
        method
        for method in _METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] is Match.FULL for route in routes
        )
    )


def _method_not_allowed(request: Request) -> Response:
    allowed = _allowed_methods(request)
    detail = f"method {request.method} not allowed on this path; it takes {allowed}"
    return Response(
        _body(detail, request_id_of(request)),
        status_code=405,
        headers={"Allow": allowed},
        media_type="application/json",
    )


async def _handle_http(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        return _method_not_allowed(request)
    if exc.status_code in (HTTP_204_NO_CONTENT, HTTP_304_NOT_MODIFIED):  # no body allowed
        return await http_exception_handler(request, exc)
    if exc.status_code != 400:
        return Response(
            _body(exc.detail, request_id_of(request)),
            status_code=exc.status_code,
            headers=exc.headers,
            media_type="application/json",
        )
    # The framework raises 400 only when it cannot parse a body (bytes that are not UTF-8 under
    # a JSON content type, a multipart body without its boundary); the routes declare 422.
    reason = "not valid UTF-8" if isinstance(exc.__cause__, UnicodeDecodeError) else exc.detail
    return validation_error_response(
        [{"type": "body_invalid", "loc": ("body",), "msg": f"unparseable body: {reason}"}],
        request_id_of(request),
    )


def install_error_handlers(app: FastAPI) -> None:
    """Answer every exception under ``ROOTS`` through the table, and validation errors as 422."""
    for root in ROOTS:
        app.add_exception_handler(root, _handle)
    app.add_exception_handler(RequestValidationError, _handle_validation)
    app.add_exception_handler(HTTPException, _handle_http)
