"""What the sync and async clients share: each call as a ``Call``, each answer decoded once.

A method of either client builds its ``Call`` here, sends it with its own httpx client (the
only part that differs: ``send`` or ``await send``), and hands the answer to the ``decode_*``
function beside it. Errors are raised by ``check`` (status 400 and up), and ``lock_delay``
decides whether a 423 is waited out (``wait_locked``).
"""

from __future__ import annotations

import math
import os
import ssl
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import quote

import httpx

from filekv.client._errors import (
    Unavailable,
    error_for_status,
    invalid_argument,
    not_filekv,
    not_utf8,
    retry_after,
    translate_decode_errors,
    translate_request_errors,
    translate_transport_errors,
    wrong_type,
)
from filekv.client._models import Entry

DEFAULT_URL: Final = "http://127.0.0.1:8000"
URL_ENV: Final = "FILEKV_URL"
# One connection, kept alive between calls, but not sent on once it has been idle for
# KEEPALIVE_EXPIRY: the server closes an idle connection after its keep-alive timeout (uvicorn's
# 5 s, README "Limits"), and a request sent on it as it closes is cut off unanswered
# ("Server disconnected without sending a response": ``Unavailable``). httpx's default expiry is
# that same 5 s, so a call made 5 s after the last one (a ``wait_locked`` re-send after a sleep of
# 5 s, say) raced the server's close; 3 s leaves a server 2 s to see the request first even if
# its event loop is busy when its timer is due. An older connection is replaced by a new one.
KEEPALIVE_EXPIRY: Final = 3.0
LIMITS: Final = httpx.Limits(
    max_connections=1, max_keepalive_connections=1, keepalive_expiry=KEEPALIVE_EXPIRY
)
# A 423 is asked again after its Retry-After or this many seconds, whichever is sooner.
# Retry-After counts down the holder's whole lease (30 s by default) while a holder commits or
# rolls back whenever it likes: asking sooner is harmless (one more 423) and notices a freed lock
# within LOCK_POLL_MAX rather than at the end of the lease or of ``wait_locked``. Under
# KEEPALIVE_EXPIRY, so the wait keeps its connection alive and re-sends on it.
LOCK_POLL_MAX: Final = 2.0
# Transport errors that mean the connection was closed (or reset) before any of the answer came.
# A re-send after a 423 wait that meets one of them is sent once more, on a new connection (see
# the clients' ``_attempt``); timeouts are not among them: the server may be applying the request.
NO_ANSWER: Final = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)


def tls_verify(url: str) -> ssl.SSLContext | bool:
    """What httpx is told to verify TLS with, for a client of ``url``.

    httpx builds a verifying context for every client, loading the CA bundle: 50-130 ms, the
    largest single cost of a ``filekv get`` after the imports. A plain ``http://`` URL never does
    TLS, so it gets a context that verifies and trusts nothing (should anything ever use it,
    it fails rather than trusts); ``https://`` keeps httpx's default, and so does any URL when
    a proxy is configured in the environment (one reached over TLS needs the CA bundle).
    """
    if url[:5].lower() == "https" or urllib.request.getproxies():
        return True
    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname: on


def base_url(url: str | None) -> str:
    """``url``, else ``$FILEKV_URL``, else the default; without a trailing ``/``.

    ``InvalidRequest`` unless it is an ``http://`` or ``https://`` URL with a host that httpx
    can parse (``http://[::1`` is not), without a query or fragment, and without spaces around
    it (httpx would keep a trailing one in every request's URL)."""
    chosen = url or os.environ.get(URL_ENV) or DEFAULT_URL
    if not isinstance(chosen, str):
        raise wrong_type("the server URL", "str", chosen)
    try:
        parsed = httpx.URL(chosen)
    except (httpx.InvalidURL, UnicodeError, ValueError) as exc:
        raise invalid_argument(f"invalid server URL {chosen!r}: {exc}") from exc
    if parsed.scheme not in ("http", "https") or not parsed.host or chosen != chosen.strip():
        raise invalid_argument(
            f"invalid server URL {chosen!r}: http://HOST[:PORT] or https://HOST[:PORT] expected"
        )
    if parsed.query or parsed.fragment:
        raise invalid_argument(f"invalid server URL {chosen!r}: a query or fragment has no place")
    return chosen.rstrip("/")


