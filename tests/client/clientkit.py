"""Helpers of the client tests (a module of its own: every test directory has a ``conftest``).

``Blocking`` gives ``AsyncClient`` the blocking interface of ``Client``: it runs each coroutine
on an event loop of its own, collects the async iterators and turns ``async with
kv.transaction()`` and ``async with kv.export()`` into a ``with`` (the export's stream read an
item at a time, as it arrives), so the shared tests check both clients with one body.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator
from typing import Any

import httpx
from support.server import Server, user_command

from filekv.client import AsyncClient

PASSWORD = "client-secret-1"

Connect = Callable[..., Any]


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
        with self._enter(self._client.transaction()) as depth:
            yield depth

    @contextlib.contextmanager
    def export(self, *args: Any, **kwargs: Any) -> Iterator[BlockingExport]:
        with self._enter(self._client.export(*args, **kwargs)) as stream:
            yield BlockingExport(stream, self._run)

    @contextlib.contextmanager
    def _enter(self, manager: contextlib.AbstractAsyncContextManager[Any]) -> Iterator[Any]:
        entered = self._run(manager.__aenter__())
        try:
            yield entered
        except BaseException as exc:
            if not self._run(manager.__aexit__(type(exc), exc, exc.__traceback__)):
                raise
        else:
            self._run(manager.__aexit__(None, None, None))

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._client, name)
        return lambda *args, **kwargs: self._run(method(*args, **kwargs))


class BlockingExport:
    """An ``AsyncExportStream`` read through ``ExportStream``'s interface, one item at a time."""

    def __init__(self, stream: Any, run: Callable[[Any], Any]) -> None:
        self._stream = stream
        self._run = run

    def __getattr__(self, name: str) -> Any:  # revision, keys, received
        return getattr(self._stream, name)

    def __iter__(self) -> Iterator[Any]:
        return self._each(self._stream)

    def chunks(self) -> Iterator[tuple[bytes, int]]:
        return self._each(self._stream.chunks())

    def _each(self, items: AsyncIterable[Any]) -> Iterator[Any]:
        iterator = aiter(items)
        while (item := self._run(_next(iterator))) is not _END:
            yield item


_END = object()


async def _next(iterator: AsyncIterator[Any]) -> Any:
    return await anext(iterator, _END)


async def _collect(keys: AsyncIterator[str]) -> list[str]:
    return [key async for key in keys]


class Body(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A mocked answer's body (``httpx.Response(stream=...)``) in pieces, then (``fail``) the
    connection lost."""

    def __init__(self, pieces: list[bytes], *, fail: bool = False) -> None:
        self.pieces = pieces
        self.fail = fail

    def __iter__(self) -> Iterator[bytes]:
        yield from self.pieces
        if self.fail:
            raise httpx.ReadError("connection lost")

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for piece in self.pieces:
            yield piece
        if self.fail:
            raise httpx.ReadError("connection lost")


def add_admin(server: Server) -> str:
    """A new admin of ``server`` (``filekv user add --admin`` on its data directory): its name."""
    name = unique("admin")
    added = user_command(
        server.data_dir, "add", name, "--admin", "--password-stdin", stdin=PASSWORD + "\n"
    )
    assert added.returncode == 0, added.stderr
    return name


def login_new_user(kv: Any) -> str:
    name = unique("user")
    kv.register(name, PASSWORD)
    kv.login(name, PASSWORD)
    return name


class BigPage(httpx.SyncByteStream, httpx.AsyncByteStream):
    """What a wrong URL may answer: 16 MiB of HTML in 64 KiB pieces; ``pulled`` counts the bytes
    the client read of it."""

    PIECE = b"<p>not filekv</p>".ljust(64 << 10, b" ")

    def __init__(self) -> None:
        self.pulled = 0

    def __iter__(self) -> Iterator[bytes]:
        for _ in range(256):
            self.pulled += len(self.PIECE)
            yield self.PIECE

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for piece in self:
            yield piece
