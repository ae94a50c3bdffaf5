"""``/healthz`` and ``/stats``: is the store open, and what it holds.

``/healthz`` answers anyone (probes send no token). ``/stats`` follows ``auth_mode`` like the
``/keys`` reads: with ``auth_mode=all`` it needs a valid token, since the key count and whether a
transaction is open are the store's business; in every mode a token that is sent is checked.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from filekv.service.deps import caller_session_id
from filekv.service.errors import StoreUnavailable
from filekv.service.schemas import OPTIONAL_BEARER, UNAUTHORIZED, Health, Stats, error

if TYPE_CHECKING:
    from filekv.engine import Store

router = APIRouter(tags=["health"])


def _open_store(request: Request) -> Store:
    store: Store | None = getattr(request.app.state, "store", None)
    if store is None or store.closed:
        raise StoreUnavailable("the store is not open")
    return store


@router.get(
    "/healthz",
    summary="Liveness",
    response_model=Health,
    responses={503: error("The store is not open.")},
)
async def healthz(request: Request) -> Response:
    """200 while the store is open and serving."""
    _open_store(request)
    return Response(b'{"status":"ok"}', media_type="application/json")


# HEAD too (monitors that probe with HEAD took the 405 for a server down); out of the schema,
# where it would only repeat the GET.
router.add_api_route("/healthz", healthz, methods=["HEAD"], include_in_schema=False)


@router.get(
    "/stats",
    summary="Store statistics",
    response_model=Stats,
    responses={401: UNAUTHORIZED, 503: error("The store is not open.")},
    openapi_extra={"security": OPTIONAL_BEARER},
)
def stats(request: Request) -> Response:
    """Keys, bytes on disk, live bytes, segments, fsync mode, last compaction.

    With ``auth_mode=all``, only for a logged-in caller (401 otherwise).
    """
    caller_session_id(request, required=request.app.state.settings.auth_mode == "all")
    return Response(orjson.dumps(_open_store(request).stats()), media_type="application/json")
