"""A value made of encoded records, torn on disk, cannot keep the real server from starting.

Issue 17, finding 2, end to end: a client PUTs a value whose bytes are valid encoded records (as
format version 1 wrote them, and version 2 with a guessed marker); a power cut tears its write
(here: the segment cut inside the value while the server is stopped). Before format version 2
the server then refused to start (CorruptStore: "damaged record followed by a good one").
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from support.planted import planted_text
from support.server import Server


def _last_segment(data_dir: Path) -> Path:
    return sorted(data_dir.glob("*.seg"))[-1]


@pytest.mark.parametrize("cut_fraction", [0.1, 0.5, 0.97])
def test_torn_planted_value_is_dropped_and_the_server_starts(
    make_server: Callable[..., Server], cut_fraction: float
) -> None:
    server = make_server()  # started
    planted = planted_text()
    value = (planted * (65536 // len(planted) + 1))[:65536]
    with server.client() as http:
        assert http.put("/keys/acknowledged", json={"value": "must survive"}).status_code == 201
        before = os.path.getsize(_last_segment(server.data_dir))
        assert http.put("/keys/attack", json={"value": value}).status_code == 201
    assert server.stop() == 0
    segment = _last_segment(server.data_dir)
    after = os.path.getsize(segment)
    os.truncate(segment, before + int((after - before) * cut_fraction))
    server.start()
    try:
        with server.client() as http:
            assert http.get("/keys/acknowledged").json()["value"] == "must survive"
            assert http.get("/keys/attack").status_code == 404
            assert http.get("/stats").json()["recovered_truncations"] == 1
    finally:
        server.stop()
