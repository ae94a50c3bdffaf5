"""Store.snapshot: one consistent view at one revision, read in key order while writes and
compactions go on; the segment files it reads are pinned, and released when it closes."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from support.engine_fixtures import OpenStore
from support.storefiles import contents

from filekv.engine import Delete, Put, Store, StoreClosed
from filekv.engine.snapshot import prefix_end


def _deleted_fds() -> int:
    """Descriptors of this process open on files that were unlinked (a pinned segment's)."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").endswith(" (deleted)"):
                count += 1
        except OSError:
            continue
    return count


def _read_all(db: Store, prefix: str = "") -> tuple[int, list[tuple[str, bytes, int]]]:
    with db.snapshot(prefix) as snap:
        return snap.revision, list(snap)


def test_snapshot_is_the_store_at_its_revision(store: Store) -> None:
    for i in range(50):
        store.put(f"k{i:03d}", f"v{i}".encode())
    expected = [(key, store.get(key), store.entry(key).revision) for key in store.scan()]  # type: ignore[union-attr]
    with store.snapshot() as snap:
        assert snap.revision == store.revision
        assert len(snap) == 50
        store.put("k000", b"changed")
        store.delete("k001")
        store.put("k0015", b"new between")
        store.put("zzz", b"new at the end")
        items = list(snap)
    assert [(key, value, revision) for key, value, revision in items] == expected
    assert all(revision <= snap.revision for _key, _value, revision in items)


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        ("", ["a", "a/1", "a/2", "ab", "b", "\U0010ffff", "\U0010ffffx"]),
        ("a", ["a", "a/1", "a/2", "ab"]),
        ("a/", ["a/1", "a/2"]),
        ("b", ["b"]),
        ("c", []),
        ("\U0010ffff", ["\U0010ffff", "\U0010ffffx"]),
    ],
)
def test_snapshot_prefix_selects_keys_in_order(
    store: Store, prefix: str, expected: list[str]
) -> None:
    for key in ["b", "a/2", "ab", "a", "\U0010ffffx", "a/1", "\U0010ffff"]:
        store.put(key, key.encode())
    _revision, items = _read_all(store, prefix)
    assert [key for key, _value, _revision in items] == expected
    assert all(value == key.encode() for key, value, _revision in items)


def test_prefix_end_is_above_every_string_with_the_prefix() -> None:
    assert prefix_end("ab") == "ac"
    assert prefix_end("a\U0010ffff") == "b"
    assert prefix_end("\U0010ffff") is None
    assert prefix_end("") is None


def test_snapshot_of_a_small_prefix_copies_only_its_keys(store: Store) -> None:
    store.batch([Put(f"big/{i:04d}", b"x") for i in range(500)])
    revision = store.put("small/1", b"one")
    with store.snapshot("small/") as snap:
        store.put("small/1", b"two")
        assert list(snap) == [("small/1", b"one", revision)]
        assert snap.revision == revision


def test_snapshot_chunk_bounds_keys_and_bytes(store: Store) -> None:
    for i in range(10):
        store.put(f"k{i}", b"x" * 100)
    with store.snapshot() as snap:
        assert len(snap.chunk(max_keys=3)) == 3
        assert len(snap.chunk(max_keys=100, max_bytes=250)) == 2
        assert len(snap.chunk(max_keys=100, max_bytes=10)) == 1  # always one at least
        assert snap.remaining == 4
        assert len(snap.chunk()) == 4
        assert snap.chunk() == []


def test_snapshot_reads_values_compaction_deleted(open_store: OpenStore, db_path: Path) -> None:
    db = open_store(db_path, segment_bytes=4096)
    for i in range(200):
        db.put(f"k{i:03d}", f"old {i}".encode() * 10)
    before = _deleted_fds()
    with db.snapshot() as snap:
        for i in range(200):
            db.put(f"k{i:03d}", b"new")
        assert db.compact()
        pins = db._segments.pins
        # The merged-away files are gone from the directory, as without a snapshot ...
        on_disk = {p.name for p in db_path.glob("*.seg")}
        assert len(on_disk) == db.stats().segments
        # ... but their descriptors stay open for the snapshot.
        assert pins.retired > 0
        assert _deleted_fds() > before
        items = list(snap)
    assert [value for _key, value, _revision in items] == [
        f"old {i}".encode() * 10 for i in range(200)
    ]
    assert pins.retired == 0 and pins.pinned == 0
    assert _deleted_fds() == before  # no descriptor leaked
    assert all(value == b"new" for value in contents(db).values())


def test_snapshot_of_loaded_columns_keeps_its_locations_while_compaction_moves_them(
    open_store: OpenStore, db_path: Path
) -> None:
    """Keys an open loaded as columns (key_columns.py) are moved by compaction in place; a
    snapshot taken before reads the places it saw, in the segments it pinned."""
    db = open_store(db_path, segment_bytes=4096)
    for i in range(200):
        db.put(f"k{i:03d}", f"v {i}".encode() * 10)
    for i in range(0, 200, 2):
        db.delete(f"k{i:03d}")  # dead records: compaction has something to drop
    db.close()
    db = open_store(db_path, segment_bytes=4096)
    with db.snapshot() as snap:
        assert db.compact()
        assert db._segments.pins.retired > 0, "the snapshot pins segments compaction deleted"
        items = [(key, value) for key, value, _revision in snap]
    assert items == [(f"k{i:03d}", f"v {i}".encode() * 10) for i in range(1, 200, 2)]
    db.check()


