"""Every exception class, each provoked for real where a server can be made to answer it.

Only ``ServerError`` comes from a mock transport (a real server answers 5xx only when its disk or
store fails), and 415 from a real answer to a request the client never sends (it always sends
JSON), decoded by the same function the clients use.
"""

from __future__ import annotations

import inspect

import httpx
import pytest
from clientkit import PASSWORD, Connect, login_new_user, unique
from support.server import Server, free_port, http_client

import filekv.client
from filekv.client import (
    Conflict,
    FilekvError,
    Forbidden,
    Gone,
    InvalidRequest,
    Locked,
    NotFound,
    PreconditionFailed,
    ServerError,
    TooLarge,
    TooManyRequests,
    Unauthorized,
    Unavailable,
)
from filekv.client._errors import STATUS_ERRORS, error_for_status, translate_transport_errors

EXCEPTIONS = [
    NotFound,
    Unauthorized,
    Forbidden,
    Conflict,
    Gone,
    PreconditionFailed,
    TooLarge,
    InvalidRequest,
    Locked,
    TooManyRequests,
    ServerError,
    Unavailable,
]


def test_errors_tree_is_exported_and_documented() -> None:
    exported = {
        obj
        for obj in vars(filekv.client).values()
        if inspect.isclass(obj) and issubclass(obj, FilekvError)
    }
    assert exported == {FilekvError, *EXCEPTIONS}
    tree = filekv.client._errors.__doc__ or ""
    for cls in exported:
        assert issubclass(cls, FilekvError)
        assert cls.__doc__, cls
        assert cls.__name__ in tree, cls


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, InvalidRequest),
        (401, Unauthorized),
        (403, Forbidden),
        (404, NotFound),
        (409, Conflict),
        (410, Gone),
        (412, PreconditionFailed),
        (413, TooLarge),
        (415, InvalidRequest),
        (422, InvalidRequest),
        (423, Locked),
        (429, TooManyRequests),
        (431, InvalidRequest),
        (500, ServerError),
        (503, ServerError),
        (507, ServerError),
        (418, FilekvError),
    ],
)
def test_errors_status_table(status: int, cls: type[FilekvError]) -> None:
    error = error_for_status(httpx.Response(status, json={"detail": "why"}))
    assert type(error) is cls
    assert (error.status, error.detail) == (status, "why")


def test_errors_every_answer_class_has_a_status() -> None:
    assert set(STATUS_ERRORS.values()) | {ServerError} == set(EXCEPTIONS) - {Unavailable}


def _subclasses(cls: type[httpx.TransportError]) -> list[type[httpx.TransportError]]:
    return [cls, *(sub for child in cls.__subclasses__() for sub in _subclasses(child))]


@pytest.mark.parametrize("exc_type", _subclasses(httpx.TransportError), ids=lambda c: c.__name__)
def test_errors_every_transport_error_is_unavailable(exc_type: type[httpx.TransportError]) -> None:
    with pytest.raises(Unavailable) as unavailable, translate_transport_errors():
        raise exc_type("no answer")
    assert unavailable.value.status is None
    assert isinstance(unavailable.value.__cause__, exc_type)


def test_errors_not_found_404(connect: Connect, server: Server) -> None:
    with pytest.raises(NotFound) as error:
        connect(server.url).get(unique("absent"))
    assert (error.value.status, error.value.detail) == (404, "no such key")


def test_errors_unauthorized_401(connect: Connect, server: Server) -> None:
    kv = connect(server.url)
    name = unique("user")
    kv.register(name, PASSWORD)
    with pytest.raises(Unauthorized) as error:
        kv.login(name, "a wrong password")
    assert error.value.status == 401
    assert error.value.detail == "incorrect username or password"
    with pytest.raises(Unauthorized):
        kv.begin()  # transactions need a login
    kv.token = "not-a-token"
    with pytest.raises(Unauthorized) as invalid:
        kv.get("anything")  # a token that is sent is always checked
    assert invalid.value.detail == "invalid or expired token"


def test_errors_forbidden_403(connect: Connect, closed_server: Server) -> None:
    with pytest.raises(Forbidden) as error:
        connect(closed_server.url).register(unique("user"), PASSWORD)
    assert error.value.status == 403 and error.value.detail


