"""The in-memory indexes: key -> location, ordered keys, value hash -> keys, and expiries.

Values stay on disk; memory holds, per key, the key string (shared by all three structures), one
packed integer locating its value (``hint.pack``: the same layout hint files store), a slot in
the sorted key list and a slot in the value index.

Owns the three in-memory structures; the Store's lock serialises every call.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from itertools import compress, repeat
from operator import and_, is_not

from sortedcontainers import SortedList

from .hint import HASH_MASK, HintColumns

# The keys under one value hash:
# - the key itself when it is alone (the common case: no container object at all);
# - a dict key -> location when several keys share the hash: find then verifies candidates with
#   the locations at hand instead of looking each up in the million-entry key dict (a cache miss
#   each), and a small dict costs less memory than a set;
# - a range of positions in the hint file's grouped entries, as loaded: made into a dict the
#   first time anything looks at or changes that group, so opening does not touch every key.
Holder = str | dict[str, int] | range


class KeyIndex:
    """Every live key, where its value is, in key order, and grouped by value hash.

    Not thread-safe by itself: the Store serialises every call under its lock.
    """

    __slots__ = (
        "_hint_grouped",
        "_hint_keys",
        "by_expiry",
        "by_value",
        "expiries",
        "locations",
        "ordered",
    )

    def __init__(self) -> None:
        self.locations: dict[str, int] = {}
        self.ordered: SortedList = SortedList()
        self.by_value: dict[int, Holder] = {}
        # What range holders point into: the bulk-loaded hint's keys and its grouped entries.
        self._hint_keys: list[str] = []
        self._hint_grouped: Sequence[int] = ()
        # Keys whose value expires: key -> expires_at (UNIX seconds), and the same pairs ordered
        # by time, for counting the expired in O(log n) and for the sweeper. Empty (and never
        # looked at on the hot path beyond a truth test) in a store that uses no TTL.
        self.expiries: dict[str, float] = {}
        self.by_expiry: SortedList = SortedList()

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
                holder = self.by_value.get(hashed)
                if isinstance(holder, dict):
                    holder[key] = location
                return previous  # a range holder reads locations when it becomes a dict
            self._unlink_value(old_hash, key)
        holder = self.by_value.get(hashed)
        if holder is None:
            self.by_value[hashed] = key
        elif isinstance(holder, str):
            self.by_value[hashed] = {holder: self.locations[holder], key: location}
        elif isinstance(holder, dict):
            holder[key] = location
        else:
            self._materialize(hashed, holder)[key] = location
        return previous

    def remove(self, key: str) -> int | None:
        """Forget ``key``; return its location, or None if it was not there."""
        previous = self.locations.pop(key, None)
        if previous is None:
            return None
        self.ordered.remove(key)
        self._unlink_value(previous & HASH_MASK, key)
        if self.expiries:
            self.set_expiry(key, None)
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
            location = self.locations.pop(key)
            self.ordered.remove(key)
            self._unlink_value(location & HASH_MASK, key)
            if self.expiries:
                self.set_expiry(key, None)
            previous.append(location)
        return previous

    def set_expiry(self, key: str, expires_at: float | None) -> None:
        """Note when ``key``'s value expires (None: never), after ``set`` pointed it at it."""
        expiries = self.expiries
        old = expiries.pop(key, None) if expiries else None
        if old is not None:
            self.by_expiry.remove((old, key))
        if expires_at is not None:
            expiries[key] = expires_at
            self.by_expiry.add((expires_at, key))

    def load_expiries(self, expiries: dict[str, float]) -> None:
        """Take over the expiries of keys just bulk-loaded (the index has none yet)."""
        if self.expiries:
            raise ValueError("load_expiries needs an index without expiries")
        self.expiries = expiries
        self.by_expiry = SortedList((at, key) for key, at in expiries.items())

    def is_expired(self, key: str, now: float) -> bool:
        """True if ``key`` has a value whose time is up (it reads as absent from then on)."""
        expires_at = self.expiries.get(key)
        return expires_at is not None and expires_at <= now

    def expired_count(self, now: float) -> int:
        """How many keys have expired by ``now`` but are still held (the sweeper's backlog)."""
        if not self.expiries:
            return 0
        # (t,) sorts before every (t, key): counted are the pairs of a time up to ``now``.
        return int(self.by_expiry.bisect_left((math.nextafter(now, math.inf),)))

    def expired_keys(self, now: float, limit: int) -> list[str]:
        """Up to ``limit`` keys expired by ``now``, the longest expired first."""
        if not self.expiries:
            return []
        end = min(self.expired_count(now), limit)
        return [key for _, key in self.by_expiry.islice(0, end)]

    def next_expiry(self) -> float | None:
        """The earliest expiry held, or None."""
        return self.by_expiry[0][0] if self.by_expiry else None

    def check(self) -> None:
        """AssertionError unless the three structures agree with each other."""
        if list(self.ordered) != sorted(self.locations):
            raise AssertionError("the ordered key list disagrees with the key index")
        grouped = 0
        for hashed, holder in self.by_value.items():
            group = self.group(holder)
            if not group:
                raise AssertionError("an empty group in the value index")
            for key, known in group.items():
                location = self.locations.get(key)
                if location is None or location & HASH_MASK != hashed:
                    raise AssertionError(f"value index holds {key!r} under a wrong hash")
                if known != location:
                    raise AssertionError(f"value index has a stale location for {key!r}")
            grouped += len(group)
        if grouped != len(self.locations):
            raise AssertionError("the value index does not hold every key exactly once")
        if any(key not in self.locations for key in self.expiries):
            raise AssertionError("an expiry is held for a key the index does not hold")
        if list(self.by_expiry) != sorted((at, key) for key, at in self.expiries.items()):
            raise AssertionError("the expiry order disagrees with the expiries")

    def move(self, key: str, expected: int, location: int) -> bool:
        """Repoint ``key`` to ``location`` only if it still points at ``expected`` (compaction)."""
        if self.locations.get(key) != expected:
            return False
        self.locations[key] = location
        holder = self.by_value.get(location & HASH_MASK)
        if isinstance(holder, dict):
            holder[key] = location
        return True

    def candidates(self, hashed: int) -> list[tuple[str, int]]:
        """(key, location) of every key whose value has this hash, in key order."""
        holder = self.by_value.get(hashed)
        if holder is None:
            return []
        if isinstance(holder, str):
            return [(holder, self.locations[holder])]
        if isinstance(holder, range):
            holder = self._materialize(hashed, holder)
        return sorted(holder.items())

    def group(self, holder: Holder) -> dict[str, int | None]:
        """The keys a holder stands for and the locations it knows (for checks; changes nothing)."""
        if isinstance(holder, str):
            return {holder: self.locations.get(holder)}
        if isinstance(holder, range):
            keys, grouped = self._hint_keys, self._hint_grouped
            members = [keys[grouped[position]] for position in holder]
            return {key: self.locations.get(key) for key in members}
        return dict(holder)

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
        """Fill an empty index from a hint file at C speed (no Python step per key).

        Keys are touched in file (sorted) order only: groups of keys sharing a value hash become
        range holders, so a million keys are not visited a second time in hash order. The hint's
        key list and grouped entries stay referenced for those ranges (12 bytes per key).
        """
        if self.locations:
            raise ValueError("bulk_load needs an empty index")
        keys = hint.keys
        locations = hint.locations
        self.locations = dict(zip(keys, locations, strict=True))
        self.ordered = SortedList(keys)
        key_at = keys.__getitem__
        location_at = locations.__getitem__
        singles = hint.singles
        by_value: dict[int, Holder] = dict(
            zip(
                map(and_, map(location_at, singles), repeat(HASH_MASK)),
                map(key_at, singles),
                strict=True,
            )
        )
        grouped = hint.grouped
        ends = hint.group_ends
        starts = [0, *ends[:-1]] if ends else []
        by_value.update(
            zip(
                map(and_, map(location_at, map(grouped.__getitem__, starts)), repeat(HASH_MASK)),
                map(range, starts, ends),
                strict=True,
            )
        )
        self.by_value = by_value
        self._hint_keys = keys
        self._hint_grouped = grouped

    def bulk_load_locations(self, locations: dict[str, int]) -> None:
        """Fill an empty index from ``locations`` (taken over, not copied): the hint files of
        several segments folded together. C speed but for keys whose value hash another shares.

        Building the value index, the last key of each hash wins a plain ``dict(zip(...))``; a
        comparison at C speed finds the others, and only they take a Python step each.
        """
        if self.locations:
            raise ValueError("bulk_load_locations needs an empty index")
        self.locations = locations
        self.ordered = SortedList(locations)
        keys = list(locations)
        hashes = list(map(and_, locations.values(), repeat(HASH_MASK)))
        by_value: dict[int, Holder] = dict(zip(hashes, keys, strict=True))
        if len(by_value) < len(keys):
            winners = map(by_value.__getitem__, hashes)
            for key, hashed in compress(zip(keys, hashes, strict=True), map(is_not, winners, keys)):
                holder = by_value[hashed]
                if isinstance(holder, str):
                    by_value[hashed] = {holder: locations[holder], key: locations[key]}
                else:
                    assert isinstance(holder, dict)
                    holder[key] = locations[key]
        self.by_value = by_value
        self._hint_keys = []
        self._hint_grouped = ()

    def _materialize(
        self, hashed: int, holder: range, leaving: str | None = None
    ) -> dict[str, int]:
        """Replace a range holder by the dict it stands for (less ``leaving``, already gone)."""
        keys, grouped, locations = self._hint_keys, self._hint_grouped, self.locations
        members = {}
        for position in holder:
            key = keys[grouped[position]]
            if key != leaving:
                members[key] = locations[key]
        self.by_value[hashed] = members
        return members

    def _unlink_value(self, hashed: int, key: str) -> None:
        holder = self.by_value.get(hashed)
        if holder is None:
            return
        if isinstance(holder, str):
            if holder == key:
                del self.by_value[hashed]
            return
        if isinstance(holder, range):
            holder = self._materialize(hashed, holder, leaving=key)
        holder.pop(key, None)
        if len(holder) == 1:
            self.by_value[hashed] = next(iter(holder))
        elif not holder:
            del self.by_value[hashed]
