"""The client's exceptions: one per kind of answer, each with the server's ``detail``.

::

    FilekvError                 .status (None without an answer) and .detail
    ├── NotFound                404  no such key
    ├── Unauthorized            401  no, unknown, revoked or expired token; wrong password
    ├── Forbidden               403  e.g. registration is closed
    ├── Conflict                409  e.g. no transaction held, name taken, lease expired
    ├── PreconditionFailed      412  expect= (If-Match / If-None-Match) did not hold
    ├── Gone                    410  a watch asked for history compacted away (.oldest_revision)
    ├── TooLarge                413  value, body or transaction too large
    ├── InvalidRequest          400, 415, 422, 431  the request itself is wrong; also raised
    │                           before sending (.status None) for an invalid argument
    ├── Locked                  423  another client holds the transaction (.retry_after)
    ├── TooManyRequests         429  login throttled, or a begin in a cooldown (.retry_after)
    ├── ServerError             5xx  the store failed, or the disk is full (507)
    └── Unavailable             no answer: the server cannot be reached

A ``FilekvError`` whose class is none of these (the base class itself) is an answer the client
cannot take for filekv's: a status without a class of its own (418), a redirect, or a body that
is not the JSON filekv answers (a URL that is not a filekv server's); its ``.status`` is the
answer's, its ``detail`` names the request's URL.

Lower-level errors become the client's own in four places: ``error_for_status`` turns an HTTP
answer into one of these, ``translate_transport_errors`` every httpx transport error into
``Unavailable``, ``translate_request_errors`` a request that cannot be built (an invalid URL,
text that is not UTF-8, a float JSON cannot carry) into ``InvalidRequest``, and
``translate_decode_errors`` an answer that is not filekv's into ``FilekvError``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping
from typing import Any, Final

import httpx


class FilekvError(Exception):
    """Base of every client error: ``status`` (None without an answer) and ``detail``."""

    def __init__(self, detail: str, *, status: int | None = None) -> None:
        super().__init__(f"{status}: {detail}" if status is not None else detail)
        self.status = status
        self.detail = detail


class NotFound(FilekvError):
    """404: no such key."""


class Unauthorized(FilekvError):
    """401: no, unknown, revoked or expired token, or a wrong username or password."""


class Forbidden(FilekvError):
    """403: not allowed, e.g. registration is closed."""


class Conflict(FilekvError):
    """409: e.g. you hold no transaction, it expired, or the user name is taken."""


class PreconditionFailed(FilekvError):
    """412: the revision named by ``expect=`` did not match."""


class Gone(FilekvError):
    """410: the revision a watch asked for is compacted away; ``oldest_revision`` is the
    oldest one the server still has (or None)."""

    def __init__(
        self, detail: str, *, status: int | None = None, oldest_revision: int | None = None
    ) -> None:
        super().__init__(detail, status=status)
        self.oldest_revision = oldest_revision


class TooLarge(FilekvError):
    """413: a value, body or transaction past the server's limits."""


class InvalidRequest(FilekvError):
    """400, 415, 422 or 431: the request is malformed or invalid; or (``status`` None) an
    argument the client refuses before sending: a key or value that is not UTF-8, a ttl that
    is not a finite number above 0, a URL httpx cannot make."""


class _InvalidArgument(InvalidRequest, ValueError):
    """An argument refused before sending: an ``InvalidRequest``, and the ``ValueError`` it
    was before the client had its own."""


class _WrongType(InvalidRequest, TypeError):
    """An argument of the wrong type (a key that is not a ``str``): an ``InvalidRequest``, and
    a ``TypeError``."""


def invalid_argument(detail: str) -> InvalidRequest:
    """The error for an argument the client refuses before sending anything (no status)."""
    return _InvalidArgument(detail)


def wrong_type(what: str, expected: str, value: object) -> InvalidRequest:
    """The error for an argument of the wrong type."""
    return _WrongType(f"{what} is a {expected}, not {type(value).__name__}")


def not_utf8(what: str, exc: UnicodeEncodeError) -> InvalidRequest:
    """The error for text (a key, a value) that UTF-8 cannot encode: a lone surrogate."""
    bad = exc.object[exc.start : exc.end]
    return invalid_argument(
        f"{what} is not valid UTF-8: {bad!r} at position {exc.start} ({exc.reason})"
    )


