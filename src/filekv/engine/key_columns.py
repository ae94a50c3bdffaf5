"""The keys an open loaded from hint files, kept as columns: sorted keys searched by bisection,
their locations packed 22 bytes apiece, and a value order searched by bisection too.

Why columns (docs/PERFORMANCE.md, issue 9): a dict of ten million keys took 6.4 s to build on
these machines, one random memory access per insert, and 24 bytes per key plus a 48-byte int per
location; the value index as a dict took 4 s more. The hint files already hold every column in
the order a search needs (keys sorted; positions ordered by value hash), so loading them is a few
C-level copies, and a store of ten million keys costs about 100 bytes per key, most of it the key
strings themselves.

Several hints (one per sealed segment) are merged once, at open, with C-level passes only: their
keys concatenated oldest first, a stable sort of positions by key (timsort merges the sorted runs
in close to one pass), and the last entry of each key kept unless it is a delete. Entries a later
hint replaced stay in the concatenation until the next open (their key and packed location; the
value order still lists them): a value-order candidate counts only if its key's winning entry is
that very entry.

The columns never change after loading but for ``repoint_if`` (compaction moved a value: the same
value, so the same hash). Keys written, overwritten or deleted since live in ``KeyIndex``'s
overlay; the index asks these columns only about keys the overlay does not know.

Owns the loaded columns; the Store's lock serialises every call (through ``KeyIndex``).
"""

from __future__ import annotations

import logging
import threading
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Iterator, Sequence
from dataclasses import replace
from itertools import compress, filterfalse, islice, repeat
from operator import add, and_, ne
from typing import Final, Literal

from .hint import HASH_MASK, HintColumns
from .packed import (
    ENTRY,
    HASH_AT,
    LENGTH_AT,
    LITTLE_ENDIAN,
    LocationColumn,
    pack_entries,
    u32_field,
)

log = logging.getLogger(__name__)
_BIG: Final[Literal["big"]] = "big"
# A hint's value order: (its first entry number, hashes ascending, their positions in the hint).
Run = tuple[int, "array[int]", "array[int]"]
STRIDE: Final = 64  # keys per window of the sampled search
BUCKET_BITS: Final = 10  # the value order is merged in 1,024 buckets of hashes
# A value order of up to this many entries is merged during the open, in one sort: a thread
# started for it cost more than the merge (6 ms of each open of a small store), and so did
# finding 1,024 buckets in each run (merging 1,000 entries from four runs: 4.7 ms by buckets,
# 0.34 ms in one piece).
SMALL_VALUE_ORDER = 1 << 16
_SEPARATOR: Final[str] = chr(0xDCFF)  # a lone surrogate: never in a key (keys are valid Unicode)


