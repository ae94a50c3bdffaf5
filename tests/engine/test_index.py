"""The in-memory index and the hint file it loads from: round trip, validation, lazy groups.

An index bulk-loaded from a hint keeps groups of keys that share a value hash as ranges into the
hint until something looks at or changes them. The property test drives such an index and one
built key by key through the same changes and requires them to agree after every step.
"""

from __future__ import annotations

import logging
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from filekv.engine import Store
from filekv.engine.hint import (
    HASH_MASK,
    HINT_HEADER,
    HINT_HEADER_V3,
    HINT_HEADER_V4,
    HINT_VERSION,
    LOCATION_BYTES,
    HintColumns,
    decode_hint,
    encode_hint,
    length_of,
    offset_of,
    pack,
    place_of,
    revision_of,
    segment_of,
    unpack,
)
from filekv.engine.index import KeyIndex
from filekv.engine.record import FormatError

SEGMENT = 7


def _hint(entries: dict[str, tuple[int, int]]) -> HintColumns:
    """A hint for ``key -> (value hash, revision)``; offsets and lengths derived from the key."""
    keys = sorted(entries)
    locations = [
        pack(SEGMENT, 32 + 200 * i, len(key), entries[key][1], entries[key][0])
        for i, key in enumerate(keys)
    ]
    return HintColumns(
        SEGMENT, max((r for _, r in entries.values()), default=0), 0, keys, locations
    )


@pytest.mark.parametrize(
    "fields",
    [
        (0, 0, 0, 0, 0),
        (SEGMENT, 32, 1, 5, 0xABCD),
        ((1 << 24) - 1, (1 << 40) - 1, (1 << 32) - 1, (1 << 48) - 1, (1 << 32) - 1),
    ],
    ids=["zero", "small", "all-ones"],
)
def test_location_accessors_read_the_fields_pack_wrote(
    fields: tuple[int, int, int, int, int],
) -> None:
    location = pack(*fields)
    assert unpack(location) == fields
    read = (
        segment_of(location),
        offset_of(location),
        length_of(location),
        revision_of(location),
        location & HASH_MASK,
    )
    assert read == fields
    other_value = pack(fields[0], fields[1], fields[2] ^ 1, fields[3] ^ 1, fields[4] ^ 1)
    assert place_of(location) == place_of(other_value)  # same segment and offset: same place
    assert place_of(location) != place_of(pack(fields[0], fields[1] ^ 1, *fields[2:]))


def _snapshot(index: KeyIndex) -> dict[int, list[tuple[str, int]]]:
    """Every value hash with its candidates, read without changing any holder."""
    return {
        hashed: sorted((key, location or 0) for key, location in index.group(holder).items())
        for hashed, holder in index.by_value.items()
    }


def test_index_hint_round_trip_keeps_every_entry_and_the_groups() -> None:
    entries = {f"k{i:03d}": (i % 4 if i < 12 else 100 + i, i + 1) for i in range(20)}
    hint = _hint(entries)
    decoded = decode_hint(encode_hint(hint))
    assert decoded.keys == hint.keys
    assert list(decoded.locations) == list(hint.locations)
    assert decoded.segment_id == SEGMENT and decoded.max_revision == 20
    assert decoded.key_bytes == sum(len(k) for k in entries)
    assert decoded.value_bytes == sum(len(k) for k in entries)  # lengths are len(key) here
    assert list(decoded.singles) == list(range(12, 20)), "singles stay in entry (key) order"
    assert list(decoded.group_ends) == [3, 6, 9, 12]  # four hashes shared by three keys each
    grouped = list(decoded.grouped)
    for start in range(0, 12, 3):
        run = grouped[start : start + 3]
        assert len({decoded.locations[i] & HASH_MASK for i in run}) == 1
        assert run == sorted(run)


def test_index_hint_of_no_keys_round_trips() -> None:
    decoded = decode_hint(encode_hint(_hint({})))
    assert decoded.keys == [] and list(decoded.locations) == []
    index = KeyIndex()
    index.bulk_load(decoded)
    assert len(index) == 0 and index.by_value == {}


