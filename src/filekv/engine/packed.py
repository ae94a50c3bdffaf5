"""Packed location entries used in place: a hint file's 22-byte big-endian locations, read a
field or an entry at a time, instead of one Python int per key.

A location of 176 bits is a 48-byte Python int; its 22 packed bytes in one shared buffer cost 22.
Loading ten million of them as ints was a quarter of a reopen (docs/PERFORMANCE.md, issue 9).
Every field of the layout (``hint.py``) starts on a byte boundary, so a whole field column comes
out of the buffer with a few C-level strided slices, no Python step per entry.

Owns no state beyond the buffers handed to it.
"""

from __future__ import annotations

import struct
from array import array
from collections.abc import Iterator, Sequence
from itertools import repeat
from operator import itemgetter
from typing import Final, Literal, overload

__all__ = [
    "ENTRY",
    "HASH_AT",
    "LENGTH_AT",
    "LITTLE_ENDIAN",
    "LocationColumn",
    "pack_entries",
    "u32_field",
]

ENTRY: Final = 22  # hint.LOCATION_BYTES (hint.py imports this module and checks they agree)
# Byte offsets of the 32-bit fields inside one big-endian entry (hint.py's layout, high bits
# first: segment 3 bytes, offset 5, length 4, revision 6, hash 4).
LENGTH_AT: Final = 8
HASH_AT: Final = 18
_ONE: Final = struct.Struct(f"{ENTRY}s")
_BIG: Final[Literal["big"]] = "big"
LITTLE_ENDIAN: Final = struct.pack("=I", 1) == struct.pack("<I", 1)


class LocationColumn(Sequence[int]):
    """The locations of a packed entry buffer, as a read-only sequence of ints."""

    __slots__ = ("entries",)

    def __init__(self, entries: bytes | bytearray) -> None:
        if len(entries) % ENTRY:
            raise ValueError("packed entries come in whole entries")
        self.entries = entries

    def __len__(self) -> int:
        return len(self.entries) // ENTRY

    @overload
    def __getitem__(self, index: int) -> int: ...

    @overload
    def __getitem__(self, index: slice) -> list[int]: ...

    def __getitem__(self, index: int | slice) -> int | list[int]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError("location index out of range")
        start = index * ENTRY
        return int.from_bytes(self.entries[start : start + ENTRY], _BIG)

    def __iter__(self) -> Iterator[int]:
        return map(int.from_bytes, map(itemgetter(0), _ONE.iter_unpack(self.entries)), repeat(_BIG))


def u32_field(entries: bytes | bytearray, at: int) -> array[int]:
    """The big-endian 32-bit field at byte ``at`` of every entry, as an ``array('I')``.

    Four strided slices (one per byte of the field) interleaved into a little-endian buffer:
    C-level copies only, about 30 ms for ten million entries.
    """
    count = len(entries) // ENTRY
    out = bytearray(4 * count)
    for byte in range(4):  # the field's most significant byte first
        out[3 - byte :: 4] = entries[at + byte :: ENTRY]
    column = array("I")
    if column.itemsize != 4:  # pragma: no cover - no such platform in use
        raise RuntimeError("array('I') is not 32 bits here")
    column.frombytes(out)
    if not LITTLE_ENDIAN:  # pragma: no cover - no big-endian machine in CI
        column.byteswap()
    return column


def pack_entries(locations: Sequence[int]) -> bytes:
    """Locations packed as entries, a few thousand at a time (temporaries stay few)."""
    if isinstance(locations, LocationColumn):
        return bytes(locations.entries)
    entries = bytearray()
    for first in range(0, len(locations), 4096):
        chunk = locations[first : first + 4096]
        entries += b"".join(map(int.to_bytes, chunk, repeat(ENTRY), repeat(_BIG)))
    return bytes(entries)