class KeyColumns:
    """Sorted live keys and, per key, its packed location; value hashes in ascending order."""

    __slots__ = ("_all_keys", "_at", "_entries", "_merged", "_runs", "_sample", "keys")

    def __init__(
        self,
        keys: list[str],
        at: array[int] | None,
        entries: bytearray,
        all_keys: list[str],
        runs: list[Run],
    ) -> None:
        self.keys = keys  # the live keys, sorted; never changed
        # keys[i]'s entry number in ``entries`` and ``all_keys``; None: the same number, i.
        self._at = at
        self._entries = entries  # every entry loaded, packed, ENTRY bytes each
        self._all_keys = all_keys  # every entry's key (deletes included), by entry number
        # The value order: each hint's own run until ``merge_value_order`` (a background thread
        # after open) has merged them into one; then (hashes ascending, their entry numbers).
        self._runs: list[Run] | None = runs
        self._merged: tuple[array[int], array[int]] | None = None
        # Every STRIDE-th key, copied into new strings that lie next to each other in memory:
        # a search bisects these first, then a window of STRIDE keys. Bisecting the ten million
        # keys directly touches ~24 strings scattered over 640 MB, a cache and TLB miss each:
        # 4.3 us a search at 10M keys on these machines, 3.6 us this way.
        self._sample = _SEPARATOR.join(keys[::STRIDE]).split(_SEPARATOR) if keys else []

    @classmethod
    def from_hints(cls, hints: Sequence[HintColumns]) -> KeyColumns:
        """The columns of ``hints`` (consecutive segments, oldest first) folded together: a later
        hint's entry for a key wins, and its deleted keys drop out."""
        hints, disjoint = _in_key_order(hints)
        if len(hints) == 1 and not hints[0].deleted:
            hint = hints[0]
            packed = bytearray(_entries_of(hint))  # mutable: ``repoint_if``
            by_hash, hashes = _value_order(hint, packed)
            return cls(hint.keys, None, packed, hint.keys, [(0, hashes, by_hash)])
        all_keys: list[str] = []
        packed = bytearray()
        live = bytearray()
        runs: list[Run] = []
        for hint in hints:
            entries = _entries_of(hint)
            by_hash, hashes = _value_order(hint, entries)
            runs.append((len(all_keys), hashes, by_hash))
            all_keys += hint.keys
            packed += entries
            live += b"\x01" * len(hint.keys)
            if hint.deleted:  # entries of their own, never live, so that a delete wins too
                all_keys += hint.deleted
                packed += bytes(ENTRY * len(hint.deleted))
                live += bytes(len(hint.deleted))
        if disjoint:  # the keys end to end are in order, each once, none deleted
            return cls(all_keys, None, packed, all_keys, runs)
        order = sorted(range(len(all_keys)), key=all_keys.__getitem__)  # stable: oldest first
        ordered_keys = list(map(all_keys.__getitem__, order))
        last = list(map(ne, ordered_keys, islice(ordered_keys, 1, None)))
        last.append(True)
        keep = list(map(and_, last, map(live.__getitem__, order)))
        keys = list(compress(ordered_keys, keep))
        at = array("I", compress(order, keep))
        return cls(keys, at, packed, all_keys, runs)

    def __len__(self) -> int:
        return len(self.keys)

    def position(self, key: str) -> int:
        """Where ``key`` is in ``keys``, or -1."""
        window = bisect_right(self._sample, key)
        if not window:
            return -1  # before the first key
        keys = self.keys
        high = min(window * STRIDE, len(keys))
        i = bisect_left(keys, key, (window - 1) * STRIDE, high)
        return i if i < high and keys[i] == key else -1

    def position_near(self, key: str, guess: int) -> int:
        """``position``, looking at ``guess`` first (one compare when the caller walks keys in
        order and the columns hold them next to each other)."""
        keys = self.keys
        if guess < len(keys) and keys[guess] == key:
            return guess
        return self.position(key)

    def located_near(self, key: str, guess: int) -> tuple[int, int]:
        """(``position_near``, that key's location; 0 if absent): compaction's batch reads, one
        call per key."""
        i = self.position_near(key, guess)
        return (i, 0) if i < 0 else (i, self.location_at(i))

    def repoint_if(self, i: int, expected: int, location: int) -> bool:
        """Point ``keys[i]`` at ``location`` if it still points at ``expected``: compaction
        copied its value there (same value, same hash, so the value order stays right)."""
        start = (i if self._at is None else self._at[i]) * ENTRY
        entries = self._entries
        if int.from_bytes(entries[start : start + ENTRY], _BIG) != expected:
            return False
        entries[start : start + ENTRY] = location.to_bytes(ENTRY, _BIG)
        return True

    def location_at(self, i: int) -> int:
        """The location of ``keys[i]``."""
        entry = i if self._at is None else self._at[i]
        start = entry * ENTRY
        return int.from_bytes(self._entries[start : start + ENTRY], _BIG)

    def get(self, key: str) -> int | None:
        """``key``'s location, or None if the columns do not hold it."""
        i = self.position(key)
        if i < 0:
            return None
        entry = i if self._at is None else self._at[i]
        start = entry * ENTRY
        return int.from_bytes(self._entries[start : start + ENTRY], _BIG)

    def candidates(self, hashed: int) -> Iterator[tuple[str, int]]:
        """(key, location) of each live key whose value has hash ``hashed``, in no set order."""
        # The merging thread sets _merged, then clears _runs: read in the other order, one of
        # the two is always there.
        runs = self._runs
        merged = self._merged
        if merged is not None:
            hashes, numbers = merged
            low = bisect_left(hashes, hashed)
            yield from self._live(hashed, numbers[low : bisect_right(hashes, hashed, low)])
            return
        for first, hashes, positions in runs or ():
            low = bisect_left(hashes, hashed)
            high = bisect_right(hashes, hashed, low)
            if low < high:
                yield from self._live(hashed, [first + p for p in positions[low:high]])

    def _live(self, hashed: int, numbers: Sequence[int]) -> Iterator[tuple[str, int]]:
        all_keys, at = self._all_keys, self._at
        for entry in numbers:
            if entry >= len(all_keys):
                continue  # only a hint that lied (checked here, not at load: 10M compares)
            key = all_keys[entry]
            if at is None:  # every entry is live, at its own position
                i = entry
            else:
                i = self.position(key)
                if i < 0 or at[i] != entry:
                    continue  # a later entry of the key won (or a delete)
            location = self.location_at(i)
            if location & HASH_MASK == hashed:  # never otherwise, unless a hint lied
                yield key, location

    def merge_value_order(self, stop: threading.Event | None = None) -> bool:
        """Merge the hints' value orders into one (a bucket of hashes at a time); False if
        ``stop`` was set first. Until then ``candidates`` bisects each hint's run: a find costs
        a bisection per hint instead of one. Runs in a background thread after open (merging
        ten million entries takes a few seconds, a third of a reopen when it was done inline);
        it changes nothing any other call reads but the one ``_merged`` assignment at the end.
        """
        runs = self._runs
        if runs is None:
            return True
        hashes, numbers = array("I"), array("I")
        for first, run_hashes, positions in runs:
            if stop is not None and stop.is_set():
                return False
            hashes += run_hashes
            numbers += array("I", map(add, positions, repeat(first))) if first else positions
        merged = _merged_value_order(hashes, numbers, [len(run[1]) for run in runs], stop)
        if merged is None:
            return False
        self._merged = merged
        self._runs = None
        return True

    def unmerged_entries(self) -> int:
        """How many entries the value order still has to merge (0 once merged)."""
        runs = self._runs
        return 0 if runs is None else sum(len(run[1]) for run in runs)

    def merges_at_open(self) -> bool:
        """Whether what is left of the value order is small enough to merge during the open."""
        return self.unmerged_entries() <= SMALL_VALUE_ORDER

    def value_bytes(self) -> int:
        """The bytes of the live keys' values."""
        lengths = u32_field(self._entries, LENGTH_AT)
        if self._at is None:
            return sum(lengths)
        return sum(map(lengths.__getitem__, self._at))

    def key_bytes(self) -> int:
        """The UTF-8 bytes of the live keys."""
        keys = self.keys
        total = sum(map(len, keys))  # characters; the extra bytes of non-ASCII keys added below
        for key in filterfalse(str.isascii, keys):
            total += len(key.encode("utf-8")) - len(key)
        return total

    def frozen(self) -> KeyColumns:
        """A copy that later ``repoint_if`` calls leave alone (for snapshots): only the packed
        locations are copied; every other column never changes."""
        twin = KeyColumns.__new__(KeyColumns)
        for name in KeyColumns.__slots__:
            setattr(twin, name, getattr(self, name))
        setattr(twin, "_entries", bytearray(self._entries))  # noqa: B010 - a slot of the twin
        return twin

    def check(self) -> None:
        """AssertionError unless every live key is found by its own value hash."""
        if any(map(lambda a, b: a >= b, self.keys, islice(self.keys, 1, None))):
            raise AssertionError("the key column is not sorted")
        for i, key in enumerate(self.keys):
            location = self.location_at(i)
            if (key, location) not in self.candidates(location & HASH_MASK):
                raise AssertionError(f"the value order does not find {key!r}")


