"""filekv's storage engine: a crash-safe, log-structured key-value store in plain files.

Import everything from here::

    from filekv.engine import Store, StoreLocked, TransactionActive, VersionMismatch

The engine imports no web framework; the HTTP service is built on top of it. Owns no state:
it re-exports the public names. Who owns what inside is drawn in ``store.py``'s docstring.

The names are imported on first use (PEP 562): ``filekv.settings`` needs only ``options`` and
the CLI's client verbs none of it, and importing every module cost each ``filekv get`` a fifth
of its start-up.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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
        TransactionTooDeep,
        TransactionTooLarge,
        ValueTooLarge,
        VersionMismatch,
    )
    from .fileio import FileIO
    from .options import FsyncMode, StoreOptions
    from .stats import StoreStats
    from .store import Entry, Store
    from .transaction import Transaction

# Each public name -> the module that defines it.
_DEFINED_IN: dict[str, str] = {
    "BatchOp": "batch",
    "Change": "changes",
    "Compacted": "errors",
    "CorruptStore": "errors",
    "Delete": "batch",
    "DiskFull": "errors",
    "Entry": "store",
    "FileIO": "fileio",
    "FsyncMode": "options",
    "InvalidBatch": "errors",
    "InvalidKey": "errors",
    "InvalidTTL": "errors",
    "NoSavepoint": "errors",
    "TransactionTooDeep": "errors",
    "Put": "batch",
    "RecoveryInterrupted": "errors",
    "StorageError": "errors",
    "Store": "store",
    "StoreClosed": "errors",
    "StoreError": "errors",
    "StoreFailed": "errors",
    "StoreLocked": "errors",
    "StoreOptions": "options",
    "StoreStats": "stats",
    "Transaction": "transaction",
    "TransactionActive": "errors",
    "TransactionClosed": "errors",
    "TransactionTooLarge": "errors",
    "ValueTooLarge": "errors",
    "VersionMismatch": "errors",
}


def __getattr__(name: str) -> Any:
    module = _DEFINED_IN.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # once: later lookups never come here
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


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
    "TransactionTooDeep",
    "TransactionTooLarge",
    "ValueTooLarge",
    "VersionMismatch",
]
