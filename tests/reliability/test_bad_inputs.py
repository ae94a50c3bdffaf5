"""Bad inputs, one table (issue 4, item 5), against a real ``filekv serve``.

Each row sends one hostile or broken request. Rows expected to fail must get that 4xx with a JSON
``detail``, and leave the data directory byte for byte as it was (every file, users.json too)
and every existing key readable as before. A few rows are *not* errors for a demanding user
(the API takes any UTF-8 key, so ``..`` or ``/etc/passwd`` are just names): those must succeed,
round-trip exactly, create nothing outside the data directory and leave other keys alone.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from support.server import Server, http_client


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file of a data directory (but the LOCK) and its bytes."""
    return {
        str(path.relative_to(directory)): path.read_bytes()
        for path in sorted(directory.rglob("*"))
        if path.is_file() and path.name != "LOCK"
    }


PASSWORD = "bad inputs password"
SEEDED = {"plain": "1", "dir/nested": "two", "ü-unicode": "drei", "x" * 1024: "max key"}


@dataclass
class Context:
    server: Server
    client: httpx.Client
    token: str


def _login(client: httpx.Client, username: str = "mallory") -> str:
    client.post("/auth/register", json={"username": username, "password": PASSWORD})
    answer = client.post("/auth/token", data={"username": username, "password": PASSWORD})
    assert answer.status_code == 200, answer.text
    token: str = answer.json()["access_token"]
    return token


def _start(root: Path, **settings: object) -> Iterator[Context]:
    server = Server(root / "data", root / "server.log", **settings)
    server.start()
    try:
        with server.client() as client:
            for key, value in SEEDED.items():
                assert client.put(f"/keys/{_quote(key)}", json={"value": value}).status_code == 201
            yield Context(server, client, _login(client))
    finally:
        server.stop()


@pytest.fixture(scope="module")
def ctx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Context]:
    yield from _start(tmp_path_factory.mktemp("bad-inputs"))


@pytest.fixture(scope="module")
def short_ttl(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Context]:
    yield from _start(tmp_path_factory.mktemp("bad-inputs-ttl"), token_ttl=1)


def _quote(key: str) -> str:
    # Everything escaped, dots too: a client must not turn a '..' key into a dot segment.
    return quote(key, safe="").replace(".", "%2E")


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _json_put(path: str, raw: bytes, content_type: str = "application/json") -> Request:
    return lambda c: c.client.put(path, content=raw, headers={"Content-Type": content_type})


def _json_post(path: str, raw: bytes, content_type: str = "application/json") -> Request:
    return lambda c: c.client.post(path, content=raw, headers={"Content-Type": content_type})


def _after_logout(c: Context) -> httpx.Response:
    token = _login(c.client)
    assert c.client.post("/auth/logout", headers=_bearer(token)).status_code == 204
    return c.client.post("/transactions", headers=_bearer(token))


def _forged_token(c: Context) -> httpx.Response:
    # A real token with its last character changed: well-formed, but not one the server issued.
    forged = c.token[:-1] + ("A" if c.token[-1] != "A" else "B")
    return c.client.post("/transactions", headers=_bearer(forged))


def _raw(head: bytes, body: bytes) -> Request:
    """Send ``head`` (request line and headers, without the blank line) and ``body`` verbatim."""

    def send(c: Context) -> httpx.Response:
        with socket.create_connection(("127.0.0.1", c.server.port), timeout=30) as sock:
            sock.sendall(head + b"\r\nHost: x\r\nConnection: close\r\n\r\n" + body)
            received = b""
            while chunk := sock.recv(65536):
                received += chunk
        status_line, _, rest = received.partition(b"\r\n")
        header_block, _, content = rest.partition(b"\r\n\r\n")
        headers = [tuple(line.split(b": ", 1)) for line in header_block.split(b"\r\n")]
        return httpx.Response(int(status_line.split()[1]), headers=headers, content=content)

    return send


Request = Callable[[Context], httpx.Response]
DIGITS_5000 = "1" * 5000  # over Python's int() limit of 4300 digits
BIG = b'{"value": "' + b"a" * ((1 << 20) + 1) + b'"}'
TEN_MB = b'{"value": "' + b"a" * (10 << 20) + b'"}'

