"""A real ``filekv serve`` (uvicorn with httptools) on the inputs its parser decides about.

The TestClient builds the ASGI scope itself; only a real server shows how httptools and uvicorn
decode the path (a newline, bytes that are not UTF-8, a stray ``%``) and what a huge header does.
"""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from support.server import Server

MakeServer = Callable[..., Server]  # the ``make_server`` fixture


def raw_request(http: httpx.Client, method: str, raw_path: bytes, **kwargs: Any) -> httpx.Response:
    """Send ``raw_path`` exactly as given (httpx would re-encode a stray '%')."""
    request = http.build_request(method, "/", **kwargs)
    request.url = request.url.copy_with(raw_path=raw_path)
    return http.send(request)


def test_e2e_inputs_keys_with_any_character_round_trip(server: Any) -> None:
    keys = ["line\nfeed", "trailing\n", "cr\r\nlf", "%ZZ", "100%", "ü/日本\n"]
    with server.client() as http:
        for key in keys:
            path = "/keys/" + quote(key, safe="")
            assert http.put(path, json={"value": key}).json()["key"] == key
            assert http.get(path).json()["value"] == key
        assert http.get("/keys").json()["keys"] == sorted(keys)
        for key in keys:
            assert http.delete("/keys/" + quote(key, safe="")).status_code == 204


@pytest.mark.parametrize(
    "raw_key", [b"bad%FFkey", b"cut%E0%A4", b"bad%ZZ", b"end%", b"a%2"], ids=lambda k: k.decode()
)
def test_e2e_inputs_broken_percent_encoding_is_422(server: Any, raw_key: bytes) -> None:
    with server.client() as http:
        for method in ("PUT", "GET", "DELETE"):
            answer = raw_request(http, method, b"/keys/" + raw_key, json={"value": "v"})
            assert answer.status_code == 422, (method, answer.text)
            assert answer.json()["detail"][0]["loc"] == ["path", "key"]
        assert http.get("/keys").json()["keys"] == []


def test_e2e_inputs_huge_header_is_431_and_the_connection_goes_on(server: Any) -> None:
    with server.client() as http:
        assert http.put("/keys/k", json={"value": "v"}).status_code == 201
        refused = http.get("/keys/k", headers={"X-Big": "a" * 100_000})
        assert refused.status_code == 431
        assert "limit" in refused.json()["detail"]
        assert http.get("/keys/k").json()["value"] == "v"


def test_e2e_inputs_unparseable_register_body_is_422(server: Any) -> None:
    with server.client() as http:
        answer = http.post(
            "/auth/register", content=b"\xff", headers={"Content-Type": "application/json"}
        )
        assert answer.status_code == 422
        assert isinstance(answer.json()["detail"], list)


def test_e2e_inputs_text_body_is_415(server: Any) -> None:
    with server.client() as http:
        answer = http.put(
            "/keys/k", content=b'{"value": "v"}', headers={"Content-Type": "text/plain"}
        )
        assert answer.status_code == 415
        assert http.get("/keys/k").status_code == 404


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
def test_e2e_inputs_signal_shutdown_exits_0(make_server: MakeServer, sig: int) -> None:
    server = make_server()
    with server.client() as http:
        assert http.put("/keys/k", json={"value": "v"}).status_code == 201
    assert server.stop(sig) == 0, server.log()
    log = server.log()
    assert "store closed" in log and "Traceback" not in log


def test_e2e_inputs_longest_key_fully_escaped_round_trips(make_server: MakeServer) -> None:
    # max_key_bytes is capped so that its key, every byte %-encoded, fits the longest target
    # httptools parses (65,535 bytes); over that a target is 414, not uvicorn's bare 400.
    server = make_server(max_key_bytes=16_384)
    key = "€" * 5461 + "a"  # 16,384 UTF-8 bytes, 49,150 characters once encoded
    path = "/keys/" + quote(key, safe="")
    with server.client() as http:
        assert http.put(path, json={"value": "v"}).status_code == 201
        assert http.get(path).json()["key"] == key
        too_long = http.get("/keys/" + "a" * (65_536 - len("/keys/")))
        assert too_long.status_code == 414
        assert "65535" in too_long.json()["detail"]


def test_e2e_inputs_body_refused_unread_is_not_read(server: Any) -> None:
    # The attack: a PUT announcing 100 GB, answered 413 at once, then sent anyway. The server
    # kept parsing what came, at wire speed, for as long as the client went on.
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"PUT /keys/k HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")
        sock.sendall(b"Content-Length: 99999999999\r\n\r\n")
        assert sock.recv(65_536).startswith(b"HTTP/1.1 413 ")
        chunk, sent, started = b"x" * 65_536, 0, time.monotonic()
        with pytest.raises(OSError):  # reset (or a broken pipe) once the server has closed
            while sent < 256 << 20 and time.monotonic() - started < 30:
                sock.sendall(chunk)
                sent += len(chunk)
        assert sent < 64 << 20, sent  # 1 MiB discarded, plus what the kernels' buffers held


def test_e2e_inputs_answer_before_the_body_says_connection_close(server: Any) -> None:
    # A bad key is 422 before the body is read. When the body had not arrived yet, the answer
    # did not say the connection would close, and a keep-alive client sent its next request
    # on it: "Server disconnected without sending a response" (seen in test_e2e_inputs).
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"PUT /keys/bad%ZZ HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")
        sock.sendall(b"Content-Length: 13\r\n\r\n")
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += sock.recv(65_536)
        assert answer.startswith(b"HTTP/1.1 422 ")
        assert b"\r\nconnection: close\r\n" in answer.lower()
        sock.sendall(b'{"value":"v"}')  # the body, late: discarded, then the connection ends
        rest = b""
        while chunk := sock.recv(65_536):
            rest += chunk
        assert b"HTTP/1.1" not in rest  # no second answer: the late body was not a request
