"""The Store's public behaviour: reads, writes, CAS, validation, find/scan, compaction, threads."""

from __future__ import annotations

import dataclasses
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support.engine_fixtures import OpenStore, Reopen
from support.storefiles import contents, flip_byte, hints, segments, truncate

from filekv.engine import (
    CorruptStore,
    DiskFull,
    Entry,
    InvalidKey,
    StorageError,
    Store,
    StoreClosed,
    StoreError,
    StoreFailed,
    StoreLocked,
    StoreOptions,
    Transaction,
    TransactionActive,
    TransactionClosed,
    ValueTooLarge,
    VersionMismatch,
)
from filekv.engine.fileio import FileIO

MiB = 1 << 20


# -- basics ----------------------------------------------------------------------------------------


def test_store_errors_form_one_hierarchy() -> None:
    for error in (
        StoreLocked,
        StoreClosed,
        InvalidKey,
        ValueTooLarge,
        VersionMismatch,
        TransactionActive,
        TransactionClosed,
        CorruptStore,
        StorageError,
    ):
        assert issubclass(error, StoreError)
    assert issubclass(DiskFull, StorageError)
    assert issubclass(StoreFailed, StorageError)


def test_store_open_creates_folder_and_reports_options(
    db_path: Path, open_store: OpenStore
) -> None:
    db = open_store(db_path, fsync="interval")
    assert db_path.is_dir()
    assert (db_path / "LOCK").exists()
    assert len(segments(db_path)) >= 1
    assert db.path == db_path
    assert db.options.fsync == "interval"
    assert db.closed is False
    assert len(db) == 0


def test_store_open_takes_options_and_keywords_replace_their_fields(
    db_path: Path, opened: Any
) -> None:
    options = StoreOptions(fsync="never", auto_compact=False, max_key_bytes=8)
    db = Store.open(db_path, options, max_value_bytes=16)
    opened.stores.append(db)  # checked and closed at teardown
    chosen = db.options
    assert (chosen.fsync, chosen.max_key_bytes, chosen.max_value_bytes) == ("never", 8, 16)
    with pytest.raises(InvalidKey):
        db.put("123456789", b"v")
    with pytest.raises(ValueTooLarge):
        db.put("k", b"x" * 17)