# id, request, expected status. Statuses are what a careful API answers; see the comments.
REJECTED: list[object] = [
    pytest.param(lambda c: c.client.put("/keys/", json={"value": "x"}), 422, id="empty-key"),
    pytest.param(_json_put("/keys/big", BIG), 413, id="value-1MiB+1"),
    pytest.param(_json_put("/keys/huge", TEN_MB), 413, id="body-10MB"),
    pytest.param(
        lambda c: c.client.put("/keys/" + "k" * 1025, json={"value": "x"}), 422, id="key-1025-bytes"
    ),
    pytest.param(
        lambda c: c.client.put("/keys/" + "é" * 513, json={"value": "x"}),  # 1026 UTF-8 bytes
        422,
        id="key-1026-utf8-bytes",
    ),
    pytest.param(
        lambda c: c.client.put("/keys/bad%FFkey", json={"value": "x"}),
        422,
        id="percent-encoding-not-utf8",
    ),
    pytest.param(
        lambda c: c.client.put("/keys/cut%E0%A4", json={"value": "x"}),
        422,
        id="percent-encoding-truncated-utf8",
    ),
    pytest.param(
        lambda c: c.client.put("/keys/bad%ZZ", json={"value": "x"}),
        422,
        id="percent-encoding-invalid-hex",
    ),
    pytest.param(_json_put("/keys/m", b'{"value": '), 422, id="malformed-json"),
    pytest.param(_json_put("/keys/m", b'{"value": "a\x00b"}'), 422, id="raw-NUL-in-json"),
    pytest.param(_json_put("/keys/m", b'{"value": "\xff"}'), 422, id="body-not-utf8"),
    pytest.param(_json_put("/keys/m", b'{"value": 5}'), 422, id="value-not-a-string"),
    pytest.param(_json_put("/keys/m", b"[]"), 422, id="json-not-an-object"),
    # TTL (issue 12): refused before anything is written.
    pytest.param(_json_put("/keys/m", b'{"value": "x", "ttl": 0}'), 422, id="ttl-zero"),
    pytest.param(_json_put("/keys/m", b'{"value": "x", "ttl": -5}'), 422, id="ttl-negative"),
    pytest.param(_json_put("/keys/m", b'{"value": "x", "ttl": "30"}'), 422, id="ttl-a-string"),
    pytest.param(_json_put("/keys/m", b'{"value": "x", "ttl": true}'), 422, id="ttl-a-bool"),
    pytest.param(
        _json_put("/keys/m", b'{"value": "x", "ttl": 315360001}'), 422, id="ttl-over-ten-years"
    ),
    pytest.param(
        _json_put("/keys/m", b'{"value": "x", "ttl": ' + DIGITS_5000.encode() + b"}"),
        422,
        id="ttl-5000-digits",
    ),
    pytest.param(
        _json_post(
            "/batch",
            b'{"ops": [{"op":"put","key":"new","value":"1"},'
            b'{"op":"put","key":"new2","value":"1","ttl":-1}]}',
        ),
        422,
        id="batch-ttl-negative",
    ),
    pytest.param(
        _json_put("/keys/m", b'{"value": "x"}', "text/plain"),
        415,
        id="wrong-content-type",
    ),
    pytest.param(lambda c: c.client.put("/keys/m", data={"value": "x"}), 415, id="form-body"),
    # POST /batch: every refusal applies nothing, not even the batch's valid operations.
    pytest.param(_json_post("/batch", b'{"ops": ['), 422, id="batch-broken-json"),
    pytest.param(_json_post("/batch", b'{"ops": []}'), 422, id="batch-no-ops"),
    pytest.param(_json_post("/batch", b"[]"), 422, id="batch-not-an-object"),
    pytest.param(
        _json_post(
            "/batch", b'{"ops": [' + b",".join([b'{"op":"delete","key":"a"}'] * 1001) + b"]}"
        ),
        422,
        id="batch-1001-ops",
    ),
    pytest.param(
        _json_post("/batch", b'{"ops": [{"op":"drop","key":"plain"}]}'), 422, id="batch-bad-op"
    ),
    pytest.param(
        _json_post(
            "/batch",
            b'{"ops": [{"op":"put","key":"new","value":"1"},'
            b'{"op":"delete","key":"plain","expect":999}]}',
        ),
        412,
        id="batch-expect-fails",
    ),
    pytest.param(
        _json_post(
            "/batch",
            b'{"ops": [{"op":"put","key":"new","value":"1","expect":'
            + DIGITS_5000.encode()
            + b"}]}",
        ),
        422,
        id="batch-expect-5000-digits",
    ),
    pytest.param(
        _json_post(
            "/batch",
            b'{"ops": [{"op":"put","key":"new","value":"1","expect":' + b"9" * 40 + b"}]}",
        ),
        412,
        id="batch-expect-40-digits",
    ),
    pytest.param(
        _json_post(
            "/batch",
            b'{"ops": [{"op":"put","key":"new","value":"1"},{"op":"put","key":"'
            + b"k" * 1025
            + b'","value":"1"}]}',
        ),
        422,
        id="batch-key-too-long",
    ),
    pytest.param(
        lambda c: c.client.post(
            "/batch", json={"ops": [{"op": "put", "key": "new", "value": "x" * ((1 << 20) + 1)}]}
        ),
        413,
        id="batch-value-too-large",
    ),
    pytest.param(
        _raw(
            b"POST /batch HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 16777217",
            b"",
        ),
        413,
        id="batch-declared-over-16MiB",
    ),
    pytest.param(
        _json_post("/batch", b'{"ops": [{"op":"delete","key":"plain"}]}', "text/plain"),
        415,
        id="batch-wrong-content-type",
    ),
    pytest.param(lambda c: c.client.post("/transactions/release"), 401, id="release-anonymous"),
    pytest.param(
        lambda c: c.client.post("/transactions/release", headers=_bearer("garbage!!")),
        401,
        id="release-garbage-token",
    ),
    # DELETE /transactions is for admins (mallory is a user): refused, and nothing rolled back.
    pytest.param(lambda c: c.client.delete("/transactions"), 401, id="break-lock-anonymous"),
    pytest.param(
        lambda c: c.client.delete("/transactions", headers=_bearer("garbage!!")),
        401,
        id="break-lock-garbage-token",
    ),
    pytest.param(
        lambda c: c.client.delete("/transactions", headers=_bearer(c.token)),
        403,
        id="break-lock-as-a-user",
    ),
    pytest.param(
        lambda c: c.client.delete(
            "/transactions", headers={**_bearer(c.token), "X-Role": "admin", "X-User": "root"}
        ),
        403,
        id="break-lock-forged-role-headers",
    ),
    pytest.param(
        lambda c: c.client.delete("/transactions", headers={"X-User": "root", "X-Role": "admin"}),
        401,
        id="break-lock-identity-headers-only",
    ),
    pytest.param(lambda c: c.client.get("/keys", params={"limit": -1}), 422, id="limit=-1"),
    pytest.param(lambda c: c.client.get("/keys", params={"limit": 10**9}), 422, id="limit=10^9"),
    pytest.param(lambda c: c.client.get("/keys", params={"limit": "ten"}), 422, id="limit=ten"),
    # Issue 17, finding 10: long numbers were 500s with a traceback (int()'s digit limit).
    pytest.param(
        lambda c: c.client.get("/keys", params={"limit": DIGITS_5000}), 422, id="limit=5000-digits"
    ),
    pytest.param(
        lambda c: c.client.get("/keys", params={"limit": "-" + DIGITS_5000}),
        422,
        id="limit=-5000-digits",
    ),
    pytest.param(
        lambda c: c.client.put(
            "/keys/plain", json={"value": "x"}, headers={"If-Match": f'"{DIGITS_5000}"'}
        ),
        412,
        id="if-match-5000-digits",
    ),
    pytest.param(
        lambda c: c.client.delete("/keys/plain", headers={"If-Match": f'"{DIGITS_5000}"'}),
        412,
        id="delete-if-match-5000-digits",
    ),
    pytest.param(
        lambda c: c.client.put("/keys/plain", json={"value": "x"}, headers={"If-Match": b'"\xb2"'}),
        412,
        id="if-match-superscript-digit",
    ),
    pytest.param(
        _raw(
            b"PUT /keys/plain HTTP/1.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + b"0" * 4992 + b"13",
            b'{"value":"x"}',
        ),
        400,
        id="content-length-4994-digits",
    ),
    pytest.param(
        lambda c: c.client.get("/keys/plain", headers={"X-Big": "a" * 100_000}),
        431,
        id="huge-header-100KB",
    ),
    pytest.param(
        lambda c: c.client.post("/transactions", headers=_bearer("garbage!!not-a-token")),
        401,
        id="garbage-token",
    ),
    pytest.param(_forged_token, 401, id="forged-token"),
    pytest.param(_after_logout, 401, id="token-after-logout"),
    pytest.param(
        lambda c: c.client.post("/transactions", cookies={"user": "mallory"}),
        401,
        id="forged-user-cookie",
    ),
    pytest.param(
        lambda c: c.client.post("/transactions", headers={"X-User": "mallory"}),
        401,
        id="x-user-header",
    ),
    pytest.param(
        lambda c: c.client.get("/auth/me", headers={"X-User": "mallory", "Cookie": "user=mallory"}),
        401,
        id="me-with-forged-identity",
    ),
    # Watching (issue 12): every position and wait is checked before a stream or a wait starts.
    pytest.param(
        lambda c: c.client.get("/watch", params={"from_revision": DIGITS_5000}),
        422,
        id="watch-from-revision-5000-digits",
    ),
    pytest.param(
        lambda c: c.client.get("/watch", params={"from_revision": "-1"}), 422, id="watch-from-neg"
    ),
    pytest.param(
        lambda c: c.client.get("/watch", params={"from_revision": str(1 << 62)}),
        409,
        id="watch-from-ahead-of-the-store",
    ),
    pytest.param(
        lambda c: c.client.get("/watch", headers={"Last-Event-ID": "1;DROP"}),
        422,
        id="watch-last-event-id-garbage",
    ),
    pytest.param(
        lambda c: c.client.get("/watch", headers={"Last-Event-ID": DIGITS_5000[:20]}),
        422,
        id="watch-last-event-id-20-digits",
    ),
    pytest.param(
        lambda c: c.client.get("/watch", headers={"Last-Event-ID": "9" * 100}),
        422,
        id="watch-last-event-id-over-64-chars",
    ),
    pytest.param(
        lambda c: c.client.get("/watch", params={"prefix": "p" * 1025}),
        422,
        id="watch-prefix-1025-bytes",
    ),
    pytest.param(lambda c: c.client.get("/watch", params={"key": ""}), 422, id="watch-empty-key"),
    pytest.param(
        lambda c: c.client.get("/keys", params={"wait": "60.001"}), 422, id="long-poll-wait-over-60"
    ),
    pytest.param(lambda c: c.client.get("/keys", params={"wait": "inf"}), 422, id="long-poll-inf"),
    pytest.param(
        lambda c: c.client.get("/keys", params={"after_revision": DIGITS_5000}),
        422,
        id="long-poll-after-5000-digits",
    ),
    pytest.param(
        lambda c: c.client.get("/keys", params={"wait": "1", "after_revision": str(1 << 62)}),
        409,
        id="long-poll-after-ahead-of-the-store",
    ),
]