def _in_key_order(hints: Sequence[HintColumns]) -> tuple[Sequence[HintColumns], bool]:
    """``hints`` reordered by key range when no two ranges overlap (deleted keys included), with
    their deletes dropped: then no key is in two hints, so their order does not matter and a
    delete deletes nothing another hint holds; the columns are their keys end to end. That is
    the common case for compaction's outputs, which split the key space between them. Else
    ``hints`` unchanged (merged by a sort of every key). The flag: whether they were disjoint.

    Each hint's keys are sorted as written (``encode_hint`` sorts them; its checksum keeps them
    so): its first and last keys are its range."""
    ranges = []
    for number, hint in enumerate(hints):
        keys, deleted = hint.keys, hint.deleted
        low = min(keys[:1] + deleted[:1], default=None)
        if low is None:
            continue  # nothing in it
        high = max(keys[-1:] + deleted[-1:])
        ranges.append((low, high, number))
    ranges.sort()
    if any(ranges[i][1] >= ranges[i + 1][0] for i in range(len(ranges) - 1)):
        return hints, False
    ordered = [hints[number] for _, _, number in ranges]
    return [replace(hint, deleted=[]) if hint.deleted else hint for hint in ordered], True


def _entries_of(hint: HintColumns) -> bytes | bytearray:
    locations = hint.locations
    if isinstance(locations, LocationColumn):
        return locations.entries
    return pack_entries(locations)


