"""``/export``: every key under a prefix, with its value and revision, as JSON Lines.

One consistent view: the store's snapshot at one revision (``Store.snapshot``), however long the
answer takes to stream and whatever is written meanwhile. Who may export is who may read keys
(``auth_mode``); the caller's own staged transaction is not part of it (committed data only).
``service/export.py`` streams it and says how memory, concurrency and time are bounded.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Annotated, Any, Final

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from filekv.service.deps import request_session_id
from filekv.service.export import (
    KEYS_HEADER,
    MEDIA_TYPE,
    REVISION_HEADER,
    ExportResponse,
    ExportSlots,
)
from filekv.service.routes.watch import check_filter, check_query_encoding
from filekv.service.schemas import OPTIONAL_BEARER, RETRY_AFTER, UNAUTHORIZED, error, invalid

if TYPE_CHECKING:
    from filekv.engine import Store
    from filekv.service.transactions import TransactionManager

router = APIRouter(tags=["keys"])

EXPORT_TEXT_PARAMETERS: Final = frozenset(("prefix",))

_LINE_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "description": "One line of the answer (JSON Lines: one such object per line).",
    "properties": {
        "key": {"type": "string"},
        "value": {"type": "string"},
        "revision": {"type": "integer", "description": "The revision that wrote this value."},
    },
    "required": ["key", "value", "revision"],
}


@router.get(
    "/export",
    summary="Export keys as JSON Lines",
    response_class=Response,
    responses={
        200: {
            "description": "One JSON object per line, sorted by key, all as of one revision. An "
            "answer cut short (export_time_limit) ends without the chunked body's end.",
            "content": {MEDIA_TYPE: {"schema": _LINE_SCHEMA}},
            "headers": {
                REVISION_HEADER: {
                    "description": "The revision the export shows the store at.",
                    "schema": {"type": "integer"},
                },
                KEYS_HEADER: {
                    "description": "How many lines follow.",
                    "schema": {"type": "integer"},
                },
            },
        },
        401: UNAUTHORIZED,
        422: invalid(
            "A bad prefix: a broken or non-UTF-8 percent-encoding (`query_encoding`), or longer "
            "than max_key_bytes (`string_too_long`)."
        ),
        429: {
            **error("export_max_concurrent exports are already streaming; retry later."),
            "headers": RETRY_AFTER,
        },
    },
    openapi_extra={"security": OPTIONAL_BEARER},
)
async def export_keys(
    request: Request,
    prefix: Annotated[str, Query(description="Only keys starting with this.")] = "",
) -> Response:
    """Every key starting with ``prefix``, sorted, with its value and revision: one JSON object
    per line, from one snapshot at the revision in ``X-Filekv-Revision``."""
    state = request.app.state
    transactions: TransactionManager = state.transactions
    request_session_id(request, transactions, write=False)  # who may read keys may export
    # The prefix as listing and watching check it (422), before a slot or a snapshot is taken.
    check_query_encoding(request, EXPORT_TEXT_PARAMETERS)
    check_filter(request, prefix, None)
    slots: ExportSlots = state.exports
    release = slots.acquire()
    try:
        store: Store = state.store
        # Copying a big index takes milliseconds (snapshot.py): not on the event loop.
        snapshot = await asyncio.to_thread(store.snapshot, prefix)
    except BaseException:
        release()
        raise
    stop_requested = state.stop_requested  # set by `filekv serve`: has it been told to stop?
    return ExportResponse(
        snapshot,
        release,
        time_limit=state.settings.export_time_limit,
        stopping=lambda: bool(stop_requested and stop_requested()),
    )
