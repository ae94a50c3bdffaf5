"""What the client checks before sending, and what it makes of an answer that is not filekv's.

Keys whose segments are ``.`` or ``..`` go to the server whole (httpx would remove such a path
segment); an argument the client cannot send (a lone surrogate, an infinite ttl, a URL httpx
refuses) is an ``InvalidRequest`` without a status; an answer that is not filekv's (another web
server at the URL, a redirect) is a ``FilekvError`` naming its status and URL. Every one of
them was a bare httpx, json or codec exception before. Against real servers: ``filekv serve``,
and a plain web server of the standard library for "not filekv".
"""

from __future__ import annotations

import asyncio
import http.server
import io
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from clientkit import Connect, login_new_user, unique
from support.server import Server

from filekv.client import AsyncClient, Change, Client, Entry, FilekvError, InvalidRequest
from filekv.client._protocol import key_path

DOT_KEYS = [".", "..", "a/..", "../a", "./", "...", "./.", "a/./b", "/..", "../", ".../..."]


def test_inputs_key_path_keeps_dot_segments() -> None:
    """What httpx puts on the wire decodes to the key, and no segment of it (cut at "/" or at
    "%2F") is "." or ".."."""
    with httpx.Client(base_url="http://filekv.test") as http:
        for key in DOT_KEYS:
            raw = http.build_request("GET", key_path(key)).url.raw_path.decode("ascii")
            assert raw.startswith("/keys/"), (key, raw)
            sent = raw.removeprefix("/keys/")
            assert httpx.URL("http://h/" + sent).path.removeprefix("/") == key  # the key
            for segment in sent.replace("%2F", "/").split("/"):
                assert segment not in (".", ".."), (key, raw)


def test_inputs_dot_keys_round_trip(connect: Connect, server: Server) -> None:
    kv = connect(server.url)
    for key in DOT_KEYS:
        value = "value of " + key
        revision = kv.put(key, value)
        assert isinstance(revision, int), key
        try:
            assert kv.entry(key) == Entry(key, value, revision, None)
            assert kv.get(key) == value
            assert key in list(kv.keys(prefix=key))
            assert kv.put(key, value + "!", expect=revision) == revision + 1
            assert kv.batch([("put", key, value, revision + 1)]) == revision + 2
        finally:
            kv.delete(key)
        assert kv.get(key, default=None) is None


def test_inputs_dot_keys_in_a_transaction(connect: Connect, server: Server) -> None:
    kv = connect(server.url)
    login_new_user(kv)
    with kv.transaction():
        assert kv.put("..", "staged") is None
        assert kv.put(".", "staged too") is None
        assert kv.get("..") == "staged"  # the holder reads its own staged writes
    assert (kv.get(".."), kv.get(".")) == ("staged", "staged too")
    with kv.transaction():
        kv.delete("..")
        kv.delete(".")
    assert kv.get("..", default=None) is None and kv.get(".", default=None) is None


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_inputs_watch_a_dot_key(server: Server, flavour: str) -> None:
    with Client(server.url) as kv:
        first = kv.put("..", "watched")
        kv.put(".", "not this one")
        kv.delete("..")
        kv.delete(".")

    async def watch_async() -> list[Change]:
        async with AsyncClient(server.url) as kv:
            got = []
            async for change in kv.watch(key="..", from_revision=first):
                got.append(change)
                if len(got) == 2:
                    return got
        raise AssertionError("the watch ended")

    if flavour == "sync":
        with Client(server.url) as kv:
            got = _first(kv.watch(key="..", from_revision=first), 2)
    else:
        got = asyncio.run(asyncio.wait_for(watch_async(), 30))
    assert [(c.op, c.key, c.value) for c in got] == [
        ("put", "..", "watched"),
        ("delete", "..", None),
    ]


def _first(watch: Iterator[Any], count: int) -> list[Any]:
    """The first ``count`` items of a blocking watch, or what it raised; fails after 30 s."""
    got: list[Any] = []
    raised: list[BaseException] = []

    def run() -> None:
        try:
            for item in watch:
                got.append(item)
                if len(got) == count:
                    return
        except BaseException as exc:
            raised.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(30)
    assert not thread.is_alive(), "the watch neither yielded nor raised in 30 s"
    if raised:
        raise raised[0]
    return got


