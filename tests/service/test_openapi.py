"""``/openapi.json`` documents every route of issue 3 with every status it can answer."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

ROUTES = [
    (
        "put",
        "/keys/{key}",
        {"200", "201", "400", "401", "409", "412", "413", "415", "422", "423", "503", "507"},
    ),
    ("get", "/keys/{key}", {"200", "401", "404", "422"}),
    (
        "delete",
        "/keys/{key}",
        {"204", "401", "404", "409", "412", "413", "422", "423", "503", "507"},
    ),
    ("get", "/keys", {"200", "401", "422"}),
    ("post", "/transactions", {"201", "401", "409", "423", "503"}),
    ("get", "/transactions", {"200", "401"}),
    ("post", "/transactions/commit", {"200", "401", "409", "503", "507"}),
    ("post", "/transactions/rollback", {"200", "401", "409"}),
    ("post", "/auth/register", {"201", "403", "409", "422"}),
    ("post", "/auth/token", {"200", "401"}),
    ("post", "/auth/logout", {"204", "401"}),
    ("get", "/auth/me", {"200", "401"}),
    ("get", "/healthz", {"200", "503"}),
    ("get", "/stats", {"200"}),
]


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    from filekv.service.app import create_app
    from filekv.settings import Settings

    # /openapi.json needs no open store: no lifespan, no data directory.
    document: dict[str, Any] = TestClient(create_app(Settings())).get("/openapi.json").json()
    return document


@pytest.mark.parametrize(("method", "path", "statuses"), ROUTES)
def test_openapi_documents_route_with_its_statuses(
    spec: dict[str, Any], method: str, path: str, statuses: set[str]
) -> None:
    operation = spec["paths"][path][method]
    assert statuses <= set(operation["responses"])


@pytest.mark.parametrize("status", ["400", "405", "408", "414", "431"])
def test_openapi_every_operation_declares_read_limits(spec: dict[str, Any], status: str) -> None:
    # The HTTP protocol's read limits answer before any route runs, so any operation can get them.
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            assert status in operation["responses"], (method, path)


def test_openapi_has_no_undocumented_routes(spec: dict[str, Any]) -> None:
    documented = {(method, path) for path, ops in spec["paths"].items() for method in ops}
    assert documented == {(method, path) for method, path, _ in ROUTES}


@pytest.mark.parametrize(
    ("method", "path", "status", "schema"),
    [
        ("put", "/keys/{key}", "200", "PutResult"),
        ("get", "/keys/{key}", "200", "KeyValue"),
        ("get", "/keys", "200", "KeyPage"),
        ("post", "/transactions", "201", "Depth"),
        ("get", "/transactions", "200", "TransactionState"),
        ("post", "/transactions/commit", "200", "CommitResult"),
        ("get", "/stats", "200", "Stats"),
        ("put", "/keys/{key}", "423", "ErrorBody"),
        ("put", "/keys/{key}", "415", "ErrorBody"),
        ("put", "/keys/{key}", "409", "ErrorBody"),
        ("put", "/keys/{key}", "507", "ErrorBody"),
        ("delete", "/keys/{key}", "413", "ErrorBody"),
        ("get", "/keys/{key}", "431", "ErrorBody"),
        ("get", "/keys/{key}", "422", "HTTPValidationError"),
        ("get", "/keys/{key}", "404", "ErrorBody"),
    ],
)
def test_openapi_names_response_schemas(
    spec: dict[str, Any], method: str, path: str, status: str, schema: str
) -> None:
    content = spec["paths"][path][method]["responses"][status]["content"]["application/json"]
    assert content["schema"]["$ref"].endswith(f"/{schema}")


def test_openapi_documents_put_body_and_headers(spec: dict[str, Any]) -> None:
    put = spec["paths"]["/keys/{key}"]["put"]
    body = put["requestBody"]["content"]["application/json"]["schema"]
    assert body["properties"]["value"]["type"] == "string"
    assert "Retry-After" in put["responses"]["423"]["headers"]
    assert "ETag" in spec["paths"]["/keys/{key}"]["get"]["responses"]["200"]["headers"]


def test_openapi_has_oauth2_password_flow(spec: dict[str, Any]) -> None:
    schemes = spec["components"]["securitySchemes"]
    flows = [scheme["flows"] for scheme in schemes.values() if scheme["type"] == "oauth2"]
    assert flows and flows[0]["password"]["tokenUrl"] == "/auth/token"
