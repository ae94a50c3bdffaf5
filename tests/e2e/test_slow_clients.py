"""A real ``filekv serve`` against clients that send too much head, or send it too slowly.

Raw sockets on loopback only, every attack loop bounded in bytes and time. The limits under test
are in ``filekv.service.protocol``: header bytes counted while httptools parses (431 before the
head is buffered), and ``header_timeout``, ``body_timeout``, ``body_total_timeout`` (408).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.server import Server, http_client

from filekv.service.protocol import MAX_HEADER_BYTES

MakeServer = Callable[..., Server]  # the ``make_server`` fixture
CHUNK = b"a" * 65536
ATTACK_BYTES = 64 << 20  # what one endless-header client tries to send
RSS_GROWTH_BOUND = 32 << 20  # the old server buffered every byte of the header (and copies)
HEALTHZ_BOUND = 2.0  # seconds; a functional check, not a benchmark


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


@contextlib.contextmanager
def connect(server: Server, timeout: float = 15.0) -> Iterator[socket.socket]:
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as sock:
        yield sock


def read_until_closed(sock: socket.socket, limit: int = 1 << 20) -> bytes:
    """Everything the server sends until it closes (a reset counts as closed); raises on timeout."""
    received = b""
    with contextlib.suppress(ConnectionResetError):
        while len(received) < limit:
            data = sock.recv(65536)
            if not data:
                break
            received += data
    return received


def stream_endless_header(server: Server) -> tuple[int, bytes]:
    """Send one header of up to ``ATTACK_BYTES``, never ending it: (bytes sent, answer)."""
    sent = 0
    with connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Endless: ")
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            while sent < ATTACK_BYTES:
                sock.sendall(CHUNK)
                sent += len(CHUNK)
        return sent, read_until_closed(sock)


def status_of(answer: bytes) -> int | None:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else None


def test_slow_clients_endless_header_is_cut_off_while_others_are_served(
    server: Server,
) -> None:
    assert server.process is not None
    rss_before = rss_bytes(server.process.pid)
    results: list[tuple[int, bytes]] = []
    attackers = [
        threading.Thread(target=lambda: results.append(stream_endless_header(server)))
        for _ in range(2)
    ]
    for attacker in attackers:
        attacker.start()
    latencies = []
    with server.client(timeout=HEALTHZ_BOUND * 5) as http:
        while any(attacker.is_alive() for attacker in attackers) or len(latencies) < 5:
            start = time.monotonic()
            assert http.get("/healthz").status_code == 200
            latencies.append(time.monotonic() - start)
    for attacker in attackers:
        attacker.join(60)
    rss_after = rss_bytes(server.process.pid)

    assert len(results) == 2
    for sent, answer in results:
        # Cut off: refused with 431, or reset once the answer was written and 1 MiB discarded.
        assert status_of(answer) in (431, None), answer[:200]
        assert sent < ATTACK_BYTES
    assert max(latencies) < HEALTHZ_BOUND, latencies
    assert rss_after - rss_before < RSS_GROWTH_BOUND, (rss_before, rss_after)


def test_slow_clients_endless_header_gets_431_as_json(server: Server) -> None:
    with connect(server) as sock:
        sock.sendall(
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Endless: " + b"a" * 3 * MAX_HEADER_BYTES
        )
        answer = read_until_closed(sock)  # the server closes: the head cannot be finished
    head, _, body = answer.partition(b"\r\n\r\n")
    assert status_of(answer) == 431
    assert b"content-type: application/json" in head
    assert str(MAX_HEADER_BYTES).encode() in body


def test_slow_clients_endless_target_is_414(server: Server) -> None:
    with connect(server) as sock:
        sock.sendall(b"GET /keys/")
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            for _ in range(64):  # 4 MiB of one path, never ended
                sock.sendall(CHUNK)
        assert status_of(read_until_closed(sock)) in (414, None)
    with server.client() as http:
        assert http.get("/healthz").status_code == 200


def test_slow_clients_refused_headers_write_nothing(server: Server) -> None:
    with server.client() as http:
        answer = http.put("/keys/k", json={"value": "v"}, headers={"x-big": "a" * 20_000})
        assert answer.status_code == 431
        assert http.get("/keys/k").status_code == 404


def test_slow_clients_half_sent_heads_are_closed(make_server: MakeServer) -> None:
    server = make_server(header_timeout=1)
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(connect(server)) for _ in range(200)]
        for index, sock in enumerate(socks):
            if index % 10:  # and every tenth sends nothing at all
                sock.sendall(b"GET /keys/half-sent HTT")
        start = time.monotonic()
        answers = [read_until_closed(sock) for sock in socks]
        elapsed = time.monotonic() - start
    assert elapsed < 10, elapsed
    for index, answer in enumerate(answers):
        if index % 10:
            assert status_of(answer) == 408, answer[:200]
            assert b'"detail"' in answer
        else:
            assert answer == b""  # never started a request: closed without an answer
    with server.client() as http:
        assert http.get("/healthz").status_code == 200


def test_slow_clients_head_sent_slowly_within_the_timeout_is_served(
    make_server: MakeServer,
) -> None:
    server = make_server(header_timeout=3)
    with connect(server) as sock:
        for piece in (
            b"GET /hea",
            b"lthz HTTP/1.1\r\n",
            b"Host: x\r\n",
            b"Connection: close\r\n\r\n",
        ):
            sock.sendall(piece)
            time.sleep(0.3)
        assert status_of(read_until_closed(sock)) == 200


def _put_head(length: int) -> bytes:
    return (
        b"PUT /keys/slow HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % length
    )


def test_slow_clients_stalled_body_is_408_and_writes_nothing(make_server: MakeServer) -> None:
    server = make_server(body_timeout=1)
    with connect(server) as sock:
        sock.sendall(_put_head(1000) + b'{"value": ')
        start = time.monotonic()
        answer = read_until_closed(sock)
        elapsed = time.monotonic() - start
    assert status_of(answer) == 408, answer[:200]
    assert 0.9 < elapsed < 8, elapsed
    with server.client() as http:
        assert http.get("/keys/slow").status_code == 404
    assert "Traceback" not in server.log()


def test_slow_clients_body_sent_slowly_but_steadily_is_served(make_server: MakeServer) -> None:
    server = make_server(body_timeout=1)
    body = b'{"value": "' + b"v" * 90 + b'"}'
    with connect(server) as sock:
        sock.sendall(_put_head(len(body)))
        for offset in range(0, len(body), 10):  # about 3 s in all, never 1 s without a byte
            time.sleep(0.3)
            sock.sendall(body[offset : offset + 10])
        answer = sock.recv(65536)
    assert status_of(answer) == 201, answer[:200]


def test_slow_clients_body_trickled_past_the_total_is_408(make_server: MakeServer) -> None:
    server = make_server(body_timeout=1, body_total_timeout=2)
    with connect(server) as sock:
        sock.sendall(_put_head(1000))
        start = time.monotonic()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            for _ in range(40):  # a byte every 0.25 s: never idle for body_timeout
                sock.sendall(b" ")
                time.sleep(0.25)
                if time.monotonic() - start > 6:
                    break
        answer = read_until_closed(sock)
    assert status_of(answer) == 408, answer[:200]
    assert b"2 s" in answer


def test_slow_clients_keep_alive_and_pipelining_still_work(server: Server) -> None:
    with connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * 2)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answers = read_until_closed(sock)
    assert answers.count(b"HTTP/1.1 200 OK") == 3
    with http_client(server.url) as http:
        for _ in range(3):
            assert http.get("/healthz").status_code == 200


@pytest.mark.parametrize("extra", [0, 1])
def test_slow_clients_header_limit_is_inclusive(server: Server, extra: int) -> None:
    # Names and values count, separators do not: host + x, connection + close, x-pad + pad.
    pad = MAX_HEADER_BYTES - len(b"hostx") - len(b"connectionclose") - len(b"x-pad") + extra
    with connect(server) as sock:
        sock.sendall(
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"x-pad: " + b"a" * pad + b"\r\n\r\n"
        )
        answer = read_until_closed(sock)
    assert status_of(answer) == (200 if extra == 0 else 431)
