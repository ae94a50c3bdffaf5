"""``/keys``: read, write, delete and find keys.

These are the hot path, so they stay lean: the request is read by hand in ``service/wire.py``
(no body model, no dependency resolution), so a route parses, calls one method of the store or
of the transaction, and answers with a ready ``orjson`` response. The bearer token is looked at
only when the auth mode demands it or a transaction is open (then the holder must be told apart).
The models in ``responses=`` document the wire format for ``/docs``; nothing validates answers.

A key is any UTF-8 string, so the key routes use their own path convertor: Starlette's ``path``
(``.*``) does not match a newline. The server decodes the path leniently (bad UTF-8 becomes
U+FFFD, a stray ``%`` stays as it is), so a key whose raw path has a ``%`` is checked against the
raw bytes: distinct raw keys must never collide into one stored key.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Final

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from starlette.convertors import PathConvertor, register_url_convertor
from starlette.routing import Route

from filekv.engine.validation import encode_key
from filekv.service.deps import request_session_id
from filekv.service.errors import KeyNotFound
from filekv.service.routes.watch import (
    COMPACTED,
    FIND_TEXT_PARAMETERS,
    MAX_REVISION,
    MAX_WAIT_SECONDS,
    TOO_MANY_WATCHERS,
    check_filter,
    check_query_encoding,
    parse_after_revision,
    parse_wait,
    wait_for_change,
)
from filekv.service.schemas import (
    DISK_FULL,
    ETAG,
    IF_MATCH,
    IF_NONE_MATCH,
    LOCKED,
    OPTIONAL_BEARER,
    STORE_FAILED,
    UNAUTHORIZED,
    KeyPage,
    KeyValue,
    PutResult,
    ValueIn,
    error,
    invalid,
)
from filekv.service.wire import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    Conditions,
    check_key_encoding,
    parse_limit,
    read_delete,
    read_put,
)

if TYPE_CHECKING:
    from filekv.engine import Store
    from filekv.service.transactions import TransactionManager


class KeyConvertor(PathConvertor):
    """Like ``path``, but any character, newline included (``.`` stops at ``\\n``)."""

    regex = r"[\s\S]*"


# Registered before the routes below are declared: Starlette compiles their patterns then.
register_url_convertor("key", KeyConvertor())
KEY_PATH: Final = "/keys/{key:key}"

router = APIRouter(tags=["keys"])

WRITE_CONFLICT: Final = error(
    "Your transaction expired (your writes are refused until you begin, commit or roll back), "
    "or it ended or changed level while this request was received: nothing was applied."
)


# The header of a DELETE staged in the caller's transaction (a PUT says it in its body).
STAGED: Final[dict[str, Any]] = {
    "X-Filekv-Staged": {
        "description": "`true` when the delete was staged in your transaction (applied at "
        "commit); absent when it was applied at once.",
        "schema": {"type": "string", "enum": ["true"]},
    }
}
STAGED_HEADERS: Final = {"X-Filekv-Staged": "true"}


PRECONDITION_FAILED: Final = error(
    "If-Match did not match (`*`: the key must exist; else its revision must be one of the "
    'strong tags: `"<rev>"`), or If-None-Match did (`*`: the key exists; a tag, weak or not, '
    "names its revision), or the key changed while the request was decided: nothing written."
)


def _json(content: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(content), status_code, headers, media_type="application/json")


def _decode(value: bytes) -> str:
    # Values written through this API are UTF-8; anything else is shown, not refused.
    return value.decode("utf-8", errors="replace")


_PUT_BODY: Final = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": ValueIn.model_json_schema()}},
    }
}


# GET first: routes are matched in order, and reads are the hottest path.
@router.get(
    KEY_PATH,
    summary="Read a key",
    response_model=KeyValue,
    responses={
        200: {"headers": ETAG},
        401: UNAUTHORIZED,
        404: error("No such key."),
        422: invalid(
            "A key that can never exist (`key_invalid`: empty, or over max_key_bytes), or one "
            "whose percent-encoding is broken or not UTF-8 (`key_encoding`)."
        ),
    },
    openapi_extra={"security": OPTIONAL_BEARER},
)
async def get_key(key: str, request: Request) -> Response:
    """The value of ``key``: committed data, or the holder's staged view of it."""
    state = request.app.state
    transactions: TransactionManager = state.transactions
    session_id = request_session_id(request, transactions, write=False)
    check_key_encoding(request)
    tx = transactions.reader(session_id) if session_id is not None else None
    store: Store = state.store
    entry = (tx or store).entry(key)
    if entry is None:
        _check_key(key, state.settings.max_key_bytes)
        raise KeyNotFound("no such key")
    headers = {"ETag": f'"{entry.revision}"'} if entry.revision is not None else None
    expires_at = entry.expires_at
    expires_in = None if expires_at is None else _seconds_left(expires_at, store.now())
    body = {
        "key": key,
        "value": _decode(entry.value),
        "revision": entry.revision,
        "expires_in": expires_in,
    }
    return _json(body, headers=headers)


