"""``HeaderSizeLimit``: requests whose headers add up to more than 16 KiB are refused with 431."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from filekv.service.middleware import MAX_HEADER_BYTES, HeaderSizeLimit


def _headers_without_padding(client: TestClient) -> int:
    """The bytes of the headers TestClient sends by itself (host, user-agent, ...)."""
    request = client.build_request("GET", "/healthz", headers={"x-pad": ""})
    return sum(len(name) + len(value) for name, value in request.headers.raw)


@pytest.mark.parametrize(("extra", "status"), [(0, 200), (1, 431), (100_000, 431)])
def test_middleware_header_limit_is_inclusive(client: TestClient, extra: int, status: int) -> None:
    pad = MAX_HEADER_BYTES - _headers_without_padding(client) + extra
    answer = client.get("/healthz", headers={"x-pad": "a" * pad})
    assert answer.status_code == status
    if status == 431:
        assert answer.headers["content-type"] == "application/json"
        assert str(MAX_HEADER_BYTES) in answer.json()["detail"]


def test_middleware_header_limit_counts_many_small_headers(client: TestClient) -> None:
    many = {f"x-h{n}": "v" * 100 for n in range(200)}
    assert client.get("/keys/k", headers=many).status_code == 431


def test_middleware_refused_write_changes_nothing(client: TestClient) -> None:
    answer = client.put("/keys/k", json={"value": "v"}, headers={"x-big": "a" * 20_000})
    assert answer.status_code == 431
    assert client.get("/keys/k").status_code == 404


def test_middleware_is_pure_asgi(client: TestClient) -> None:
    # Not BaseHTTPMiddleware (a task and a stream per request): a plain ASGI callable.
    from starlette.middleware.base import BaseHTTPMiddleware

    assert not issubclass(HeaderSizeLimit, BaseHTTPMiddleware)
    classes = [entry.cls for entry in client.app.user_middleware]  # type: ignore[attr-defined]
    assert classes == [HeaderSizeLimit]
