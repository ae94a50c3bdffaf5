"""The keys the index holds as columns: sorted keys in chunks (``key_chunks.py``), their
locations packed 22 bytes apiece by entry number, and a value order searched by bisection
(``value_order.py``).

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

While the store runs, the index's overlay folds its new keys in (``insert``, a step at a time):
their entries go at the end, their keys into the chunks, and the value order takes one run per
step. Otherwise the columns change only by ``repoint_if`` (compaction moved a value: the same
value, so the same hash). Keys overwritten or deleted since live in ``KeyIndex``'s overlay; the
index asks these columns only about keys it does not know.

Owns the columns; the Store's lock serialises every call (through ``KeyIndex``) but the value
order's merge, which runs in a thread of its own and swaps its result in under ``_order_lock``.
"""

from __future__ import annotations

import threading
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Iterator, Sequence
from dataclasses import replace
from itertools import compress, filterfalse, islice
from operator import and_, ne
from typing import Final, Literal

from . import value_order
from .hint import HASH_MASK, HintColumns
from .key_chunks import KeyChunks
from .packed import ENTRY, LENGTH_AT, LocationColumn, pack_entries, u32_field
from .value_order import Run, hint_order, merge_runs, order_by_hash

_BIG: Final[Literal["big"]] = "big"
# The value order: (one merged run as (hashes, entry numbers), or None; the runs not merged yet).
Order = tuple[tuple["array[int]", "array[int]"] | None, tuple[Run, ...]]


