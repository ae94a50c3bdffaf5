"""The write path: turning a put, a delete or a transaction's commit into one appended record.

Owns what the next write depends on: the revision counter, the transaction slot (at most one
open transaction; while it is open every other write is refused), whether writes are still
taken, and the key and value limits. It appends through the ``SegmentSet`` and applies each
record to the ``KeyIndex``, all under the store lock, which it is handed; it waits for no fsync
(the Store does that, outside the lock).
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Callable, Sequence
from typing import Final

from .apply import apply_record, note_expiry, value_hashes
from .batch import BatchOp, prepare
from .changes import ChangeFeed
from .durability import GroupCommit
from .errors import (
    StoreClosed,
    StoreFailed,
    TransactionActive,
    TransactionClosed,
    VersionMismatch,
)
from .hint import pack, revision_of
from .index import KeyIndex
from .record import (
    DELETE,
    EXPIRY,
    OPERATION_HEADER,
    PUT,
    PUT_TTL,
    PUT_VALUE_OFFSET,
    RECORD_HEADER_SIZE,
    Operation,
    encode_body,
    encode_expire,
    encode_header,
    encode_put,
    encode_put_ttl,
    encode_record,
    put_payload,
    put_record_size,
    value_hash,
)
from .segment import Segment
from .segments import SegmentSet
from .transaction import Transaction
from .validation import check_value, encode_key

COMPACTION_CHECK_EVERY: Final = 1024  # writes between two looks at the compaction thresholds


class Writer:
    """Appends writes under the lock. ``maybe_compact`` is called every thousand writes or so;
    ``group`` is asked only whether a failed fsync round has stopped writes."""

    def __init__(
        self,
        lock: threading.Lock,
        segments: SegmentSet,
        index: KeyIndex,
        *,
        max_key_bytes: int,
        max_value_bytes: int,
        max_transaction_ops: int,
        max_transaction_bytes: int,
        group: GroupCommit,
        maybe_compact: Callable[[], None],
        clock: Callable[[], float],
        feed: ChangeFeed,
    ) -> None:
        self._lock = lock
        self._segments = segments
        self._index = index
        self._max_key_bytes = max_key_bytes
        self._max_value_bytes = max_value_bytes
        self._max_transaction_ops = max_transaction_ops  # a batch is held to a commit's limits
        self._max_transaction_bytes = max_transaction_bytes
        self._group = group
        self._maybe_compact = maybe_compact
        self._clock = clock  # for expiries: an expired key is absent to every check here
        self._feed = feed  # told every committed change, under the lock, in revision order
        self._revision = 0
        self._tx: Transaction | None = None
        self._closed = False
        self._writes_since_check = 0

    @property
    def revision(self) -> int:
        """The revision of the last write."""
        return self._revision

    def recovered(self, revision: int) -> None:
        """After recovery: the highest revision found on disk."""
        self._revision = revision

    @property
    def transaction(self) -> Transaction | None:
        """The open transaction, if any."""
        return self._tx

    def begin(self, tx: Transaction) -> None:
        """Give the slot to ``tx``. Under the lock."""
        self.check_writable()
        self._tx = tx

    def close(self) -> None:
        """Take no more writes; forget the open transaction. Under the lock."""
        self._closed = True
        self._tx = None

    def encode_key(self, key: str) -> bytes:
        """The key's UTF-8 bytes; InvalidKey if it is not a non-empty str within the limit."""
        return encode_key(key, self._max_key_bytes)

    def check_value(self, value: bytes) -> bytes:
        """``value`` as bytes; TypeError or ValueTooLarge if it cannot be stored."""
        return check_value(value, self._max_value_bytes)

    def check_writable(self, tx: Transaction | None = None) -> None:
        """Raise unless a write (of ``tx``, or outside any) may go ahead. Under the lock."""
        if self._closed:
            raise StoreClosed("the store is closed")
        if self._segments.failure is not None or self._group.failure is not None:
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

    def _live_location(self, key: str) -> int | None:
        """The key's location, or None if it is absent or expired. Under the lock."""
        index = self._index
        location = index.get(key)
        if location is not None and index.expiries and index.is_expired(key, self._clock()):
            return None
        return location

    def _check_expect(self, key: str, expect: int, op_index: int | None = None) -> None:
        location = self._live_location(key)
        actual = None if location is None else revision_of(location)
        if expect == 0:
            if actual is not None:
                raise VersionMismatch(key, expect, actual, op_index=op_index)
        elif actual != expect:
            raise VersionMismatch(key, expect, actual, op_index=op_index)

    def append_put(
        self, key: str, value: bytes, expect: int | None, expires_at: float | None = None
    ) -> tuple[int, int]:
        encoded = self.encode_key(key)
        value = self.check_value(value)
        hashed = value_hash(value)
        segments = self._segments
        index = self._index
        with self._lock:
            self.check_writable()
            if expect is not None:
                self._check_expect(key, expect)
            revision = self._revision + 1
            size = put_record_size(encoded, value, expires_at)
            active = segments.segment_for(size, self._revision)
            offset = active.size
            marker = active.header.marker
            if expires_at is None:
                record = encode_put(marker, revision, encoded, value)
            else:
                record = encode_put_ttl(marker, revision, encoded, value, expires_at)
            seq = segments.write(active, record)
            self._revision = revision
            location = pack(
                active.segment_id,
                offset + PUT_VALUE_OFFSET + len(encoded),
                len(value),
                revision,
                hashed,
            )
            segments.account_set(len(encoded), len(value), index.set(key, location))
            summary = active.summary
            assert summary is not None  # the active segment always has one
            summary.final[key] = location
            summary.max_revision = revision
            if expires_at is not None or index.expiries:  # a put without a TTL ends an expiry
                index.set_expiry(key, expires_at)
                note_expiry(summary.expiries, key, expires_at)
            self._feed.publish(revision, "put", key, value, expires_at)
            self._after_write()
        return seq, revision

    def append_delete(self, key: str, expect: int | None) -> int:
        """Append a delete record; return its sequence number, or 0 if the key was absent."""
        encoded = self.encode_key(key)
        segments = self._segments
        with self._lock:
            self.check_writable()
            if expect is not None:
                self._check_expect(key, expect)
            if self._live_location(key) is None:
                return 0  # an expired key is already gone: the sweeper writes its expiry
            revision = self._revision + 1
            size = RECORD_HEADER_SIZE + OPERATION_HEADER.size + len(encoded)
            active = segments.segment_for(size, self._revision)
            record = encode_record(active.header.marker, revision, [(DELETE, encoded, b"")])
            seq = segments.write(active, record)
            self._revision = revision
            segments.account_remove(len(encoded), self._index.remove(key))
            summary = active.summary
            assert summary is not None  # the active segment always has one
            summary.final[key] = None
            summary.max_revision = revision
            summary.expiries.pop(key, None)
            self._feed.publish(revision, "delete", key, None, None)
            self._after_write()
        return seq

    def append_expires(self, keys: list[str], skip: Callable[[str], bool]) -> tuple[int, int]:
        """Write an expiry for each of ``keys`` still expired now, each its own record at its own
        revision (the sweeper's work); return (the sequence number to wait for, 0 if none; how
        many were written).

        Keys ``skip`` names (the open transaction's) are left for a later sweep. Runs while a
        transaction is open, which only clients are kept from writing by; refused, as every
        write is, once the store is closed or failed.
        """
        segments = self._segments
        index = self._index
        with self._lock:
            self.check_writable(self._tx)
            now = self._clock()
            due = [
                (key, key.encode("utf-8"))
                for key in keys
                if index.is_expired(key, now) and not skip(key)
            ]
            if not due:
                return 0, 0
            # One write for the lot (records are ~50 bytes: a syscall each was most of the cost),
            # into the segment that has room for all of them.
            size = sum(RECORD_HEADER_SIZE + OPERATION_HEADER.size + len(e) for _, e in due)
            active = segments.segment_for(size, self._revision)
            marker = active.header.marker
            first = self._revision + 1
            records = [
                encode_expire(marker, revision, encoded)
                for revision, (_, encoded) in enumerate(due, first)
            ]
            seq = segments.write(active, b"".join(records))
            self._revision = revision = first + len(due) - 1
            summary = active.summary
            assert summary is not None  # the active segment always has one
            final, expiries, publish = summary.final, summary.expiries, self._feed.publish
            account_remove = segments.account_remove
            removed = index.remove_expired([key for key, _ in due])
            for (revision, (key, encoded)), previous in zip(
                enumerate(due, first), removed, strict=True
            ):
                account_remove(len(encoded), previous)
                final[key] = None
                if expiries:
                    expiries.pop(key, None)
                publish(revision, "expire", key, None, None)
            summary.max_revision = revision
            for _ in due:
                self._after_write()
            written = len(due)
        return seq, written

    def _after_write(self) -> None:
        # Under the lock, so the compaction thresholds are read consistently; and once the
        # segment's summary holds the write, which a hint of the active segment copies.
        self._segments.maybe_hint_active()
        self._writes_since_check += 1
        if self._writes_since_check >= COMPACTION_CHECK_EVERY:
            self._writes_since_check = 0
            self._maybe_compact()

    def commit(
        self,
        tx: Transaction,
        staged: dict[str, bytes | None],
        expiries: dict[str, float] | None = None,
    ) -> tuple[int, int]:
        """Write a transaction's staged writes as one record; return (sequence number, count).

        The body is encoded before the lock is taken (readers wait on that lock): while the
        transaction is open no other writer can add or remove a key, so which deletes are
        no-ops cannot change meanwhile.
        """
        operations: list[Operation] = []
        keys: list[str] = []
        expiries = expiries or {}
        for key, value in staged.items():
            if value is None:
                if self._live_location(key) is not None:
                    operations.append((DELETE, key.encode("utf-8"), b""))
                    keys.append(key)
            else:
                kind, payload = put_payload(value, expiries.get(key))
                operations.append((kind, key.encode("utf-8"), payload))
                keys.append(key)
        hashes = value_hashes(operations)
        body = encode_body(operations) if operations else b""
        body_crc = zlib.crc32(body)
        segments = self._segments
        with self._lock:
            self.check_writable(tx)
            seq = 0
            if operations:
                revision = self._revision + 1
                active = segments.segment_for(RECORD_HEADER_SIZE + len(body), self._revision)
                offset = active.size
                header = encode_header(
                    active.header.marker, revision, len(operations), body, body_crc
                )
                seq = segments.write(active, header + body)
                self._revision = revision
                self._apply(operations, keys, hashes, active, offset, revision)
            self._tx = None
            if operations:
                self._after_write()
        # The staged writes, as the transaction's API counts them: a delete of a key absent by
        # now (never there, or its TTL ran out meanwhile: the sweeper's ``expire`` records that)
        # is counted though the record holds no operation for it.
        return seq, len(staged)

    def append_batch(self, ops: Sequence[BatchOp]) -> tuple[int, int]:
        """Write batch operations as one record; return (sequence number, revision).

        The operations are checked first (``batch.prepare``), outside the lock.

        Every ``expect`` is checked under the lock before anything is written, against the data
        before the batch (the first that fails raises VersionMismatch naming its index); of
        several operations on one key only the last is written. A delete of a key that is absent is
        left out of the record; when nothing is left, nothing is written and the answer is
        (0, the current revision). The body is encoded before the lock is taken, as a commit's
        is; should a delete turn out to be a no-op under the lock, it is encoded again there.
        """
        prepared = prepare(
            ops,
            encode_key=self.encode_key,
            check_value=self.check_value,
            max_key_bytes=self._max_key_bytes,
            max_value_bytes=self._max_value_bytes,
            max_ops=self._max_transaction_ops,
            max_bytes=self._max_transaction_bytes,
        )
        final = [op for op in prepared if op.final]  # the last operation on each key wins
        operations: list[Operation] = [
            (DELETE, op.encoded, b"")
            if op.value is None
            else (PUT, op.encoded, op.value)
            if op.ttl is None
            else (PUT_TTL, op.encoded, op.value + EXPIRY.pack(self._clock() + op.ttl))
            for op in final
        ]
        hashes = value_hashes(operations)  # outside the lock, as the body's encoding
        body = encode_body(operations)
        body_crc = zlib.crc32(body)
        segments = self._segments
        with self._lock:
            self.check_writable()
            live = self._live_location
            for index, op in enumerate(prepared):
                if op.expect is not None:
                    self._check_expect(op.key, op.expect, index)
            if any(op.value is None and live(op.key) is None for op in final):
                kept = [
                    i
                    for i, op in enumerate(final)
                    if op.value is not None or live(op.key) is not None
                ]
                if not kept:
                    return 0, self._revision
                final = [final[i] for i in kept]
                operations = [operations[i] for i in kept]
                hashes = [hashes[i] for i in kept]
                body = encode_body(operations)
                body_crc = zlib.crc32(body)
            revision = self._revision + 1
            active = segments.segment_for(RECORD_HEADER_SIZE + len(body), self._revision)
            offset = active.size
            header = encode_header(active.header.marker, revision, len(operations), body, body_crc)
            seq = segments.write(active, header + body)
            self._revision = revision
            keys = [op.key for op in final]
            self._apply(operations, keys, hashes, active, offset, revision)
            self._after_write()
        return seq, revision

    def _apply(
        self,
        operations: list[Operation],
        keys: list[str],
        hashes: list[int],
        active: Segment,
        offset: int,
        revision: int,
    ) -> None:
        index, segments, feed = self._index, self._segments, self._feed
        apply_record(index, segments, feed, operations, keys, hashes, active, offset, revision)

    def end(self, tx: Transaction) -> None:
        """Empty the transaction slot if ``tx`` holds it."""
        with self._lock:
            if self._tx is tx:
                self._tx = None
