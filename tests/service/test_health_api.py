"""``/healthz`` and ``/stats``, and the app's lifespan."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from fastapi import FastAPI
from fastapi.testclient import TestClient

from filekv.engine import StoreStats


def test_health_ok_while_open(client: TestClient) -> None:
    answer = client.get("/healthz")
    assert answer.status_code == 200
    assert answer.json() == {"status": "ok"}


def test_health_503_when_store_not_open(app: FastAPI) -> None:
    # Without the lifespan (no ``with``) the store was never opened.
    answer = TestClient(app).get("/healthz")
    assert answer.status_code == 503
    assert isinstance(answer.json()["detail"], str)


def test_stats_has_every_promised_field(client: TestClient) -> None:
    client.put("/keys/a", json={"value": "1"})
    client.put("/keys/b", json={"value": "2"})
    stats = client.get("/stats").json()
    for field in (
        "keys",
        "disk_bytes",
        "live_bytes",
        "segments",
        "fsync",
        "last_compaction",
        "recovered_truncations",
    ):
        assert field in stats
    assert stats["keys"] == 2
    assert stats["fsync"] == "always"
    assert stats["disk_bytes"] >= stats["live_bytes"] > 0
    assert stats["last_compaction"] is None


def test_stats_answer_and_schema_are_the_engines_store_stats(client: TestClient) -> None:
    names = [field.name for field in dataclasses.fields(StoreStats)]
    assert list(client.get("/stats").json()) == names
    schema = client.get("/openapi.json").json()["components"]["schemas"]["Stats"]
    assert list(schema["properties"]) == names
    assert all(schema["properties"][name].get("description") for name in names)


def test_app_creation_opens_nothing(make_app: Callable[..., FastAPI], tmp_path: Path) -> None:
    data_dir = tmp_path / "untouched"
    make_app(data_dir=data_dir)
    assert not data_dir.exists()


def test_app_lifespan_closes_store_and_data_survives(
    make_app: Callable[..., FastAPI], tmp_path: Path
) -> None:
    data_dir = tmp_path / "reopen"
    with TestClient(make_app(data_dir=data_dir)) as first:
        first.put("/keys/k", json={"value": "v"})
        store = first.app.state.transactions._store  # type: ignore[attr-defined]
    assert store.closed
    with TestClient(make_app(data_dir=data_dir)) as second:
        assert second.get("/keys/k").json()["value"] == "v"


def test_app_serves_docs_and_redoc(client: TestClient) -> None:
    assert client.get("/docs").status_code == 200
    assert client.get("/redoc").status_code == 200


def test_health_head_answers_like_get_on_the_pages_monitors_probe(client: TestClient) -> None:
    # Monitors that probe with HEAD took a 405 for a server down.
    for path in ("/healthz", "/metrics", "/docs", "/redoc", "/ui", "/"):
        get = client.get(path, follow_redirects=False)
        head = client.head(path, follow_redirects=False)
        assert head.status_code == get.status_code != 405, path
        assert head.content == b"", path


def test_health_head_is_503_when_store_not_open(app: FastAPI) -> None:
    assert TestClient(app).head("/healthz").status_code == 503
