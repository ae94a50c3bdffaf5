"""A real ``filekv serve``: two clients and the lock, the lease, forged identities, restarts."""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from support.server import Server

MakeServer = Callable[..., Server]  # the ``make_server`` fixture
PASSWORD = "correct horse battery"


@contextlib.contextmanager
def session(server: Any, username: str) -> Iterator[httpx.Client]:
    """A client logged in as ``username`` (a new session each call)."""
    with server.client() as http:
        yield log_in(http, username)


def log_in(http: httpx.Client, username: str) -> httpx.Client:
    http.post("/auth/register", json={"username": username, "password": PASSWORD})
    token = http.post("/auth/token", data={"username": username, "password": PASSWORD})
    assert token.status_code == 200, token.text
    http.headers["Authorization"] = f"Bearer {token.json()['access_token']}"
    return http


def value_of(http: httpx.Client, key: str) -> str | None:
    answer = http.get(f"/keys/{key}")
    return answer.json()["value"] if answer.status_code == 200 else None


def test_e2e_transactions_two_clients_and_the_lock(make_server: MakeServer) -> None:
    server = make_server()
    with session(server, "alice") as alice, session(server, "bob") as bob, server.client() as anon:
        assert anon.put("/keys/shared", json={"value": "before"}).status_code == 201
        assert alice.post("/transactions").json() == {"depth": 1}
        assert alice.put("/keys/shared", json={"value": "alice-1"}).json()["staged"] is True
        for other in (bob, anon):
            refused = other.put("/keys/shared", json={"value": "other"})
            assert refused.status_code == 423
            assert int(refused.headers["retry-after"]) >= 1
            assert other.delete("/keys/missing").status_code == 423
            assert other.post("/transactions").status_code in {401, 423}
            assert value_of(other, "shared") == "before"
        assert value_of(alice, "shared") == "alice-1"

        assert alice.post("/transactions").json() == {"depth": 2}
        alice.put("/keys/shared", json={"value": "alice-2"})
        alice.put("/keys/inner", json={"value": "x"})
        assert alice.post("/transactions/rollback").json() == {"depth": 1}
        assert value_of(alice, "shared") == "alice-1"
        assert value_of(alice, "inner") is None
        alice.put("/keys/outer", json={"value": "y"})
        assert alice.post("/transactions/commit").json() == {"depth": 0, "applied": 2}

        for reader in (alice, bob, anon):
            assert value_of(reader, "shared") == "alice-1"
            assert value_of(reader, "outer") == "y"
            assert value_of(reader, "inner") is None
        assert bob.put("/keys/shared", json={"value": "bob"}).status_code == 200


def test_e2e_transactions_same_user_elsewhere_is_another_client(make_server: MakeServer) -> None:
    server = make_server()
    with session(server, "alice") as laptop, session(server, "alice") as phone:
        laptop.post("/transactions")
        assert phone.put("/keys/k", json={"value": "v"}).status_code == 423
        assert phone.post("/transactions/commit").status_code == 409
        assert phone.get("/transactions").json()["mine"] is False


def test_e2e_transactions_lease_expiry_frees_the_lock(make_server: MakeServer) -> None:
    server = make_server(transaction_timeout=0.5)
    with session(server, "alice") as alice, session(server, "bob") as bob:
        alice.post("/transactions")
        alice.put("/keys/k", json={"value": "staged"})
        assert bob.put("/keys/k", json={"value": "bob"}).status_code == 423
        time.sleep(1.2)  # alice vanished: nobody calls the server meanwhile
        assert bob.get("/transactions").json()["active"] is False
        assert bob.put("/keys/k", json={"value": "bob"}).status_code == 201
        expired = alice.post("/transactions/commit")
        assert expired.status_code == 409
        assert "expired" in expired.json()["detail"]
        assert value_of(bob, "k") == "bob"


@pytest.mark.parametrize(
    "forgery",
    [
        {"cookies": {"user": "alice"}},
        {"headers": {"X-User": "alice"}},
        {"headers": {"X-Username": "alice", "Cookie": "user=alice; session=alice"}},
        {"headers": {"Authorization": "Bearer alice"}},
    ],
)
def test_e2e_transactions_forged_identity_gets_nothing(
    make_server: MakeServer, forgery: dict[str, dict[str, str]]
) -> None:
    server = make_server()
    with session(server, "alice") as alice, server.client(**forgery) as forger:
        alice.post("/transactions")
        alice.put("/keys/secret", json={"value": "staged"})
        assert forger.post("/transactions").status_code == 401
        assert forger.post("/transactions/commit").status_code == 401
        assert forger.post("/transactions/rollback").status_code == 401
        assert forger.get("/auth/me").status_code == 401
        assert forger.put("/keys/secret", json={"value": "x"}).status_code in {401, 423}
        assert forger.get("/keys/secret").status_code in {401, 404}
        status = forger.get("/transactions")
        if "Authorization" in forgery.get("headers", {}):  # a sent token is always checked
            assert status.status_code == 401
        else:
            assert status.json()["mine"] is False
        assert alice.post("/transactions/commit").json()["applied"] == 1


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_e2e_transactions_restart_with_one_open_shows_nothing(
    make_server: MakeServer, sig: int
) -> None:
    server = make_server()
    with session(server, "alice") as alice:
        alice.put("/keys/kept", json={"value": "committed"})
        alice.post("/transactions")
        alice.put("/keys/kept", json={"value": "staged"})
        alice.put("/keys/new", json={"value": "staged"})
        alice.delete("/keys/kept")
    server.restart(sig)
    with server.client() as anon:
        assert anon.get("/transactions").json()["active"] is False
        assert value_of(anon, "kept") == "committed"
        assert value_of(anon, "new") is None
        assert anon.get("/keys").json() == {"keys": ["kept"], "next": None}
        assert anon.put("/keys/new", json={"value": "v"}).status_code == 201


def test_e2e_transactions_holders_expired_staged_key_is_gone_from_list_and_find(
    make_server: MakeServer,
) -> None:
    """The audit's steps against a real server: a staged key with a TTL, after it ran out."""
    server = make_server()
    with session(server, "alice") as alice:
        assert alice.post("/transactions").json() == {"depth": 1}
        assert alice.put("/keys/ttls", json={"value": "red", "ttl": 0.5}).status_code == 201
        assert alice.get("/keys", params={"prefix": "ttl"}).json()["keys"] == ["ttls"]
        time.sleep(0.7)
        assert alice.get("/keys/ttls").status_code == 404
        assert alice.get("/keys", params={"prefix": "ttl"}).json()["keys"] == []
        assert alice.get("/keys", params={"value": "red"}).json()["keys"] == []


@pytest.mark.parametrize("path", ["/auth/token/", "/transactions/"])
def test_e2e_trailing_slash_is_a_json_404_not_a_redirect_to_the_host_header(
    make_server: MakeServer, path: str
) -> None:
    """``curl -X POST .../auth/token/ -H 'Host: evil.example'`` answered 307 to evil.example,
    and a 307 re-posts the credentials."""
    server = make_server()
    with server.client() as http:
        answer = http.post(
            path,
            data={"username": "a", "password": "b"},
            headers={"Host": "evil.example"},
            follow_redirects=False,
        )
        assert (answer.status_code, answer.headers.get("location")) == (404, None)
        assert answer.json()["detail"] == "Not Found"
