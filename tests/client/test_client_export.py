"""``export()`` of both clients (``connect``): a real server's keys in order, the prefix, the raw
chunks, and the errors: a status mapped to its class, an answer cut short (``Unavailable``).

The cut-short answers are made by an ``httpx.MockTransport`` (a real server cuts one only after
``export_time_limit``: ``tests/e2e/test_e2e_export.py`` provokes that), and so are the statuses a
shared server will not give on demand (429, 503).
"""

from __future__ import annotations

import json

import httpx
import pytest
from clientkit import BigPage, Body, Connect, unique
from support.server import Server

from filekv.client import (
    Entry,
    FilekvError,
    ServerError,
    TooManyRequests,
    Unauthorized,
    Unavailable,
)

# "/" and spaces, non-ASCII, a newline, what looks like an escape, a long key.
KEYS = ["a", "a/1", "a/2", "ab", "b", "sp ace", "ünï/日本", "new\nline", "%41", "z" * 300]


def _fill(connect: Connect, server: Server, prefix: str) -> int:
    kv = connect(server.url)
    revision: int = kv.batch([("put", prefix + key, f"value of {key} ✈") for key in KEYS])
    return revision


def test_client_export_every_key_in_order_at_one_revision(connect: Connect, server: Server) -> None:
    prefix = unique("export") + "/"
    revision = _fill(connect, server, prefix)
    kv = connect(server.url)
    with kv.export(prefix) as stream:
        assert (stream.revision, stream.keys, stream.received) == (revision, len(KEYS), 0)
        entries = list(stream)
        assert stream.received == len(KEYS)
    expected = [Entry(prefix + key, f"value of {key} ✈", revision) for key in sorted(KEYS)]
    assert entries == expected


@pytest.mark.parametrize(
    ("under", "expected"),
    [
        ("a", ["a", "a/1", "a/2", "ab"]),
        ("a/", ["a/1", "a/2"]),
        ("sp ", ["sp ace"]),
        ("ünï/", ["ünï/日本"]),
        ("nothing here", []),
    ],
)
def test_client_export_prefix_filters(
    connect: Connect, server: Server, under: str, expected: list[str]
) -> None:
    prefix = unique("prefix") + "/"
    _fill(connect, server, prefix)
    kv = connect(server.url)
    with kv.export(prefix + under) as stream:
        assert stream.keys == len(expected)
        assert [entry.key for entry in stream] == [prefix + key for key in expected]


def test_client_export_chunks_are_whole_json_lines(connect: Connect, server: Server) -> None:
    prefix = unique("chunks") + "/"
    revision = _fill(connect, server, prefix)
    kv = connect(server.url)
    with kv.export(prefix) as stream:
        chunks = list(stream.chunks())
    assert all(data.endswith(b"\n") and data.count(b"\n") == count for data, count in chunks)
    lines = [json.loads(line) for data, _count in chunks for line in data.splitlines()]
    assert lines == [
        {"key": prefix + key, "value": f"value of {key} ✈", "revision": revision}
        for key in sorted(KEYS)
    ]


def test_client_export_forged_token_is_unauthorized(connect: Connect, server: Server) -> None:
    kv = connect(server.url, token="forged")
    with pytest.raises(Unauthorized) as raised, kv.export():
        pytest.fail("an export with a forged token was let through")
    assert raised.value.status == 401 and raised.value.detail


def _mock(status: int, body: Body, headers: dict[str, str]) -> httpx.MockTransport:
    def answer(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/export"
        return httpx.Response(status, headers=headers, stream=body)

    return httpx.MockTransport(answer)


def _line(key: str) -> bytes:
    return json.dumps({"key": key, "value": "v", "revision": 1}).encode() + b"\n"


@pytest.mark.parametrize(
    ("pieces", "fail"),
    [
        ([_line("a"), _line("b")], False),  # a line short of X-Filekv-Keys
        ([_line("a") + _line("b"), _line("c")[:9]], False),  # the last line without its end
        ([_line("a"), _line("b")[:5]], True),  # the connection lost in a line
        ([], True),  # lost before the first byte of the body
    ],
)
def test_client_export_cut_short_is_unavailable(
    connect: Connect, pieces: list[bytes], fail: bool
) -> None:
    headers = {"x-filekv-revision": "1", "x-filekv-keys": "3"}
    kv = connect("http://filekv.test", transport=_mock(200, Body(pieces, fail=fail), headers))
    seen: list[Entry] = []
    with kv.export() as stream, pytest.raises(Unavailable, match=r"cut short|cannot reach"):
        for entry in stream:
            seen.append(entry)
    assert [entry.key for entry in seen] == ["a", "b"][: len(seen)]


def test_client_export_split_lines_are_joined(connect: Connect) -> None:
    """A line may arrive in pieces: it is yielded once whole, and a piece may end several."""
    body = _line("a") + _line("ü/日") + _line("c")
    pieces = [body[:3], body[3:30], body[30:31], body[31:]]
    headers = {"x-filekv-revision": "1", "x-filekv-keys": "3"}
    kv = connect("http://filekv.test", transport=_mock(200, Body(pieces), headers))
    with kv.export() as stream:
        assert [entry.key for entry in stream] == ["a", "ü/日", "c"]


@pytest.mark.parametrize(
    ("status", "headers", "error"),
    [
        (429, {"retry-after": "3"}, TooManyRequests),
        (503, {}, ServerError),
        (401, {}, Unauthorized),
    ],
)
def test_client_export_error_status_maps_to_its_class(
    connect: Connect, status: int, headers: dict[str, str], error: type[FilekvError]
) -> None:
    detail = json.dumps({"detail": f"status {status}"}).encode()
    transport = _mock(status, Body([detail]), {"content-type": "application/json", **headers})
    kv = connect("http://filekv.test", transport=transport)
    entered = False
    with pytest.raises(error) as raised, kv.export():
        entered = True
    assert not entered
    assert (type(raised.value), raised.value.status) == (error, status)
    assert raised.value.detail == f"status {status}"
    if isinstance(raised.value, TooManyRequests):
        assert raised.value.retry_after == 3.0


@pytest.mark.parametrize("status", [404, 302, 500])
def test_client_export_reads_little_of_an_answer_that_is_not_an_export(
    connect: Connect, status: int
) -> None:
    """A --url naming a large page: the error is raised after at most 64 KiB of it is read, not
    once the whole is in memory."""
    page = BigPage()

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, headers={"content-type": "text/html"}, stream=page)

    kv = connect("http://filekv.test", transport=httpx.MockTransport(answer))
    with pytest.raises(FilekvError) as raised, kv.export():
        pass
    assert raised.value.status == status
    assert page.pulled <= 1 << 20
    assert len(raised.value.detail) <= 64 << 10
