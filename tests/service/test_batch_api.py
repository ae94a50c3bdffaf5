"""``POST /batch`` and ``POST /transactions/release`` through the app: answers, limits, locks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

Login = Callable[..., dict[str, str]]  # the root conftest's ``login`` fixture


def put(key: str, value: str, **extra: Any) -> dict[str, Any]:
    return {"op": "put", "key": key, "value": value, **extra}


def delete(key: str, **extra: Any) -> dict[str, Any]:
    return {"op": "delete", "key": key, **extra}


# -- POST /batch -----------------------------------------------------------------------------------


def test_batch_applies_all_at_one_revision(client: TestClient) -> None:
    client.put("/keys/old", json={"value": "x"})
    answer = client.post(
        "/batch", json={"ops": [put("a", "1"), put("b/ü", "2"), delete("old"), delete("ghost")]}
    )
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"revision": 2, "applied": 4, "staged": False}
    assert client.get("/keys/a").json()["revision"] == 2
    assert client.get("/keys/b/ü").json() == {
        "key": "b/ü",
        "value": "2",
        "revision": 2,
        "expires_in": None,
    }
    assert client.get("/keys/old").status_code == 404


def test_batch_failed_expect_is_412_naming_the_op_and_applies_nothing(client: TestClient) -> None:
    rev = client.put("/keys/a", json={"value": "1"}).json()["revision"]
    answer = client.post(
        "/batch",
        json={"ops": [put("a", "2", expect=rev), put("new", "n"), put("a2", "x", expect=rev)]},
    )
    assert answer.status_code == 412
    assert answer.json()["detail"].startswith("op 2 (key 'a2'): revision mismatch")
    assert client.get("/keys/a").json()["value"] == "1"
    assert client.get("/keys/new").status_code == 404


def test_batch_repeated_key_last_wins(client: TestClient) -> None:
    answer = client.post("/batch", json={"ops": [put("a", "1"), put("a", "2"), put("b", "x")]})
    assert answer.json() == {"revision": 1, "applied": 3, "staged": False}
    assert client.get("/keys/a").json()["value"] == "2"
    client.post("/batch", json={"ops": [put("b", "y"), delete("b")]})
    assert client.get("/keys/b").status_code == 404


def test_batch_expect_zero_means_must_not_exist(client: TestClient) -> None:
    assert client.post("/batch", json={"ops": [put("a", "1", expect=0)]}).status_code == 200
    again = client.post("/batch", json={"ops": [put("a", "2", expect=0)]})
    assert again.status_code == 412
    assert "op 0" in again.json()["detail"]
    missing = client.post("/batch", json={"ops": [delete("ghost", expect=1)]})
    assert missing.status_code == 412


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"ops": []}, ["body", "ops"]),
        ({"ops": [put("a", "1")] * 1001}, ["body", "ops"]),
        ({}, ["body", "ops"]),
        ({"ops": [{"op": "rename", "key": "a"}]}, ["body", "ops", 0]),
        ({"ops": [put("a", "1"), {"op": "put", "key": "b"}]}, ["body", "ops", 1, "put", "value"]),
        ({"ops": [put("a", "1", expect=-1)]}, ["body", "ops", 0, "put", "expect"]),
        ({"ops": [put("a", "1", extra=1)]}, ["body", "ops", 0, "put", "extra"]),
        ({"ops": [put("", "1")]}, ["body", "ops", 0, "put", "key"]),
        ({"ops": [put("b", "1"), put("k" * 1025, "1")]}, ["body", "ops", 1, "key"]),
        ({"ops": "all"}, ["body", "ops"]),
    ],
)
def test_batch_bad_body_is_422_located_at_the_op(
    client: TestClient, body: dict[str, Any], loc: list[Any]
) -> None:
    answer = client.post("/batch", json=body)
    assert answer.status_code == 422, answer.text
    locs = [item["loc"] for item in answer.json()["detail"]]
    assert loc in locs or any(found[: len(loc)] == loc for found in locs), locs
    assert len(client.get("/keys").json()["keys"]) == 0


def test_batch_unparseable_json_is_422_and_not_json_is_415(client: TestClient) -> None:
    broken = client.post(
        "/batch", content=b'{"ops": [', headers={"content-type": "application/json"}
    )
    assert broken.status_code == 422
    text = client.post("/batch", content=b"ops", headers={"content-type": "text/plain"})
    assert text.status_code == 415


def test_batch_value_over_the_limit_is_413_naming_the_op(
    make_client: Callable[..., TestClient],
) -> None:
    client = make_client(max_value_bytes=10)
    answer = client.post("/batch", json={"ops": [put("a", "ok"), put("b", "x" * 11)]})
    assert answer.status_code == 413
    assert "op 1" in answer.json()["detail"]
    assert client.get("/keys/a").status_code == 404


def test_batch_over_the_transaction_limits_is_413(make_client: Callable[..., TestClient]) -> None:
    client = make_client(max_transaction_ops=5)
    answer = client.post("/batch", json={"ops": [put(f"k{i}", "v") for i in range(6)]})
    assert answer.status_code == 413
    assert "max_transaction_ops" in answer.json()["detail"]


def test_batch_body_over_16_mib_is_refused_by_its_length(client: TestClient) -> None:
    body = b'{"ops": [' + b" " * (16 << 20) + b"]}"
    answer = client.post("/batch", content=body, headers={"content-type": "application/json"})
    assert answer.status_code == 413


def test_batch_chunked_body_over_16_mib_is_refused(client: TestClient) -> None:
    def chunks() -> Any:
        yield b'{"ops": ['
        for _ in range(17):
            yield b" " * (1 << 20)
        yield b"]}"

    answer = client.post("/batch", content=chunks(), headers={"content-type": "application/json"})
    assert answer.status_code == 413


def test_batch_of_a_thousand_ops_near_16_mib_is_accepted(
    make_client: Callable[..., TestClient],
) -> None:
    client = make_client(max_value_bytes=20_000)
    ops = [put(f"k{i:04}", "v" * 15_000) for i in range(1000)]
    body = orjson.dumps({"ops": ops})
    assert 14 << 20 < len(body) < 16 << 20
    answer = client.post("/batch", content=body, headers={"content-type": "application/json"})
    assert answer.status_code == 200, answer.text[:300]
    assert answer.json()["applied"] == 1000
    assert client.get("/keys/k0999").json()["value"] == "v" * 15_000


def test_batch_needs_a_login_when_writes_do(
    make_client: Callable[..., TestClient], login: Login
) -> None:
    client = make_client(auth_mode="writes")
    assert client.post("/batch", json={"ops": [put("a", "1")]}).status_code == 401
    headers = login(client)
    assert client.post("/batch", json={"ops": [put("a", "1")]}, headers=headers).status_code == 200


def test_batch_is_423_for_others_and_staged_for_the_holder(
    client: TestClient, login: Login
) -> None:
    holder, other = login(client, "alice"), login(client, "bob")
    assert client.post("/transactions", headers=holder).status_code == 201
    locked = client.post("/batch", json={"ops": [put("a", "1")]}, headers=other)
    assert locked.status_code == 423
    assert int(locked.headers["retry-after"]) >= 1
    assert client.post("/batch", json={"ops": [put("a", "1")]}).status_code == 423
    staged = client.post("/batch", json={"ops": [put("a", "1"), put("b", "2")]}, headers=holder)
    assert staged.json() == {"revision": None, "applied": 2, "staged": True}
    assert client.get("/keys/a").status_code == 404  # others see nothing yet
    assert client.get("/keys/a", headers=holder).json()["value"] == "1"
    committed = client.post("/transactions/commit", headers=holder)
    assert committed.json() == {"depth": 0, "applied": 2}
    assert client.get("/keys/b").json()["value"] == "2"


def test_batch_staged_with_a_failing_expect_stages_nothing(
    client: TestClient, login: Login
) -> None:
    holder = login(client)
    client.post("/transactions", headers=holder)
    client.put("/keys/x", json={"value": "staged"}, headers=holder)
    failed = client.post(
        "/batch", json={"ops": [put("y", "1"), put("x", "2", expect=0)]}, headers=holder
    )
    assert failed.status_code == 412
    assert "op 1" in failed.json()["detail"]
    assert client.get("/keys/y", headers=holder).status_code == 404
    client.post("/transactions/rollback", headers=holder)


# -- POST /transactions/release --------------------------------------------------------------------


def test_release_merges_into_the_level_below(client: TestClient, login: Login) -> None:
    holder = login(client)
    assert client.post("/transactions", headers=holder).json() == {"depth": 1}
    client.put("/keys/outer", json={"value": "1"}, headers=holder)
    assert client.post("/transactions", headers=holder).json() == {"depth": 2}
    client.put("/keys/inner", json={"value": "2"}, headers=holder)
    assert client.post("/transactions/release", headers=holder).json() == {"depth": 1}
    assert client.get("/keys/inner", headers=holder).json()["value"] == "2"
    state = client.get("/transactions", headers=holder).json()
    assert (state["active"], state["mine"], state["depth"]) == (True, True, 1)
    assert client.post("/transactions/commit", headers=holder).json()["applied"] == 2
    assert client.get("/keys/inner").json()["value"] == "2"


def test_release_then_rollback_undoes_the_released_writes(client: TestClient, login: Login) -> None:
    holder = login(client)
    client.post("/transactions", headers=holder)
    client.post("/transactions", headers=holder)
    client.put("/keys/inner", json={"value": "2"}, headers=holder)
    client.post("/transactions/release", headers=holder)
    assert client.post("/transactions/rollback", headers=holder).json() == {"depth": 0}
    assert client.get("/keys/inner").status_code == 404


def test_release_at_depth_one_is_409_and_keeps_the_transaction(
    client: TestClient, login: Login
) -> None:
    holder = login(client)
    client.post("/transactions", headers=holder)
    client.put("/keys/a", json={"value": "1"}, headers=holder)
    answer = client.post("/transactions/release", headers=holder)
    assert answer.status_code == 409
    assert "depth 1" in answer.json()["detail"]
    assert client.get("/transactions", headers=holder).json()["depth"] == 1
    assert client.post("/transactions/commit", headers=holder).json()["applied"] == 1


def test_release_by_a_non_holder_is_409_and_anonymous_is_401(
    client: TestClient, login: Login
) -> None:
    holder, other = login(client, "alice"), login(client, "bob")
    assert client.post("/transactions/release", headers=other).status_code == 409  # none open
    client.post("/transactions", headers=holder)
    client.post("/transactions", headers=holder)
    assert client.post("/transactions/release", headers=other).status_code == 409
    assert client.post("/transactions/release").status_code == 401
    assert client.get("/transactions", headers=holder).json()["depth"] == 2