@dataclass(frozen=True, slots=True)
class Call:
    """One HTTP request, not yet sent."""

    method: str
    path: str
    params: dict[str, str | int] | None = None
    json: Any = None
    data: dict[str, str] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    read_timeout: float | None = None  # seconds between two bytes, when not the client's

    def request(self, client: httpx.Client | httpx.AsyncClient) -> httpx.Request:
        """The request; ``InvalidRequest`` if it cannot be made (see
        ``translate_request_errors``)."""
        timeout = client.timeout
        if self.read_timeout is not None:
            timeout = httpx.Timeout(timeout.connect, read=self.read_timeout)
        with translate_request_errors(self.method, self.path):
            return client.build_request(
                self.method,
                self.path,
                params=self.params,
                json=self.json,
                data=self.data,
                headers=self.headers,
                timeout=timeout,
            )


def check(response: httpx.Response) -> httpx.Response:
    """The answer if it is a success (2xx), else raise its ``FilekvError``: the status's for
    400 and up, ``not_filekv``'s for anything else (filekv never redirects, so a 3xx comes from
    something else at that URL)."""
    status = response.status_code
    if status >= 400:
        raise error_for_status(response)
    if status < 200 or status >= 300:
        location = response.headers.get("location")
        why = f"a redirect to {location}" if location else "filekv answers no such status"
        raise not_filekv(response, f"{why}; is the client's URL a filekv server's own?")
    return response


# Of an answer that is not the one asked for (an error, a redirect, a stream of something else),
# only this much is read, for the error's detail: a wrong URL may name a large file or an
# endless stream, and filekv's own error answers are far smaller.
MAX_ERROR_BYTES: Final = 64 * 1024
_KEPT_EXTENSIONS: Final = frozenset(("http_version", "reason_phrase"))


def _capped(response: httpx.Response, body: bytes) -> httpx.Response:
    """``response`` with ``body`` (its first bytes, decoded) as its whole content."""
    headers = [
        (name, value)
        for name, value in response.headers.multi_items()
        if name not in ("content-encoding", "content-length", "transfer-encoding")
    ]
    return httpx.Response(
        response.status_code,
        headers=headers,
        content=body,
        request=response.request,
        extensions={k: v for k, v in response.extensions.items() if k in _KEPT_EXTENSIONS},
    )


def read_capped_sync(response: httpx.Response) -> httpx.Response:
    """A streamed ``response`` read for at most ``MAX_ERROR_BYTES`` (decoded), as an answer
    whose whole content is that: for ``check`` or another error's detail."""
    body = bytearray()
    with translate_transport_errors():
        for chunk in response.iter_bytes():
            body += chunk
            if len(body) >= MAX_ERROR_BYTES:
                break
    return _capped(response, bytes(body[:MAX_ERROR_BYTES]))


async def read_capped_async(response: httpx.Response) -> httpx.Response:
    """``read_capped_sync`` for an ``httpx.AsyncClient``'s answer."""
    body = bytearray()
    with translate_transport_errors():
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) >= MAX_ERROR_BYTES:
                break
    return _capped(response, bytes(body[:MAX_ERROR_BYTES]))


def lock_delay(response: httpx.Response, remaining: float) -> float | None:
    """How long to wait before retrying a 423, or None to raise it (nothing left to wait)."""
    if response.status_code != 423 or remaining <= 0:
        return None
    wait = retry_after(response)
    return min(1.0 if wait is None else wait, LOCK_POLL_MAX, remaining)


def auth_headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


_DOT_SEGMENTS: Final = frozenset((".", ".."))


def key_path(key: str) -> str:
    """``/keys/<key>`` with every byte of the key's UTF-8 outside ``A-Za-z0-9-._~`` escaped,
    and the dots of a segment ``.`` or ``..`` too (``%2E``).

    A URL's path segment ``.`` or ``..`` is removed by httpx (and by any proxy that
    normalises paths): ``/keys/..`` would be sent as ``/``, ``/keys/.`` as ``/keys``. Escaped,
    the server still reads ``.`` and ``..``. The segments are cut at the key's ``/`` (sent as
    ``%2F``), so ``a/..`` and ``../a`` stay whole too behind something that decodes ``%2F``.
    """
    if not isinstance(key, str):
        raise wrong_type("a key", "str", key)
    try:
        quoted = quote(key, safe="")
    except UnicodeEncodeError as exc:
        raise not_utf8("the key", exc) from exc
    if "." in key:
        segments = key.split("/")
        if not _DOT_SEGMENTS.isdisjoint(segments):
            quoted = "%2F".join(
                "%2E" * len(segment) if segment in _DOT_SEGMENTS else quote(segment, safe="")
                for segment in segments
            )
    return "/keys/" + quoted


def check_value(value: str, what: str = "the value") -> None:
    """``InvalidRequest`` unless ``value`` is a ``str`` that UTF-8 can encode."""
    if not isinstance(value, str):
        raise wrong_type(what.replace("the ", "a ", 1), "str", value)
    if not value.isascii():  # the common case: one quick pass, no copy
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise not_utf8(what, exc) from exc


def check_ttl(ttl: Any, what: str = "ttl") -> None:
    """``InvalidRequest`` unless ``ttl`` is None or a finite number of seconds above 0 (the
    server has its own upper bound)."""
    if ttl is None:
        return
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)):
        raise invalid_argument(f"{what} must be a number of seconds, not {ttl!r}")
    if (isinstance(ttl, float) and not math.isfinite(ttl)) or ttl <= 0:
        raise invalid_argument(f"{what} must be a finite number of seconds above 0, not {ttl!r}")


def expect_headers(expect: int | None) -> dict[str, str]:
    """``expect=REV`` as ``If-Match: "REV"``; ``expect=0`` as ``If-None-Match: *``."""
    if expect is None:
        return {}
    if isinstance(expect, bool) or not isinstance(expect, int) or expect < 0:
        raise invalid_argument(
            f"expect must be a revision >= 0 (0: must not exist), not {expect!r}"
        )
    return {"If-None-Match": "*"} if expect == 0 else {"If-Match": f'"{expect}"'}


# --- auth


def register_call(username: str, password: str) -> Call:
    return Call("POST", "/auth/register", json={"username": username, "password": password})


def login_call(username: str, password: str) -> Call:
    return Call("POST", "/auth/token", data={"username": username, "password": password})


def _json(response: httpx.Response) -> dict[str, Any]:
    """The answer's JSON object; ``TypeError`` if it is JSON but not an object."""
    body = response.json()
    if not isinstance(body, dict):
        raise TypeError(f"a JSON object expected, not {type(body).__name__}")
    return body


def _typed(body: dict[str, Any], name: str, *types: type) -> Any:
    """``body[name]``; ``KeyError`` if absent, ``TypeError`` unless of one of ``types``."""
    value = body[name]
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        raise TypeError(f"{name!r} is {type(value).__name__}")
    return value


def decode_token(response: httpx.Response) -> str:
    with translate_decode_errors(response):
        token: str = _typed(_json(response), "access_token", str)
    return token


def decode_no_content(response: httpx.Response) -> None:
    """A delete's or a logout's answer: 204, without a body (anything else is not filekv's)."""
    if response.status_code != 204:
        raise not_filekv(response, "204 No Content expected")


def decode_username(response: httpx.Response) -> str:
    with translate_decode_errors(response):
        name: str = _typed(_json(response), "username", str)
    return name


LOGOUT: Final = Call("POST", "/auth/logout")
ME: Final = Call("GET", "/auth/me")
HEALTH: Final = Call("GET", "/healthz")
STATS: Final = Call("GET", "/stats")


# --- keys


def put_call(key: str, value: str, expect: int | None, ttl: float | None = None) -> Call:
    path = key_path(key)
    check_value(value)
    check_ttl(ttl)
    body: dict[str, Any] = {"value": value}
    if ttl is not None:
        body["ttl"] = ttl
    return Call("PUT", path, json=body, headers=expect_headers(expect))


def decode_revision(response: httpx.Response) -> int | None:
    """The answer's ``revision``: an int, or None when the write was staged."""
    with translate_decode_errors(response):
        revision: int | None = _typed(_json(response), "revision", int, type(None))
    return revision


def get_call(key: str) -> Call:
    return Call("GET", key_path(key))


def decode_entry(response: httpx.Response) -> Entry:
    with translate_decode_errors(response):
        body = _json(response)
        return Entry(
            key=_typed(body, "key", str),
            value=_typed(body, "value", str),
            revision=_typed(body, "revision", int, type(None)),  # None: staged
            expires_in=body.get("expires_in"),
        )


def delete_call(key: str, expect: int | None) -> Call:
    return Call("DELETE", key_path(key), headers=expect_headers(expect))


STAGED_HEADER: Final = "x-filekv-staged"


