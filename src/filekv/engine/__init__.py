"""filekv's storage engine: a crash-safe, log-structured key-value store in plain files.

Import everything from here::

    from filekv.engine import Store, StoreLocked, TransactionActive, VersionMismatch

The engine imports no web framework; the HTTP service is built on top of it. Owns no state:
it re-exports the public names. Who owns what inside is drawn in ``store.py``'s docstring.
"""

from __future__ import annotations

from .batch import BatchOp, Delete, Put
from .changes import Change
from .errors import (
    Compacted,
    CorruptStore,
    DiskFull,
    InvalidBatch,
    InvalidKey,
    InvalidTTL,
    NoSavepoint,
    RecoveryInterrupted,
    StorageError,
    StoreClosed,
    StoreError,
    StoreFailed,
    StoreLocked,
    TransactionActive,
    TransactionClosed,
    TransactionTooLarge,
    ValueTooLarge,
    VersionMismatch,
)
from .fileio import FileIO
from .options import FsyncMode, StoreOptions
from .stats import StoreStats
from .store import Entry, Store
from .transaction import Transaction

__all__ = [
    "BatchOp",
    "Change",
    "Compacted",
    "CorruptStore",
    "Delete",
    "DiskFull",
    "Entry",
    "FileIO",
    "FsyncMode",
    "InvalidBatch",
    "InvalidKey",
    "InvalidTTL",
    "NoSavepoint",
    "Put",
    "RecoveryInterrupted",
    "StorageError",
    "Store",
    "StoreClosed",
    "StoreError",
    "StoreFailed",
    "StoreLocked",
    "StoreOptions",
    "StoreStats",
    "Transaction",
    "TransactionActive",
    "TransactionClosed",
    "TransactionTooLarge",
    "ValueTooLarge",
    "VersionMismatch",
]