@pytest.mark.parametrize(
    "field",
    [
        {"fsync": "sometimes"},
        {"max_key_bytes": 0},
        {"fsync_interval_ms": 0},
        {"segment_bytes": 100},
        {"max_transaction_ops": 0},
    ],
    ids=lambda field: next(iter(field)),
)
def test_store_options_reject_a_value_out_of_range_when_built(field: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        StoreOptions(**field)


def test_store_put_get_entry_delete(store: Store) -> None:
    assert store.get("k") is None
    assert store.entry("k") is None
    rev = store.put("k", b"v")
    assert isinstance(rev, int)
    assert store.get("k") == b"v"
    entry = store.entry("k")
    assert entry == Entry("k", b"v", rev)
    assert (entry.key, entry.value, entry.revision) == ("k", b"v", rev)
    assert store.delete("k") is True
    assert store.get("k") is None
    assert store.entry("k") is None
    assert store.delete("k") is False


def test_store_entry_is_frozen(store: Store) -> None:
    store.put("k", b"v")
    entry = store.entry("k")
    assert entry is not None
    with pytest.raises(dataclasses.FrozenInstanceError):
        entry.value = b"other"  # type: ignore[misc]


def test_store_revisions_increase_across_reopen(store: Store, reopen: Reopen) -> None:
    seen = [store.put("a", b"1"), store.put("b", b"2"), store.put("a", b"3")]
    assert seen == sorted(seen) and len(set(seen)) == 3
    assert store.revision >= seen[-1]
    store.delete("b")
    before = store.revision
    db = reopen(store)
    assert db.revision >= before
    assert db.entry("a") == Entry("a", b"3", seen[2])
    new = db.put("c", b"4")
    assert new > before


def test_store_revision_stays_ahead_after_compacting_away_tombstones(
    store: Store, reopen: Reopen
) -> None:
    """The newest revision may be a delete that compaction drops; revisions must not go back."""
    store.put("keep", b"1")
    store.put("gone", b"2")
    store.delete("gone")
    highest = store.revision
    store.compact()
    db = reopen(store)
    assert db.revision >= highest
    assert db.put("new", b"3") > highest


def test_store_empty_value_is_a_value(store: Store, reopen: Reopen) -> None:
    rev = store.put("empty", b"")
    assert store.get("empty") == b""
    assert "empty" in store
    assert store.find(b"") == ["empty"]
    db = reopen(store)
    assert db.get("empty") == b""
    assert db.entry("empty") == Entry("empty", b"", rev)


@pytest.mark.parametrize(
    "key",
    [
        "a/b/c",
        "/leading",
        "trailing/",
        "nul\x00inside",
        "\x00",
        "ключ",
        "键",
        "emoji🙂",
        " ",
        "\n",
        "tab\tkey",
        "x" * 1024,
    ],
)
def test_store_unusual_keys_round_trip(store: Store, reopen: Reopen, key: str) -> None:
    store.put(key, b"value:" + key.encode())
    assert store.get(key) == b"value:" + key.encode()
    assert store.scan() == [key]
    db = reopen(store)
    assert db.get(key) == b"value:" + key.encode()
    assert db.scan() == [key]
    assert db.find(b"value:" + key.encode()) == [key]


def test_store_len_and_contains(store: Store) -> None:
    assert len(store) == 0
    assert "a" not in store
    store.put("a", b"1")
    store.put("b", b"2")
    store.put("a", b"3")
    assert len(store) == 2
    assert "a" in store and "b" in store and "c" not in store
    store.delete("a")
    assert len(store) == 1
    assert "a" not in store


def test_store_stats_keys(store: Store) -> None:
    store.put("a", b"1")
    stats = store.stats()
    expected = {
        "keys",
        "disk_bytes",
        "live_bytes",
        "segments",
        "fsync",
        "last_compaction",
        "recovered_truncations",
        "revision",
        "compactions",
        "compacting",
    }
    assert expected <= {field.name for field in dataclasses.fields(stats)}
    assert stats.keys == 1
    assert stats.fsync == "never"
    assert stats.segments >= 1
    assert stats.disk_bytes >= stats.live_bytes > 0
    assert stats.last_compaction is None
    assert stats.recovered_truncations == 0
    assert stats.revision == store.revision
    assert stats.compactions == 0
    assert stats.compacting is False


def test_store_stats_after_compaction_records_time(store: Store) -> None:
    store.put("a", b"1")
    store.put("a", b"2")
    store.compact()
    stats = store.stats()
    assert isinstance(stats.last_compaction, str)
    assert stats.compactions == 1


# -- compare-and-set -------------------------------------------------------------------------------

CURRENT = "current"  # placeholder for "the key's current revision"
STALE = "stale"  # a revision the key had before
FUTURE = "future"  # a revision it never had


def _resolve(expect: Any, current: int | None, stale: int) -> int | None:
    if expect == CURRENT:
        assert current is not None
        return current
    if expect == STALE:
        return stale
    if expect == FUTURE:
        return 10**9
    return expect  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("exists", "expect", "ok"),
    [
        (False, None, True),
        (True, None, True),
        (False, 0, True),
        (True, 0, False),
        (True, CURRENT, True),
        (True, STALE, False),
        (True, FUTURE, False),
        (False, STALE, False),
        (False, FUTURE, False),
    ],
)
def test_store_put_expect(store: Store, exists: bool, expect: Any, ok: bool) -> None:
    stale = store.put("k", b"old")
    current = store.put("k", b"current")
    if not exists:
        store.delete("k")
    actual = current if exists else None
    before = store.get("k")
    if ok:
        rev = store.put("k", b"new", expect=_resolve(expect, actual, stale))
        assert rev > current
        assert store.entry("k") == Entry("k", b"new", rev)
    else:
        with pytest.raises(VersionMismatch) as info:
            store.put("k", b"new", expect=_resolve(expect, actual, stale))
        assert info.value.key == "k"
        assert info.value.expected == _resolve(expect, actual, stale)
        assert info.value.actual == actual
        assert store.get("k") == before