def _state(c: Context) -> tuple[dict[str, bytes], dict[str, object]]:
    files = snapshot(c.server.data_dir)
    keys = {key: c.client.get(f"/keys/{_quote(key)}").json() for key in SEEDED}
    return files, keys


@pytest.mark.parametrize(("request_", "status"), REJECTED)
def test_bad_inputs_rejected_with_detail_and_nothing_changes(
    ctx: Context, request_: Request, status: int
) -> None:
    files, keys = _state(ctx)
    answer = request_(ctx)
    assert answer.status_code == status, answer.text[:300]
    assert answer.headers["content-type"].startswith("application/json")
    assert answer.json()["detail"]
    if status == 401:
        assert answer.headers.get("www-authenticate", "").lower().startswith("bearer")
    assert _state(ctx) == (files, keys)


def test_bad_inputs_expired_token_is_refused(short_ttl: Context) -> None:
    files, keys = _state(short_ttl)
    token = _login(short_ttl.client, "shortlived")
    assert short_ttl.client.get("/auth/me", headers=_bearer(token)).status_code == 200
    time.sleep(1.5)  # token_ttl=1: let it expire (this waits; it asserts nothing about time)
    for answer in (
        short_ttl.client.post("/transactions", headers=_bearer(token)),
        short_ttl.client.get("/auth/me", headers=_bearer(token)),
    ):
        assert answer.status_code == 401, answer.text
        assert answer.json()["detail"]
    # Logging in wrote the user file; the store's segments must not have changed.
    after, keys_after = _state(short_ttl)
    assert keys_after == keys
    assert {n: b for n, b in after.items() if n != "users.json"} == {
        n: b for n, b in files.items() if n != "users.json"
    }


