"""The in-memory indexes: key -> location, ordered keys, value hash -> keys.

Values stay on disk; memory holds, per key, the key string (shared by all three structures), one
packed integer locating its value, a slot in the sorted key list and a slot in the value index.

A location packs five fields into one Python int, because one int costs far less memory than a
tuple of five::

    | segment id 24 | value offset 40 | value length 32 | revision 48 | value hash 32 |
    high bits                                                                 low bits
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import repeat
from operator import lshift, or_

from sortedcontainers import SortedList

from .record import HintColumns

HASH_BITS = 32
REVISION_BITS = 48
LENGTH_BITS = 32
OFFSET_BITS = 40
HASH_MASK = (1 << HASH_BITS) - 1
REVISION_MASK = (1 << REVISION_BITS) - 1
LENGTH_MASK = (1 << LENGTH_BITS) - 1
OFFSET_MASK = (1 << OFFSET_BITS) - 1
REVISION_SHIFT = HASH_BITS
LENGTH_SHIFT = REVISION_SHIFT + REVISION_BITS
OFFSET_SHIFT = LENGTH_SHIFT + LENGTH_BITS
SEGMENT_SHIFT = OFFSET_SHIFT + OFFSET_BITS
# A location >> PLACE_SHIFT identifies where the value is (segment and offset), nothing else.
PLACE_SHIFT = OFFSET_SHIFT


def pack(segment_id: int, offset: int, length: int, revision: int, hashed: int) -> int:
    return (
        segment_id << SEGMENT_SHIFT
        | offset << OFFSET_SHIFT
        | length << LENGTH_SHIFT
        | revision << REVISION_SHIFT
        | hashed
    )


def unpack(location: int) -> tuple[int, int, int, int, int]:
    """(segment id, value offset, value length, revision, value hash)."""
    return (
        location >> SEGMENT_SHIFT,
        (location >> OFFSET_SHIFT) & OFFSET_MASK,
        (location >> LENGTH_SHIFT) & LENGTH_MASK,
        (location >> REVISION_SHIFT) & REVISION_MASK,
        location & HASH_MASK,
    )


def revision_of(location: int) -> int:
    return (location >> REVISION_SHIFT) & REVISION_MASK


# The keys under one value hash: the key itself when it is alone (the common case, and no
# container object at all), a tuple as loaded from a hint file, or a set once it changes.
Holder = str | tuple[str, ...] | set[str]


class KeyIndex:
    """Every live key, where its value is, in key order, and grouped by value hash.

    Not thread-safe by itself: the Store serialises mutations under its lock.
    """

    __slots__ = ("by_value", "locations", "ordered")

    def __init__(self) -> None:
        self.locations: dict[str, int] = {}
        self.ordered: SortedList = SortedList()
        # value hash -> the keys with that hash (see Holder): a bare str for the common single
        # case saves a set object (about 200 bytes) per distinct value.
        self.by_value: dict[int, Holder] = {}

    def __len__(self) -> int:
        return len(self.locations)

    def set(self, key: str, location: int) -> int | None:
        """Point ``key`` at ``location``; return the previous location."""
        previous = self.locations.get(key)
        self.locations[key] = location
        hashed = location & HASH_MASK
        if previous is None:
            self.ordered.add(key)
        else:
            old_hash = previous & HASH_MASK
            if old_hash == hashed:
                return previous
            self._unlink_value(old_hash, key)
        holder = self.by_value.get(hashed)
        if holder is None:
            self.by_value[hashed] = key
        elif isinstance(holder, str):
            self.by_value[hashed] = {holder, key}
        elif isinstance(holder, tuple):
            self.by_value[hashed] = {*holder, key}
        else:
            holder.add(key)
        return previous

    def remove(self, key: str) -> int | None:
        """Forget ``key``; return its location, or None if it was not there."""
        previous = self.locations.pop(key, None)
        if previous is None:
            return None
        self.ordered.remove(key)
        self._unlink_value(previous & HASH_MASK, key)
        return previous

    def move(self, key: str, expected: int, location: int) -> bool:
        """Repoint ``key`` to ``location`` only if it still points at ``expected`` (compaction)."""
        if self.locations.get(key) != expected:
            return False
        self.locations[key] = location
        return True

    def candidates(self, hashed: int) -> list[str]:
        holder = self.by_value.get(hashed)
        if holder is None:
            return []
        if isinstance(holder, str):
            return [holder]
        return sorted(holder)

    def keys_from(self, prefix: str, after: str | None) -> Iterator[str]:
        """Keys in order, starting with ``prefix``, strictly greater than ``after``."""
        if after is None or after < prefix:
            position = self.ordered.bisect_left(prefix)
        else:
            position = self.ordered.bisect_right(after)
        # SortedList.islice starts at a position in O(log n); itertools.islice would walk there.
        for key in self.ordered.islice(position):
            if not key.startswith(prefix):
                return
            yield key

    def bulk_load(self, hint: HintColumns) -> None:
        """Fill an empty index from a hint file's columns at C speed (no Python loop per key)."""
        if self.locations:
            raise ValueError("bulk_load needs an empty index")
        keys = hint.keys
        hashes = hint.value_hashes
        base = hint.segment_id << SEGMENT_SHIFT
        locations = map(
            or_,
            map(or_, map(lshift, hint.value_offsets, repeat(OFFSET_SHIFT)), repeat(base)),
            map(
                or_,
                map(lshift, hint.value_lengths, repeat(LENGTH_SHIFT)),
                map(or_, map(lshift, hint.revisions, repeat(REVISION_SHIFT)), hashes),
            ),
        )
        self.locations = dict(zip(keys, locations, strict=True))
        self.ordered = SortedList(keys)
        key_at = keys.__getitem__
        hash_at = hashes.__getitem__
        by_value: dict[int, Holder] = dict(
            zip(map(hash_at, hint.singles), map(key_at, hint.singles), strict=True)
        )
        grouped = hint.grouped
        start = 0
        for end in hint.group_ends:  # one step per shared value, not per key
            # A tuple, not a set: cheaper to build, and made a set only if the group changes.
            by_value[hash_at(grouped[start])] = tuple(map(key_at, grouped[start:end]))
            start = end
        self.by_value = by_value

    def _unlink_value(self, hashed: int, key: str) -> None:
        holder = self.by_value.get(hashed)
        if holder is None:
            return
        if isinstance(holder, str):
            if holder == key:
                del self.by_value[hashed]
            return
        if isinstance(holder, tuple):
            holder = set(holder)
            self.by_value[hashed] = holder
        holder.discard(key)
        if len(holder) == 1:
            self.by_value[hashed] = next(iter(holder))
        elif not holder:
            del self.by_value[hashed]
