"""Records whose checksums are good but whose content the engine never writes: an open refuses
them with ``CorruptStore`` naming the file and offset, never with a bare Python error.

A checksum is no signature: anyone who can write the files can append a record that checks
out. The engine writes keys from ``str`` only, so a key that is not UTF-8 is damage. Recovery
decoded it with no guard and ``Store.open`` raised ``UnicodeDecodeError``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support.engine_fixtures import FAST
from support.storefiles import as_after_a_crash, last_segment

from filekv.engine import CorruptStore, Store
from filekv.engine.record import PUT, decode_segment_header, encode_record


@pytest.mark.parametrize(
    "key",
    [b"\xff\xfe", b"\xed\xb2\x80", b"ok\x80", b"\xc0\xaf"],
    ids=["ff-fe", "lone-surrogate", "cut-sequence", "overlong"],
)
def test_crafted_records_a_key_that_is_not_utf8_is_corrupt_store(
    tmp_path: Path, key: bytes
) -> None:
    path = tmp_path / "db"
    db = Store.open(path, **FAST)
    db.put("a", b"1")
    db.close()
    segment = last_segment(as_after_a_crash(path))
    marker = decode_segment_header(segment.read_bytes()).marker
    offset = segment.stat().st_size
    with segment.open("ab") as handle:
        handle.write(encode_record(marker, 2, [(PUT, key, b"v")]))
    with pytest.raises(CorruptStore) as caught:
        Store.open(path, **FAST)
    assert caught.value.offset == offset
    assert "UTF-8" in str(caught.value)
