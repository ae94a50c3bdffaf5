"""Login against a real ``filekv serve``.

Forgeries get nothing, logout revokes, users survive SIGKILL, failed logins are throttled, and no
secret reaches the server's log.
"""

from __future__ import annotations

import signal

import httpx
from serverproc import Server

PASSWORD = "correct horse battery"


def _login(
    client: httpx.Client, username: str = "alice", password: str = PASSWORD
) -> httpx.Response:
    return client.post("/auth/token", data={"username": username, "password": password})


def _bearer(response: httpx.Response) -> dict[str, str]:
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


def test_auth_e2e_forged_identities_get_nothing(server: Server) -> None:
    with server.client() as client:
        client.post("/auth/register", json={"username": "alice", "password": PASSWORD})
        alice = _bearer(_login(client))
        for forged in [{"X-User": "alice"}, {"Cookie": "user=alice"}, {"Authorization": "alice"}]:
            assert client.get("/auth/me", headers=forged).status_code == 401
            assert client.post("/transactions", headers=forged).status_code == 401
        # alice's real session is untouched by all that
        assert client.get("/auth/me", headers=alice).json() == {"username": "alice"}


def test_auth_e2e_logout_kills_the_token_only(server: Server) -> None:
    with server.client() as client:
        client.post("/auth/register", json={"username": "alice", "password": PASSWORD})
        first, second = _bearer(_login(client)), _bearer(_login(client))
        assert client.post("/auth/logout", headers=first).status_code == 204
        assert client.get("/auth/me", headers=first).status_code == 401
        assert client.post("/transactions", headers=first).status_code == 401
        assert client.get("/auth/me", headers=second).status_code == 200


def test_auth_e2e_users_survive_sigkill_tokens_do_not(server: Server) -> None:
    with server.client() as client:
        for name in ["alice", "bob"]:
            r = client.post("/auth/register", json={"username": name, "password": PASSWORD})
            assert r.status_code == 201
        old = _bearer(_login(client))
    server.restart(signal.SIGKILL)
    with server.client() as client:
        assert client.get("/auth/me", headers=old).status_code == 401
        assert _login(client, "bob").status_code == 200
        r = client.post("/auth/register", json={"username": "alice", "password": PASSWORD})
        assert r.status_code == 409
    assert (server.data_dir / "users.json").stat().st_mode & 0o777 == 0o600


def test_auth_e2e_failed_logins_are_throttled_and_secrets_stay_out_of_the_log(
    server: Server,
) -> None:
    with server.client() as client:
        client.post("/auth/register", json={"username": "alice", "password": PASSWORD})
        statuses = [_login(client, password="not the password").status_code for _ in range(6)]
        assert statuses == [401] * 5 + [429]
        r = _login(client)
        assert r.status_code == 429
        assert int(r.headers["Retry-After"]) >= 1
        # another user is not affected
        client.post("/auth/register", json={"username": "bob", "password": PASSWORD})
        assert _login(client, "bob").status_code == 200
    log = server.log()
    assert "POST /auth/token" in log  # the log is being read
    for secret in ["$argon2", PASSWORD, "not the password"]:
        assert secret not in log