@pytest.mark.parametrize(
    ("exists", "expect", "ok", "result"),
    [
        (True, None, True, True),
        (False, None, True, False),
        (True, CURRENT, True, True),
        (True, 0, False, None),
        (False, 0, True, False),
        (True, STALE, False, None),
        (True, FUTURE, False, None),
        (False, STALE, False, None),
    ],
)
def test_store_delete_expect(
    store: Store, exists: bool, expect: Any, ok: bool, result: bool | None
) -> None:
    stale = store.put("k", b"old")
    current = store.put("k", b"current")
    if not exists:
        store.delete("k")
    actual = current if exists else None
    if ok:
        assert store.delete("k", expect=_resolve(expect, actual, stale)) is result
        assert store.get("k") is None
    else:
        with pytest.raises(VersionMismatch) as info:
            store.delete("k", expect=_resolve(expect, actual, stale))
        assert (info.value.key, info.value.actual) == ("k", actual)
        assert store.get("k") == (b"current" if exists else None)


def test_store_put_expect_zero_after_delete(store: Store) -> None:
    store.put("k", b"1")
    store.delete("k")
    assert store.put("k", b"2", expect=0) > 0


def test_store_cas_survives_reopen(store: Store, reopen: Reopen) -> None:
    rev = store.put("k", b"1")
    db = reopen(store)
    with pytest.raises(VersionMismatch):
        db.put("k", b"x", expect=rev + 1000)
    assert db.put("k", b"2", expect=rev) > rev


# -- validation ------------------------------------------------------------------------------------

INVALID_KEYS = [
    pytest.param("", id="empty"),
    pytest.param("x" * 1025, id="1025-bytes"),
    pytest.param("é" * 513, id="513-two-byte-chars"),
    pytest.param("€" * 342, id="342-three-byte-chars"),
    pytest.param("\ud800", id="lone-surrogate"),
    pytest.param("ok\udfffok", id="surrogate-inside"),
    pytest.param(123, id="int"),
    pytest.param(None, id="none"),
    pytest.param(b"bytes", id="bytes"),
]


@pytest.mark.parametrize("key", INVALID_KEYS)
def test_store_put_rejects_invalid_key(store: Store, key: Any) -> None:
    with pytest.raises(InvalidKey):
        store.put(key, b"v")
    assert len(store) == 0
    assert store.scan() == []


@pytest.mark.parametrize("key", INVALID_KEYS)
def test_store_delete_rejects_invalid_key(store: Store, key: Any) -> None:
    with pytest.raises(InvalidKey):
        store.delete(key)


@pytest.mark.parametrize("key", INVALID_KEYS)
def test_store_transaction_put_rejects_invalid_key(store: Store, key: Any) -> None:
    with store.transaction() as tx:
        with pytest.raises(InvalidKey):
            tx.put(key, b"v")
        tx.put("fine", b"v")  # the transaction stays usable
    assert store.scan() == ["fine"]


@pytest.mark.parametrize(
    "key", ["x", "x" * 1024, "é" * 512, "€" * 341 + "x", "🙂" * 256], ids=lambda k: f"{len(k)}chars"
)
def test_store_accepts_keys_up_to_limit(store: Store, reopen: Reopen, key: str) -> None:
    assert len(key.encode()) <= 1024
    store.put(key, b"v")
    assert reopen(store).get(key) == b"v"


@pytest.mark.parametrize(
    ("limit", "key", "ok"),
    [
        (4, "abcd", True),
        (4, "abcde", False),
        (4, "éé", True),
        (4, "ééa", False),
        (2000, "x" * 2000, True),
        (2000, "x" * 2001, False),
    ],
)
def test_store_custom_key_limit(
    db_path: Path, open_store: OpenStore, limit: int, key: str, ok: bool
) -> None:
    db = open_store(db_path, max_key_bytes=limit)
    if ok:
        db.put(key, b"v")
        assert db.get(key) == b"v"
    else:
        with pytest.raises(InvalidKey):
            db.put(key, b"v")


@pytest.mark.parametrize(
    ("limit", "size", "ok"),
    [
        (None, MiB, True),
        (None, MiB + 1, False),
        (10, 10, True),
        (10, 11, False),
        (0, 0, True),
        (0, 1, False),
        (4 * MiB, 2 * MiB, True),
    ],
)
def test_store_value_limit(
    db_path: Path, open_store: OpenStore, reopen: Reopen, limit: int | None, size: int, ok: bool
) -> None:
    options = {} if limit is None else {"max_value_bytes": limit}
    db = open_store(db_path, **options)
    value = bytes(random.Random(size).getrandbits(8) for _ in range(min(size, 64))) * (
        size // 64 + 1
    )
    value = value[:size]
    if ok:
        db.put("k", value)
        assert db.get("k") == value
        assert reopen(db).get("k") == value
    else:
        with pytest.raises(ValueTooLarge):
            db.put("k", value)
        assert db.get("k") is None
        with db.transaction() as tx, pytest.raises(ValueTooLarge):
            tx.put("k", value)
        assert db.get("k") is None


