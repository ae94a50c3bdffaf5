"""Locations and hint files: the packed integer that says where a value is, and the file that
stores a sealed segment's keys and locations (and, for a plain segment, its deletes) so that
opening it needs no replay. No I/O.

Owns no state. The key index (``index.py``) holds exactly these locations; compaction writes
hint files and recovery reads them. docs/FORMAT.md describes the same layout in prose.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from operator import and_, lt, or_
from typing import Final, Literal

from .packed import ENTRY, LITTLE_ENDIAN, LocationColumn, pack_entries
from .record import FormatError
from .slices import SLICE, sliced_map, sliced_sorted

HINT_MAGIC: Final = b"FKVHNT"

# A location: where a key's value is and what the index needs to know about it, packed into one
# integer (one Python int costs far less memory than a tuple of five). The in-memory key index
# holds exactly these integers, and hint files store them as 22 bytes big-endian, so loading a
# hint turns each entry into an index entry with one C call (int.from_bytes), no bit shuffling.
#
#   | segment id 24 | value offset 40 | value length 32 | revision 48 | value hash 32 |
#   high bits                                                                 low bits
HASH_BITS: Final = 32
REVISION_BITS: Final = 48
LENGTH_BITS: Final = 32
OFFSET_BITS: Final = 40
SEGMENT_BITS: Final = 24
HASH_MASK: Final = (1 << HASH_BITS) - 1
REVISION_MASK: Final = (1 << REVISION_BITS) - 1
LENGTH_MASK: Final = (1 << LENGTH_BITS) - 1
OFFSET_MASK: Final = (1 << OFFSET_BITS) - 1
REVISION_SHIFT: Final = HASH_BITS
LENGTH_SHIFT: Final = REVISION_SHIFT + REVISION_BITS
OFFSET_SHIFT: Final = LENGTH_SHIFT + LENGTH_BITS
SEGMENT_SHIFT: Final = OFFSET_SHIFT + OFFSET_BITS
LOCATION_BYTES: Final = (SEGMENT_SHIFT + SEGMENT_BITS) // 8  # 22
assert LOCATION_BYTES == ENTRY, "packed.py reads entries of this width"
# A location >> PLACE_SHIFT identifies where the value is (segment and offset), nothing else.
PLACE_SHIFT: Final = OFFSET_SHIFT


def pack(segment_id: int, offset: int, length: int, revision: int, hashed: int) -> int:
    return (
        segment_id << SEGMENT_SHIFT
        | offset << OFFSET_SHIFT
        | length << LENGTH_SHIFT
        | revision << REVISION_SHIFT
        | hashed
    )


# One accessor per field: the only places besides ``pack``/``unpack`` that know the layout.


def segment_of(location: int) -> int:
    """The id of the segment holding the value."""
    return location >> SEGMENT_SHIFT


def offset_of(location: int) -> int:
    """The value's byte offset in its segment."""
    return (location >> OFFSET_SHIFT) & OFFSET_MASK


def length_of(location: int) -> int:
    """The value's length in bytes."""
    return (location >> LENGTH_SHIFT) & LENGTH_MASK


def revision_of(location: int) -> int:
    """The revision of the write that stored the value."""
    return (location >> REVISION_SHIFT) & REVISION_MASK


def place_of(location: int) -> int:
    """Segment and offset together: equal for two locations exactly when the value is the same."""
    return location >> PLACE_SHIFT


def unpack(location: int) -> tuple[int, int, int, int, int]:
    """(segment id, value offset, value length, revision, value hash)."""
    return (
        location >> SEGMENT_SHIFT,
        (location >> OFFSET_SHIFT) & OFFSET_MASK,
        (location >> LENGTH_SHIFT) & LENGTH_MASK,
        (location >> REVISION_SHIFT) & REVISION_MASK,
        location & HASH_MASK,
    )


