"""``ExportStream`` and ``AsyncExportStream``: the answer of ``GET /export`` as it streams in
(``Client.export``, ``AsyncClient.export``).

The server sends ``X-Filekv-Keys`` with the number of lines a complete answer has; a stream that
ends short of it (the server's ``export_time_limit``, or the connection cut) raises
``Unavailable`` instead of passing for a smaller export. Cutting the body into whole lines,
counting them and decoding them into ``Entry`` objects is ``_Lines``' work and
``decode_lines``', shared by both streams: only the reading (``iter_bytes`` or ``aiter_bytes``)
differs.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Final

import httpx

from filekv.client._errors import (
    Unavailable,
    not_filekv,
    translate_decode_errors,
    translate_transport_errors,
)
from filekv.client._models import Entry

REVISION_HEADER: Final = "x-filekv-revision"
KEYS_HEADER: Final = "x-filekv-keys"


def decode_lines(data: bytes, response: httpx.Response) -> Iterator[Entry]:
    """The entries of whole JSON Lines (one object a line: ``key``, ``value``, ``revision``);
    a line that is not one is a ``FilekvError`` naming the ``response`` it came in."""
    for line in data.splitlines():
        with translate_decode_errors(response):
            item = json.loads(line)
            entry = Entry(item["key"], item["value"], item["revision"])
        yield entry


class _Lines:
    """The answer's head, and its body cut into whole lines as the pieces arrive."""

    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        if REVISION_HEADER not in response.headers or KEYS_HEADER not in response.headers:
            raise not_filekv(response, "no X-Filekv-Revision and X-Filekv-Keys headers")
        with translate_decode_errors(response):
            self.revision = int(response.headers[REVISION_HEADER])
            self.keys = int(response.headers[KEYS_HEADER])
        self.received = 0  # lines so far
        self._pending = b""  # the start of a line whose end has not arrived yet

    def _take(self, data: bytes) -> tuple[bytes, int] | None:
        """The whole lines ``data`` completes and how many they are (None: none yet)."""
        data = self._pending + data
        cut = data.rfind(b"\n") + 1
        self._pending = data[cut:]
        if not cut:
            return None
        count = data.count(b"\n", 0, cut)
        self.received += count
        return data[:cut], count

    def _finish(self) -> None:
        """Raise ``Unavailable`` if the body ended before the lines the head announced."""
        if self._pending or self.received != self.keys:
            raise Unavailable(
                f"the export was cut short: {self.received} of {self.keys} lines received"
            )


class ExportStream(_Lines):
    """One export being received: ``revision``, ``keys`` (lines expected), then the lines."""

    def chunks(self) -> Iterator[tuple[bytes, int]]:
        """The body as it arrives, in whole lines: (bytes, how many lines they hold)."""
        with translate_transport_errors():
            for data in self._response.iter_bytes():
                if (lines := self._take(data)) is not None:
                    yield lines
        self._finish()

    def __iter__(self) -> Iterator[Entry]:
        """Every key with its value and revision, in key order."""
        for data, _count in self.chunks():
            yield from decode_lines(data, self._response)


class AsyncExportStream(_Lines):
    """``ExportStream`` for asyncio: ``async for entry in stream``, ``async for data, count in
    stream.chunks()``."""

    async def chunks(self) -> AsyncIterator[tuple[bytes, int]]:
        """The body as it arrives, in whole lines: (bytes, how many lines they hold)."""
        with translate_transport_errors():
            async for data in self._response.aiter_bytes():
                if (lines := self._take(data)) is not None:
                    yield lines
        self._finish()

    async def __aiter__(self) -> AsyncIterator[Entry]:
        """Every key with its value and revision, in key order."""
        async for data, _count in self.chunks():
            for entry in decode_lines(data, self._response):
                yield entry