# -- find and scan ---------------------------------------------------------------------------------

SCAN_KEYS = ["a", "a/1", "a/10", "a/2", "ab", "b", "b/1", "c\x00", "é", "🙂"]


@pytest.mark.parametrize(
    ("prefix", "after", "limit", "expected"),
    [
        ("", None, None, SCAN_KEYS),
        ("a", None, None, ["a", "a/1", "a/10", "a/2", "ab"]),
        ("a/", None, None, ["a/1", "a/10", "a/2"]),
        ("a/", "a/1", None, ["a/10", "a/2"]),
        ("a/", "a/10", 1, ["a/2"]),
        ("a", None, 2, ["a", "a/1"]),
        ("a", None, 0, []),
        ("", "a/15", None, ["a/2", "ab", "b", "b/1", "c\x00", "é", "🙂"]),  # after need not exist
        ("b", "a", None, ["b", "b/1"]),  # after before the prefix range
        ("a", "z", None, []),  # after beyond it
        ("zz", None, None, []),
        ("", "🙂", None, []),
        ("c", None, None, ["c\x00"]),
        ("", "", 3, ["a", "a/1", "a/10"]),
    ],
)
def test_store_scan(
    store: Store,
    reopen: Reopen,
    prefix: str,
    after: str | None,
    limit: int | None,
    expected: list[str],
) -> None:
    for key in reversed(SCAN_KEYS):
        store.put(key, b"v")
    assert store.scan(prefix, after=after, limit=limit) == expected
    db = reopen(store)
    assert db.scan(prefix, after=after, limit=limit) == expected
    assert db.find(b"v", prefix=prefix, after=after, limit=limit) == expected


def test_store_scan_prefix_is_keyword_or_positional(store: Store) -> None:
    store.put("p/1", b"v")
    store.put("q/1", b"v")
    assert store.scan("p/") == store.scan(prefix="p/") == ["p/1"]


def test_store_find_matches_exact_value(store: Store) -> None:
    store.put("a", b"x")
    store.put("b", b"xx")
    store.put("c", b"x")
    store.put("d", b"X")
    assert store.find(b"x") == ["a", "c"]
    assert store.find(b"xx") == ["b"]
    assert store.find(b"nothing") == []
    assert store.find(b"x", after="a") == ["c"]
    assert store.find(b"x", limit=1) == ["a"]
    assert store.find(b"x", prefix="c") == ["c"]


def test_store_find_after_many_overwrites(store: Store, reopen: Reopen) -> None:
    """The value index must follow every overwrite and delete, not only the first put."""
    for i in range(200):
        store.put(f"k{i:03}", b"old")
    for round_ in range(5):
        for i in range(0, 200, 2):
            store.put(f"k{i:03}", b"mid%d" % round_)
    for i in range(0, 200, 4):
        store.put(f"k{i:03}", b"new")
    for i in range(1, 200, 10):
        store.delete(f"k{i:03}")
    old = [f"k{i:03}" for i in range(1, 200, 2) if (i - 1) % 10 != 0]
    mid = [f"k{i:03}" for i in range(2, 200, 4)]
    new = [f"k{i:03}" for i in range(0, 200, 4)]

    def verify(db: Store) -> None:
        assert db.find(b"old") == old
        assert db.find(b"mid4") == mid
        assert db.find(b"new") == new
        for gone in range(4):
            assert db.find(b"mid%d" % gone) == []

    verify(store)
    db = reopen(store)
    verify(db)
    db.compact()
    verify(db)
    verify(reopen(db))


class CountingIO(FileIO):
    """Counts preads and fsyncs (and can slow fsync down to make writers queue up)."""

    def __init__(self, fsync_delay: float = 0.0) -> None:
        self.preads = 0
        self.fsyncs = 0
        self.fsync_delay = fsync_delay
        self.lock = threading.Lock()

    def pread(self, fd: int, size: int, offset: int) -> bytes:
        with self.lock:
            self.preads += 1
        return super().pread(fd, size, offset)

    def fsync(self, fd: int) -> None:
        with self.lock:
            self.fsyncs += 1
        if self.fsync_delay:
            time.sleep(self.fsync_delay)
        super().fsync(fd)


