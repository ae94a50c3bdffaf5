"""Shared pieces of the RELIABILITY-A tests: a real ``filekv serve`` subprocess and the soak switch.

``ServeProcess`` runs exactly what a user runs (``filekv serve --data-dir D --port P --fsync
always``) on a free loopback port, waits for ``/healthz`` with a generous deadline (the machine is
small and shared), and can be stopped with SIGTERM or killed with SIGKILL and started again on the
same directory. Nothing here asserts on time: deadlines only bound waits so that a hang fails.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Final

import httpx

SOAK: Final = os.environ.get("FILEKV_SOAK") == "1"
BIN: Final = Path(sys.executable).parent
FILEKV: Final = str(BIN / "filekv")
PASSWORD: Final = "correct horse battery"
START_TIMEOUT: Final = 60.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def serve_command(data_dir: Path, port: int, *extra: str) -> list[str]:
    return [
        FILEKV,
        "serve",
        "--data-dir",
        str(data_dir),
        "--port",
        str(port),
        "--fsync",
        "always",
        "--log-level",
        "warning",
        *extra,
    ]


class ServeProcess:
    """One ``filekv serve`` on ``data_dir``; a new free port at each start."""

    def __init__(self, data_dir: Path, log_path: Path, *extra: str) -> None:
        self.data_dir = data_dir
        self.log_path = log_path
        self.extra = extra
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = START_TIMEOUT) -> None:
        self.port = free_port()
        with self.log_path.open("ab") as log:
            log.write(f"--- start {self.starts} on port {self.port}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                serve_command(self.data_dir, self.port, *self.extra),
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
            )
        self.starts += 1
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited {self.process.returncode}: {self.log()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"server did not become healthy in {timeout} s: {self.log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        """Send ``sig`` and wait for the exit; the exit code (negative: killed by a signal)."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        finally:
            self.kill()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def client(self, **kwargs: Any) -> httpx.Client:
        kwargs.setdefault("timeout", 30)
        return httpx.Client(base_url=self.url, **kwargs)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


def login(client: httpx.Client, username: str) -> dict[str, str]:
    """Register ``username`` if new, log in: the Authorization header of a new session."""
    client.post("/auth/register", json={"username": username, "password": PASSWORD})
    answer = client.post("/auth/token", data={"username": username, "password": PASSWORD})
    assert answer.status_code == 200, answer.text
    return {"Authorization": f"Bearer {answer.json()['access_token']}"}


def read_all(client: httpx.Client, prefix: str) -> dict[str, str]:
    """Every committed key under ``prefix`` with its value, following the paging cursor."""
    keys: list[str] = []
    after: str | None = None
    for _ in range(100_000):  # bounded: each page advances the cursor
        params: dict[str, str | int] = {"prefix": prefix, "limit": 1000}
        if after is not None:
            params["after"] = after
        page = client.get("/keys", params=params)
        assert page.status_code == 200, page.text
        body = page.json()
        keys.extend(body["keys"])
        after = body["next"]
        if after is None:
            break
    values: dict[str, str] = {}
    for key in keys:
        answer = client.get(f"/keys/{quote_key(key)}")
        assert answer.status_code == 200, (key, answer.status_code, answer.text)
        values[key] = answer.json()["value"]
    return values


def quote_key(key: str) -> str:
    from urllib.parse import quote

    return quote(key, safe="/")
