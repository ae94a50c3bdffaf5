"""Group commit on its own: a waiter returns only once an fsync covering it has finished.

A fake log stands in for the store: ``append`` hands out sequence numbers, ``fsync`` (slowed down
so that writers pile up) records which sequence number each finished fsync covered. Every waiter
then checks that some fsync that had *finished* before it returned covered its number.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from filekv.engine.durability import GroupCommit
from filekv.engine.errors import StoreFailed


class FakeLog:
    def __init__(self, delay: float = 0.005, fail_at: int | None = None) -> None:
        self.lock = threading.Lock()
        self.appended = 0
        self.covered: list[int] = []  # the target of every finished fsync, in order
        self.delay = delay
        self.fail_at = fail_at
        self.rounds_running = 0
        self.overlaps = 0

    def append(self) -> int:
        with self.lock:
            self.appended += 1
            return self.appended

    def sync_point(self) -> tuple[int, int]:
        return self.appended, 3

    def fsync(self, fd: int) -> None:
        assert fd == 3
        with self.lock:
            self.rounds_running += 1
            if self.rounds_running > 1:
                self.overlaps += 1
            target = self.appended
        time.sleep(self.delay)
        with self.lock:
            self.rounds_running -= 1
            if self.fail_at is not None and len(self.covered) + 1 >= self.fail_at:
                raise OSError(5, "Input/output error")
            # Only what was appended when the fsync started is covered by it.
            self.covered.append(target)

    def durable(self, seq: int) -> bool:
        with self.lock:
            return any(target >= seq for target in self.covered)


def test_durability_threads_and_tasks_return_only_when_covered() -> None:
    log = FakeLog()
    group = GroupCommit(log.sync_point, log.fsync)
    early: list[int] = []
    done = 0
    done_lock = threading.Lock()

    def writer(puts: int) -> None:
        nonlocal done
        for _ in range(puts):
            seq = log.append()
            group.wait(seq)
            if not log.durable(seq):
                early.append(seq)
            with done_lock:
                done += 1

    async def tasks(count: int, puts: int) -> None:
        async def one() -> None:
            nonlocal done
            for _ in range(puts):
                seq = log.append()
                await group.wait_async(seq)
                if not log.durable(seq):
                    early.append(seq)
                with done_lock:
                    done += 1

        await asyncio.gather(*(one() for _ in range(count)))

    threads = [threading.Thread(target=writer, args=(20,)) for _ in range(16)]
    threads.append(threading.Thread(target=asyncio.run, args=(tasks(16, 20),)))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    group.stop()
    assert not any(thread.is_alive() for thread in threads), "a waiter hung"
    assert early == [], f"returned before an fsync covered them: {early[:10]}"
    assert done == 32 * 20
    assert log.overlaps == 0, "two fsync rounds ran at once"
    assert len(log.covered) < 32 * 20 / 4, f"{len(log.covered)} fsyncs for {done} writes"


def test_durability_lone_writer_leads_its_own_round() -> None:
    log = FakeLog(delay=0)
    group = GroupCommit(log.sync_point, log.fsync)
    for _ in range(50):
        seq = log.append()
        group.wait(seq)
        assert log.durable(seq)
    assert len(log.covered) == 50
    assert group._syncer is None, "no thread hand-off for a writer alone"


def test_durability_failed_fsync_fails_every_waiter_and_every_later_wait() -> None:
    log = FakeLog(delay=0.02, fail_at=2)
    group = GroupCommit(log.sync_point, log.fsync)
    group.wait(log.append())  # the first round succeeds
    outcomes: list[str] = []

    def writer() -> None:
        try:
            group.wait(log.append())
            outcomes.append("returned")
        except StoreFailed:
            outcomes.append("failed")

    async def task() -> str:
        try:
            await group.wait_async(log.append())
            return "returned"
        except StoreFailed:
            return "failed"

    threads = [threading.Thread(target=writer) for _ in range(8)]
    for thread in threads:
        thread.start()
    outcomes.append(asyncio.run(task()))
    for thread in threads:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads), "a waiter hung"
    assert outcomes == ["failed"] * 9
    assert group.failure is not None
    with pytest.raises(StoreFailed):
        group.wait(log.append())
    with pytest.raises(StoreFailed):
        asyncio.run(group.wait_async(log.append()))
    group.stop()


def test_durability_stop_wakes_a_parked_writer_with_an_error() -> None:
    gate = threading.Event()
    log = FakeLog(delay=0)

    def stuck_fsync(fd: int) -> None:
        gate.wait(10)  # the first round hangs until the test lets it go
        log.fsync(fd)

    group = GroupCommit(log.sync_point, stuck_fsync)
    leader = threading.Thread(target=lambda: group.wait(log.append()))
    leader.start()
    while not group._busy:
        time.sleep(0.001)
    outcome: list[BaseException | None] = []

    def parked() -> None:
        try:
            group.wait(log.append())
            outcome.append(None)
        except StoreFailed as error:
            outcome.append(error)

    waiter = threading.Thread(target=parked)
    waiter.start()
    while not group._parked:
        time.sleep(0.001)
    gate.set()
    leader.join(timeout=10)
    # The leader handed the parked writer to the syncer, which synced it: no error here.
    waiter.join(timeout=10)
    assert outcome == [None]
    group.stop()

    # A writer still parked when stop() runs (the round it waits behind is stuck) is woken with
    # an error at once, not left hanging.
    gate.clear()
    group = GroupCommit(log.sync_point, stuck_fsync)
    leader = threading.Thread(target=lambda: group.wait(log.append()))
    leader.start()
    while not group._busy:
        time.sleep(0.001)
    outcome.clear()
    waiter = threading.Thread(target=parked)
    waiter.start()
    while not group._parked:
        time.sleep(0.001)
    stopper = threading.Thread(target=group.stop)
    stopper.start()
    waiter.join(timeout=10)
    assert len(outcome) == 1 and isinstance(outcome[0], StoreFailed)
    gate.set()
    leader.join(timeout=10)
    stopper.join(timeout=10)


def test_durability_wait_for_round_covers_a_round_from_its_start() -> None:
    """A round that has read its descriptor but not yet fsynced it still counts as running:
    compaction closes files right after wait_for_round() returns."""
    log = FakeLog(delay=0.01)
    picked = threading.Event()
    events: list[str] = []

    def slow_sync_point() -> tuple[int, int]:
        point = log.sync_point()
        picked.set()
        time.sleep(0.05)  # between picking the descriptor and calling fsync on it
        return point

    def fsync(fd: int) -> None:
        log.fsync(fd)
        events.append("fsync done")

    group = GroupCommit(slow_sync_point, fsync)
    writer = threading.Thread(target=group.wait, args=(log.append(),))
    writer.start()
    assert picked.wait(10)
    group.wait_for_round()
    events.append("wait_for_round returned")
    writer.join(timeout=10)
    assert events == ["fsync done", "wait_for_round returned"]
    group.stop()
