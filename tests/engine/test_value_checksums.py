"""Damage at rest in a value that no open reads back: a read must say so, never return it.

A sealed segment loaded from its hint file, and the part of the newest segment its hint covers,
are not read at open (that is the point of hints). A byte of a value there that flips afterwards
(media damage, a stray write) used to come back from ``get`` as if it were the value written:
silently wrong data. Each location holds the value's CRC-32, so every read of a value checks it
(``SegmentSet.read_value``), as do snapshots and compaction, which would otherwise copy the
damaged bytes into a record with good checksums and make the damage look sound.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support.engine_fixtures import FAST
from support.storefiles import hints, segments

from filekv.engine import CorruptStore, Store

VALUE = b"the value of %03d, written once and never changed"


def _written(path: Path, **options: object) -> dict[str, bytes]:
    """A closed store of 60 keys over several small sealed segments, each with its hint."""
    expected = {f"k{i:03d}": VALUE % i for i in range(60)}
    db = Store.open(path, **{**FAST, "segment_bytes": 4096, **options})
    for key, value in expected.items():
        db.put(key, value)
    db.close()
    return expected


def _value_offsets(segment: Path, expected: dict[str, bytes]) -> list[int]:
    data = segment.read_bytes()
    found = [data.find(value) for value in expected.values()]
    return [offset for offset in found if offset != -1]


def test_value_checksums_a_flipped_value_byte_in_a_hinted_segment_is_never_served(
    tmp_path: Path,
) -> None:
    path = tmp_path / "db"
    expected = _written(path)
    first = segments(path)[0]
    assert len(segments(path)) >= 2 and first.with_suffix(".hint") in hints(path)
    offsets = _value_offsets(first, expected)
    assert offsets
    pristine = first.read_bytes()
    checked = refused = 0
    for offset in offsets:
        for at in (offset, offset + 7, offset + len(VALUE % 0) - 1):
            damaged = bytearray(pristine)
            damaged[at] ^= 0x01
            first.write_bytes(bytes(damaged))
            db = Store.open(path, **FAST)  # loaded from the hint: the damage is not read
            try:
                for key, value in expected.items():
                    try:
                        got = db.get(key)
                    except CorruptStore as error:
                        assert "checksum" in str(error)
                        refused += 1
                        continue
                    assert got == value, f"{key}: wrong value served after a flip at {at}"
                    checked += 1
            finally:
                db.close()
    first.write_bytes(pristine)
    assert refused == 3 * len(offsets)
    assert checked == 3 * len(offsets) * (len(expected) - 1)


def test_value_checksums_damage_before_the_newest_segments_hint_ends_is_never_served(
    tmp_path: Path,
) -> None:
    """A clean close writes the newest segment's hint: the next open replays none of it."""
    path = tmp_path / "db"
    expected = _written(path, segment_bytes=1 << 20)
    newest = segments(path)[-1]
    assert newest.with_suffix(".hint").exists()
    at = _value_offsets(newest, expected)[5] + 3
    damaged = bytearray(newest.read_bytes())
    damaged[at] ^= 0x40
    newest.write_bytes(bytes(damaged))
    db = Store.open(path, **FAST)
    try:
        with pytest.raises(CorruptStore, match="checksum"):
            db.get("k005")
        with pytest.raises(CorruptStore, match="checksum"):
            db.entry("k005")
        assert db.get("k004") == expected["k004"]
        with pytest.raises(CorruptStore, match="value of 'k005': value fails its checksum"):
            db.check()  # names the key, as before
        with db.snapshot() as snap, pytest.raises(CorruptStore, match="checksum"):
            list(snap)
    finally:
        db.close()


def test_value_checksums_compaction_does_not_copy_a_damaged_value_into_a_sound_record(
    tmp_path: Path,
) -> None:
    path = tmp_path / "db"
    expected = _written(path)
    first = segments(path)[0]
    at = _value_offsets(first, expected)[0] + 2
    damaged = bytearray(first.read_bytes())
    damaged[at] ^= 0x01
    first.write_bytes(bytes(damaged))
    db = Store.open(path, **FAST)
    try:
        with pytest.raises(CorruptStore, match="checksum"):
            db.compact()
        assert not list(path.glob("*.seg.tmp")), "the unfinished output is removed"
    finally:
        db.close()
    # Nothing was rewritten: the damaged segment is still there, still refused, never laundered.
    assert first.exists()
    db = Store.open(path, **FAST)
    try:
        with pytest.raises(CorruptStore):
            db.get("k000")
        assert db.get("k059") == expected["k059"]
    finally:
        db.close()


def test_value_checksums_a_damaged_live_value_pauses_automatic_compaction_until_rewritten(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Every automatic compaction failed on the damaged value alike, each sealing a segment and
    keeping the outputs it finished: tried every 1,024 writes, the store grew by segments of
    copies (22 failures, 4.7 MB in 72 segments where a sound store stays at 0.4 MB). It is tried
    once, then waits until the key is rewritten (or deleted), and then compacts again."""
    import os

    from filekv.engine.hint import OFFSET_MASK, OFFSET_SHIFT, SEGMENT_SHIFT
    from filekv.engine.segment import segment_name

    path = tmp_path / "db"
    options = {
        "segment_bytes": 64 << 10,
        "compact_min_bytes": 64 << 10,
        "watch_history": 0,
        "fsync": "never",
    }
    db = Store.open(path, **options)
    for i in range(2000):
        db.put(f"k{i:05d}", os.urandom(100))
    location = db._index.get("k01000")
    assert location is not None
    segment = path / segment_name(location >> SEGMENT_SHIFT)
    db.close()
    damaged = bytearray(segment.read_bytes())
    damaged[(location >> OFFSET_SHIFT) & OFFSET_MASK] ^= 0xFF
    segment.write_bytes(bytes(damaged))

    def overwrite(rounds: int) -> None:
        for _ in range(rounds):
            for i in range(3000):
                if i % 2000 != 1000:
                    db.put(f"k{i % 2000:05d}", os.urandom(100))
            db._compactor.wait_idle()

    db = Store.open(path, **options)
    try:
        with caplog.at_level("ERROR", logger="filekv.engine.compaction"):
            overwrite(3)
        failures = [r for r in caplog.records if "background compaction failed" in r.message]
        assert len(failures) == 1  # tried once, not every 1,024 writes
        assert "k01000" not in caplog.text  # keys stay out of the log
        db.put("k01000", b"written again")  # the damaged value is dead now
        overwrite(2)
        assert db._compactor.compactions >= 1
        disk = sum(p.stat().st_size for p in path.glob("*.seg"))
        assert disk < 1_000_000, disk  # the dead bytes reclaimed (a sound store: ~0.4 MB)
        assert db.get("k01000") == b"written again"
        db.check()
    finally:
        db.close()
