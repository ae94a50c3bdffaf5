"""``DELETE /transactions`` (an admin breaks the lock), roles over HTTP, and
``transaction_max_seconds`` through the app (issue 11). In-process, with ``TestClient``."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from support.server import PASSWORD

from filekv.service import users as users_module
from filekv.service.auth import AuthService

Headers = dict[str, str]
Login = Callable[..., Headers]

BROKEN = "an admin ended your transaction: it was rolled back; nothing of it was applied"


def _add_admin(client: TestClient, name: str = "root") -> Headers:
    """An admin, as ``filekv user add NAME --admin`` makes one (never over HTTP), logged in."""
    auth: AuthService = client.app.state.auth  # type: ignore[attr-defined]
    auth.add_user(name, PASSWORD, role="admin")
    answer = client.post("/auth/token", data={"username": name, "password": PASSWORD})
    assert answer.status_code == 200, answer.text
    return {"Authorization": f"Bearer {answer.json()['access_token']}"}


@pytest.fixture
def root(client: TestClient) -> Headers:
    return _add_admin(client)


@pytest.fixture
def alice(client: TestClient, login: Login) -> Headers:
    return login(client, "alice")


@pytest.fixture
def bob(client: TestClient, login: Login) -> Headers:
    return login(client, "bob")


def _state(client: TestClient, headers: Headers | None = None) -> dict[str, object]:
    state: dict[str, object] = client.get("/transactions", headers=headers).json()
    return state


CALLERS: list[object] = [
    pytest.param("anonymous", 401, id="anonymous"),
    pytest.param("garbage token", 401, id="garbage-token"),
    pytest.param("basic auth", 401, id="basic-auth"),
    pytest.param("another user", 403, id="user"),
    pytest.param("the holder", 403, id="holder-itself"),
    pytest.param("admin", 200, id="admin"),
]


@pytest.mark.parametrize(("caller", "status"), CALLERS)
def test_break_lock_status_by_caller(
    client: TestClient, root: Headers, alice: Headers, bob: Headers, caller: str, status: int
) -> None:
    headers: Headers | None = {
        "anonymous": None,
        "garbage token": {"Authorization": "Bearer garbage!!"},
        "basic auth": {"Authorization": "Basic cm9vdDpyb290"},
        "another user": bob,
        "the holder": alice,
        "admin": root,
    }[caller]
    assert client.post("/transactions", headers=alice).status_code == 201
    answer = client.delete("/transactions", headers=headers)
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/json"
    if status == 200:
        assert answer.json() == {"rolled_back": True, "depth": 1}
        assert _state(client)["active"] is False
        return
    assert isinstance(answer.json()["detail"], str)
    if status == 401:
        assert answer.headers["www-authenticate"] == "Bearer"
    else:
        assert answer.json() == {
            "detail": "only an admin may do this",
            "request_id": answer.headers["x-request-id"],
        }
    assert _state(client, alice)["mine"] is True  # refused: the holder keeps its transaction


def test_break_lock_with_none_open(client: TestClient, root: Headers) -> None:
    answer = client.delete("/transactions", headers=root)
    assert (answer.status_code, answer.json()) == (200, {"rolled_back": False})


def test_break_lock_of_a_holder_that_keeps_renewing(
    client: TestClient, root: Headers, alice: Headers, bob: Headers
) -> None:
    client.post("/transactions", headers=alice)
    client.put("/keys/balance", json={"value": "100"}, headers=alice)
    client.post("/transactions", headers=alice)
    for _ in range(5):  # busy: every call renews the lease
        assert _state(client, alice)["mine"] is True
        assert client.put("/keys/balance", json={"value": "1"}, headers=bob).status_code == 423
    answer = client.delete("/transactions", headers=root)
    assert answer.json() == {"rolled_back": True, "depth": 2}
    assert client.get("/keys/balance").status_code == 404  # nothing staged was applied
    assert client.post("/transactions", headers=bob).json() == {"depth": 1}  # the lock is free


def test_break_lock_admin_may_end_its_own(client: TestClient, root: Headers) -> None:
    client.post("/transactions", headers=root)
    assert client.delete("/transactions", headers=root).json() == {"rolled_back": True, "depth": 1}
    told = client.post("/transactions/commit", headers=root)
    assert told.json() == {"detail": BROKEN, "request_id": told.headers["x-request-id"]}


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("post", "/transactions"),
        ("post", "/transactions/commit"),
        ("post", "/transactions/rollback"),
        ("post", "/transactions/release"),
    ],
)
def test_break_lock_former_holder_is_told_409_once(
    client: TestClient, root: Headers, alice: Headers, method: str, path: str
) -> None:
    client.post("/transactions", headers=alice)
    client.put("/keys/k", json={"value": "staged"}, headers=alice)
    client.delete("/transactions", headers=root)
    # Each write it believes it stages is refused, and goes nowhere, until it acknowledges.
    for _ in range(2):
        refused = client.put("/keys/k", json={"value": "after"}, headers=alice)
        assert refused.status_code == 409
        assert refused.json()["detail"].startswith(BROKEN + ", nor this write")
        batch = client.post("/batch", json={"ops": [{"op": "delete", "key": "k"}]}, headers=alice)
        assert batch.status_code == 409
    told = client.request(method.upper(), path, headers=alice)
    assert (told.status_code, told.json()) == (
        409,
        {"detail": BROKEN, "request_id": told.headers["x-request-id"]},
    )
    assert client.get("/keys/k").status_code == 404
    # Acknowledged: its writes are ordinary ones again.
    assert client.put("/keys/k", json={"value": "direct"}, headers=alice).status_code == 201


def test_break_lock_logs_a_warning_naming_both_users(
    client: TestClient, root: Headers, alice: Headers, caplog: pytest.LogCaptureFixture
) -> None:
    client.post("/transactions", headers=alice)
    with caplog.at_level(logging.WARNING):
        client.delete("/transactions", headers=root)
    (record,) = [r for r in caplog.records if r.name == "filekv.service.transactions"]
    assert record.levelno == logging.WARNING
    assert "admin 'root' broke the transaction lock of 'alice'" in record.getMessage()
    for token_header in (root, alice):
        token = token_header["Authorization"].removeprefix("Bearer ")
        assert token not in caplog.text


def test_auth_me_says_the_role(client: TestClient, root: Headers, alice: Headers) -> None:
    assert client.get("/auth/me", headers=root).json() == {"username": "root", "role": "admin"}
    assert client.get("/auth/me", headers=alice).json() == {"username": "alice", "role": "user"}


@pytest.mark.parametrize(
    "body",
    [
        {"username": "eve", "password": PASSWORD, "role": "admin"},
        {"username": "eve", "password": PASSWORD, "admin": True},
        {"username": "eve", "password": PASSWORD, "roles": ["admin"]},
    ],
)
def test_registration_never_makes_an_admin(client: TestClient, body: dict[str, object]) -> None:
    assert client.post("/auth/register", json=body).status_code == 422  # no such field
    plain = {k: body[k] for k in ("username", "password")}
    assert client.post("/auth/register", json=plain).status_code == 201
    eve = client.post("/auth/token", data={"username": "eve", "password": PASSWORD}).json()
    headers = {"Authorization": f"Bearer {eve['access_token']}"}
    assert client.get("/auth/me", headers=headers).json() == {"username": "eve", "role": "user"}
    assert client.delete("/transactions", headers=headers).status_code == 403


@pytest.mark.parametrize(
    "forged",
    [
        {"X-Role": "admin"},
        {"X-User": "root"},
        {"Cookie": "role=admin"},
    ],
)
def test_break_lock_identity_comes_from_the_token_only(
    client: TestClient, root: Headers, alice: Headers, forged: Headers
) -> None:
    client.post("/transactions", headers=alice)
    assert client.delete("/transactions", headers=forged).status_code == 401
    assert client.delete("/transactions", headers={**alice, **forged}).status_code == 403
    assert _state(client)["active"] is True


def test_break_lock_demoted_admin_is_refused_within_the_reload_interval(
    client: TestClient, root: Headers, alice: Headers
) -> None:
    data_dir = client.app.state.settings.data_dir  # type: ignore[attr-defined]
    cli = AuthService(data_dir, token_ttl=60, registration="closed")  # `filekv user set-role`
    client.post("/transactions", headers=alice)
    cli.set_role("root", "user")
    time.sleep(users_module.RELOAD_INTERVAL + 0.1)
    refused = client.delete("/transactions", headers=root)
    assert (refused.status_code, refused.json()) == (
        403,
        {"detail": "only an admin may do this", "request_id": refused.headers["x-request-id"]},
    )
    assert client.get("/auth/me", headers=root).json()["role"] == "user"
    assert _state(client, alice)["mine"] is True
    cli.set_role("root", "admin")  # promoted while logged in: the same token has the right
    time.sleep(users_module.RELOAD_INTERVAL + 0.1)
    assert client.delete("/transactions", headers=root).json() == {"rolled_back": True, "depth": 1}


def test_transaction_max_seconds_ends_a_busy_holder_through_the_app(
    make_client: Callable[..., TestClient], login: Login
) -> None:
    client = make_client(transaction_timeout=30, transaction_max_seconds=0.6)
    alice, bob = login(client, "alice"), login(client, "bob")
    client.post("/transactions", headers=alice)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # renewing all the time; the lease alone would last 30 s
        answer = client.put("/keys/k", json={"value": "v"}, headers=alice)
        if answer.status_code != 200 and answer.status_code != 201:
            break
        time.sleep(0.05)
    assert answer.status_code == 409, answer.text
    assert "open longer than 0.6 s (transaction_max_seconds)" in answer.json()["detail"]
    assert client.post("/transactions", headers=bob).status_code == 201
    assert client.get("/keys/k").status_code == 404