# Hint file: a compact summary of one segment (merged or plain), so reopening need not replay it.
#
#   header:  | "FKVHNT" | version u16 | segment id u64 | count u64 | max revision u64 |
#            | created (unix ms) u64 | keys block length u64 | value bytes u64 | singles u64 |
#            | groups u64 |  (72 bytes, little-endian)
#            | segment length u64 | deleted count u64 | deleted block length u64 |  (version 3+)
#            | expiring count u64 |  (version 4+)
#   keys:    UTF-8 keys sorted, joined by 0xFF (a byte that never occurs in UTF-8)
#   entries: count x location (above), 22 bytes big-endian, in key order
#   value order (version 5), so the value index is searched by bisection as loaded:
#            count x entry position (u32, little-endian), ordered by value hash, then position;
#            count x the value hash of those entries (u32, little-endian), ascending
#            (versions 2 to 4 held value groups here instead: singles, grouped and group ends,
#            4 bytes each, ``singles`` + (count - singles) + ``groups`` of them; no longer used)
#   deleted: (version 3+) a plain sealed segment's deletes not followed by a put of the key in
#            that segment, UTF-8 sorted, joined by 0xFF. Segment length 0: a merged segment.
#   expiring: (version 4+) the entries whose value expires: their positions in the entries
#            (u32, ascending), then their ``expires_at`` (f64, UNIX seconds), little-endian.
#   trailer: crc32 of everything before it
# Version 5 writes 0 for ``singles`` and ``groups``.
HINT_VERSION: Final = 5  # versions 2 to 4 are read; version 1 is ignored: replayed
HINT_VERSION_V4: Final = 4  # value groups instead of the value order
HINT_VERSION_V3: Final = 3  # deleted keys, no expiries
HINT_VERSION_V2: Final = 2  # no deleted keys
HINT_HEADER: Final = struct.Struct("<6sHQQQQQQQQ")
HINT_HEADER_V3: Final = struct.Struct("<QQQ")
HINT_HEADER_V4: Final = struct.Struct("<Q")
KEY_SEPARATOR: Final = b"\xff"
_LOCATION: Final = struct.Struct(f"{LOCATION_BYTES}s")
_BIG: Final[Literal["big"]] = "big"


@dataclass(frozen=True, slots=True)
class HintColumns:
    segment_id: int
    max_revision: int
    created_ms: int
    keys: list[str]
    locations: Sequence[int]  # one per key, packed as above, segment id included
    key_bytes: int = 0  # total UTF-8 bytes of the keys (filled in by decode_hint)
    value_bytes: int = 0  # total bytes of the values (filled in by decode_hint)
    # Filled in by decode_hint from a version 5 file (encode_hint derives them): the entries'
    # positions ordered by value hash, and those hashes. Empty when read from an older version.
    by_hash: Sequence[int] = ()
    hashes: Sequence[int] = ()
    deleted: list[str] = field(default_factory=list)  # keys this segment leaves deleted
    segment_length: int = 0  # bytes of the segment the hint sums up; 0: merged, any length
    expiries: dict[str, float] = field(default_factory=dict)  # keys (of ``keys``) that expire


_POSITION_BITS: Final = 32  # entry positions are u32 in the file
_POSITION_MASK: Final = (1 << _POSITION_BITS) - 1


def value_order(hashes: Sequence[int]) -> tuple[list[int], list[int]]:
    """(entry positions ordered by value hash, then position; their hashes, ascending).

    Each (hash, position) pair is one int, hash in the high bits, so the sort compares plain
    ints with no key function; sorted a slice at a time (``slices.py``): this runs in background
    threads, and one sort of a whole segment's entries in a single C call kept the GIL from the
    event loop for as long.
    """
    # Bound methods of the constants, e.g. (32).__rlshift__(h) == h << 32: C-level calls.
    shifted = sliced_map(_POSITION_BITS.__rlshift__, hashes)
    pairs = sliced_sorted(sliced_map(or_, shifted, range(len(hashes))))
    del shifted
    by_hash = sliced_map(_POSITION_MASK.__and__, pairs)
    return by_hash, sliced_map(_POSITION_BITS.__rrshift__, pairs)


def encode_hint(columns: HintColumns) -> bytes:
    from array import array

    locations = columns.locations
    if len(locations) != len(columns.keys):
        raise ValueError("a hint needs one location per key")
    by_hash, hashes = value_order(sliced_map(partial(and_, HASH_MASK), locations))
    keys_block = _joined(columns.keys)
    value_bytes = sum(map(length_of, locations))
    deleted_block = _joined(columns.deleted)
    parts = [
        HINT_HEADER.pack(
            HINT_MAGIC,
            HINT_VERSION,
            columns.segment_id,
            len(columns.keys),
            columns.max_revision,
            columns.created_ms,
            len(keys_block),
            value_bytes,
            0,
            0,
        ),
        HINT_HEADER_V3.pack(columns.segment_length, len(columns.deleted), len(deleted_block)),
        HINT_HEADER_V4.pack(len(columns.expiries)),
        keys_block,
        pack_entries(locations),
    ]
    for values in (by_hash, hashes):
        column = array("I", values)
        if not LITTLE_ENDIAN:
            column.byteswap()
        parts.append(column.tobytes())
    parts.append(deleted_block)
    if columns.expiries:
        expiries = columns.expiries
        expiring = [i for i, key in enumerate(columns.keys) if key in expiries]
        if len(expiring) != len(expiries):
            raise ValueError("a hint's expiries must be of its own keys")
        positions = array("I", expiring)
        times = array("d", [expiries[columns.keys[i]] for i in expiring])
        if not LITTLE_ENDIAN:
            positions.byteswap()
            times.byteswap()
        parts += (positions.tobytes(), times.tobytes())
    data = b"".join(parts)
    return data + zlib.crc32(data).to_bytes(4, "little")


