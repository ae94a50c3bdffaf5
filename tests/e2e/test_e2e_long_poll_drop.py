"""A long poll (``GET /keys?wait=``) whose client goes away frees its watcher slot at once.

Found by a mixed-load audit: a long poll held its slot of ``watch_max_watchers`` for its whole
``wait`` (up to 60 s) after its client had closed the connection, so a few clients that time out
or give up early (or one that does it on purpose) made every ``GET /watch`` and long poll 503 for
a minute, with nobody listening. A ``/watch`` stream frees its slot at once; so does a long poll
now.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

from support.server import Server, http_client

MakeServer = Callable[..., Server]
SLOTS = 3
WAIT = 30  # seconds each dropped long poll asked to wait: far past the test's bound
FREED_WITHIN = 5.0  # seconds; the slots used to come back only after WAIT


def test_long_poll_dropped_by_its_client_frees_its_slot(make_server: MakeServer) -> None:
    server = make_server(watch_max_watchers=SLOTS)
    with http_client(server.url, timeout=10) as client:
        socks = []
        for _ in range(SLOTS):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            sock.sendall(f"GET /keys?prefix=p/&wait={WAIT} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            socks.append(sock)
        # Every slot taken: the next watcher is refused.
        deadline = time.monotonic() + 10
        while client.get("/keys", params={"prefix": "q/", "wait": 0.01}).status_code != 503:
            assert time.monotonic() < deadline, "the long polls never took their slots"
            time.sleep(0.05)
        for sock in socks:
            sock.close()
        dropped = time.monotonic()
        while True:
            answer = client.get("/keys", params={"prefix": "q/", "wait": 0.01})
            if answer.status_code == 200:
                break
            assert answer.status_code == 503, answer.text
            waited = time.monotonic() - dropped
            assert waited < FREED_WITHIN, f"slots still held {waited:.1f} s after the clients left"
            time.sleep(0.05)
        # Every slot is free again, not just one; and a long poll still answers on a change.
        with client.stream("GET", "/watch") as first, client.stream("GET", "/watch") as second:
            assert (first.status_code, second.status_code) == (200, 200)
        assert client.put("/keys/p/1", json={"value": "v"}).status_code == 201
        answer = client.get("/keys", params={"prefix": "p/", "wait": 5, "after_revision": 0})
        assert answer.status_code == 200 and answer.json()["keys"] == ["p/1"], answer.text
