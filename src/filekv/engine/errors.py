"""The engine's errors: one hierarchy, so callers can catch ``StoreError`` or any branch.

::

    StoreError
    ├── StoreLocked            another process holds the data directory
    ├── StoreClosed            the store was closed
    ├── InvalidKey             empty, too long, or not encodable as UTF-8
    ├── ValueTooLarge          value over the configured limit
    ├── VersionMismatch        ``expect=`` did not match the key's revision
    ├── InvalidBatch           a batch with no operation
    ├── TransactionActive      a write or a second transaction while one is open
    ├── TransactionClosed      the transaction has already ended
    ├── NoSavepoint            release at depth 1: there is no nested level to merge
    ├── TransactionTooLarge    a staged write would pass the transaction's byte or op limit
    ├── TransactionTooDeep     a nested begin past the transaction's depth limit
    ├── RecoveryInterrupted    open() was asked to stop while it was still reading the files
    ├── Compacted              changes asked for from a revision compaction no longer keeps
    ├── CorruptStore           damage that is not a torn tail: names the file and offset
    └── StorageError           an operating-system I/O call failed
        ├── DiskFull           ENOSPC: nothing was written; retry once space is freed
        └── StoreFailed        an fsync failed: the store refuses writes until reopened

Owns no state: the classes only.
"""

from __future__ import annotations


class StoreError(Exception):
    """Base class of every error the engine raises on purpose."""


class StoreLocked(StoreError):
    """Another process (or another open Store) holds this data directory."""


class StoreClosed(StoreError):
    """The store was used after ``close()``."""


class InvalidKey(StoreError):
    """The key is empty, longer than the limit in UTF-8 bytes, or not valid text."""

    # In a batch, the index of the operation whose key it is (the message names it too).
    op_index: int | None = None


class ValueTooLarge(StoreError):
    """The value is longer than the configured limit."""


class InvalidBatch(StoreError):
    """A batch that cannot be applied as written (no operation at all).

    ``op_index`` names the operation at fault, if one is (None for an empty batch).
    """

    def __init__(self, message: str, op_index: int | None = None) -> None:
        self.op_index = op_index
        super().__init__(message)


class InvalidTTL(StoreError, ValueError):
    """A time to live that is not a number of seconds above 0 and at most ten years."""

    op_index: int | None = None  # in a batch: the operation at fault


class VersionMismatch(StoreError):
    """A compare-and-set (``expect=``) did not match the key's current revision."""

    def __init__(
        self,
        key: str,
        expected: int,
        actual: int | None,
        *,
        staged: bool = False,
        op_index: int | None = None,
    ) -> None:
        self.key = key
        self.expected = expected
        self.actual = actual  # None: absent, or (staged) written in this transaction
        self.op_index = op_index  # in a batch: the first operation whose condition failed
        if staged:
            current = "written in this transaction (no revision until commit)"
        else:
            current = "absent" if actual is None else str(actual)
        where = "" if op_index is None else f"op {op_index} (key {key!r}): "
        super().__init__(f"{where}revision mismatch: expected {expected}, current {current}")


class TransactionActive(StoreError):
    """A transaction is open: the store is read-only for every other writer."""


class TransactionClosed(StoreError):
    """The transaction has already been committed or rolled back."""


class NoSavepoint(StoreError):
    """``release`` at depth 1: there is no nested level to merge (commit or roll back instead)."""


class TransactionTooLarge(StoreError):
    """Staging this write would take the transaction past its byte or operation limit.

    Nothing was staged; the transaction stays open with what it had.
    """


class TransactionTooDeep(StoreError):
    """A nested ``begin`` would pass the transaction's depth limit (``transaction.MAX_DEPTH``).

    No level was opened; the transaction stays open as it was.
    """


class RecoveryInterrupted(StoreError):
    """``Store.open`` was asked to stop (``should_stop``) before recovery finished.

    Recovery only reads until it has scanned everything, so nothing on disk was changed.
    """


class Compacted(StoreError):
    """The changes after a revision were asked for, but compaction has dropped some of them.

    ``oldest_available`` is the oldest revision the change feed can still deliver: ask again
    from there (or read the keys afresh).
    """

    def __init__(self, asked: int, oldest_available: int) -> None:
        self.asked = asked
        self.oldest_available = oldest_available
        super().__init__(
            f"revision {asked} is no longer in the change history (compacted); "
            f"the oldest available is {oldest_available}"
        )


class CorruptStore(StoreError):
    """Damage inside a file that cannot be a torn tail; the store refuses to guess."""

    def __init__(self, path: str, offset: int, reason: str) -> None:
        self.path = path
        self.offset = offset
        self.reason = reason
        super().__init__(f"{path}: corrupt at offset {offset}: {reason}")


class StorageError(StoreError):
    """An operating-system I/O call (write, fsync, rename, ...) failed."""


class DiskFull(StorageError):
    """The disk is full: the write was not done; it can be retried once space is freed."""


class StoreFailed(StorageError):
    """An fsync failed, so what is on disk is unknown: writes are refused until reopened."""
