"""Shared fixtures for the service tests: ``app``, ``client`` and a real ``server`` subprocess.

``make_app(**settings)`` builds an app on a fresh data directory; ``client`` wraps the default one
in a ``TestClient`` with its lifespan running (so the store is open). ``server`` starts a real
``filekv serve`` (or, before the CLI exists, uvicorn on the app factory) on a free port.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from filekv.service.app import create_app
from filekv.settings import Settings

PASSWORD = "correct horse battery"
BIN = Path(sys.executable).parent


def _settings(data_dir: Path, **overrides: Any) -> Settings:
    fields: dict[str, Any] = {"data_dir": data_dir, "fsync": "always"}
    fields.update(overrides)
    return Settings(**fields)


@pytest.fixture
def make_app(tmp_path: Path) -> Callable[..., FastAPI]:
    """Build an app on its own data directory under ``tmp_path``, with these settings."""
    count = 0

    def make(**overrides: Any) -> FastAPI:
        nonlocal count
        count += 1
        overrides.setdefault("data_dir", tmp_path / f"data{count}")
        return create_app(_settings(**overrides))

    return make


@pytest.fixture
def app(make_app: Callable[..., FastAPI]) -> FastAPI:
    return make_app()


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture
def make_client(make_app: Callable[..., FastAPI]) -> Iterator[Callable[..., TestClient]]:
    """A started ``TestClient`` on a new app with these settings; closed at teardown."""
    with contextlib.ExitStack() as stack:

        def make(**overrides: Any) -> TestClient:
            return stack.enter_context(TestClient(make_app(**overrides)))

        yield make


def log_in(client: TestClient | httpx.Client, username: str = "alice") -> dict[str, str]:
    """Register ``username`` (if new) and log in: the Authorization header of a new session."""
    client.post("/auth/register", json={"username": username, "password": PASSWORD})
    answer = client.post("/auth/token", data={"username": username, "password": PASSWORD})
    assert answer.status_code == 200, answer.text
    return {"Authorization": f"Bearer {answer.json()['access_token']}"}


Login = Callable[..., dict[str, str]]


@pytest.fixture
def login() -> Login:
    """``login(client, "alice")``: register if new, log in, the new session's headers."""
    return log_in


# -- a real server ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _has_cli() -> bool:
    return importlib.util.find_spec("filekv.cli") is not None and (BIN / "filekv").exists()


class Server:
    """A ``filekv serve`` subprocess on ``data_dir``; restartable on the same directory."""

    def __init__(self, data_dir: Path, log_path: Path, **settings: Any) -> None:
        self.data_dir = data_dir
        self.log_path = log_path
        self.settings = settings
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        if _has_cli():
            return [
                str(BIN / "filekv"),
                "serve",
                "--data-dir",
                str(self.data_dir),
                "--port",
                str(self.port),
            ]
        return [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "filekv.service.app:app_from_env",
            "--port",
            str(self.port),
            "--log-level",
            "warning",
        ]

    def start(self, timeout: float = 20.0) -> None:
        self.port = free_port()
        env = {**os.environ, "FILEKV_DATA_DIR": str(self.data_dir), "FILEKV_PORT": str(self.port)}
        env.update({f"FILEKV_{name.upper()}": str(value) for name, value in self.settings.items()})
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(self.command(), env=env, stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited {self.process.returncode}: {self.log()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"server did not become healthy: {self.log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        """Send ``sig`` and wait for the exit; the exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def restart(self, sig: int = signal.SIGTERM) -> None:
        self.stop(sig)
        self.start()

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=10, **kwargs)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Start a server with these settings (``FILEKV_*``) on a fresh data directory."""
    servers: list[Server] = []

    def make(**settings: Any) -> Server:
        index = len(servers)
        settings.setdefault("fsync", "always")
        server = Server(tmp_path / f"server{index}", tmp_path / f"server{index}.log", **settings)
        servers.append(server)
        server.start()
        return server

    yield make
    for server in servers:
        with contextlib.suppress(Exception):
            server.stop()


@pytest.fixture
def server(make_server: Callable[..., Server]) -> Server:
    return make_server()
