"""``HotRoutes``: the hot routes answered directly, everything else left to the usual stack."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from filekv.service.hot_routes import HotRoutes


class Teapot(Exception):
    pass


class SmallTeapot(Teapot):
    pass


async def hot(request: Request) -> Response:
    what = request.path_params["what"]
    if what == "teapot":
        raise SmallTeapot  # answered by the handler of its base class
    if what == "gone":
        raise HTTPException(410, "gone")  # by the status handler, before the class handler
    if what == "forbidden":
        raise HTTPException(403, "no")  # no status handler: the HTTPException class handler
    if what == "bug":
        raise ZeroDivisionError  # no handler at all
    return JSONResponse({"hot": what, "endpoint": request.scope["endpoint"].__name__})


def _app(calls: list[str]) -> Starlette:
    """A Starlette app whose router records every request it sees: the fall-through."""
    routes = [Route("/hot/{what}", hot, methods=["GET", "PUT"])]

    async def router_hot(request: Request) -> Response:
        calls.append(f"{request.method} {request.url.path}")
        return await hot(request)

    async def cold(request: Request) -> Response:
        calls.append(f"{request.method} {request.url.path}")
        return PlainTextResponse("cold")

    async def on_teapot(request: Request, exc: Exception) -> Response:
        return JSONResponse({"handled": type(exc).__name__}, status_code=418)

    async def on_410(request: Request, exc: Exception) -> Response:
        return JSONResponse({"handled": "410"}, status_code=410)

    def on_http(request: Request, exc: Exception) -> Response:  # a plain function: threadpool
        assert isinstance(exc, HTTPException)
        body = {"handled": "http", "status": exc.status_code}
        return JSONResponse(body, exc.status_code, headers=exc.headers)

    app = Starlette(
        routes=[
            Route("/hot/{what}", router_hot, methods=["GET", "PUT"]),
            Route("/cold", cold),
        ],
        exception_handlers={Teapot: on_teapot, 410: on_410, HTTPException: on_http},
    )
    app.add_middleware(HotRoutes, routes=routes, exception_handlers=lambda: app.exception_handlers)
    return app


@pytest.fixture
def calls() -> list[str]:
    return []


@pytest.fixture
def client(calls: list[str]) -> TestClient:
    return TestClient(_app(calls), raise_server_exceptions=False)


@pytest.mark.parametrize("method", ["GET", "PUT"])
def test_a_matching_route_is_answered_without_the_router(
    client: TestClient, calls: list[str], method: str
) -> None:
    answer = client.request(method, "/hot/x%20y")
    assert answer.status_code == 200
    # path_params and the endpoint are in the scope, as the router would have left them
    assert answer.json() == {"hot": "x y", "endpoint": "hot"}
    assert calls == []


def test_other_paths_head_and_other_methods_go_down_the_usual_stack(
    client: TestClient, calls: list[str]
) -> None:
    assert client.get("/cold").text == "cold"
    assert client.head("/hot/x").status_code == 200  # the router's GET route takes HEAD
    refused = client.post("/hot/x")  # the router's 405, with the methods the path has
    assert refused.status_code == 405
    assert set(refused.headers["allow"].split(", ")) == {"GET", "HEAD", "PUT"}
    assert calls == ["GET /cold", "HEAD /hot/x"]


def test_exceptions_are_answered_as_the_exception_middleware_would(client: TestClient) -> None:
    teapot = client.get("/hot/teapot")
    assert (teapot.status_code, teapot.json()) == (418, {"handled": "SmallTeapot"})
    gone = client.get("/hot/gone")
    assert (gone.status_code, gone.json()) == (410, {"handled": "410"})
    forbidden = client.get("/hot/forbidden")
    assert (forbidden.status_code, forbidden.json()) == (403, {"handled": "http", "status": 403})


def test_an_exception_without_a_handler_propagates(calls: list[str]) -> None:
    with TestClient(_app(calls)) as strict, pytest.raises(ZeroDivisionError):
        strict.get("/hot/bug")
    assert calls == []


def test_the_filekv_app_routes_keys_and_batch_through_it(make_client: Any) -> None:
    client: TestClient = make_client()
    stack: Any = client.app.build_middleware_stack()  # type: ignore[attr-defined]
    while not isinstance(stack, HotRoutes):
        stack = stack.app
    assert {m: [r.path for r in routes] for m, routes in stack.by_method.items()} == {
        "GET": ["/keys", "/keys/{key:key}"],
        "PUT": ["/keys/{key:key}"],
        "DELETE": ["/keys/{key:key}"],
        "POST": ["/batch"],
    }
    assert client.put("/keys/a/b", json={"value": "v"}).status_code == 201
    assert client.get("/keys/a/b").json()["value"] == "v"
    missing = client.get("/keys/nope")
    assert missing.status_code == 404
    request_id = missing.headers["x-request-id"]
    assert missing.json() == {"detail": "no such key", "request_id": request_id}
    # the metrics name the route template, not the path
    families = text_string_to_metric_families(client.get("/metrics").text)
    routes = {
        (s.labels["method"], s.labels["route"], s.labels["status"])
        for f in families
        for s in f.samples
        if s.name == "filekv_http_requests_total"
    }
    assert {("PUT", "/keys/{key}", "201"), ("GET", "/keys/{key}", "404")} <= routes
