"""422 answers: FastAPI's list form, every body-parse failure included, and never the input."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

SECRET_PASSWORD = "hunter2!"  # 8 characters: long enough, rejected only with a bad username
SHORT_PASSWORD = "short7"


def assert_list_form(answer: Any) -> list[dict[str, Any]]:
    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"] == "application/json"
    items: list[dict[str, Any]] = answer.json()["detail"]
    assert items and all({"type", "loc", "msg"} <= set(item) for item in items)
    assert all("input" not in item and "url" not in item for item in items)
    return items


@pytest.mark.parametrize(
    ("body", "secrets"),
    [
        ({"username": "alice", "password": SHORT_PASSWORD}, [SHORT_PASSWORD]),
        (
            {"username": "alice:s3cr3t-in-name", "password": SECRET_PASSWORD},
            ["s3cr3t-in-name", SECRET_PASSWORD],
        ),
        ({"username": "bob", "password": "x" * 1025}, ["x" * 1025]),
        ({"username": "bob", "password": 12345678}, ["12345678"]),
        ({"username": "bob", "password": SECRET_PASSWORD, "extra": "sneaky-v4lue"}, ["sneaky"]),
    ],
)
def test_validation_errors_never_echo_the_input(
    client: TestClient, body: dict[str, Any], secrets: list[str]
) -> None:
    answer = client.post("/auth/register", json=body)
    assert_list_form(answer)
    for secret in secrets:
        assert secret not in answer.text


def test_validation_errors_keep_the_useful_context(client: TestClient) -> None:
    answer = client.post("/auth/register", json={"username": "alice", "password": SHORT_PASSWORD})
    (item,) = assert_list_form(answer)
    assert item["loc"] == ["body", "password"]
    assert item["type"] == "string_too_short"
    assert item["ctx"] == {"min_length": 8}


def test_validation_errors_query_input_is_not_echoed(client: TestClient) -> None:
    answer = client.get("/keys", params={"limit": "ten-thousand-and-one"})
    (item,) = assert_list_form(answer)
    assert item["loc"] == ["query", "limit"]
    assert "ten-thousand" not in answer.text


@pytest.mark.parametrize(
    ("path", "content", "content_type"),
    [
        ("/auth/register", b"\xff", "application/json"),
        ("/auth/register", b'{"username": "\xff\xfe"}', "application/json"),
        ("/auth/register", b"{not json", "application/json"),
        ("/auth/register", b"", "application/json"),
        ("/auth/token", b"--x\r\nbroken", "multipart/form-data"),  # no boundary
        ("/auth/token", b"--x\r\nbroken", "multipart/form-data; boundary=x"),
        ("/auth/token", b"\xff=\xfe", "application/x-www-form-urlencoded"),
        ("/auth/token", b'{"username": "a", "password": "b"}', "application/json"),
        ("/keys/k", b"\xff", "application/json"),
    ],
)
def test_validation_errors_every_unparseable_body_is_422(
    client: TestClient, path: str, content: bytes, content_type: str
) -> None:
    method = "PUT" if path.startswith("/keys/") else "POST"
    answer = client.request(method, path, content=content, headers={"Content-Type": content_type})
    assert_list_form(answer)
    assert client.get("/keys").json()["keys"] == []


def test_validation_errors_non_utf8_body_says_so(client: TestClient) -> None:
    answer = client.post(
        "/auth/register", content=b"\xff", headers={"Content-Type": "application/json"}
    )
    (item,) = assert_list_form(answer)
    assert item["loc"] == ["body"] and "UTF-8" in item["msg"]


def test_validation_errors_other_framework_errors_keep_their_status(client: TestClient) -> None:
    assert client.get("/no/such/route").status_code == 404
    assert client.post("/keys/k").status_code == 405
    refused = client.post("/keys/k")
    assert refused.json() == {
        "detail": "method POST not allowed on this path; it takes DELETE, GET, HEAD, PUT",
        "request_id": refused.headers["x-request-id"],
    }
