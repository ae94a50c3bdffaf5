"""The write transaction: staged writes in nested levels, committed as one atomic record.

While a transaction is open the store refuses every other write (TransactionActive); the
transaction's own reads see its staged writes and deletes over the committed data.

What a transaction stages is bounded (``Store.open(max_transaction_bytes=, max_transaction_ops=)``):
the count covers every level, since every level is held in memory, and it is an upper bound of
the one record that commit writes, so a commit can never produce a record that recovery would
refuse to read back. Levels nest at most ``MAX_DEPTH`` deep: each read walks every level.

Owns the staged levels and their byte and operation counts. It reaches the store only through
``TransactionHost`` (which ``Store`` implements): it does not import the store module.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Final, Protocol, Self

from .batch import BatchOp, prepare
from .entry import Entry
from .errors import (
    NoSavepoint,
    TransactionClosed,
    TransactionTooDeep,
    TransactionTooLarge,
    VersionMismatch,
)
from .expiry import check_ttl
from .options import StoreOptions
from .record import EXPIRY, OPERATION_HEADER

# A staged value of None is a staged delete.
Level = dict[str, bytes | None]

# Reads walk every level: unbounded nesting (a begin per request) slows each read without end.
MAX_DEPTH: Final = 1_000


class TransactionHost(Protocol):
    """What a transaction needs of its store: the public reads, and four calls for it alone."""

    @property
    def options(self) -> StoreOptions: ...
    def encode_key(self, key: str) -> bytes: ...
    def check_value(self, value: bytes) -> bytes: ...
    def __contains__(self, key: object) -> bool: ...
    def get(self, key: str) -> bytes | None: ...
    def entry(self, key: str) -> Entry | None: ...
    def find(
        self, value: bytes, *, prefix: str = "", after: str | None = None, limit: int | None = None
    ) -> list[str]: ...
    def scan(
        self, prefix: str = "", *, after: str | None = None, limit: int | None = None
    ) -> list[str]: ...
    def commit_transaction(
        self, tx: Transaction, staged: dict[str, bytes | None]
    ) -> tuple[int, int]: ...
    def end_transaction(self, tx: Transaction) -> None: ...
    def wait_durable(self, seq: int) -> None: ...
    async def wait_durable_async(self, seq: int) -> None: ...
    def now(self) -> float: ...


class ExpiringValue(bytes):
    """A staged value put with a TTL: bytes (so limits, merging and reads treat it as any staged
    value) that also carry when they expire, which the commit writes into the record."""

    expires_at: float


class Transaction:
    """Obtain one with ``Store.transaction()``. Levels nest with ``begin``; see the Store docs."""

    def __init__(self, store: TransactionHost) -> None:
        self._store = store
        self._levels: list[Level] = [{}]
        # Per level, the bytes its operations take in a record (header, key, value): kept as the
        # levels change so the limit check costs O(1) per write.
        self._level_bytes: list[int] = [0]
        self._staged_bytes = 0
        self._staged_ops = 0

    # ------------------------------------------------------------------ state

    @property
    def depth(self) -> int:
        return len(self._levels)

    @property
    def active(self) -> bool:
        return bool(self._levels)

    def _check_open(self) -> None:
        if not self._levels:
            raise TransactionClosed("the transaction has ended")

    def _staged(self) -> Level:
        """Every level flattened, inner levels winning."""
        merged: Level = {}
        for level in self._levels:
            merged.update(level)
        return merged

    def _visible(self) -> Level:
        """``_staged`` as reads see it: a value whose TTL has run out is gone, as in ``_lookup``."""
        now = self._store.now()
        return {
            key: None if type(value) is ExpiringValue and value.expires_at <= now else value
            for key, value in self._staged().items()
        }

    def _lookup(self, key: str) -> tuple[bool, bytes | None]:
        for level in reversed(self._levels):
            if key in level:
                value = level[key]
                if type(value) is ExpiringValue and value.expires_at <= self._store.now():
                    return True, None  # staged with a TTL that has run out: gone
                return True, value
        return False, None

    # ------------------------------------------------------------------ writes

    @property
    def staged_bytes(self) -> int:
        """Bytes the staged operations of every level take in a record."""
        return self._staged_bytes

    @property
    def staged_ops(self) -> int:
        """Operations staged, every level counted."""
        return self._staged_ops

    def put(
        self, key: str, value: bytes, *, expect: int | None = None, ttl: float | None = None
    ) -> bool:
        """Stage ``value`` under ``key`` in the innermost level; True if the key existed.

        ``expect`` as for ``Store.put``, checked against this transaction's view: None stages
        unconditionally; 0 requires the key to be absent; any other number requires it to be the
        key's committed revision (a key written or deleted in this transaction has none).
        Otherwise VersionMismatch; TransactionTooLarge if it would pass the transaction's
        limits. Either way nothing is staged. ``ttl`` as for ``Store.put``, counted from now.
        """
        self._check_open()
        encoded = self._store.encode_key(key)
        value = self._store.check_value(value)
        if ttl is not None:
            value = self._expiring(value, check_ttl(ttl))
        existed = self._check_expect(key, expect)
        self._stage(key, len(encoded), value)
        return existed

    def _expiring(self, value: bytes, ttl: float) -> bytes:
        staged = ExpiringValue(value)
        staged.expires_at = self._store.now() + ttl
        return staged

    def touches(self, key: str) -> bool:
        """Whether any level has staged a write or delete of ``key``."""
        return any(key in level for level in self._levels)

    def delete(self, key: str, *, expect: int | None = None) -> bool:
        """Stage the deletion of ``key``; True if it existed in this transaction's view.

        ``expect`` as for ``put``.
        """
        self._check_open()
        encoded = self._store.encode_key(key)
        existed = self._check_expect(key, expect)
        self._stage(key, len(encoded), None)
        return existed

    def batch(self, ops: Sequence[BatchOp]) -> int:
        """Stage ``Put``/``Delete`` operations in the innermost level, all or none; return how many.

        As ``Store.batch``: every ``expect`` is checked against this transaction's view as it
        was before the batch, before anything is staged (the first that fails raises
        VersionMismatch with its ``op_index``); the operations then apply in order, the last on
        a key winning. Passing the transaction's limits raises TransactionTooLarge. Either way,
        nothing is staged.
        """
        self._check_open()
        store = self._store
        options = store.options
        prepared = prepare(
            ops,
            encode_key=store.encode_key,
            check_value=store.check_value,
            max_key_bytes=options.max_key_bytes,
            max_value_bytes=options.max_value_bytes,
            max_ops=options.max_transaction_ops,
            max_bytes=options.max_transaction_bytes,
        )
        for index, op in enumerate(prepared):
            self._check_expect(op.key, op.expect, index)
        # Staged in a level of its own, merged down only once every operation fits the limits.
        self._levels.append({})
        self._level_bytes.append(0)
        try:
            for op in prepared:
                value = op.value
                if value is not None and op.ttl is not None:
                    value = self._expiring(value, op.ttl)
                self._stage(op.key, len(op.encoded), value)
        except BaseException:
            self._drop_level()
            raise
        self._merge_level()
        return len(prepared)

    def _check_expect(self, key: str, expect: int | None, op_index: int | None = None) -> bool:
        """Whether ``key`` exists in this transaction's view; VersionMismatch if ``expect`` fails.

        The same rule as the store's own check (``Writer``), over the staged levels first.
        """
        staged, value = self._lookup(key)
        if staged:
            exists = value is not None
            if expect is not None and (expect != 0 or exists):
                raise VersionMismatch(key, expect, None, staged=True, op_index=op_index)
            return exists
        if expect is None:
            return key in self._store
        entry = self._store.entry(key)
        revision = None if entry is None else entry.revision
        if (expect == 0 and revision is not None) or (expect != 0 and revision != expect):
            raise VersionMismatch(key, expect, revision, op_index=op_index)
        return entry is not None

    def _stage(self, key: str, key_bytes: int, value: bytes | None) -> None:
        """Put ``value`` in the innermost level, after checking the limits."""
        level = self._levels[-1]
        size = _operation_bytes(key_bytes, value)
        added_ops = 1
        if key in level:  # a rewrite in the same level replaces the operation staged there
            size -= _operation_bytes(key_bytes, level[key])
            added_ops = 0
        new_bytes = self._staged_bytes + size
        new_ops = self._staged_ops + added_ops
        store = self._store
        if new_ops > store.options.max_transaction_ops:
            raise TransactionTooLarge(
                f"the transaction holds {self._staged_ops} operations; "
                f"the limit is {store.options.max_transaction_ops}"
            )
        if new_bytes > store.options.max_transaction_bytes:
            raise TransactionTooLarge(
                f"this write would take the transaction to {new_bytes} bytes; "
                f"the limit is {store.options.max_transaction_bytes}"
            )
        level[key] = value
        self._level_bytes[-1] += size
        self._staged_bytes = new_bytes
        self._staged_ops = new_ops

    # ------------------------------------------------------------------ reads

    def get(self, key: str) -> bytes | None:
        self._check_open()
        staged, value = self._lookup(key)
        if staged:
            return None if value is None else bytes(value)
        return self._store.get(key)

    def entry(self, key: str) -> Entry | None:
        """As ``Store.entry``; a staged value has revision None."""
        self._check_open()
        staged, value = self._lookup(key)
        if not staged:
            return self._store.entry(key)
        if value is None:
            return None
        expires_at = value.expires_at if type(value) is ExpiringValue else None
        return Entry(key, bytes(value), None, expires_at)

    def find(
        self,
        value: bytes,
        *,
        prefix: str = "",
        after: str | None = None,
        limit: int | None = None,
    ) -> list[str]:
        """``Store.find`` over the committed data with this transaction's writes applied."""
        self._check_open()
        staged = self._visible()
        # Staged writes can hide at most len(staged) committed matches, so that many extra
        # committed results are enough to fill the page.
        wanted = None if limit is None else limit + len(staged)
        committed = self._store.find(value, prefix=prefix, after=after, limit=wanted)
        keys = {key for key in committed if key not in staged}
        keys.update(
            key
            for key, staged_value in staged.items()
            if staged_value == value and key.startswith(prefix) and (after is None or key > after)
        )
        return sorted(keys)[:limit]

    def scan(
        self, prefix: str = "", *, after: str | None = None, limit: int | None = None
    ) -> list[str]:
        """``Store.scan`` with this transaction's writes and deletes applied."""
        self._check_open()
        staged = self._visible()
        wanted = None if limit is None else limit + len(staged)
        committed = self._store.scan(prefix, after=after, limit=wanted)
        keys = {key for key in committed if staged.get(key, b"") is not None}
        keys.update(
            key
            for key, staged_value in staged.items()
            if staged_value is not None
            and key.startswith(prefix)
            and (after is None or key > after)
        )
        return sorted(keys)[:limit]

    # ------------------------------------------------------------------ levels

    def begin(self) -> int:
        """Open a nested level (a savepoint); the new depth. TransactionTooDeep past MAX_DEPTH."""
        self._check_open()
        if len(self._levels) >= MAX_DEPTH:  # refused before the level exists
            raise TransactionTooDeep(
                f"the transaction is {MAX_DEPTH} levels deep, the most allowed"
            )
        self._levels.append({})
        self._level_bytes.append(0)
        return len(self._levels)

    def release(self) -> int:
        """Merge the innermost level into the one below (SQL's RELEASE SAVEPOINT); new depth.

        At depth 1 there is nothing below: NoSavepoint (commit or roll back instead).
        """
        self._check_open()
        if len(self._levels) < 2:
            raise NoSavepoint("release needs a nested level: at depth 1, commit or roll back")
        self._merge_level()
        return len(self._levels)

    def rollback(self) -> int:
        """Undo the innermost level; at depth 1 this ends the transaction. Return the new depth."""
        self._check_open()
        self._drop_level()
        if not self._levels:
            self._store.end_transaction(self)
        return len(self._levels)

    def _drop_level(self) -> None:
        popped = self._levels.pop()
        self._staged_ops -= len(popped)
        self._staged_bytes -= self._level_bytes.pop()

    def _merge_level(self) -> None:
        """Fold the innermost level into the one below: a key in both keeps one operation."""
        popped = self._levels.pop()
        popped_bytes = self._level_bytes.pop()
        below = self._levels[-1]
        freed_ops = freed_bytes = 0
        for key, value in popped.items():
            if key in below:
                freed_ops += 1
                freed_bytes += _operation_bytes(len(key.encode("utf-8")), below[key])
            below[key] = value
        self._level_bytes[-1] += popped_bytes - freed_bytes
        self._staged_ops -= freed_ops
        self._staged_bytes -= freed_bytes

    def abort(self) -> None:
        """Undo every level and end the transaction (a no-op once it has ended)."""
        if self._levels:
            self._clear()
            self._store.end_transaction(self)

    def _clear(self) -> None:
        self._levels.clear()
        self._level_bytes.clear()
        self._staged_bytes = self._staged_ops = 0

    def commit(self) -> int:
        """Apply every level as one atomic, durable record; return the number of staged writes
        (a delete of a key absent by then is counted, though the record holds nothing for it)."""
        self._check_open()
        seq, count = self._store.commit_transaction(self, self._staged())
        self._clear()
        self._store.wait_durable(seq)
        return count

    async def acommit(self) -> int:
        """``commit`` for asyncio: encoding, the write and the fsync wait all off the event loop.

        From the moment it starts the transaction takes no more writes (TransactionClosed), so
        the thread encodes exactly what was staged; if the commit fails (DiskFull, say) the
        transaction is open again with everything it had, as after a failed ``commit``.
        """
        import asyncio

        self._check_open()
        staged = self._staged()
        saved = (self._levels, self._level_bytes, self._staged_bytes, self._staged_ops)
        self._levels, self._level_bytes = [], []
        store = self._store
        running = asyncio.ensure_future(asyncio.to_thread(store.commit_transaction, self, staged))
        try:
            seq, count = await asyncio.shield(running)
        except asyncio.CancelledError:
            # The thread goes on; should it fail, the store must not stay locked by a
            # transaction that nobody can reach any more.
            def release_if_failed(done: asyncio.Future[tuple[int, int]]) -> None:
                if not done.cancelled() and done.exception() is not None:
                    store.end_transaction(self)

            running.add_done_callback(release_if_failed)
            raise
        except Exception:
            self._levels, self._level_bytes, self._staged_bytes, self._staged_ops = saved
            raise
        self._staged_bytes = self._staged_ops = 0
        await self._store.wait_durable_async(seq)
        return count

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is None and self._levels:
            try:
                self.commit()
            except BaseException:
                # A failed commit (e.g. DiskFull) keeps a bare transaction open for a retry;
                # the with-block has no retry, so it must not leave the store locked.
                self.abort()
                raise
        else:
            self.abort()


def _operation_bytes(key_bytes: int, value: bytes | None) -> int:
    """What staging ``value`` (None: a delete) adds to the commit's record, expiry included."""
    if value is None:
        return OPERATION_HEADER.size + key_bytes
    extra = EXPIRY.size if type(value) is ExpiringValue else 0
    return OPERATION_HEADER.size + key_bytes + len(value) + extra
