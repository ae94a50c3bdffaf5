"""ASGI middleware: limits that apply before any route runs.

Pure ASGI (not ``BaseHTTPMiddleware``, which wraps every request in a task and a stream): the
cost on a passing request is one sum over its headers.
"""

from __future__ import annotations

from typing import Final

from starlette.types import ASGIApp, Receive, Scope, Send

from filekv.service.errors import HeadersTooLarge, error_response

# uvicorn's httptools parser keeps every header in memory with no bound of its own (h11 has
# ``h11_max_incomplete_event_size``; httptools has nothing), so the limit is ours. 16 KiB in
# total, names and values, is what nginx and Node.js accept by default and far above any
# request this API needs (a bearer token is 43 characters).
MAX_HEADER_BYTES: Final = 16 * 1024


class HeaderSizeLimit:
    """Answer 431 to a request whose header names and values add up to more than the limit."""

    def __init__(self, app: ASGIApp, *, max_bytes: int = MAX_HEADER_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            size = sum(len(name) + len(value) for name, value in scope["headers"])
            if size > self.max_bytes:
                response = error_response(
                    HeadersTooLarge(
                        f"request headers are {size} bytes; the limit is {self.max_bytes}"
                    )
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