def _check_key(key: str, limit: int) -> None:
    """422 (``key_invalid``, as PUT and DELETE answer) for a key that can never exist: empty,
    or over max_key_bytes. Asked only on a miss, so a read that finds its key pays nothing; a
    key of at most a quarter of the limit in characters fits (4 bytes a character at most)."""
    if not key or len(key) > limit >> 2:
        encode_key(key, limit)


def _seconds_left(expires_at: float, now: float) -> float:
    # Milliseconds are as fine as anyone can act on; never 0 for a key that is still there.
    return max(round(expires_at - now, 3), 0.001)


@router.put(
    KEY_PATH,
    summary="Write a key",
    response_model=PutResult,
    status_code=201,
    responses={
        200: {"model": PutResult, "description": "Replaced an existing key."},
        201: {"description": "Created the key."},
        400: error(
            "Malformed Content-Length, or an If-Match / If-None-Match that is neither `*` nor a "
            "comma-separated list of entity tags."
        ),
        401: UNAUTHORIZED,
        409: WRITE_CONFLICT,
        412: PRECONDITION_FAILED,
        413: error(
            "Value (or body) too large, or staging it would pass the transaction's limits "
            "(max_transaction_bytes, max_transaction_ops): nothing was staged."
        ),
        415: {
            **error(
                "The body is not JSON (send Content-Type: application/json), or it is "
                "content-coded (gzip...): send it without Content-Encoding."
            ),
            "headers": {
                "Accept-Encoding": {
                    "description": "`identity`, when the Content-Encoding was refused.",
                    "schema": {"type": "string"},
                }
            },
        },
        423: LOCKED,
        503: STORE_FAILED,
        507: DISK_FULL,
    },
    openapi_extra={
        **_PUT_BODY,
        "security": OPTIONAL_BEARER,
        "parameters": [IF_MATCH, IF_NONE_MATCH],
    },
)
async def put_key(key: str, request: Request) -> Response:
    """Create or replace ``key``; inside the caller's transaction the write is staged."""
    state = request.app.state
    transactions: TransactionManager = state.transactions
    session_id = request_session_id(request, transactions, write=True)
    ticket = transactions.writer(session_id)  # the lock before the request, even before the body
    text, ttl, expect = await read_put(request)
    value = text.encode("utf-8")
    # The one decision point: the transaction may have ended while the body came in. Nothing
    # awaits from here to the staging or the append, so nothing can change it in between.
    tx = transactions.write_target(session_id, ticket)
    if isinstance(expect, Conditions):  # headers that need the key's revision: read it now
        expect = expect.expected_revision(key, tx or state.store)
    if tx is None:
        store: Store = state.store
        existed = key in store
        revision: int | None = await store.aput(key, value, expect=expect, ttl=ttl)
    else:
        existed, revision = tx.put(key, value, expect=expect, ttl=ttl), None
    body = {
        "key": key,
        "value": text,
        "revision": revision,
        # Rounded as a read rounds it (the store keeps the exact ttl): the two answers agree.
        "expires_in": None if ttl is None else _seconds_left(ttl, 0.0),
        "staged": tx is not None,
    }
    return _json(body, 200 if existed else 201)


@router.delete(
    KEY_PATH,
    summary="Delete a key",
    status_code=204,
    response_class=Response,
    responses={
        204: {
            "description": "Deleted, or (with `X-Filekv-Staged: true`) staged in your transaction.",
            "headers": STAGED,
        },
        400: error("An If-Match / If-None-Match that is neither `*` nor a list of entity tags."),
        401: UNAUTHORIZED,
        404: error("No such key."),
        409: WRITE_CONFLICT,
        412: PRECONDITION_FAILED,
        413: error(
            "Staging it would pass the transaction's limits (max_transaction_ops, "
            "max_transaction_bytes): nothing was staged."
        ),
        423: LOCKED,
        503: STORE_FAILED,
        507: DISK_FULL,
    },
    openapi_extra={"security": OPTIONAL_BEARER, "parameters": [IF_MATCH, IF_NONE_MATCH]},
)
async def delete_key(key: str, request: Request) -> Response:
    """Delete ``key``; inside the caller's transaction the delete is staged."""
    state = request.app.state
    transactions: TransactionManager = state.transactions
    session_id = request_session_id(request, transactions, write=True)
    ticket = transactions.writer(session_id)
    expect = read_delete(request)
    tx = transactions.write_target(session_id, ticket)
    if isinstance(expect, Conditions):  # as in put_key: no await from here to the delete
        expect = expect.expected_revision(key, tx or state.store)
    if tx is None:
        store: Store = state.store
        if not await store.adelete(key, expect=expect):
            raise KeyNotFound("no such key")
        return Response(status_code=204)
    if not tx.delete(key, expect=expect):
        raise KeyNotFound("no such key")
    # A 204 has no body to say it in: the header tells the holder the delete was only staged.
    return Response(status_code=204, headers=STAGED_HEADERS)


