"""Fixtures for the client tests: real ``filekv serve`` servers, and ``connect`` for each client.

Every test that takes ``connect`` runs twice: with ``Client`` and with ``AsyncClient`` (driven
through ``clientkit.Blocking``): the same test body checks both clients. ``test_client_async.py``
adds what only the async one has (``async with``, ``async for``). Helpers the tests import live in
``clientkit.py``, not here: ``from conftest import`` would find another directory's conftest.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
from clientkit import PASSWORD, Blocking, Connect, unique
from support.server import Server

from filekv.client import AsyncClient, Client


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