def _resealed(body: bytes) -> bytes:
    return body + zlib.crc32(body).to_bytes(4, "little")


def test_index_hint_of_an_older_version_is_refused() -> None:
    data = encode_hint(_hint({"a": (1, 1)}))
    fields = list(HINT_HEADER.unpack_from(data, 0))
    fields[1] = 1  # version 1 stored little-endian columns: refused, the segment is replayed
    body = HINT_HEADER.pack(*fields) + data[HINT_HEADER.size : -4]
    with pytest.raises(FormatError, match="version"):
        decode_hint(_resealed(body))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        (3, 3, "length"),  # count says more entries than the file holds
        (8, 5, "add up"),  # more singles than entries
        (9, 0, "length"),  # fewer group ends than the file holds
    ],
)
def test_index_hint_that_does_not_add_up_is_refused(field: int, value: int, message: str) -> None:
    """A hint whose checksum is right but whose header disagrees with its body is still refused."""
    data = encode_hint(_hint({"a": (1, 1), "b": (1, 2), "c": (2, 3), "d": (3, 4)}))
    fields = list(HINT_HEADER.unpack_from(data, 0))
    fields[field] = value
    body = HINT_HEADER.pack(*fields) + data[HINT_HEADER.size : -4]
    with pytest.raises(FormatError, match=message):
        decode_hint(_resealed(body))


def test_index_hint_group_ends_out_of_order_are_refused() -> None:
    data = encode_hint(_hint({f"k{i}": (i % 2, i + 1) for i in range(6)}))
    ends_at = len(data) - 4 - 8  # two groups of three: ends [3, 6]
    assert struct.unpack_from("<II", data, ends_at) == (3, 6)
    body = data[:ends_at] + struct.pack("<II", 6, 3)
    with pytest.raises(FormatError, match="point outside"):
        decode_hint(_resealed(body))


def test_index_hint_group_member_outside_the_entries_is_refused() -> None:
    data = encode_hint(_hint({"a": (1, 1), "b": (1, 2), "c": (2, 3), "d": (3, 4)}))
    grouped_at = len(data) - 4 - 4 - 8  # singles [2, 3], grouped [0, 1], ends [2]
    assert struct.unpack_from("<II", data, grouped_at) == (0, 1)
    body = data[:grouped_at] + struct.pack("<II", 0, 9) + data[grouped_at + 8 : -4]
    with pytest.raises(FormatError, match="point outside"):
        decode_hint(_resealed(body))


def test_index_hint_entries_are_the_packed_locations_big_endian() -> None:
    hint = _hint({"a": (0xABCD, 5)})
    data = encode_hint(hint)
    keys_length = HINT_HEADER.unpack_from(data, 0)[6]
    # Versions 3 and 4: their header extensions first.
    start = HINT_HEADER.size + HINT_HEADER_V3.size + HINT_HEADER_V4.size + keys_length
    entry = data[start : start + LOCATION_BYTES]
    assert unpack(int.from_bytes(entry, "big")) == (SEGMENT, 32, 1, 5, 0xABCD)


def test_index_loaded_groups_are_not_built_until_used() -> None:
    index = KeyIndex()
    index.bulk_load(decode_hint(encode_hint(_hint({f"k{i}": (i % 3, i + 1) for i in range(9)}))))
    assert all(isinstance(holder, range) for holder in index.by_value.values())
    found = index.candidates(1)
    assert [key for key, _ in found] == ["k1", "k4", "k7"]
    assert found == [(key, index.locations[key]) for key, _ in found]
    assert isinstance(index.by_value[1], dict), "a group looked at once is kept built"
    assert isinstance(index.by_value[0], range)


# -- a bulk-loaded index and one built key by key take the same changes and stay equal ------------

