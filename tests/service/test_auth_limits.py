"""Auth bodies, a damaged or full users file, and ``/stats`` under ``auth_mode`` (issue 17).

Findings 6 (unlimited register body, parsed before registration's openness), 10 (damaged
``users.json`` and ENOSPC answered 500) and 11 (``/stats`` open to anonymous clients under
``auth_mode=all``), through the whole app. The real-server versions of the body cap, on real
sockets, are in ``tests/e2e/test_auth_e2e.py``.
"""

from __future__ import annotations

import errno
import json
import logging
from collections.abc import Callable, Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from filekv.engine.fileio import FileIO
from filekv.service.routes.auth import MAX_AUTH_BODY_BYTES

PASSWORD = "correct horse battery"
JSON = {"Content-Type": "application/json"}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
Login = Callable[..., dict[str, str]]


def _chunks(total: int, size: int = 4096) -> Iterator[bytes]:
    sent = 0
    while sent < total:
        yield b"x" * min(size, total - sent)
        sent += size


def _assert_413(answer: object) -> None:
    assert answer.status_code == 413, answer.text  # type: ignore[attr-defined]
    assert "over 16384 bytes" in answer.json()["detail"]  # type: ignore[attr-defined]


# -- body caps -------------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "headers"), [("/auth/register", JSON), ("/auth/token", FORM)])
def test_auth_body_over_the_cap_is_413(
    client: TestClient, path: str, headers: dict[str, str]
) -> None:
    _assert_413(client.post(path, content=b"x" * (MAX_AUTH_BODY_BYTES + 1), headers=headers))


@pytest.mark.parametrize(("path", "headers"), [("/auth/register", JSON), ("/auth/token", FORM)])
def test_auth_streamed_body_over_the_cap_is_413(
    client: TestClient, path: str, headers: dict[str, str]
) -> None:
    """No Content-Length (chunked): counted as it arrives."""
    _assert_413(client.post(path, content=_chunks(4 * MAX_AUTH_BODY_BYTES), headers=headers))


def test_auth_content_length_of_thousands_of_digits_is_413_not_500(client: TestClient) -> None:
    answer = client.post(
        "/auth/register", content=b"{}", headers={**JSON, "Content-Length": "9" * 5000}
    )
    assert answer.status_code in {400, 413}, answer.text


def test_auth_body_at_the_cap_is_read(client: TestClient) -> None:
    body = json.dumps({"username": "alice", "password": "p" * 9}).encode()
    padded = body[:-1] + b" " * (MAX_AUTH_BODY_BYTES - len(body)) + b"}"
    assert len(padded) == MAX_AUTH_BODY_BYTES
    assert client.post("/auth/register", content=padded, headers=JSON).status_code == 201


def test_auth_longest_legal_password_fits_the_cap_in_either_encoding(client: TestClient) -> None:
    """1024 astral characters: 12 bytes each as JSON escapes and as percent-encoding."""
    password = "\U0001f600" * 1024
    body = json.dumps({"username": "a" * 64, "password": password}, ensure_ascii=True)
    assert client.post("/auth/register", content=body, headers=JSON).status_code == 201
    answer = client.post("/auth/token", data={"username": "a" * 64, "password": password})
    assert answer.status_code == 200, answer.text


def test_auth_closed_registration_is_403_before_the_body_is_looked_at(
    make_client: Callable[..., TestClient],
) -> None:
    client = make_client(registration="closed")
    for body in [b"not json at all", b"x" * (MAX_AUTH_BODY_BYTES * 4), b'{"username": 7}']:
        answer = client.post("/auth/register", content=body, headers=JSON)
        assert answer.status_code == 403, answer.text
        assert answer.json() == {
            "detail": "registration is closed",
            "request_id": answer.headers["x-request-id"],
        }


