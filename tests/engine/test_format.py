"""Format version 2: values cannot steer recovery, recovery stays linear, version 1 still opens.

The attack these tests stop (issue 17, finding 2): a client writes a value whose bytes hold a
valid encoded record followed by padding; a torn write of that value (power loss mid-append)
leaves the embedded record after a damaged one. Version 1 read that as "damaged record followed
by a good one" and refused to open (CorruptStore), and it looked for that good record by
hashing up to the end of the file at every byte offset (850 s for a 2.4 GB tail).
"""

from __future__ import annotations

import json
import os
import shutil
import zlib
from pathlib import Path
from typing import Any

import pytest
from support.engine_fixtures import FAST, OpenStore
from support.planted import VALUE_KINDS, record_made_value
from support.storefiles import as_after_a_crash, contents, last_segment, segments, truncate

import filekv.engine.record as record
from filekv.engine import RecoveryInterrupted, Store
from filekv.engine.record import (
    FORMAT_VERSION,
    MARKER_BYTES,
    PUT,
    RecordTooLarge,
    decode_segment_header,
    encode_body,
)

FIXTURE_V1 = Path(__file__).parent / "fixtures" / "store-v1"  # written by filekv at 973f6ba
# Written by filekv at c534238 (segments version 2, hints version 3): a merged segment with its
# hint, a plain newest one with the hint of a clean close; puts, deletes, a transaction, a batch.
FIXTURE_V2 = Path(__file__).parent / "fixtures" / "store-v2"


def _write_attack(path: Path, kind: str) -> tuple[int, int, bytes]:
    """A store whose last record is a put of a record-made value; (its start, its end, value)."""
    with Store.open(path, **FAST) as db:
        db.put("acknowledged", b"must survive")
        start = os.path.getsize(last_segment(path))
        value = record_made_value(kind)
        db.put("attack", value)
        end = os.path.getsize(last_segment(path))
    os.unlink(path / "LOCK")
    as_after_a_crash(path)  # the tail is what a crash left: the newest segment is replayed
    return start, end, value


@pytest.mark.parametrize("kind", VALUE_KINDS)
def test_recovery_torn_value_made_of_records_is_a_torn_tail(tmp_path: Path, kind: str) -> None:
    source = tmp_path / "source"
    start, end, _ = _write_attack(source, kind)
    failures: list[str] = []
    # Cut at many points through the value: at each sector boundary (where a planted record
    # starts) and just past it, so a planted record is the first whole thing after the cut.
    cuts = sorted({start + 1, *range(start + 40, end, 512), *range(start + 41, end, 2048)})
    for cut in cuts:
        work = tmp_path / f"cut-{cut}"
        shutil.copytree(source, work)
        truncate(last_segment(work), cut)
        try:
            with Store.open(work, **FAST) as db:
                found = contents(db)
        except Exception as error:  # report every cut, not only the first
            failures.append(f"cut at {cut}: {error!r}")
            continue
        if found != {"acknowledged": b"must survive"}:
            failures.append(f"cut at {cut}: contents {sorted(found)}")
        shutil.rmtree(work)
    assert not failures, failures[:5]


@pytest.mark.parametrize("kind", VALUE_KINDS)
def test_recovery_value_with_lost_pages_is_a_torn_tail(tmp_path: Path, kind: str) -> None:
    """Power loss with out-of-order write-back: the record's last pages landed, earlier ones not."""
    source = tmp_path / "source"
    start, end, _ = _write_attack(source, kind)
    for hole_start in range(start - start % 4096 + 4096, end - 4096, 8192):
        work = tmp_path / f"hole-{hole_start}"
        shutil.copytree(source, work)
        segment = last_segment(work)
        data = bytearray(segment.read_bytes())
        data[hole_start : hole_start + 4096] = bytes(4096)
        segment.write_bytes(bytes(data))
        with Store.open(work, **FAST) as db:
            assert contents(db) == {"acknowledged": b"must survive"}, hole_start
        shutil.rmtree(work)


def test_recovery_search_past_damage_is_linear(tmp_path: Path, monkeypatch: Any) -> None:
    """The bytes hashed while opening stay within a small multiple of the file, damage or not."""
    source = tmp_path / "source"
    with Store.open(source, **FAST) as db:
        for i in range(40):
            db.put(f"planted/{i}", record_made_value("v2-records-zero-marker", 32 << 10))
        db.put("big", record_made_value("v1-records", 1 << 20))
    os.unlink(source / "LOCK")
    segment = last_segment(source)
    size = os.path.getsize(segment)
    truncate(segment, size - 100)  # the big value is torn: everything after it is "damage"

    hashed = 0
    real_crc32 = zlib.crc32

    class CountingZlib:
        @staticmethod
        def crc32(data: Any, value: int = 0) -> int:
            nonlocal hashed
            hashed += len(data)
            return real_crc32(data, value)

    monkeypatch.setattr(record, "zlib", CountingZlib)
    with Store.open(source, **FAST) as db:
        assert len(db) == 40
    assert hashed <= 2 * size, f"hashed {hashed} bytes to open a {size}-byte segment"


def test_encode_refuses_a_record_recovery_would_not_read(monkeypatch: Any) -> None:
    monkeypatch.setattr(record, "MAX_BODY", 1000)
    with pytest.raises(RecordTooLarge):
        encode_body([(PUT, b"k", b"v" * 1000)])
    encode_body([(PUT, b"k", b"v" * 900)])


@pytest.mark.parametrize(
    "options",
    [
        {"max_transaction_bytes": (1 << 30) + 1},
        {"max_transaction_bytes": 0},
        {"max_transaction_ops": 0},
        {"max_value_bytes": 1 << 30},
    ],
)
def test_store_open_refuses_limits_past_what_recovery_reads(
    tmp_path: Path, options: dict[str, int]
) -> None:
    with pytest.raises(ValueError):
        Store.open(tmp_path / "db", **FAST, **options)


