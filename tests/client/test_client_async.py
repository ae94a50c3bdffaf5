"""What only ``AsyncClient`` has: ``async with``, ``async for``, ``async with transaction()`` and
``async with export()``.

The shared tests (``connect``) already run every method through it; these use its own syntax,
on anyio's pytest plugin (anyio comes with httpx) with the asyncio backend.
"""

from __future__ import annotations

import asyncio
import inspect
import io
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from clientkit import PASSWORD, add_admin, unique
from support.server import Server

from filekv.client import AsyncClient, Client, Entry, Forbidden, Locked, NotFound

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Boom(Exception):
    pass


PLAIN = (type(None), bool, int, float, str)


def _parameters(method: Callable[..., object]) -> list[tuple[str, object, object]]:
    """Names, kinds and defaults (a sentinel default, e.g. ``get``'s, as "a sentinel")."""
    parameters = inspect.signature(method).parameters.values()
    return [
        (param.name, param.kind, param.default if _plain(param) else "a sentinel")
        for param in parameters
    ]


def _plain(param: inspect.Parameter) -> bool:
    return param.default is param.empty or isinstance(param.default, PLAIN)


def test_async_client_has_every_method_of_client() -> None:
    """The package's promise: every public method of ``Client``, with the same parameters."""
    renamed = {"close": "aclose"}
    for name, method in vars(Client).items():
        if name.startswith("_"):
            continue
        twin = getattr(AsyncClient, renamed.get(name, name), None)
        assert twin is not None, f"AsyncClient has no {name}"
        if callable(method):
            assert _parameters(twin) == _parameters(method), name


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


async def test_async_client_export_reads_as_it_arrives(server: Server) -> None:
    prefix = unique("stream") + "/"
    count, value = 2000, "x" * 1000  # 2 MB: far more than one read of the connection
    async with AsyncClient(server.url) as kv:
        revisions = [
            await kv.batch([("put", f"{prefix}{n:05d}", value) for n in range(first, first + 500)])
            for first in range(0, count, 500)
        ]
        async with kv.export(prefix) as stream:
            assert (stream.revision, stream.keys) == (revisions[-1], count)
            entries = aiter(stream)
            first_entry = await anext(entries)
            # One entry in, most of the body is still on its way: not read whole first.
            assert stream.received < count // 2
            rest = [entry async for entry in entries]
        assert stream.received == count
    assert [first_entry, *rest] == [
        Entry(f"{prefix}{n:05d}", value, revisions[n // 500]) for n in range(count)
    ]


async def test_async_client_backup_as_admin_only(server: Server, tmp_path: Path) -> None:
    async with AsyncClient(server.url) as kv:
        await kv.login(add_admin(server), PASSWORD)
        revision = await kv.put(unique("backup"), "v")
        with (tmp_path / "filekv.tar").open("wb") as out:
            done = await kv.backup(out)
        assert done == {"revision": revision, "bytes": (tmp_path / "filekv.tar").stat().st_size}
        user = await _user(server)
        async with user:
            refused = io.BytesIO()
            with pytest.raises(Forbidden):
                await user.backup(refused)
        assert refused.getvalue() == b""