def _joined(keys: list[str]) -> bytes:
    """Keys as UTF-8 joined by 0xFF, built as one string: no bytes object per key (a hint of half
    a million keys made as many temporaries). Keys are valid Unicode (``Writer.encode_key``), so
    the only lone surrogate is the separator, which ``surrogateescape`` turns into 0xFF."""
    parts = [
        "\udcff".join(keys[first : first + SLICE]).encode("utf-8", "surrogateescape")
        for first in range(0, len(keys), SLICE)
    ]
    return KEY_SEPARATOR.join(parts)  # a slice at a time, as value_groups


def decode_hint(data: bytes) -> HintColumns:
    from array import array

    if len(data) < HINT_HEADER.size + 4:
        raise FormatError("hint file is incomplete")
    if int.from_bytes(data[-4:], "little") != zlib.crc32(memoryview(data)[:-4]):
        raise FormatError("hint file checksum mismatch")
    (
        magic,
        version,
        segment_id,
        count,
        max_revision,
        created_ms,
        keys_length,
        value_bytes,
        singles,
        groups,
    ) = HINT_HEADER.unpack_from(data, 0)
    if magic != HINT_MAGIC or not HINT_VERSION_V2 <= version <= HINT_VERSION:
        raise FormatError("not a hint file of this format version")
    if version >= HINT_VERSION and (singles or groups):
        raise FormatError("hint file has value groups in a version that has none")
    if singles > count:
        raise FormatError("hint file value groups do not add up")
    position = HINT_HEADER.size
    segment_length = deleted_count = deleted_length = expiring = 0
    if version >= HINT_VERSION_V3:
        extra = HINT_HEADER_V3.size + (HINT_HEADER_V4.size if version >= HINT_VERSION_V4 else 0)
        if len(data) < position + extra + 4:
            raise FormatError("hint file is incomplete")
        segment_length, deleted_count, deleted_length = HINT_HEADER_V3.unpack_from(data, position)
        if version >= HINT_VERSION_V4:
            (expiring,) = HINT_HEADER_V4.unpack_from(data, position + HINT_HEADER_V3.size)
        position += extra
    if expiring > count:
        raise FormatError("hint file has more expiring entries than entries")
    order_bytes = 8 * count if version >= HINT_VERSION else 4 * (count + groups)
    size = keys_length + count * LOCATION_BYTES + order_bytes + deleted_length
    size += 12 * expiring
    if position + size != len(data) - 4:
        raise FormatError("hint file length does not match its header")
    keys_block = data[position : position + keys_length]
    position += keys_length
    # Decoding with surrogateescape turns each 0xFF separator into "\udcff", which no valid key
    # holds, so one C-level split yields every key without a Python loop.
    keys = keys_block.decode("utf-8", "surrogateescape").split("\udcff") if count else []
    if len(keys) != count:
        raise FormatError("hint file key count mismatch")
    end = position + count * LOCATION_BYTES
    # Kept packed (``packed.py``): one int.from_bytes per location was a quarter of a reopen.
    locations = LocationColumn(data[position:end])
    position = end
    by_hash = hashes = array("I")
    if version >= HINT_VERSION:
        columns: list[array[int]] = []
        for _ in range(2):
            column = array("I")
            column.frombytes(data[position : position + 4 * count])
            if not LITTLE_ENDIAN:
                column.byteswap()
            position += 4 * count
            columns.append(column)
        by_hash, hashes = columns
        # Not checked here, to keep a reopen of ten million keys short (each check is a pass over
        # every entry; the checksum already holds): whether the hashes ascend (key_columns.py
        # sorts them a bucket at a time, and sorts it all when a run does not ascend) and whether
        # positions stay inside the entries (KeyColumns.candidates skips those that do not).
    else:
        position += order_bytes  # value groups: superseded by the value order, not read
    deleted: list[str] = []
    if deleted_count:
        block = data[position : position + deleted_length]
        deleted = block.decode("utf-8", "surrogateescape").split("\udcff")
    if len(deleted) != deleted_count:
        raise FormatError("hint file deleted key count mismatch")
    position += deleted_length
    expiries: dict[str, float] = {}
    if expiring:
        positions = array("I")
        positions.frombytes(data[position : position + 4 * expiring])
        times = array("d")
        times.frombytes(data[position + 4 * expiring : position + 12 * expiring])
        if not LITTLE_ENDIAN:
            positions.byteswap()
            times.byteswap()
        if positions[-1] >= count or not all(map(lt, positions, positions[1:])):
            raise FormatError("hint file expiring entries point outside the file")
        expiries = dict(zip(map(keys.__getitem__, positions), times, strict=True))
    return HintColumns(
        segment_id,
        max_revision,
        created_ms,
        keys,
        locations,
        keys_length - max(count - 1, 0),
        value_bytes,
        by_hash,
        hashes,
        deleted,
        segment_length,
        expiries,
    )