def test_segments_carry_a_random_marker_at_every_record(
    open_store: OpenStore, tmp_path: Path
) -> None:
    db = open_store(tmp_path / "db", segment_bytes=4096)
    for i in range(50):
        db.put(f"k{i}", b"v" * 100)
    headers = [decode_segment_header(path.read_bytes()) for path in segments(db.path)]
    markers = {header.marker for header in headers}
    assert len(headers) > 1 and len(markers) == len(headers)
    assert all(header.version == FORMAT_VERSION for header in headers)
    for path, header in zip(segments(db.path), headers, strict=True):
        data = path.read_bytes()
        # Every record starts with the marker: 50 puts of equal size, so it occurs at a stride.
        assert data.count(header.marker) >= 1
        assert data[header.size : header.size + MARKER_BYTES] in (header.marker, b"")


def test_files_are_private_to_their_owner(tmp_path: Path) -> None:
    path = tmp_path / "db"
    with Store.open(path, **FAST) as db:
        db.put("k", b"v")
        db.compact()
        db.put("k2", b"v")
    assert path.stat().st_mode & 0o777 == 0o700
    for child in path.iterdir():
        assert child.stat().st_mode & 0o077 == 0, child.name


# -- version 1 stores ----------------------------------------------------------------------


def _fixture(tmp_path: Path, fixture: Path = FIXTURE_V1) -> tuple[Path, dict[str, Any]]:
    work = tmp_path / fixture.name
    shutil.copytree(fixture, work)
    expected = json.loads((work / "expected.json").read_text())
    (work / "expected.json").unlink()
    return work, expected


def test_format_v1_store_opens_and_upgrades(tmp_path: Path) -> None:
    work, expected = _fixture(tmp_path)
    want = {key: value.encode() for key, value in expected["contents"].items()}
    v1_files = {path.name: path.read_bytes() for path in segments(work)}
    assert {decode_segment_header(data).version for data in v1_files.values()} == {1}
    with Store.open(work, **FAST) as db:
        assert contents(db) == want
        assert db.revision == expected["revision"]
        db.put("new", b"after the upgrade")
        db.check()
    # The old files were not appended to: the write went to a new segment of this version.
    for name, data in v1_files.items():
        assert (work / name).read_bytes() == data
    newest = last_segment(work)
    assert newest.name not in v1_files
    assert decode_segment_header(newest.read_bytes()).version == FORMAT_VERSION
    want["new"] = b"after the upgrade"
    with Store.open(work, **FAST) as db:
        assert contents(db) == want
        db.compact()
    assert {decode_segment_header(p.read_bytes()).version for p in segments(work)} == {
        FORMAT_VERSION
    }
    with Store.open(work, **FAST) as db:
        assert contents(db) == want
        db.check()


@pytest.mark.parametrize("crashed", [False, True], ids=["clean", "crashed"])
def test_format_v2_store_opens_and_upgrades(tmp_path: Path, crashed: bool) -> None:
    work, expected = _fixture(tmp_path, FIXTURE_V2)
    if crashed:
        as_after_a_crash(work)  # the newest version 2 segment replayed, not loaded from its hint
    want = {key: value.encode() for key, value in expected["contents"].items()}
    old_files = {path.name: path.read_bytes() for path in work.iterdir()}
    assert {
        decode_segment_header(work.joinpath(n).read_bytes()).version
        for n in old_files
        if n.endswith(".seg")
    } == {2}
    with Store.open(work, **FAST) as db:
        assert contents(db) == want
        assert db.revision == expected["revision"]
        db.put("new", b"with a ttl", ttl=3600)
        db.check()
    for name, data in old_files.items():  # never rewritten in place
        if name.endswith(".seg"):
            assert (work / name).read_bytes() == data
    assert decode_segment_header(last_segment(work).read_bytes()).version == FORMAT_VERSION
    want["new"] = b"with a ttl"
    with Store.open(work, **FAST) as db:
        assert contents(db) == want
        entry = db.entry("new")
        assert entry is not None and entry.expires_at is not None
        db.compact()
        assert contents(db) == want
        db.check()


def test_format_v1_store_with_torn_tail_opens(tmp_path: Path) -> None:
    work, expected = _fixture(tmp_path)
    newest = last_segment(work)
    truncate(newest, os.path.getsize(newest) - 3)  # the last record: put k/002 = rewritten
    with Store.open(work, **FAST) as db:
        found = contents(db)
    assert found.pop("k/002") != b"rewritten"
    assert found == {k: v.encode() for k, v in expected["contents"].items() if k != "k/002"}


# -- interrupting a long recovery -------------------------------------------------------------


def test_recovery_stops_when_asked_and_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "db"
    with Store.open(path, **FAST) as db:
        for i in range(20_000):
            db.put(f"k{i}", b"v")
    truncate(last_segment(path), os.path.getsize(last_segment(path)) - 1)  # a torn tail to cut
    before = {p.name: p.read_bytes() for p in path.iterdir() if p.name != "LOCK"}
    asked = 0

    def stop_after_a_few() -> bool:
        nonlocal asked
        asked += 1
        return asked > 2

    with pytest.raises(RecoveryInterrupted):
        Store.open(path, **FAST, should_stop=stop_after_a_few)
    after = {p.name: p.read_bytes() for p in path.iterdir() if p.name != "LOCK"}
    assert after == before  # nothing cut, nothing written
    with Store.open(path, **FAST) as db:  # and the lock was released
        assert len(db) == 19_999
