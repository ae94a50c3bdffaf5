"""A trailing slash is no redirect: a route's path with "/" added is a JSON 404.

Starlette's default (``redirect_slashes``) answered ``POST /auth/token/`` with a 307 to
``http://<Host header>/auth/token``: a client following it re-sent the password to whatever host
the request named. Keys ending in "/" are keys like any other and keep working.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

Login = Callable[..., dict[str, str]]
EVIL = {"Host": "evil.example"}

# Every route that a slash-less path has, with the slash added.
SLASHED = [
    ("POST", "/auth/token/"),
    ("POST", "/auth/register/"),
    ("POST", "/auth/logout/"),
    ("GET", "/auth/me/"),
    ("POST", "/transactions/"),
    ("GET", "/transactions/"),
    ("DELETE", "/transactions/"),
    ("POST", "/transactions/commit/"),
    ("POST", "/transactions/rollback/"),
    ("POST", "/transactions/release/"),
    ("POST", "/batch/"),
    ("GET", "/stats/"),
    ("GET", "/metrics/"),
    ("GET", "/docs/"),
    ("GET", "/openapi.json/"),
]


@pytest.mark.parametrize(("method", "path"), SLASHED)
def test_trailing_slash_is_a_json_404_never_a_redirect(
    client: TestClient, method: str, path: str
) -> None:
    data = {"username": "alice", "password": "correct horse battery"}
    answer = client.request(
        method,
        path,
        headers=EVIL,
        data=data if path.startswith("/auth/token") else None,
        follow_redirects=False,
    )
    assert "location" not in answer.headers
    assert answer.status_code == 404, answer.text
    assert answer.json()["detail"] == "Not Found"


def test_trailing_slash_login_sends_no_credentials_anywhere(client: TestClient) -> None:
    """The audit's request: ``curl -X POST .../auth/token/ -H 'Host: evil.example'``."""
    client.post("/auth/register", json={"username": "a1", "password": "correct horse battery"})
    answer = client.post(
        "/auth/token/",
        data={"username": "a1", "password": "correct horse battery"},
        headers=EVIL,
        follow_redirects=False,
    )
    assert (answer.status_code, answer.headers.get("location")) == (404, None)
    assert answer.headers["content-type"] == "application/json"


def test_keys_ending_in_a_slash_are_still_keys(client: TestClient, login: Login) -> None:
    for key, value in [("dir/", "slash"), ("dir", "bare"), ("dir/a/", "deep")]:
        assert client.put(f"/keys/{key}", json={"value": value}).status_code == 201
    assert client.get("/keys/dir/").json()["value"] == "slash"
    assert client.get("/keys/dir").json()["value"] == "bare"
    assert client.get("/keys/dir/a/").json()["value"] == "deep"
    assert client.get("/keys/dir/a").status_code == 404  # no such key: not a redirect
    assert client.get("/keys", params={"prefix": "dir"}).json()["keys"] == [
        "dir",
        "dir/",
        "dir/a/",
    ]
    assert client.delete("/keys/dir/").status_code == 204
    assert client.get("/keys/dir/").status_code == 404
    assert client.get("/keys/dir").json()["value"] == "bare"
    # Staged in a transaction too.
    headers = login(client, "alice")
    assert client.post("/transactions", headers=headers).status_code == 201
    assert client.put("/keys/tx/", json={"value": "v"}, headers=headers).json()["staged"] is True
    assert client.get("/keys/tx/", headers=headers).json()["value"] == "v"
    assert client.post("/transactions/commit", headers=headers).json()["applied"] == 1
    assert client.get("/keys/tx/").json()["value"] == "v"
