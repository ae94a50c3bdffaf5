"""The in-memory indexes: key -> location, ordered keys, value hash -> keys, and expiries.

Values stay on disk; memory holds, per key, the key string and one packed location
(``hint.pack``: the same layout hint files store), in one of two places:

- the columns loaded at open from hint files (``key_columns.py``), or folded in since: sorted
  keys in chunks, packed locations and a value order, each searched by bisection;
- the overlay, for every key set since: a dict key -> location, a sorted list of the keys the
  columns do not hold, and a dict value hash -> keys. A column key deleted since is noted in
  ``_deleted``; one set again lives in the overlay, which is asked first.

A store that loaded no hint starts with no columns: everything is overlay, as fast to change
as a dict, at about 240 bytes per key against the columns' ~130. Once the new keys are a
sixteenth of the columns', they are folded in by a background thread (``overlay_folder.py``,
``fold_step``); keys overwritten or deleted stay in the overlay.

Owns these structures; the Store's lock serialises every call.
"""

from __future__ import annotations

import heapq
import threading
from collections.abc import Callable, Iterator
from itertools import filterfalse, takewhile

from sortedcontainers import SortedList

from .expiry_index import ExpiryIndex
from .hint import HASH_MASK
from .key_columns import KeyColumns
from .value_order import ValueOrderMerger

# The keys under one value hash in the overlay: the key itself when it is alone (the common
# case: no container object at all), or a dict key -> location when several keys share the hash
# (find verifies candidates with the locations at hand instead of looking each up again).
Holder = str | dict[str, int]

# The overlay's new keys are folded into the columns once they are this share of them (and at
# least FOLD_MIN_KEYS), FOLD_STEP keys per hold of the store lock (docs/PERFORMANCE.md).
FOLD_SHARE = 16
FOLD_MIN_KEYS = 1 << 16
FOLD_STEP = 1 << 13