# --- arguments refused before sending


def _refused(error: pytest.ExceptionInfo[InvalidRequest], *words: str) -> None:
    assert error.value.status is None
    for word in words:
        assert word in error.value.detail, error.value.detail


def test_inputs_key_too_long_for_a_url(connect: Connect, server: Server) -> None:
    kv = connect(server.url)
    key = "k" * 70_000
    for call in (lambda: kv.put(key, "v"), lambda: kv.get(key), lambda: kv.delete(key)):
        with pytest.raises(InvalidRequest) as error:
            call()
        _refused(error, "URL too long", "70,006 characters")
        assert len(error.value.detail) < 300


@pytest.mark.parametrize(
    "url",
    # spaces around it: httpx kept a trailing one in every request URL
    ["http://[::1", "http://h:port", "ftp://host", "not a url", " http://h", "http://h:8000 "],
)
def test_inputs_bad_server_url(connect: Connect, url: str) -> None:
    with pytest.raises(InvalidRequest) as error:
        connect(url)
    _refused(error, "invalid server URL", repr(url))


@pytest.mark.parametrize("ttl", [float("inf"), float("-inf"), float("nan"), 0, -1])
def test_inputs_ttl_must_be_finite_above_zero(connect: Connect, server: Server, ttl: Any) -> None:
    kv = connect(server.url)
    key = unique("ttl")
    with pytest.raises(InvalidRequest) as error:
        kv.put(key, "v", ttl=ttl)
    _refused(error, "ttl must be a finite number of seconds above 0")
    with pytest.raises(InvalidRequest) as batch:
        kv.batch([("put", key, "v"), ("put", key, "v", None, ttl)])
    _refused(batch, "op 1: ttl")
    assert kv.get(key, default=None) is None  # nothing was sent
    with pytest.raises(InvalidRequest) as answer:  # finite: the server's upper bound says
        kv.put(key, "v", ttl=10**400)
    assert answer.value.status == 422


def test_inputs_lone_surrogates(connect: Connect, server: Server) -> None:
    kv = connect(server.url)
    key = unique("utf8")
    calls = {
        "the key": [
            lambda: kv.put(key + "\ud800", "v"),
            lambda: kv.get("\udfff" + key),
            lambda: kv.delete(key + "\ud800"),
        ],
        "the value": [lambda: kv.put(key, "x\ud800")],
        "op 0: the key": [lambda: kv.batch([("put", "\ud800", "v")])],
        "op 1: the value": [
            lambda: kv.batch([("delete", key), {"op": "put", "key": key, "value": "\ud800"}])
        ],
        "GET /keys": [lambda: list(kv.keys(prefix="\ud800")), lambda: list(kv.find("\ud800"))],
        "POST /auth/token": [lambda: kv.login("\ud800", "password")],
        "POST /auth/register": [lambda: kv.register(unique("u"), "pass\ud800word")],
    }
    for words, group in calls.items():
        for call in group:
            with pytest.raises(InvalidRequest) as error:
                call()
            _refused(error, words, "not valid UTF-8", "'\\ud")
    assert kv.get(key, default=None) is None


def test_inputs_refused_arguments_are_still_value_and_type_errors(connect: Connect) -> None:
    """Before the client had its own error for them these were ``ValueError`` and
    ``TypeError``: they still are, as well as ``InvalidRequest``."""
    kv = connect("http://127.0.0.1:9")  # nothing is sent
    with pytest.raises(ValueError) as negative:
        kv.put("k", "v", expect=-1)
    assert isinstance(negative.value, InvalidRequest)
    with pytest.raises(ValueError) as infinite:
        kv.put("k", "v", ttl=float("inf"))
    assert isinstance(infinite.value, InvalidRequest)
    with pytest.raises(ValueError) as malformed:
        kv.batch([("get", "k")])
    assert isinstance(malformed.value, InvalidRequest)
    with pytest.raises(TypeError) as not_str:
        kv.put("k", b"v")
    assert isinstance(not_str.value, InvalidRequest)
    with pytest.raises(TypeError):
        kv.get(1)