# -- a damaged users file --------------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [b"{", b"[]", b'{"format": 1, "users": {"alice": {"hash": 7}}}', b'{"format": 2}', b"\xff"],
)
def test_damaged_users_file_is_503_without_its_content_and_logged_once(
    client: TestClient, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    users_file = client.app.state.auth.users.path  # type: ignore[attr-defined]
    users_file.parent.mkdir(parents=True, exist_ok=True)
    users_file.write_bytes(content + b' "$argon2id$secret-looking"')
    caplog.set_level(logging.INFO)
    answers = [
        client.post("/auth/token", data={"username": "alice", "password": PASSWORD}),
        client.post("/auth/register", json={"username": "bob", "password": PASSWORD}),
        client.post("/auth/token", data={"username": "carol", "password": PASSWORD}),
    ]
    for answer in answers:
        assert answer.status_code == 503, answer.text
        assert answer.json() == {
            "detail": "the users file is damaged; see the server log",
            "request_id": answer.headers["x-request-id"],
        }
        assert "argon2" not in answer.text
    damaged = [r for r in caplog.records if r.name == "filekv.service.users"]
    assert len(damaged) == 1 and damaged[0].levelno == logging.ERROR
    assert str(users_file) in damaged[0].getMessage()
    assert "secret-looking" not in caplog.text
    assert users_file.read_bytes().startswith(content)  # never rewritten


def test_damaged_users_file_leaves_issued_tokens_working(client: TestClient, login: Login) -> None:
    """Token checks keep the last good copy: a damaged file cannot log anyone in or out."""
    alice = login(client, "alice")
    users_file = client.app.state.auth.users.path  # type: ignore[attr-defined]
    users_file.write_bytes(b"{")
    assert client.get("/auth/me", headers=alice).json() == {"username": "alice", "role": "user"}
    assert client.get("/keys/k", headers=alice).status_code == 404


# -- a full disk -----------------------------------------------------------------------------


class NoSpaceIO(FileIO):
    """Every write fails as a full disk does."""

    def write(self, fd: int, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")


def test_users_file_write_on_a_full_disk_is_507_and_changes_nothing(
    client: TestClient, login: Login
) -> None:
    login(client, "alice")
    users = client.app.state.auth.users  # type: ignore[attr-defined]
    before = users.path.read_bytes()
    users.io = NoSpaceIO()
    answer = client.post("/auth/register", json={"username": "bob", "password": PASSWORD})
    assert answer.status_code == 507, answer.text
    assert answer.json() == {
        "detail": "the disk is full; the users file was not changed",
        "request_id": answer.headers["x-request-id"],
    }
    assert users.path.read_bytes() == before
    assert [p.name for p in users.path.parent.iterdir() if p.name.endswith(".new")] == []
    # Space freed: the same registration goes through.
    users.io = FileIO()
    assert (
        client.post("/auth/register", json={"username": "bob", "password": PASSWORD}).status_code
        == 201
    )


# -- /stats and auth_mode --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "anonymous"), [("transactions", 200), ("writes", 200), ("all", 401)]
)
def test_stats_follows_auth_mode(
    make_client: Callable[..., TestClient], login: Login, mode: str, anonymous: int
) -> None:
    client = make_client(auth_mode=mode)
    answer = client.get("/stats")
    assert answer.status_code == anonymous, answer.text
    if anonymous == 401:
        assert "keys" not in answer.text and answer.headers["www-authenticate"] == "Bearer"
    assert client.get("/stats", headers=login(client)).status_code == 200
    forged = {"Authorization": "Bearer not-a-real-token"}
    assert client.get("/stats", headers=forged).status_code == 401
    assert client.get("/healthz").status_code == 200  # probes need no token


def test_openapi_declares_the_new_auth_and_stats_statuses(app: FastAPI) -> None:
    paths = TestClient(app).get("/openapi.json").json()["paths"]
    expected = {
        ("/auth/register", "post"): {"413", "503", "507"},
        ("/auth/token", "post"): {"413", "429", "503"},
        ("/stats", "get"): {"401"},
    }
    for (path, method), statuses in expected.items():
        assert statuses <= set(paths[path][method]["responses"]), path
