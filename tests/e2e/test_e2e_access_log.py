"""The access log and request ids on a real server (issue 11).

Every request makes one JSON line on stderr naming its route template, never a value, a
password, a token or (unless ``log_keys``) a key: the tests send distinctive secrets and look
for them in the whole log. ``X-Request-ID``: the client's when sane, else a new one, on every
answer and in every error body, the refusals of the HTTP protocol included.
"""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Callable

import httpx
from support.logs import access_lines, records
from support.server import Server

MakeServer = Callable[..., Server]
PASSWORD = "PASSWORD-SECRET-91c2 horse"
WRONG = "WRONG-PASSWORD-SECRET-44d1"
VALUE = "VALUE-SECRET-0b7e"
KEY = "KEY-SECRET-5a9d"
FIELDS = {"ts", "level", "logger", "method", "route", "status", "duration_ms", "request_id"}


def _session(client: httpx.Client, name: str) -> tuple[str, dict[str, str]]:
    client.post("/auth/register", json={"username": name, "password": PASSWORD})
    answer = client.post("/auth/token", data={"username": name, "password": PASSWORD})
    token = answer.json()["access_token"]
    return token, {"Authorization": f"Bearer {token}"}


def test_e2e_access_log_is_json_and_holds_no_secret(make_server: MakeServer) -> None:
    server = make_server()
    with server.client() as client:
        token, alice = _session(client, "alice")
        assert (
            client.post("/auth/token", data={"username": "alice", "password": WRONG}).status_code
            == 401
        )
        put = client.put(f"/keys/{KEY}", json={"value": VALUE}, headers=alice)
        assert put.status_code == 201
        anonymous = client.get(f"/keys/{KEY}")
        assert client.get("/keys", params={"value": VALUE}).status_code == 200
        assert client.get("/auth/me", headers=alice).status_code == 200
        assert (
            client.get("/keys/x", headers={"Authorization": "Bearer not-a-token"}).status_code
            == 401
        )
    assert server.stop() == 0
    log = server.log()

    for secret in (PASSWORD, WRONG, VALUE, KEY, token):
        assert secret not in log, secret
    lines = access_lines(log)
    assert len(lines) >= 8
    for line in lines:
        assert line.keys() >= FIELDS, line
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["ts"])
        assert isinstance(line["duration_ms"], float | int) and line["duration_ms"] >= 0
    # Every other line of the log is JSON too (log_format=json is the default).
    assert all(line.startswith(("{", "--- start")) for line in log.splitlines()), log[-2000:]
    assert any(r["logger"] == "uvicorn.error" for r in records(log))

    by_id = {line["request_id"]: line for line in lines}
    written = by_id[put.headers["x-request-id"]]
    assert (written["method"], written["route"], written["status"]) == ("PUT", "/keys/{key}", 201)
    assert written["user"] == "alice"  # the token the route verified
    read = by_id[anonymous.headers["x-request-id"]]
    assert (read["route"], read["status"]) == ("/keys/{key}", 200)
    assert "user" not in read and "key" not in read
    me = [line for line in lines if line["route"] == "/auth/me"]
    assert [line.get("user") for line in me] == ["alice"]
    forged = [line for line in lines if line["status"] == 401 and line["route"] == "/keys/{key}"]
    assert len(forged) == 1 and "user" not in forged[0]  # a token that did not verify: nobody


def test_e2e_access_log_names_keys_only_with_log_keys(make_server: MakeServer) -> None:
    server = make_server(log_keys=True)
    with server.client() as client:
        assert client.put(f"/keys/{KEY}/a b", json={"value": VALUE}).status_code == 201
    server.stop()
    log = server.log()
    (line,) = [line for line in access_lines(log) if line["method"] == "PUT"]
    assert line["key"] == f"{KEY}/a b"
    assert VALUE not in log


def test_e2e_access_log_as_text(make_server: MakeServer) -> None:
    server = make_server(log_format="text")
    with server.client() as client:
        answer = client.get("/keys/nothing")
    server.stop()
    log = server.log()
    assert access_lines(log) == []
    rid = answer.headers["x-request-id"]
    pattern = rf"INFO +filekv\.access: GET /keys/\{{key\}} 404 [0-9.]+ ms request_id={rid} "
    assert re.search(pattern, log), log[-2000:]
    assert re.search(r"INFO +filekv\.service\.app: serving", log)


