"""``/openapi.json`` documents every route of issue 3 with every status it can answer."""

from __future__ import annotations

import re
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
        {"204", "400", "401", "404", "409", "412", "413", "422", "423", "503", "507"},
    ),
    ("get", "/keys", {"200", "401", "409", "410", "422", "503"}),
    ("post", "/transactions", {"201", "401", "409", "423", "429", "503"}),
    ("get", "/transactions", {"200", "401"}),
    ("delete", "/transactions", {"200", "401", "403"}),
    ("get", "/admin/backup", {"200", "401", "403", "429", "500", "503", "507"}),
    ("post", "/transactions/commit", {"200", "401", "409", "503", "507"}),
    ("post", "/transactions/rollback", {"200", "401", "409"}),
    ("post", "/transactions/release", {"200", "401", "409"}),
    (
        "post",
        "/batch",
        {"200", "400", "401", "409", "412", "413", "415", "422", "423", "503", "507"},
    ),
    ("get", "/auth/register", {"200"}),
    ("post", "/auth/register", {"201", "403", "409", "422"}),
    ("post", "/auth/token", {"200", "401"}),
    ("post", "/auth/logout", {"204", "401"}),
    ("get", "/auth/me", {"200", "401"}),
    ("get", "/healthz", {"200", "503"}),
    ("get", "/stats", {"200"}),
    ("get", "/watch", {"200", "401", "409", "410", "422", "503"}),
    ("get", "/export", {"200", "401", "429"}),
    ("get", "/metrics", {"200", "401"}),
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
        ("delete", "/transactions", "200", "LockBroken"),
        ("delete", "/transactions", "401", "ErrorBody"),
        ("delete", "/transactions", "403", "ErrorBody"),
        ("get", "/auth/me", "200", "Me"),
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


# Routes whose answer depends on who asks: the holder's staged view, auth_mode, a token that is
# sent being checked. Swagger UI sends the token only where the schema declares the scheme.
CALLER_DEPENDENT = [
    ("put", "/keys/{key}"),
    ("get", "/keys/{key}"),
    ("delete", "/keys/{key}"),
    ("get", "/keys"),
    ("get", "/transactions"),
    ("get", "/stats"),
]
LOGGED_IN = [
    ("post", "/transactions"),
    ("delete", "/transactions"),
    ("post", "/transactions/commit"),
    ("post", "/transactions/rollback"),
    ("post", "/auth/logout"),
    ("get", "/auth/me"),
]


@pytest.mark.parametrize(("method", "path"), CALLER_DEPENDENT)
def test_openapi_declares_optional_bearer_where_the_caller_matters(
    spec: dict[str, Any], method: str, path: str
) -> None:
    security = spec["paths"][path][method]["security"]
    assert {"OAuth2PasswordBearer": []} in security
    assert {} in security  # optional: anonymous requests are fine too


@pytest.mark.parametrize(("method", "path"), LOGGED_IN)
def test_openapi_declares_required_bearer_for_logged_in_routes(
    spec: dict[str, Any], method: str, path: str
) -> None:
    assert spec["paths"][path][method]["security"] == [{"OAuth2PasswordBearer": []}]


@pytest.mark.parametrize(
    ("method", "headers"),
    [("put", {"If-Match", "If-None-Match"}), ("delete", {"If-Match", "If-None-Match"})],
)
def test_openapi_declares_the_conditional_headers(
    spec: dict[str, Any], method: str, headers: set[str]
) -> None:
    parameters = spec["paths"]["/keys/{key}"][method]["parameters"]
    declared = {p["name"] for p in parameters if p["in"] == "header"}
    assert declared == headers
    # No example: Swagger UI would fill it in and a plain Execute would send a precondition.
    assert all("example" not in p and "examples" not in p["schema"] for p in parameters)


def test_openapi_examples_are_realistic(spec: dict[str, Any]) -> None:
    schemas = spec["components"]["schemas"]
    put = spec["paths"]["/keys/{key}"]["put"]
    body = put["requestBody"]["content"]["application/json"]["schema"]
    assert body["examples"] == [{"value": "hello"}, {"value": "alice", "ttl": 30}]
    assert schemas["Credentials"]["examples"] == [
        {"username": "alice", "password": "alice-secret-1"}
    ]
    assert schemas["PutResult"]["examples"][0]["revision"] == 1


def _descriptions(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["description"]] if isinstance(node.get("description"), str) else []
        return found + [text for value in node.values() for text in _descriptions(value)]
    if isinstance(node, list):
        return [text for value in node for text in _descriptions(value)]
    return []


def test_openapi_descriptions_keep_placeholders_in_code(spec: dict[str, Any]) -> None:
    # Descriptions are Markdown, where a bare <rev> is an HTML tag and disappears.
    for text in _descriptions(spec):
        outside_code = "".join(re.split("`+", text)[::2])
        assert "<" not in outside_code, text


def test_docs_pages_load_only_from_the_server() -> None:
    from filekv.service.app import create_app
    from filekv.settings import Settings

    client = TestClient(create_app(Settings()))
    for page in ("/docs", "/redoc", "/docs/oauth2-redirect"):
        html = client.get(page).text
        urls = re.findall(r"""(?:src|href)=["']([^"']+)""", html)
        assert all(url.startswith("/") for url in urls), (page, urls)
        for url in urls:
            assert client.get(url).status_code == 200, url
    assert client.get("/", follow_redirects=False).headers["location"] == "/docs"


def test_openapi_break_lock_declares_exactly_its_statuses(spec: dict[str, Any]) -> None:
    # Nothing it can answer is left out, and nothing it cannot answer is promised (no 422: it
    # takes no parameters; no 409 or 503: it waits for a running commit, and needs no store).
    responses = spec["paths"]["/transactions"]["delete"]["responses"]
    assert set(responses) == {"200", "401", "403", "400", "405", "408", "414", "431"}


def test_openapi_lock_broken_has_depth_only_as_an_integer(spec: dict[str, Any]) -> None:
    schema = spec["components"]["schemas"]["LockBroken"]
    assert schema["required"] == ["rolled_back"]
    assert schema["properties"]["depth"]["type"] == "integer"  # absent, never null
    assert spec["components"]["schemas"]["Me"]["properties"]["role"]["enum"] == ["user", "admin"]
