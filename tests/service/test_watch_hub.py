"""The watch hub in process: event ids, resume positions, fan-out by prefix, the queue bounds,
and a hub that fell behind the history (every watcher told to resume)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import pytest

from filekv.engine import Change, Put, Store
from filekv.service.errors import TooManyWatchers
from filekv.service.routes.watch import pack
from filekv.service.stalls import SendStalls
from filekv.service.watch import (
    QUEUE_BYTES,
    Position,
    Watcher,
    WatchHub,
    event_id,
    format_event,
    number_chunk,
    parse_event_id,
)


@pytest.mark.parametrize(
    ("text", "position"),
    [
        ("7", Position(7)),
        ("0", Position(0)),
        ("7.0", Position(6, 0)),
        ("7.12", Position(6, 12)),
        (" 7 ", Position(7)),
        ("0.1", None),
        ("07", None),
        ("7.", None),
        ("-1", None),
        ("x", None),
        ("1" * 20, None),
    ],
)
def test_watch_parse_event_id(text: str, position: Position | None) -> None:
    assert parse_event_id(text) == position


def test_watch_position_skips_exactly_what_was_received() -> None:
    inside = Position(6, 1)  # received revision 7's operations 0 and 1
    assert [inside.wants(7, i) for i in range(4)] == [False, False, True, True]
    assert inside.wants(8, 0) and not inside.wants(6, 5)
    after = Position(7)
    assert not after.wants(7, 3) and after.wants(8, 0)


def test_watch_number_chunk_ids() -> None:
    chunk = [
        Change(5, "put", "a", b"", None),
        Change(6, "put", "b", b"", None),
        Change(6, "delete", "c", None, None),
        Change(6, "put", "d", b"", None),
        Change(7, "put", "e", b"", None),
    ]
    ids = [event_id(c.revision, i, last) for c, i, last in number_chunk(chunk)]
    assert ids == ["5", "6.0", "6.1", "6", "7"]


def test_watch_queue_overflows_by_count_and_by_bytes() -> None:
    async def main() -> None:
        by_count = Watcher("", False, limit=3)
        for i in range(4):
            by_count.push((i, 0, str(i), b"x"))
        assert by_count.overflowed and not by_count.queue
        by_bytes = Watcher("", False, limit=1000)
        big = b"x" * (QUEUE_BYTES // 3 + 1)
        for i in range(3):
            by_bytes.push((i, 0, str(i), big))
        assert by_bytes.overflowed and by_bytes.queued_bytes == 0

    asyncio.run(main())


def test_watch_hub_fans_out_by_prefix_and_key(tmp_path: Path) -> None:
    async def main() -> None:
        with Store.open(tmp_path / "db", fsync="never") as store:
            hub = WatchHub(store, max_watchers=4, queue_events=100)
            every = hub.add("")
            cfg = hub.add("cfg/")
            one = hub.add("cfg/a", exact=True)
            other = hub.add("other/")
            with pytest.raises(TooManyWatchers):
                hub.add("x")
            hub.start()
            store.batch([Put("cfg/a", b"1"), Put("cfg/ab", b"2"), Put("z", b"3")])
            for _ in range(200):
                if len(every.queue) == 3:
                    break
                await asyncio.sleep(0.01)
            assert [e[2] for e in every.take()] == ["1.0", "1.1", "1"]
            assert [e[2] for e in cfg.take()] == ["1.0", "1.1"]
            assert [e[2] for e in one.take()] == ["1.0"]
            assert not other.queue
            hub.remove(other)
            assert hub.watchers == 3
            hub.add("x")  # the freed place is free
            await hub.stop()
            assert every.closed and cfg.closed

    asyncio.run(main())


def test_watch_hub_behind_the_history_tells_every_watcher_to_resume(tmp_path: Path) -> None:
    async def main() -> None:
        with Store.open(
            tmp_path / "db", fsync="never", watch_history=0, watch_buffer_bytes=0
        ) as store:
            for i in range(50):
                store.put("k", str(i).encode())
            store.compact()
            hub = WatchHub(store, max_watchers=10, queue_events=100)
            watcher = hub.add("")
            hub.position = 0  # as if the hub had been starved since revision 0
            hub.start()
            for _ in range(200):
                if watcher.overflowed:
                    break
                await asyncio.sleep(0.01)
            assert watcher.overflowed
            assert hub.position == store.revision
            fresh = hub.add("")
            store.put("k", b"after")
            for _ in range(200):
                if fresh.queue:
                    break
                await asyncio.sleep(0.01)
            assert [e[0] for e in fresh.take()] == [store.revision]  # the hub went on
            await hub.stop()

    asyncio.run(main())


def test_watch_hub_idles_without_watchers_and_misses_nothing_after(tmp_path: Path) -> None:
    async def main() -> None:
        with Store.open(tmp_path / "db", fsync="never") as store:
            hub = WatchHub(store, max_watchers=10, queue_events=100)
            hub.start()
            await asyncio.sleep(0.05)
            for i in range(5):  # nobody watches: the hub sleeps through these
                await store.aput("k", str(i).encode())
                await asyncio.sleep(0)
            assert store._feed._loop_waiters == {}
            watcher = hub.add("")
            store.put("k", b"seen")  # right after add, before the hub even ran again
            for _ in range(200):
                if watcher.queue:
                    break
                await asyncio.sleep(0.01)
            assert [e[0] for e in watcher.take()] == [store.revision]
            hub.remove(watcher)
            store.put("k", b"last")  # wakes the hub once more; it finds nobody and idles
            for _ in range(200):
                if not store._feed._loop_waiters:
                    break
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)
            assert store._feed._loop_waiters == {}
            await hub.stop()

    asyncio.run(main())


def test_watch_response_hands_over_bounded_pieces_and_ends_a_stalled_send() -> None:
    """A stream of one 1 MB event and small ones is sent in pieces of at most SEND_BYTES; a
    send that never completes (a client that stopped reading) ends the response after
    stall_seconds, and the stream's generator is closed (its finally frees the watcher)."""
    from filekv.service.routes.watch import SEND_BYTES, WatchResponse

    closed: list[bool] = []

    async def events() -> AsyncGenerator[bytes, None]:
        try:
            yield b"retry: 2000\n\n"
            for piece in pack([b"x" * 1_000_000, *[b"small\n\n"] * 3]):
                yield piece
            await asyncio.Event().wait()  # never more
        finally:
            closed.append(True)

    sizes: list[int] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            sizes.append(len(message["body"]))
            if sum(sizes) > 3 * SEND_BYTES:  # the client's buffers are full: stuck for ever
                await asyncio.Event().wait()

    async def receive() -> dict[str, Any]:
        await asyncio.Event().wait()  # the client never goes away
        return {}

    async def main() -> float:
        stalls = SendStalls(0.2)
        stalls.start()
        response = WatchResponse(events(), stalls=stalls, prefix="p/")
        scope = {"type": "http", "asgi": {"spec_version": "2.3"}}
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.wait_for(response(scope, receive, send), 10)
        took = loop.time() - started
        assert stalls.check() == 0  # its clock left the register with the stream
        await stalls.stop()
        return took

    took = asyncio.run(main())
    assert 0.2 <= took < 5
    assert closed == [True]
    assert max(sizes) <= SEND_BYTES
    assert sum(sizes) <= 4 * SEND_BYTES  # what it handed over before it was stopped


