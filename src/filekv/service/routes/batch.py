"""``/batch``: several puts and deletes, applied atomically at one revision, or staged together.

The same lock rules as ``PUT /keys/{key}`` (``routes/keys.py``): the lock is checked before the
body is read, and ``write_target`` decides where the operations go once it has been read, with no
await between that decision and the store's append or the transaction's staging.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.routing import Route

from filekv.service.deps import request_session_id
from filekv.service.schemas import (
    DISK_FULL,
    LOCKED,
    MAX_BATCH_BYTES,
    OPTIONAL_BEARER,
    STORE_FAILED,
    UNAUTHORIZED,
    BatchIn,
    BatchResult,
    error,
    inline_schema,
    invalid,
)
from filekv.service.wire import read_batch

if TYPE_CHECKING:
    from filekv.engine import Store
    from filekv.service.transactions import TransactionManager

router = APIRouter(tags=["keys"])


@router.post(
    "/batch",
    summary="Write several keys atomically",
    response_model=BatchResult,
    responses={
        400: error("Malformed Content-Length."),
        401: UNAUTHORIZED,
        409: error(
            "Your transaction expired, or it ended or changed level while this request was "
            "received: nothing was applied."
        ),
        412: error("An operation's `expect` did not match: the detail names the first (op N)."),
        413: error(
            f"Body over {MAX_BATCH_BYTES} bytes, a value over max_value_bytes, or more than the "
            "transaction limits (max_transaction_ops, max_transaction_bytes): nothing applied."
        ),
        415: error("The body is not JSON: send Content-Type: application/json."),
        422: invalid(
            "Invalid body: not 1 to 1000 operations, or a bad operation or key (`loc` names the "
            "operation); `expect` must be a JSON integer and `ttl` a JSON number, as in PUT "
            "(no strings, no booleans)."
        ),
        423: LOCKED,
        503: STORE_FAILED,
        507: DISK_FULL,
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": inline_schema(BatchIn)}},
        },
        "security": OPTIONAL_BEARER,
    },
)
async def batch(request: Request) -> Response:
    """Apply 1 to 1000 puts and deletes as one record at one new revision.

    All or nothing, durable before the answer: a failed ``expect`` (0: the key must not exist)
    applies none of them (412 naming the first such operation); a delete of an absent key
    without ``expect`` is no error. Every ``expect`` is compared with the data as it was
    before the batch; of several operations on one key the last wins. Inside your transaction the
    operations are staged together (``"staged": true``) and applied by its commit.
    """
    state = request.app.state
    transactions: TransactionManager = state.transactions
    session_id = request_session_id(request, transactions, write=True)
    ticket = transactions.writer(session_id)  # the lock before the body, as for PUT
    ops = await read_batch(request)
    tx = transactions.write_target(session_id, ticket)  # nothing awaits from here to the write
    if tx is None:
        store: Store = state.store
        revision: int | None = await store.abatch(ops)
        applied = len(ops)
    else:
        revision, applied = None, tx.batch(ops)
    body = {"revision": revision, "applied": applied, "staged": tx is not None}
    return Response(orjson.dumps(body), media_type="application/json")


def fast_routes() -> list[Route]:
    """``POST /batch`` as a plain Starlette route as well, matched before the APIRoute above,
    which stays for /docs and /openapi.json: the same function runs, without FastAPI's
    per-request machinery (see ``keys.fast_routes``)."""
    return [Route("/batch", batch, methods=["POST"], include_in_schema=False)]
