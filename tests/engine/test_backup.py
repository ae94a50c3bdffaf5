"""``Store.backup``: a verified copy as of one revision, taken while writes and compactions go on.

Each test checks the copy by opening it as a store and comparing it with what the live store held
at the backup's revision, known from the writes' own revisions.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from support.engine_fixtures import FAST, OpenStore

from filekv.engine import CorruptStore, Delete, Store, StoreClosed
from filekv.engine.backup import (
    STAGING_PREFIX,
    remove_stale_staging,
    verify_copy,
    verify_copy_in_child,
)
from filekv.engine.segment import hint_name, segment_name

SMALL = {"segment_bytes": 4096}  # a few records per segment: many sealed segments quickly


def _contents(db: Store) -> dict[str, bytes]:
    return {key: db.get(key) or b"" for key in db.scan()}


def _state_at(history: list[tuple[str, bytes | None, int]], revision: int) -> dict[str, bytes]:
    """What the store held at ``revision``: each key's last write at or before it."""
    state: dict[str, bytes] = {}
    for key, value, written_at in sorted(history, key=lambda item: item[2]):
        if written_at > revision:
            break
        if value is None:
            state.pop(key, None)
        else:
            state[key] = value
    return state


def _open_copy(path: Path) -> Store:
    db = Store.open(path, **FAST)
    db.check()
    return db


def test_backup_copy_opens_with_the_same_keys_values_and_revision(
    open_store: OpenStore, tmp_path: Path
) -> None:
    db = open_store(tmp_path / "live", **SMALL)
    for i in range(200):
        db.put(f"k{i:03d}", f"value {i}".encode() * 3)
    for i in range(0, 200, 7):
        db.delete(f"k{i:03d}")
    expected = _contents(db)

    result = db.backup(tmp_path / "copy")

    assert result["revision"] == db.revision
    assert result["keys"] == len(expected)
    names = os.listdir(tmp_path / "copy")
    assert result["files"] == len(names) > 2
    assert result["bytes"] == sum(os.path.getsize(tmp_path / "copy" / n) for n in names)
    with _open_copy(tmp_path / "copy") as copy:
        assert _contents(copy) == expected
        assert copy.revision == result["revision"]


def test_backup_is_independent_of_the_live_store_both_ways(
    open_store: OpenStore, tmp_path: Path
) -> None:
    db = open_store(tmp_path / "live", **SMALL)
    for i in range(50):
        db.put(f"k{i}", b"before")
    db.backup(tmp_path / "copy")
    db.put("k1", b"after the backup")
    db.delete("k2")
    db.compact()  # deletes the live files the copy was linked from
    with _open_copy(tmp_path / "copy") as copy:
        assert copy.get("k1") == b"before" and copy.get("k2") == b"before"
        copy.put("k3", b"written to the copy")  # its newest segment is its own file
        copy.compact()
    assert db.get("k3") == b"before"
    assert db.get("k1") == b"after the backup" and db.get("k2") is None
    db.check()


def test_backup_keeps_the_revision_when_no_record_holds_it(
    open_store: OpenStore, tmp_path: Path
) -> None:
    db = open_store(tmp_path / "live")
    db.put("gone", b"x")
    db.delete("gone")
    db.compact()  # no record is left; only the new segment's header holds revision 2
    result = db.backup(tmp_path / "copy")
    assert result["revision"] == 2
    with _open_copy(tmp_path / "copy") as copy:
        assert len(copy) == 0 and copy.revision == 2


def test_backup_of_an_empty_store(open_store: OpenStore, tmp_path: Path) -> None:
    db = open_store(tmp_path / "live")
    result = db.backup(tmp_path / "copy")
    assert (result["revision"], result["keys"], result["files"]) == (0, 0, 1)
    with _open_copy(tmp_path / "copy") as copy:
        copy.put("a", b"1")
        assert copy.revision == 1


