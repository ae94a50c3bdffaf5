"""TTL on a real server: expiries survive a SIGKILL, keys that expired while it was down are gone
the moment it is back, and the sweeper then writes their deletions durably."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

import pytest
from support.server import Server

MakeServer = Callable[..., Server]

SHORT = 1.5  # seconds: runs out while the server is down
LONG = 3600.0


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_ttl_survives_a_crash_and_expired_keys_are_swept_after_it(
    make_server: MakeServer, sig: int
) -> None:
    server = make_server()
    with server.client() as http:
        for i in range(20):
            ttl = SHORT if i % 3 == 0 else LONG if i % 3 == 1 else None
            body = {"value": f"v{i}"} if ttl is None else {"value": f"v{i}", "ttl": ttl}
            assert http.put(f"/keys/k{i:02d}", json=body).status_code == 201
        written_at = time.time()
        revision = http.get("/stats").json()["revision"]
    server.stop(sig)
    time.sleep(max(0.0, written_at + SHORT - time.time()))  # the short ones run out meanwhile
    server.start()
    short = [f"k{i:02d}" for i in range(20) if i % 3 == 0]
    with server.client() as http:
        for i in range(20):
            answer = http.get(f"/keys/k{i:02d}")
            if i % 3 == 0:
                assert answer.status_code == 404, answer.text  # gone before any sweep
            else:
                assert answer.status_code == 200
                left = answer.json()["expires_in"]
                if i % 3 == 1:
                    assert left is not None and LONG - 120 < left <= LONG
                else:
                    assert left is None
        assert http.get("/keys", params={"prefix": "k"}).json()["keys"] == sorted(
            f"k{i:02d}" for i in range(20) if i % 3
        )
        # The sweeper (every second) writes one expire record per key: the revision moves on.
        deadline = time.monotonic() + 30
        while http.get("/stats").json()["revision"] < revision + len(short):
            assert time.monotonic() < deadline, "the sweeper did not write the expiries"
            time.sleep(0.2)
        assert http.get("/stats").json()["revision"] == revision + len(short)
        assert http.get("/stats").json()["keys"] == 20 - len(short)