@router.get(
    "/keys",
    summary="Find keys",
    response_model=KeyPage,
    responses={
        401: UNAUTHORIZED,
        409: error("Long poll: after_revision is ahead of the store's revision."),
        410: COMPACTED,
        422: invalid(
            "A bad parameter: prefix, value or after with a broken or non-UTF-8 "
            "percent-encoding (`query_encoding`), a prefix over max_key_bytes "
            "(`string_too_long`), or limit, wait or after_revision out of range."
        ),
        503: TOO_MANY_WATCHERS,
    },
    openapi_extra={"security": OPTIONAL_BEARER},
)
async def find_keys(
    request: Request,
    value: Annotated[str | None, Query(description="Only keys whose value equals this.")] = None,
    prefix: Annotated[str, Query(description="Only keys starting with this.")] = "",
    after: Annotated[str | None, Query(description="Exclusive cursor: the previous next.")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="Page size.")] = DEFAULT_LIMIT,
    wait: Annotated[
        float | None,
        Query(
            ge=0,
            le=MAX_WAIT_SECONDS,
            description="Long poll: answer once a key under the prefix changes after "
            "after_revision, or after this many seconds.",
        ),
    ] = None,
    after_revision: Annotated[
        int | None,
        Query(
            ge=0,
            le=MAX_REVISION,
            description="Long poll: changes after this revision count (default: from now).",
        ),
    ] = None,
) -> Response:
    """Sorted keys matching ``value`` and ``prefix``, one page at a time; with ``wait`` (a
    long poll), only once a key under ``prefix`` changed after ``after_revision``."""
    state = request.app.state
    transactions: TransactionManager = state.transactions
    session_id = request_session_id(request, transactions, write=False)
    check_query_encoding(request, FIND_TEXT_PARAMETERS)
    # A prefix longer than any key is 422, listed or long-polled, as /watch answers it.
    check_filter(request, prefix, None)
    revision = None
    if wait is not None or after_revision is not None:
        revision = await wait_for_change(request, prefix, wait, after_revision)
    tx = transactions.reader(session_id) if session_id is not None else None
    source = tx or state.store
    # One key more than the page tells whether another page exists, so a short page ends it.
    if value is None:
        keys = source.scan(prefix, after=after, limit=limit + 1)
    else:
        keys = source.find(value.encode("utf-8"), prefix=prefix, after=after, limit=limit + 1)
    more = len(keys) > limit
    page = keys[:limit]
    if revision is not None:
        return _json({"keys": page, "next": page[-1] if more else None, "revision": revision})
    return _json({"keys": page, "next": page[-1] if more else None})


async def _find_keys_fast(request: Request) -> Response:
    params = request.query_params
    return await find_keys(
        request,
        value=params.get("value"),
        prefix=params.get("prefix", ""),
        after=params.get("after"),
        limit=parse_limit(params.get("limit")),
        wait=parse_wait(params.get("wait")),
        after_revision=parse_after_revision(params.get("after_revision")),
    )


async def _get_key_fast(request: Request) -> Response:
    return await get_key(request.path_params["key"], request)


async def _put_key_fast(request: Request) -> Response:
    return await put_key(request.path_params["key"], request)


async def _delete_key_fast(request: Request) -> Response:
    return await delete_key(request.path_params["key"], request)


def fast_routes() -> list[Route]:
    """``/keys`` (find) and ``/keys/{key}`` as plain Starlette routes, to match before the above.

    These handlers read their input by hand and return ready responses, so FastAPI's
    per-request machinery (solving dependencies, a sub-response, its route wrappers) does
    nothing for them, yet cost more than the handlers themselves: measured in-process, 55 µs
    per GET through the APIRoute against 24 µs through this route. The APIRoutes stay
    registered for /docs and /openapi.json, which describe exactly what these routes do (the
    same functions run), and the app's exception handlers apply to both.
    """
    return [
        Route("/keys", _find_keys_fast, methods=["GET"], include_in_schema=False),
        Route(KEY_PATH, _get_key_fast, methods=["GET"], include_in_schema=False),
        Route(KEY_PATH, _put_key_fast, methods=["PUT"], include_in_schema=False),
        Route(KEY_PATH, _delete_key_fast, methods=["DELETE"], include_in_schema=False),
    ]