def test_store_find_does_not_read_every_value(db_path: Path, open_store: OpenStore) -> None:
    """find costs O(matches): it may check the matches on disk, never every key's value."""
    io = CountingIO()
    db = open_store(db_path, io=io)
    for i in range(2000):
        db.put(f"k{i:04}", b"common-%d" % (i % 50))
    db.put("rare", b"needle")
    db.put("rare2", b"needle")
    before = io.preads
    assert db.find(b"needle") == ["rare", "rare2"]
    assert db.find(b"absent") == []
    assert io.preads - before <= 4


def test_store_scan_does_not_read_values(db_path: Path, open_store: OpenStore) -> None:
    io = CountingIO()
    db = open_store(db_path, io=io)
    for i in range(500):
        db.put(f"k{i:04}", b"v")
    before = io.preads
    assert len(db.scan("k01")) == 100
    assert len(db) == 500
    assert "k0001" in db
    assert io.preads == before


# -- closed store ----------------------------------------------------------------------------------

CLOSED_CALLS: list[tuple[str, Callable[[Store], object]]] = [
    ("put", lambda db: db.put("k", b"v")),
    ("get", lambda db: db.get("k")),
    ("entry", lambda db: db.entry("k")),
    ("delete", lambda db: db.delete("k")),
    ("find", lambda db: db.find(b"v")),
    ("scan", lambda db: db.scan()),
    ("len", lambda db: len(db)),
    ("contains", lambda db: "k" in db),
    ("transaction", lambda db: db.transaction()),
    ("compact", lambda db: db.compact()),
]


@pytest.mark.parametrize("call", [c for _, c in CLOSED_CALLS], ids=[n for n, _ in CLOSED_CALLS])
def test_store_closed_refuses_calls(store: Store, call: Callable[[Store], object]) -> None:
    store.put("k", b"v")
    store.close()
    assert store.closed is True
    with pytest.raises(StoreClosed):
        call(store)


def test_store_context_manager_closes(db_path: Path) -> None:
    with Store.open(db_path, fsync="never") as db:
        db.put("k", b"v")
        db.check()
    assert db.closed
    with pytest.raises(StoreClosed):
        db.put("k", b"v")
    with Store.open(db_path, fsync="never") as again:
        assert again.get("k") == b"v"


def test_store_closed_transaction_refuses(store: Store) -> None:
    tx = store.transaction()
    tx.put("k", b"v")
    store.close()
    with pytest.raises((StoreClosed, TransactionClosed)):
        tx.commit()


@pytest.mark.parametrize("fsync", ["always", "interval", "never"])
def test_store_fsync_modes_persist_on_close(
    db_path: Path, open_store: OpenStore, reopen: Reopen, fsync: str
) -> None:
    db = open_store(db_path, fsync=fsync, fsync_interval_ms=5)
    for i in range(20):
        db.put(f"k{i}", b"%d" % i)
    assert db.stats().fsync == fsync
    again = reopen(db)
    assert contents(again) == {f"k{i}": b"%d" % i for i in range(20)}


# -- group commit ----------------------------------------------------------------------------------


def test_store_group_commit_shares_fsyncs(db_path: Path, open_store: OpenStore) -> None:
    """32 writers waiting on fsync="always" must not cost 32 fsyncs (fsync slowed to 30 ms)."""
    io = CountingIO(fsync_delay=0.03)
    db = open_store(db_path, fsync="always", io=io)
    start = threading.Barrier(32)
    revisions: list[int] = []

    def writer(i: int) -> None:
        start.wait()
        revisions.append(db.put(f"k{i}", b"v"))

    before = io.fsyncs
    threads = [threading.Thread(target=writer, args=(i,)) for i in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(revisions)) == 32
    assert io.fsyncs - before <= 16, f"{io.fsyncs - before} fsyncs for 32 concurrent puts"
    assert len(db) == 32


# -- compaction ------------------------------------------------------------------------------------


def _fill_with_overwrites(
    db: Store, keys: int = 20, rounds: int = 30, size: int = 500
) -> dict[str, bytes]:
    expected: dict[str, bytes] = {}
    for round_ in range(rounds):
        for i in range(keys):
            value = (b"%d-%d|" % (round_, i)).ljust(size, b".")
            db.put(f"key{i:03}", value)
            expected[f"key{i:03}"] = value
    for i in range(0, keys, 5):
        db.delete(f"key{i:03}")
        del expected[f"key{i:03}"]
    return expected


