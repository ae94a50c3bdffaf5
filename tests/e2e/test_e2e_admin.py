"""An admin and a bounded transaction on a real ``filekv serve`` (issue 11).

A holder that renews its lease all the time would keep the store read-only forever; here its lock
is broken by an admin (made and demoted with the real ``filekv user`` commands while the server
runs), and by ``transaction_max_seconds``.
"""

from __future__ import annotations

import re
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from support.logs import records
from support.server import PASSWORD, Server, login, user_command

MakeServer = Callable[..., Server]
BROKEN = "an admin ended your transaction: it was rolled back"


def _user_command(data_dir: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """``filekv user ARGS --data-dir D``, as an operator runs it beside the server."""
    return user_command(data_dir, *args, stdin=stdin)


def _token_of(headers: dict[str, str]) -> str:
    return headers["Authorization"].removeprefix("Bearer ")


def _keep_writing(server: Server, headers: dict[str, str], answers: list[httpx.Response]) -> None:
    """The busy holder: a staged write every 50 ms (each renews the lease) until one is refused."""
    with server.client() as client:
        for _ in range(1200):  # bounded: a minute at most
            answer = client.put("/keys/busy", json={"value": "staged"}, headers=headers)
            answers.append(answer)
            if answer.status_code not in (200, 201):
                return
            time.sleep(0.05)


def test_e2e_admin_breaks_a_busy_holders_lock_and_a_demoted_admin_cannot(
    make_server: MakeServer,
) -> None:
    server = make_server()
    added = _user_command(
        server.data_dir, "add", "root", "--admin", "--password-stdin", stdin=PASSWORD + "\n"
    )
    assert (added.returncode, added.stdout) == (0, "added user root (admin)\n"), added.stderr
    with server.client() as client:
        alice, bob, root = (login(client, name) for name in ("alice", "bob", "root"))
        assert client.get("/auth/me", headers=root).json() == {"username": "root", "role": "admin"}
        assert client.post("/transactions", headers=alice).status_code == 201
        answers: list[httpx.Response] = []
        busy = threading.Thread(target=_keep_writing, args=(server, alice, answers))
        busy.start()
        try:
            time.sleep(0.5)
            assert client.put("/keys/other", json={"value": "x"}, headers=bob).status_code == 423
            assert client.delete("/transactions", headers=bob).status_code == 403
            assert client.delete("/transactions").status_code == 401
            broken = client.delete("/transactions", headers=root)
            assert (broken.status_code, broken.json()) == (200, {"rolled_back": True, "depth": 1})
        finally:
            busy.join(90)
        assert len(answers) >= 5 and {a.status_code for a in answers[:-1]} <= {200, 201}
        assert answers[-1].status_code == 409
        assert answers[-1].json()["detail"].startswith(BROKEN)
        told = client.post("/transactions/commit", headers=alice)
        assert (told.status_code, told.json()["detail"]) == (
            409,
            f"{BROKEN}; nothing of it was applied",
        )
        assert client.get("/keys/busy").status_code == 404  # nothing staged was applied

        # Demoted with the real command: when it returns, the running server refuses root.
        assert client.post("/transactions", headers=bob).status_code == 201
        demoted = _user_command(server.data_dir, "set-role", "root", "user")
        assert (demoted.returncode, demoted.stdout) == (0, "root is now a user\n"), demoted.stderr
        refused = client.delete("/transactions", headers=root)
        assert (refused.status_code, refused.json()) == (
            403,
            {"detail": "only an admin may do this", "request_id": refused.headers["x-request-id"]},
        )
        assert client.get("/transactions", headers=bob).json()["mine"] is True
        assert client.get("/auth/me", headers=root).json() == {"username": "root", "role": "user"}
    listed = _user_command(server.data_dir, "list")
    assert listed.stdout == "alice\tuser\nbob\tuser\nroot\tuser\n"

    log = server.log()
    (line,) = [r for r in records(log) if "broke the transaction lock" in r.get("message", "")]
    assert line["level"] == "WARNING"
    assert "admin 'root' broke the transaction lock of 'alice'" in line["message"]
    for headers in (alice, bob, root):
        assert _token_of(headers) not in log


def test_e2e_transaction_max_seconds_ends_a_busy_holders_transaction(
    make_server: MakeServer,
) -> None:
    server = make_server(transaction_max_seconds=1.5)  # the lease stays 30 s
    with server.client() as client:
        alice, bob = login(client, "alice"), login(client, "bob")
        assert client.post("/transactions", headers=alice).status_code == 201
        started = time.monotonic()
        answers: list[httpx.Response] = []
        _keep_writing(server, alice, answers)
        elapsed = time.monotonic() - started
        assert answers[-1].status_code == 409, answers[-1].text
        assert "open longer than 1.5 s (transaction_max_seconds)" in answers[-1].json()["detail"]
        assert 1.4 <= elapsed < 30, elapsed  # neither early nor left to the 30 s lease
        assert len(answers) >= 10
        assert client.post("/transactions", headers=bob).status_code == 201  # the lock is free
        assert client.get("/keys/busy").status_code == 404
    warnings = [r.get("message", "") for r in records(server.log()) if r["level"] == "WARNING"]
    assert any(
        re.search(
            r"transaction of 'alice' \(session [0-9a-f]{8}\) open longer than "
            r"transaction_max_seconds \(1.5 s\); rolled back",
            message,
        )
        for message in warnings
    ), warnings
