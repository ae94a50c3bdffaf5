"""TTL over HTTP: ``PUT /keys/{key}`` with ``"ttl"``, ``expires_in`` in answers, batch ``ttl``.

Real time, short TTLs: a key given 0.4 s is read before and after it runs out. The engine's
tests (tests/engine/test_ttl.py) check exactness on a fake clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from filekv.engine.expiry import MAX_TTL

Login = Callable[..., dict[str, str]]


def test_ttl_put_answers_and_get_counts_down_then_404(client: TestClient) -> None:
    put = client.put("/keys/session", json={"value": "alice", "ttl": 0.4})
    assert put.status_code == 201
    assert put.json()["expires_in"] == 0.4
    got = client.get("/keys/session").json()
    assert 0 < got["expires_in"] <= 0.4
    client.put("/keys/forever", json={"value": "alice"})
    assert client.get("/keys/forever").json()["expires_in"] is None
    assert client.get("/keys", params={"value": "alice"}).json()["keys"] == ["forever", "session"]
    time.sleep(0.5)
    assert client.get("/keys/session").status_code == 404
    assert client.get("/keys").json()["keys"] == ["forever"]
    assert client.get("/keys", params={"value": "alice"}).json()["keys"] == ["forever"]
    assert client.delete("/keys/session").status_code == 404
    assert client.get("/stats").json()["keys"] == 1


def test_ttl_put_without_ttl_clears_it(client: TestClient) -> None:
    client.put("/keys/k", json={"value": "v", "ttl": 0.3})
    client.put("/keys/k", json={"value": "v2", "ttl": None})
    time.sleep(0.4)
    assert client.get("/keys/k").json()["value"] == "v2"


@pytest.mark.parametrize("ttl", ["0", "-1", str(MAX_TTL + 1), '"30"', "true", "[]", "{}", "1e400"])
def test_ttl_bad_values_are_refused_and_nothing_is_written(client: TestClient, ttl: str) -> None:
    body = '{"value": "v", "ttl": ' + ttl + "}"  # as sent on the wire
    answer = client.put("/keys/k", content=body, headers={"content-type": "application/json"})
    if ttl == "1e400":  # a number JSON cannot hold as a double: refused as bad JSON (400/422)
        assert answer.status_code in (400, 422), answer.text
    else:
        assert answer.status_code == 422, answer.text
        assert answer.json()["detail"][0]["loc"] == ["body", "ttl"]
    assert client.get("/keys/k").status_code == 404


def test_ttl_unknown_body_field_is_still_refused(client: TestClient) -> None:
    answer = client.put("/keys/k", json={"value": "v", "tll": 30})
    assert answer.status_code == 422


def test_ttl_in_a_batch_and_a_bad_one_refuses_the_whole_batch(client: TestClient) -> None:
    ok = client.post(
        "/batch",
        json={
            "ops": [
                {"op": "put", "key": "a", "value": "1", "ttl": 0.3},
                {"op": "put", "key": "b", "value": "2"},
            ]
        },
    )
    assert ok.status_code == 200, ok.text
    assert client.get("/keys/a").json()["expires_in"] > 0
    bad = client.post(
        "/batch",
        json={
            "ops": [
                {"op": "put", "key": "c", "value": "1"},
                {"op": "put", "key": "d", "value": "2", "ttl": -5},
            ]
        },
    )
    assert bad.status_code == 422
    assert client.get("/keys/c").status_code == 404
    time.sleep(0.4)
    assert client.get("/keys").json()["keys"] == ["b"]


def test_ttl_staged_in_a_transaction_then_committed(client: TestClient, login: Login) -> None:
    headers = login(client, "ttl-user")
    assert client.post("/transactions", headers=headers).status_code in (200, 201)
    staged = client.put("/keys/t", json={"value": "v", "ttl": 30}, headers=headers)
    assert staged.json()["staged"] is True and staged.json()["expires_in"] == 30
    assert 29 < client.get("/keys/t", headers=headers).json()["expires_in"] <= 30
    assert client.get("/keys/t").status_code == 404  # others see committed data only
    assert client.post("/transactions/commit", headers=headers).status_code == 200
    assert 29 < client.get("/keys/t").json()["expires_in"] <= 30


def test_ttl_staged_key_that_runs_out_leaves_the_holders_list_and_find(
    client: TestClient, login: Login
) -> None:
    """As the audit found it: after the TTL, GET was 404 but the list and find still named it."""
    headers = login(client, "ttl-holder")
    client.put("/keys/ttl-kept", json={"value": "red"})
    assert client.post("/transactions", headers=headers).status_code == 201
    client.put("/keys/ttls", json={"value": "red", "ttl": 0.4}, headers=headers)
    client.put("/keys/ttl-kept", json={"value": "red", "ttl": 0.4}, headers=headers)
    listed = client.get("/keys", params={"prefix": "ttl"}, headers=headers).json()["keys"]
    assert listed == ["ttl-kept", "ttls"]
    time.sleep(0.5)
    assert client.get("/keys/ttls", headers=headers).status_code == 404
    assert client.get("/keys/ttl-kept", headers=headers).status_code == 404
    assert client.get("/keys", params={"prefix": "ttl"}, headers=headers).json()["keys"] == []
    assert client.get("/keys", params={"value": "red"}, headers=headers).json()["keys"] == []
    # Everyone else still sees the committed key, until the commit.
    assert client.get("/keys", params={"value": "red"}).json()["keys"] == ["ttl-kept"]
    assert client.post("/transactions/commit", headers=headers).status_code == 200
    assert client.get("/keys", params={"prefix": "ttl"}).json()["keys"] == []