def test_store_compact_keeps_data_and_shrinks_disk(
    db_path: Path, open_store: OpenStore, reopen: Reopen
) -> None:
    db = open_store(db_path, segment_bytes=32 << 10)
    expected = _fill_with_overwrites(db)
    disk_before = db.stats().disk_bytes
    revisions = {key: db.entry(key).revision for key in expected}  # type: ignore[union-attr]
    db.compact()
    assert contents(db) == expected
    stats = db.stats()
    assert stats.disk_bytes < disk_before / 5
    assert stats.keys == len(expected)
    assert hints(db_path), "compaction writes a hint file"
    on_disk = sum(p.stat().st_size for p in segments(db_path))
    assert on_disk < disk_before / 5
    again = reopen(db)
    assert contents(again) == expected
    assert {key: again.entry(key).revision for key in expected} == revisions  # type: ignore[union-attr]
    assert again.find(expected["key001"]) == ["key001"]
    again.put("after", b"compaction")
    assert reopen(again).get("after") == b"compaction"


def test_store_compact_twice_and_write_between(store: Store, reopen: Reopen) -> None:
    expected = _fill_with_overwrites(store, keys=5, rounds=5, size=50)
    store.compact()
    store.put("x", b"1")
    store.delete("key001")
    del expected["key001"]
    expected["x"] = b"1"
    store.compact()
    assert contents(store) == expected
    assert contents(reopen(store)) == expected


def test_store_compact_empty_store(store: Store, reopen: Reopen) -> None:
    store.compact()
    assert len(store) == 0
    store.put("a", b"1")
    store.delete("a")
    store.compact()
    assert contents(reopen(store)) == {}