def test_backup_links_the_hint_of_the_segment_it_sealed(
    open_store: OpenStore, tmp_path: Path
) -> None:
    db = open_store(tmp_path / "live", segment_bytes=1 << 16)
    db.put("a", b"1")
    db.put("b", b"x" * (1 << 15))  # the active segment is half full: the backup seals it
    db.backup(tmp_path / "copy")
    first = tmp_path / "copy" / segment_name(1)
    assert (tmp_path / "copy" / hint_name(1)).exists() and first.exists()
    assert os.stat(first).st_ino == os.stat(tmp_path / "live" / segment_name(1)).st_ino
    assert len(list((tmp_path / "live").glob("*.seg"))) == 2  # the sealed one, a new one


def test_backup_copies_an_active_segment_less_than_half_full_instead_of_sealing_it(
    open_store: OpenStore, tmp_path: Path
) -> None:
    """A store backed up more often than it fills a segment: each backup sealed the active
    segment, one more segment (and file descriptor) per backup, never compacted while small
    (300 backups of one write each left 301 segments). The copy holds the records all the same,
    is its own file, and opens with every key, at the backup's revision."""
    db = open_store(tmp_path / "live")
    for i in range(30):
        db.put(f"k{i}", f"v{i}".encode())
        result = db.backup(tmp_path / f"copy{i}")
        assert result["revision"] == db.revision
    assert sorted(p.name for p in (tmp_path / "live").glob("*.seg")) == [segment_name(1)]
    db.put("after", b"the last backup")
    for i in (0, 29):
        copy_dir = tmp_path / f"copy{i}"
        assert not list(copy_dir.glob("*.copying"))
        copied = copy_dir / segment_name(1)
        assert os.stat(copied).st_ino != os.stat(tmp_path / "live" / segment_name(1)).st_ino
        with _open_copy(copy_dir) as copy:
            assert _contents(copy) == {f"k{j}": f"v{j}".encode() for j in range(i + 1)}
            assert copy.revision == i + 1
            copy.put("own", b"write")  # appended to the copy's own newest segment
    assert db.get("own") is None and db.get("k0") == b"v0"
    db.check()


@pytest.mark.parametrize("writers", [8])
def test_backup_while_writers_run_holds_exactly_the_writes_up_to_its_revision(
    open_store: OpenStore, tmp_path: Path, writers: int
) -> None:
    db = open_store(tmp_path / "live", **SMALL, auto_compact=True, compact_min_bytes=16 << 10)
    history: list[tuple[str, bytes | None, int]] = []
    stop = threading.Event()

    def write(worker: int) -> None:
        done: list[tuple[str, bytes | None, int]] = []
        present: set[str] = set()
        i = 0
        while not stop.is_set() and i < 20_000:
            key = f"w{worker}/k{i % 40}"  # overwrites, so compaction has dead bytes to drop
            if i % 9 == 8 and key in present:
                # Only this worker writes its keys: the delete is written, at this revision.
                done.append((key, None, db.batch([Delete(key)])))
                present.discard(key)
            else:
                value = f"{worker}:{i}".encode()
                done.append((key, value, db.put(key, value)))
                present.add(key)
            i += 1
        history.extend(done)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
    for thread in threads:
        thread.start()
    results = []
    try:
        for n in range(3):
            start = db.revision
            while db.revision < start + 500 and any(t.is_alive() for t in threads):
                time.sleep(0.001)
            results.append((n, db.backup(tmp_path / f"copy{n}")))
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert db.stats().compactions > 0  # compaction ran meanwhile
    assert results[-1][1]["revision"] < db.revision  # writes went on after the last backup
    for n, result in results:
        with _open_copy(tmp_path / f"copy{n}") as copy:
            assert copy.revision == result["revision"]
            assert _contents(copy) == _state_at(history, result["revision"]), n
            assert len(copy) == result["keys"]


def test_backup_refuses_a_destination_that_is_not_empty(
    open_store: OpenStore, tmp_path: Path
) -> None:
    db = open_store(tmp_path / "live")
    (tmp_path / "copy").mkdir()
    (tmp_path / "copy" / "something").write_text("mine")
    with pytest.raises(FileExistsError):
        db.backup(tmp_path / "copy")
    assert os.listdir(tmp_path / "copy") == ["something"]


