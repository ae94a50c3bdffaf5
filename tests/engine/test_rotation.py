"""The async writers go to a worker thread only for a record that may seal the segment."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from support.engine_fixtures import OpenStore

from filekv.engine import Delete, Put, Store


@pytest.fixture
def offloaded(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the functions ``Store`` sent to a worker thread."""
    names: list[str] = []
    real = asyncio.to_thread

    async def counting(function: Any, *args: Any, **kwargs: Any) -> Any:
        names.append(function.__name__)
        return await real(function, *args, **kwargs)

    monkeypatch.setattr(asyncio, "to_thread", counting)
    return names


@pytest.fixture
def nearly_full(open_store: OpenStore, db_path: Path) -> tuple[Store, int]:
    """A store of 4 KiB segments whose active one has about 1,000 bytes left, and its id."""
    db = open_store(db_path, segment_bytes=4096)
    i = 0
    while db._segments.active.size < 4096 - 1100:
        db.put(f"fill{i}", b"f" * 100)
        i += 1
    return db, db._segments.active.segment_id


def test_rotation_only_a_record_that_may_not_fit_is_written_from_a_thread(
    nearly_full: tuple[Store, int], offloaded: list[str]
) -> None:
    # Segments of 4 KiB, values up to 1 MiB: a fixed margin of the largest record (as before)
    # sent every async write to a thread; the bound of each record (and a slack of 256 bytes,
    # a sixteenth of the segment) sends only the last ones.
    db, segment = nearly_full

    async def small_writes() -> None:
        await db.aput("a", b"1" * 50)
        await db.adelete("fill0")
        await db.abatch([Put("b", b"2" * 50), Delete("fill1")])

    asyncio.run(small_writes())
    assert offloaded == []
    assert db._segments.active.segment_id == segment

    async def a_big_one() -> int:
        return await db.aput("c", b"3" * 2000, ttl=60)  # cannot fit: seals the segment first

    asyncio.run(a_big_one())
    assert offloaded == ["put"]
    assert db._segments.active.segment_id > segment
    assert (db.get("a"), db.get("b"), db.get("c")) == (b"1" * 50, b"2" * 50, b"3" * 2000)
    assert db.get("fill0") is None and db.get("fill1") is None


def test_rotation_a_batch_that_cannot_fit_is_written_from_a_thread(
    nearly_full: tuple[Store, int], offloaded: list[str]
) -> None:
    db, segment = nearly_full
    ops = [Put(f"k{i:02d}", b"v" * 40) for i in range(24)]  # about 1,230 bytes as a record

    async def write() -> int:
        return await db.abatch(ops)

    asyncio.run(write())
    assert offloaded == ["batch"]
    assert db._segments.active.segment_id > segment
    assert all(db.get(f"k{i:02d}") == b"v" * 40 for i in range(24))