def test_send_stalls_fire_only_sends_pending_past_the_limit() -> None:
    """The checker cancels a send that has waited longer than the limit (inside it, as a
    TimeoutError of the stream's own timeout), and leaves alone a send that is recent, a stream
    between sends, and a stream whose sends keep completing however long it lives."""

    async def main() -> None:
        stalls = SendStalls(0.3)
        loop = asyncio.get_running_loop()
        outcomes: dict[str, str] = {}
        gate = asyncio.Event()

        async def stream(name: str, pending: bool, since_offset: float) -> None:
            try:
                async with asyncio.timeout(None) as deadline:
                    with stalls.watching(deadline) as clock:
                        if pending:
                            clock.since = loop.time() - since_offset
                        await gate.wait()  # a send (or the wait between sends) in progress
                        clock.since = 0.0
                outcomes[name] = "finished"
            except TimeoutError:
                outcomes[name] = "cut off"

        tasks = [
            asyncio.create_task(stream("stalled", True, 0.5)),
            asyncio.create_task(stream("recent", True, 0.1)),
            asyncio.create_task(stream("idle", False, 0.0)),
        ]
        await asyncio.sleep(0)  # all registered, waiting
        assert stalls.check() == 1
        assert stalls.check() == 0  # fired once, not again
        await asyncio.sleep(0.01)
        assert outcomes == {"stalled": "cut off"}
        gate.set()
        await asyncio.gather(*tasks)
        assert outcomes == {"stalled": "cut off", "recent": "finished", "idle": "finished"}

        # The periodic task: a send completing every 0.1 s for 1 s (three limits) is never
        # cut; one that never completes is, within 1 to 1.25 limits (plus scheduling).
        stalls.start()

        async def steady() -> str:
            async with asyncio.timeout(None) as deadline:
                with stalls.watching(deadline) as clock:
                    for _ in range(10):
                        clock.since = loop.time()
                        await asyncio.sleep(0.1)
                        clock.since = 0.0
            return "finished"

        async def stuck() -> float:
            started = loop.time()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(None) as deadline:
                    with stalls.watching(deadline) as clock:
                        clock.since = loop.time()
                        await asyncio.Event().wait()
            return loop.time() - started

        finished, waited = await asyncio.wait_for(asyncio.gather(steady(), stuck()), 10)
        assert finished == "finished"
        assert 0.3 <= waited < 1.0
        await stalls.stop()

    asyncio.run(main())


