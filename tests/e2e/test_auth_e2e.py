"""Login against a real ``filekv serve``.

Forgeries get nothing, logout revokes, users survive SIGKILL, failed logins are throttled, and no
secret reaches the server's log. Issue 17: ``filekv user revoke|passwd|remove`` work on the
running server at once, and register/token bodies are capped on real sockets.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from support.logs import access_lines
from support.server import Server, user_command

PASSWORD = "correct horse battery"


def _login(
    client: httpx.Client, username: str = "alice", password: str = PASSWORD
) -> httpx.Response:
    return client.post("/auth/token", data={"username": username, "password": password})


def _bearer(response: httpx.Response) -> dict[str, str]:
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


def test_auth_e2e_forged_identities_get_nothing(server: Server) -> None:
    with server.client() as client:
        client.post("/auth/register", json={"username": "alice", "password": PASSWORD})
        alice = _bearer(_login(client))
        for forged in [{"X-User": "alice"}, {"Cookie": "user=alice"}, {"Authorization": "alice"}]:
            assert client.get("/auth/me", headers=forged).status_code == 401
            assert client.post("/transactions", headers=forged).status_code == 401
        # alice's real session is untouched by all that
        assert client.get("/auth/me", headers=alice).json() == {"username": "alice", "role": "user"}


def test_auth_e2e_logout_kills_the_token_only(server: Server) -> None:
    with server.client() as client:
        client.post("/auth/register", json={"username": "alice", "password": PASSWORD})
        first, second = _bearer(_login(client)), _bearer(_login(client))
        assert client.post("/auth/logout", headers=first).status_code == 204
        assert client.get("/auth/me", headers=first).status_code == 401
        assert client.post("/transactions", headers=first).status_code == 401
        assert client.get("/auth/me", headers=second).status_code == 200


def test_auth_e2e_users_survive_sigkill_tokens_do_not(server: Server) -> None:
    with server.client() as client:
        for name in ["alice", "bob"]:
            r = client.post("/auth/register", json={"username": name, "password": PASSWORD})
            assert r.status_code == 201
        old = _bearer(_login(client))
    server.restart(signal.SIGKILL)
    with server.client() as client:
        assert client.get("/auth/me", headers=old).status_code == 401
        assert _login(client, "bob").status_code == 200
        r = client.post("/auth/register", json={"username": "alice", "password": PASSWORD})
        assert r.status_code == 409
    assert (server.data_dir / "users.json").stat().st_mode & 0o777 == 0o600


def test_auth_e2e_failed_logins_are_throttled_and_secrets_stay_out_of_the_log(
    server: Server,
) -> None:
    with server.client() as client:
        client.post("/auth/register", json={"username": "alice", "password": PASSWORD})
        statuses = [_login(client, password="not the password").status_code for _ in range(6)]
        assert statuses == [401] * 5 + [429]
        r = _login(client)
        assert r.status_code == 429
        assert int(r.headers["Retry-After"]) >= 1
        # another user is not affected
        client.post("/auth/register", json={"username": "bob", "password": PASSWORD})
        assert _login(client, "bob").status_code == 200
    log = server.log()
    # the log is being read: the access log has the logins
    assert any(line["route"] == "/auth/token" for line in access_lines(log))
    for secret in ["$argon2", PASSWORD, "not the password"]:
        assert secret not in log


# -- issue 17: revoking, removing, changing passwords while the server runs (finding 4) -------


def _cli(server: Server, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return user_command(server.data_dir, *args, stdin=stdin)


def test_auth_e2e_user_verbs_take_effect_on_the_running_server_at_once(server: Server) -> None:
    """When ``filekv user revoke|passwd|remove`` returns, the running server refuses the tokens."""
    with server.client() as client:
        for name in ["alice", "bob", "carol"]:
            client.post("/auth/register", json={"username": name, "password": PASSWORD})
        alice = [_bearer(_login(client)) for _ in range(3)]
        bob, carol = _bearer(_login(client, "bob")), _bearer(_login(client, "carol"))

        done = _cli(server, "revoke", "Alice")
        assert done.returncode == 0, done.stderr
        assert done.stdout == "revoked every token of alice\n"
        assert [client.get("/auth/me", headers=h).status_code for h in alice] == [401] * 3
        assert client.post("/transactions", headers=alice[0]).status_code == 401
        assert client.get("/auth/me", headers=bob).status_code == 200  # nobody else's
        again = _bearer(_login(client))  # the password still works
        assert client.get("/auth/me", headers=again).status_code == 200

        done = _cli(server, "passwd", "alice", "--password-stdin", stdin="a new password 42\n")
        assert done.returncode == 0, done.stderr
        assert client.get("/auth/me", headers=again).status_code == 401
        assert _login(client).status_code == 401
        assert _login(client, password="a new password 42").status_code == 200

        done = _cli(server, "remove", "bob")
        assert done.returncode == 0, done.stderr
        assert client.get("/auth/me", headers=bob).status_code == 401
        assert _login(client, "bob").status_code == 401
        assert client.get("/auth/me", headers=carol).status_code == 200
    assert "a new password 42" not in server.log()


def test_auth_e2e_user_deleted_from_users_json_by_hand_loses_its_token(server: Server) -> None:
    """The reported attack: the token of a user deleted from users.json kept working."""
    with server.client() as client:
        client.post("/auth/register", json={"username": "alice", "password": PASSWORD})
        client.post("/auth/register", json={"username": "bob", "password": PASSWORD})
        alice, bob = _bearer(_login(client)), _bearer(_login(client, "bob"))
        users_file = server.data_dir / "users.json"
        document = json.loads(users_file.read_text())
        del document["users"]["alice"]
        edited = server.data_dir / "users.json.edited"
        edited.write_text(json.dumps(document))
        os.replace(edited, users_file)
        deadline = time.monotonic() + 3
        while client.get("/auth/me", headers=alice).status_code == 200:
            assert time.monotonic() < deadline, "the deleted user's token still works after 3 s"
            time.sleep(0.05)
        assert client.get("/auth/me", headers=bob).status_code == 200


# -- issue 17: register and token bodies (finding 6) -------------------------------------------


def _rss_bytes(server: Server) -> int:
    assert server.process is not None
    status = Path(f"/proc/{server.process.pid}/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


def _send_request(
    port: int, head: bytes, body: Iterator[bytes], timeout: float = 30
) -> tuple[bytes, int, float]:
    """Send ``head`` then ``body`` chunks until the server answers; (answer, bytes sent, s)."""
    sent = 0
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head)
        sock.setblocking(False)
        answer = b""
        for chunk in body:
            with contextlib.suppress(BlockingIOError):
                answer += sock.recv(65536)
            if answer:
                break
            try:
                sock.setblocking(True)
                sock.sendall(chunk)
                sent += len(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
            finally:
                sock.setblocking(False)
        sock.setblocking(True)
        sock.settimeout(timeout)
        while b"\r\n\r\n" not in answer:
            more = sock.recv(65536)
            if not more:
                break
            answer += more
    return answer, sent, time.monotonic() - started


def _chunked(total: int, size: int = 1 << 16) -> Iterator[bytes]:
    for _ in range(total // size):
        yield f"{size:x}\r\n".encode() + b"x" * size + b"\r\n"
    yield b"0\r\n\r\n"


def test_auth_e2e_register_body_is_capped_while_streaming(server: Server) -> None:
    """The reported attack sent 400 MiB (RSS 1.35 GB, then 422); 64 MiB chunked here."""
    total = 64 << 20
    rss_before = _rss_bytes(server)
    head = (
        b"POST /auth/register HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    answer, sent, seconds = _send_request(server.port, head, _chunked(total))
    growth = _rss_bytes(server) - rss_before
    print(
        f"\nchunked register body: answered after {sent:,} of {total:,} bytes sent, in "
        f"{seconds:.2f} s; server RSS grew by {growth / 2**20:.1f} MiB"
    )
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert sent < 8 << 20  # answered long before the body ended
    assert growth < 16 << 20


@pytest.mark.parametrize("path", ["/auth/register", "/auth/token"])
def test_auth_e2e_declared_huge_body_is_413_unread(server: Server, path: str) -> None:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {400 << 20}\r\n\r\n"
    ).encode()
    answer, _, seconds = _send_request(server.port, head, iter([b"{" * 1024] * 4), timeout=10)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"application/json" in answer.lower()  # the JSON {"detail": ...} of every error
    assert seconds < 5


def test_auth_e2e_closed_registration_is_403_before_the_body_arrives(
    make_server: Callable[..., Server],
) -> None:
    """Before: the body was read and parsed first (422 for a bad one, and a wait for a slow one)."""
    server = make_server(registration="closed")
    head = (
        b"POST /auth/register HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000000\r\n\r\n"
    )
    answer, _, seconds = _send_request(server.port, head, iter([b"not json"] * 3), timeout=10)
    assert answer.startswith(b"HTTP/1.1 403"), answer[:200]
    assert seconds < 5
