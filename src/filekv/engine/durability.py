"""Group commit: many writers waiting for durability share one fsync.

Writers append their record (a page-cache write, microseconds) and get a sequence number. To be
durable they then call ``wait(seq)``:

- A writer that finds nobody syncing fsyncs by itself (the *leader*) and returns: a lone writer
  pays one fsync and no thread hand-off.
- A writer that finds a round running parks on its own bare lock. When a round ends, only the
  writers it covered are woken. If others are still parked, the leader hands the work to the
  *syncer* thread, which runs back-to-back rounds, each covering everything appended while the
  previous one ran, until nobody is waiting. 32 threads waiting therefore cost a handful of
  fsyncs, not 32, and no woken writer has to queue for a shared lock or elect a leader.

Under CPython every park and wake-up is a hand-off of the GIL between threads (about 20 µs across
cores on the 2-core machines we measure on); waking exactly the writers that are done, once each,
is what keeps that cost down. Asyncio callers use ``await wait_async(seq)``: their futures are
resolved by the syncer thread too, so the event loop never runs an fsync.

Owns the fsync rounds: what is synced so far, who is parked, the syncer thread, and a failed
round's error. It asks the ``SegmentSet`` (through ``sync_point``) what to sync.
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

# Returns (highest appended sequence number, descriptor of the file holding every record up to it
# that is not yet synced). It must not take the store's lock: writers append while a round runs.
SyncPoint = Callable[[], tuple[int, int]]
# Told of every successful round: (seconds the fsync took, records it made durable). Metrics.
RoundObserver = Callable[[float, int], None]


class GroupCommit:
    def __init__(self, sync_point: SyncPoint, fsync: Callable[[int], None]) -> None:
        self._sync_point = sync_point
        self._fsync = fsync
        self._mutex = threading.Lock()
        self._round_ended = threading.Condition(self._mutex)
        self._synced = 0
        self._busy = False  # a leader or the syncer owns the rounds: one round at a time
        self._syncer_owns = False  # the syncer thread is the owner (handed over with _busy)
        self._in_round = False  # an fsync is running right now
        self._failure: BaseException | None = None
        self._parked: list[tuple[int, LockType]] = []
        self._async_waiters: list[tuple[int, asyncio.Future[None], asyncio.AbstractEventLoop]] = []
        self._wakeup = threading.Event()
        self._syncer: threading.Thread | None = None
        self._stopping = False
        # Set by whoever wants to watch the rounds (the service's metrics); None costs nothing.
        self.observer: RoundObserver | None = None

    @property
    def synced(self) -> int:
        return self._synced

    @property
    def failure(self) -> BaseException | None:
        return self._failure

    def mark_synced(self, seq: int) -> None:
        """Record that everything up to ``seq`` is durable (e.g. after a segment was sealed)."""
        with self._mutex:
            if seq > self._synced:
                self._synced = seq
            self._release_covered()
        if self._async_waiters:
            self._resolve_async()

    def wait(self, seq: int) -> None:
        """Return once everything up to ``seq`` is on disk; raise StoreFailed if fsync failed."""
        with self._mutex:
            if self._synced >= seq:
                return
            if self._failure is not None:
                raise StoreFailed(f"fsync failed earlier: {self._failure}")
            if self._busy:
                # A bare lock per waiter, released only once this writer is covered (or the
                # store failed): a woken writer never queues for a shared lock again.
                parked = _allocate_lock()
                parked.acquire()
                self._parked.append((seq, parked))
            else:
                self._busy = True
                parked = None
        if parked is not None:
            parked.acquire()
            if self._synced < seq:
                raise StoreFailed(f"the write was not made durable: {self._failure}")
            return
        self._run_round()
        with self._mutex:
            if self._parked or self._async_waiters:
                self._start_syncer()  # keeps _busy: the syncer owns the rounds from here
            else:
                self._busy = False
        if self._synced < seq:
            raise StoreFailed(f"the write was not made durable: {self._failure}")

    def _run_round(self) -> None:
        """fsync everything appended so far; wake whoever that covered. Needs ``_busy`` owned."""
        with self._mutex:
            # Before reading the sync point: wait_for_round() must also cover a round that has
            # picked its descriptor but not yet called fsync on it.
            self._in_round = True
        observer = self.observer
        started = time.perf_counter() if observer is not None else 0.0
        try:
            target, fd = self._sync_point()
            self._fsync(fd)
        except BaseException as error:
            log.error("fsync failed; the store refuses writes until reopened: %s", error)
            with self._mutex:
                self._failure = error
                self._in_round = False
                self._release_all()
                self._round_ended.notify_all()
            self._resolve_async()
            return
        elapsed = time.perf_counter() - started if observer is not None else 0.0
        with self._mutex:
            self._in_round = False
            covered = target - self._synced
            if target > self._synced:
                self._synced = target
            self._release_covered()
            self._round_ended.notify_all()
        if self._async_waiters:  # unlocked peek: the syncer resolves any it misses
            self._resolve_async()
        if observer is not None:
            _notify(observer, elapsed, max(0, covered))

    def _release_covered(self) -> None:
        # Called holding _mutex.
        if not self._parked:
            return
        synced = self._synced
        waiting = []
        for seq, parked in self._parked:
            if seq <= synced:
                parked.release()
            else:
                waiting.append((seq, parked))
        self._parked = waiting

    def _release_all(self) -> None:
        # Called holding _mutex, after a failure: every waiter wakes and raises.
        for _, parked in self._parked:
            parked.release()
        self._parked = []

    def wait_for_round(self) -> None:
        """Wait until no fsync is running (so a file it may be syncing can be closed)."""
        with self._mutex:
            while self._in_round:
                self._round_ended.wait()

    def sync_now(self) -> None:
        """Make everything appended so far durable (interval flusher, close)."""
        target, _ = self._sync_point()
        self.wait(target)

    async def wait_async(self, seq: int) -> None:
        if self._synced >= seq:
            return
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._mutex:
            if self._failure is not None:
                raise StoreFailed(f"fsync failed earlier: {self._failure}")
            self._async_waiters.append((seq, future, loop))
            if not self._busy:
                self._busy = True
                self._start_syncer()
        await future

    def _start_syncer(self) -> None:
        # Called holding _mutex by the owner of _busy: the syncer takes over the rounds.
        self._syncer_owns = True
        if self._syncer is None or not self._syncer.is_alive():
            self._syncer = threading.Thread(
                target=self._run_syncer, name="filekv-group-commit", daemon=True
            )
            self._syncer.start()
        self._wakeup.set()

    def _run_syncer(self) -> None:
        while not self._stopping:
            self._wakeup.wait()
            self._wakeup.clear()
            while True:
                with self._mutex:
                    if not self._syncer_owns:
                        break  # a stale wake-up: a leader may own the rounds now
                    synced = self._synced
                    waiting = (
                        not self._stopping
                        and self._failure is None
                        and (
                            any(seq > synced for seq, _ in self._parked)
                            or any(seq > synced for seq, _, _ in self._async_waiters)
                        )
                    )
                    if not waiting:
                        self._syncer_owns = False
                        self._busy = False
                        break
                self._run_round()
            self._resolve_async()

    def _resolve_async(self) -> None:
        with self._mutex:
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
        """Stop the syncer; writers still parked are told the store failed (closed under them)."""
        self._stopping = True
        self._wakeup.set()
        if self._syncer is not None:
            self._syncer.join(timeout=5)
        with self._mutex:
            if self._parked and self._failure is None:
                self._failure = StoreFailed("the store was closed before the write was synced")
            self._release_all()
        self._resolve_async()


def _notify(observer: RoundObserver, seconds: float, records: int) -> None:
    # After the waiters were woken: a slow or broken observer never delays nor fails a write.
    try:
        observer(seconds, records)
    except Exception:
        log.exception("the fsync round observer failed")


def _settle(futures: list[asyncio.Future[None]], failure: BaseException | None) -> None:
    for future in futures:
        if future.done():
            continue
        if failure is None:
            future.set_result(None)
        else:
            future.set_exception(StoreFailed(f"fsync failed: {failure}"))


class IntervalFlusher:
    """``fsync="interval"``: a thread that runs a group-commit round every ``interval`` seconds
    while writes are ``pending``. A failed round is handed to ``on_failure`` and ends it."""

    def __init__(
        self,
        interval: float,
        group: GroupCommit,
        *,
        pending: Callable[[], bool],
        can_sync: Callable[[], bool],
        on_failure: Callable[[BaseException], None],
    ) -> None:
        self._interval = interval
        self._group = group
        self._pending = pending
        self._can_sync = can_sync
        self._on_failure = on_failure
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="filekv-fsync-interval", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            if self._pending() and self._can_sync():
                try:
                    self._group.sync_now()
                except Exception as error:  # logged by GroupCommit; writes now refuse
                    self._on_failure(error)
                    return

    def stop(self) -> None:
        """Stop the thread and wait for it."""
        self._stop.set()
        self._thread.join()
