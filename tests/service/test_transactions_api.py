"""``/transactions``: the lock, nesting, read-your-writes, the lease, and the order of checks."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from filekv.engine.transaction import MAX_DEPTH

Headers = dict[str, str]
Login = Callable[..., Headers]


@pytest.fixture
def alice(client: TestClient, login: Login) -> Headers:
    return login(client, "alice")


@pytest.fixture
def bob(client: TestClient, login: Login) -> Headers:
    return login(client, "bob")


def put(client: TestClient, key: str, value: str, headers: Headers | None = None) -> int:
    return client.put(f"/keys/{key}", json={"value": value}, headers=headers).status_code


def value_of(client: TestClient, key: str, headers: Headers | None = None) -> str | None:
    answer = client.get(f"/keys/{key}", headers=headers)
    return answer.json()["value"] if answer.status_code == 200 else None


def test_transactions_status_when_none_is_open(client: TestClient, alice: Headers) -> None:
    expected = {"active": False, "mine": False, "depth": 0, "expires_in": None}
    assert client.get("/transactions").json() == expected
    assert client.get("/transactions", headers=alice).json() == expected


def test_transactions_begin_nests_and_status_is_per_caller(
    client: TestClient, alice: Headers, bob: Headers
) -> None:
    assert client.post("/transactions", headers=alice).status_code == 201
    assert client.post("/transactions", headers=alice).json() == {"depth": 2}
    mine = client.get("/transactions", headers=alice).json()
    assert (mine["active"], mine["mine"], mine["depth"]) == (True, True, 2)
    assert 0 < mine["expires_in"] <= 30
    for other in (bob, None):
        theirs = client.get("/transactions", headers=other).json()
        assert (theirs["active"], theirs["mine"], theirs["depth"]) == (True, False, 0)


@pytest.mark.parametrize(
    "path", ["/transactions", "/transactions/commit", "/transactions/rollback"]
)
@pytest.mark.parametrize(
    "headers", [None, {"Authorization": "Bearer forged"}, {"Authorization": "Basic x"}]
)
def test_transactions_calls_without_valid_token_are_401(
    client: TestClient, path: str, headers: Headers | None
) -> None:
    answer = client.post(path, headers=headers)
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"] == "Bearer"
    assert isinstance(answer.json()["detail"], str)


def test_transactions_anonymous_begin_is_401_even_while_locked(
    client: TestClient, alice: Headers
) -> None:
    client.post("/transactions", headers=alice)
    assert client.post("/transactions").status_code == 401


@pytest.mark.parametrize("path", ["/transactions/commit", "/transactions/rollback"])
def test_transactions_commit_or_rollback_without_one_is_409(
    client: TestClient, alice: Headers, path: str
) -> None:
    assert client.post(path, headers=alice).status_code == 409


def test_transactions_commit_is_not_replayable(client: TestClient, alice: Headers) -> None:
    client.post("/transactions", headers=alice)
    assert client.post("/transactions/commit", headers=alice).json() == {"depth": 0, "applied": 0}
    assert client.post("/transactions/commit", headers=alice).status_code == 409


def test_transactions_holder_reads_its_writes_others_read_committed(
    client: TestClient, alice: Headers, bob: Headers
) -> None:
    put(client, "k", "committed")
    put(client, "gone", "committed")
    client.post("/transactions", headers=alice)
    staged = client.put("/keys/k", json={"value": "staged"}, headers=alice)
    assert staged.status_code == 200
    assert staged.json() == {
        "key": "k",
        "value": "staged",
        "revision": None,
        "expires_in": None,
        "staged": True,
    }
    assert put(client, "new", "staged", alice) == 201
    assert client.delete("/keys/gone", headers=alice).status_code == 204

    holder_view = client.get("/keys/k", headers=alice)
    assert holder_view.json() == {
        "key": "k",
        "value": "staged",
        "revision": None,
        "expires_in": None,
    }
    assert "etag" not in holder_view.headers
    assert value_of(client, "gone", alice) is None
    assert client.get("/keys", headers=alice).json()["keys"] == ["k", "new"]
    assert client.get("/keys", params={"value": "staged"}, headers=alice).json()["keys"] == [
        "k",
        "new",
    ]
    for other in (bob, None):
        assert value_of(client, "k", other) == "committed"
        assert value_of(client, "new", other) is None
        assert value_of(client, "gone", other) == "committed"
        assert client.get("/keys", headers=other).json()["keys"] == ["gone", "k"]


def test_transactions_commit_applies_every_level(client: TestClient, alice: Headers) -> None:
    client.post("/transactions", headers=alice)
    put(client, "a", "1", alice)
    client.post("/transactions", headers=alice)
    put(client, "b", "2", alice)
    answer = client.post("/transactions/commit", headers=alice)
    assert answer.json() == {"depth": 0, "applied": 2}
    assert (value_of(client, "a"), value_of(client, "b")) == ("1", "2")
    assert client.get("/keys/a").json()["revision"] is not None
    assert client.get("/transactions").json()["active"] is False


def test_transactions_rollback_undoes_innermost_level_only(
    client: TestClient, alice: Headers
) -> None:
    client.post("/transactions", headers=alice)
    put(client, "outer", "1", alice)
    client.post("/transactions", headers=alice)
    put(client, "inner", "2", alice)
    put(client, "outer", "changed", alice)
    assert client.post("/transactions/rollback", headers=alice).json() == {"depth": 1}
    assert value_of(client, "inner", alice) is None
    assert value_of(client, "outer", alice) == "1"
    assert client.post("/transactions/commit", headers=alice).json() == {"depth": 0, "applied": 1}
    assert (value_of(client, "outer"), value_of(client, "inner")) == ("1", None)


def test_transactions_rollback_to_zero_ends_and_discards(
    client: TestClient, alice: Headers
) -> None:
    client.post("/transactions", headers=alice)
    put(client, "k", "v", alice)
    assert client.post("/transactions/rollback", headers=alice).json() == {"depth": 0}
    assert client.get("/transactions").json()["active"] is False
    assert value_of(client, "k") is None
    assert client.post("/transactions/rollback", headers=alice).status_code == 409
    assert put(client, "k", "v") == 201


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("PUT", "/keys/exists", {"value": "x"}),
        ("PUT", "/keys/missing", {"value": "x"}),
        ("PUT", "/keys/" + "k" * 2000, {"value": "x"}),
        ("PUT", "/keys/missing", {"value": 12}),
        ("DELETE", "/keys/exists", None),
        ("DELETE", "/keys/missing", None),
    ],
)
@pytest.mark.parametrize("who", ["anonymous", "bob", "alice-elsewhere"])
def test_transactions_other_writers_get_423_before_anything_else(
    client: TestClient,
    alice: Headers,
    bob: Headers,
    method: str,
    path: str,
    body: dict[str, object] | None,
    who: str,
    login: Login,
) -> None:
    put(client, "exists", "v")
    headers = {"anonymous": None, "bob": bob, "alice-elsewhere": login(client, "alice")}[who]
    client.post("/transactions", headers=alice)
    answer = client.request(method, path, json=body, headers=headers)
    assert answer.status_code == 423
    assert answer.headers["retry-after"].isdigit()
    assert 1 <= int(answer.headers["retry-after"]) <= 30
    assert isinstance(answer.json()["detail"], str)
    assert value_of(client, "exists") == "v"


def test_transactions_second_begin_by_other_is_423(
    client: TestClient, alice: Headers, bob: Headers
) -> None:
    client.post("/transactions", headers=alice)
    answer = client.post("/transactions", headers=bob)
    assert answer.status_code == 423
    assert int(answer.headers["retry-after"]) >= 1
    assert client.post("/transactions/commit", headers=bob).status_code == 409


def test_transactions_holder_preconditions_apply_to_its_view(
    client: TestClient, alice: Headers
) -> None:
    revision = client.put("/keys/k", json={"value": "v"}).json()["revision"]
    client.post("/transactions", headers=alice)
    match = {"If-Match": f'"{revision}"'}
    assert client.put("/keys/k", json={"value": "w"}, headers={**alice, **match}).status_code == 200
    # now staged (no revision): the old tag no longer matches
    assert client.put("/keys/k", json={"value": "x"}, headers={**alice, **match}).status_code == 412
    create_only = {**alice, "If-None-Match": "*"}
    assert client.put("/keys/k", json={"value": "y"}, headers=create_only).status_code == 412
    assert client.put("/keys/n", json={"value": "y"}, headers=create_only).status_code == 201
    assert client.delete("/keys/missing", headers=alice).status_code == 404


def test_transactions_holder_precondition_failure_is_the_engines_mismatch(
    client: TestClient, alice: Headers
) -> None:
    revision = client.put("/keys/k", json={"value": "v"}).json()["revision"]
    client.post("/transactions", headers=alice)
    assert client.delete("/keys/k", headers=alice).status_code == 204  # staged
    stale = client.delete("/keys/k", headers={**alice, "If-Match": f'"{revision}"'})
    assert stale.status_code == 412
    assert "written in this transaction" in stale.json()["detail"]
    create = client.put("/keys/k", json={"value": "n"}, headers={**alice, "If-None-Match": "*"})
    assert create.status_code == 201  # staged delete: absent in the holder's view


def test_transactions_logout_of_holder_rolls_back_and_frees_lock(
    client: TestClient, alice: Headers, login: Login
) -> None:
    assert put(client, "k", "committed") == 201
    client.post("/transactions", headers=alice)
    assert put(client, "k", "staged", alice) == 200
    client.post("/transactions", headers=alice)  # a nested level: rolled back as well
    assert put(client, "n", "staged", alice) == 201
    assert client.post("/auth/logout", headers=alice).status_code == 204
    # At once, not after the lease: nobody could ever commit that transaction.
    idle = {"active": False, "mine": False, "depth": 0, "expires_in": None}
    assert client.get("/transactions").json() == idle
    assert value_of(client, "k") == "committed" and value_of(client, "n") is None
    assert put(client, "k", "v") == 200
    # The dead token is simply 401 (not "your transaction expired") on every call.
    for path in ("/transactions", "/transactions/commit", "/transactions/rollback"):
        assert client.post(path, headers=alice).status_code == 401
    # The same user's next login is a new client with nothing pending.
    again = login(client, "alice")
    assert client.post("/transactions", headers=again).json() == {"depth": 1}
    assert client.post("/transactions/commit", headers=again).json() == {"depth": 0, "applied": 0}
    assert value_of(client, "k") == "v"


def test_transactions_logout_of_another_session_keeps_the_holders_transaction(
    client: TestClient, alice: Headers, bob: Headers, login: Login
) -> None:
    other_alice = login(client, "alice")
    client.post("/transactions", headers=alice)
    assert put(client, "k", "staged", alice) == 201
    for headers in (bob, other_alice):
        assert client.post("/auth/logout", headers=headers).status_code == 204
    assert client.get("/transactions", headers=alice).json()["mine"] is True
    assert put(client, "k", "other") == 423
    assert client.post("/transactions/commit", headers=alice).json() == {"depth": 0, "applied": 1}
    assert value_of(client, "k") == "staged"


# -- the lease ----------------------------------------------------------------------------------

LEASE = 0.3


@pytest.fixture
def short(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client(transaction_timeout=LEASE)


def test_transactions_lease_expiry_rolls_back_and_frees_lock(
    short: TestClient, login: Login
) -> None:
    alice, bob = login(short, "alice"), login(short, "bob")
    short.post("/transactions", headers=alice)
    put(short, "k", "staged", alice)
    time.sleep(LEASE * 2)
    assert short.get("/transactions").json()["active"] is False
    assert value_of(short, "k") is None
    assert short.post("/transactions", headers=bob).status_code == 201
    assert short.post("/transactions/rollback", headers=bob).json() == {"depth": 0}


@pytest.mark.parametrize(
    "call", ["/transactions/commit", "/transactions/rollback", "/transactions", "PUT"]
)
def test_transactions_holder_learns_of_expiry_with_409_once(
    short: TestClient, call: str, login: Login
) -> None:
    alice = login(short, "alice")
    short.post("/transactions", headers=alice)
    put(short, "k", "staged", alice)
    time.sleep(LEASE * 2)
    if call == "PUT":
        answer = short.put("/keys/k", json={"value": "again"}, headers=alice)
    else:
        answer = short.post(call, headers=alice)
    assert answer.status_code == 409
    assert "expired" in answer.json()["detail"]
    assert value_of(short, "k") is None
    if call == "PUT":
        # A write does not acknowledge: the session's writes stay refused (none may go to the
        # store while it believes them staged) until a transaction call tells it, once.
        again = short.put("/keys/k", json={"value": "again"}, headers=alice)
        assert again.status_code == 409 and "expired" in again.json()["detail"]
        assert short.delete("/keys/k", headers=alice).status_code == 409
        assert short.post("/transactions/rollback", headers=alice).status_code == 409
        assert value_of(short, "k") is None
    # told once; afterwards the session is an ordinary client again
    assert short.post("/transactions", headers=alice).status_code == 201


def test_transactions_reaper_frees_lock_with_no_requests(short: TestClient, login: Login) -> None:
    alice = login(short, "alice")
    short.post("/transactions", headers=alice)
    manager = short.app.state.transactions  # type: ignore[attr-defined]
    time.sleep(LEASE * 3)
    # nothing asked the manager since; the background task must have aborted it already
    assert manager.holder is None


def test_transactions_every_holder_request_renews_lease(
    make_client: Callable[..., TestClient], login: Login
) -> None:
    # A lease of its own, longer than LEASE: renewals come every quarter lease, so a stall of
    # up to three quarters of it (a CI machine once stalled one request for 285 ms, which a
    # 0.3 s lease did not survive) cannot expire it, while the whole loop outlives two leases.
    lease = 1.0
    client = make_client(transaction_timeout=lease)
    alice = login(client, "alice")
    client.post("/transactions", headers=alice)
    for _ in range(9):
        time.sleep(lease / 4)
        assert client.get("/keys/anything", headers=alice).status_code == 404
    assert client.get("/transactions", headers=alice).json()["mine"] is True
    assert client.post("/transactions/commit", headers=alice).status_code == 200


def test_transactions_shutdown_discards_staged_writes(
    make_app: Callable[..., object], tmp_path: object, login: Login
) -> None:
    from pathlib import Path

    data_dir = Path(str(tmp_path)) / "restart"
    with TestClient(make_app(data_dir=data_dir)) as first:  # type: ignore[arg-type]
        alice = login(first, "alice")
        first.post("/transactions", headers=alice)
        put(first, "k", "staged", alice)
    with TestClient(make_app(data_dir=data_dir)) as second:  # type: ignore[arg-type]
        assert value_of(second, "k") is None
        assert second.get("/transactions").json()["active"] is False
        assert put(second, "k", "v") == 201


# -- limits (issue 17, finding 1) ---------------------------------------------------------------

OP_BYTES = 7 + 2 + 100  # one staged write of a 2-byte key and a 100-byte value, framing included


@pytest.mark.parametrize(
    "limits",
    [{"max_transaction_ops": 3}, {"max_transaction_bytes": 3 * OP_BYTES}],
    ids=["ops", "bytes"],
)
def test_transactions_write_over_a_limit_is_413_stages_nothing_and_can_still_commit(
    make_client: Callable[..., TestClient], login: Login, limits: dict[str, int]
) -> None:
    client = make_client(**limits)
    alice = login(client, "alice")
    assert put(client, "k9", "committed") == 201
    client.post("/transactions", headers=alice)
    for number in range(3):
        assert put(client, f"k{number}", "x" * 100, alice) == 201
    view = client.get("/keys", params={"prefix": "k"}, headers=alice).json()
    over = client.put("/keys/k3", json={"value": "y" * 100}, headers=alice)
    assert over.status_code == 413
    assert "limit" in over.json()["detail"]
    client.post("/transactions", headers=alice)  # a nested level counts against the same total
    assert put(client, "k4", "z" * 100, alice) == 413
    assert client.delete("/keys/k9", headers=alice).status_code == 413
    # Nothing of the refused writes was staged; the transaction is still open and usable.
    assert client.get("/keys", params={"prefix": "k"}, headers=alice).json() == view
    assert value_of(client, "k3", alice) is None and value_of(client, "k9", alice) == "committed"
    assert client.post("/transactions/rollback", headers=alice).json() == {"depth": 1}
    assert put(client, "k0", "w" * 100, alice) == 200  # a rewrite in its level replaces it
    assert client.post("/transactions/commit", headers=alice).json() == {"depth": 0, "applied": 3}
    assert [value_of(client, f"k{n}") for n in range(4)] == ["w" * 100, "x" * 100, "x" * 100, None]


def test_transactions_nesting_past_max_depth_is_409_and_opens_nothing(
    client: TestClient, alice: Headers
) -> None:
    """The attack: one begin after another on one token (42,195 levels in 40 s), every read
    then walking every level. The real limit, over HTTP: MAX_DEPTH requests."""
    for depth in range(1, MAX_DEPTH + 1):
        assert client.post("/transactions", headers=alice).json() == {"depth": depth}
    assert put(client, "deep", "v", alice) == 201
    for _ in range(3):
        refused = client.post("/transactions", headers=alice)
        assert refused.status_code == 409
        assert f"{MAX_DEPTH} levels deep" in refused.json()["detail"]
    assert client.get("/transactions", headers=alice).json()["depth"] == MAX_DEPTH
    assert value_of(client, "deep", alice) == "v"
    assert client.post("/transactions/rollback", headers=alice).json() == {"depth": MAX_DEPTH - 1}
    assert client.post("/transactions", headers=alice).json() == {"depth": MAX_DEPTH}
    assert client.post("/transactions/commit", headers=alice).json()["applied"] == 0


def test_transactions_limit_settings_are_bounded() -> None:
    from pydantic import ValidationError

    from filekv.settings import Settings

    defaults = Settings()
    assert (defaults.max_transaction_bytes, defaults.max_transaction_ops) == (64 << 20, 10_000)
    for bad in ({"max_transaction_bytes": 1 << 30}, {"max_transaction_ops": 0}):
        with pytest.raises(ValidationError):
            Settings(**bad)  # type: ignore[arg-type]


# -- the status route checks a sent token (issue 17, finding 11) -------------------------------


def test_transactions_status_with_a_bad_token_is_401(client: TestClient, login: Login) -> None:
    alice = login(client, "alice")
    forged = {"Authorization": alice["Authorization"][:-1] + "A"}
    assert client.post("/auth/logout", headers=alice).status_code == 204
    for headers in (alice, forged, {"Authorization": "Basic YWxpY2U6eA=="}):
        answer = client.get("/transactions", headers=headers)
        assert answer.status_code == 401, headers
        assert answer.headers["www-authenticate"] == "Bearer"
    assert client.get("/transactions").status_code == 200  # anonymous: still anyone's to ask
