"""``filekv serve`` raises its soft limit on open files to the hard one: with the common soft
limit of 1,024 a server could not hold its default 2,000 watch streams, nor keep more than ~1,000
segments open."""

from __future__ import annotations

import resource
import socket
from pathlib import Path

import pytest
from support.server import Server

SOFT = 256  # a low soft limit, as the server's parent gives it
CONNECTIONS = 400  # more connections than that allows


def test_e2e_serve_raises_its_soft_open_file_limit_and_holds_more_connections(
    tmp_path: Path,
) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2 * CONNECTIONS:
        pytest.skip(f"the hard limit on open files is {hard}")
    server = Server(tmp_path / "data", tmp_path / "server.log", fsync="never")
    resource.setrlimit(resource.RLIMIT_NOFILE, (SOFT, hard))  # inherited by the server
    try:
        server.start()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    held: list[socket.socket] = []
    try:
        assert server.process is not None
        limits = Path(f"/proc/{server.process.pid}/limits").read_text()
        line = next(row for row in limits.splitlines() if row.startswith("Max open files"))
        expected = str(1 << 20 if hard == resource.RLIM_INFINITY else min(hard, 1 << 20))
        assert line.split()[3] == expected, line
        # The attack it stops: idle connections past the old soft limit. The server still
        # accepts and answers (with 256 descriptors it could not accept this one).
        for _ in range(CONNECTIONS):
            held.append(socket.create_connection(("127.0.0.1", server.port)))
        with server.client(timeout=10) as http:
            assert http.put("/keys/k", json={"value": "v"}).status_code == 201
            assert http.get("/keys/k").json()["value"] == "v"
    finally:
        for sock in held:
            sock.close()
        server.stop()
