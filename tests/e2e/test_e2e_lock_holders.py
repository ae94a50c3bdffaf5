"""Who may hold the transaction lock, on a real ``filekv serve`` (the lock audit).

A user whose transaction passed ``transaction_max_seconds`` waits a cooldown before beginning
another (else a client looping on begin held the store for ever, and the writers waiting out
their 423 always lost at the deadline); a holder whose token dies (``filekv user revoke|passwd|
remove`` on the running server, or its ``token_ttl``) loses its transaction at once instead of
locking the store until its lease runs out; failed logins do not log what was typed as the name;
``Bearer  <token>`` (two spaces) is the same token on every route.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
from support.logs import records
from support.server import PASSWORD, Server, login, user_command

MakeServer = Callable[..., Server]


def _token_of(headers: dict[str, str]) -> str:
    return headers["Authorization"].removeprefix("Bearer ")


def _hog(server: Server, sessions: list[dict[str, str]], stop: threading.Event) -> list[int]:
    """The audit's client: begin whenever it can (its sessions taking turns), then keep the
    transaction busy until it is refused; every begin's status, in order."""
    begins: list[int] = []
    with server.client() as client:
        turn = 0
        while not stop.is_set():
            headers = sessions[turn % len(sessions)]
            turn += 1
            began = client.post("/transactions", headers=headers)
            begins.append(began.status_code)
            if began.status_code != 201:
                time.sleep(0.02)
                continue
            while not stop.is_set():
                written = client.put("/keys/hog", json={"value": "mine"}, headers=headers)
                if written.status_code not in (200, 201):
                    break
                time.sleep(0.05)
    return begins


def test_e2e_looping_holder_cannot_keep_the_store_from_a_waiting_writer(
    make_server: MakeServer,
) -> None:
    server = make_server(transaction_max_seconds=1.5)  # the idle lease stays 30 s
    with server.client() as client:
        laptop, phone, bob = login(client, "alice"), login(client, "alice"), login(client, "bob")
        assert client.post("/transactions", headers=laptop).status_code == 201
        stop = threading.Event()
        begins: list[int] = []
        hog = threading.Thread(
            target=lambda: begins.extend(_hog(server, [laptop, phone], stop)), daemon=True
        )
        hog.start()
        try:
            # bob, a polite writer: waits out each 423's Retry-After, for three maximum ages.
            deadline = time.monotonic() + 3 * 1.5 + 2
            refusals = []
            while time.monotonic() < deadline:
                written = client.put("/keys/bob", json={"value": "mine"}, headers=bob)
                if written.status_code != 423:
                    break
                refusals.append(written)
                retry_after = int(written.headers["retry-after"])
                assert 1 <= retry_after <= 2  # truthful: the holder's maximum age is 1.5 s
                time.sleep(retry_after)
            assert written.status_code == 201, f"bob still locked out after {len(refusals)} 423s"
            assert refusals  # he did have to wait for the hog
        finally:
            stop.set()
            hog.join(30)
    assert 429 in begins, begins

    # Now one call at a time: both sessions of alice are refused, with a JSON detail and a
    # Retry-After no longer than the cooldown (5 s: transaction_max_seconds, at least 5).
    with server.client() as client:
        for headers in (laptop, phone):
            status = client.post("/transactions", headers=headers)
            while status.status_code == 409:  # acknowledging a rolled-back one, once per session
                status = client.post("/transactions", headers=headers)
            if status.status_code == 201:  # the cooldown ran out meanwhile: end it and skip
                client.post("/transactions/rollback", headers=headers)
                continue
            assert status.status_code == 429, status.text
            assert 1 <= int(status.headers["retry-after"]) <= 5
            assert "open longer than 1.5 s (transaction_max_seconds)" in status.json()["detail"]
            assert status.headers["content-type"] == "application/json"
            time.sleep(int(status.headers["retry-after"]))
            assert client.post("/transactions", headers=headers).status_code == 201
            assert client.post("/transactions/rollback", headers=headers).json() == {"depth": 0}
    warnings = [r.get("message", "") for r in records(server.log()) if r["level"] == "WARNING"]
    assert any("no session of its user may begin another for 5 s" in m for m in warnings)


def _revoke(server: Server) -> None:
    done = user_command(server.data_dir, "revoke", "alice")
    assert done.returncode == 0, done.stderr


