"""``RequestMiddleware`` in process: request ids, error bodies, the metrics setting (issue 11)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from filekv.service.logs import AccessLog
from filekv.service.metrics import Metrics
from filekv.service.middleware import MAX_REQUEST_ID, RequestMiddleware, sane_request_id

MakeApp = Callable[..., FastAPI]
MakeClient = Callable[..., TestClient]


def _middleware(app: FastAPI) -> dict[str, Any]:
    (entry,) = [m for m in app.user_middleware if m.cls is RequestMiddleware]
    return dict(entry.kwargs)


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        (b"abc-123", True),
        (b"550e8400-e29b-41d4-a716-446655440000", True),
        (b"trace:a/b+c=d_e.f~g", True),
        (b"x" * MAX_REQUEST_ID, True),
        (b"x" * (MAX_REQUEST_ID + 1), False),
        (b"", False),
        (b"a b", False),
        (b"a\r\nSet-Cookie: x=1", False),
        (b"caf\xc3\xa9", False),
        (b"\xff", False),
        (b"{json}", False),
    ],
)
def test_request_id_sane_or_new(sent: bytes, kept: bool) -> None:
    chosen = sane_request_id([(b"host", b"x"), (b"x-request-id", sent)])
    if kept:
        assert chosen == sent.decode()
    else:
        assert chosen != sent.decode("latin-1")
        assert len(chosen) == 16 and int(chosen, 16) >= 0


def test_request_id_new_when_absent_and_never_repeated() -> None:
    made = {sane_request_id([(b"host", b"x")]) for _ in range(1000)}
    assert len(made) == 1000


def test_request_id_in_every_error_body(client: TestClient) -> None:
    answers = [
        client.get("/keys/absent"),  # 404 from the table
        client.get("/no/such/route"),  # 404 from the framework
        client.post("/keys/k"),  # 405
        client.put("/keys/k", content=b"{", headers={"Content-Type": "application/json"}),  # 422
        client.put("/keys/k", content=b"x", headers={"Content-Type": "text/plain"}),  # 415
        client.post("/transactions"),  # 401
        client.get("/keys/k", headers={"Authorization": "Bearer nope"}),  # 401
    ]
    for answer in answers:
        assert answer.status_code >= 400
        assert answer.json()["request_id"] == answer.headers["x-request-id"], answer.text


def test_request_id_on_success_too(client: TestClient) -> None:
    answer = client.put("/keys/k", json={"value": "v"}, headers={"X-Request-ID": "mine-1"})
    assert (answer.status_code, answer.headers["x-request-id"]) == (201, "mine-1")
    assert "request_id" not in answer.json()  # only error bodies carry it


def test_request_id_on_an_unexpected_500(make_app: MakeApp) -> None:
    app = make_app()

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("a bug")

    with TestClient(app, raise_server_exceptions=False) as client:
        answer = client.get("/boom", headers={"X-Request-ID": "bug-report-7"})
    assert answer.status_code == 500
    assert answer.headers["x-request-id"] == "bug-report-7"
    assert answer.json() == {"detail": "internal error", "request_id": "bug-report-7"}


def test_metrics_false_has_no_route_and_no_metrics_in_the_middleware(
    make_client: MakeClient,
) -> None:
    client = make_client(metrics=False)
    app: Any = client.app
    assert app.state.metrics is None
    assert _middleware(app)["metrics"] is None
    assert client.get("/metrics").status_code == 404
    assert client.get("/keys/k").headers["x-request-id"]  # request ids do not depend on it


def test_metrics_true_is_the_default(client: TestClient) -> None:
    app: Any = client.app
    assert isinstance(app.state.metrics, Metrics)
    assert _middleware(app)["metrics"] is app.state.metrics
    names = {family.name for family in text_string_to_metric_families(client.get("/metrics").text)}
    assert {"filekv_http_requests", "filekv_keys", "filekv_tokens_active"} <= names


def test_metrics_registries_are_per_app(make_client: MakeClient) -> None:
    first, second = make_client(), make_client()
    first.put("/keys/k", json={"value": "v"})

    def puts(client: TestClient) -> float:
        families = text_string_to_metric_families(client.get("/metrics").text)
        return sum(
            s.value
            for f in families
            for s in f.samples
            if s.name == "filekv_http_requests_total" and s.labels["method"] == "PUT"
        )

    assert (puts(first), puts(second)) == (1, 0)


def test_metrics_methods_outside_the_known_ones_share_one_label(client: TestClient) -> None:
    app: Any = client.app
    metrics: Metrics = app.state.metrics
    for method in ("BREW", "PROPFIND", "GET"):
        metrics.record(method, "/keys/{key}", 405, 0.001)
    text = client.get("/metrics").text
    assert 'method="OTHER",route="/keys/{key}",status="405"} 2.0' in text
    assert "BREW" not in text and "PROPFIND" not in text


def test_access_log_only_at_info_and_debug(make_app: MakeApp) -> None:
    assert isinstance(_middleware(make_app(log_level="info"))["access_log"], AccessLog)
    assert isinstance(_middleware(make_app(log_level="debug"))["access_log"], AccessLog)
    assert _middleware(make_app(log_level="warning"))["access_log"] is None


def test_access_log_line_escapes_what_orjson_refuses() -> None:
    written: list[bytes] = []
    log = AccessLog(log_format="json", log_keys=True, write=written.append)
    scope = {"method": "GET", "path_params": {"key": "bad\udcffkey\nnext"}, "client": None}
    log(scope, "/keys/{key}", 200, 0.0005, "rid")
    text = AccessLog(log_format="text", log_keys=True, write=written.append)
    text(scope, "/keys/{key}", 200, 0.0005, "rid")
    assert len(written) == 2
    assert all(line.endswith(b"\n") and line.count(b"\n") == 1 for line in written)


def test_openapi_error_bodies_name_the_request_id(client: TestClient) -> None:
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    assert "request_id" in schemas["ErrorBody"]["properties"]
    assert "request_id" in schemas["ErrorBody"]["required"]
    assert "request_id" in schemas["HTTPValidationError"]["properties"]