class KeyColumns:
    """Sorted live keys and, per key, its packed location; value hashes in ascending order."""

    __slots__ = (
        "_all_keys",
        "_all_live",
        "_chunks",
        "_entries",
        "_merging",
        "_order",
        "_order_lock",
    )

    def __init__(
        self,
        chunks: KeyChunks,
        entries: bytearray,
        all_keys: list[str],
        runs: list[Run],
        *,
        all_live: bool,
    ) -> None:
        self._chunks = chunks  # the live keys, sorted, with their entry numbers (replaced whole)
        self._entries = entries  # every entry loaded or folded in, packed, ENTRY bytes each
        self._all_keys = all_keys  # every entry's key (deletes included), by entry number
        # Whether every entry is its key's live one: true unless the open merged hints in which
        # a later entry replaced or deleted a key (then ``_live`` checks each candidate against
        # the key order); folds keep it as it is.
        self._all_live = all_live
        # The value order: each hint's own run until ``merge_value_order`` (a background thread
        # after open) has merged them into one; then that one and a run per fold step since.
        # Read whole (one attribute); replaced under ``_order_lock``; one merge at a time.
        self._order: Order = (None, tuple(runs))
        self._order_lock = threading.Lock()
        self._merging = threading.Lock()

    @classmethod
    def from_sorted(cls, keys: list[str], locations: Sequence[int]) -> KeyColumns:
        """Columns of ``keys`` (sorted, each once) at ``locations``: a first fold."""
        packed = bytearray(pack_entries(locations))
        by_hash, hashes = order_by_hash(packed)
        chunks = KeyChunks.viewing(keys, None)
        return cls(chunks, packed, keys, [(0, hashes, by_hash)], all_live=True)

    @classmethod
    def from_hints(cls, hints: Sequence[HintColumns]) -> KeyColumns:
        """The columns of ``hints`` (consecutive segments, oldest first) folded together: a later
        hint's entry for a key wins, and its deleted keys drop out."""
        hints, disjoint = _in_key_order(hints)
        if len(hints) == 1 and not hints[0].deleted:
            hint = hints[0]
            packed = bytearray(_entries_of(hint))  # mutable: ``repoint_if``
            by_hash, hashes = hint_order(hint, packed)
            chunks = KeyChunks.viewing(hint.keys, None)
            return cls(chunks, packed, hint.keys, [(0, hashes, by_hash)], all_live=True)
        all_keys: list[str] = []
        packed = bytearray()
        live = bytearray()
        runs: list[Run] = []
        for hint in hints:
            entries = _entries_of(hint)
            by_hash, hashes = hint_order(hint, entries)
            runs.append((len(all_keys), hashes, by_hash))
            all_keys += hint.keys
            packed += entries
            live += b"\x01" * len(hint.keys)
            if hint.deleted:  # entries of their own, never live, so that a delete wins too
                all_keys += hint.deleted
                packed += bytes(ENTRY * len(hint.deleted))
                live += bytes(len(hint.deleted))
        if disjoint:  # the keys end to end are in order, each once, none deleted
            return cls(KeyChunks.viewing(all_keys, None), packed, all_keys, runs, all_live=True)
        order = sorted(range(len(all_keys)), key=all_keys.__getitem__)  # stable: oldest first
        ordered_keys = list(map(all_keys.__getitem__, order))
        last = list(map(ne, ordered_keys, islice(ordered_keys, 1, None)))
        last.append(True)
        # Each C-level pass over ten million keys in random order costs ~0.5-0.9 s of the open
        # (docs/PERFORMANCE.md): skipped when there is nothing to drop (no deletes; no key in
        # two hints, as after a load of new keys in random order).
        keep = last if 0 not in live else list(map(and_, last, map(live.__getitem__, order)))
        if False not in keep:  # every entry is its key's only one, and live
            return cls(
                KeyChunks.viewing(ordered_keys, array("I", order)),
                packed,
                all_keys,
                runs,
                all_live=True,
            )
        keys = list(compress(ordered_keys, keep))
        at = array("I", compress(order, keep))
        return cls(KeyChunks.viewing(keys, at), packed, all_keys, runs, all_live=False)

    def insert(self, new_keys: list[str], locations: Sequence[int]) -> None:
        """Add ``new_keys`` (sorted, none held) at ``locations``: their entries go at the end,
        their keys into the chunks (``KeyChunks.inserted``), and the value order takes one more
        run. Everything that allocates comes first: a failure leaves the columns as they were."""
        count = len(new_keys)
        if not count:
            return
        all_keys = self._all_keys
        first = len(all_keys)
        packed = pack_entries(locations)
        by_hash, hashes = order_by_hash(packed)
        chunks = self._chunks.inserted(new_keys, first, all_keys)
        self._entries += packed
        all_keys += new_keys
        self._chunks = chunks
        with self._order_lock:
            base, runs = self._order
            self._order = (base, (*runs, (first, hashes, by_hash)))

    def __len__(self) -> int:
        return len(self._chunks)

    def __iter__(self) -> Iterator[str]:
        """The keys, in order."""
        return iter(self._chunks)

    def keys_from(self, key: str, *, after: bool) -> Iterator[str]:
        """The keys from ``key`` on (``after``: strictly greater), in order."""
        return self._chunks.keys_from(key, after=after)

    def keys_between(self, start: str, end: str | None) -> list[str]:
        """The keys from ``start`` (included) to ``end`` (excluded; None: to the last)."""
        return self._chunks.keys_between(start, end)

    def position(self, key: str) -> int:
        """Where ``key`` is (for ``location_at`` and ``repoint_if``), or -1."""
        return self._chunks.position(key)

    def position_near(self, key: str, guess: int) -> int:
        """``position``, looking just after ``guess`` first (``KeyChunks.position_near``)."""
        return self._chunks.position_near(key, guess)

    def located_near(self, key: str, guess: int) -> tuple[int, int]:
        """(``position_near``, that key's location; 0 if absent): compaction's batch reads, one
        call per key."""
        i = self._chunks.position_near(key, guess)
        return (i, 0) if i < 0 else (i, self.location_at(i))

    def repoint_if(self, i: int, expected: int, location: int) -> bool:
        """Point the key at position ``i`` at ``location`` if it still points at ``expected``:
        compaction copied its value there (same value, same hash, so the value order stays
        right)."""
        start = self._chunks.entry_at(i) * ENTRY
        entries = self._entries
        if int.from_bytes(entries[start : start + ENTRY], _BIG) != expected:
            return False
        entries[start : start + ENTRY] = location.to_bytes(ENTRY, _BIG)
        return True

    def location_at(self, i: int) -> int:
        """The location of the key at position ``i``."""
        start = self._chunks.entry_at(i) * ENTRY
        return int.from_bytes(self._entries[start : start + ENTRY], _BIG)

    def get(self, key: str) -> int | None:
        """``key``'s location, or None if the columns do not hold it."""
        chunks = self._chunks
        i = chunks.position(key)
        if i < 0:
            return None
        start = chunks.entry_at(i) * ENTRY
        return int.from_bytes(self._entries[start : start + ENTRY], _BIG)

    def candidates(self, hashed: int) -> Iterator[tuple[str, int]]:
        """(key, location) of each live key whose value has hash ``hashed``, in no set order."""
        merged, runs = self._order  # one read: a merge swaps both at once
        if merged is not None:
            hashes, numbers = merged
            low = bisect_left(hashes, hashed)
            yield from self._live(hashed, numbers[low : bisect_right(hashes, hashed, low)])
        for first, hashes, positions in runs:
            low = bisect_left(hashes, hashed)
            high = bisect_right(hashes, hashed, low)
            if low < high:
                yield from self._live(hashed, [first + p for p in positions[low:high]])

    def _live(self, hashed: int, numbers: Sequence[int]) -> Iterator[tuple[str, int]]:
        all_keys, entries, chunks = self._all_keys, self._entries, self._chunks
        for entry in numbers:
            if entry >= len(all_keys):
                continue  # only a hint that lied (checked here, not at load: 10M compares)
            key = all_keys[entry]
            if not self._all_live:
                i = chunks.position(key)
                if i < 0 or chunks.entry_at(i) != entry:
                    continue  # a later entry of the key won (or a delete)
            start = entry * ENTRY
            location = int.from_bytes(entries[start : start + ENTRY], _BIG)
            if location & HASH_MASK == hashed:  # never otherwise, unless a hint lied
                yield key, location

    def merge_value_order(
        self, stop: threading.Event | None = None, *, tail_up_to: int | None = None
    ) -> bool:
        """Merge the value order's runs into one (a bucket of hashes at a time); False if
        ``stop`` was set first. Until then ``candidates`` bisects each run: a find costs a
        bisection per run instead of one. Runs in a background thread (merging ten million
        entries takes a few seconds, a third of a reopen when it was done inline); nothing any
        other call reads changes but ``_order``, swapped at the end. ``tail_up_to``: merge only
        the newest runs of at most that many entries each, into one run of their own (a fold's
        steps; cheap), else everything (``settle_value_order`` decides).
        """
        with self._merging:
            merged, runs = self._order
            if tail_up_to is None:
                kept: tuple[Run, ...] = ()
                inputs = [(0, *merged), *runs] if merged is not None else list(runs)
            else:
                cut = len(runs)
                while cut and len(runs[cut - 1][1]) <= tail_up_to:
                    cut -= 1
                kept, inputs = runs[:cut], list(runs[cut:])
            if not runs or (tail_up_to is not None and len(inputs) < 2):
                return True  # (one run alone is merged whole: that sorts a hint out of order)
            result = merge_runs(inputs, stop)
            if result is None:
                return False
            with self._order_lock:
                merged_now, runs_now = self._order
                later = runs_now[len(runs) :]  # added by ``append`` while this merge ran
                if tail_up_to is None:
                    self._order = (result, later)
                else:
                    self._order = (merged_now, (*kept, (0, *result), *later))
            return True

    def settle_value_order(self, stop: threading.Event | None, step: int) -> bool:
        """After a fold of ``step``-key steps: merge everything once the runs beside the merged
        one hold half as many entries (so an entry is merged a few times over the life of the
        store, not once per fold), else only the fold's own runs into one."""
        merged, _ = self._order
        if merged is None or 2 * self.unmerged_entries() >= len(merged[0]):
            return self.merge_value_order(stop)
        return self.merge_value_order(stop, tail_up_to=step)

    def unmerged_entries(self) -> int:
        """How many entries the value order holds outside its merged run."""
        return sum(len(run[1]) for run in self._order[1])

    def merges_at_open(self) -> bool:
        """Whether what is left of the value order is small enough to merge during the open."""
        return self.unmerged_entries() <= value_order.SMALL_VALUE_ORDER

    def value_bytes(self) -> int:
        """The bytes of the live keys' values."""
        lengths = u32_field(self._entries, LENGTH_AT)
        if self._all_live and len(self._chunks) == len(self._all_keys):
            return sum(lengths)  # every entry is a live key's: one C-level pass
        return sum(map(lengths.__getitem__, self._chunks.entry_numbers()))

    def key_bytes(self) -> int:
        """The UTF-8 bytes of the live keys."""
        total = sum(map(len, self))  # characters; the extra bytes of non-ASCII keys added below
        for key in filterfalse(str.isascii, self):
            total += len(key.encode("utf-8")) - len(key)
        return total

    def frozen(self) -> KeyColumns:
        """A copy that later ``repoint_if`` and ``insert`` calls leave alone (for snapshots):
        the packed locations are copied; the chunks are replaced whole, never changed, and the
        rest only grows at the end or is replaced whole."""
        twin = KeyColumns.__new__(KeyColumns)
        for name in KeyColumns.__slots__:
            setattr(twin, name, getattr(self, name))
        twin._entries = bytearray(self._entries)  # noqa: SLF001 - the twin's own slot
        return twin

    def check(self) -> None:
        """AssertionError unless the chunks are right and every live key is found by its own
        value hash."""
        self._chunks.check(self._all_keys)
        for key in self:
            location = self.get(key)
            assert location is not None
            if (key, location) not in self.candidates(location & HASH_MASK):
                raise AssertionError(f"the value order does not find {key!r}")


