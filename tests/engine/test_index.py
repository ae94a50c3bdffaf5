"""The in-memory index and the hint file it loads from: round trip, validation, columns.

An index loaded from a hint keeps its keys, locations and value order as columns
(``key_columns.py``) and takes later changes in an overlay. The property test drives such an
index and one built key by key through the same changes and requires them to agree after every
step.
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
from filekv.engine.key_columns import KeyColumns
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


def _view(index: KeyIndex) -> tuple[list[tuple[str, int]], dict[int, list[tuple[str, int]]]]:
    """Everything a reader can ask: each key's location in key order, each hash's candidates."""
    return list(index.items()), {hashed: index.candidates(hashed) for hashed in range(4)}


def test_index_hint_round_trip_keeps_every_entry_and_the_value_order() -> None:
    entries = {f"k{i:03d}": (i % 4 if i < 12 else 100 + i, i + 1) for i in range(20)}
    hint = _hint(entries)
    decoded = decode_hint(encode_hint(hint))
    assert decoded.keys == hint.keys
    assert list(decoded.locations) == list(hint.locations)
    assert decoded.segment_id == SEGMENT and decoded.max_revision == 20
    assert decoded.key_bytes == sum(len(k) for k in entries)
    assert decoded.value_bytes == sum(len(k) for k in entries)  # lengths are len(key) here
    hashes = [location & HASH_MASK for location in hint.locations]
    # Positions by hash, equal hashes in entry order: k000, k004, k008 share hash 0, and so on.
    assert list(decoded.by_hash) == [*(r + i for r in range(4) for i in (0, 4, 8)), *range(12, 20)]
    assert list(decoded.hashes) == sorted(hashes)


def test_index_hint_of_no_keys_round_trips() -> None:
    decoded = decode_hint(encode_hint(_hint({})))
    assert decoded.keys == [] and list(decoded.locations) == []
    index = KeyIndex()
    index.load_columns(KeyColumns.from_hints([decoded]))
    assert len(index) == 0 and list(index.items()) == [] and index.candidates(0) == []


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
        (8, 1, "has none"),  # value groups (of versions 2 to 4) in a version 5 header
        (9, 1, "has none"),
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


def test_index_hint_value_order_out_of_order_is_sorted_when_loaded() -> None:
    """Bisection needs ascending hashes; merging the value orders (in the background after open)
    sorts them, so a hint that does not keep its order is found right from then on."""
    data = encode_hint(_hint({f"k{i}": (i % 2, i + 1) for i in range(3)}))
    order_at = len(data) - 4 - 24  # positions [0, 2, 1], then their hashes [0, 0, 1]
    assert struct.unpack_from("<6I", data, order_at) == (0, 2, 1, 0, 0, 1)
    body = data[:order_at] + struct.pack("<6I", 1, 2, 0, 1, 0, 0)  # the same pairs, shuffled
    columns = KeyColumns.from_hints([decode_hint(_resealed(body))])
    assert columns.merge_value_order()  # what the store runs in the background after open
    index = KeyIndex()
    index.load_columns(columns)
    assert [key for key, _ in index.candidates(0)] == ["k0", "k2"]
    assert [key for key, _ in index.candidates(1)] == ["k1"]
    index.check()


def test_index_hint_value_order_outside_the_entries_finds_nothing_there() -> None:
    """A position past the entries (only a hint that lied: the checksum holds otherwise) is not
    checked at load, to keep a reopen of millions of keys short; a search skips it."""
    data = encode_hint(_hint({"a": (1, 1), "b": (1, 2), "c": (2, 3), "d": (3, 4)}))
    by_hash_at = len(data) - 4 - 16 - 16  # positions [0, 1, 2, 3], then four hashes
    assert struct.unpack_from("<IIII", data, by_hash_at) == (0, 1, 2, 3)
    body = data[:by_hash_at] + struct.pack("<IIII", 0, 1, 2, 9) + data[by_hash_at + 16 : -4]
    index = KeyIndex()
    index.load_columns(KeyColumns.from_hints([decode_hint(_resealed(body))]))
    assert [key for key, _ in index.candidates(1)] == ["a", "b"]
    assert index.candidates(3) == [], "d's place in the value order points nowhere"
    assert index.get("d") is not None


def test_index_hint_entries_are_the_packed_locations_big_endian() -> None:
    hint = _hint({"a": (0xABCD, 5)})
    data = encode_hint(hint)
    keys_length = HINT_HEADER.unpack_from(data, 0)[6]
    # Versions 3 and 4: their header extensions first.
    start = HINT_HEADER.size + HINT_HEADER_V3.size + HINT_HEADER_V4.size + keys_length
    entry = data[start : start + LOCATION_BYTES]
    assert unpack(int.from_bytes(entry, "big")) == (SEGMENT, 32, 1, 5, 0xABCD)


def test_index_loaded_as_columns_finds_by_value_without_building_a_dict() -> None:
    index = KeyIndex()
    index.load_columns(
        KeyColumns.from_hints(
            [decode_hint(encode_hint(_hint({f"k{i}": (i % 3, i + 1) for i in range(9)})))]
        )
    )
    found = index.candidates(1)
    assert [key for key, _ in found] == ["k1", "k4", "k7"]
    assert found == [(key, index.get(key)) for key, _ in found]
    assert index.by_value == {}, "the columns answer; nothing is copied into the overlay"


# -- a bulk-loaded index and one built key by key take the same changes and stay equal ------------

KEYS = [f"key{i:02d}" for i in range(12)]
HASHES = st.integers(min_value=0, max_value=3)  # few hashes: most keys share one
change = st.one_of(
    st.tuples(st.just("set"), st.sampled_from(KEYS), HASHES, st.integers(1, 1000)),
    st.tuples(st.just("remove"), st.sampled_from(KEYS)),
    st.tuples(st.just("move"), st.sampled_from(KEYS), st.integers(1, 1000)),
    st.tuples(st.just("find"), HASHES),
    # Fold up to this many of the overlay's new keys into the columns; then maybe merge the
    # value order's runs.
    st.tuples(st.just("fold"), st.integers(1, 5), st.booleans()),
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
    lazy.load_columns(KeyColumns.from_hints([hint]))
    eager = KeyIndex()
    for key, location in zip(hint.keys, hint.locations, strict=True):
        eager.set(key, location)
    assert _view(lazy) == _view(eager)
    for step in changes:
        if step[0] == "set":
            _, key, hashed, revision = step
            location = pack(SEGMENT + 1, 32 + revision, 3, revision, hashed)
            assert lazy.set(key, location) == eager.set(key, location)
        elif step[0] == "remove":
            assert lazy.remove(step[1]) == eager.remove(step[1])
        elif step[0] == "move":
            _, key, offset = step
            expected = eager.get(key)
            if expected is None:
                continue
            _, _, length, revision, hashed = unpack(expected)
            moved = pack(SEGMENT + 2, offset, length, revision, hashed)
            assert lazy.move(key, expected, moved) and eager.move(key, expected, moved)
        elif step[0] == "fold":
            _fold_keeps_every_answer(lazy, eager, step[1], step[2])
        else:
            assert lazy.candidates(step[1]) == eager.candidates(step[1])
        assert _view(lazy) == _view(eager)
        assert len(lazy) == len(eager)
        assert list(lazy.keys_from("key0", "key03")) == list(eager.keys_from("key0", "key03"))
        lazy.check()


def _fold_keeps_every_answer(lazy: KeyIndex, eager: KeyIndex, limit: int, settle: bool) -> None:
    """A fold step on both indexes (the eager one's first builds its columns) changes no answer,
    and a snapshot's copy of the index taken before it still reads what it read."""
    held = lazy.ordered_keys()
    copied = lazy.lookup(held, whole=True)
    before = [copied(key) for key in held]
    new = len(lazy._added)
    assert lazy.fold_step(limit) == min(limit, new)
    eager.fold_step(limit)
    if settle:
        lazy.settle_value_order()
        eager.settle_value_order()
    assert [copied(key) for key in held] == before
    eager.check()


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
