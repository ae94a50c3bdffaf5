"""A newest segment whose creation a crash interrupted is removed at open, whatever its length.

``create_segment`` writes the 40-byte header, fsyncs it and the directory; records come only
after. A crash before that fsync can leave the file shorter than its header (removed at open,
as before) or, on a file system that zero-fills what a crash left unwritten (XFS's known
"zeroed files", ext4 with ``data=writeback``), its length with zeros in it. Such a file was
``CorruptStore: not a filekv segment (bad magic)``: the store never opened again, though no
write can have been acknowledged in it. Nothing but zeros in the newest segment is now an
unborn segment (its bytes kept in ``.broken``); anything else that does not decode still
refuses to open.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support.engine_fixtures import FAST

from filekv.engine import CorruptStore, Store


def _store_with_a_newer_segment(path: Path, content: bytes) -> Path:
    db = Store.open(path, **FAST)
    db.put("a", b"1")
    db.close()
    newer = path / "0000000002.seg"
    newer.write_bytes(content)
    return newer


@pytest.mark.parametrize("size", [0, 39, 40, 41, 4096, 70_000])
def test_unborn_segment_of_zeros_is_removed_and_the_store_opens(tmp_path: Path, size: int) -> None:
    path = tmp_path / "db"
    newer = _store_with_a_newer_segment(path, bytes(size))
    db = Store.open(path, **FAST)
    try:
        assert db.get("a") == b"1"
        assert db.stats().recovered_truncations == 1
        db.put("b", b"2")
    finally:
        db.close()
    assert not newer.exists()
    broken = newer.with_name(newer.name + ".broken")
    assert broken.exists() == (size > 0)
    if size:
        assert broken.read_bytes() == bytes(size)
    db = Store.open(path, **FAST)
    try:
        assert (db.get("a"), db.get("b")) == (b"1", b"2")
    finally:
        db.close()


@pytest.mark.parametrize(
    "content",
    [bytes(40) + b"\x01", bytes(39) + b"\x01" + bytes(100), b"junk" + bytes(100)],
    ids=["a byte after a zero header", "a byte in the header", "not ours"],
)
def test_unborn_segment_anything_but_zeros_is_still_corrupt(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "db"
    _store_with_a_newer_segment(path, content)
    with pytest.raises(CorruptStore, match=r"0000000002\.seg"):
        Store.open(path, **FAST)


def test_unborn_segment_a_sealed_segment_of_zeros_is_still_corrupt(tmp_path: Path) -> None:
    """Only the newest segment can be unborn: an older one was fsynced whole when sealed."""
    path = tmp_path / "db"
    _store_with_a_newer_segment(path, bytes(100))
    (path / "0000000001.seg").rename(path / "0000000003.seg")
    (path / "0000000001.hint").unlink()
    (path / "0000000002.seg").write_bytes(bytes(100))
    with pytest.raises(CorruptStore, match=r"0000000002\.seg"):
        Store.open(path, **FAST)
