"""Watching a real ``filekv serve``: ``GET /watch`` (Server-Sent Events) and the long poll.

The streams are read with httpx's streaming API and parsed here by a few lines of the SSE rules
(not by filekv's own client), so what is checked is what any EventSource or ``curl -N`` sees.
Waits are bounded (a hang fails), nothing asserts on time.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from support.server import Server, http_client, login
from support.sockets import server_lets_go

from filekv.engine import Store

READ_TIMEOUT = 20.0  # a stream that says nothing for this long has hung


@dataclass
class Event:
    name: str
    id: str | None
    data: dict[str, object]


def events(response: httpx.Response) -> Iterator[Event | str]:
    """The events of an SSE stream, and its comment lines (as str) as they come."""
    name, event_id, data = "message", None, []
    for line in response.iter_lines():
        if line.startswith(":"):
            yield line
        elif not line:
            if data:
                yield Event(name, event_id, json.loads("\n".join(data)))
            name, data = "message", []
        else:
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "event":
                name = value
            elif field == "id":
                event_id = value
            elif field == "data":
                data.append(value)


def take(response: httpx.Response, count: int) -> list[Event]:
    got: list[Event] = []
    for item in events(response):
        if isinstance(item, Event):
            got.append(item)
            if len(got) == count:
                break
    return got


def stream(http: httpx.Client, **kwargs: object) -> httpx.Response:
    """The started answer of ``GET /watch`` (use it in a ``with``)."""
    return http.stream("GET", "/watch", **kwargs)  # type: ignore[return-value, arg-type]


def put(http: httpx.Client, key: str, value: str) -> int:
    answer = http.put(f"/keys/{key}", json={"value": value})
    assert answer.status_code in (200, 201), answer.text
    revision: int = answer.json()["revision"]
    return revision


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    base = tmp_path_factory.mktemp("watch")
    srv = Server(
        base / "data",
        base / "server.log",
        fsync="never",
        watch_heartbeat_seconds=0.3,
        watch_queue_events=20,
        watch_max_watchers=4,
    )
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def client(server: Server) -> httpx.Client:
    return http_client(server.url, timeout=httpx.Timeout(10, read=READ_TIMEOUT))


def test_e2e_watch_streams_each_committed_change_once_in_order(server: Server) -> None:
    with client(server) as http:
        start = put(http, "elsewhere", "x") + 1
        with stream(http, params={"prefix": "s1/", "from_revision": start}) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            first = put(http, "s1/a", "1")
            put(http, "other/b", "not watched")
            batch = http.post(
                "/batch",
                json={
                    "ops": [
                        {"op": "put", "key": "s1/b", "value": "2"},
                        {"op": "put", "key": "other/c", "value": "3"},
                        {"op": "delete", "key": "s1/a"},
                    ]
                },
            ).json()["revision"]
            holder = login(http, "watch-holder")
            begun = http.post("/transactions", headers=holder)
            assert begun.status_code in (200, 201), begun.text
            staged = http.put("/keys/s1/staged", json={"value": "v"}, headers=holder)
            assert staged.json()["staged"] is True
            assert http.post("/transactions/commit", headers=holder).status_code == 200
            commit = batch + 1
            got = take(response, 4)
    assert [(e.name, e.id) for e in got] == [
        ("put", str(first)),
        ("put", f"{batch}.0"),
        ("delete", str(batch)),
        ("put", str(commit)),
    ]
    assert got[0].data == {"key": "s1/a", "value": "1", "revision": first, "expires_in": None}
    assert got[2].data == {"key": "s1/a", "value": None, "revision": batch, "expires_in": None}
    assert got[3].data["key"] == "s1/staged"


def test_e2e_watch_one_key_and_heartbeats(server: Server) -> None:
    with client(server) as http, stream(http, params={"key": "hb/k"}) as response:
        put(http, "hb/k2", "not this key")
        revision = put(http, "hb/k", "v")
        seen: list[Event | str] = []
        for item in events(response):
            seen.append(item)
            if isinstance(item, Event) and any(line == ": heartbeat" for line in seen):
                break
            if isinstance(item, str) and any(isinstance(e, Event) for e in seen):
                break
    changes = [e for e in seen if isinstance(e, Event)]
    assert [(e.id, e.data["key"]) for e in changes] == [(str(revision), "hb/k")]
    assert ": heartbeat" in seen


def test_e2e_watch_overflow_ends_the_stream_and_resume_loses_nothing(server: Server) -> None:
    big = "v" * 400_000  # the socket's buffers fill, then the watcher's queue (20 events)
    with client(server) as http:
        start = put(http, "of/start", "0")
        with stream(http, params={"prefix": "of/", "from_revision": start + 1}) as response:
            written = [put(http, f"of/{i:03d}", big) for i in range(80)]
            got: list[Event] = []
            for item in events(response):
                if isinstance(item, Event):
                    got.append(item)
        assert got[-1].name == "overflow"
        resume_from = got[-1].data["last_event_id"]
        assert isinstance(resume_from, str)
        received = [e.data["revision"] for e in got[:-1]]
        assert received == written[: len(received)]
        assert len(received) < len(written)
        headers = {"Last-Event-ID": resume_from}
        with stream(http, params={"prefix": "of/"}, headers=headers) as response:
            rest = take(response, len(written) - len(received))
    assert received + [e.data["revision"] for e in rest] == written


def test_e2e_watch_a_disconnected_client_frees_its_watcher_at_once(server: Server) -> None:
    with client(server) as http:
        open_streams = [stream(http, params={"prefix": f"dc{i}/"}) for i in range(4)]
        responses = [s.__enter__() for s in open_streams]
        try:
            assert all(r.status_code == 200 for r in responses)
            refused = http.get("/watch", params={"prefix": "dc-more/"})
            assert refused.status_code == 503
            assert "watch_max_watchers" in refused.json()["detail"]
        finally:
            for s in open_streams:
                s.__exit__(None, None, None)
        for _ in range(200):  # bounded: the server notices the closed connections
            with stream(http, params={"prefix": "dc-again/"}) as response:
                if response.status_code == 200:
                    break
            threading.Event().wait(0.05)
        assert response.status_code == 200


@pytest.mark.parametrize(
    ("params", "headers", "status"),
    [
        ({"from_revision": "x"}, {}, 422),
        ({"from_revision": "-1"}, {}, 422),
        ({"from_revision": str(10**12)}, {}, 409),
        ({}, {"Last-Event-ID": "seven"}, 422),
        ({}, {"Last-Event-ID": "1.2.3"}, 422),
        ({}, {"Last-Event-ID": "0.1"}, 422),
        ({}, {"Last-Event-ID": str(10**15)}, 409),
        ({"key": ""}, {}, 422),
        ({"prefix": "x" * 2000}, {}, 422),
    ],
)
def test_e2e_watch_bad_positions_are_4xx_before_any_stream(
    server: Server, params: dict[str, str], headers: dict[str, str], status: int
) -> None:
    with client(server) as http:
        answer = http.get("/watch", params=params, headers=headers)
    assert answer.status_code == status, answer.text
    assert "detail" in answer.json()


def test_e2e_long_poll_answers_at_a_change_under_its_prefix(server: Server) -> None:
    with client(server) as http:
        before = put(http, "lp/a", "1")
        # A change after after_revision already happened: the answer comes at once.
        answer = http.get("/keys", params={"prefix": "lp/", "wait": 60, "after_revision": 0})
        assert answer.status_code == 200
        assert answer.json()["keys"] == ["lp/a"]
        assert answer.json()["revision"] >= before
        # Nothing after it under the prefix: the poll waits until a change comes.
        polled: list[httpx.Response] = []
        poller = threading.Thread(
            target=lambda: polled.append(
                http.get("/keys", params={"prefix": "lp/", "wait": 60, "after_revision": before})
            )
        )
        with client(server) as other:
            poller.start()
            put(other, "lp-not/x", "another prefix: the poll goes on")
            threading.Event().wait(0.3)
            assert not polled
            changed = put(other, "lp/b", "2")
        poller.join(30)  # well before the 60 s wait: the change ended it
        assert not poller.is_alive()
        assert polled[0].status_code == 200
        assert polled[0].json()["keys"] == ["lp/a", "lp/b"]
        assert polled[0].json()["revision"] >= changed
        # Nothing changes: the answer comes after wait seconds, with the same revision.
        quiet = http.get("/keys", params={"prefix": "lp/", "wait": 0.2})
        assert quiet.status_code == 200
        assert quiet.json()["keys"] == ["lp/a", "lp/b"]


@pytest.mark.parametrize(
    ("params", "status"),
    [
        ({"wait": "61"}, 422),
        ({"wait": "-1"}, 422),
        ({"wait": "nan"}, 422),
        ({"wait": "soon"}, 422),
        ({"wait": "1_0"}, 422),
        ({"wait": " 5"}, 422),
        ({"wait": "+5"}, 422),
        ({"wait": "inf"}, 422),
        ({"wait": "\uff15"}, 422),
        ({"wait": "1.2.3"}, 422),
        ({"wait": "1e5"}, 422),
        ({"wait": "0" * 40}, 422),
        ({"wait": "0.1"}, 200),
        ({"wait": ".1"}, 200),
        ({"wait": "0."}, 200),
        ({"wait": "1e-1"}, 200),
        ({"after_revision": "-1"}, 422),
        ({"after_revision": "1e3"}, 422),
        ({"after_revision": str(10**30)}, 422),
        ({"after_revision": str(10**12)}, 409),
    ],
)
def test_e2e_long_poll_bad_parameters(server: Server, params: dict[str, str], status: int) -> None:
    with client(server) as http:
        answer = http.get("/keys", params={"prefix": "lp/", **params})
    assert answer.status_code == status, answer.text


def test_e2e_watch_resumes_by_last_event_id_across_a_restart(tmp_path: Path) -> None:
    server = Server(tmp_path / "data", tmp_path / "server.log", fsync="never")
    server.start()
    try:
        with client(server) as http:
            revisions = [put(http, f"r/{i}", str(i)) for i in range(3)]
            batch = http.post(
                "/batch",
                json={"ops": [{"op": "put", "key": f"r/b{i}", "value": "b"} for i in range(3)]},
            ).json()["revision"]
            with stream(http, params={"prefix": "r/", "from_revision": 1}) as response:
                got = take(response, 4)  # three puts and the batch's first operation
        assert [e.id for e in got] == [*map(str, revisions), f"{batch}.0"]
        # A stream still open does not hold up a graceful stop: it is ended, the exit is clean.
        ended: list[bool] = []

        def follow() -> None:
            with client(server) as http, stream(http, params={"prefix": "r/"}) as response:
                for _ in events(response):
                    pass
            ended.append(True)

        follower = threading.Thread(target=follow)
        follower.start()
        threading.Event().wait(0.5)
        assert server.stop() == 0
        follower.join(30)
        assert ended == [True]
        server.start()
        with client(server) as http:
            after = put(http, "r/after", "restart")
            headers = {"Last-Event-ID": got[-1].id or ""}
            with stream(http, params={"prefix": "r/"}, headers=headers) as response:
                rest = take(response, 3)
            assert [(e.id, e.data["key"]) for e in rest] == [
                (f"{batch}.1", "r/b1"),
                (str(batch), "r/b2"),
                (str(after), "r/after"),
            ]
            # From the start of the stream's own id (sent first): nothing before, nothing twice.
            with stream(http, params={"prefix": "r/"}) as response:
                first_id = next(
                    line for line in response.iter_lines() if line.startswith("id:")
                ).removeprefix("id: ")
            assert first_id == str(after)
    finally:
        server.stop()


def test_e2e_watch_410_after_compaction(tmp_path: Path) -> None:
    data = tmp_path / "data"
    # Two compactions 20 writes apart: the first seals the segment that holds revisions 1-20,
    # the second merges it (it is more than watch_history=5 revisions old): history dropped.
    with Store.open(data, fsync="never", watch_history=5) as store:
        for i in range(20):
            store.put(f"c/{i % 3}", str(i).encode())
        assert not store.compact()  # only history to keep: the segment is sealed
        for i in range(20):
            store.put(f"c/{i % 3}", str(i).encode())
        assert store.compact()
    server = Server(data, tmp_path / "server.log", fsync="never", watch_history=5)
    server.start()
    try:
        with client(server) as http:
            refused = http.get("/watch", params={"from_revision": 1})
            assert refused.status_code == 410
            oldest = refused.json()["oldest_revision"]
            assert 1 < oldest <= 41 - 5
            assert "detail" in refused.json()
            polled = http.get("/keys", params={"wait": 1, "after_revision": 0})
            assert polled.status_code == 410
            assert polled.json()["oldest_revision"] == oldest
            with stream(http, params={"from_revision": oldest}) as response:
                assert response.status_code == 200
                got = take(response, 40 - oldest + 1)
            assert [e.data["revision"] for e in got] == list(range(oldest, 41))
    finally:
        server.stop()


def test_e2e_watch_needs_a_token_when_auth_mode_is_all(tmp_path: Path) -> None:
    server = Server(tmp_path / "data", tmp_path / "server.log", fsync="never", auth_mode="all")
    server.start()
    try:
        with client(server) as http:
            assert http.get("/watch").status_code == 401
            assert http.get("/keys", params={"wait": 0.1}).status_code == 401
            headers = login(http)
            assert http.get("/watch", headers={"Authorization": "Bearer nope"}).status_code == 401
            with stream(http, headers=headers, params={"prefix": "a/"}) as response:
                assert response.status_code == 200
                revision = put(http_client(server.url, headers=headers), "a/k", "v")
                assert take(response, 1)[0].data["revision"] == revision
            assert http.get("/keys", params={"wait": 0.1}, headers=headers).status_code == 200
    finally:
        server.stop()


def _raw_watch(server: Server, prefix: str) -> socket.socket:
    """A client that asks for a stream and never reads it (a tiny receive buffer)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    sock.sendall(f"GET /watch?prefix={prefix} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    return sock


def _read_to_end(sock: socket.socket, limit: float = 30.0) -> bytes:
    """Everything the server sent until it closed the connection (a timeout fails the test)."""
    sock.settimeout(limit)
    received = bytearray()
    while chunk := sock.recv(1 << 20):
        received += chunk
    return bytes(received)


def test_e2e_watch_a_client_that_stops_reading_is_closed_and_frees_its_slot(
    tmp_path: Path,
) -> None:
    """Two streams that never read, a batch of 10 x 1 MB under their prefix: each stream is
    closed after watch_stall_seconds (its slot free again), having handed the server a bounded
    part of the 10 MB (not the whole batch at once), and without uvicorn's ERROR."""
    server = Server(
        tmp_path / "data",
        tmp_path / "server.log",
        fsync="never",
        watch_max_watchers=2,
        watch_stall_seconds=1,
    )
    server.start()
    stalled = [_raw_watch(server, "burst/") for _ in range(2)]
    try:
        with client(server) as http:
            for _ in range(100):  # both streams have started
                if http.get("/watch", params={"prefix": "other/"}).status_code == 503:
                    break
                threading.Event().wait(0.05)
            value = "q" * 1_000_000
            ops = [{"op": "put", "key": f"burst/{i}", "value": value} for i in range(10)]
            assert http.post("/batch", json={"ops": ops}).status_code == 200
            started = time.monotonic()
            for _ in range(400):  # bounded: the stalled streams are closed, their slots free
                with stream(http, params={"prefix": "other/"}) as response:
                    if response.status_code == 200:
                        break
                threading.Event().wait(0.05)
            assert response.status_code == 200
            assert time.monotonic() - started >= 0.5
        for sock in stalled:
            # The server does not keep the connection until the client reads again (a close
            # of the transport waits for its unsent bytes to drain): it lets go at once.
            assert server_lets_go(sock)
            received = _read_to_end(sock)  # what the kernel held, then the end: not a timeout
            assert received.startswith(b"HTTP/1.1 200")
            # What the kernel's buffers held (the send buffer grows up to tcp_wmem's maximum,
            # 4 MiB by default) and a piece or two of the transport's, not the 10 MB batch.
            assert len(received) < 6_000_000, len(received)
            assert not received.endswith(b"0\r\n\r\n")  # cut off, not ended as if complete
    finally:
        for sock in stalled:
            sock.close()
        server.stop()
    log = server.log()
    assert "watch_stall_seconds" in log
    assert "without completing response" not in log


def test_e2e_watch_ends_when_its_token_dies(tmp_path: Path) -> None:
    """auth_mode=all: a stream whose token is logged out gets a last `event: unauthorized` and
    is closed; the values written after the logout never reach it."""
    server = Server(
        tmp_path / "data",
        tmp_path / "server.log",
        fsync="never",
        auth_mode="all",
        watch_heartbeat_seconds=0.3,
    )
    server.start()
    try:
        with client(server) as http:
            headers = login(http)
            writer = login(http, "writer")
            with stream(http, headers=headers, params={"prefix": "au/"}) as response:
                assert response.status_code == 200
                before = http.put("/keys/au/x", json={"value": "before"}, headers=writer)
                seen = (item for item in events(response) if isinstance(item, Event))
                assert next(seen).data["value"] == "before"
                assert http.post("/auth/logout", headers=headers).status_code == 204
                assert http.get("/auth/me", headers=headers).status_code == 401
                threading.Event().wait(0.6)  # past the stream's check interval
                for i in range(3):
                    answer = http.put("/keys/au/x", json={"value": f"secret{i}"}, headers=writer)
                    assert answer.status_code == 200
                rest: list[Event] = []
                for event in seen:  # bounded: the stream ends, or the 3 puts came through
                    rest.append(event)
                    if len(rest) == 3:
                        break
        assert [e.name for e in rest] == ["unauthorized"]
        assert "no longer valid" in str(rest[0].data["detail"])
        assert rest[0].data["last_event_id"] == str(before.json()["revision"])
    finally:
        server.stop()


def test_e2e_watch_last_event_id_inside_a_revision_ahead_of_the_store_is_409(
    server: Server,
) -> None:
    """``<R+1>.<i>`` names revision R+1, which the store (at R) does not have: 409, never a
    stream that would skip the next write."""
    with client(server) as http:
        revision = put(http, "ahead/a", "1")
        with stream(http, headers={"Last-Event-ID": f"{revision + 1}.5"}) as answer:
            assert answer.status_code == 409  # a stream is never read here: no hang if not
            assert f"{revision + 1}.5" in json.loads(answer.read())["detail"]
        # R.i of a revision the store has: a stream
        with stream(
            http, params={"prefix": "ahead/"}, headers={"Last-Event-ID": f"{revision}.0"}
        ) as response:
            assert response.status_code == 200


def test_e2e_watch_a_burst_past_the_limit_is_503_before_any_stream(tmp_path: Path) -> None:
    """30 streams asked for at once with watch_max_watchers=5: 5 streams, 25 answers 503 with
    Retry-After; no stream starts with 200 only to end with overflow."""
    server = Server(tmp_path / "data", tmp_path / "server.log", fsync="never", watch_max_watchers=5)
    server.start()

    async def one(i: int) -> tuple[bytes, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(f"GET /watch?prefix=burst{i}/ HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        await writer.drain()
        got = b""
        while b"retry:" not in got and b'"detail"' not in got:  # a stream's start, or an error
            data = await asyncio.wait_for(reader.read(4096), READ_TIMEOUT)
            if not data:
                break
            got += data
        return got, writer

    async def burst() -> list[bytes]:
        answers = await asyncio.gather(*(one(i) for i in range(30)))
        for _, writer in answers:
            writer.close()
        return [got for got, _ in answers]

    try:
        answers = asyncio.run(burst())
    finally:
        server.stop()
    started = [a for a in answers if a.startswith(b"HTTP/1.1 200")]
    refused = [a for a in answers if a.startswith(b"HTTP/1.1 503")]
    assert len(started) == 5 and len(refused) == 25, [a[:40] for a in answers]
    assert all(b"retry-after:" in a.lower() for a in refused)
    assert not any(b"overflow" in a for a in answers)


def test_e2e_watch_heartbeats_carry_the_position_reached(server: Server) -> None:
    """A stream of a quiet prefix: its heartbeats carry `id:` of the revision the store has
    reached (an id with no data sets an EventSource's last event id), so a reconnect resumes
    from there, not from before every write it did not want."""
    with client(server) as http, stream(http, params={"prefix": "quiet/"}) as response:
        elsewhere = [put(http, f"loud/{i}", "x") for i in range(3)][-1]
        lines = response.iter_lines()
        heartbeat_ids: list[str] = []
        for _, line in zip(range(500), lines, strict=False):  # bounded: a heartbeat each 0.3 s
            if line == ": heartbeat":
                following = next(lines)
                assert following.startswith("id: "), following
                heartbeat_ids.append(following.removeprefix("id: "))
                if int(heartbeat_ids[-1]) >= elsewhere:
                    break
    assert int(heartbeat_ids[-1]) == elsewhere
