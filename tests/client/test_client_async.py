"""What only ``AsyncClient`` has: ``async with``, ``async for`` and ``async with transaction()``.

The shared tests (``connect``) already run every method through it; these use its own syntax,
on anyio's pytest plugin (anyio comes with httpx) with the asyncio backend.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from clientkit import PASSWORD, unique
from support.server import Server

from filekv.client import AsyncClient, Entry, Locked, NotFound

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Boom(Exception):
    pass


async def _user(server: Server) -> AsyncClient:
    kv = AsyncClient(server.url)
    name = unique("user")
    await kv.register(name, PASSWORD)
    await kv.login(name, PASSWORD)
    return kv


async def test_async_client_context_and_iterators(server: Server) -> None:
    prefix = unique("async") + "/"
    async with AsyncClient(server.url) as kv:
        revisions = [await kv.put(f"{prefix}{n:03d}", str(n % 3)) for n in range(25)]
        assert all(isinstance(revision, int) for revision in revisions)
        keys = kv.keys(prefix, limit=4)
        assert isinstance(keys, AsyncIterator)
        assert [key async for key in keys] == [f"{prefix}{n:03d}" for n in range(25)]
        found = [key async for key in kv.find("0", prefix=prefix, limit=2)]
        assert found == [f"{prefix}{n:03d}" for n in range(0, 25, 3)]
        assert await kv.entry(f"{prefix}000") == Entry(f"{prefix}000", "0", revisions[0])
        await kv.delete(f"{prefix}000")
        with pytest.raises(NotFound):
            await kv.get(f"{prefix}000")
        assert await kv.get(f"{prefix}000", default="gone") == "gone"
    assert kv._http.is_closed


async def test_async_client_nested_transactions(server: Server) -> None:
    a, b, c = unique("a"), unique("b"), unique("c")
    kv = await _user(server)
    async with kv, AsyncClient(server.url) as reader:
        async with kv.transaction() as depth:
            assert depth == 1
            await kv.put(a, "1")
            async with kv.transaction():
                await kv.put(b, "2")
            with pytest.raises(Boom):
                async with kv.transaction() as inner:
                    assert inner == 2
                    await kv.put(c, "3")
                    raise Boom
            assert (await kv.transaction_status())["depth"] == 1
            assert await reader.get(a, default=None) is None
        assert [await reader.get(key, default=None) for key in (a, b, c)] == ["1", "2", None]
        with pytest.raises(Boom):
            async with kv.transaction():
                await kv.put(c, "outer")
                raise Boom
        assert await reader.get(c, default=None) is None
        await kv.logout()
        assert kv.token is None


async def test_async_client_concurrent_calls_share_the_client(server: Server) -> None:
    prefix = unique("gather") + "/"
    async with AsyncClient(server.url) as kv:
        await asyncio.gather(*(kv.put(f"{prefix}{n}", str(n)) for n in range(20)))
        values = await asyncio.gather(*(kv.get(f"{prefix}{n}") for n in range(20)))
    assert values == [str(n) for n in range(20)]


async def test_async_client_wait_locked(short_lease_server: Server) -> None:
    key = unique("k")
    holder = await _user(short_lease_server)
    async with holder, AsyncClient(short_lease_server.url, wait_locked=30.0) as waiter:
        await holder.begin()

        async def commit_soon() -> None:
            await asyncio.sleep(1.0)
            await holder.commit()

        committing = asyncio.create_task(commit_soon())
        assert isinstance(await waiter.put(key, "waiter"), int)
        await committing
        assert await waiter.get(key) == "waiter"
        await holder.begin()
        try:
            async with AsyncClient(short_lease_server.url, wait_locked=0.5) as impatient:
                with pytest.raises(Locked):
                    await impatient.put(key, "refused")
        finally:
            await holder.rollback()