KEYS = [f"key{i:02d}" for i in range(12)]
HASHES = st.integers(min_value=0, max_value=3)  # few hashes: most keys share one
change = st.one_of(
    st.tuples(st.just("set"), st.sampled_from(KEYS), HASHES, st.integers(1, 1000)),
    st.tuples(st.just("remove"), st.sampled_from(KEYS)),
    st.tuples(st.just("move"), st.sampled_from(KEYS), st.integers(1, 1000)),
    st.tuples(st.just("find"), HASHES),
)


@settings(max_examples=300, deadline=None)
@given(
    loaded=st.dictionaries(
        st.sampled_from(KEYS), st.tuples(HASHES, st.integers(1, 1000)), max_size=len(KEYS)
    ),
    changes=st.lists(change, max_size=30),
)
def test_index_loaded_from_a_hint_behaves_like_one_built_by_set(
    loaded: dict[str, tuple[int, int]], changes: list[tuple]
) -> None:
    hint = decode_hint(encode_hint(_hint(loaded)))
    lazy = KeyIndex()
    lazy.bulk_load(hint)
    eager = KeyIndex()
    for key, location in zip(hint.keys, hint.locations, strict=True):
        eager.set(key, location)
    assert _snapshot(lazy) == _snapshot(eager)
    for step in changes:
        if step[0] == "set":
            _, key, hashed, revision = step
            location = pack(SEGMENT + 1, 32 + revision, 3, revision, hashed)
            assert lazy.set(key, location) == eager.set(key, location)
        elif step[0] == "remove":
            assert lazy.remove(step[1]) == eager.remove(step[1])
        elif step[0] == "move":
            _, key, offset = step
            expected = eager.locations.get(key)
            if expected is None:
                continue
            _, _, length, revision, hashed = unpack(expected)
            moved = pack(SEGMENT + 2, offset, length, revision, hashed)
            assert lazy.move(key, expected, moved) and eager.move(key, expected, moved)
        else:
            assert lazy.candidates(step[1]) == eager.candidates(step[1])
        assert lazy.locations == eager.locations
        assert list(lazy.ordered) == list(eager.ordered)
        assert _snapshot(lazy) == _snapshot(eager)
        for hashed, group in _snapshot(lazy).items():
            assert group, "no empty group is left behind"
            assert all(lazy.locations[key] == location for key, location in group)
            assert all(lazy.locations[key] & HASH_MASK == hashed for key, _ in group)


NO_HISTORY: dict[str, Any] = {"fsync": "never", "auto_compact": False, "watch_history": 0}


def test_index_store_with_a_version_1_hint_replays_then_writes_the_current_version(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An older hint (valid checksum, version 1) is not trusted: the segment is replayed, and the
    next compaction leaves a current hint that the following open loads."""
    folder = tmp_path / "db"
    # No watch history kept: compaction merges the (recent) segment into one with a hint.
    with Store.open(folder, **NO_HISTORY) as db:
        for i in range(50):
            db.put(f"k{i:02d}", b"shared" if i % 5 == 0 else b"v%d" % i)
        db.compact()
        expected = {key: db.get(key) for key in db.scan("")}
    (hint,) = folder.glob("*.hint")
    data = hint.read_bytes()
    fields = list(HINT_HEADER.unpack_from(data, 0))
    fields[1] = 1
    hint.write_bytes(_resealed(HINT_HEADER.pack(*fields) + data[HINT_HEADER.size : -4]))
    with caplog.at_level(logging.WARNING, logger="filekv.engine.recovery"):
        db = Store.open(folder, **NO_HISTORY)
    try:
        assert any("ignored" in record.getMessage() for record in caplog.records)
        assert {key: db.get(key) for key in db.scan("")} == expected
        assert db.find(b"shared") == [f"k{i:02d}" for i in range(0, 50, 5)]
        db.put("k99", b"new")
        db.compact()
    finally:
        db.close()
    (hint,) = folder.glob("*.hint")
    assert HINT_HEADER.unpack_from(hint.read_bytes(), 0)[1] == HINT_VERSION
    with Store.open(folder, **NO_HISTORY) as db:
        assert db.get("k99") == b"new"
        assert db.find(b"shared") == [f"k{i:02d}" for i in range(0, 50, 5)]
        db.check()
