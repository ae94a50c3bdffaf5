"""What the sync and async clients share: each call as a ``Call``, each answer decoded once.

A method of either client builds its ``Call`` here, sends it with its own httpx client (the
only part that differs: ``send`` or ``await send``), and hands the answer to the ``decode_*``
function beside it. Errors are raised by ``check`` (status 400 and up), and ``lock_delay``
decides whether a 423 is waited out (``wait_locked``).
"""

from __future__ import annotations

import os
import ssl
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import quote

import httpx

from filekv.client._errors import Unavailable, error_for_status, retry_after
from filekv.client._models import Entry

DEFAULT_URL: Final = "http://127.0.0.1:8000"
URL_ENV: Final = "FILEKV_URL"
# One connection, kept alive between calls.
LIMITS: Final = httpx.Limits(max_connections=1, max_keepalive_connections=1)


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
    """``url``, else ``$FILEKV_URL``, else the default; without a trailing ``/``."""
    chosen = url or os.environ.get(URL_ENV) or DEFAULT_URL
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
        timeout = client.timeout
        if self.read_timeout is not None:
            timeout = httpx.Timeout(timeout.connect, read=self.read_timeout)
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
    """The answer if it is a success, else raise its ``FilekvError``."""
    if response.status_code >= 400:
        raise error_for_status(response)
    return response


def lock_delay(response: httpx.Response, remaining: float) -> float | None:
    """How long to wait before retrying a 423, or None to raise it (nothing left to wait)."""
    if response.status_code != 423 or remaining <= 0:
        return None
    wait = retry_after(response)
    return min(1.0 if wait is None else wait, remaining)


def auth_headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def key_path(key: str) -> str:
    """``/keys/<key>`` with every byte of the key's UTF-8 outside ``A-Za-z0-9-._~`` escaped."""
    if not isinstance(key, str):
        raise TypeError(f"a key is a str, not {type(key).__name__}")
    return "/keys/" + quote(key, safe="")


def expect_headers(expect: int | None) -> dict[str, str]:
    """``expect=REV`` as ``If-Match: "REV"``; ``expect=0`` as ``If-None-Match: *``."""
    if expect is None:
        return {}
    if isinstance(expect, bool) or not isinstance(expect, int) or expect < 0:
        raise ValueError(f"expect must be a revision >= 0 (0: must not exist), not {expect!r}")
    return {"If-None-Match": "*"} if expect == 0 else {"If-Match": f'"{expect}"'}


# --- auth


def register_call(username: str, password: str) -> Call:
    return Call("POST", "/auth/register", json={"username": username, "password": password})


def login_call(username: str, password: str) -> Call:
    return Call("POST", "/auth/token", data={"username": username, "password": password})


def decode_token(response: httpx.Response) -> str:
    token: str = response.json()["access_token"]
    return token


LOGOUT: Final = Call("POST", "/auth/logout")
ME: Final = Call("GET", "/auth/me")
HEALTH: Final = Call("GET", "/healthz")
STATS: Final = Call("GET", "/stats")


# --- keys


def put_call(key: str, value: str, expect: int | None, ttl: float | None = None) -> Call:
    if not isinstance(value, str):
        raise TypeError(f"a value is a str, not {type(value).__name__}")
    body: dict[str, Any] = {"value": value}
    if ttl is not None:
        body["ttl"] = ttl
    return Call("PUT", key_path(key), json=body, headers=expect_headers(expect))


def decode_revision(response: httpx.Response) -> int | None:
    """The answer's ``revision``: an int, or None when the write was staged."""
    revision: int | None = response.json().get("revision")
    return revision


def get_call(key: str) -> Call:
    return Call("GET", key_path(key))


def decode_entry(response: httpx.Response) -> Entry:
    body = response.json()
    return Entry(
        key=body["key"],
        value=body["value"],
        revision=body["revision"],
        expires_in=body.get("expires_in"),
    )


def delete_call(key: str, expect: int | None) -> Call:
    return Call("DELETE", key_path(key), headers=expect_headers(expect))


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
    body = response.json()
    return list(body["keys"]), body["next"]


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
        raise ValueError(
            f"op {index}: expected ('put', key, value[, expect[, ttl]]), ('delete', key[, expect])"
            f" or a dict, not {op!r}"
        )
    if item.get("op") not in ("put", "delete"):
        raise ValueError(f"op {index}: 'op' must be 'put' or 'delete', not {item.get('op')!r}")
    if item.get("expect") is None:
        item.pop("expect", None)
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
    return int(response.headers["content-length"]), int(response.headers["x-filekv-revision"])


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
    depth: int = response.json()["depth"]
    return depth


def decode_applied(response: httpx.Response) -> int:
    applied: int = response.json()["applied"]
    return applied


def decode_json(response: httpx.Response) -> dict[str, Any]:
    body: dict[str, Any] = response.json()
    return body