# Keys a demanding user expects to be *accepted*: the contract says any UTF-8 is a key, and keys
# are records inside segment files, never file names, so none of these can reach the file system.
LITERAL_KEYS = [
    pytest.param("../../etc/passwd", id="dotdot-path"),
    pytest.param("..", id="dotdot-alone"),
    pytest.param("/etc/passwd", id="absolute-path"),
    pytest.param("C:\\Windows\\system.ini", id="windows-path"),
    pytest.param("a\x00b", id="NUL"),
    pytest.param("tab\tcr\rbell\x07del\x7f", id="control-characters"),
    pytest.param(
        "line\nfeed",
        id="newline",
    ),
    pytest.param("%2e%2e%2f", id="percent-encoded-dots-as-text"),
]


@pytest.mark.parametrize("key", LITERAL_KEYS)
def test_bad_inputs_path_like_and_control_keys_are_plain_keys(ctx: Context, key: str) -> None:
    outside = sorted(p.name for p in ctx.server.data_dir.parent.iterdir())
    _, keys = _state(ctx)
    path = f"/keys/{_quote(key)}"
    put = ctx.client.put(path, json={"value": "literal"})
    assert put.status_code in (200, 201), put.text
    assert put.json()["key"] == key
    got = ctx.client.get(path)
    assert got.status_code == 200 and got.json()["key"] == key
    assert got.json()["value"] == "literal"
    assert key in ctx.client.get("/keys", params={"value": "literal"}).json()["keys"]
    assert ctx.client.delete(path).status_code == 204
    assert sorted(p.name for p in ctx.server.data_dir.parent.iterdir()) == outside
    assert _state(ctx)[1] == keys