@pytest.mark.parametrize(
    "damage",
    [
        "flip-middle",
        "flip-first",
        "flip-last",
        "truncate-half",
        "truncate-to-1",
        "empty",
        "garbage-appended",
    ],
)
def test_store_bad_hint_file_is_ignored(
    db_path: Path, open_store: OpenStore, reopen: Reopen, damage: str
) -> None:
    db = open_store(db_path)
    expected = _fill_with_overwrites(db, keys=10, rounds=3, size=40)
    db.compact()
    db.put("later", b"write")
    expected["later"] = b"write"
    db.close()
    found = hints(db_path)
    assert found, "compaction writes a hint file"
    for hint in found:
        size = hint.stat().st_size
        if damage == "flip-middle":
            flip_byte(hint, size // 2)
        elif damage == "flip-first":
            flip_byte(hint, 0)
        elif damage == "flip-last":
            flip_byte(hint, size - 1)
        elif damage == "truncate-half":
            truncate(hint, size // 2)
        elif damage == "truncate-to-1":
            truncate(hint, 1)
        elif damage == "empty":
            truncate(hint, 0)
        else:
            with hint.open("ab") as handle:
                handle.write(b"\x01garbage" * 10)
    again = reopen(db)
    assert contents(again) == expected
    assert again.find(b"write") == ["later"]
    again.put("more", b"1")
    assert reopen(again).get("more") == b"1"


def test_store_auto_compaction_triggers(db_path: Path, open_store: OpenStore) -> None:
    db = open_store(
        db_path,
        auto_compact=True,
        compact_min_bytes=16 << 10,
        compact_dead_ratio=0.3,
        segment_bytes=16 << 10,
    )
    expected: dict[str, bytes] = {}
    for round_ in range(200):
        for i in range(10):
            value = (b"%d|" % round_).ljust(200, b"-")
            db.put(f"k{i}", value)
            expected[f"k{i}"] = value
        if db.stats().compactions > 0 and round_ > 100:
            break
    deadline = time.monotonic() + 10  # compaction runs in the background: wait for it to finish
    while (db.stats().compactions == 0 or db.stats().compacting) and time.monotonic() < deadline:
        time.sleep(0.01)
    stats = db.stats()
    assert stats.compactions >= 1
    assert stats.disk_bytes < 200 * 10 * 200  # far less than everything ever written
    assert contents(db) == expected


def test_store_reads_and_writes_during_background_compaction(
    db_path: Path, open_store: OpenStore, reopen: Reopen
) -> None:
    """Writers overwrite their own keys, readers see values only move forward, compaction loops."""
    db = open_store(
        db_path,
        auto_compact=True,
        compact_min_bytes=8 << 10,
        compact_dead_ratio=0.2,
        segment_bytes=8 << 10,
    )
    writers, keys_per_writer, steps = 3, 5, 400
    stop = threading.Event()
    errors: list[BaseException] = []
    last_written: dict[str, int] = {}

    def value(key: str, n: int) -> bytes:
        return f"{key}|{n}|".encode().ljust(150, b"#")

    def parse(key: str, raw: bytes) -> int:
        name, n, _ = raw.split(b"|", 2)
        assert name.decode() == key, f"{key!r} holds a value of {name!r}"
        assert raw == value(key, int(n)), f"{key!r} holds a damaged value"
        return int(n)

    def writer(w: int) -> None:
        try:
            for n in range(steps):
                key = f"w{w}/k{n % keys_per_writer}"
                db.put(key, value(key, n))
                last_written[key] = n
        except BaseException as error:
            errors.append(error)

    def reader() -> None:
        seen: dict[str, int] = {}
        try:
            while not stop.is_set():
                for w in range(writers):
                    for k in range(keys_per_writer):
                        key = f"w{w}/k{k}"
                        raw = db.get(key)
                        if raw is None:
                            assert key not in seen, f"{key} vanished"
                            continue
                        n = parse(key, raw)
                        assert n >= seen.get(key, -1), f"{key} went back from {seen[key]} to {n}"
                        seen[key] = n
                assert len(db.scan("w")) <= writers * keys_per_writer
        except BaseException as error:
            errors.append(error)

    def compactor() -> None:
        try:
            while not stop.is_set():
                db.compact()
                time.sleep(0.001)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(writers)]
    helpers = [
        threading.Thread(target=reader),
        threading.Thread(target=reader),
        threading.Thread(target=compactor),
    ]
    for thread in threads + helpers:
        thread.start()
    for thread in threads:
        thread.join()
    stop.set()
    for thread in helpers:
        thread.join()
    assert not errors, errors[0]
    assert db.stats().compactions >= 1
    expected = {key: value(key, n) for key, n in last_written.items()}
    assert contents(db) == expected
    for key, raw in expected.items():
        assert db.find(raw) == [key]
    assert contents(reopen(db)) == expected


def test_store_compact_while_transaction_open_keeps_both(store: Store) -> None:
    _fill_with_overwrites(store, keys=5, rounds=5, size=50)
    tx = store.transaction()
    tx.put("staged", b"1")
    store.compact()
    assert tx.get("staged") == b"1"
    tx.commit()
    assert store.get("staged") == b"1"


def test_store_transaction_returns_transaction(store: Store) -> None:
    tx = store.transaction()
    assert isinstance(tx, Transaction)
    assert tx.depth == 1 and tx.active
    tx.abort()


def test_store_value_larger_than_a_segment(
    db_path: Path, open_store: OpenStore, reopen: Reopen
) -> None:
    db = open_store(db_path, segment_bytes=4096)
    big = bytes(range(256)) * 64  # 16 KiB
    for i in range(3):
        db.put(f"big{i}", big)
        db.put(f"small{i}", b"s")
    db = reopen(db)
    assert contents(db) == {f"big{i}": big for i in range(3)} | {
        f"small{i}": b"s" for i in range(3)
    }
    db.compact()
    assert reopen(db).get("big1") == big


def test_store_value_groups_loaded_from_hints_change_correctly(
    db_path: Path, open_store: OpenStore, reopen: Reopen
) -> None:
    """Groups of keys sharing a value come back from a hint file and still take every change."""
    db = open_store(db_path)
    for i in range(6):
        db.put(f"shared/{i}", b"same")
    db.put("alone", b"other")
    db.compact()
    db = reopen(db)
    assert db.find(b"same") == [f"shared/{i}" for i in range(6)]
    db.put("shared/0", b"changed")  # leaves the group
    db.delete("shared/1")
    db.put("shared/new", b"same")  # joins it
    db.put("alone", b"same")
    assert db.find(b"same") == [
        "alone",
        "shared/2",
        "shared/3",
        "shared/4",
        "shared/5",
        "shared/new",
    ]
    assert db.find(b"changed") == ["shared/0"]
    db.check()
    for key in ("alone", "shared/2", "shared/3", "shared/4", "shared/5"):
        db.delete(key)
    assert db.find(b"same") == ["shared/new"]
    db.check()
    db = reopen(db)
    assert db.find(b"same") == ["shared/new"]
