"""The Store: a log-structured hash table (after Bitcask) with durable, atomic writes.

Writes append one record to the newest segment file and then update the in-memory indexes;
reads find the value's location in memory and ``pread`` it from the file. See README
"Reading the source" for a walk through ``open``, ``put`` and ``commit``.

Concurrency: one lock (``_lock``) guards the indexes, the segment table and the write position.
It is held for microseconds: never across an fsync (group commit waits outside it) and only in
short batches by compaction. Reads take it too, so compaction cannot close a file under a pread.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import gc
import logging
import os
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Literal, Self

from .durability import GroupCommit
from .errors import (
    CorruptStore,
    DiskFull,
    InvalidKey,
    StorageError,
    StoreClosed,
    StoreFailed,
    StoreLocked,
    TransactionActive,
    TransactionClosed,
    ValueTooLarge,
    VersionMismatch,
)
from .fileio import FileIO
from .index import KeyIndex
from .record import (
    DELETE,
    HASH_MASK,
    LENGTH_MASK,
    LENGTH_SHIFT,
    MAX_BODY,
    MAX_OPERATIONS,
    OFFSET_MASK,
    OFFSET_SHIFT,
    OPERATION_HEADER,
    PUT,
    PUT_VALUE_OFFSET,
    RECORD_HEADER_SIZE,
    REVISION_MASK,
    REVISION_SHIFT,
    SEGMENT_SHIFT,
    Operation,
    encode_body,
    encode_header,
    encode_put,
    encode_record,
    pack,
    put_record_size,
    value_hash,
)
from .recovery import ENTRY_OVERHEAD, recover
from .segment import (
    Segment,
    create_segment,
    segment_name,
)

if TYPE_CHECKING:
    from .transaction import Transaction

log = logging.getLogger(__name__)

FsyncMode = Literal["always", "interval", "never"]
FSYNC_MODES: Final = ("always", "interval", "never")
LOCK_NAME: Final = "LOCK"
COMPACTION_CHECK_EVERY: Final = 1024  # writes between two looks at the compaction thresholds


@dataclass(frozen=True, slots=True)
class Entry:
    """A key's value and the revision that wrote it (None for a transaction's staged value)."""

    key: str
    value: bytes
    revision: int | None


class Store:
    """An open data directory. Build one with ``Store.open``; it is thread-safe."""

    def __init__(
        self,
        path: Path,
        *,
        io: FileIO,
        fsync: FsyncMode,
        fsync_interval_ms: int,
        max_key_bytes: int,
        max_value_bytes: int,
        segment_bytes: int,
        compact_min_bytes: int,
        compact_dead_ratio: float,
        auto_compact: bool,
        max_transaction_bytes: int,
        max_transaction_ops: int,
    ) -> None:
        # Private: Store.open validates, locks the directory and recovers before returning.
        self._path = path
        self._io = io
        self._fsync_mode: FsyncMode = fsync
        self._fsync_always = fsync == "always"
        self._fsync_interval = fsync_interval_ms / 1000
        self._max_key_bytes = max_key_bytes
        self._max_value_bytes = max_value_bytes
        self._segment_bytes = segment_bytes
        self._compact_min_bytes = compact_min_bytes
        self._compact_dead_ratio = compact_dead_ratio
        self._auto_compact = auto_compact
        self._max_transaction_bytes = max_transaction_bytes
        self._max_transaction_ops = max_transaction_ops

        self._lock = threading.Lock()
        self._index = KeyIndex()
        self._segments: dict[int, Segment] = {}
        self._active: Segment | None = None
        self._hint_bytes: dict[int, int] = {}
        self._next_id = 1
        self._revision = 0
        self._write_seq = 0
        self._writes_since_check = 0
        self._live_bytes = 0
        self._recovered_truncations = 0
        self._last_compaction: float | None = None
        self._compactions = 0
        self._tx: Transaction | None = None
        self._closed = False
        self._failure: BaseException | None = None
        self._lock_fd = -1
        # What a group-commit round must fsync: updated under the lock after every append and
        # read without it, so a round never waits for the lock that writers hold.
        self._sync_point: tuple[int, int] = (0, -1)
        self._group = GroupCommit(lambda: self._sync_point, io.fsync)
        self._compact_lock = threading.Lock()
        self._compaction_thread: threading.Thread | None = None
        self._interval_stop = threading.Event()
        self._interval_thread: threading.Thread | None = None

    # ------------------------------------------------------------------ opening and closing

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        fsync: FsyncMode = "always",
        fsync_interval_ms: int = 100,
        max_key_bytes: int = 1024,
        max_value_bytes: int = 1 << 20,
        segment_bytes: int = 64 << 20,
        compact_min_bytes: int = 16 << 20,
        compact_dead_ratio: float = 0.5,
        auto_compact: bool = True,
        max_transaction_bytes: int = 64 << 20,
        max_transaction_ops: int = 10_000,
        io: FileIO | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> Store:
        """Open (creating if needed) the store in ``path``; recover what a crash left behind."""
        if fsync not in FSYNC_MODES:
            raise ValueError(f"fsync must be one of {', '.join(FSYNC_MODES)}, not {fsync!r}")
        if not 1 <= max_key_bytes <= 0xFFFF:
            raise ValueError("max_key_bytes must be between 1 and 65535")
        if not 0 <= max_value_bytes <= LENGTH_MASK:
            raise ValueError("max_value_bytes is out of range")
        if fsync_interval_ms < 1 or segment_bytes < 4096 or not 0 < compact_dead_ratio <= 1:
            raise ValueError("fsync_interval_ms, segment_bytes or compact_dead_ratio out of range")
        # Every record the store may write must be one that recovery reads back (MAX_BODY).
        if max_key_bytes + max_value_bytes + OPERATION_HEADER.size > MAX_BODY:
            raise ValueError(f"max_key_bytes + max_value_bytes must stay under {MAX_BODY} bytes")
        if not 1 <= max_transaction_bytes <= MAX_BODY:
            raise ValueError(f"max_transaction_bytes must be between 1 and {MAX_BODY}")
        if not 1 <= max_transaction_ops <= MAX_OPERATIONS:
            raise ValueError(f"max_transaction_ops must be between 1 and {MAX_OPERATIONS}")
        store = cls(
            Path(path),
            io=io or FileIO(),
            fsync=fsync,
            fsync_interval_ms=fsync_interval_ms,
            max_key_bytes=max_key_bytes,
            max_value_bytes=max_value_bytes,
            segment_bytes=segment_bytes,
            compact_min_bytes=compact_min_bytes,
            compact_dead_ratio=compact_dead_ratio,
            auto_compact=auto_compact,
            max_transaction_bytes=max_transaction_bytes,
            max_transaction_ops=max_transaction_ops,
        )
        try:
            # 0700, as etcd's: the files hold every value, for this account only.
            store._path.mkdir(mode=0o700, parents=True, exist_ok=True)
            store._acquire_directory_lock()
        except OSError as error:
            raise StorageError(
                f"cannot open data directory {store._path}: {error.strerror or error}"
            ) from error
        # Loading an index allocates millions of objects and no reference cycles; the cyclic
        # garbage collector would rescan them all again and again (measured: half the time).
        collecting = gc.isenabled()
        gc.disable()
        try:
            recover(store, should_stop)
        except OSError as error:
            store._release_files()
            raise StorageError(
                f"cannot recover data directory {store._path}: {error.strerror or error}"
            ) from error
        except BaseException:
            store._release_files()
            raise
        finally:
            if collecting:
                gc.enable()
        _return_freed_heap()
        if fsync == "interval":
            store._interval_thread = threading.Thread(
                target=store._run_interval_flusher, name="filekv-fsync-interval", daemon=True
            )
            store._interval_thread.start()
        return store

    def _acquire_directory_lock(self) -> None:
        fd = os.open(self._path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            # flock locks belong to the open file description, so a second open() of the same
            # directory in this very process is refused too, not only another process.
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreLocked(f"data directory {self._path} is in use by another process") from None
        self._lock_fd = fd

    def _start_new_segment(self) -> None:
        """Seal the active segment (fsynced whatever the mode) and start the next one."""
        if self._active is not None:
            self._io.fsync(self._active.fd)
            self._group.mark_synced(self._write_seq)
        try:
            segment = create_segment(self._io, self._path, self._next_id, self._revision)
        except OSError as error:
            if (self._path / segment_name(self._next_id)).exists():
                # It could not even be removed: at the next open it would pass for the newest
                # segment, so the one we keep appending to would no longer be. Stop writing.
                self._failure = error
            raise
        self._next_id += 1
        self._segments[segment.segment_id] = segment
        self._active = segment
        self._sync_point = (self._write_seq, segment.fd)

    def close(self) -> None:
        """Flush and fsync everything, stop background work and release the directory."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._tx = None
        self._interval_stop.set()
        if self._interval_thread is not None:
            self._interval_thread.join()
        thread = self._compaction_thread
        if thread is not None:
            thread.join()
        with self._compact_lock:  # wait for a synchronous compact() in another thread
            pass
        self._group.wait_for_round()  # nobody may be syncing a file we are about to close
        active = self._active
        try:
            if self._failure is None and active is not None:
                self._io.fsync(active.fd)
                self._group.mark_synced(self._write_seq)  # a writer still parked is durable
        except OSError as error:
            raise StoreFailed(
                f"the final fsync of {active.path if active else 'the store'} failed: "
                f"{error.strerror or error}; "
                "writes since the last successful fsync may be lost"
            ) from error
        finally:
            self._group.stop()
            self._release_files()

    def _release_files(self) -> None:
        for segment in self._segments.values():
            with contextlib.suppress(OSError):
                self._io.close(segment.fd)
        self._segments.clear()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = -1

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
        if not getattr(self, "_closed", True) and getattr(self, "_lock_fd", -1) >= 0:
            log.warning("Store for %s was not closed", self._path)

    # ------------------------------------------------------------------ properties

    @property
    def path(self) -> Path:
        return self._path

    @property
    def fsync_mode(self) -> str:
        return self._fsync_mode

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def revision(self) -> int:
        return self._revision

    @property
    def max_key_bytes(self) -> int:
        return self._max_key_bytes

    @property
    def max_value_bytes(self) -> int:
        return self._max_value_bytes

    @property
    def max_transaction_bytes(self) -> int:
        return self._max_transaction_bytes

    @property
    def max_transaction_ops(self) -> int:
        return self._max_transaction_ops

    @property
    def in_transaction(self) -> bool:
        return self._tx is not None

    def __len__(self) -> int:
        if self._closed:
            raise StoreClosed("the store is closed")
        return len(self._index)

    def __contains__(self, key: object) -> bool:
        if self._closed:
            raise StoreClosed("the store is closed")
        return key in self._index.locations

    # ------------------------------------------------------------------ validation

    def encode_key(self, key: str) -> bytes:
        """The key's UTF-8 bytes; InvalidKey if it is not a non-empty str within the limit."""
        if type(key) is not str:
            raise InvalidKey(f"a key must be a string, not {type(key).__name__}")
        try:
            encoded = key.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidKey("the key is not valid Unicode text (lone surrogate)") from None
        if not encoded:
            raise InvalidKey("the key is empty")
        if len(encoded) > self._max_key_bytes:
            raise InvalidKey(
                f"the key is {len(encoded)} bytes in UTF-8; the limit is {self._max_key_bytes}"
            )
        return encoded

    def check_value(self, value: bytes) -> bytes:
        if type(value) is not bytes:
            if isinstance(value, bytearray | memoryview):
                value = bytes(value)
            else:
                raise TypeError(f"a value must be bytes, not {type(value).__name__}")
        if len(value) > self._max_value_bytes:
            raise ValueTooLarge(
                f"the value is {len(value)} bytes; the limit is {self._max_value_bytes}"
            )
        return value

    def _check_writable(self, tx: Transaction | None = None) -> None:
        # Called under the lock.
        if self._closed:
            raise StoreClosed("the store is closed")
        if self._failure is not None or self._group.failure is not None:
            raise StoreFailed(
                "an earlier I/O failure left the files in an unknown state: "
                "the store refuses writes until it is reopened"
            )
        if self._tx is not tx:
            if tx is None:
                raise TransactionActive(
                    "a transaction is open: the store is read-only until it ends"
                )
            raise TransactionClosed("the transaction has ended")

    def _check_expect(self, key: str, expect: int) -> None:
        location = self._index.locations.get(key)
        actual = None if location is None else (location >> REVISION_SHIFT) & REVISION_MASK
        if expect == 0:
            if actual is not None:
                raise VersionMismatch(key, expect, actual)
        elif actual != expect:
            raise VersionMismatch(key, expect, actual)

    # ------------------------------------------------------------------ writes

    def put(self, key: str, value: bytes, *, expect: int | None = None) -> int:
        """Store ``value`` under ``key``; return the new revision once durable (per fsync mode).

        ``expect``: None writes unconditionally; 0 requires the key to be absent; any other number
        requires it to be the key's current revision. Otherwise VersionMismatch.
        """
        seq, revision = self._append_put(key, value, expect)
        if self._fsync_always:
            self._group.wait(seq)
        return revision

    async def aput(self, key: str, value: bytes, *, expect: int | None = None) -> int:
        """``put`` for asyncio: the fsync wait happens off the event loop, shared with others."""
        if self._rotation_due():
            return await asyncio.to_thread(self.put, key, value, expect=expect)
        seq, revision = self._append_put(key, value, expect)
        if self._fsync_always:
            await self._group.wait_async(seq)
        return revision

    def delete(self, key: str, *, expect: int | None = None) -> bool:
        """Remove ``key``; True if it existed. ``expect`` as for ``put``."""
        seq = self._append_delete(key, expect)
        if seq and self._fsync_always:
            self._group.wait(seq)
        return bool(seq)

    async def adelete(self, key: str, *, expect: int | None = None) -> bool:
        if self._rotation_due():
            return await asyncio.to_thread(self.delete, key, expect=expect)
        seq = self._append_delete(key, expect)
        if seq and self._fsync_always:
            await self._group.wait_async(seq)
        return bool(seq)

    def _append_put(self, key: str, value: bytes, expect: int | None) -> tuple[int, int]:
        encoded = self.encode_key(key)
        value = self.check_value(value)
        hashed = value_hash(value)
        with self._lock:
            self._check_writable()
            if expect is not None:
                self._check_expect(key, expect)
            revision = self._revision + 1
            active = self._segment_for(put_record_size(encoded, value))
            offset = active.size
            self._write(active, encode_put(active.header.marker, revision, encoded, value))
            self._revision = revision
            location = pack(
                active.segment_id,
                offset + PUT_VALUE_OFFSET + len(encoded),
                len(value),
                revision,
                hashed,
            )
            self._account_set(len(encoded), len(value), self._index.set(key, location))
            seq = self._write_seq
            self._after_write()
        return seq, revision

    def _append_delete(self, key: str, expect: int | None) -> int:
        """Append a delete record; return its sequence number, or 0 if the key was absent."""
        encoded = self.encode_key(key)
        with self._lock:
            self._check_writable()
            if expect is not None:
                self._check_expect(key, expect)
            if key not in self._index.locations:
                return 0
            revision = self._revision + 1
            active = self._segment_for(RECORD_HEADER_SIZE + OPERATION_HEADER.size + len(encoded))
            record = encode_record(active.header.marker, revision, [(DELETE, encoded, b"")])
            self._write(active, record)
            self._revision = revision
            self._account_remove(len(encoded), self._index.remove(key))
            seq = self._write_seq
            self._after_write()
        return seq

    def _segment_for(self, size: int) -> Segment:
        """The segment the next record of ``size`` bytes goes to. Called under the lock.

        A full active segment is sealed first. A record is encoded only once its segment is
        known: its header starts with the segment's marker.
        """
        active = self._active
        assert active is not None
        if active.size + size > self._segment_bytes and active.size > active.header.size:
            try:
                self._start_new_segment()
            except OSError as error:
                raise self._storage_error(error, "starting a new segment") from error
            active = self._active
            assert active is not None
        return active

    def _write(self, active: Segment, record: bytes) -> None:
        """Append ``record`` at ``active.size``. Called under the lock.

        Each record appended gets the next sequence number (``_write_seq``), which is what
        writers wait on for durability.

        A failed write is cut back off the file, so a later write never lands after a torn one;
        if even that fails, the store stops accepting writes.
        """
        offset = active.size
        try:
            self._io.write(active.fd, record)
        except OSError as error:
            try:
                self._io.truncate(active.fd, offset)
            except OSError as undo_error:
                self._failure = undo_error
                log.error("could not cut a failed write back off %s: %s", active.path, undo_error)
            raise self._storage_error(error, "writing") from error
        active.size = offset + len(record)
        self._write_seq += 1
        self._sync_point = (self._write_seq, active.fd)

    def _storage_error(self, error: OSError, doing: str) -> StorageError:
        if error.errno == errno.ENOSPC:
            return DiskFull(f"the disk is full ({doing}); nothing was written")
        if self._failure is not None:
            return StoreFailed(f"I/O error while {doing}; the store refuses writes until reopened")
        return StorageError(f"I/O error while {doing}: {os.strerror(error.errno or errno.EIO)}")

    def _rotation_due(self) -> bool:
        active = self._active
        return active is not None and active.size >= self._segment_bytes - (
            self._max_value_bytes + self._max_key_bytes + 64
        )

    def _account_set(self, key_bytes: int, value_bytes: int, previous: int | None) -> None:
        self._live_bytes += ENTRY_OVERHEAD + key_bytes + value_bytes
        if previous is not None:
            self._live_bytes -= _entry_bytes(key_bytes, previous)

    def _account_remove(self, key_bytes: int, previous: int | None) -> None:
        if previous is not None:
            self._live_bytes -= _entry_bytes(key_bytes, previous)

    def _after_write(self) -> None:
        self._writes_since_check += 1
        if self._writes_since_check >= COMPACTION_CHECK_EVERY:
            self._writes_since_check = 0
            self._maybe_compact()

    # ------------------------------------------------------------------ durability

    def _run_interval_flusher(self) -> None:
        while not self._interval_stop.wait(self._fsync_interval):
            if self._write_seq > self._group.synced and self._failure is None:
                try:
                    self._group.sync_now()
                except Exception as error:  # logged by GroupCommit; writes now refuse
                    self._failure = error
                    return

    def sync(self) -> None:
        """Make every write so far durable, whatever the fsync mode."""
        with self._lock:
            if self._closed:
                raise StoreClosed("the store is closed")
        self._group.sync_now()

    # ------------------------------------------------------------------ reads

    def _read_value(self, location: int) -> bytes:
        """Read a value from its segment. Called under the lock."""
        segment = self._segments[location >> SEGMENT_SHIFT]
        length = (location >> LENGTH_SHIFT) & LENGTH_MASK
        data = self._io.pread(segment.fd, length, (location >> OFFSET_SHIFT) & OFFSET_MASK)
        if len(data) != length:
            raise CorruptStore(
                str(segment.path), (location >> OFFSET_SHIFT) & OFFSET_MASK, "value cut short"
            )
        return data

    def get(self, key: str) -> bytes | None:
        """The value of ``key``, or None."""
        with self._lock:
            if self._closed:
                raise StoreClosed("the store is closed")
            location = self._index.locations.get(key)
            if location is None:
                return None
            return self._read_value(location)

    def entry(self, key: str) -> Entry | None:
        """The key, its value and its revision, or None."""
        with self._lock:
            if self._closed:
                raise StoreClosed("the store is closed")
            location = self._index.locations.get(key)
            if location is None:
                return None
            value = self._read_value(location)
        return Entry(key, value, (location >> REVISION_SHIFT) & REVISION_MASK)

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
            if self._closed:
                raise StoreClosed("the store is closed")
            for key, location in self._index.candidates(hashed):
                if (after is not None and key <= after) or not key.startswith(prefix):
                    continue
                if (location >> LENGTH_SHIFT) & LENGTH_MASK != length:
                    continue
                if self._read_value(location) != value:
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
            if self._closed:
                raise StoreClosed("the store is closed")
            return list(islice(self._index.keys_from(prefix, after), limit))

    # ------------------------------------------------------------------ transactions

    def transaction(self) -> Transaction:
        """Open the write transaction; until it ends, other writes get TransactionActive."""
        from .transaction import Transaction

        with self._lock:
            self._check_writable()
            tx = Transaction(self)
            self._tx = tx
        return tx

    def _commit(self, tx: Transaction, staged: dict[str, bytes | None]) -> tuple[int, int]:
        """Write a transaction's staged writes as one record; return (sequence number, count).

        The body is encoded before the lock is taken (readers wait on that lock): while the
        transaction is open no other writer can add or remove a key, so which deletes are
        no-ops cannot change meanwhile.
        """
        locations = self._index.locations
        operations: list[Operation] = []
        for key, value in staged.items():
            if value is None:
                if key in locations:
                    operations.append((DELETE, key.encode("utf-8"), b""))
            else:
                operations.append((PUT, key.encode("utf-8"), value))
        body = encode_body(operations) if operations else b""
        body_crc = zlib.crc32(body)
        with self._lock:
            self._check_writable(tx)
            seq = 0
            if operations:
                revision = self._revision + 1
                active = self._segment_for(RECORD_HEADER_SIZE + len(body))
                offset = active.size
                header = encode_header(
                    active.header.marker, revision, len(operations), body, body_crc
                )
                self._write(active, header + body)
                self._revision = revision
                self._apply(operations, active.segment_id, offset, revision)
                seq = self._write_seq
            self._tx = None
            if operations:
                self._after_write()
        return seq, len(staged)

    def _apply(
        self, operations: list[Operation], segment_id: int, offset: int, revision: int
    ) -> None:
        position = offset + RECORD_HEADER_SIZE
        for kind, encoded, value in operations:
            position += OPERATION_HEADER.size + len(encoded)
            key = encoded.decode("utf-8")
            if kind == PUT:
                location = pack(segment_id, position, len(value), revision, value_hash(value))
                self._account_set(len(encoded), len(value), self._index.set(key, location))
            else:
                self._account_remove(len(encoded), self._index.remove(key))
            position += len(value)

    def _end_transaction(self, tx: Transaction) -> None:
        with self._lock:
            if self._tx is tx:
                self._tx = None

    def _wait_durable(self, seq: int) -> None:
        if seq and self._fsync_always:
            self._group.wait(seq)

    async def _wait_durable_async(self, seq: int) -> None:
        if seq and self._fsync_always:
            await self._group.wait_async(seq)

    # ------------------------------------------------------------------ compaction and stats

    def compact(self) -> bool:
        """Merge every sealed segment into one, now; False if there was nothing to merge."""
        from .compaction import compact

        with self._lock:
            if self._closed:
                raise StoreClosed("the store is closed")
        return compact(self)

    def _maybe_compact(self) -> None:
        # Called under the lock, so the thresholds are read consistently.
        if not self._auto_compact or self._closed:
            return
        if self._compaction_thread is not None and self._compaction_thread.is_alive():
            return
        disk = sum(segment.size for segment in self._segments.values())
        if disk < self._compact_min_bytes or disk == 0:
            return
        if 1 - self._live_bytes / disk < self._compact_dead_ratio:
            return
        from .compaction import compact

        self._compaction_thread = threading.Thread(
            target=self._compact_in_background,
            args=(compact,),
            name="filekv-compaction",
            daemon=True,
        )
        self._compaction_thread.start()

    def _compact_in_background(self, compact: Callable[[Store], bool]) -> None:
        try:
            compact(self)
        except StoreClosed:
            pass
        except Exception:
            log.exception("background compaction failed; the store goes on without it")

    def stats(self) -> dict[str, Any]:
        with self._lock:
            segments = list(self._segments.values())
            disk_bytes = sum(segment.size for segment in segments) + sum(self._hint_bytes.values())
            compacting = (
                self._compaction_thread is not None and self._compaction_thread.is_alive()
            ) or self._compact_lock.locked()
            return {
                "keys": len(self._index),
                "disk_bytes": disk_bytes,
                "live_bytes": self._live_bytes,
                "segments": len(segments),
                "fsync": self._fsync_mode,
                "last_compaction": (
                    datetime.fromtimestamp(self._last_compaction, UTC).isoformat()
                    if self._last_compaction is not None
                    else None
                ),
                "recovered_truncations": self._recovered_truncations,
                "revision": self._revision,
                "compactions": self._compactions,
                "compacting": compacting,
                "in_transaction": self._tx is not None,
            }

    def check(self) -> None:
        """Verify that every index agrees with the others and with the files; raise if not."""
        with self._lock:
            index = self._index
            if list(index.ordered) != sorted(index.locations):
                raise AssertionError("the ordered key list disagrees with the key index")
            grouped = 0
            for hashed, holder in index.by_value.items():
                group = index.group(holder)
                if not group:
                    raise AssertionError("an empty group in the value index")
                for key, known in group.items():
                    location = index.locations.get(key)
                    if location is None or location & HASH_MASK != hashed:
                        raise AssertionError(f"value index holds {key!r} under a wrong hash")
                    if known != location:
                        raise AssertionError(f"value index has a stale location for {key!r}")
                grouped += len(group)
            if grouped != len(index.locations):
                raise AssertionError("the value index does not hold every key exactly once")
            for key, location in index.locations.items():
                if value_hash(self._read_value(location)) != location & HASH_MASK:
                    segment = self._segments[location >> SEGMENT_SHIFT]
                    raise CorruptStore(
                        str(segment.path),
                        (location >> OFFSET_SHIFT) & OFFSET_MASK,
                        f"value of {key!r} does not match its hash",
                    )


def _entry_bytes(key_bytes: int, location: int) -> int:
    """The live-bytes estimate of one entry: its single-put record's size."""
    return ENTRY_OVERHEAD + key_bytes + ((location >> LENGTH_SHIFT) & LENGTH_MASK)


def _return_freed_heap() -> None:
    """Hand back to the OS the heap pages that loading the index used for temporaries.

    Loading a hint file frees large temporaries (the decoded key block, column arrays) inside
    the C heap; glibc keeps those pages, which showed as 20 % more RSS per key than a store
    built by writes. ``malloc_trim`` returns them. Elsewhere (no glibc) this does nothing.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass
