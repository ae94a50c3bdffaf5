"""Writes racing the transaction, over real sockets against a real server (issue 17, finding 5).

The attack: a PUT sent into a transaction stops halfway through its body; the holder (on
another connection) rolls back or commits; then the rest of the body arrives. Before the fix the
route checked the lock, read the body and checked again: the write found no transaction and went
straight to the store, ``201 "staged": false``, committed for everyone, after the rollback (or
after the commit, instead of inside it). Now the transaction the write started in is named by a
ticket and the write is refused with 409 when it is not the open one any more.

Each test waits a moment after the first half of the body so that the server has run the route
up to reading the body; the wait only makes the race happen, nothing asserts on time.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import httpx
import orjson
import pytest
from support.server import Server

PASSWORD = "write races password"
SETTLE = 0.5  # seconds for the server to reach the body read after the first bytes


def _login(client: httpx.Client, username: str) -> dict[str, str]:
    client.post("/auth/register", json={"username": username, "password": PASSWORD})
    answer = client.post("/auth/token", data={"username": username, "password": PASSWORD})
    assert answer.status_code == 200, answer.text
    return {"Authorization": f"Bearer {answer.json()['access_token']}"}


class HalfSentPut:
    """A ``PUT /keys/{key}`` on its own connection, sent up to ``split`` bytes of its body."""

    def __init__(self, server: Server, key: str, value: str, headers: dict[str, str]) -> None:
        body = orjson.dumps({"value": value})
        lines = [
            f"PUT /keys/{key} HTTP/1.1",
            f"Host: 127.0.0.1:{server.port}",
            "Content-Type: application/json",
            f"Content-Length: {len(body)}",
            *(f"{name}: {text}" for name, text in headers.items()),
            "Connection: close",
        ]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode()
        self.sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        self.sock.sendall(head + body[:10])
        self.rest = body[10:]
        time.sleep(SETTLE)

    def finish(self) -> tuple[int, dict[str, object]]:
        """Send the rest of the body; the status and the JSON body of the answer."""
        self.sock.sendall(self.rest)
        chunks = []
        while chunk := self.sock.recv(65536):
            chunks.append(chunk)
        self.sock.close()
        head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        return status, orjson.loads(body)


@pytest.fixture
def race_server(make_server: Callable[..., Server]) -> Server:
    return make_server(log_level="warning")


def test_write_races_put_during_rollback_is_refused_not_committed(race_server: Server) -> None:
    with race_server.client() as client:
        alice = _login(client, "alice")
        assert client.post("/transactions", headers=alice).status_code == 201
        put = HalfSentPut(race_server, "raced", "after rollback?", alice)
        assert client.post("/transactions/rollback", headers=alice).json() == {"depth": 0}
        status, body = put.finish()
        assert status == 409, body
        assert "ended while this write was received" in str(body["detail"])
        assert client.get("/keys/raced").status_code == 404  # for everyone, the holder too
        assert client.get("/keys/raced", headers=alice).status_code == 404
        assert client.get("/transactions").json()["active"] is False


def test_write_races_put_during_commit_is_refused_not_applied_after_it(
    race_server: Server,
) -> None:
    with race_server.client() as client:
        alice = _login(client, "alice")
        assert client.post("/transactions", headers=alice).status_code == 201
        staged = client.put("/keys/inside", json={"value": "staged"}, headers=alice)
        assert staged.json()["staged"] is True
        put = HalfSentPut(race_server, "raced", "after commit?", alice)
        assert client.post("/transactions/commit", headers=alice).json() == {
            "depth": 0,
            "applied": 1,
        }
        status, body = put.finish()
        assert status == 409, body
        assert client.get("/keys/inside").json()["value"] == "staged"
        assert client.get("/keys/raced").status_code == 404


def test_write_races_put_during_nested_rollback_is_not_staged_in_the_outer_level(
    race_server: Server,
) -> None:
    with race_server.client() as client:
        alice = _login(client, "alice")
        client.post("/transactions", headers=alice)
        client.put("/keys/outer", json={"value": "1"}, headers=alice)
        assert client.post("/transactions", headers=alice).json() == {"depth": 2}
        put = HalfSentPut(race_server, "inner", "rolled back?", alice)
        assert client.post("/transactions/rollback", headers=alice).json() == {"depth": 1}
        status, body = put.finish()
        assert status == 409, body
        assert "changed level" in str(body["detail"])
        assert client.post("/transactions/commit", headers=alice).json()["applied"] == 1
        assert client.get("/keys/outer").json()["value"] == "1"
        assert client.get("/keys/inner").status_code == 404


def test_write_races_put_started_before_another_clients_begin_is_locked(
    race_server: Server,
) -> None:
    with race_server.client() as client:
        alice = _login(client, "alice")
        put = HalfSentPut(race_server, "early", "before the lock", {})
        assert client.post("/transactions", headers=alice).status_code == 201
        status, body = put.finish()
        assert status == 423, body
        assert client.post("/transactions/rollback", headers=alice).json() == {"depth": 0}
        assert client.get("/keys/early").status_code == 404
