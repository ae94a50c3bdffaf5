"""``ReadLimitedProtocol`` in process: real httptools parser and uvicorn cycle, fake transport.

Each test runs one connection on an event loop with a small ASGI app (the limits are the
protocol's, whatever the app); ``tests/e2e/test_slow_clients.py`` runs the same attacks against a
real server over sockets.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import uvicorn
from uvicorn.server import ServerState

from filekv.service.protocol import (
    LINGER_BYTES,
    MAX_HEADER_BYTES,
    MAX_TARGET_BYTES,
    MAX_UNFINISHED_HEAD_BYTES,
    ReadLimitedProtocol,
    ReadLimits,
    protocol_class,
)

FAST = ReadLimits(header_timeout=0.05, body_timeout=0.05, body_total_timeout=0.5)


class FakeTransport:
    """What uvicorn's protocol uses of an ``asyncio.Transport``, recording what it is told."""

    def __init__(self) -> None:
        self.written = bytearray()
        self.closed = False
        self.eof_written = False
        self.reading = True

    def write(self, data: bytes) -> None:
        assert not self.eof_written, "write after write_eof"
        self.written += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof_written = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 8000)}.get(
            name, default
        )


async def echo_length(scope: Any, receive: Any, send: Any) -> None:
    """Read the whole body, answer 200 with its length."""
    size, more = 0, True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        size += len(message.get("body", b""))
        more = message.get("more_body", False)
    body = str(size).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


Scenario = Callable[[ReadLimitedProtocol, FakeTransport], Awaitable[None]]


def run(scenario: Scenario, limits: ReadLimits = FAST, app: Any = None) -> FakeTransport:
    """Run ``scenario`` on a new connection of a protocol with ``limits``; the transport."""
    transport = FakeTransport()

    async def main() -> None:
        config = uvicorn.Config(app or echo_length, lifespan="off", log_level="warning")
        protocol = protocol_class(limits)(
            config=config,
            server_state=ServerState(),
            app_state={},
            _loop=asyncio.get_running_loop(),
        )
        protocol.connection_made(transport)  # type: ignore[arg-type]
        try:
            await scenario(protocol, transport)
        finally:
            protocol.connection_lost(None)

    asyncio.run(main())
    return transport


def statuses(written: bytes) -> list[int]:
    return [int(code) for code in re.findall(rb"HTTP/1\.1 (\d{3}) ", written)]


def detail(written: bytes) -> str:
    text: str = json.loads(written.rpartition(b"\r\n\r\n")[2])["detail"]
    return text


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def head(*headers: bytes) -> bytes:
    return b"GET /k HTTP/1.1\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n"


@pytest.mark.parametrize(("extra", "status"), [(0, 200), (1, 431), (100_000, 431)])
def test_protocol_header_limit_is_inclusive(extra: int, status: int) -> None:
    pad = MAX_HEADER_BYTES - len(b"hostx") - len(b"x-pad") + extra

    async def scenario(protocol: ReadLimitedProtocol, transport: FakeTransport) -> None:
        protocol.data_received(head(b"Host: x", b"x-pad: " + b"a" * pad))
        await settle()

    written = bytes(run(scenario).written)
    assert statuses(written) == [status]
    if status == 431:
        assert b"content-type: application/json" in written
        assert str(MAX_HEADER_BYTES) in detail(written)


def test_protocol_header_limit_counts_many_small_headers() -> None:
    async def scenario(protocol: ReadLimitedProtocol, transport: FakeTransport) -> None:
        protocol.data_received(head(*(b"x-h%d: " % n + b"v" * 100 for n in range(200))))
        await settle()

    assert statuses(bytes(run(scenario).written)) == [431]


def test_protocol_431_for_complete_headers_keeps_the_connection() -> None:
    async def scenario(protocol: ReadLimitedProtocol, transport: FakeTransport) -> None:
        protocol.data_received(head(b"x-big: " + b"a" * 20_000))
        await settle()
        protocol.data_received(head(b"Host: x"))
        await settle()
        assert not transport.closed

    assert statuses(bytes(run(scenario).written)) == [431, 200]


