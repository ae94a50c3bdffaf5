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
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

from .backup import take_backup
from .batch import BatchOp, Put
from .compaction import Compactor
from .durability import GroupCommit, IntervalFlusher, RoundObserver
from .entry import Entry
from .errors import StoreClosed, StoreFailed
from .fileio import FileIO
from .hint import LENGTH_MASK, LENGTH_SHIFT, REVISION_MASK, REVISION_SHIFT
from .index import KeyIndex
from .options import FSYNC_MODES, FsyncMode, StoreOptions
from .record import value_hash
from .recovery import open_directory
from .segments import SegmentSet
from .snapshot import Snapshot
from .stats import StoreStats
from .transaction import Transaction
from .writer import Writer

__all__ = ["FSYNC_MODES", "Entry", "FsyncMode", "Store", "StoreOptions"]

log = logging.getLogger(__name__)

CLOSED: Final = "the store is closed"
# Value bytes above which ``abatch`` encodes in a thread, not on the loop (~1 ms per MiB).
ASYNC_INLINE_BATCH_BYTES: Final = 64 << 10


class Store:
    """An open data directory. Build one with ``Store.open``; it is thread-safe."""

    def __init__(self, path: Path, io: FileIO, options: StoreOptions) -> None:
        # Private: Store.open validates, locks the directory and recovers before returning.
        self._path = path
        self._options = options
        self._fsync_always = options.fsync == "always"

        self._lock = threading.Lock()
        self._index = KeyIndex()
        self._segments = SegmentSet(
            path,
            io,
            segment_bytes=options.segment_bytes,
            rotation_margin=options.max_value_bytes + options.max_key_bytes + 64,
            on_sealed=lambda seq: self._group.mark_synced(seq),
        )
        self._group = GroupCommit(self._segments.sync_point, io.fsync)
        self._writer = Writer(
            self._lock,
            self._segments,
            self._index,
            max_key_bytes=options.max_key_bytes,
            max_value_bytes=options.max_value_bytes,
            max_transaction_ops=options.max_transaction_ops,
            max_transaction_bytes=options.max_transaction_bytes,
            group=self._group,
            maybe_compact=lambda: self._compactor.maybe_start(),
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
        )
        self._closed = False
        self._flusher: IntervalFlusher | None = None

    # ------------------------------------------------------------------ opening and closing

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        options: StoreOptions | None = None,
        *,
        io: FileIO | None = None,
        should_stop: Callable[[], bool] | None = None,
        fsync: FsyncMode | None = None,
        fsync_interval_ms: int | None = None,
        max_key_bytes: int | None = None,
        max_value_bytes: int | None = None,
        segment_bytes: int | None = None,
        compact_min_bytes: int | None = None,
        compact_dead_ratio: float | None = None,
        auto_compact: bool | None = None,
        max_transaction_bytes: int | None = None,
        max_transaction_ops: int | None = None,
    ) -> Store:
        """Open (creating if needed) the store in ``path``; recover what a crash left behind.

        ``options`` (default: ``StoreOptions()``, whose fields say what each means) with any
        keyword given here replacing its field: ``Store.open(path, fsync="never")``.
        """
        changes: dict[str, Any] = {
            name: value
            for name, value in (
                ("fsync", fsync),
                ("fsync_interval_ms", fsync_interval_ms),
                ("max_key_bytes", max_key_bytes),
                ("max_value_bytes", max_value_bytes),
                ("segment_bytes", segment_bytes),
                ("compact_min_bytes", compact_min_bytes),
                ("compact_dead_ratio", compact_dead_ratio),
                ("auto_compact", auto_compact),
                ("max_transaction_bytes", max_transaction_bytes),
                ("max_transaction_ops", max_transaction_ops),
            )
            if value is not None
        }
        if options is None:
            options = StoreOptions(**changes)
        elif changes:
            options = replace(options, **changes)
        store = cls(Path(path), io or FileIO(), options)
        recovered = open_directory(store._segments, store._index, should_stop)
        store._writer.recovered(recovered.revision)
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
        return store

    def close(self) -> None:
        """Flush and fsync everything, stop background work and release the directory."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._writer.close()
        if self._flusher is not None:
            self._flusher.stop()
        self._compactor.wait_idle()
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

    def _check_open(self) -> None:
        """StoreClosed once the store is closed: the guard every public call runs first.

        ``get``, ``entry`` and ``find`` write out these two lines instead of calling it, as they
        write out hint.py's location accessors: each call costs ~20 ns, 2 % of a get.
        """
        if self._closed:
            raise StoreClosed(CLOSED)

    @property
    def revision(self) -> int:
        return self._writer.revision

    @property
    def in_transaction(self) -> bool:
        return self._writer.transaction is not None

    def __len__(self) -> int:
        self._check_open()
        return len(self._index)

    def __contains__(self, key: object) -> bool:
        self._check_open()
        return key in self._index.locations

    # ------------------------------------------------------------------ validation

    def encode_key(self, key: str) -> bytes:
        """The key's UTF-8 bytes; InvalidKey if it is not a non-empty str within the limit."""
        return self._writer.encode_key(key)

    def check_value(self, value: bytes) -> bytes:
        """``value`` as bytes; TypeError or ValueTooLarge if it cannot be stored."""
        return self._writer.check_value(value)

    # ------------------------------------------------------------------ writes

    def put(self, key: str, value: bytes, *, expect: int | None = None) -> int:
        """Store ``value`` under ``key``; return the new revision once durable (per fsync mode).

        ``expect``: None writes unconditionally; 0 requires the key to be absent; any other number
        requires it to be the key's current revision. Otherwise VersionMismatch.
        """
        seq, revision = self._writer.append_put(key, value, expect)
        if self._fsync_always:
            self._group.wait(seq)
        return revision

    async def aput(self, key: str, value: bytes, *, expect: int | None = None) -> int:
        """``put`` for asyncio: the fsync wait happens off the event loop, shared with others."""
        if self._segments.rotation_due():
            return await asyncio.to_thread(self.put, key, value, expect=expect)
        seq, revision = self._writer.append_put(key, value, expect)
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
        if self._segments.rotation_due():
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
        payload = sum(len(op.value) for op in ops if isinstance(op, Put))
        if payload > ASYNC_INLINE_BATCH_BYTES or self._segments.rotation_due():
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

    # ------------------------------------------------------------------ reads

    def get(self, key: str) -> bytes | None:
        """The value of ``key``, or None."""
        with self._lock:
            if self._closed:  # _check_open, inlined on the hot path
                raise StoreClosed(CLOSED)
            location = self._index.locations.get(key)
            if location is None:
                return None
            return self._segments.read_value(location)

    def entry(self, key: str) -> Entry | None:
        """The key, its value and its revision, or None."""
        with self._lock:
            if self._closed:  # _check_open, inlined on the hot path
                raise StoreClosed(CLOSED)
            location = self._index.locations.get(key)
            if location is None:
                return None
            value = self._segments.read_value(location)
        return Entry(key, value, (location >> REVISION_SHIFT) & REVISION_MASK)  # revision_of

    def find(
        self,
        value: bytes,
        *,
        prefix: str = "",
        after: str | None = None,
        limit: int | None = None,
    ) -> list[str]:
        """Sorted keys whose value equals ``value`` (and start with ``prefix``), after ``after``.

        Costs O(matches): the value index gives the candidates, equal hashes are verified.
        """
        hashed = value_hash(value)
        length = len(value)
        found: list[str] = []
        if limit is not None and limit <= 0:
            return found
        with self._lock:
            if self._closed:  # _check_open, inlined on the hot path
                raise StoreClosed(CLOSED)
            for key, location in self._index.candidates(hashed):
                if (after is not None and key <= after) or not key.startswith(prefix):
                    continue
                if (location >> LENGTH_SHIFT) & LENGTH_MASK != length:  # length_of
                    continue
                if self._segments.read_value(location) != value:
                    continue  # a hash collision
                found.append(key)
                if limit is not None and len(found) >= limit:
                    break
        return found

    def scan(
        self, prefix: str = "", *, after: str | None = None, limit: int | None = None
    ) -> list[str]:
        """Sorted keys starting with ``prefix``, strictly after ``after``: O(log n + results)."""
        with self._lock:
            self._check_open()
            return list(islice(self._index.keys_from(prefix, after), limit))

    def snapshot(self, prefix: str = "") -> Snapshot:
        """The keys starting with ``prefix`` as they are now, to read in key order while writes
        and compactions go on: ``with store.snapshot("user/") as snap:`` then ``snap.revision``
        and ``for key, value, revision in snap``. Close it (the ``with``) to unpin its segment
        files; ``snapshot.py`` says what it costs.
        """
        with self._lock:
            self._check_open()
            segments = self._segments
            return Snapshot.take(
                self._index,
                segments.all(),
                segments.pins,
                segments.io,
                revision=self._writer.revision,
                prefix=prefix,
            )

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
        return self._writer.commit(tx, staged)

    def end_transaction(self, tx: Transaction) -> None:
        self._writer.end(tx)

    def wait_durable(self, seq: int) -> None:
        if seq and self._fsync_always:
            self._group.wait(seq)

    async def wait_durable_async(self, seq: int) -> None:
        if seq and self._fsync_always:
            await self._group.wait_async(seq)

    # ------------------------------------------------------------------ compaction and stats

    def compact(self) -> bool:
        """Merge every sealed segment into one, now; False if there was nothing to merge."""
        with self._lock:
            self._check_open()
        return self._compactor.compact()

    def backup(self, dest_dir: str | os.PathLike[str]) -> dict[str, int]:
        """Write a copy of the store as of one revision into ``dest_dir`` (new or empty) while
        writes go on: ``{"revision", "keys", "files", "bytes"}``. The copy is a store that
        ``Store.open`` accepts, every record checksum verified; ``backup.py`` says how."""
        self._check_open()
        return take_backup(
            self._lock,
            self._segments,
            is_closed=lambda: self._closed,
            revision=lambda: self._writer.revision,
            keys=lambda: len(self._index),
            destination=Path(dest_dir),
        ).as_dict()

    def stats(self) -> StoreStats:
        """A snapshot of the store's counts and sizes (``StoreStats`` says what each means)."""
        with self._lock:
            segments = self._segments
            compactor = self._compactor
            last_compaction = compactor.last_compaction
            return StoreStats(
                keys=len(self._index),
                disk_bytes=segments.disk_bytes(),
                live_bytes=segments.live_bytes,
                segments=segments.count,
                fsync=self._options.fsync,
                last_compaction=(
                    datetime.fromtimestamp(last_compaction, UTC).isoformat()
                    if last_compaction is not None
                    else None
                ),
                recovered_truncations=segments.truncations,
                revision=self._writer.revision,
                compactions=compactor.compactions,
                compacting=compactor.busy,
                in_transaction=self._writer.transaction is not None,
            )

    def observe(
        self,
        *,
        fsync: RoundObserver | None = None,
        compaction: Callable[[float], None] | None = None,
    ) -> None:
        """Watch the store's background work (for metrics); None stops watching.

        ``fsync(seconds, records)`` after every successful group-commit round: how long the fsync
        took and how many records it made durable. ``compaction(seconds)`` after every finished
        compaction. Both are called in the thread that did the work, after it is done, so they
        must be quick and must not block; an exception they raise is logged and ignored.
        Unwatched, the store does no timing at all.
        """
        self._group.observer = fsync
        self._compactor.observer = compaction

    def check(self) -> None:
        """Verify that every index agrees with the others and with the files; raise if not."""
        with self._lock:
            self._index.check()
            self._segments.check_values(self._index.locations.items())
