"""Group commit: many writers waiting for durability share one fsync.

Writers append their record (a page-cache write, microseconds) and get a sequence number. To be
durable they then call ``wait(seq)``: if no fsync is running, the caller becomes the *leader*,
fsyncs everything appended so far and wakes every writer it covered; otherwise it waits for the
running fsync and, if that one did not cover it, leads the next. 32 threads waiting therefore
cost a handful of fsyncs, not 32.

Asyncio callers use ``await wait_async(seq)``: their futures are resolved by a syncer thread, so
the event loop never runs an fsync.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from _thread import LockType
from _thread import allocate_lock as _allocate_lock
from collections.abc import Callable

from .errors import StoreFailed

log = logging.getLogger(__name__)

COMMIT_DELAY = 0.0002  # seconds a contended leader may wait for more appends before its fsync

# Returns (highest appended sequence number, descriptor of the file holding every record up to it
# that is not yet synced). It must not take the store's lock: writers append while a round runs.
SyncPoint = Callable[[], tuple[int, int]]


class GroupCommit:
    def __init__(self, sync_point: SyncPoint, fsync: Callable[[int], None]) -> None:
        self._sync_point = sync_point
        self._fsync = fsync
        self._condition = threading.Condition()
        self._synced = 0
        self._syncing = False
        self._contended = False  # whether the last round had writers waiting behind it
        self._failure: BaseException | None = None
        self._parked: list[LockType] = []
        self._async_waiters: list[tuple[int, asyncio.Future[None], asyncio.AbstractEventLoop]] = []
        self._wakeup = threading.Event()
        self._syncer: threading.Thread | None = None
        self._stopping = False

    @property
    def synced(self) -> int:
        return self._synced

    @property
    def failure(self) -> BaseException | None:
        return self._failure

    def mark_synced(self, seq: int) -> None:
        """Record that everything up to ``seq`` is durable (e.g. after a segment was sealed)."""
        with self._condition:
            if seq > self._synced:
                self._synced = seq
                self._condition.notify_all()

    def wait(self, seq: int) -> None:
        """Return once everything up to ``seq`` is on disk; raise StoreFailed if fsync failed."""
        while True:
            with self._condition:
                if self._synced >= seq:
                    return
                if self._failure is not None:
                    raise StoreFailed(f"fsync failed earlier: {self._failure}")
                if self._syncing:
                    # A bare lock per waiter, released by the leader: a woken writer does not
                    # queue for a shared lock again (as Condition.wait would), which matters
                    # when dozens of threads wake after every fsync.
                    parked = _allocate_lock()
                    parked.acquire()
                    self._parked.append(parked)
                else:
                    self._syncing = True
                    parked = None
            if parked is None:
                if self._lead() >= seq:
                    return  # a lone writer is done after one round, without looking again
            else:
                parked.acquire()

    def _lead(self) -> int:
        """Run one round: fsync everything appended so far; return the new synced sequence."""
        try:
            target, fd = self._sync_point()
            if self._contended:
                # Writers just woken by the last round are about to append again. Give them the
                # GIL while appends keep coming (bounded), so this fsync covers them too rather
                # than only the leader: PostgreSQL's commit_delay, driven by progress, not time.
                deadline = time.monotonic() + COMMIT_DELAY
                while time.monotonic() < deadline:
                    time.sleep(0)
                    latest, fd = self._sync_point()
                    if latest == target:
                        break
                    target = latest
            self._fsync(fd)
        except BaseException as error:
            log.error("fsync failed; the store refuses writes until reopened: %s", error)
            with self._condition:
                self._failure = error
                self._finish_round()
            self._resolve_async()
            raise StoreFailed(f"fsync failed: {error}") from error
        with self._condition:
            if target > self._synced:
                self._synced = target
            synced = self._synced
            self._finish_round()
        if self._async_waiters:  # unlocked peek: the syncer thread resolves any it misses
            self._resolve_async()
        return synced

    def _finish_round(self) -> None:
        # Called holding _condition: wake every parked writer; those not yet covered elect the
        # next leader among themselves.
        self._syncing = False
        parked, self._parked = self._parked, []
        self._contended = bool(parked)
        for waiter in parked:
            waiter.release()
        self._condition.notify_all()

    def wait_for_round(self) -> None:
        """Wait until no fsync round is running (so a file it may be syncing can be closed)."""
        with self._condition:
            while self._syncing:
                self._condition.wait()

    def sync_now(self) -> None:
        """Make everything appended so far durable (interval flusher, close)."""
        target, _ = self._sync_point()
        self.wait(target)

    async def wait_async(self, seq: int) -> None:
        if self._synced >= seq:
            return
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._condition:
            if self._failure is not None:
                raise StoreFailed(f"fsync failed earlier: {self._failure}")
            self._async_waiters.append((seq, future, loop))
            self._ensure_syncer()
        self._wakeup.set()
        await future

    def _ensure_syncer(self) -> None:
        if self._syncer is None or not self._syncer.is_alive():
            self._syncer = threading.Thread(
                target=self._run_syncer, name="filekv-group-commit", daemon=True
            )
            self._syncer.start()

    def _run_syncer(self) -> None:
        while True:
            self._wakeup.wait()
            self._wakeup.clear()
            if self._stopping:
                return
            with self._condition:
                pending = max((seq for seq, _, _ in self._async_waiters), default=0)
            if pending:
                # On failure, _resolve_async has already handed the error to the waiters.
                with contextlib.suppress(StoreFailed):
                    self.wait(pending)
                self._resolve_async()

    def _resolve_async(self) -> None:
        with self._condition:
            if not self._async_waiters:
                return
            failure = self._failure
            synced = self._synced
            ready = [w for w in self._async_waiters if failure is not None or w[0] <= synced]
            self._async_waiters = [
                w for w in self._async_waiters if failure is None and w[0] > synced
            ]
        by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
        for _, future, loop in ready:
            by_loop.setdefault(loop, []).append(future)
        for loop, futures in by_loop.items():
            # One hand-off per loop per batch, not one per waiter.
            # A closed loop raises RuntimeError: nobody is waiting there any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_settle, futures, failure)

    def stop(self) -> None:
        self._stopping = True
        self._wakeup.set()
        if self._syncer is not None:
            self._syncer.join(timeout=5)


def _settle(futures: list[asyncio.Future[None]], failure: BaseException | None) -> None:
    for future in futures:
        if future.done():
            continue
        if failure is None:
            future.set_result(None)
        else:
            future.set_exception(StoreFailed(f"fsync failed: {failure}"))
