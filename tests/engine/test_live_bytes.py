"""What ``stats().live_bytes`` counts: the bytes the live entries take once compacted.

Each live entry counts as the put record compaction copies it into (``merge_output.py``: one
record per entry, 39 bytes beyond its key and value, 8 more for an expiry). It is the same number
whichever way the store got to its entries (written, loaded from a hint, replayed after a crash,
replayed after a torn tail was cut), and after a compaction it is exactly what the segments hold
beyond their headers. A transaction's (or a batch's) record shares one 32-byte record header among
its operations, so right after one the live bytes exceed the record's own bytes by 32 for each
operation after the first: the headers its copies would get, not dead bytes.
"""

from __future__ import annotations

from pathlib import Path

from support.engine_fixtures import OpenStore
from support.storefiles import (
    HEADER_BYTES,
    as_after_a_crash,
    copy_store,
    last_segment,
    segments,
    truncate,
)

from filekv.engine import Store
from filekv.engine.record import RECORD_HEADER_SIZE, put_record_size

COUNT = 60
VALUE_BYTES = 64 << 10
ROOMY = {"segment_bytes": 64 << 20}  # the whole test in one segment


def _record_bytes(path: Path) -> int:
    """Bytes of the segment files beyond their headers: the records."""
    found = segments(path)
    return sum(segment.stat().st_size for segment in found) - HEADER_BYTES * len(found)


def _commit(db: Store, prefix: str) -> None:
    with db.transaction() as tx:
        for i in range(COUNT):
            tx.put(f"{prefix}{i:02d}", bytes([65 + i % 26]) * VALUE_BYTES)


def test_live_bytes_of_a_transaction_are_the_same_on_every_path(
    open_store: OpenStore, tmp_path: Path
) -> None:
    db = open_store(tmp_path / "db", **ROOMY)
    _commit(db, "big")
    copied = sum(put_record_size(f"big{i:02d}".encode(), b"x" * VALUE_BYTES) for i in range(COUNT))
    # The commit's one record: 32 bytes of header for all 60 operations, 7 for each operation.
    assert _record_bytes(db.path) == copied - RECORD_HEADER_SIZE * (COUNT - 1)
    assert db.stats().live_bytes == copied  # written by the live store
    db.close()

    crashed = as_after_a_crash(copy_store(db.path, tmp_path / "crashed"))
    db = open_store(db.path, **ROOMY)
    assert db.stats().live_bytes == copied  # loaded from the hint of the clean close
    _commit(db, "new")
    db.close()
    assert open_store(crashed, **ROOMY).stats().live_bytes == copied  # replayed

    torn = as_after_a_crash(copy_store(db.path, tmp_path / "torn"))
    newest = last_segment(torn)
    truncate(newest, newest.stat().st_size - 100)  # the second commit torn: cut at the open
    cut = open_store(torn, **ROOMY)
    assert cut.stats().recovered_truncations == 1
    assert cut.stats().live_bytes == copied
    assert cut.compact()
    assert cut.stats().live_bytes == _record_bytes(torn) == copied  # what compaction wrote


def test_live_bytes_count_the_expiry_of_a_key_that_expires(
    open_store: OpenStore, tmp_path: Path
) -> None:
    """A put with a TTL carries its ``expires_at`` (8 bytes) in its record, and so does the copy
    compaction makes: once counted without them, a compacted store of such keys had dead bytes
    forever (stats().live_bytes short of the segments by 8 a key) and ``compact()`` rewrote it
    at every call instead of answering False."""
    db = open_store(tmp_path / "db", **ROOMY)
    for i in range(100):
        db.put(f"session{i:03d}", b"token", ttl=3600)
    db.put("plain", b"value")
    db.put("session000", b"renewed", ttl=7200)  # one dead record, replaced by another TTL put
    db.put("session001", b"kept")  # a put without a TTL ends the expiry
    dead = put_record_size(b"session000", b"token", 1.0) + put_record_size(
        b"session001", b"token", 1.0
    )
    assert db.stats().live_bytes == _record_bytes(db.path) - dead
    assert db.compact()
    assert db.stats().live_bytes == _record_bytes(db.path)
    assert not db.compact(), "already compact"
    db.close()
    for reopened in (db.path, as_after_a_crash(copy_store(db.path, tmp_path / "crashed"))):
        assert open_store(reopened, **ROOMY).stats().live_bytes == _record_bytes(reopened)