def test_protocol_unfinished_head_is_refused_before_it_is_buffered() -> None:
    async def scenario(protocol: ReadLimitedProtocol, transport: FakeTransport) -> None:
        protocol.data_received(b"GET /k HTTP/1.1\r\nX-Endless: ")
        fed = 0
        while not transport.eof_written:
            protocol.data_received(b"a" * 1024)
            fed += 1024
            assert fed <= MAX_UNFINISHED_HEAD_BYTES + 1024
        assert statuses(bytes(transport.written)) == [431]
        # Lingering: what follows is discarded, up to LINGER_BYTES, then the connection closes.
        before = len(transport.written)
        for _ in range(LINGER_BYTES // 65536):
            protocol.data_received(b"a" * 65536)
        assert not transport.closed
        protocol.data_received(b"a")
        assert transport.closed
        assert len(transport.written) == before

    run(scenario)


def test_protocol_target_over_the_limit_is_414() -> None:
    limits = ReadLimits(max_target_bytes=100)

    async def scenario(protocol: ReadLimitedProtocol, transport: FakeTransport) -> None:
        protocol.data_received(b"GET /" + b"k" * 60)
        assert not transport.written
        protocol.data_received(b"k" * 60)

    written = bytes(run(scenario, limits).written)
    assert statuses(written) == [414]
    assert "100" in detail(written)


@pytest.mark.parametrize(("extra", "status"), [(0, 200), (1, 414)])
def test_protocol_target_limit_is_httptools_own(extra: int, status: int) -> None:
    # httptools refuses a longer URL itself, and uvicorn then answered a bare 400 "Invalid
    # HTTP request": the 414 must come at that very length (it came at 64 KiB + 1 before).
    target = b"/" + b"k" * (MAX_TARGET_BYTES - 1 + extra)

    async def scenario(protocol: ReadLimitedProtocol, transport: FakeTransport) -> None:
        protocol.data_received(b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        await settle()

    assert statuses(bytes(run(scenario, ReadLimits()).written)) == [status]


async def refuse_unread(scope: Any, receive: Any, send: Any) -> None:
    """Answer 413 without reading the body, as ``read_body`` does for a Content-Length over
    the cap."""
    body = b'{"detail":"request body over 16 bytes"}'
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def test_protocol_answer_before_the_body_stops_reading_it() -> None:
    # The attack: a Content-Length of 100 GB, answered 413 at once, then sent anyway. uvicorn
    # went on parsing the body to keep the connection, at wire speed and for ever.
    async def scenario(protocol: ReadLimitedProtocol, transport: FakeTransport) -> None:
        protocol.data_received(b"PUT /k HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n")
        await settle()
        assert statuses(bytes(transport.written)) == [413]
        assert transport.eof_written  # the answer is whole; the write side is shut
        chunk = b"x" * 65_536
        for _ in range(LINGER_BYTES // len(chunk) + 1):
            assert not transport.closed
            protocol.data_received(chunk)
        assert transport.closed  # LINGER_BYTES dropped, not one byte parsed: closed

    written = bytes(run(scenario, app=refuse_unread).written)
    assert statuses(written) == [413]  # nothing else was written after the answer
    # Said, so that a client does not send its next request on it ("Server disconnected").
    assert b"\r\nconnection: close\r\n" in written.lower()


def test_protocol_answer_after_the_whole_body_arrived_keeps_the_connection() -> None:
    # The same unread answer, but the body came with the head: nothing left to refuse, the
    # connection goes on (a 422 for a bad key, say, on a keep-alive connection).
    async def scenario(protocol: ReadLimitedProtocol, transport: FakeTransport) -> None:
        protocol.data_received(b"PUT /k HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n12345")
        await settle()
        protocol.data_received(b"PUT /k HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nab")
        await settle()
        assert not transport.closed and not transport.eof_written

    written = bytes(run(scenario, app=refuse_unread).written)
    assert statuses(written) == [413, 413]
    assert b"connection: close" not in written.lower()


def test_protocol_answer_before_the_body_closes_a_trickle_after_the_linger(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The slow variant: a byte now and then after the answer reset the body timer, so the
    # connection stayed for body_total_timeout (300 s) after its request was answered.
    monkeypatch.setattr("filekv.service.protocol.LINGER_SECONDS", 0.2)
    limits = ReadLimits(body_timeout=10, body_total_timeout=100)

    async def scenario(protocol: ReadLimitedProtocol, transport: FakeTransport) -> None:
        protocol.data_received(b"PUT /k HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n")
        for _ in range(20):
            if transport.closed:
                break
            protocol.data_received(b"x")
            await asyncio.sleep(0.05)
        assert transport.closed

    assert statuses(bytes(run(scenario, limits, app=refuse_unread).written)) == [413]


def test_protocol_body_read_in_full_keeps_the_connection() -> None:
    # The usual case is untouched: the answer came after the whole body, the connection goes on.
    async def scenario(protocol: ReadLimitedProtocol, transport: FakeTransport) -> None:
        protocol.data_received(b"PUT /k HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n12")
        await settle()
        protocol.data_received(b"345")
        await settle()
        protocol.data_received(head(b"Host: x"))
        await settle()
        assert not transport.closed and not transport.eof_written

    assert statuses(bytes(run(scenario).written)) == [200, 200]


def test_protocol_half_sent_head_is_408_after_header_timeout() -> None:
    async def scenario(protocol: ReadLimitedProtocol, transport: FakeTransport) -> None:
        protocol.data_received(b"GET /k HT")
        await asyncio.sleep(FAST.header_timeout * 3)

    transport = run(scenario)
    assert statuses(bytes(transport.written)) == [408]
    assert transport.eof_written


def test_protocol_connection_that_sends_nothing_is_closed_silently() -> None:
    async def scenario(protocol: ReadLimitedProtocol, transport: FakeTransport) -> None:
        await asyncio.sleep(FAST.header_timeout * 3)
        assert transport.closed

    assert run(scenario).written == b""


def test_protocol_keep_alive_wait_is_not_a_header_timeout() -> None:
    # Between requests uvicorn's keep-alive timeout applies, not header_timeout.
    async def scenario(protocol: ReadLimitedProtocol, transport: FakeTransport) -> None:
        protocol.data_received(head(b"Host: x"))
        await asyncio.sleep(FAST.header_timeout * 3)
        assert not transport.closed
        protocol.data_received(head(b"Host: x"))
        await settle()

    assert statuses(bytes(run(scenario).written)) == [200, 200]


def test_protocol_request_in_one_read_arms_no_timer() -> None:
    async def scenario(protocol: ReadLimitedProtocol, transport: FakeTransport) -> None:
        body = b"x" * 100
        protocol.data_received(
            b"PUT /k HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body
        )
        assert protocol._timer is None  # the hot path: no timer created or cancelled
        await settle()

    assert statuses(bytes(run(scenario).written)) == [200]


def test_protocol_stalled_body_is_408() -> None:
    async def scenario(protocol: ReadLimitedProtocol, transport: FakeTransport) -> None:
        protocol.data_received(b"PUT /k HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n0123")
        await asyncio.sleep(FAST.body_timeout * 3)

    written = bytes(run(scenario).written)
    assert statuses(written) == [408]
    assert "paused" in detail(written)


def test_protocol_body_not_read_by_the_application_is_not_a_timeout() -> None:
    # uvicorn stops reading once 64 KiB of body wait for the application: not the client's fault.
    async def busy_then_echo(scope: Any, receive: Any, send: Any) -> None:
        await asyncio.sleep(FAST.body_timeout * 4)
        await echo_length(scope, receive, send)

    async def scenario(protocol: ReadLimitedProtocol, transport: FakeTransport) -> None:
        protocol.data_received(b"PUT /k HTTP/1.1\r\nContent-Length: 100000\r\n\r\n" + b"x" * 70_000)
        assert not transport.reading
        await asyncio.sleep(FAST.body_timeout * 3)
        assert not transport.written
        while not transport.reading:
            await asyncio.sleep(0.01)
        protocol.data_received(b"x" * 30_000)
        await asyncio.sleep(0.05)

    written = bytes(run(scenario, app=busy_then_echo).written)
    assert statuses(written) == [200]
    assert written.endswith(b"100000")


def test_protocol_body_trickled_past_body_total_timeout_is_408() -> None:
    limits = ReadLimits(body_timeout=0.2, body_total_timeout=0.3)

    async def scenario(protocol: ReadLimitedProtocol, transport: FakeTransport) -> None:
        protocol.data_received(b"PUT /k HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")
        for _ in range(10):
            if transport.written:
                break
            protocol.data_received(b"x")
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.1)

    written = bytes(run(scenario, limits).written)
    assert statuses(written) == [408]
    assert "0.3 s" in detail(written)


def test_protocol_class_carries_its_limits() -> None:
    cls = protocol_class(FAST)
    assert issubclass(cls, ReadLimitedProtocol)
    assert cls.limits == FAST
    assert ReadLimitedProtocol.limits == ReadLimits()


async def slow_get_then_echo(scope: Any, receive: Any, send: Any) -> None:
    """A GET answered after a moment (a request pipelined behind it arrives meanwhile), then
    as ``echo_length``."""
    if scope["method"] == "GET":
        await asyncio.sleep(0.05)
    await echo_length(scope, receive, send)


def test_protocol_pipelined_request_behind_an_answer_is_answered_too() -> None:
    # A PUT pipelined behind a GET, its body split across reads: the GET's answer ended while
    # the newest cycle (the PUT's) still had its body coming, and that was taken for an answer
    # given before its body: the connection closed and the PUT was never answered.
    slow = ReadLimits(header_timeout=5, body_timeout=5, body_total_timeout=5)

    async def scenario(protocol: ReadLimitedProtocol, transport: FakeTransport) -> None:
        protocol.data_received(
            head(b"Host: x") + b"PUT /k HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n12"
        )
        await asyncio.sleep(0.2)
        protocol.data_received(b"345")
        await asyncio.sleep(0.2)
        assert not transport.closed and not transport.eof_written

    written = bytes(run(scenario, slow, app=slow_get_then_echo).written)
    assert statuses(written) == [200, 200]
    assert written.endswith(b"5")


async def answer_in_two_parts_unread(scope: Any, receive: Any, send: Any) -> None:
    """An answer begun before the body is read, finished after the body has arrived."""
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
    )
    await asyncio.sleep(0.05)
    await send({"type": "http.response.body", "body": b"a", "more_body": True})
    await asyncio.sleep(0.1)
    await send({"type": "http.response.body", "body": b"b"})


def test_protocol_answer_that_said_close_closes_even_if_the_body_came_meanwhile() -> None:
    # The answer said "connection: close" while the body was still coming; the body finished
    # before the answer did, and the connection was kept open against what the answer said.
    slow = ReadLimits(header_timeout=5, body_timeout=5, body_total_timeout=5)

    async def scenario(protocol: ReadLimitedProtocol, transport: FakeTransport) -> None:
        protocol.data_received(b"PUT /k HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n12")
        await asyncio.sleep(0.02)
        protocol.data_received(b"345")
        await asyncio.sleep(0.3)
        assert transport.eof_written or transport.closed

    written = bytes(run(scenario, slow, app=answer_in_two_parts_unread).written)
    assert statuses(written) == [200]
    assert b"connection: close" in written.lower()
