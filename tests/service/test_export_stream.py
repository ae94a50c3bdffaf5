"""ExportResponse driven as ASGI in process: the body's end only for a whole export, the slot
freed before that end goes out, and a cut-off (time limit, shutdown) that ends without it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from filekv.engine import Put, Store
from filekv.service.errors import TooManyExports
from filekv.service.export import ExportResponse, ExportSlots

KEYS = 2500  # three chunks of at most 1000


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(tmp_path / "db", fsync="never", auto_compact=False) as db:
        db.batch([Put(f"k{i:05d}", b"v" * 10) for i in range(KEYS)])
        yield db


async def _never_disconnect() -> dict[str, Any]:
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


def _drive(
    store: Store,
    *,
    time_limit: float = 30.0,
    stopping: Callable[[], bool] = lambda: False,
    send_delay: float = 0.0,
) -> tuple[list[dict[str, Any]], ExportSlots, Any]:
    slots = ExportSlots(1)
    release = slots.acquire()
    snapshot = store.snapshot()
    messages: list[dict[str, Any]] = []
    active_at_end: list[int] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body" and not message["more_body"]:
            active_at_end.append(slots.active)
        messages.append(message)
        await asyncio.sleep(send_delay)

    response = ExportResponse(snapshot, release, time_limit=time_limit, stopping=stopping)
    scope = {"type": "http", "asgi": {"spec_version": "2.3"}}
    asyncio.run(response(scope, _never_disconnect, send))
    assert snapshot.closed
    return messages, slots, active_at_end


def test_export_stream_whole_answer_frees_the_slot_before_its_end(store: Store) -> None:
    messages, slots, active_at_end = _drive(store)
    assert messages[0]["type"] == "http.response.start"
    headers = dict(messages[0]["headers"])
    assert headers[b"x-filekv-keys"] == str(KEYS).encode()
    assert headers[b"content-type"] == b"application/x-ndjson"
    body = b"".join(m.get("body", b"") for m in messages[1:])
    lines = [orjson.loads(line) for line in body.splitlines()]
    assert [line["key"] for line in lines] == [f"k{i:05d}" for i in range(KEYS)]
    assert messages[-1] == {"type": "http.response.body", "body": b"", "more_body": False}
    assert active_at_end == [0]  # a client's next export, asked at once, finds the slot free
    assert slots.active == 0


def test_export_stream_time_limit_ends_without_the_body_end(store: Store) -> None:
    messages, slots, _ = _drive(store, time_limit=0.3, send_delay=3600)
    assert not any(m.get("more_body") is False for m in messages)
    assert slots.active == 0


def test_export_stream_shutdown_cuts_it_off_between_chunks(store: Store) -> None:
    chunks_sent = 0

    def stopping() -> bool:
        nonlocal chunks_sent
        chunks_sent += 1
        return chunks_sent > 1  # told to stop after the first chunk went out

    messages, slots, _ = _drive(store, stopping=stopping)
    bodies = [m for m in messages if m["type"] == "http.response.body"]
    assert len(bodies) == 1 and bodies[0]["more_body"] is True
    assert slots.active == 0


def test_export_slots_refuse_one_too_many_and_release_once() -> None:
    slots = ExportSlots(2)
    first, _second = slots.acquire(), slots.acquire()
    with pytest.raises(TooManyExports, match="export_max_concurrent"):
        slots.acquire()
    first()
    first()  # a second call gives back nothing more
    assert slots.active == 1
    slots.acquire()
    assert slots.active == 2
