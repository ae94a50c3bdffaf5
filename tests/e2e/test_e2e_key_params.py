"""A real ``filekv serve`` on the keys and values the key routes read outside the path.

The query parameters that carry keys, prefixes or values (``/keys``: prefix, value, after;
``/watch``: prefix, key) follow the path's rule for keys: broken or non-UTF-8 percent-encoding is
422, never decoded leniently into U+FFFD. A key that can never exist (empty, over
max_key_bytes) is 422 on GET as on PUT and DELETE, and so is a prefix over max_key_bytes, listed
or watched. ``POST /batch`` types ``expect`` and ``ttl`` as strictly as PUT does. The long poll's
409 names the revision the client sent. A PUT's ``expires_in`` is rounded as a GET rounds it.

Only a real server shows what uvicorn and httptools hand over: the TestClient builds the query
string itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import pytest
from support.server import Server

MAX_KEY_BYTES = 1024  # the default the server runs with

# Raw query values the path refuses as keys: not UTF-8, a stray '%' (twice), an encoded
# surrogate (not UTF-8 either), a cut sequence.
BAD_RAW = [b"%FF", b"%zz", b"end%", b"a%2", b"%ED%A0%80", b"cut%E0%A4"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    base = tmp_path_factory.mktemp("key-params")
    srv = Server(base / "data", base / "server.log", fsync="never")
    srv.start()
    try:
        with srv.client() as http:
            # What a lenient decoding would find: a key and a value holding U+FFFD, a literal %zz.
            for key, value in (("\ufffd", "\ufffd"), ("%zz", "%zz"), ("plain", "v")):
                answer = http.put("/keys/" + _quote(key), json={"value": value})
                assert answer.status_code == 201, answer.text
        yield srv
    finally:
        srv.stop()


def _quote(text: str) -> str:
    return quote(text, safe="")


def raw_get(http: httpx.Client, target: bytes, **kwargs: Any) -> httpx.Response:
    """GET ``target`` (path and query) exactly as given: httpx would re-encode a stray '%'.

    The body is read only if the answer is not a stream: a /watch that wrongly started one
    fails at once instead of waiting for a stream that never ends.
    """
    request = http.build_request("GET", "/", **kwargs)
    request.url = request.url.copy_with(raw_path=target)
    answer = http.send(request, stream=True)
    if answer.headers.get("content-type", "").startswith("text/event-stream"):
        answer.close()
        pytest.fail(f"{target!r} started a stream")
    answer.read()
    answer.close()
    return answer


def _assert_422_at(answer: httpx.Response, loc: list[str], kind: str) -> None:
    assert answer.status_code == 422, answer.text
    detail = answer.json()["detail"]
    assert detail[0]["loc"] == loc, detail
    assert detail[0]["type"] == kind, detail


# -- 1. query parameters with bad encoding ---------------------------------------------------------


@pytest.mark.parametrize("raw", BAD_RAW, ids=lambda raw: raw.decode())
@pytest.mark.parametrize("name", ["prefix", "value", "after"])
def test_e2e_list_parameter_with_bad_encoding_is_422(server: Server, name: str, raw: bytes) -> None:
    with server.client() as http:
        answer = raw_get(http, b"/keys?" + name.encode() + b"=" + raw)
    _assert_422_at(answer, ["query", name], "query_encoding")


@pytest.mark.parametrize("raw", BAD_RAW, ids=lambda raw: raw.decode())
def test_e2e_long_poll_prefix_with_bad_encoding_is_422(server: Server, raw: bytes) -> None:
    with server.client() as http:
        answer = raw_get(http, b"/keys?wait=0&after_revision=0&prefix=" + raw)
    _assert_422_at(answer, ["query", "prefix"], "query_encoding")


@pytest.mark.parametrize("raw", BAD_RAW, ids=lambda raw: raw.decode())
@pytest.mark.parametrize("name", ["prefix", "key"])
def test_e2e_watch_parameter_with_bad_encoding_is_422(
    server: Server, name: str, raw: bytes
) -> None:
    with server.client() as http:
        answer = raw_get(http, b"/watch?" + name.encode() + b"=" + raw)
    _assert_422_at(answer, ["query", name], "query_encoding")


def test_e2e_query_encoding_is_checked_whatever_the_spelling(server: Server) -> None:
    with server.client() as http:
        # The name itself percent-encoded is the same parameter to the server: checked too.
        answer = raw_get(http, b"/keys?pre%66ix=%FF")
        _assert_422_at(answer, ["query", "prefix"], "query_encoding")
        # A repeated parameter: every occurrence is checked, not just the one that is used.
        answer = raw_get(http, b"/keys?prefix=%FF&prefix=p")
        _assert_422_at(answer, ["query", "prefix"], "query_encoding")


def test_e2e_well_encoded_parameters_still_find_their_keys(server: Server) -> None:
    with server.client() as http:
        # U+FFFD and a literal "%zz", properly encoded, are keys like any other.
        assert raw_get(http, b"/keys?prefix=%EF%BF%BD").json()["keys"] == ["\ufffd"]
        assert raw_get(http, b"/keys?value=%EF%BF%BD").json()["keys"] == ["\ufffd"]
        assert raw_get(http, b"/keys?prefix=%25zz").json()["keys"] == ["%zz"]
        assert raw_get(http, b"/keys?after=%25zz&prefix=pl").json()["keys"] == ["plain"]
        # A '%' in a parameter that holds no key (an unknown one) is not the server's concern.
        assert raw_get(http, b"/keys?prefix=pl&utm=%FF").json()["keys"] == ["plain"]


# -- 2. keys and prefixes that can never exist -----------------------------------------------------


@pytest.mark.parametrize(
    "key",
    ["k" * (MAX_KEY_BYTES + 1), "ü" * (MAX_KEY_BYTES // 2 + 1), "日" * (MAX_KEY_BYTES // 3 + 1)],
    ids=["ascii", "two-byte", "three-byte"],
)
def test_e2e_get_of_a_key_over_the_limit_is_422_as_put_and_delete(server: Server, key: str) -> None:
    path = "/keys/" + _quote(key)
    with server.client() as http:
        answers = [http.get(path), http.put(path, json={"value": "v"}), http.delete(path)]
    for answer in answers:
        _assert_422_at(answer, ["path", "key"], "key_invalid")
    assert answers[0].json()["detail"] == answers[2].json()["detail"]


def test_e2e_get_of_the_empty_key_is_422_as_put_and_delete(server: Server) -> None:
    with server.client() as http:
        answers = [
            http.get("/keys/"),
            http.put("/keys/", json={"value": "v"}),
            http.delete("/keys/"),
        ]
    for answer in answers:
        _assert_422_at(answer, ["path", "key"], "key_invalid")


@pytest.mark.parametrize(
    "key", ["k" * MAX_KEY_BYTES, "ü" * (MAX_KEY_BYTES // 2)], ids=["ascii", "two-byte"]
)
def test_e2e_get_of_an_absent_key_at_the_limit_is_still_404(server: Server, key: str) -> None:
    with server.client() as http:
        answer = http.get("/keys/" + _quote(key))
    assert answer.status_code == 404, answer.text
    assert answer.json()["detail"] == "no such key"


@pytest.mark.parametrize(
    "prefix", ["p" * (MAX_KEY_BYTES + 1), "ü" * (MAX_KEY_BYTES // 2 + 1)], ids=["ascii", "two-byte"]
)
@pytest.mark.parametrize(
    "params",
    [{}, {"value": "v"}, {"wait": "0", "after_revision": "0"}],
    ids=["list", "find", "long-poll"],
)
def test_e2e_prefix_over_the_limit_is_422_listed_as_watched(
    server: Server, prefix: str, params: dict[str, str]
) -> None:
    with server.client() as http:
        listed = http.get("/keys", params={**params, "prefix": prefix})
        watched = raw_get(http, b"/watch?" + urlencode({"prefix": prefix}).encode())
    for answer in (listed, watched):
        _assert_422_at(answer, ["query", "prefix"], "string_too_long")


def test_e2e_prefix_at_the_limit_lists(server: Server) -> None:
    with server.client() as http:
        answer = http.get("/keys", params={"prefix": "ü" * (MAX_KEY_BYTES // 2)})
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"keys": [], "next": None}


# -- 3. batch fields typed as strictly as PUT types them -------------------------------------------


@pytest.mark.parametrize(
    "op",
    [
        {"op": "put", "key": "b/k", "value": "v", "ttl": True},
        {"op": "put", "key": "b/k", "value": "v", "ttl": "30"},
        {"op": "put", "key": "b/k", "value": "v", "expect": False},
        {"op": "put", "key": "b/k", "value": "v", "expect": "0"},
        {"op": "put", "key": "b/k", "value": "v", "expect": True},
        {"op": "delete", "key": "plain", "expect": "1"},
        {"op": "delete", "key": "plain", "expect": True},
        {"op": "delete", "key": "plain", "expect": 1.5},
    ],
    ids=lambda op: (
        f"{op['op']}-{'ttl' if 'ttl' in op else 'expect'}={op.get('ttl', op.get('expect'))!r}"
    ),
)
def test_e2e_batch_loosely_typed_fields_are_422_and_apply_nothing(
    server: Server, op: dict[str, Any]
) -> None:
    with server.client() as http:
        answer = http.post("/batch", json={"ops": [op]})
        assert answer.status_code == 422, answer.text
        field = "ttl" if "ttl" in op else "expect"
        assert answer.json()["detail"][0]["loc"] == ["body", "ops", 0, op["op"], field]
        assert http.get("/keys/b/k").status_code == 404
        assert http.get("/keys/plain").status_code == 200


@pytest.mark.parametrize(
    ("field", "value"), [("ttl", True), ("ttl", "30")], ids=["ttl-true", "ttl-string"]
)
def test_e2e_put_refuses_the_same_ttls(server: Server, field: str, value: Any) -> None:
    with server.client() as http:
        answer = http.put("/keys/b/k", json={"value": "v", field: value})
    assert answer.status_code == 422, answer.text


def test_e2e_batch_takes_integer_and_float_ttls(server: Server) -> None:
    with server.client() as http:
        ops = [
            {"op": "put", "key": "b/int", "value": "v", "ttl": 300, "expect": 0},
            {"op": "put", "key": "b/float", "value": "v", "ttl": 299.5},
        ]
        answer = http.post("/batch", json={"ops": ops})
        assert answer.status_code == 200, answer.text
        assert 299 < http.get("/keys/b/int").json()["expires_in"] <= 300
        assert 298 < http.get("/keys/b/float").json()["expires_in"] <= 299.5
        done = http.post("/batch", json={"ops": [{"op": "delete", "key": "b/int", "expect": 0}]})
        assert done.status_code == 412  # a JSON integer expect is compared, not refused
        clean = [{"op": "delete", "key": "b/int"}, {"op": "delete", "key": "b/float"}]
        assert http.post("/batch", json={"ops": clean}).status_code == 200


# -- 4. the long poll's 409 names the revision sent ------------------------------------------------


def test_e2e_ahead_positions_are_named_as_sent(server: Server) -> None:
    with server.client() as http:
        polled = http.get("/keys", params={"after_revision": "99999999", "wait": "0"})
        watched = raw_get(http, b"/watch?from_revision=99999999")
        resumed = raw_get(http, b"/watch", headers={"Last-Event-ID": "99999999"})
    for answer in (polled, watched, resumed):
        assert answer.status_code == 409, answer.text
        assert answer.json()["detail"].startswith("revision 99999999 is ahead of the store"), (
            answer.text
        )


# -- 5. a PUT's expires_in as a GET rounds it ------------------------------------------------------


@pytest.mark.parametrize(
    ("ttl", "echoed"), [(1e-300, 0.001), (300.00049, 300.0), (2, 2.0), (0.4, 0.4)]
)
def test_e2e_put_echoes_expires_in_rounded_as_get_does(
    server: Server, ttl: float, echoed: float
) -> None:
    with server.client() as http:
        answer = http.put("/keys/ttl/k", json={"value": "v", "ttl": ttl})
        assert answer.status_code in (200, 201), answer.text
        assert answer.json()["expires_in"] == echoed
        read = http.get("/keys/ttl/k")
        if read.status_code == 200:  # 1e-300 s is gone before it can be read
            assert read.json()["expires_in"] <= echoed
        http.delete("/keys/ttl/k")


def test_e2e_log_of_this_module_has_no_500(server: Server) -> None:
    assert "answering 500" not in server.log()
