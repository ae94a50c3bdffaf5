"""``ExportStream``: the answer of ``GET /export`` as it streams in (``Client.export``).

The server sends ``X-Filekv-Keys`` with the number of lines a complete answer has; a stream that
ends short of it (the server's ``export_time_limit``, or the connection cut) raises
``Unavailable`` instead of passing for a smaller export.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Final

import httpx

from filekv.client._errors import Unavailable, translate_transport_errors
from filekv.client._models import Entry

REVISION_HEADER: Final = "x-filekv-revision"
KEYS_HEADER: Final = "x-filekv-keys"


class ExportStream:
    """One export being received: ``revision``, ``keys`` (lines expected), then the lines."""

    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        self.revision = int(response.headers.get(REVISION_HEADER, "0"))
        self.keys = int(response.headers.get(KEYS_HEADER, "0"))
        self.received = 0  # lines so far

    def chunks(self) -> Iterator[tuple[bytes, int]]:
        """The body as it arrives, in whole lines: (bytes, how many lines they hold)."""
        pending = b""
        with translate_transport_errors():
            for data in self._response.iter_bytes():
                data = pending + data
                cut = data.rfind(b"\n") + 1
                pending = data[cut:]
                if cut:
                    count = data.count(b"\n", 0, cut)
                    self.received += count
                    yield data[:cut], count
        if pending or self.received != self.keys:
            raise Unavailable(
                f"the export was cut short: {self.received} of {self.keys} lines received"
            )

    def __iter__(self) -> Iterator[Entry]:
        """Every key with its value and revision, in key order."""
        for data, _count in self.chunks():
            for line in data.splitlines():
                item = json.loads(line)
                yield Entry(item["key"], item["value"], item["revision"])
