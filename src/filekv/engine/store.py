"""The Store: a log-structured hash table (after Bitcask) with durable, atomic writes.

Writes append one record to the newest segment file and then update the in-memory indexes;
reads find the value's location in memory and ``pread`` it from the file. See README
"Reading the source" for a walk through ``open``, ``put`` and ``commit``.

The Store is the thin public face: it owns the lock, the options and the closed flag, and
composes the owners of everything else, each in its own module::

    Store ── lock, options, closed; waits for durability outside the lock
      ├── Writer         (writer.py)     revision, transaction slot, key/value limits, appends
      ├── SegmentSet     (segments.py)   segment files, active segment, rotation, live bytes
      ├── KeyIndex       (index.py)      key -> location, key order, value hash -> keys
      ├── GroupCommit    (durability.py) fsync rounds that writers wait on (+ IntervalFlusher)
      ├── Compactor      (compaction.py) merging sealed segments, in the background
      ├── ChangeFeed     (changes.py)    recent changes for watchers (older: history.py)
      └── recover()      (recovery.py)   fills SegmentSet and KeyIndex at open
    Transaction (transaction.py) stages writes and reaches the Store through TransactionHost.

Concurrency: one lock (``_lock``) guards the indexes, the segment table and the write position.
It is held for microseconds: never across an fsync (group commit waits outside it) and only in
short batches by compaction. Reads take it too, so compaction cannot close a file under a pread.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

from .batch import BatchOp, Delete, Put
from .changes import Change, ChangeFeed
from .compaction import Compactor
from .durability import GroupCommit, IntervalFlusher
from .entry import Entry
from .errors import StoreFailed
from .expiry import SWEEP_BATCH, ExpirySweeper, check_ttl
from .fileio import FileIO
from .index import KeyIndex
from .maintenance import StoreMaintenance
from .options import FSYNC_MODES, FsyncMode, StoreOptions
from .overlay_folder import OverlayFolder
from .reads import StoreReads
from .record import EXPIRY, OPERATION_HEADER, RECORD_HEADER_SIZE
from .recovery import open_directory
from .segments import SegmentSet
from .transaction import ExpiringValue, Transaction
from .writer import Writer

__all__ = ["FSYNC_MODES", "Entry", "FsyncMode", "Store", "StoreOptions"]

log = logging.getLogger(__name__)

# Value bytes above which ``abatch`` encodes in a thread, not on the loop (~1 ms per MiB).
ASYNC_INLINE_BATCH_BYTES: Final = 64 << 10
# A record's bytes beyond its key and value, at most (a put that expires), and a key of n
# characters takes at most 4n bytes of UTF-8: the bounds ``SegmentSet.rotation_due`` is asked.
_PUT_BOUND: Final = RECORD_HEADER_SIZE + OPERATION_HEADER.size + EXPIRY.size


def _chars(key: object) -> int:
    return len(key) if type(key) is str else 0  # any other key is refused before any write


def _size(value: object) -> int:
    if type(value) is bytes:
        return len(value)
    # A bytearray or memoryview is copied into bytes of this size; anything else is refused.
    return memoryview(value).nbytes if isinstance(value, bytearray | memoryview) else 0


class Store(StoreReads, StoreMaintenance):
    """An open data directory. Build one with ``Store.open``; it is thread-safe.

    The reads (``get``, ``entry``, ``find``, ``scan``, ``snapshot``, ``len``, ``in``) are
    defined in ``reads.py``, the upkeep (``compact``, ``backup``, ``stats``, ``observe``,
    ``check``) in ``maintenance.py``; opening, writing, transactions and watching here.
    """

    def __init__(
        self,
        path: Path,
        io: FileIO,
        options: StoreOptions,
        clock: Callable[[], float] = time.time,
    ) -> None:
        # Private: Store.open validates, locks the directory and recovers before returning.
        self._path = path
        self._options = options
        self._clock = clock
        self._fsync_always = options.fsync == "always"

        self._lock = threading.Lock()
        self._index = KeyIndex()
        self._segments = SegmentSet(
            path,
            io,
            segment_bytes=options.segment_bytes,
            active_hint_bytes=options.active_hint_bytes,
            make_durable=lambda seq: self._group.wait(seq),
            on_sealed=lambda seq: self._group.mark_synced(seq),
        )
        self._group = GroupCommit(self._segments.sync_point, io.fsync)
        self._feed = ChangeFeed(self._lock, self._segments, max_bytes=options.watch_buffer_bytes)
        self._writer = Writer(
            self._lock,
            self._segments,
            self._index,
            max_key_bytes=options.max_key_bytes,
            max_value_bytes=options.max_value_bytes,
            max_transaction_ops=options.max_transaction_ops,
            max_transaction_bytes=options.max_transaction_bytes,
            group=self._group,
            maybe_compact=self._upkeep,
            clock=clock,
            feed=self._feed,
        )
        self._compactor = Compactor(
            self._lock,
            self._segments,
            self._index,
            is_closed=lambda: self._closed,
            revision=lambda: self._writer.revision,
            wait_for_round=self._group.wait_for_round,
            min_bytes=options.compact_min_bytes,
            dead_ratio=options.compact_dead_ratio,
            automatic=options.auto_compact,
            keep_revisions=options.watch_history,
        )
        self._folder = OverlayFolder(self._lock, self._index, is_closed=lambda: self._closed)
        self._closed = False
        self._flusher: IntervalFlusher | None = None
        self._sweeper: ExpirySweeper | None = None

    # ------------------------------------------------------------------ opening and closing

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        options: StoreOptions | None = None,
        *,
        io: FileIO | None = None,
        should_stop: Callable[[], bool] | None = None,
        clock: Callable[[], float] | None = None,
        **changes: Any,
    ) -> Store:
        """Open (creating if needed) the store in ``path``; recover what a crash left behind.

        ``options`` (default: ``StoreOptions()``, whose fields say what each means) with any
        field given as a keyword replacing it: ``Store.open(path, fsync="never")`` (TypeError
        for a name that is no field). ``clock`` (default ``time.time``): what expiries are
        compared with (tests pass a fake one).
        """
        if options is None:
            options = StoreOptions(**changes)
        elif changes:
            options = replace(options, **changes)
        store = cls(Path(path), io or FileIO(), options, clock or time.time)
        recovered = open_directory(store._segments, store._index, should_stop)
        store._index.merge_in_background()
        store._writer.recovered(recovered.revision)
        store._feed.start(recovered.revision)
        store._compactor.last_compaction = recovered.last_compaction
        if options.fsync == "interval":
            segments = store._segments
            store._flusher = IntervalFlusher(
                options.fsync_interval_ms / 1000,
                store._group,
                pending=lambda: segments.write_seq > store._group.synced,
                can_sync=lambda: segments.failure is None,
                on_failure=segments.fail,
            )
        if options.expiry_sweep_seconds > 0:
            store._sweeper = ExpirySweeper(
                store.sweep_expired, options.expiry_sweep_seconds, store._expiry_lag
            )
        return store

    def close(self) -> None:
        """Flush and fsync everything, stop background work and release the directory."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._writer.close()
            self._feed.close()  # a watcher waiting for changes hears StoreClosed
        if self._flusher is not None:
            self._flusher.stop()
        if self._sweeper is not None:
            self._sweeper.stop()
        self._compactor.wait_idle()
        self._folder.stop()
        self._index.stop_background()
        self._group.wait_for_round()  # nobody may be syncing a file we are about to close
        active = self._segments.active
        try:
            if self._segments.failure is None:
                self._segments.sync_active()  # a writer still parked is durable; then its hint
        except OSError as error:
            raise StoreFailed(
                f"the final fsync of {active.path if active else 'the store'} failed: "
                f"{error.strerror or error}; "
                "writes since the last successful fsync may be lost"
            ) from error
        finally:
            self._group.stop()
            self._segments.release()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        segments = getattr(self, "_segments", None)
        if not getattr(self, "_closed", True) and segments is not None and segments.holds_lock:
            log.warning("Store for %s was not closed", self._path)

    # ------------------------------------------------------------------ properties

    @property
    def path(self) -> Path:
        return self._path

    @property
    def options(self) -> StoreOptions:
        """The options the store was opened with (frozen): limits, fsync mode, thresholds."""
        return self._options

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def revision(self) -> int:
        return self._writer.revision

    @property
    def in_transaction(self) -> bool:
        return self._writer.transaction is not None

    # ------------------------------------------------------------------ validation

    def encode_key(self, key: str) -> bytes:
        """The key's UTF-8 bytes; InvalidKey if it is not a non-empty str within the limit."""
        return self._writer.encode_key(key)

    def check_value(self, value: bytes) -> bytes:
        """``value`` as bytes; TypeError or ValueTooLarge if it cannot be stored."""
        return self._writer.check_value(value)

    # ------------------------------------------------------------------ writes

    def put(
        self, key: str, value: bytes, *, expect: int | None = None, ttl: float | None = None
    ) -> int:
        """Store ``value`` under ``key``; return the new revision once durable (per fsync mode).

        ``expect``: None writes unconditionally; 0 requires the key to be absent; any other number
        requires it to be the key's current revision. Otherwise VersionMismatch.
        ``ttl``: seconds until the key expires (InvalidTTL unless in (0, ten years]); None: it
        never does, and an earlier expiry of the key ends (as Redis SET does).
        """
        expires_at = None if ttl is None else self._clock() + check_ttl(ttl)
        seq, revision = self._writer.append_put(key, value, expect, expires_at)
        if self._fsync_always:
            self._group.wait(seq)
        return revision

    async def aput(
        self, key: str, value: bytes, *, expect: int | None = None, ttl: float | None = None
    ) -> int:
        """``put`` for asyncio: the fsync wait happens off the event loop, shared with others."""
        if self._segments.rotation_due(_PUT_BOUND + _chars(key) * 4 + _size(value)):
            return await asyncio.to_thread(self.put, key, value, expect=expect, ttl=ttl)
        expires_at = None if ttl is None else self._clock() + check_ttl(ttl)
        seq, revision = self._writer.append_put(key, value, expect, expires_at)
        if self._fsync_always:
            await self._group.wait_async(seq)
        return revision

    def delete(self, key: str, *, expect: int | None = None) -> bool:
        """Remove ``key``; True if it existed. ``expect`` as for ``put``."""
        seq = self._writer.append_delete(key, expect)
        if seq and self._fsync_always:
            self._group.wait(seq)
        return bool(seq)

    async def adelete(self, key: str, *, expect: int | None = None) -> bool:
        if self._segments.rotation_due(_PUT_BOUND + _chars(key) * 4):
            return await asyncio.to_thread(self.delete, key, expect=expect)
        seq = self._writer.append_delete(key, expect)
        if seq and self._fsync_always:
            await self._group.wait_async(seq)
        return bool(seq)

    def batch(self, ops: Sequence[BatchOp]) -> int:
        """Apply ``Put``/``Delete`` operations atomically, as one record at one new revision.

        The new revision once durable (per fsync mode); the current one if nothing had to be
        written. ``batch.py`` says what ``expect`` is compared with and what is refused.
        """
        seq, revision = self._writer.append_batch(ops)
        self.wait_durable(seq)
        return revision

    async def abatch(self, ops: Sequence[BatchOp]) -> int:
        """``batch`` for asyncio: the fsync wait (and a large batch's encoding) off the loop."""
        payload = sum(_size(op.value) for op in ops if isinstance(op, Put))
        keys = sum(_chars(op.key) for op in ops if isinstance(op, (Put, Delete)))
        bound = RECORD_HEADER_SIZE + len(ops) * _PUT_BOUND + keys * 4 + payload
        if payload > ASYNC_INLINE_BATCH_BYTES or self._segments.rotation_due(bound):
            return await asyncio.to_thread(self.batch, ops)
        seq, revision = self._writer.append_batch(ops)
        await self.wait_durable_async(seq)
        return revision

    # ------------------------------------------------------------------ durability

    def sync(self) -> None:
        """Make every write so far durable, whatever the fsync mode."""
        with self._lock:
            self._check_open()
        self._group.sync_now()

    def _expiry_lag(self) -> float:
        """Seconds since the oldest expiry still held fell due (0 if none has)."""
        with self._lock:
            oldest = self._index.next_expiry()
            return 0.0 if oldest is None else max(0.0, self._clock() - oldest)

    def sweep_expired(self, limit: int = SWEEP_BATCH) -> int:
        """Write the deletion of up to ``limit`` expired keys (an ``expire`` record each, at its
        own revision), durable per the fsync mode; return how many were written.

        The background sweeper calls this every ``expiry_sweep_seconds``; keys the open
        transaction has staged are left for a later sweep.
        """
        with self._lock:
            self._check_open()
            keys = self._index.expired_keys(self._clock(), limit)
            tx = self._writer.transaction
        if not keys:
            return 0
        skip = tx.touches if tx is not None else _never
        seq, written = self._writer.append_expires(keys, skip)
        self.wait_durable(seq)
        return written

    # ------------------------------------------------------------------ watching

    def changes(self, after: int | None = None, *, wait: bool = True) -> Iterator[Change]:
        """Every committed change after revision ``after`` (None: from now), in revision order,
        then, with ``wait``, each new one as it is committed; StoreClosed once the store closes.

        A batch or a transaction's commit yields all its operations under its one revision;
        staged writes never appear. ``Compacted`` (with ``oldest_available``) if compaction has
        dropped some of the changes asked for (it keeps the newest ``watch_history``
        revisions). The newest changes come from memory, older ones from the files (``changes.py``).
        """
        with self._lock:
            self._check_open()
            start = self._writer.revision if after is None else after
            self._feed.check_available(start)
        return self._feed.iterate(start, wait=wait, is_closed=lambda: self._closed)

    def achanges(self, after: int | None = None, *, wait: bool = True) -> AsyncIterator[Change]:
        """``changes`` for asyncio: ``async for change in store.achanges(after=rev)``. Waiting
        never blocks the event loop; history is read from the files in a worker thread."""
        with self._lock:
            self._check_open()
            start = self._writer.revision if after is None else after
            self._feed.check_available(start)
        return self._feed.aiterate(start, wait=wait, is_closed=lambda: self._closed)

    def achange_chunks(
        self, after: int | None = None, *, wait: bool = True
    ) -> AsyncIterator[list[Change]]:
        """``achanges`` a list at a time, each list holding whole revisions (a commit is never
        split across two), for a consumer that must know where a revision ends."""
        with self._lock:
            self._check_open()
            start = self._writer.revision if after is None else after
            self._feed.check_available(start)
        return self._feed.achunks(start, wait=wait, is_closed=lambda: self._closed)

    @property
    def oldest_revision(self) -> int:
        """The oldest revision the change feed can still deliver (``changes(after=it - 1)``)."""
        with self._lock:
            return self._feed.oldest_available()

    # ------------------------------------------------------------------ transactions

    def transaction(self) -> Transaction:
        """Open the write transaction; until it ends, other writes get TransactionActive."""
        with self._lock:
            tx = Transaction(self)
            self._writer.begin(tx)
        return tx

    # For Transaction alone (its TransactionHost protocol): not for applications.

    def commit_transaction(
        self, tx: Transaction, staged: dict[str, bytes | None]
    ) -> tuple[int, int]:
        """Write a transaction's staged writes as one record; return (sequence number, count)."""
        expiries = {
            key: value.expires_at for key, value in staged.items() if type(value) is ExpiringValue
        }
        return self._writer.commit(tx, staged, expiries)

    def now(self) -> float:
        """The store's clock (UNIX seconds): what expiries are compared with."""
        return self._clock()

    def end_transaction(self, tx: Transaction) -> None:
        self._writer.end(tx)

    def wait_durable(self, seq: int) -> None:
        if seq and self._fsync_always:
            self._group.wait(seq)

    async def wait_durable_async(self, seq: int) -> None:
        if seq and self._fsync_always:
            await self._group.wait_async(seq)


def _never(key: str) -> bool:
    return False