class KeyIndex(ExpiryIndex):
    """Every live key, where its value is, in key order, and grouped by value hash.

    Not thread-safe by itself: the Store serialises every call under its lock.
    """

    __slots__ = (
        "_added",
        "_columns",
        "_count",
        "_deleted",
        "_merger",
        "_overlay",
        "by_value",
    )

    def __init__(self) -> None:
        self._columns: KeyColumns | None = None
        self._overlay: dict[str, int] = {}
        self._added: SortedList = SortedList()  # overlay keys the columns do not hold
        self._deleted: set[str] = set()  # column keys deleted since they were loaded
        self._count = 0
        self._merger: ValueOrderMerger | None = None
        self.by_value: dict[int, Holder] = {}  # the overlay's keys by value hash
        super().__init__()

    def __len__(self) -> int:
        return self._count

    def get(self, key: str) -> int | None:
        """``key``'s location, or None."""
        location = self._overlay.get(key)
        if location is not None or self._columns is None or key in self._deleted:
            return location
        return self._columns.get(key)

    def __contains__(self, key: str) -> bool:
        return self.get(key) is not None

    def set(self, key: str, location: int) -> int | None:
        """Point ``key`` at ``location``; return the previous location."""
        overlay = self._overlay
        previous = overlay.get(key)
        overlay[key] = location
        hashed = location & HASH_MASK
        if previous is None:
            columns = self._columns
            if columns is None:
                self._added.add(key)
                self._count += 1
            elif key in self._deleted:
                self._deleted.remove(key)
                self._count += 1
            else:
                i = columns.position(key)
                if i < 0:
                    self._added.add(key)
                    self._count += 1
                else:  # the column entry is shadowed from now on
                    previous = columns.location_at(i)
        else:
            old_hash = previous & HASH_MASK
            if old_hash == hashed:
                holder = self.by_value.get(hashed)
                if isinstance(holder, dict):
                    holder[key] = location
                return previous
            self._unlink_value(old_hash, key)
        holder = self.by_value.get(hashed)
        if holder is None:
            self.by_value[hashed] = key
        elif isinstance(holder, str):
            self.by_value[hashed] = {holder: overlay[holder], key: location}
        else:
            holder[key] = location
        return previous

    def remove(self, key: str) -> int | None:
        """Forget ``key``; return its location, or None if it was not there."""
        previous = self._forget(key)
        if previous is not None and self.expiries:
            self.set_expiry(key, None)
        return previous

    def _forget(self, key: str) -> int | None:
        previous = self._overlay.pop(key, None)
        columns = self._columns
        if previous is not None:
            self._unlink_value(previous & HASH_MASK, key)
            if columns is not None and columns.position(key) >= 0:
                self._deleted.add(key)
            else:
                self._added.remove(key)
        else:
            if columns is None or key in self._deleted:
                return None
            i = columns.position(key)
            if i < 0:
                return None
            previous = columns.location_at(i)
            self._deleted.add(key)
        self._count -= 1
        return previous

    def remove_expired(self, keys: list[str]) -> list[int]:
        """``remove`` for keys the sweeper expires; their previous locations, in order.

        They are nearly always the head of the expiry order (the longest expired first), which
        is then cut off in one slice instead of one search per key.
        """
        head = [key for _, key in self.by_expiry.islice(0, len(keys))]
        if head == keys:
            del self.by_expiry[: len(keys)]
            pop = self.expiries.pop
            for key in keys:
                pop(key)
        previous = []
        for key in keys:
            location = self._forget(key)
            if location is None:
                raise KeyError(key)
            if self.expiries:
                self.set_expiry(key, None)
            previous.append(location)
        return previous

    def check(self) -> None:
        """AssertionError unless the structures agree with each other."""
        columns, overlay, deleted = self._columns, self._overlay, self._deleted
        held = set(columns) if columns is not None else set()
        if not deleted <= held or deleted & overlay.keys():
            raise AssertionError("a deleted column key is not a column key, or is set again")
        if list(self._added) != sorted(overlay.keys() - held):
            raise AssertionError("the ordered new keys disagree with the overlay")
        live = (held - deleted) | overlay.keys()
        if self.ordered_keys() != sorted(live) or self._count != len(live):
            raise AssertionError("the key order or count disagrees with the keys held")
        grouped = 0
        for hashed, holder in self.by_value.items():
            group = {holder: overlay.get(holder)} if isinstance(holder, str) else dict(holder)
            if not group:
                raise AssertionError("an empty group in the value index")
            for key, known in group.items():
                location = overlay.get(key)
                if location is None or location & HASH_MASK != hashed:
                    raise AssertionError(f"value index holds {key!r} under a wrong hash")
                if known != location:
                    raise AssertionError(f"value index has a stale location for {key!r}")
            grouped += len(group)
        if grouped != len(overlay):
            raise AssertionError("the value index does not hold every key exactly once")
        if columns is not None:
            columns.check()
        if any(key not in live for key in self.expiries):
            raise AssertionError("an expiry is held for a key the index does not hold")
        if list(self.by_expiry) != sorted((at, key) for key, at in self.expiries.items()):
            raise AssertionError("the expiry order disagrees with the expiries")

    def move(self, key: str, expected: int, location: int) -> bool:
        """Repoint ``key`` to ``location`` only if it still points at ``expected`` (compaction)."""
        return self._move(key, expected, location, 0)[0]

    def move_many(self, keys: list[str], expected: list[int], locations: list[int]) -> None:
        """``move`` for each of ``keys`` (compaction's batches, mostly in key order: each
        search in the columns starts by looking just after the previous key's place)."""
        guess = 0
        for key, old, new in zip(keys, expected, locations, strict=True):
            guess = self._move(key, old, new, guess)[1]

    def _move(self, key: str, expected: int, location: int, guess: int) -> tuple[bool, int]:
        overlay = self._overlay
        current = overlay.get(key)
        if current is not None:
            if current != expected:
                return False, guess
            overlay[key] = location
            holder = self.by_value.get(location & HASH_MASK)
            if isinstance(holder, dict):
                holder[key] = location
            return True, guess
        columns = self._columns
        if columns is None or key in self._deleted:
            return False, guess
        i = columns.position_near(key, guess)
        if i < 0:
            return False, guess
        return columns.repoint_if(i, expected, location), i + 1

    def get_many(self, keys: list[str]) -> list[int | None]:
        """``get`` for each of ``keys`` (compaction's batches, mostly in key order: each search
        in the columns starts by looking just after the previous key's place, which at ten
        million keys costs a compare instead of a bisection's cache misses)."""
        overlay, columns, deleted = self._overlay, self._columns, self._deleted
        if columns is None:
            return list(map(overlay.get, keys))
        found: list[int | None] = []
        guess = 0
        for key in keys:
            location = overlay.get(key)
            if location is None and key not in deleted:
                i, at = columns.located_near(key, guess)
                if i >= 0:
                    location, guess = at, i + 1
            found.append(location)
        return found

    def candidates(self, hashed: int) -> list[tuple[str, int]]:
        """(key, location) of every key whose value has this hash, in key order."""
        found: list[tuple[str, int]] = []
        holder = self.by_value.get(hashed)
        if isinstance(holder, str):
            found.append((holder, self._overlay[holder]))
        elif holder is not None:
            found.extend(holder.items())
        if self._columns is not None:
            overlay, deleted = self._overlay, self._deleted
            found.extend(
                pair
                for pair in self._columns.candidates(hashed)
                if pair[0] not in overlay and pair[0] not in deleted
            )
        found.sort()
        return found

    def keys_from(self, prefix: str, after: str | None) -> Iterator[str]:
        """Keys in order, starting with ``prefix``, strictly greater than ``after``."""
        added = self._added
        # SortedList.islice starts at a position in O(log n); itertools.islice would walk there.
        if after is not None and after >= prefix:
            position = added.bisect_right(after)
        else:
            after = None
            position = added.bisect_left(prefix)
        new: Iterator[str] = added.islice(position)
        columns = self._columns
        if columns is not None:
            old = columns.keys_from(prefix if after is None else after, after=after is not None)
            if self._deleted:
                old = filterfalse(self._deleted.__contains__, old)
            new = heapq.merge(old, new) if added else old
        return takewhile(lambda key: key.startswith(prefix), new)

    def ordered_keys(self, start: str = "", end: str | None = None) -> list[str]:
        """The keys from ``start`` (included) to ``end`` (excluded; None: to the last), in order."""
        added = self._added
        stop = len(added) if end is None else added.bisect_left(end)
        new: list[str] = added[added.bisect_left(start) : stop]
        columns = self._columns
        if columns is None:
            return new
        old = columns.keys_between(start, end)
        if self._deleted:
            old = list(filterfalse(self._deleted.__contains__, old))
        if new:
            old += new
            old.sort()  # two sorted runs: one merge
        return old

    def items(self) -> Iterator[tuple[str, int]]:
        """(key, location) of every key, in key order."""
        get = self.get
        for key in self.ordered_keys():
            location = get(key)
            assert location is not None
            yield key, location

    def lookup(self, keys: list[str], *, whole: bool) -> Callable[[str], int]:
        """A function giving the location each of ``keys`` has now, whatever changes later (for
        snapshots). ``whole``: copy the whole index (cheaper than a dict of ``keys`` when they
        are most of it)."""
        columns = self._columns
        if not whole:
            located: dict[str, int] = dict(zip(keys, map(self.get, keys), strict=True))  # type: ignore[arg-type]
            return located.__getitem__
        overlay = self._overlay.copy()
        if columns is None:
            return overlay.__getitem__
        frozen = columns.frozen()

        def location_of(key: str) -> int:
            location = overlay.get(key)
            if location is None:
                location = frozen.get(key)
                if location is None:
                    raise KeyError(key)
            return location

        return location_of

    def merge_in_background(self) -> None:
        """Merge the loaded columns' value order: a small one at once, a large one in a
        background thread (after open)."""
        columns = self._columns
        if columns is None or self._merger is not None:
            return
        if columns.merges_at_open():
            columns.merge_value_order()
        else:
            self._merger = ValueOrderMerger(columns.merge_value_order)

    def wait_for_merge(self) -> None:
        """Wait until the background merge of the value order is done (benchmarks, tests)."""
        if self._merger is not None:
            self._merger.join()

    def stop_background(self) -> None:
        """Stop that thread, if any (at close); finds stay right either way."""
        if self._merger is not None:
            self._merger.stop()
            self._merger = None

    def fold_wanted(self) -> bool:
        """Whether the overlay holds enough keys new to the columns to fold them in."""
        held = 0 if self._columns is None else len(self._columns)
        return len(self._added) >= max(FOLD_MIN_KEYS, held // FOLD_SHARE)

    def fold_step(self, limit: int | None = None) -> int:
        """Move up to ``limit`` (FOLD_STEP) of the overlay's new keys, the lowest first, into the
        columns (``KeyColumns.insert``); how many. Keys that sort after every key held (written
        in key order: times, sequence numbers) are appended; the others go into the chunk of
        the columns their key falls in, a bisection each (docs/PERFORMANCE.md)."""
        added = self._added
        count = min(FOLD_STEP if limit is None else limit, len(added))
        if not count:
            return 0
        keys: list[str] = added[:count]
        overlay = self._overlay
        locations = list(map(overlay.__getitem__, keys))
        if self._columns is None:
            self._columns = KeyColumns.from_sorted(keys, locations)
        else:
            self._columns.insert(keys, locations)
        for _ in range(count):  # once in the columns; a deleting slice: 83 ms, pops 19 ms
            added.pop(0)
        unlink = self._unlink_value
        for key, location in zip(keys, locations, strict=True):
            del overlay[key]
            unlink(location & HASH_MASK, key)
        return count

    def settle_value_order(self, stop: threading.Event | None = None) -> None:
        """Merge the value-order runs folds added (``KeyColumns.settle_value_order``); called
        by the folding thread without the store lock."""
        columns = self._columns
        if columns is not None:
            columns.settle_value_order(stop, FOLD_STEP)

    def is_pristine(self) -> bool:
        """True until anything is loaded or set (an index emptied by deletes is not)."""
        return self._columns is None and not self._overlay

    def load_columns(self, columns: KeyColumns) -> None:
        """Fill a pristine index with columns loaded from hint files."""
        if not self.is_pristine():
            raise ValueError("load_columns needs a pristine index")
        self._columns = columns
        self._count = len(columns)

    def _unlink_value(self, hashed: int, key: str) -> None:
        holder = self.by_value.get(hashed)
        if holder is None:
            return
        if isinstance(holder, str):
            if holder == key:
                del self.by_value[hashed]
            return
        holder.pop(key, None)
        if len(holder) == 1:
            self.by_value[hashed] = next(iter(holder))
        elif not holder:
            del self.by_value[hashed]
