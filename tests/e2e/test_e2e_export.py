"""``GET /export`` on a real server: JSON Lines in key order from one snapshot, the prefix, the
revision header, auth as for reads, and the limits (concurrent exports, time, a client gone)."""

from __future__ import annotations

import contextlib
import json
import random
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from support.server import Server, login, read_all
from support.sockets import server_lets_go

MakeServer = Callable[..., Server]

KEYS = ["a", "a/1", "a/2", "ab", "b", "sp ace", "ünï/日本", "new\nline", "%41", "z" * 300]


def _export(http: httpx.Client, prefix: str = "", **kwargs: Any) -> tuple[httpx.Response, list]:
    answer = http.get("/export", params={"prefix": prefix}, **kwargs)
    lines = [json.loads(line) for line in answer.text.splitlines()] if answer.is_success else []
    return answer, lines


def _batch(http: httpx.Client, items: dict[str, str]) -> int:
    ops = [{"op": "put", "key": key, "value": value} for key, value in items.items()]
    answer = http.post("/batch", json={"ops": ops})
    assert answer.status_code == 200, answer.text
    revision: int = answer.json()["revision"]
    return revision


def _wait_for(condition: Callable[[], bool], seconds: float = 30.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


def test_e2e_export_sorted_with_revisions_headers_prefixes(
    make_server: MakeServer,
) -> None:
    server = make_server()
    with server.client() as http:
        revision = _batch(http, {key: f"value of {key}" for key in KEYS})
        assert http.put("/keys/b", json={"value": "later"}).status_code == 200
        answer, lines = _export(http)
        assert answer.status_code == 200
        assert answer.headers["content-type"] == "application/x-ndjson"
        assert int(answer.headers["x-filekv-revision"]) == revision + 1
        assert int(answer.headers["x-filekv-keys"]) == len(KEYS)
        assert [line["key"] for line in lines] == sorted(KEYS)
        assert {line["key"]: line["value"] for line in lines} == read_all(http, "")
        assert {line["key"]: line["revision"] for line in lines} == {
            key: revision + 1 if key == "b" else revision for key in KEYS
        }
        assert all(set(line) == {"key", "value", "revision"} for line in lines)
        for prefix, expected in [
            ("a", ["a", "a/1", "a/2", "ab"]),
            ("a/", ["a/1", "a/2"]),
            ("ü", ["ünï/日本"]),
            ("q", []),
        ]:
            answer, lines = _export(http, prefix)
            assert answer.status_code == 200
            assert [line["key"] for line in lines] == expected
            assert answer.headers["x-filekv-keys"] == str(len(expected))


def test_e2e_export_is_one_snapshot_while_writers_run(make_server: MakeServer) -> None:
    """Each write's revision is logged from its answer; every export, read slowly while three
    writers overwrite and delete, equals that log replayed up to its X-Filekv-Revision."""
    server = make_server(fsync="never")
    keys = [f"k/{i:05d}" for i in range(3000)]
    log: list[tuple[int, str, str | None]] = []
    log_lock = threading.Lock()
    with server.client() as http:
        for first in range(0, len(keys), 1000):
            part = {key: f"initial {key}" for key in keys[first : first + 1000]}
            revision = _batch(http, part)
            log.extend((revision, key, value) for key, value in part.items())
    stop = threading.Event()
    errors: list[str] = []

    def writer(seed: int) -> None:
        rng = random.Random(seed)
        with server.client() as http:
            while not stop.is_set():
                key = rng.choice(keys)
                if rng.random() < 0.2:
                    answer = http.post("/batch", json={"ops": [{"op": "delete", "key": key}]})
                    value = None
                else:
                    value = f"{seed} {rng.random()}"
                    answer = http.post(
                        "/batch", json={"ops": [{"op": "put", "key": key, "value": value}]}
                    )
                if answer.status_code != 200:
                    errors.append(answer.text)
                    return
                with log_lock:
                    log.append((answer.json()["revision"], key, value))

    threads = [threading.Thread(target=writer, args=(seed,)) for seed in range(3)]
    for thread in threads:
        thread.start()
    exports = []
    try:
        with server.client() as http:
            for _ in range(3):
                with http.stream("GET", "/export", params={"prefix": "k/"}) as answer:
                    assert answer.status_code == 200
                    revision = int(answer.headers["x-filekv-revision"])
                    lines = []
                    for line in answer.iter_lines():
                        lines.append(json.loads(line))
                        if len(lines) % 500 == 0:
                            time.sleep(0.02)  # a slow reader: the writers go on meanwhile
                exports.append((revision, lines))
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert not errors
    assert len({revision for revision, _lines in exports}) > 1, "the writers did not run"
    for revision, lines in exports:
        expected: dict[str, tuple[str, int]] = {}
        for at, key, value in sorted(log, key=lambda item: item[0]):
            if at > revision:
                break
            if value is None:
                expected.pop(key, None)
            else:
                expected[key] = (value, at)
        # A delete of an absent key writes nothing: its answer's revision is an older one's.
        assert [line["key"] for line in lines] == sorted(expected)
        assert {line["key"]: (line["value"], line["revision"]) for line in lines} == expected


def test_e2e_export_needs_a_login_when_reads_do(make_server: MakeServer) -> None:
    server = make_server(auth_mode="all")
    with server.client() as http:
        headers = login(http)
        http.put("/keys/k", json={"value": "v"}, headers=headers)
        answer, _lines = _export(http)
        assert answer.status_code == 401
        assert answer.json()["detail"]
        answer, _lines = _export(http, headers={"Authorization": "Bearer forged"})
        assert answer.status_code == 401
        answer, lines = _export(http, headers=headers)
        assert answer.status_code == 200
        assert lines == [{"key": "k", "value": "v", "revision": 1}]


def test_e2e_export_writes_mode_reads_anonymously(make_server: MakeServer) -> None:
    server = make_server(auth_mode="writes")
    with server.client() as http:
        headers = login(http)
        http.put("/keys/k", json={"value": "v"}, headers=headers)
        answer, lines = _export(http)
        assert answer.status_code == 200 and len(lines) == 1


def _fill(http: httpx.Client, count: int, value_bytes: int) -> None:
    for first in range(0, count, 1000):
        _batch(http, {f"k/{i:06d}": "x" * value_bytes for i in range(first, first + 1000)})


def _stalled_export(server: Server) -> socket.socket:
    """An export whose client sends the request and never reads the answer."""
    sock = socket.socket()
    # Before connect: the receive window is fixed then, so the server's sends soon block.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    sock.sendall(b"GET /export HTTP/1.1\r\nHost: x\r\n\r\n")
    sock.settimeout(30)
    head = b""
    while b"\r\n\r\n" not in head:  # its answer has started: it holds its slot from now on
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 200"), head
    return sock


def test_e2e_export_concurrency_limit_is_429_then_frees(make_server: MakeServer) -> None:
    server = make_server(fsync="never", export_max_concurrent=1)
    with server.client() as http:
        _fill(http, 20_000, 1000)  # 20 MB: far more than the socket buffers hold
        stalled = _stalled_export(server)
        try:
            assert _wait_for(lambda: _export(http, "none")[0].status_code == 429)
            answer = http.get("/export", params={"prefix": "none"})
            assert answer.status_code == 429
            assert "export_max_concurrent" in answer.json()["detail"]
            assert int(answer.headers["retry-after"]) >= 1
        finally:
            stalled.close()  # the client goes: its export ends, its slot is freed
        assert _wait_for(lambda: _export(http, "k/00000")[0].status_code == 200), server.log_tail()
        for _ in range(20):  # back to back: each ends before the next asks for the slot
            answer, lines = _export(http, "k/00000")
            assert answer.status_code == 200 and len(lines) == 10


def test_e2e_export_time_limit_frees_a_stalled_reader(make_server: MakeServer) -> None:
    """A reader that stops reading holds its export only export_time_limit seconds: then the
    connection is closed mid-answer (the client sees it cut short) and the slot is free."""
    server = make_server(fsync="never", export_max_concurrent=1, export_time_limit=2)
    with server.client() as http:
        _fill(http, 20_000, 1000)
        stalled = _stalled_export(server)
        try:
            started = time.monotonic()
            assert _wait_for(lambda: _export(http, "none")[0].status_code == 429, 5)
            assert _wait_for(lambda: _export(http, "none")[0].status_code == 200, 30)
            freed_after = time.monotonic() - started
            # Not held until the client reads again: the server has let go of the connection.
            assert server_lets_go(stalled)
            # The stalled client now reads on: the answer ends without its last chunk.
            stalled.settimeout(30)
            received = b""
            while chunk := stalled.recv(1 << 20):
                received += chunk
            assert not received.endswith(b"0\r\n\r\n")
            assert received.count(b'"key"') < 20_000
        finally:
            stalled.close()
    assert freed_after >= 1.5, freed_after
    assert "cut off at export_time_limit" in server.log()
    # The WARNING says it; uvicorn's ERROR about an unfinished answer is not logged.
    assert "without completing response" not in server.log()


def test_e2e_export_client_cut_short_is_detected(make_server: MakeServer) -> None:
    """The Python client raises instead of passing a cut-off export for a smaller one."""
    from filekv.client import Client, Unavailable

    server = make_server(fsync="never", export_time_limit=1)
    with server.client() as http:
        _fill(http, 20_000, 1000)
    with Client(server.url) as kv, kv.export() as stream:
        assert stream.keys == 20_000
        time.sleep(2.5)  # stop reading until the server's time limit closes the connection
        with pytest.raises(Unavailable, match=r"cut short|cannot reach"):
            for _ in stream.chunks():
                pass


@pytest.mark.parametrize("reader", ["slow", "stalled"])
def test_e2e_export_sigterm_cuts_it_off_and_exits(make_server: MakeServer, reader: str) -> None:
    """A SIGTERM with an export streaming to a slow reader, or to one that stopped reading,
    ends the export (cut short) and the server exits 0 at once, not after export_time_limit."""
    server = make_server(fsync="never")
    with server.client() as http:
        _fill(http, 20_000, 1000)
    sock = _stalled_export(server)
    received: list[bytes] = []
    stopped = threading.Event()

    def read_slowly() -> None:
        with contextlib.suppress(OSError):
            while chunk := sock.recv(16 << 10):
                received.append(chunk)
                if not stopped.is_set():
                    time.sleep(0.02)  # ~0.8 MB/s: 20 MB would take 25 s

    thread = threading.Thread(target=read_slowly) if reader == "slow" else None
    if thread is not None:
        thread.start()
    try:
        time.sleep(1)
        started = time.monotonic()
        assert server.stop(signal.SIGTERM, timeout=20) == 0
        stopped_after = time.monotonic() - started
        stopped.set()  # then read what is left in the socket's buffers at once
        if thread is not None:
            thread.join(30)
            body = b"".join(received)
            assert not body.endswith(b"0\r\n\r\n")  # cut short, not a whole answer
            assert body.count(b'"key"') < 20_000
    finally:
        sock.close()
    assert stopped_after < 15, stopped_after


def test_e2e_export_checks_its_prefix_as_listing_does(make_server: MakeServer) -> None:
    """A prefix whose %-escapes are not UTF-8 is 422 (it matched a key holding U+FFFD), and so
    is one longer than max_key_bytes, as for /keys and /watch; before any snapshot is taken."""
    server = make_server(fsync="never", export_max_concurrent=1)
    with server.client() as http:
        assert http.put("/keys/ff/%EF%BF%BDx", json={"value": "1"}).status_code == 201
        for query in ("prefix=ff/%FF", "prefix=ff/%E2%82", "pre%66ix=%FF", "prefix=%zz"):
            answer = http.get(f"/export?{query}")
            assert answer.status_code == 422, (query, answer.text)
            assert answer.json()["detail"][0]["type"] == "query_encoding"
        answer = http.get("/export", params={"prefix": "a" * 5000})
        assert answer.status_code == 422, answer.text
        assert answer.json()["detail"][0]["type"] == "string_too_long"
        answer, lines = _export(http, "ff/")
        assert answer.status_code == 200
        assert [line["key"] for line in lines] == ["ff/\ufffdx"]