def test_watch_response_is_not_cut_off_by_a_check_that_fired_as_its_send_completed() -> None:
    """The checker fires a stream's timeout on the next loop turn: a send that completes in
    the same turn must not be cancelled afterwards, somewhere else (a healthy stream logged as
    stalled and closed); the stream undoes the firing and goes on."""
    from filekv.service.routes.watch import WatchResponse

    async def main() -> list[bytes]:
        stalls = SendStalls(0.05)  # not started: the test calls check() itself
        gate = asyncio.Event()
        sent: list[bytes] = []

        async def events() -> AsyncGenerator[bytes, None]:
            for piece in (b"first\n\n", b"second\n\n", b"third\n\n"):
                yield piece
                await asyncio.sleep(0.01)

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.body":
                if not sent:
                    await gate.wait()  # the first piece waits past the limit
                sent.append(message["body"])

        async def receive() -> dict[str, Any]:
            await asyncio.Event().wait()
            return {}

        response = WatchResponse(events(), stalls=stalls, prefix="p/")
        scope = {"type": "http", "asgi": {"spec_version": "2.3"}}
        task = asyncio.create_task(response(scope, receive, send))
        await asyncio.sleep(0.1)  # the first send has waited twice the limit
        gate.set()  # it completes on the next turn...
        assert stalls.check() == 1  # ...and the check fires in this one
        await asyncio.wait_for(task, 5)
        return sent

    assert asyncio.run(main()) == [b"first\n\n", b"second\n\n", b"third\n\n", b""]


def test_watch_pack_cuts_big_events_and_joins_small_ones() -> None:
    from filekv.service.routes.watch import SEND_BYTES

    small = [b"s" * 100] * 10
    assert list(pack(small)) == [b"".join(small)]
    big = b"b" * (2 * SEND_BYTES + 5)
    pieces = list(pack([b"a", big, b"c"]))
    assert b"".join(pieces) == b"a" + big + b"c"
    assert all(len(piece) <= SEND_BYTES for piece in pieces)


def test_watch_hub_reservations_count_until_claimed_released_or_lapsed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import filekv.service.watch as watch_module

    with Store.open(tmp_path / "db", fsync="never") as store:
        hub = WatchHub(store, max_watchers=2, queue_events=10)
        first = hub.reserve()
        second = hub.reserve()
        with pytest.raises(TooManyWatchers):
            hub.reserve()
        with pytest.raises(TooManyWatchers):
            hub.add("x")  # a long poll finds no room either
        watcher = hub.add("a/", reservation=first)  # claimed: the same slot
        assert hub.watchers == 1 and not first.live
        hub.release(first)  # claimed: nothing to give back
        with pytest.raises(TooManyWatchers):
            hub.reserve()
        hub.release(second)
        hub.release(second)  # once only
        third = hub.reserve()
        hub.remove(watcher)
        hub.reserve()
        # An unclaimed reservation (a stream that never started) lapses.
        monkeypatch.setattr(watch_module.time, "monotonic", lambda: third.deadline + 1)
        hub.reserve()
        assert not third.live
        late = hub.add("b/", reservation=third)  # lapsed: it needs a free slot
        assert hub.watchers == 1
        hub.remove(late)


def test_watch_event_expires_in_is_never_zero_while_the_key_lives() -> None:
    now = 1_000_000.0

    def expires_in(expires_at: float) -> object:
        data = format_event(Change(3, "put", "k", b"v", expires_at), 0, True, now)
        return json.loads(data.split(b"data: ", 1)[1])["expires_in"]

    assert expires_in(now + 0.0004) == 0.001
    assert expires_in(now + 2.5) == 2.5
    assert expires_in(now - 1) == 0.0  # already expired (a put read back from the history)