def test_bad_inputs_unknown_query_params_are_ignored(ctx: Context) -> None:
    # Ignored, not 422: the norm for HTTP APIs (clients can send newer optional parameters to
    # older servers), and GET /keys is a read, so an ignored typo cannot change data.
    files, keys = _state(ctx)
    plain = ctx.client.get("/keys", params={"prefix": "dir/"})
    extra = ctx.client.get("/keys", params={"prefix": "dir/", "bogus": "1", "limt": "5"})
    assert plain.status_code == extra.status_code == 200
    assert extra.json() == plain.json() == {"keys": ["dir/nested"], "next": None}
    assert _state(ctx) == (files, keys)


def test_bad_inputs_double_dot_segments_never_reach_another_route(ctx: Context) -> None:
    # A raw '/keys/../stats' is normalised by clients; sent verbatim it must not become a key
    # write elsewhere or a 5xx.
    files, keys = _state(ctx)
    with http_client(ctx.server.url) as raw:
        request = raw.build_request("PUT", "/keys/x", json={"value": "x"})
        request.url = request.url.copy_with(raw_path=b"/keys/../stats")
        answer = raw.send(request)
    assert 400 <= answer.status_code < 500, answer.text
    assert answer.json()["detail"]
    assert _state(ctx) == (files, keys)


@pytest.mark.parametrize("key", ["", "k" * 1025], ids=["empty", "1025-bytes"])
def test_bad_inputs_bad_key_is_422_in_the_list_form(ctx: Context, key: str) -> None:
    # Like every other 422 (issue 17, finding 11: the empty key's detail was a string).
    answer = ctx.client.put(f"/keys/{key}", json={"value": "x"})
    assert answer.status_code == 422
    (item,) = answer.json()["detail"]
    assert item["loc"] == ["path", "key"] and item["msg"]


def test_bad_inputs_numbers_with_leading_zeros_still_count(ctx: Context) -> None:
    assert ctx.client.get("/keys", params={"limit": "0" * 5000 + "2"}).json()["next"] is not None
    revision = ctx.client.get("/keys/plain").json()["revision"]
    tag = {"If-Match": f'"{"0" * 5000}{revision}"'}
    assert ctx.client.put("/keys/plain", json={"value": "1"}, headers=tag).status_code == 200
