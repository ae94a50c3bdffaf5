"""Locks and leases: one server per data directory, a vanished transaction holder, a restart.

* A second ``filekv serve`` on a directory in use exits non-zero with a message naming the
  directory, and never answers on its port; the first server keeps serving, untouched. Once the
  first is SIGKILLed (the kernel drops its flock) a new server starts on the directory.
* A holder that stops sending requests loses its transaction after the lease
  (``--transaction-timeout 1``): others can write again, nothing it staged is visible, and its
  next transaction call is told (409) that the transaction expired.
* A server stopped (SIGTERM) or killed (SIGKILL) with a transaction open at several nested levels
  comes back with none of it visible and the lock free.

Waits are bounded polls (liveness), never timed assertions.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from support.server import Server, free_port, login, serve_command

WAIT = 60.0  # bound for a liveness poll; a healthy run needs a fraction of it


def refuses_connections(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex(("127.0.0.1", port)) != 0


def test_locks_second_server_on_same_directory_refuses_to_start(tmp_path: Path) -> None:
    first = Server(tmp_path / "data", tmp_path / "first.log", log_level="warning")
    first.start()
    try:
        with first.client() as http:
            assert http.put("/keys/kept", json={"value": "by the first"}).status_code == 201
        port = free_port()
        second = subprocess.Popen(
            serve_command(first.data_dir, port, "--fsync", "always", "--log-level", "warning"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        # While it lives it must never answer; it has to exit by itself (bounded wait).
        answered = False
        deadline = time.monotonic() + WAIT
        while second.poll() is None and time.monotonic() < deadline:
            answered = answered or not refuses_connections(port)
            time.sleep(0.05)
        if second.poll() is None:
            second.kill()
        out, err = second.communicate(timeout=WAIT)
        print(f"\nsecond server: exit {second.returncode}, stderr: {err.strip()!r}")
        assert second.returncode not in (0, None), out + err
        assert str(first.data_dir.resolve()) in err
        assert "in use" in err
        assert not answered
        assert refuses_connections(port)
        with first.client() as http:
            answer = http.get("/keys/kept")
            assert answer.status_code == 200
            assert answer.json()["value"] == "by the first"
            assert http.put("/keys/after", json={"value": "still mine"}).status_code == 201
    finally:
        first.stop(signal.SIGKILL)
    # A crashed owner leaves the LOCK file but not the lock: a new server takes over.
    third = Server(tmp_path / "data", tmp_path / "third.log", log_level="warning")
    third.start()
    try:
        with third.client() as http:
            assert http.get("/keys/after").json()["value"] == "still mine"
    finally:
        third.stop()


def _put_until_unlocked(http: httpx.Client, key: str, value: str) -> tuple[httpx.Response, int]:
    """Retry a write refused with 423 until it goes through (bounded); the answer and 423 count."""
    locked = 0
    deadline = time.monotonic() + WAIT
    while True:
        answer = http.put(f"/keys/{key}", json={"value": value})
        if answer.status_code != 423 or time.monotonic() > deadline:
            return answer, locked
        locked += 1
        retry_after = answer.headers.get("Retry-After", "")
        assert retry_after.isdigit(), answer.headers
        time.sleep(0.1)


def test_locks_lease_rolls_back_a_vanished_holder(tmp_path: Path) -> None:
    data, log = tmp_path / "data", tmp_path / "server.log"
    server = Server(data, log, "--transaction-timeout", "1", log_level="warning")
    server.start()
    try:
        with server.client() as holder, server.client() as other:
            assert other.put("/keys/lease/base", json={"value": "committed"}).status_code == 201
            token = login(holder, "holder")
            assert holder.post("/transactions", headers=token).json() == {"depth": 1}
            holder.put("/keys/lease/base", json={"value": "staged-1"}, headers=token)
            holder.put("/keys/lease/new", json={"value": "staged-1"}, headers=token)
            assert holder.post("/transactions", headers=token).json() == {"depth": 2}
            holder.put("/keys/lease/deep", json={"value": "staged-2"}, headers=token)
            assert holder.delete("/keys/lease/base", headers=token).status_code == 204
            # The holder now vanishes: no more requests from it until the end.
            first = other.put("/keys/lease/other", json={"value": "blocked?"})
            answer, locked = _put_until_unlocked(other, "lease/other", "after the lease")
            print(f"\nlease: first write by another client {first.status_code}, {locked} x 423")
            assert first.status_code in (423, 201)  # 201 only if the machine stalled over 1 s
            assert answer.status_code in (200, 201), answer.text
            assert other.get("/transactions").json()["active"] is False
            assert other.get("/keys/lease/base").json()["value"] == "committed"
            for key in ("lease/new", "lease/deep"):
                assert other.get(f"/keys/{key}").status_code == 404
            assert other.get("/keys", params={"value": "staged-1"}).json()["keys"] == []
            # The holder comes back: it is told its work was dropped, and nothing is applied.
            late = holder.post("/transactions/commit", headers=token)
            assert late.status_code == 409
            assert "expired" in late.json()["detail"]
            assert holder.get("/keys/lease/new").status_code == 404
            assert holder.post("/transactions", headers=token).json() == {"depth": 1}
            assert holder.post("/transactions/commit", headers=token).json()["applied"] == 0
    finally:
        server.stop()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_locks_restart_with_transaction_open_leaves_nothing(tmp_path: Path, sig: int) -> None:
    server = Server(tmp_path / "data", tmp_path / "server.log", log_level="warning")
    server.start()
    try:
        with server.client() as http:
            assert http.put("/keys/tx/base", json={"value": "committed"}).status_code == 201
            assert http.put("/keys/tx/doomed", json={"value": "committed"}).status_code == 201
            token = login(http, "holder")
            assert http.post("/transactions", headers=token).status_code == 201
            http.put("/keys/tx/base", json={"value": "staged-1"}, headers=token)
            http.put("/keys/tx/new1", json={"value": "staged-1"}, headers=token)
            assert http.post("/transactions", headers=token).json() == {"depth": 2}
            http.put("/keys/tx/new2", json={"value": "staged-2"}, headers=token)
            assert http.delete("/keys/tx/doomed", headers=token).status_code == 204
            assert http.post("/transactions", headers=token).json() == {"depth": 3}
            http.put("/keys/tx/new3", json={"value": "staged-3"}, headers=token)
            assert http.get("/keys/tx/new3", headers=token).json()["value"] == "staged-3"
        code = server.stop(sig)
        if sig == signal.SIGTERM:
            assert code == 0, server.log()  # a graceful shutdown exits 0
        server.start()
        with server.client() as http:
            assert http.get("/transactions").json()["active"] is False
            assert http.get("/keys/tx/base").json()["value"] == "committed"
            assert http.get("/keys/tx/doomed").json()["value"] == "committed"
            for key in ("tx/new1", "tx/new2", "tx/new3"):
                assert http.get(f"/keys/{key}").status_code == 404
            assert http.get("/keys", params={"prefix": "tx/"}).json()["keys"] == [
                "tx/base",
                "tx/doomed",
            ]
            # The lock is free: anyone writes, and a new session can open a transaction.
            assert http.put("/keys/tx/after", json={"value": "free"}).status_code == 201
            token = login(http, "holder")
            assert http.post("/transactions", headers=token).json() == {"depth": 1}
            assert http.post("/transactions/rollback", headers=token).json() == {"depth": 0}
    finally:
        with contextlib.suppress(Exception):
            server.stop()