def disjoint_prefix(hints: Sequence[HintColumns]) -> int:
    """How many of ``hints``, from the first, have key ranges (deleted keys included) that no
    other of them overlaps: those load end to end (``from_hints``), and a later hint can be
    applied on top of them entry by entry instead of merged by a sort of every key."""
    lows: list[str] = []  # the ranges so far, sorted by their lowest key, and their highest
    highs: list[str] = []
    for count, hint in enumerate(hints):
        found = _key_range(hint)
        if found is None:
            continue  # nothing in it
        low, high = found
        i = bisect_left(lows, low)
        if (i and highs[i - 1] >= low) or (i < len(lows) and lows[i] <= high):
            return count
        lows.insert(i, low)
        highs.insert(i, high)
    return len(hints)


def _key_range(hint: HintColumns) -> tuple[str, str] | None:
    """The lowest and the highest key a hint names (deleted keys included), or None if none."""
    keys, deleted = hint.keys, hint.deleted
    low = min(keys[:1] + deleted[:1], default=None)
    if low is None:
        return None
    return low, max(keys[-1:] + deleted[-1:])


def _in_key_order(hints: Sequence[HintColumns]) -> tuple[Sequence[HintColumns], bool]:
    """``hints`` reordered by key range when no two ranges overlap (deleted keys included), with
    their deletes dropped: then no key is in two hints, so their order does not matter and a
    delete deletes nothing another hint holds; the columns are their keys end to end. That is
    the common case for compaction's outputs, which split the key space between them. Else
    ``hints`` unchanged (merged by a sort of every key). The flag: whether they were disjoint.

    Each hint's keys are sorted as written (``encode_hint`` sorts them; its checksum keeps them
    so): its first and last keys are its range."""
    if disjoint_prefix(hints) < len(hints):
        return hints, False
    ranges = []
    for number, hint in enumerate(hints):
        found = _key_range(hint)
        if found is not None:  # (else nothing in it)
            ranges.append((found, number))
    ordered = [hints[number] for _, number in sorted(ranges)]
    return [replace(hint, deleted=[]) if hint.deleted else hint for hint in ordered], True


def _entries_of(hint: HintColumns) -> bytes | bytearray:
    locations = hint.locations
    if isinstance(locations, LocationColumn):
        return locations.entries
    return pack_entries(locations)
