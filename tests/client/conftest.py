"""Fixtures for the client tests: real ``filekv serve`` servers, and ``connect`` for each client.

Every test that takes ``connect`` runs twice: with ``Client`` and with ``AsyncClient``. The async
one is driven through ``Blocking``, which runs each coroutine on an event loop of its own, collects
the async iterators and turns ``async with kv.transaction()`` into a ``with``: the same test body
checks both clients. ``test_client_async.py`` adds what only the async one has (``async with``,
``async for``).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from serverproc import Server

from filekv.client import AsyncClient, Client

PASSWORD = "client-secret-1"


def _start(
    tmp_path_factory: pytest.TempPathFactory, name: str, **settings: Any
) -> Iterator[Server]:
    base = tmp_path_factory.mktemp(name)
    server = Server(base / "data", base / "server.log", **settings)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The default settings (shared by the tests: each uses keys and users of its own)."""
    yield from _start(tmp_path_factory, "client-server")


@pytest.fixture(scope="session")
def closed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``registration=closed``: for 403, and its own login throttle budget for 429."""
    yield from _start(tmp_path_factory, "client-closed", registration="closed")


@pytest.fixture(scope="session")
def short_lease_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A 3 s transaction lease, so a 423's Retry-After is short (the wait_locked tests)."""
    yield from _start(tmp_path_factory, "client-lease", transaction_timeout=3)


def unique(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


class Blocking:
    """``AsyncClient`` with ``Client``'s blocking interface, for the shared tests."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client
        self._loop = asyncio.new_event_loop()

    def _run(self, awaitable: Any) -> Any:
        return self._loop.run_until_complete(awaitable)

    @property
    def token(self) -> str | None:
        return self._client.token

    @token.setter
    def token(self, token: str | None) -> None:
        self._client.token = token

    def close(self) -> None:
        self._run(self._client.aclose())
        self._loop.close()

    def keys(self, *args: Any, **kwargs: Any) -> Iterator[str]:
        return iter(self._run(_collect(self._client.keys(*args, **kwargs))))

    def find(self, *args: Any, **kwargs: Any) -> Iterator[str]:
        return iter(self._run(_collect(self._client.find(*args, **kwargs))))

    @contextlib.contextmanager
    def transaction(self) -> Iterator[int]:
        manager = self._client.transaction()
        depth = self._run(manager.__aenter__())
        try:
            yield depth
        except BaseException as exc:
            if not self._run(manager.__aexit__(type(exc), exc, exc.__traceback__)):
                raise
        else:
            self._run(manager.__aexit__(None, None, None))

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._client, name)
        return lambda *args, **kwargs: self._run(method(*args, **kwargs))


async def _collect(keys: AsyncIterator[str]) -> list[str]:
    return [key async for key in keys]


Connect = Callable[..., Any]


@pytest.fixture(params=["sync", "async"])
def connect(request: pytest.FixtureRequest) -> Iterator[Connect]:
    """``connect(url, **options)``: a ``Client`` or a (blocking) ``AsyncClient``, closed after."""
    opened: list[Any] = []

    def make(url: str | None = None, **options: Any) -> Any:
        if request.param == "sync":
            kv: Any = Client(url, **options)
        else:
            kv = Blocking(AsyncClient(url, **options))
        opened.append(kv)
        return kv

    yield make
    for kv in opened:
        with contextlib.suppress(Exception):  # a test that left its transaction open ends it
            while kv.transaction_status()["mine"]:
                kv.rollback()
        kv.close()


@pytest.fixture
def user(connect: Connect, server: Server) -> Any:
    """A client of ``server`` logged in as a user of its own."""
    kv = connect(server.url)
    name = unique("user")
    kv.register(name, PASSWORD)
    kv.login(name, PASSWORD)
    return kv


def login_new_user(kv: Any) -> str:
    name = unique("user")
    kv.register(name, PASSWORD)
    kv.login(name, PASSWORD)
    return name
