"""Streaming an export: JSON Lines read off a ``Snapshot`` in chunks, with every input bounded.

``GET /export`` (``routes/export.py``) takes a snapshot of the keys under a prefix and answers
with an ``ExportResponse``, which sends one ``{"key", "value", "revision"}`` line per key in key
order. What bounds it:

- memory: the engine reads a chunk (``CHUNK_KEYS`` keys, about ``CHUNK_BYTES`` of values), a
  worker thread encodes it, the event loop sends it; the next chunk is read only once the
  client has taken this one (transport flow control), so an export holds about one chunk.
- count: ``ExportSlots`` lets ``export_max_concurrent`` exports run at once; one more is 429
  with ``Retry-After``, refused before the snapshot is taken.
- shutdown: an export still streaming when the server is told to stop is cut off the same
  way, between two chunks, so a SIGTERM never waits for a slow reader.
- time: ``export_time_limit`` seconds from the first byte to the last. A client that stops
  reading would otherwise hold the snapshot (its pinned segment files, its copy of the index)
  and a slot for ever; at the limit the connection is closed without the chunked body's end, so
  the client sees a truncated answer, never a short one that looks complete (and
  ``X-Filekv-Keys`` says how many lines a complete one has). That cut-off is logged as a
  WARNING; uvicorn's own ERROR about an answer left unfinished is dropped (``cut_off``).

The snapshot is closed, and the slot freed, whichever way the response ends: all sent, the
client gone (Starlette cancels the stream on ``http.disconnect``), or the time limit.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import AsyncIterator, Callable
from typing import Final

import orjson
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from filekv.engine.snapshot import CHUNK_BYTES, CHUNK_KEYS, Snapshot
from filekv.service.errors import TooManyExports

log = logging.getLogger(__name__)

MEDIA_TYPE: Final = "application/x-ndjson"
REVISION_HEADER: Final = "X-Filekv-Revision"
KEYS_HEADER: Final = "X-Filekv-Keys"
RETRY_AFTER_SECONDS: Final = 5


# What uvicorn logs, as an ERROR, when an application returns with its answer unfinished: the
# only way ASGI has to close a connection mid-answer, hence what a cut-off streamed answer does
# (an export or a watch stream at its limit: the answer ends without the chunked body's end, so
# that the client knows it was cut short). Such a cut-off is logged by the route itself (a
# WARNING saying which limit), and uvicorn's line is dropped for that request only.
UNFINISHED_ANSWER: Final = "ASGI callable returned without completing response."
_CUT_OFF: Final = contextvars.ContextVar("filekv_cut_off", default=False)


class _QuietCutOff(logging.Filter):
    """Drops uvicorn's "returned without completing response" for an answer cut off on purpose.

    uvicorn logs it in the task that ran the application, after it returned: the context
    variable ``cut_off`` set there (in the response's ``__call__``, the request's own task) is
    still visible. Any other request's unfinished answer (a bug) is still logged."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (_CUT_OFF.get() and record.msg == UNFINISHED_ANSWER)


_QUIET_CUT_OFF: Final = _QuietCutOff()


def cut_off() -> None:
    """Say that the answer of the current request is being cut off on purpose (and logged):
    uvicorn's ERROR about it is not logged. Call it in the response's ``__call__`` (the
    request's task), before it returns."""
    logger = logging.getLogger("uvicorn.error")
    if _QUIET_CUT_OFF not in logger.filters:
        logger.addFilter(_QUIET_CUT_OFF)
    _CUT_OFF.set(True)


class ExportSlots:
    """How many exports may stream at once. Used on the event loop only: no lock."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0

    def acquire(self) -> Callable[[], None]:
        """Take a slot (TooManyExports if none is free); call what it returns to give it back."""
        if self.active >= self.limit:
            raise TooManyExports(self.limit, RETRY_AFTER_SECONDS)
        self.active += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.active -= 1

        return release


def encode_chunk(snapshot: Snapshot) -> tuple[bytes, int]:
    """The next chunk's lines and how many there are ((b"", 0) at the end). In a worker thread:
    reading values and encoding them stays off the event loop."""
    items = snapshot.chunk(CHUNK_KEYS, CHUNK_BYTES)
    if not items:
        return b"", 0
    dumps = orjson.dumps
    expires_at = snapshot.expires_at
    lines = []
    for key, value, revision in items:
        # Values written through the API are UTF-8; anything else is shown, as GET shows it.
        line = {"key": key, "value": value.decode("utf-8", "replace"), "revision": revision}
        expiry = expires_at(key)
        if expiry is not None:  # a key with a TTL: when it expires (Unix seconds), for import
            line["expires_at"] = expiry
        lines.append(dumps(line))
    lines.append(b"")
    return b"\n".join(lines), len(items)


async def _lines(snapshot: Snapshot) -> AsyncIterator[bytes]:
    while True:
        data, count = await asyncio.to_thread(encode_chunk, snapshot)
        if not count:
            return
        yield data


class _ShuttingDown(Exception):
    """The server was told to stop while an export was streaming."""


class ExportResponse(StreamingResponse):
    """The JSON Lines of ``snapshot``, sent within ``time_limit`` seconds and cut off if
    ``stopping()`` turns true; closes the snapshot and calls ``release`` when done, whatever the
    outcome."""

    def __init__(
        self,
        snapshot: Snapshot,
        release: Callable[[], None],
        *,
        time_limit: float,
        stopping: Callable[[], bool] = lambda: False,
    ) -> None:
        super().__init__(
            _lines(snapshot),
            media_type=MEDIA_TYPE,
            headers={REVISION_HEADER: str(snapshot.revision), KEYS_HEADER: str(len(snapshot))},
        )
        self._snapshot = snapshot
        self._release = release
        self._time_limit = time_limit
        self._stopping = stopping

    def _finish(self) -> None:
        # Waits for a chunk still being read in a worker thread (one chunk: ~1 ms). Idempotent.
        self._snapshot.close()
        self._release()

    async def stream_response(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        async for chunk in self.body_iterator:
            # uvicorn lets a running answer finish before it exits: a SIGTERM would wait for a
            # slow reader's export up to export_time_limit. It is cut off instead (a reader that
            # stopped altogether has its connection aborted by protocol.py's shutdown).
            if self._stopping():
                raise _ShuttingDown
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        # Before the body's end goes out: a client that asks for its next export as soon as
        # this one ended must find the slot free.
        self._finish()
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        snapshot = self._snapshot
        try:
            async with asyncio.timeout(self._time_limit):
                await super().__call__(scope, receive, send)
        except TimeoutError:
            # Returning without the body's end: the server closes the connection (and does not
            # log it as an error: this WARNING says what happened).
            cut_off()
            log.warning(
                "export of %r at revision %d cut off at export_time_limit (%s s), "
                "%d of %d keys not sent",
                snapshot.prefix,
                snapshot.revision,
                self._time_limit,
                snapshot.remaining,
                len(snapshot),
            )
        except _ShuttingDown:
            cut_off()
            log.warning(
                "export of %r at revision %d cut off: the server is shutting down",
                snapshot.prefix,
                snapshot.revision,
            )
        finally:
            self._finish()