def test_e2e_access_log_off_below_info(make_server: MakeServer) -> None:
    server = make_server(log_level="warning")
    with server.client() as client:
        assert client.get("/keys/nothing").status_code == 404
    server.stop()
    assert "filekv.access" not in server.log()


# -- X-Request-ID --------------------------------------------------------------------------------


def test_e2e_request_id_echoed_or_made(server: Server) -> None:
    with server.client() as client:
        echoed = client.get("/keys/nothing", headers={"X-Request-ID": "trace-42:a/b+c=d_e.f~g"})
        assert echoed.headers["x-request-id"] == "trace-42:a/b+c=d_e.f~g"
        assert echoed.json() == {"detail": "no such key", "request_id": "trace-42:a/b+c=d_e.f~g"}
        made = [client.get("/healthz").headers["x-request-id"] for _ in range(3)]
    assert all(re.fullmatch(r"[0-9a-f]{16}", rid) for rid in made)
    assert len(set(made)) == 3


def _raw(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        received = b""
        while b"\r\n\r\n" not in received or not received.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
    return received


def _body_request_id(answer: bytes) -> bytes:
    request_id: str = json.loads(answer.split(b"\r\n\r\n", 1)[1])["request_id"]
    return request_id.encode()


def _header(answer: bytes, name: bytes) -> list[bytes]:
    head = answer.split(b"\r\n\r\n", 1)[0]
    return [
        line.split(b":", 1)[1].strip()
        for line in head.split(b"\r\n")[1:]
        if line.split(b":", 1)[0].lower() == name
    ]


def test_e2e_request_id_hostile_ones_are_replaced(server: Server) -> None:
    hostile = [
        b"x" * 129,  # too long
        b"a b",  # space
        b"<script>alert(1)</script>",
        b"caf\xc3\xa9",  # non-ASCII (UTF-8)
        b"\xff\xfe",  # not even UTF-8
        b'"quoted"',
        b"id\tTAB",
    ]
    for value in hostile:
        request = b"GET /keys/nothing HTTP/1.1\r\nHost: x\r\nX-Request-ID: " + value + b"\r\n\r\n"
        answer = _raw(server.port, request)
        assert answer.startswith(b"HTTP/1.1 404"), (value, answer[:200])
        (rid,) = _header(answer, b"x-request-id")
        assert re.fullmatch(rb"[0-9a-f]{16}", rid), (value, rid)
        assert _body_request_id(answer) == rid
    # A CR inside a header is the parser's to refuse (400): answered as JSON with a new id.
    answer = _raw(server.port, b"GET /keys/x HTTP/1.1\r\nHost: x\r\nX-Request-ID: a\rb\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    (rid,) = _header(answer, b"x-request-id")
    assert re.fullmatch(rb"[0-9a-f]{16}", rid)
    assert _body_request_id(answer) == rid


def test_e2e_request_id_on_the_protocols_own_refusals(server: Server) -> None:
    # 431: headers over the limit, answered by the HTTP protocol before the application.
    huge = b"GET /keys/x HTTP/1.1\r\nHost: x\r\n" + b"X-Big: " + b"y" * 20_000 + b"\r\n\r\n"
    answer = _raw(server.port, huge)
    assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
    (rid,) = _header(answer, b"x-request-id")
    assert _body_request_id(answer) == rid


def test_e2e_forwarded_for_is_trusted_only_from_forwarded_allow_ips(
    make_server: MakeServer,
) -> None:
    # The login throttle and the access log take the client's address from X-Forwarded-For
    # only when the connection comes from a trusted proxy (the tests connect from 127.0.0.1).
    forwarded = {"X-Forwarded-For": "203.0.113.9"}
    clients = []
    for allowed in ("127.0.0.1", "10.9.9.9, 192.0.2.0/24"):
        server = make_server(forwarded_allow_ips=allowed)
        with server.client() as client:
            answer = client.get("/keys/x", headers=forwarded)
        assert server.stop() == 0
        by_id = {line["request_id"]: line for line in access_lines(server.log())}
        clients.append(by_id[answer.headers["x-request-id"]]["client"])
    assert clients == ["203.0.113.9", "127.0.0.1"]
