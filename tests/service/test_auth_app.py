"""Auth through the whole app (``create_app``): forgeries get nothing, tokens gate transactions."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

PASSWORD = "correct horse battery"

FORGERIES: list[dict[str, Any]] = [
    {"cookies": {"user": "alice"}},
    {"headers": {"X-User": "alice"}},
    {"headers": {"X-Forwarded-User": "alice", "Remote-User": "alice"}},
    {"headers": {"Authorization": "Bearer alice"}},
    {"headers": {"Authorization": "Basic YWxpY2U6Y29ycmVjdCBob3JzZSBiYXR0ZXJ5"}},
    {"headers": {"Authorization": "alice"}},
]
FORGERY_IDS = ["cookie", "x-user", "proxy-headers", "bearer-name", "basic", "bare"]


def _register_and_login(client: TestClient, username: str = "alice") -> dict[str, str]:
    assert (
        client.post("/auth/register", json={"username": username, "password": PASSWORD})
    ).status_code == 201
    r = client.post("/auth/token", data={"username": username, "password": PASSWORD})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def _send(client: TestClient, method: str, path: str, forgery: dict[str, Any], **kw: Any) -> int:
    client.cookies.clear()
    client.cookies.update(forgery.get("cookies", {}))
    try:
        return client.request(method, path, headers=forgery.get("headers", {}), **kw).status_code
    finally:
        client.cookies.clear()


@pytest.mark.parametrize("forgery", FORGERIES, ids=FORGERY_IDS)
def test_auth_forged_identity_gets_401_and_no_transaction(
    client: TestClient, forgery: dict[str, Any]
) -> None:
    _register_and_login(client)  # alice exists and is logged in elsewhere
    assert _send(client, "GET", "/auth/me", forgery) == 401
    assert _send(client, "POST", "/transactions", forgery) == 401
    assert _send(client, "POST", "/transactions/commit", forgery) == 401
    assert client.get("/transactions").json()["active"] is False


@pytest.mark.parametrize("forgery", FORGERIES, ids=FORGERY_IDS)
def test_auth_forged_identity_cannot_write_when_writes_need_login(
    make_client: Callable[..., TestClient], forgery: dict[str, Any]
) -> None:
    client = make_client(auth_mode="writes")
    _register_and_login(client)
    assert _send(client, "PUT", "/keys/k", forgery, json={"value": "v"}) == 401
    assert client.get("/keys/k").status_code == 404


def test_auth_token_opens_a_transaction_and_logout_ends_its_use(client: TestClient) -> None:
    alice = _register_and_login(client)
    assert client.get("/auth/me", headers=alice).json() == {"username": "alice", "role": "user"}
    assert client.post("/transactions", headers=alice).status_code == 201
    assert client.post("/transactions/rollback", headers=alice).json() == {"depth": 0}
    assert client.post("/auth/logout", headers=alice).status_code == 204
    assert client.post("/transactions", headers=alice).status_code == 401
    assert client.get("/auth/me", headers=alice).status_code == 401


def test_auth_same_user_two_tokens_are_two_clients(client: TestClient) -> None:
    first = _register_and_login(client)
    r = client.post("/auth/token", data={"username": "alice", "password": PASSWORD})
    second = {"Authorization": f"Bearer {r.json()['access_token']}"}
    assert client.post("/transactions", headers=first).status_code == 201
    assert client.post("/transactions", headers=second).status_code == 423
    assert client.put("/keys/k", json={"value": "v"}, headers=second).status_code == 423
    assert client.post("/transactions/commit", headers=first).status_code == 200


@pytest.mark.parametrize(
    ("registration", "status"), [("open", 201), ("closed", 403)], ids=["open", "closed"]
)
def test_auth_registration_setting_reaches_the_route(
    make_client: Callable[..., TestClient], registration: str, status: int
) -> None:
    client = make_client(registration=registration)
    r = client.post("/auth/register", json={"username": "alice", "password": PASSWORD})
    assert r.status_code == status


def test_auth_token_ttl_setting_reaches_the_token(make_client: Callable[..., TestClient]) -> None:
    client = make_client(token_ttl=120)
    client.post("/auth/register", json={"username": "alice", "password": PASSWORD})
    r = client.post("/auth/token", data={"username": "alice", "password": PASSWORD})
    assert r.json()["expires_in"] == 120


def test_auth_users_survive_an_app_restart(make_app: Callable[..., Any], tmp_path: Any) -> None:
    data_dir = tmp_path / "shared"
    with TestClient(make_app(data_dir=data_dir)) as client:
        _register_and_login(client)
    with TestClient(make_app(data_dir=data_dir)) as client:
        r = client.post("/auth/token", data={"username": "alice", "password": PASSWORD})
        assert r.status_code == 200
        users_file = data_dir / "users.json"
        assert users_file.stat().st_mode & 0o777 == 0o600
