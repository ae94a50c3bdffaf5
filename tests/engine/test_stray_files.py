"""Files in the data directory that are not the store's: an open passes them by, untouched.

Recovery took any ``<digits>.seg`` for a segment: ``str.isdigit`` is true of "12", "1", "²" and
"٣", and ``int`` reads some of them. So a stray "12.seg" made every open fail (segment 12 was
looked for as 0000000012.seg), "1.seg" had segment 1 loaded twice (its descriptor leaked, its
bytes counted twice), and "².seg" or "².hint" stopped the open with a bare ValueError. Only a
name that ``segment_name`` would give (ten ASCII digits) is a segment, a hint or a leftover.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from support.engine_fixtures import FAST
from support.storefiles import copy_store

from filekv.engine import Store
from filekv.engine.backup import verify_copy

STRAYS = [
    "1.seg",
    "12.seg",
    "00000000001.seg",
    "00000000012.seg",
    "².seg",
    "٣.seg",
    "\uff11.seg",  # a fullwidth 1
    "².hint",
    "1.hint",
    "12.hint",
    "².seg.tmp",
    "1.seg.tmp",
    "12.hint.tmp",
]


@pytest.mark.parametrize("stray", STRAYS)
def test_stray_files_are_passed_by_and_left_alone(tmp_path: Path, stray: str) -> None:
    path = tmp_path / "db"
    db = Store.open(path, **FAST)
    db.put("a", b"1")
    db.close()
    (path / stray).write_bytes(b"not filekv's")
    before = sorted(os.listdir(path))
    db = Store.open(path, **FAST)
    try:
        assert db.get("a") == b"1"
        assert db.stats().disk_bytes < 1000  # no segment counted twice
        db.put("b", b"2")
        db.check()
    finally:
        db.close()
    assert (path / stray).read_bytes() == b"not filekv's"
    db = Store.open(path, **FAST)
    try:
        assert (db.get("a"), db.get("b")) == (b"1", b"2")
    finally:
        db.close()
    assert set(before) <= set(os.listdir(path))
    copy = copy_store(path, tmp_path / "copy")
    verify_copy(copy, strict=True)  # the backup's check passes the stray by too
    assert (copy / stray).exists()