class _RetryAfter(FilekvError):
    def __init__(
        self, detail: str, *, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(detail, status=status)
        self.retry_after = retry_after


class Locked(_RetryAfter):
    """423: another client holds the transaction; ``retry_after`` seconds (or None)."""


class TooManyRequests(_RetryAfter):
    """429: too many failed logins, or a transaction begun again within the cooldown that
    follows one rolled back for passing transaction_max_seconds; ``retry_after`` seconds (or
    None)."""


class ServerError(FilekvError):
    """5xx: the server failed (503: the store; 507: its disk is full)."""


class Unavailable(FilekvError):
    """The server could not be reached (connection refused, timed out, cut off)."""


STATUS_ERRORS: Final[Mapping[int, type[FilekvError]]] = {
    400: InvalidRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    410: Gone,
    412: PreconditionFailed,
    413: TooLarge,
    415: InvalidRequest,
    422: InvalidRequest,
    423: Locked,
    429: TooManyRequests,
    431: InvalidRequest,
}


def retry_after(response: httpx.Response) -> float | None:
    """``Retry-After`` in seconds, or None if absent or not a number (an HTTP date is ignored)."""
    text = response.headers.get("retry-after")
    if text is None:
        return None
    try:
        seconds = float(text)
    except ValueError:
        return None
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _detail(response: httpx.Response) -> str:
    try:
        body: Any = response.json()
    except ValueError:
        return response.text or response.reason_phrase
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list):  # FastAPI's validation errors: [{"loc": [...], "msg": ...}]
        parts = []
        for item in detail:
            if isinstance(item, dict):
                loc = ".".join(str(part) for part in item.get("loc", ()))
                parts.append(f"{loc}: {item.get('msg', '')}" if loc else str(item.get("msg")))
            else:
                parts.append(str(item))
        return "; ".join(parts)
    return response.text or response.reason_phrase


def error_for_status(response: httpx.Response) -> FilekvError:
    """The exception for an answer of status 400 or more."""
    status = response.status_code
    detail = _detail(response)
    cls = STATUS_ERRORS.get(status)
    if cls is None:
        cls = ServerError if status >= 500 else FilekvError
    if issubclass(cls, _RetryAfter):
        return cls(detail, status=status, retry_after=retry_after(response))
    if cls is Gone:
        return Gone(detail, status=status, oldest_revision=_oldest_revision(response))
    return cls(detail, status=status)


def _oldest_revision(response: httpx.Response) -> int | None:
    try:
        body: Any = response.json()
    except ValueError:
        return None
    oldest = body.get("oldest_revision") if isinstance(body, dict) else None
    return oldest if isinstance(oldest, int) else None


def not_filekv(response: httpx.Response, why: str) -> FilekvError:
    """The error for an answer that is not filekv's: its status, its request's URL, ``why``."""
    request = response.request
    kind = response.headers.get("content-type", "no Content-Type")
    return FilekvError(
        f"{request.method} {request.url} answered {response.status_code}"
        f" {response.reason_phrase} ({kind}), not a filekv answer: {why}",
        status=response.status_code,
    )


@contextlib.contextmanager
def translate_decode_errors(response: httpx.Response) -> Iterator[None]:
    """Reading an answer's body or headers: what fails (not JSON, a field missing or of the
    wrong type) becomes the ``FilekvError`` of ``not_filekv``."""
    try:
        yield
    except (ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
        why = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        raise not_filekv(response, why) from exc


@contextlib.contextmanager
def translate_request_errors(method: str, path: str) -> Iterator[None]:
    """Building a request: an URL httpx refuses (too long, a bad base URL), text UTF-8 cannot
    encode (a lone surrogate) or a float JSON cannot carry becomes ``InvalidRequest``."""
    try:
        yield
    except InvalidRequest:
        raise
    except httpx.InvalidURL as exc:
        where = path if len(path) <= 100 else f"{path[:100]}... ({len(path):,} characters)"
        raise invalid_argument(f"cannot make the URL of {method} {where}: {exc}") from exc
    except UnicodeEncodeError as exc:
        bad = exc.object[exc.start : exc.end]
        raise invalid_argument(
            f"cannot make the request {method} {path[:100]}: {bad!r} is not valid UTF-8"
            f" ({exc.reason})"
        ) from exc
    except ValueError as exc:  # json.dumps: "Out of range float values are not JSON compliant"
        raise invalid_argument(f"cannot make the request {method} {path[:100]}: {exc}") from exc


@contextlib.contextmanager
def translate_transport_errors() -> Iterator[None]:
    """Every ``httpx.TransportError`` (no answer came) becomes ``Unavailable``."""
    try:
        yield
    except httpx.TransportError as exc:
        raise Unavailable(f"cannot reach the server: {exc!r}") from exc
