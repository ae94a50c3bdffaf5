"""``auth_mode``: which ``/keys`` requests need a login, and the order of checks."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

Login = Callable[..., dict[str, str]]
FORGED = {"Authorization": "Bearer not-a-real-token"}

REQUESTS = [
    ("PUT", "/keys/k", {"value": "v"}, "write"),
    ("DELETE", "/keys/k", None, "write"),
    ("GET", "/keys/k", None, "read"),
    ("GET", "/keys", None, "read"),
]


@pytest.mark.parametrize(("method", "path", "body", "kind"), REQUESTS)
@pytest.mark.parametrize("mode", ["transactions", "writes", "all"])
def test_auth_mode_anonymous_access(
    make_client: Callable[..., TestClient],
    mode: str,
    method: str,
    path: str,
    body: dict[str, str] | None,
    kind: str,
) -> None:
    client = make_client(auth_mode=mode)
    needs_login = mode == "all" or (mode == "writes" and kind == "write")
    answer = client.request(method, path, json=body)
    if needs_login:
        assert answer.status_code == 401
        assert answer.headers["www-authenticate"] == "Bearer"
    else:
        assert answer.status_code in {200, 201, 404}


@pytest.mark.parametrize(("method", "path", "body", "kind"), REQUESTS)
@pytest.mark.parametrize("mode", ["writes", "all"])
def test_auth_mode_logged_in_access(
    make_client: Callable[..., TestClient],
    login: Login,
    mode: str,
    method: str,
    path: str,
    body: dict[str, str] | None,
    kind: str,
) -> None:
    client = make_client(auth_mode=mode)
    headers = login(client)
    assert client.request(method, path, json=body, headers=headers).status_code in {200, 201, 404}


@pytest.mark.parametrize("mode", ["writes", "all"])
def test_auth_mode_forged_token_is_401(make_client: Callable[..., TestClient], mode: str) -> None:
    client = make_client(auth_mode=mode)
    assert client.put("/keys/k", json={"value": "v"}, headers=FORGED).status_code == 401


def test_auth_mode_writes_checks_login_before_lock(
    make_client: Callable[..., TestClient], login: Login
) -> None:
    client = make_client(auth_mode="writes")
    client.post("/transactions", headers=login(client, "alice"))
    assert client.put("/keys/k", json={"value": "v"}).status_code == 401
    assert (
        client.put("/keys/k", json={"value": "v"}, headers=login(client, "bob")).status_code == 423
    )


def test_auth_mode_transactions_rejects_bad_token_even_when_nothing_open(
    client: TestClient,
) -> None:
    # A token that is sent is checked, so an expired one is heard about (401) rather than the
    # write going through as anonymous; without a header the write needs no login.
    assert client.put("/keys/k", json={"value": "v"}, headers=FORGED).status_code == 401
    assert client.get("/keys/k", headers=FORGED).status_code == 401
    assert client.get("/keys/k").status_code == 404
    assert client.put("/keys/k", json={"value": "v"}).status_code == 201


def test_auth_mode_transactions_forged_token_while_locked_is_401(
    client: TestClient, login: Login
) -> None:
    client.post("/transactions", headers=login(client))
    assert client.put("/keys/k", json={"value": "v"}, headers=FORGED).status_code == 401
    assert client.get("/keys/k", headers=FORGED).status_code == 401


@pytest.mark.parametrize(
    "forgery",
    [
        {"cookies": {"user": "alice"}},
        {"headers": {"X-User": "alice"}},
        {"headers": {"Authorization": "alice"}},
    ],
)
def test_auth_forged_identity_gets_nothing(
    client: TestClient, login: Login, forgery: dict[str, dict[str, str]]
) -> None:
    alice = login(client, "alice")
    client.post("/transactions", headers=alice)
    client.put("/keys/k", json={"value": "staged"}, headers=alice)
    client.cookies.update(forgery.get("cookies", {}))
    headers = forgery.get("headers")
    assert client.post("/transactions", headers=headers).status_code == 401
    assert client.post("/transactions/commit", headers=headers).status_code == 401
    assert client.put("/keys/k", json={"value": "x"}, headers=headers).status_code in {401, 423}
    read = client.get("/keys/k", headers=headers)
    assert read.status_code in {401, 404}
    status = client.get("/transactions", headers=headers)
    if headers and "Authorization" in headers:  # a sent token is checked, however malformed
        assert status.status_code == 401
    else:
        assert status.json()["mine"] is False
