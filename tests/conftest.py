"""Shared fixtures for the service tests: ``app``, ``client`` and a real ``server`` subprocess.

``make_app(**settings)`` builds an app on a fresh data directory; ``client`` wraps the default one
in a ``TestClient`` with its lifespan running (so the store is open). ``server`` starts a real
``filekv serve`` on a free port (``support.server.Server``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

import pytest
from argon2 import PasswordHasher
from fastapi import FastAPI
from fastapi.testclient import TestClient
from support.server import Server
from support.server import login as log_in

from filekv.service.app import create_app
from filekv.settings import Settings

# The longest test files (measured, `--durations=0`, 2026-12-07), longest first. `make test` hands
# whole files to its two workers in collection order; started last, one of these left a worker
# alone for minutes at the end. Longest first, the short files fill in around them.
LONGEST_FIRST: Final = (
    "tests/reliability/test_fuzz_api.py",
    "tests/browser/test_console_browser.py",
    "tests/test_cli_client.py",
    "tests/browser/test_docs_browser.py",
    "tests/test_cli_transfer.py",
    "tests/reliability/test_power_loss.py",
    "tests/reliability/test_io_errors.py",
    "tests/e2e/test_slow_clients.py",
    "tests/e2e/test_e2e_export.py",
    "tests/test_cli.py",
    "tests/engine/test_crash.py",
    "tests/reliability/test_crash_http.py",
    "tests/e2e/test_auth_e2e.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    root = config.rootpath

    def file_rank(item: pytest.Item) -> int:
        try:
            return rank.get(item.path.relative_to(root).as_posix(), len(rank))
        except ValueError:  # a test file outside the root: after the listed ones
            return len(rank)

    items.sort(key=file_rank)  # stable: the order inside each file, and of the rest, is kept


# The apps built in process hash passwords with argon2id at the least cost argon2 allows: the
# production parameters (``auth.PASSWORD_HASHER``) cost ~80 ms of CPU per hash or check, and
# these tests register and log in hundreds of times (335 hashes and checks, 25 s, in two files
# alone). ``filekv serve`` in the end-to-end tests, and ``test_auth``'s counting hasher, keep
# the real parameters.
CHEAP_HASHER: Final = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


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
        return create_app(_settings(**overrides), password_hasher=CHEAP_HASHER)

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


Login = Callable[..., dict[str, str]]


@pytest.fixture
def login() -> Login:
    """``login(client, "alice")``: register if new, log in, the new session's headers."""
    return log_in


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Start a server with these settings (``FILEKV_*``) on a fresh data directory."""
    servers: list[Server] = []

    def make(**settings: Any) -> Server:
        index = len(servers)
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