def test_errors_conflict_409(connect: Connect, server: Server) -> None:
    kv = connect(server.url)
    name = login_new_user(kv)
    with pytest.raises(Conflict) as error:
        kv.register(name.upper(), PASSWORD)
    assert error.value.status == 409 and error.value.detail
    with pytest.raises(Conflict):
        kv.commit()


def test_errors_precondition_failed_412(connect: Connect, server: Server) -> None:
    kv = connect(server.url)
    key = unique("k")
    kv.put(key, "v")
    with pytest.raises(PreconditionFailed) as error:
        kv.put(key, "w", expect=0)
    assert error.value.status == 412 and "revision mismatch" in error.value.detail


def test_errors_too_large_413(connect: Connect, server: Server) -> None:
    kv = connect(server.url)
    key = unique("k")
    assert kv.put(key, "x" * (1 << 20)) is not None  # max_value_bytes is inclusive
    with pytest.raises(TooLarge) as error:
        kv.put(key, "x" * ((1 << 20) + 1))
    assert error.value.status == 413 and error.value.detail
    assert len(kv.get(key)) == 1 << 20


def test_errors_invalid_request_422(connect: Connect, server: Server) -> None:
    kv = connect(server.url)
    with pytest.raises(InvalidRequest) as error:
        kv.put("k" * 1025, "v")  # max_key_bytes is 1024
    assert error.value.status == 422 and error.value.detail
    with pytest.raises(InvalidRequest) as limit:
        list(kv.keys(limit=10_001))
    assert limit.value.status == 422 and "limit" in limit.value.detail


def test_errors_invalid_request_431(connect: Connect, server: Server) -> None:
    kv = connect(server.url, token="t" * 20_000)  # headers past 16 KiB
    with pytest.raises(InvalidRequest) as error:
        kv.get("k")
    assert error.value.status == 431


def test_errors_invalid_request_415(server: Server) -> None:
    with http_client(server.url) as raw:
        response = raw.put("/keys/k", content=b"value=x", headers={"Content-Type": "text/plain"})
    error = error_for_status(response)
    assert type(error) is InvalidRequest
    assert error.status == 415 and error.detail


def test_errors_locked_423(connect: Connect, server: Server) -> None:
    holder, other = connect(server.url), connect(server.url)
    login_new_user(holder)
    holder.begin()
    try:
        with pytest.raises(Locked) as error:
            other.put(unique("k"), "v")
    finally:
        holder.rollback()
    assert error.value.status == 423
    assert isinstance(error.value.retry_after, float) and error.value.retry_after >= 1


def test_errors_too_many_requests_429(connect: Connect, closed_server: Server) -> None:
    kv = connect(closed_server.url)
    name = unique("nobody")
    for _ in range(5):  # 5 failures of one name from one address lock that pair
        with pytest.raises(Unauthorized):
            kv.login(name, "wrong password")
    with pytest.raises(TooManyRequests) as error:
        kv.login(name, "wrong password")
    assert error.value.status == 429 and error.value.detail
    assert error.value.retry_after is not None and error.value.retry_after >= 1


@pytest.mark.parametrize("status", [500, 503, 507])
def test_errors_server_error_5xx(connect: Connect, status: int) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json={"detail": f"disk says {status}"})

    kv = connect("http://filekv.test", transport=httpx.MockTransport(answer))
    with pytest.raises(ServerError) as error:
        kv.put("k", "v")
    assert (error.value.status, error.value.detail) == (status, f"disk says {status}")


def test_errors_non_json_answer_keeps_its_text(connect: Connect) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(502, text="Bad Gateway from the proxy")

    kv = connect("http://filekv.test", transport=httpx.MockTransport(answer))
    with pytest.raises(ServerError) as error:
        kv.get("k")
    assert error.value.detail == "Bad Gateway from the proxy"


def test_errors_unavailable_on_a_closed_port(connect: Connect) -> None:
    kv = connect(f"http://127.0.0.1:{free_port()}", timeout=5.0)
    with pytest.raises(Unavailable) as error:
        kv.get("k")
    assert error.value.status is None and "cannot reach" in error.value.detail
    with pytest.raises(FilekvError):
        list(kv.keys())
