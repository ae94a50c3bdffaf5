"""Engine test fixtures: a ``store`` checked for consistency at teardown, a ``reopen`` helper.

Every store a test opens through ``open_store`` or ``reopen`` is checked (``db.check()``) and
closed at teardown, the way bbolt's tests end with a consistency check. What test modules import
(``FAST``, ``OpenStore``, ``Reopen``) is in ``support.engine_fixtures``, never in this file.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.engine_fixtures import FAST, OpenStore, Reopen

from filekv.engine import Store


class _Opened:
    """Remembers every store a test opened, with its options, to check and close it at teardown."""

    def __init__(self) -> None:
        self.stores: list[Store] = []
        self.options: dict[int, dict[str, Any]] = {}

    def open(self, path: Path, **options: Any) -> Store:
        merged = {**FAST, **options}
        db = Store.open(path, **merged)
        self.stores.append(db)
        self.options[id(db)] = merged
        return db

    def reopen(self, db: Store, **options: Any) -> Store:
        merged = {**self.options.get(id(db), FAST), **options}
        if not db.closed:
            db.check()
            db.close()
        return self.open(db.path, **merged)

    def finish(self) -> None:
        errors: list[BaseException] = []
        for db in self.stores:
            if db.closed:
                continue
            try:
                db.check()
            except BaseException as error:  # report after closing everything
                errors.append(error)
            finally:
                db.close()
        if errors:
            raise errors[0]


@pytest.fixture
def opened() -> Iterator[_Opened]:
    tracker = _Opened()
    yield tracker
    tracker.finish()


@pytest.fixture
def open_store(opened: _Opened) -> OpenStore:
    """``open_store(path, **options)``: Store.open with the fast defaults, checked at teardown."""
    return opened.open


@pytest.fixture
def reopen(opened: _Opened) -> Reopen:
    """``reopen(db, **options)``: close ``db`` and open its folder again with the same options."""
    return opened.reopen


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "db"


@pytest.fixture
def store(open_store: OpenStore, db_path: Path) -> Store:
    return open_store(db_path)
