"""The write transaction: staged writes in nested levels, committed as one atomic record.

While a transaction is open the store refuses every other write (TransactionActive); the
transaction's own reads see its staged writes and deletes over the committed data.
"""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING, Self

from .errors import TransactionClosed

if TYPE_CHECKING:
    from .store import Entry, Store

# A staged value of None is a staged delete.
Level = dict[str, bytes | None]


class Transaction:
    """Obtain one with ``Store.transaction()``. Levels nest with ``begin``; see the Store docs."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._levels: list[Level] = [{}]

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

    def _lookup(self, key: str) -> tuple[bool, bytes | None]:
        for level in reversed(self._levels):
            if key in level:
                return True, level[key]
        return False, None

    # ------------------------------------------------------------------ writes

    def put(self, key: str, value: bytes) -> None:
        """Stage ``value`` under ``key`` in the innermost level."""
        self._check_open()
        self._store.encode_key(key)
        self._levels[-1][key] = self._store.check_value(value)

    def delete(self, key: str) -> bool:
        """Stage the deletion of ``key``; True if it existed in this transaction's view."""
        self._check_open()
        self._store.encode_key(key)
        existed = self.get(key) is not None
        self._levels[-1][key] = None
        return existed

    # ------------------------------------------------------------------ reads

    def get(self, key: str) -> bytes | None:
        self._check_open()
        staged, value = self._lookup(key)
        return value if staged else self._store.get(key)

    def entry(self, key: str) -> Entry | None:
        """As ``Store.entry``; a staged value has revision None."""
        from .store import Entry

        self._check_open()
        staged, value = self._lookup(key)
        if not staged:
            return self._store.entry(key)
        return None if value is None else Entry(key, value, None)

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
        staged = self._staged()
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
        staged = self._staged()
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
        """Open a nested level (a savepoint); return the new depth."""
        self._check_open()
        self._levels.append({})
        return len(self._levels)

    def rollback(self) -> int:
        """Undo the innermost level; at depth 1 this ends the transaction. Return the new depth."""
        self._check_open()
        self._levels.pop()
        if not self._levels:
            self._store._end_transaction(self)
        return len(self._levels)

    def abort(self) -> None:
        """Undo every level and end the transaction (a no-op once it has ended)."""
        if self._levels:
            self._levels.clear()
            self._store._end_transaction(self)

    def commit(self) -> int:
        """Apply every level as one atomic, durable record; return the number of staged writes."""
        self._check_open()
        seq, count = self._store._commit(self, self._staged())
        self._levels.clear()
        self._store._wait_durable(seq)
        return count

    async def acommit(self) -> int:
        """``commit`` for asyncio: the fsync wait happens off the event loop."""
        self._check_open()
        if self._store._rotation_due():
            import asyncio

            return await asyncio.to_thread(self.commit)
        seq, count = self._store._commit(self, self._staged())
        self._levels.clear()
        await self._store._wait_durable_async(seq)
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
