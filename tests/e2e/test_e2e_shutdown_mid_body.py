"""SIGTERM while a client is stalled in the middle of a request body: the server exits at once.

Found by a mixed-load audit: uvicorn gives every request still running its graceful-shutdown
period (10 s), and a request whose body stopped arriving is "running" (the route waits in
``receive()``). One client that stalled mid-body held every SIGTERM for the full 10 s, as long as
``docker stop`` waits before it sends SIGKILL, and the request was then cancelled with an
``Exception in ASGI application`` ERROR and a traceback in the log. Now, once the server is
stopping, a body may pause for ``SHUTDOWN_BODY_PAUSE`` (1 s) at most before its request is refused
with 503 (``protocol.py`` ``shutdown``), nothing of it written, and the exit is prompt; a body
still flowing arrives and is answered as usual.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
import time
from collections.abc import Callable

from support.server import Server, http_client

MakeServer = Callable[..., Server]
EXIT_WITHIN = 5.0  # seconds; it used to take the whole 10 s grace period


def read_answer(sock: socket.socket) -> bytes:
    received = b""
    with contextlib.suppress(ConnectionResetError, TimeoutError):
        while chunk := sock.recv(65536):
            received += chunk
    return received


def test_sigterm_does_not_wait_for_a_stalled_request_body(make_server: MakeServer) -> None:
    server = make_server()
    with http_client(server.url) as client:
        assert client.put("/keys/k", json={"value": "before"}).status_code == 201
    body = b'{"value": "' + b"x" * 1000 + b'"}'
    heads = [
        b"PUT /keys/k HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n",
        b"POST /batch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n",
    ]
    socks = []
    for head in [
        *heads,
        b"PUT /keys/flowing HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n",
    ]:
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=15)
        sock.sendall(head + b"Content-Length: %d\r\n\r\n" % len(body) + body[:100])
        socks.append(sock)
    flowing = socks[-1]

    def trickle() -> None:  # the rest of one body, a piece every 0.1 s: about 0.9 s in all
        for start in range(100, len(body), 100):
            time.sleep(0.1)
            flowing.sendall(body[start : start + 100])

    time.sleep(0.5)  # the routes are waiting for the rest of their bodies
    assert server.process is not None
    started = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    sender = threading.Thread(target=trickle)
    sender.start()
    code = server.process.wait(30)  # not server.stop: a second SIGTERM makes uvicorn force-quit
    took = time.monotonic() - started
    sender.join()
    answers = [read_answer(sock) for sock in socks]
    for sock in socks:
        sock.close()
    assert code == 0
    assert took < EXIT_WITHIN, f"the exit waited {took:.1f} s for a stalled body"
    for answer in answers[:-1]:
        assert answer.startswith(b"HTTP/1.1 503 "), answer[:200]
        assert b"shutting down" in answer
    assert answers[-1].startswith(b"HTTP/1.1 201 "), answers[-1][:200]  # answered as usual
    log = server.log()
    assert "Exception in ASGI application" not in log
    assert "timeout graceful shutdown exceeded" not in log
    server.start()
    with http_client(server.url) as client:
        assert client.get("/keys/k").json()["value"] == "before"  # nothing of it applied
        assert client.get("/keys/flowing").json()["value"] == "x" * 1000


def test_sigterm_during_the_lingering_close_after_a_408_exits_at_once(
    make_server: MakeServer,
) -> None:
    """A body refused for pausing (408) is followed by a lingering close (the client may still
    be sending): a SIGTERM then took that connection for a stalled body again, cancelled the
    close, answered 503 on a socket already half closed (``RuntimeError: Cannot call write()
    after write_eof()``, an asyncio ERROR) and held the exit for the whole 10 s grace period."""
    server = make_server(body_timeout=1.0, fsync="never")
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=15)
    try:
        sock.sendall(
            b"PUT /keys/k HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"value": "'
        )
        assert sock.recv(65536).startswith(b"HTTP/1.1 408")  # lingering from now on
        started = time.monotonic()
        assert server.stop(signal.SIGTERM, timeout=15) == 0
        took = time.monotonic() - started
    finally:
        sock.close()
    assert took < EXIT_WITHIN, took
    log = server.log()
    assert "write_eof" not in log and "Traceback" not in log
    assert "timeout graceful shutdown exceeded" not in log