# --- answers that are not filekv's


class _NotFilekv(http.server.BaseHTTPRequestHandler):
    """A web server that is not filekv: a page for every path, or (``/moved``) a redirect."""

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        self.rfile.read(length)
        if self.path.startswith("/moved"):
            self.send_response(301)
            self.send_header("Location", "https://elsewhere.example/")
            body = b""
        else:
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            body = b"<html><body>It works!</body></html>"
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_PUT = do_POST = do_DELETE = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def web_server() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotFilekv)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def _not_filekv_calls(kv: Any) -> dict[str, Any]:
    def export() -> None:
        with kv.export() as stream:
            list(stream)

    return {
        "GET /keys/k": lambda: kv.get("k"),
        "PUT /keys/k": lambda: kv.put("k", "v"),
        "DELETE /keys/k": lambda: kv.delete("k"),
        "GET /keys?prefix=": lambda: list(kv.keys()),
        "POST /batch": lambda: kv.batch([("put", "k", "v")]),
        "POST /auth/register": lambda: kv.register("user", "password"),
        "POST /auth/token": lambda: kv.login("user", "password"),
        "POST /auth/logout": kv.logout,
        "GET /auth/me": kv.whoami,
        "GET /healthz": kv.health,
        "POST /transactions": kv.begin,
        "POST /transactions/commit": kv.commit,
        "GET /export": export,
        "GET /admin/backup": lambda: kv.backup(io.BytesIO()),
    }


@pytest.mark.parametrize(("path", "status"), [("", 200), ("/moved", 301)])
def test_inputs_an_answer_not_filekvs(
    connect: Connect, web_server: str, path: str, status: int
) -> None:
    kv = connect(web_server + path)
    for request, call in _not_filekv_calls(kv).items():
        with pytest.raises(FilekvError) as error:
            call()
        assert type(error.value) is FilekvError, (request, error.value)
        assert error.value.status == status
        method, _, where = request.partition(" ")
        assert f"{method} {web_server}{path}{where}" in error.value.detail
        assert (
            f"answered {status}" in error.value.detail
            and "not a filekv answer" in error.value.detail
        )
        if status == 301:
            assert "a redirect to https://elsewhere.example/" in error.value.detail


@pytest.mark.parametrize(("path", "status"), [("", 200), ("/moved", 301)])
def test_inputs_a_watch_of_a_server_not_filekv(web_server: str, path: str, status: int) -> None:
    with Client(web_server + path) as kv, pytest.raises(FilekvError) as error:
        _first(kv.watch("p/"), 1)
    assert type(error.value) is FilekvError and error.value.status == status
    assert f"GET {web_server}{path}/watch?prefix=p%2F answered {status}" in error.value.detail

    async def watch() -> None:
        async with AsyncClient(web_server + path) as kv:
            async for _change in kv.watch("p/"):
                pass

    with pytest.raises(FilekvError) as async_error:
        asyncio.run(asyncio.wait_for(watch(), 30))
    assert type(async_error.value) is FilekvError and async_error.value.status == status


@pytest.mark.parametrize(
    "body",
    [
        b"[1, 2]",
        b"{}",
        b"not json",
        b'{"key": 1, "value": "v", "revision": "2", "depth": true, "applied": null}',
    ],
)
def test_inputs_json_not_filekvs(connect: Connect, body: bytes) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body, headers={"Content-Type": "application/json"})

    kv = connect("http://filekv.test", transport=httpx.MockTransport(answer))
    for call in (lambda: kv.get("k"), lambda: kv.put("k", "v"), kv.begin, kv.commit):
        with pytest.raises(FilekvError) as error:
            call()
        assert type(error.value) is FilekvError and error.value.status == 200
        assert "http://filekv.test/" in error.value.detail
