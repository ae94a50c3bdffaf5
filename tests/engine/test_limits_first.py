"""A value or key over the store's limit is refused before any work proportional to it is done.

``check_value`` copied a ``bytearray`` or ``memoryview`` into ``bytes`` and only then compared
its length with ``max_value_bytes``: a 64 MiB view against a 1 MiB limit allocated 64 MiB to
refuse it (put, batch and transaction alike). A key is refused by its length in characters
before it is encoded when it is too long whatever its UTF-8 (over four bytes per character).
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest
from support.engine_fixtures import FAST

from filekv.engine import InvalidKey, Store, ValueTooLarge
from filekv.engine.batch import Put

LIMIT = 1 << 20
HUGE = 64 << 20


def _put(db: Store, key: str, value: object) -> None:
    db.put(key, value)  # type: ignore[arg-type]


def _batch(db: Store, key: str, value: object) -> None:
    db.batch([Put("first", b"ok"), Put(key, value)])  # type: ignore[arg-type]


def _transaction(db: Store, key: str, value: object) -> None:
    with db.transaction() as tx:
        tx.put(key, value)  # type: ignore[arg-type]


WRITES = [_put, _batch, _transaction]


def _peak_while(action: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        action()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


@pytest.mark.parametrize("write", WRITES, ids=lambda w: w.__name__.strip("_"))
@pytest.mark.parametrize("kind", ["memoryview", "bytearray", "memoryview of u32"])
def test_limits_first_a_value_over_the_limit_is_refused_before_it_is_copied(
    tmp_path: Path, write: Callable[[Store, str, object], None], kind: str
) -> None:
    db = Store.open(tmp_path / "db", **{**FAST, "max_value_bytes": LIMIT})
    try:
        buffer = bytearray(HUGE)
        value: object = {
            "memoryview": memoryview(buffer),
            "bytearray": buffer,
            "memoryview of u32": memoryview(buffer).cast("I"),  # len() counts items, not bytes
        }[kind]

        def attempt() -> None:
            with pytest.raises(ValueTooLarge, match=f"{HUGE} bytes"):
                write(db, "k", value)

        assert _peak_while(attempt) < LIMIT  # no copy of the 64 MiB
        assert db.get("k") is None and db.get("first") is None
        write(db, "small", memoryview(b"abc"))  # within the limit: copied and written
        assert db.get("small") == b"abc"
    finally:
        db.close()


@pytest.mark.parametrize("write", WRITES, ids=lambda w: w.__name__.strip("_"))
def test_limits_first_a_key_far_over_the_limit_is_refused_before_it_is_encoded(
    tmp_path: Path, write: Callable[[Store, str, object], None]
) -> None:
    db = Store.open(tmp_path / "db", **FAST)
    try:
        key = "k" * HUGE
        refused: list[InvalidKey] = []

        def attempt() -> None:
            try:
                write(db, key, b"v")
            except InvalidKey as error:
                refused.append(error)

        assert _peak_while(attempt) < LIMIT  # no 64 MiB of UTF-8
        assert refused and "the limit is 1024" in str(refused[0])
        with pytest.raises(InvalidKey, match="the key is 1025 bytes in UTF-8"):
            write(db, "k" * 1025, b"v")  # near the limit: the exact count, as before
    finally:
        db.close()