def decode_deleted(response: httpx.Response) -> bool:
    """A delete's answer: 204; whether it was staged in the caller's transaction (the server
    says so with ``X-Filekv-Staged: true``) rather than applied at once."""
    decode_no_content(response)
    staged: bool = response.headers.get(STAGED_HEADER) == "true"
    return staged


def page_call(*, prefix: str, value: str | None, after: str | None, limit: int | None) -> Call:
    params: dict[str, str | int] = {"prefix": prefix}
    if value is not None:
        params["value"] = value
    if after is not None:
        params["after"] = after
    if limit is not None:
        params["limit"] = limit
    return Call("GET", "/keys", params=params)


def decode_page(response: httpx.Response) -> tuple[list[str], str | None]:
    """One page of keys and the cursor of the next (None: this was the last)."""
    with translate_decode_errors(response):
        body = _json(response)
        return list(_typed(body, "keys", list)), _typed(body, "next", str, type(None))


# --- batch


BatchOp = tuple[Any, ...] | Mapping[str, Any]


def _batch_op(index: int, op: BatchOp) -> dict[str, Any]:
    if isinstance(op, Mapping):
        item = dict(op)
    elif isinstance(op, tuple) and op and op[0] == "put" and len(op) in (3, 4, 5):
        item = {"op": "put", "key": op[1], "value": op[2]}
        if len(op) >= 4:
            item["expect"] = op[3]
        if len(op) == 5 and op[4] is not None:
            item["ttl"] = op[4]
    elif isinstance(op, tuple) and op and op[0] == "delete" and len(op) in (2, 3):
        item = {"op": "delete", "key": op[1]}
        if len(op) == 3:
            item["expect"] = op[2]
    else:
        raise invalid_argument(
            f"op {index}: expected ('put', key, value[, expect[, ttl]]), ('delete', key[, expect])"
            f" or a dict, not {op!r}"
        )
    if item.get("op") not in ("put", "delete"):
        raise invalid_argument(
            f"op {index}: 'op' must be 'put' or 'delete', not {item.get('op')!r}"
        )
    if item.get("expect") is None:
        item.pop("expect", None)
    # What the server would refuse only after the whole batch came, or what could not even
    # be sent (a lone surrogate, an infinite ttl): said here, with the op's index.
    for name in ("key", "value"):
        if isinstance(item.get(name), str):
            check_value(item[name], f"op {index}: the {name}")
    if item.get("ttl") is not None:
        check_ttl(item["ttl"], f"op {index}: ttl")
    return item


def batch_call(ops: Iterable[BatchOp]) -> Call:
    items = [_batch_op(index, op) for index, op in enumerate(ops)]
    return Call("POST", "/batch", json={"ops": items})


# --- export and backup


def export_call(prefix: str) -> Call:
    """``GET /export``: sent with ``stream=True``, its body read by an ``ExportStream``."""
    return Call("GET", "/export", params={"prefix": prefix})


# Seconds to wait for a backup's first byte (the server verifies every record first) and
# between two chunks.
BACKUP_READ_TIMEOUT: Final = 600.0
BACKUP: Final = Call("GET", "/admin/backup", read_timeout=BACKUP_READ_TIMEOUT)


def decode_backup_head(response: httpx.Response) -> tuple[int, int]:
    """A backup answer's archive size in bytes and its revision, from its headers."""
    with translate_decode_errors(response):
        headers = response.headers
        return int(headers["content-length"]), int(headers["x-filekv-revision"])


def backup_result(revision: int, written: int, total: int) -> dict[str, int]:
    """``{"revision", "bytes"}`` of a backup received whole; ``Unavailable`` if cut short."""
    if written != total:
        raise Unavailable(f"the backup was cut off after {written} of {total} bytes")
    return {"revision": revision, "bytes": written}


# --- transactions


BEGIN: Final = Call("POST", "/transactions")
COMMIT: Final = Call("POST", "/transactions/commit")
ROLLBACK: Final = Call("POST", "/transactions/rollback")
RELEASE: Final = Call("POST", "/transactions/release")
STATUS: Final = Call("GET", "/transactions")


def decode_depth(response: httpx.Response) -> int:
    with translate_decode_errors(response):
        depth: int = _typed(_json(response), "depth", int)
    return depth


def decode_applied(response: httpx.Response) -> int:
    with translate_decode_errors(response):
        applied: int = _typed(_json(response), "applied", int)
    return applied


def decode_json(response: httpx.Response) -> dict[str, Any]:
    with translate_decode_errors(response):
        return _json(response)
