"""The change feed: every committed change, in revision order, for watchers.

``Store.changes(after=rev)`` yields a ``Change`` for every committed change after ``rev`` (a
batch or a transaction's commit: all its operations under its one revision), then waits for new
ones; ``Store.achanges`` is the same for asyncio. Staged writes never appear: the Writer
publishes a commit's operations when it writes the commit's record.

Where changes come from::

    Writer ── publish(), under the store lock, after each record is written
      └─> ring buffer (the newest changes, at most ``watch_buffer_bytes``)  ── live watchers
    segment files (history.py)  ── a watcher further behind than the buffer reaches
    Compacted(oldest_available)  ── asked for revisions compaction has dropped

The buffer is a list with a moving head (``_head``): appending is a list append of a tuple and
two additions, since it runs on every write; the oldest changes are dropped (their slots set to
None, the list cut once the dead half is large) when the buffer passes its byte budget.
``_floor`` is the revision after which the buffer holds *every* change: dropping a change of
revision r (maybe one of several of r's) raises it to r, so a reader never gets half a commit.

Waiting: the buffer is guarded by the store lock, and a ``threading.Condition`` on that same
lock wakes threads in ``changes``; coroutines in ``achanges`` wait on a future of their own loop,
resolved through ``call_soon_threadsafe`` (one call per loop and publish, and only when someone
waits), so the event loop never blocks on the feed.

Owns the buffer, the floor and the waiters; reads segment files only through ``HistoryReader``.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from bisect import bisect_right
from collections.abc import AsyncIterator, Callable, Iterator
from operator import itemgetter
from typing import TYPE_CHECKING, Final, NamedTuple

from .errors import Compacted, StoreClosed
from .history import HistoryReader, RawChange, history_start, plain_segments

if TYPE_CHECKING:
    from .segments import SegmentSet

CHANGE_COST: Final = 128  # bytes a buffered change takes beyond its key and value (tuple, refs)
READ_CHUNK: Final = 1024  # changes handed out per look at the buffer (whole revisions: maybe more)
_CUT_AT: Final = 4096  # dropped slots before the list is cut (when they are its larger half)

_revision_of = itemgetter(0)


class Change(NamedTuple):
    """One committed change. ``op``: "put", "delete" or "expire" (the TTL sweeper's delete);
    ``value`` None unless a put; ``expires_at`` a put's expiry (UNIX seconds) or None."""

    revision: int
    op: str
    key: str
    value: bytes | None
    expires_at: float | None


def _as_change(raw: RawChange) -> Change:
    return tuple.__new__(Change, raw)


class ChangeFeed:
    """The newest changes in memory, the older ones from the files, and who waits for more."""

    def __init__(self, lock: threading.Lock, segments: SegmentSet, *, max_bytes: int) -> None:
        self._lock = lock  # the store's: publish runs under it, readers take it briefly
        self._segments = segments
        self._max_bytes = max_bytes
        self._changes: list[RawChange | None] = []
        self._head = 0  # index of the oldest change still buffered
        self._bytes = 0
        self._floor = 0  # every change after this revision is in the buffer
        self._closed = False
        self._ready = threading.Condition(lock)
        self._sync_waiting = 0
        self._loop_waiters: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}

    # ------------------------------------------------------------------ the writer's side

    def start(self, revision: int) -> None:
        """After recovery: the buffer starts empty, holding every change after ``revision``."""
        self._floor = revision

    def publish(
        self,
        revision: int,
        op: str,
        key: str,
        value: bytes | None,
        expires_at: float | None,
    ) -> None:
        """Add one committed change. Under the store lock, in revision order (hot path)."""
        self._changes.append((revision, op, key, value, expires_at))
        size = self._bytes + CHANGE_COST + len(key)
        if value is not None:
            size += len(value)
        self._bytes = size
        if size > self._max_bytes:
            self._drop_oldest()
        if self._sync_waiting or self._loop_waiters:
            self._wake()

    def publish_many(self, changes: list[RawChange], size: int) -> None:
        """``publish`` for every change of one record (a batch, a commit) in one call: a
        Python call per operation was a tenth of a 100-put batch's time. ``size`` is what
        ``publish`` would have added up for them (``CHANGE_COST`` + key + value, each)."""
        self._changes.extend(changes)
        size += self._bytes
        self._bytes = size
        if size > self._max_bytes:
            self._drop_oldest()
        if self._sync_waiting or self._loop_waiters:
            self._wake()

    def _drop_oldest(self) -> None:
        # Down to 7/8 of the budget, not just under it: a full buffer then drops a run of
        # changes every few hundred writes instead of one on every write.
        changes = self._changes
        head = self._head
        size = self._bytes
        target = self._max_bytes - (self._max_bytes >> 3)
        while size > target and head < len(changes) - 1:
            dropped = changes[head]
            assert dropped is not None
            changes[head] = None
            head += 1
            size -= CHANGE_COST + len(dropped[2]) + (len(dropped[3]) if dropped[3] else 0)
            if dropped[0] > self._floor:
                self._floor = dropped[0]
        if head >= _CUT_AT and head * 2 >= len(changes):
            del changes[:head]
            head = 0
        self._head = head
        self._bytes = size

    def _wake(self) -> None:
        if self._sync_waiting:
            self._ready.notify_all()
        waiters, self._loop_waiters = self._loop_waiters, {}
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        for loop, futures in waiters.items():
            if loop is running:  # a write from a coroutine (aput): no self-pipe write needed
                loop.call_soon(_release, futures)
                continue
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody is left to wake
                loop.call_soon_threadsafe(_release, futures)

    def close(self) -> None:
        """The store is closing: wake every waiter (they raise StoreClosed). Under the lock."""
        self._closed = True
        self._wake()

    # ------------------------------------------------------------------ the readers' side

    @property
    def floor(self) -> int:
        """The revision after which the buffer holds every change."""
        return self._floor

    def oldest_available(self) -> int:
        """The oldest revision that can still be delivered. Under the lock."""
        start = history_start(plain_segments(self._segments.all()))
        base = self._floor if start is None else min(start, self._floor)
        return base + 1

    def _from_buffer(self, after: int) -> list[Change] | None:
        """The buffered changes after ``after`` (whole revisions, about ``READ_CHUNK``), or None
        when the buffer no longer reaches back that far. Under the lock."""
        if after < self._floor:
            return None
        changes = self._changes
        start = bisect_right(changes, after, lo=self._head, key=_revision_of)  # type: ignore[arg-type]
        end = min(start + READ_CHUNK, len(changes))
        if end < len(changes):
            last = changes[end - 1]
            assert last is not None
            while end < len(changes) and changes[end][0] == last[0]:  # type: ignore[index]
                end += 1
        return [tuple.__new__(Change, raw) for raw in changes[start:end]]  # type: ignore[arg-type]

    def _history(self, after: int) -> HistoryReader:
        """A reader of the files from ``after`` to the buffer's floor; Compacted if they no
        longer reach back that far. Under the lock."""
        plain = plain_segments(self._segments.all())
        start = history_start(plain)
        if start is None or after < start:
            oldest = (self._floor if start is None else min(start, self._floor)) + 1
            raise Compacted(after + 1, oldest)
        return HistoryReader(self._segments.io, plain, after=after, upto=self._floor)

    def check_available(self, after: int) -> None:
        """Compacted unless the changes after ``after`` can all be delivered (ValueError for a
        revision below 0). Under the lock."""
        if type(after) is not int or after < 0:
            raise ValueError(f"after must be a revision (an int >= 0), not {after!r}")
        if after < self._floor:
            oldest = self.oldest_available()
            if after + 1 < oldest:
                raise Compacted(after + 1, oldest)

    def iterate(self, after: int, *, wait: bool, is_closed: Callable[[], bool]) -> Iterator[Change]:
        """``Store.changes``: the changes after ``after``, then (``wait``) the new ones."""
        position = after
        reader: HistoryReader | None = None
        try:
            while True:
                if reader is not None:
                    chunk = [_as_change(raw) for raw in reader.next_chunk()]
                    if reader.done:  # every change up to its end is read: the buffer's next
                        position = max(position, reader.upto)
                        reader.close()
                        reader = None
                else:
                    with self._lock:
                        if is_closed() or self._closed:
                            raise StoreClosed("the store is closed")
                        found = self._from_buffer(position)
                        if found is None:
                            reader = self._history(position)
                            continue
                        if not found:
                            if not wait:
                                return
                            self._sync_waiting += 1
                            try:
                                self._ready.wait()
                            finally:
                                self._sync_waiting -= 1
                            continue
                        chunk = found
                yield from chunk
                if chunk:
                    position = chunk[-1].revision
        finally:
            if reader is not None:
                reader.close()

    async def aiterate(
        self, after: int, *, wait: bool, is_closed: Callable[[], bool]
    ) -> AsyncIterator[Change]:
        """``Store.achanges``: as ``iterate``; files are read in a worker thread."""
        async for chunk in self.achunks(after, wait=wait, is_closed=is_closed):
            for change in chunk:
                yield change

    async def achunks(
        self, after: int, *, wait: bool, is_closed: Callable[[], bool]
    ) -> AsyncIterator[list[Change]]:
        """``aiterate`` a list at a time, each list whole revisions (never half a commit)."""
        loop = asyncio.get_running_loop()
        position = after
        reader: HistoryReader | None = None
        try:
            while True:
                future: asyncio.Future[None] | None = None
                if reader is not None:
                    raw = await asyncio.to_thread(reader.next_chunk)
                    chunk = [_as_change(item) for item in raw]
                    if reader.done:
                        position = max(position, reader.upto)
                        reader.close()
                        reader = None
                else:
                    with self._lock:
                        if is_closed() or self._closed:
                            raise StoreClosed("the store is closed")
                        found = self._from_buffer(position)
                        if found is None:
                            reader = self._history(position)
                            continue
                        if not found:
                            if not wait:
                                return
                            future = loop.create_future()
                            self._loop_waiters.setdefault(loop, []).append(future)
                        chunk = found
                if future is not None:
                    try:
                        await future
                    finally:
                        if future.cancelled():  # the watcher went away: leave nothing behind
                            self._forget(loop, future)
                    continue
                if chunk:
                    yield chunk
                    position = max(position, chunk[-1].revision)
        finally:
            if reader is not None:
                reader.close()

    def _forget(self, loop: asyncio.AbstractEventLoop, future: asyncio.Future[None]) -> None:
        with self._lock:
            futures = self._loop_waiters.get(loop)
            if futures is not None and future in futures:
                futures.remove(future)
                if not futures:
                    del self._loop_waiters[loop]


def _release(futures: list[asyncio.Future[None]]) -> None:
    for future in futures:
        if not future.done():
            future.set_result(None)