def test_snapshot_consistent_while_writers_and_compaction_run(
    open_store: OpenStore, db_path: Path
) -> None:
    """Each write's revision is logged; the snapshot must equal the log replayed up to its
    revision, key for key, while 3 writers and a compaction loop run."""
    db = open_store(db_path, segment_bytes=16 << 10)
    keys = [f"key/{i:04d}" for i in range(400)]
    log: list[tuple[int, str, bytes | None]] = []
    log_lock = threading.Lock()
    for key in keys:
        log.append((db.put(key, b"initial " + key.encode()), key, b"initial " + key.encode()))
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer(seed: int) -> None:
        rng = random.Random(seed)
        try:
            while not stop.is_set():
                key = rng.choice(keys)
                if rng.random() < 0.2:
                    revision = db.batch([Delete(key)])
                    entry: tuple[int, str, bytes | None] = (revision, key, None)
                else:
                    value = f"{seed}:{rng.random()}".encode() * rng.randint(1, 20)
                    entry = (db.put(key, value), key, value)
                with log_lock:
                    log.append(entry)
        except BaseException as error:
            errors.append(error)

    def compactor() -> None:
        try:
            while not stop.is_set():
                db.compact()
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=writer, args=(seed,)) for seed in range(3)]
    threads.append(threading.Thread(target=compactor))
    for thread in threads:
        thread.start()
    try:
        views = []
        for _ in range(5):
            with db.snapshot("key/") as snap:
                items = []
                while chunk := snap.chunk(max_keys=37):
                    items.extend(chunk)
                views.append((snap.revision, items))
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert not errors
    assert db.stats().compactions > 0
    for revision, items in views:
        expected: dict[str, tuple[bytes, int]] = {}
        # A delete of an absent key writes nothing: its revision is the latest write's.
        for at, key, value in sorted(log, key=lambda entry: entry[0]):
            if at > revision:
                break
            if value is None:
                expected.pop(key, None)
            else:
                expected[key] = (value, at)
        assert [key for key, _v, _r in items] == sorted(expected)
        assert {key: (value, rev) for key, value, rev in items} == expected
    assert db._segments.pins.pinned == 0 and db._segments.pins.retired == 0


def test_close_with_a_snapshot_open_then_reading_raises(
    open_store: OpenStore, db_path: Path
) -> None:
    db = open_store(db_path, segment_bytes=4096)
    for i in range(100):
        db.put(f"k{i:03d}", b"v" * 50)
    before = _deleted_fds()
    snap = db.snapshot()
    for i in range(100):
        db.put(f"k{i:03d}", b"w")
    db.compact()
    assert snap.chunk(max_keys=10)
    db.close()
    assert _deleted_fds() == before  # close closed the pinned descriptors too
    with pytest.raises(StoreClosed):
        snap.chunk()
    snap.close()  # after the store closed: nothing left to do, no error
    with pytest.raises(StoreClosed):
        db.snapshot()
    reopened = open_store(db_path)
    assert contents(reopened) == {f"k{i:03d}": b"w" for i in range(100)}


def test_close_waits_for_a_chunk_being_read(open_store: OpenStore, db_path: Path) -> None:
    db = open_store(db_path)
    db.put("k", b"v")
    snap = db.snapshot()
    pins = db._segments.pins
    closed = threading.Event()
    with pins.reading():  # as a chunk being read would
        closer = threading.Thread(target=lambda: (db.close(), closed.set()))
        closer.start()
        assert not closed.wait(0.2)
    closer.join(5)
    assert closed.is_set()
    snap.close()


def test_crash_with_a_pin_held_leaves_a_store_that_opens_with_the_latest_data(
    tmp_path: Path,
) -> None:
    """SIGKILL while a snapshot pins segments compaction deleted: the folder is what it would be
    without the snapshot, so the next open finds exactly the latest writes and no extra file."""
    path = tmp_path / "db"
    script = textwrap.dedent(
        f"""
        import os, signal
        from filekv.engine import Store
        db = Store.open({str(path)!r}, fsync="always", auto_compact=False, segment_bytes=4096)
        for i in range(100):
            db.put(f"k{{i:03d}}", b"old" * 20)
        snap = db.snapshot()
        for i in range(100):
            db.put(f"k{{i:03d}}", b"new")
        db.compact()
        assert snap.chunk(max_keys=5)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], check=False, timeout=60)
    assert result.returncode == -signal.SIGKILL
    with Store.open(path, fsync="never", auto_compact=False) as db:
        assert contents(db) == {f"k{i:03d}": b"new" for i in range(100)}
        assert len(list(path.glob("*.seg"))) == db.stats().segments
        db.check()
