"""The read side of the Store: get, entry, find, scan, snapshot, len and in.

A base class of ``Store`` (store.py), apart so that each module stays small enough to read at
one sitting. Every read takes the store lock (compaction cannot close a file under a pread),
holds it for microseconds, and treats an expired key as absent: it compares the key's expiry
with the clock, so nothing waits for the sweeper.

Owns no state: ``Store.__init__`` sets the attributes declared below.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from itertools import islice
from typing import Final

from .entry import Entry
from .errors import StoreClosed
from .hint import LENGTH_MASK, LENGTH_SHIFT, REVISION_MASK, REVISION_SHIFT
from .index import KeyIndex
from .record import value_hash
from .segments import SegmentSet
from .snapshot import Snapshot
from .writer import Writer

CLOSED: Final = "the store is closed"


class StoreReads:
    """What a Store answers without writing."""

    _lock: threading.Lock
    _index: KeyIndex
    _segments: SegmentSet
    _writer: Writer
    _clock: Callable[[], float]
    _closed: bool

    def _check_open(self) -> None:
        """StoreClosed once the store is closed: the guard every public call runs first.

        ``get``, ``entry`` and ``find`` write out these two lines instead of calling it, as they
        write out hint.py's location accessors: each call costs ~20 ns, 2 % of a get.
        """
        if self._closed:
            raise StoreClosed(CLOSED)

    def __len__(self) -> int:
        """Keys held, expired ones left out (they are gone, even before the sweeper writes so)."""
        with self._lock:
            self._check_open()
            index = self._index
            return len(index) - index.expired_count(self._clock())

    def __contains__(self, key: object) -> bool:
        self._check_open()
        index = self._index
        if not isinstance(key, str) or index.get(key) is None:
            return False
        return not (index.expiries and index.is_expired(key, self._clock()))

    def get(self, key: str) -> bytes | None:
        """The value of ``key``, or None."""
        with self._lock:
            if self._closed:  # _check_open, inlined on the hot path
                raise StoreClosed(CLOSED)
            index = self._index
            location = index.get(key)
            if location is None:
                return None
            if index.expiries and index.is_expired(key, self._clock()):
                return None
            return self._segments.read_value(location)

    def entry(self, key: str) -> Entry | None:
        """The key, its value and its revision, or None."""
        with self._lock:
            if self._closed:  # _check_open, inlined on the hot path
                raise StoreClosed(CLOSED)
            index = self._index
            location = index.get(key)
            if location is None:
                return None
            expires_at = index.expiries.get(key) if index.expiries else None
            if expires_at is not None and expires_at <= self._clock():
                return None
            value = self._segments.read_value(location)
        revision = (location >> REVISION_SHIFT) & REVISION_MASK  # revision_of
        return Entry(key, value, revision, expires_at)

    def find(
        self,
        value: bytes,
        *,
        prefix: str = "",
        after: str | None = None,
        limit: int | None = None,
    ) -> list[str]:
        """Sorted keys whose value equals ``value`` (and start with ``prefix``), after ``after``.

        Costs O(matches): the value index gives the candidates, equal hashes are verified.
        """
        hashed = value_hash(value)
        length = len(value)
        found: list[str] = []
        if limit is not None and limit <= 0:
            return found
        with self._lock:
            if self._closed:  # _check_open, inlined on the hot path
                raise StoreClosed(CLOSED)
            index = self._index
            now = self._clock() if index.expiries else 0.0
            for key, location in index.candidates(hashed):
                if (after is not None and key <= after) or not key.startswith(prefix):
                    continue
                if now and index.is_expired(key, now):
                    continue
                if (location >> LENGTH_SHIFT) & LENGTH_MASK != length:  # length_of
                    continue
                if self._segments.read_value(location) != value:
                    continue  # a hash collision
                found.append(key)
                if limit is not None and len(found) >= limit:
                    break
        return found

    def scan(
        self, prefix: str = "", *, after: str | None = None, limit: int | None = None
    ) -> list[str]:
        """Sorted keys starting with ``prefix``, strictly after ``after``: O(log n + results)."""
        with self._lock:
            self._check_open()
            index = self._index
            keys = index.keys_from(prefix, after)
            if index.expiries:
                now = self._clock()
                expiries = index.expiries
                keys = (key for key in keys if not expiries.get(key, now + 1) <= now)
            return list(islice(keys, limit))

    def snapshot(self, prefix: str = "") -> Snapshot:
        """The keys starting with ``prefix`` as they are now, to read in key order while writes
        and compactions go on: ``with store.snapshot("user/") as snap:`` then ``snap.revision``
        and ``for key, value, revision in snap``. Close it (the ``with``) to unpin its segment
        files; ``snapshot.py`` says what it costs.
        """
        with self._lock:
            self._check_open()
            segments = self._segments
            return Snapshot.take(
                self._index,
                segments.all(),
                segments.pins,
                segments.io,
                revision=self._writer.revision,
                prefix=prefix,
                now=self._clock(),
            )