def _sorted_by_bucket(
    wide: array[int], lengths: Sequence[int], stop: threading.Event | None = None
) -> array[int] | None:
    """``wide`` (runs of the given ``lengths``, each meant to ascend) sorted, a bucket at a time."""
    buckets, shift = 1 << BUCKET_BITS, 64 - BUCKET_BITS
    cuts: list[list[int]] = []  # per run: where each bucket starts in ``wide``, then its end
    start = 0
    for length in lengths:
        end = start + length
        bounds, at = [start], start
        for bucket in range(1, buckets):
            at = bisect_left(wide, bucket << shift, at, end)  # from ``at``: never backwards
            bounds.append(at)
        bounds.append(end)
        cuts.append(bounds)
        start = end
    out = array("Q")
    for bucket in range(buckets):
        if stop is not None and stop.is_set():
            return None
        chunk = array("Q")
        for bounds in cuts:
            chunk += wide[bounds[bucket] : bounds[bucket + 1]]
        if not chunk:
            continue
        ordered = sorted(chunk)
        if ordered[0] >> shift != bucket or ordered[-1] >> shift != bucket:
            return array("Q", sorted(wide))  # a run out of order: sort it all
        out += array("Q", ordered)
    return out


def _value_order(hint: HintColumns, entries: bytes | bytearray) -> tuple[array[int], array[int]]:
    """(entry positions by value hash, their hashes ascending): from a version 5 hint as stored,
    else sorted here (older hints; a store rewrites them as version 5 when it compacts)."""
    if len(hint.by_hash) == len(hint.keys) and len(hint.hashes) == len(hint.keys):
        return _as_array(hint.by_hash), _as_array(hint.hashes)
    hashes = u32_field(entries, HASH_AT)
    by_hash = array("I", sorted(range(len(hashes)), key=hashes.__getitem__))
    return by_hash, array("I", map(hashes.__getitem__, by_hash))


def _as_array(values: Sequence[int]) -> array[int]:
    return values if isinstance(values, array) else array("I", values)


def _merged_value_order(
    hashes: array[int],
    entries: array[int],
    lengths: Sequence[int],
    stop: threading.Event | None = None,
) -> tuple[array[int], array[int]] | None:
    """Runs of (hash, entry) pairs of the given ``lengths``, each ascending by hash, sorted into
    one: (hashes, entries).

    Each pair is packed into one 64-bit integer (hash high, entry low) with strided byte copies,
    so the sort compares plain ints with no key function. The sort goes a bucket of hashes at a
    time (their top ``BUCKET_BITS`` bits, found in each run by bisection): a bucket's ints are
    created together and sorted while they fit in the cache. One sort of ten million such ints
    from 29 runs took 3.3 s on these machines, most of it cache misses; sorting entry numbers by
    a key and gathering both columns, 6 s.

    A run that does not ascend (a hint that did not keep its order) puts some pair in a bucket
    not its own; that is seen, and everything is sorted in one piece instead. None if ``stop``
    was set on the way.
    """
    count = len(hashes)
    wide = array("Q")
    if not LITTLE_ENDIAN or wide.itemsize != 8:  # pragma: no cover - not on the machines in use
        order = sorted(range(count), key=hashes.__getitem__)
        return array("I", map(hashes.__getitem__, order)), array(
            "I", map(entries.__getitem__, order)
        )
    pairs = bytearray(8 * count)
    low, high = entries.tobytes(), hashes.tobytes()
    for byte in range(4):
        pairs[byte::8] = low[byte::4]
        pairs[4 + byte :: 8] = high[byte::4]
    wide.frombytes(pairs)
    del pairs, low, high
    if count <= SMALL_VALUE_ORDER:
        ordered: array[int] | None = array("Q", sorted(wide))
    else:
        ordered = _sorted_by_bucket(wide, lengths, stop)
    if ordered is None:
        return None
    del wide
    merged = ordered.tobytes()
    del ordered
    low_out, high_out = bytearray(4 * count), bytearray(4 * count)
    for byte in range(4):
        low_out[byte::4] = merged[byte::8]
        high_out[byte::4] = merged[4 + byte :: 8]
    sorted_hashes, sorted_entries = array("I"), array("I")
    sorted_hashes.frombytes(high_out)
    sorted_entries.frombytes(low_out)
    return sorted_hashes, sorted_entries


class ValueOrderMerger:
    """Owns the thread that merges a ``KeyColumns``' value order after open (``stop`` ends it
    early, at close)."""

    def __init__(self, columns: KeyColumns) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(columns,), name="filekv-value-order", daemon=True
        )
        self._thread.start()

    def _run(self, columns: KeyColumns) -> None:
        try:
            columns.merge_value_order(self._stop)
        except Exception:  # finds stay right, one bisection per hint: log, do not crash
            log.exception("merging the value order failed; find searches each hint instead")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def join(self) -> None:
        """Wait until the merge is done (benchmarks and tests)."""
        self._thread.join()
