"""What a server does with a connection, seen from its client's socket (Linux /proc)."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path


def server_lets_go(sock: socket.socket, limit: float = 10.0) -> bool:
    """Whether the server closes its end of this connection within ``limit`` seconds while
    the client reads nothing: no descriptor holds the server's socket any more (its line in
    /proc/net/tcp has inode 0, or is gone after it was seen held). IPv4 only (``tcp``, not
    ``tcp6``): a connection it cannot find fails the test rather than pass it."""
    server_port, client_port = sock.getpeername()[1], sock.getsockname()[1]
    deadline = time.monotonic() + limit
    seen = False
    while time.monotonic() < deadline:
        inodes = []
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            local, remote, inode = fields[1], fields[2], fields[9]
            if (
                int(local.split(":")[1], 16) == server_port
                and int(remote.split(":")[1], 16) == client_port
            ):
                inodes.append(inode)
        if "0" in inodes or (seen and not inodes):
            return True
        if not inodes and not seen:
            raise AssertionError(f"no server socket for client port {client_port} in /proc/net/tcp")
        seen = True
        threading.Event().wait(0.05)
    return False
