"""``/metrics``: Prometheus metrics (only with the ``metrics`` setting on, the default).

What is measured, and where, is ``service/metrics.py``'s business; this route only checks the
caller like ``/stats`` (with ``auth_mode=all``, a valid token) and hands over the exposition in
the format the scraper asked for.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from filekv.service.deps import caller_session_id
from filekv.service.metrics import Metrics
from filekv.service.schemas import OPTIONAL_BEARER, UNAUTHORIZED

router = APIRouter(tags=["health"])


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={
        200: {
            "description": "The metrics in Prometheus' text format (OpenMetrics if the Accept "
            "header asks for it).",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        },
        401: UNAUTHORIZED,
    },
    openapi_extra={"security": OPTIONAL_BEARER},
)
async def metrics(request: Request) -> Response:
    """Requests, durations, fsyncs, compactions, keys and bytes, the transaction lock, logins.

    With ``auth_mode=all``, only for a logged-in caller (401 otherwise), like ``/stats``.
    """
    caller_session_id(request, required=request.app.state.settings.auth_mode == "all")
    registry: Metrics = request.app.state.metrics
    body, content_type = registry.exposition(request.headers.get("accept"))
    return Response(body, headers={"Content-Type": content_type})


# HEAD too, as /healthz: a scraper's or a monitor's probe; out of the schema, like the GET's copy.
router.add_api_route("/metrics", metrics, methods=["HEAD"], include_in_schema=False)
