"""A real ``filekv serve`` subprocess for RELIABILITY-B's tests, with its output captured."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

FILEKV = Path(sys.executable).parent / "filekv"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Serve:
    """``filekv serve --data-dir DIR --port P`` with ``FILEKV_*`` settings, output to a file."""

    def __init__(self, data_dir: Path, log_path: Path, **settings: Any) -> None:
        self.data_dir = data_dir
        self.log_path = log_path
        self.settings = {"fsync": "always", **settings}
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def spawn(self) -> subprocess.Popen[bytes]:
        env = {**os.environ}
        env.update({f"FILEKV_{name.upper()}": str(value) for name, value in self.settings.items()})
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [str(FILEKV), "serve", "--data-dir", str(self.data_dir), "--port", str(self.port)],
                env=env,
                stdout=log,
                stderr=log,
            )
        return self.process

    def start(self, timeout: float = 60.0) -> None:
        process = self.spawn()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"server exited {process.returncode}: {self.log()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"server did not become healthy: {self.log()}")

    def stop(self) -> int | None:
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return process.returncode

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **kwargs)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@contextlib.contextmanager
def serving(data_dir: Path, log_path: Path, **settings: Any) -> Iterator[Serve]:
    server = Serve(data_dir, log_path, **settings)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file of a data directory (but the LOCK) and its bytes."""
    return {
        str(path.relative_to(directory)): path.read_bytes()
        for path in sorted(directory.rglob("*"))
        if path.is_file() and path.name != "LOCK"
    }