def test_backup_of_a_closed_store_is_refused(tmp_path: Path) -> None:
    db = Store.open(tmp_path / "live", **FAST)
    db.close()
    with pytest.raises(StoreClosed):
        db.backup(tmp_path / "copy")


def test_backup_to_another_file_system_copies_through_a_staging_folder(
    open_store: OpenStore, tmp_path: Path
) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs /dev/shm on another file system")
    db = open_store(tmp_path / "live", **SMALL)
    for i in range(100):
        db.put(f"k{i}", b"v" * 100)
    destination = shm / f"filekv-test-{os.getpid()}-{id(db)}"
    try:
        result = db.backup(destination)
        assert not [n for n in os.listdir(tmp_path / "live") if n.startswith(STAGING_PREFIX)]
        with _open_copy(destination) as copy:
            assert _contents(copy) == _contents(db)
            assert copy.revision == result["revision"]
    finally:
        for name in os.listdir(destination) if destination.exists() else []:
            (destination / name).unlink()
        if destination.exists():
            destination.rmdir()


def test_verify_copy_names_the_damaged_segment_and_offset(
    open_store: OpenStore, tmp_path: Path
) -> None:
    db = open_store(tmp_path / "live", **SMALL)
    for i in range(60):
        db.put(f"k{i}", b"v" * 200)
    db.backup(tmp_path / "copy")
    damaged = tmp_path / "copy" / segment_name(2)
    data = bytearray(damaged.read_bytes())  # a link: write a new file, never into the live one
    damaged.unlink()
    data[-10] ^= 0xFF
    damaged.write_bytes(bytes(data))
    with pytest.raises(CorruptStore) as raised:
        verify_copy(tmp_path / "copy")
    assert raised.value.path == str(damaged) and raised.value.offset > 0
    db.check()  # the live store's segment was not touched


def test_verify_copy_in_child_finds_what_verify_copy_finds(
    open_store: OpenStore, tmp_path: Path
) -> None:
    db = open_store(tmp_path / "live", **SMALL)
    for i in range(60):
        db.put(f"k{i}", b"v" * 200)
    db.backup(tmp_path / "copy", verify_in_child=True)
    verify_copy_in_child(tmp_path / "copy")  # a sound copy: no error
    damaged = tmp_path / "copy" / segment_name(2)
    data = bytearray(damaged.read_bytes())
    damaged.unlink()
    data[-10] ^= 0xFF
    damaged.write_bytes(bytes(data))
    with pytest.raises(CorruptStore) as here:
        verify_copy(tmp_path / "copy")
    with pytest.raises(CorruptStore) as there:
        verify_copy_in_child(tmp_path / "copy")
    assert (there.value.path, there.value.offset, there.value.reason) == (
        here.value.path,
        here.value.offset,
        here.value.reason,
    )


def test_verify_copy_drops_a_damaged_hint(open_store: OpenStore, tmp_path: Path) -> None:
    db = open_store(tmp_path / "live", **SMALL)
    for i in range(60):
        db.put(f"k{i}", b"v" * 200)
    expected = _contents(db)
    db.backup(tmp_path / "copy")
    hint = tmp_path / "copy" / hint_name(1)
    data = bytearray(hint.read_bytes())
    hint.unlink()
    data[20] ^= 0xFF
    hint.write_bytes(bytes(data))
    verify_copy(tmp_path / "copy")
    assert not hint.exists()
    with _open_copy(tmp_path / "copy") as copy:
        assert _contents(copy) == expected


def test_remove_stale_staging_removes_only_staging_folders(tmp_path: Path) -> None:
    (tmp_path / f"{STAGING_PREFIX}abc").mkdir()
    (tmp_path / f"{STAGING_PREFIX}abc" / segment_name(1)).write_bytes(b"x")
    (tmp_path / "keep").mkdir()
    assert remove_stale_staging(tmp_path) == 1
    assert os.listdir(tmp_path) == ["keep"]
