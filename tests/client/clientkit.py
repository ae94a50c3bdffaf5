"""Helpers of the client tests (a module of its own: every test directory has a ``conftest``).

``Blocking`` gives ``AsyncClient`` the blocking interface of ``Client``: it runs each coroutine
on an event loop of its own, collects the async iterators and turns ``async with
kv.transaction()`` into a ``with``, so the shared tests check both clients with one body.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

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


def login_new_user(kv: Any) -> str:
    name = unique("user")
    kv.register(name, PASSWORD)
    kv.login(name, PASSWORD)
    return name
