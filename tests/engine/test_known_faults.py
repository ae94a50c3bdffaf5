"""Faults an engine audit found and left open: their fixes change the format or recovery's rules
(docs/RELIABILITY.md, section 11, "Left open"). Each test states the behaviour wanted and is
``xfail(strict=True)``: it fails today, and the day a fix lands it passes and must lose its mark.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support.engine_fixtures import FAST
from support.storefiles import as_after_a_crash, last_segment

from filekv.engine import CorruptStore, Store
from filekv.engine.hint import SEGMENT_BITS
from filekv.engine.record import SegmentHeader, decode_segment_header, encode_segment_header


@pytest.mark.xfail(
    strict=True,
    raises=OverflowError,
    reason="a location holds the segment id in 24 bits: ids past 2**24 overflow hints and "
    "compaction (OverflowError); ids only grow, by 3 or more per compaction",
)
def test_known_faults_segment_ids_past_24_bits_keep_hints_and_compaction_working(
    tmp_path: Path,
) -> None:
    path = tmp_path / "db"
    db = Store.open(path, **FAST)
    db.put("a", b"1")
    db.close()
    # The store as it is after some 5.6 million compactions: its newest segment's id near 2**24.
    old = last_segment(as_after_a_crash(path))
    data = old.read_bytes()
    header = decode_segment_header(data)
    late = (1 << SEGMENT_BITS) - 3
    renamed = SegmentHeader(late, header.base_revision, header.flags, header.marker)
    old.unlink()
    (path / f"{late:010d}.seg").write_bytes(encode_segment_header(renamed) + data[header.size :])
    db = Store.open(path, **{**FAST, "segment_bytes": 4096})
    try:
        for i in range(200):  # rotates past id 2**24
            db.put(f"k{i}", b"x" * 100)
        db.compact()  # OverflowError today: a hint's 22-byte location cannot hold the id
        db.check()
    finally:
        db.close()


@pytest.mark.xfail(
    strict=True,
    raises=pytest.fail.Exception,  # DID NOT RAISE
    reason="recovery takes damage followed by good records for a write-back hole whenever the "
    "damaged stretch holds a zero page, and a value's zeros count: acknowledged writes are cut",
)
def test_known_faults_a_value_of_zeros_does_not_turn_damage_into_a_silent_cut(
    tmp_path: Path,
) -> None:
    path = tmp_path / "db"
    db = Store.open(path, **{**FAST, "fsync": "always"})
    db.put("zeros", bytes(8192))  # user data that looks like a lost page
    for i in range(20):
        db.put(f"after{i}", b"acknowledged, fsynced")
    db.close()
    segment = last_segment(as_after_a_crash(path))
    damaged = bytearray(segment.read_bytes())
    damaged[damaged.find(bytes(8192)) - 20] ^= 0x01  # one bit of the record's header
    segment.write_bytes(bytes(damaged))
    # With any other value this is CorruptStore (damage followed by good records); with zeros
    # the open cuts the segment there and the 20 acknowledged writes after it are gone.
    with pytest.raises(CorruptStore):
        Store.open(path, **FAST).close()
