"""What a server does with a connection, seen from its client's socket (Linux /proc)."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path


def server_lets_go(sock: socket.socket, limit: float = 10.0) -> bool:
    """Whether the server closes its end of this connection within ``limit`` seconds while
    the client reads nothing: no descriptor holds the server's socket any more (its line in
    /proc/net/tcp has inode 0, or is gone)."""
    server_port, client_port = sock.getpeername()[1], sock.getsockname()[1]
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        held = False
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            local, remote, inode = fields[1], fields[2], fields[9]
            if int(local.split(":")[1], 16) == server_port:
                held = held or (int(remote.split(":")[1], 16) == client_port and inode != "0")
        if not held:
            return True
        threading.Event().wait(0.05)
    return False
