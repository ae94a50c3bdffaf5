"""The expiries the index keeps: key -> expires_at, and the same pairs in time order.

A base class of ``KeyIndex`` (index.py), apart so that each module stays small enough to read
at one sitting. Empty (and never looked at on the hot path beyond a truth test) in a store that
uses no TTL.

Owns the two expiry structures; the Store's lock serialises every call (through ``KeyIndex``).
"""

from __future__ import annotations

import math

from sortedcontainers import SortedList


class ExpiryIndex:
    """Keys whose value expires, by key and by time (for counting the expired in O(log n) and
    for the sweeper)."""

    __slots__ = ("by_expiry", "expiries")

    def __init__(self) -> None:
        self.expiries: dict[str, float] = {}  # key -> expires_at (UNIX seconds)
        self.by_expiry: SortedList = SortedList()  # (expires_at, key), in time order

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