def _passwd(server: Server) -> None:
    done = user_command(
        server.data_dir, "passwd", "alice", "--password-stdin", stdin="another password 7\n"
    )
    assert done.returncode == 0, done.stderr


def _remove(server: Server) -> None:
    done = user_command(server.data_dir, "remove", "alice")
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("kill", [_revoke, _passwd, _remove], ids=["revoke", "passwd", "remove"])
def test_e2e_holder_whose_token_is_killed_on_the_running_server_frees_the_lock(
    make_server: MakeServer, kill: Callable[[Server], None]
) -> None:
    server = make_server()  # the lease is 30 s: waiting it out would fail the deadline below
    with server.client() as client:
        alice, bob = login(client, "alice"), login(client, "bob")
        assert client.post("/transactions", headers=alice).status_code == 201
        assert client.put("/keys/k", json={"value": "staged"}, headers=alice).status_code == 201
        assert client.put("/keys/k", json={"value": "bob"}, headers=bob).status_code == 423
        kill(server)
        deadline = time.monotonic() + 3  # users.json is polled every 0.5 s
        while (answer := client.put("/keys/k", json={"value": "bob"}, headers=bob)).status_code:
            if answer.status_code != 423:
                break
            assert time.monotonic() < deadline, "the dead login still holds the lock after 3 s"
            time.sleep(0.1)
        assert answer.status_code == 201, answer.text  # alice's staged write was never applied
        assert client.get("/keys/k").json()["value"] == "bob"
        assert client.post("/transactions/commit", headers=alice).status_code == 401
    log = server.log()
    assert any(
        "login of 'alice'" in r.get("message", "") and "rolled back" in r.get("message", "")
        for r in records(log)
    )
    assert _token_of(alice) not in log


def test_e2e_holder_whose_token_expires_frees_the_lock_without_anyone_asking(
    make_server: MakeServer,
) -> None:
    server = make_server(token_ttl=2)
    with server.client() as client:
        alice = login(client, "alice")
        started = time.monotonic()
        assert client.post("/transactions", headers=alice).status_code == 201
        client.put("/keys/k", json={"value": "staged"}, headers=alice)
        time.sleep(max(0.0, started + 3.5 - time.monotonic()))  # the token has expired
        # Nobody called the server meanwhile: the reaper ended it, and said so in the log.
        assert any(
            "login of 'alice'" in r.get("message", "") and "rolled back" in r.get("message", "")
            for r in records(server.log())
        ), server.log_tail()
        assert client.get("/transactions").json()["active"] is False
        bob = login(client, "bob")  # a fresh token: any older one has expired too
        assert client.put("/keys/k", json={"value": "bob"}, headers=bob).status_code == 201


def test_e2e_failed_login_does_not_log_an_unknown_name(server: Server) -> None:
    """People type their password into the name field: an unknown name is not logged."""
    typed = "Hunter2-MySecretPass"
    with server.client() as client:
        login(client, "alice")
        for name, password in [(typed, PASSWORD), ("alice", typed), ("ALICE", "wrong password")]:
            refused = client.post("/auth/token", data={"username": name, "password": password})
            assert refused.status_code == 401
    log = server.log()
    assert typed.lower() not in log.lower()
    messages = [r.get("message", "") for r in records(log)]
    assert "failed login for an unknown user name (20 characters)" in messages
    assert messages.count("failed login for 'alice'") == 2  # a known user, as registered


def test_e2e_bearer_with_two_spaces_is_the_same_token_on_every_route(server: Server) -> None:
    with server.client() as client:
        token = _token_of(login(client, "alice"))
        spaced = {"Authorization": f"Bearer  {token}"}
        assert client.get("/auth/me", headers=spaced).json() == {
            "username": "alice",
            "role": "user",
        }
        assert client.put("/keys/k", json={"value": "v"}, headers=spaced).status_code == 201
        assert client.post("/transactions", headers=spaced).status_code == 201
        plain = {"Authorization": f"Bearer {token}"}
        assert client.get("/transactions", headers=plain).json()["mine"] is True
        assert client.post("/auth/logout", headers=spaced).status_code == 204
        assert client.get("/auth/me", headers=plain).status_code == 401
        assert client.get("/transactions").json()["active"] is False  # logout ended it
