"""Snapshots: the keys under a prefix as they were at one revision, read back later in key order.

``Store.snapshot(prefix)`` copies, under the store lock, the sorted keys starting with ``prefix``
and where each value is (its packed location), and *pins* every segment file those locations
may point into. Values are read afterwards, a chunk at a time and without the store lock, so
writes go on meanwhile and never show up in the view: it is the store at ``revision``.

Why pins: compaction merges sealed segments and deletes them (``compaction.py``, step 5) while a
snapshot may still have values to read there. A pin keeps the segment's *descriptor* open, not
its file: compaction unlinks the file exactly as it would without a snapshot (so the directory
is always what crash recovery expects, and a crash while a pin is held leaves nothing behind),
and POSIX keeps an unlinked file's data readable through a descriptor still open on it. The
descriptor of a segment retired while pinned is closed when the last pin on it goes, which is
when the disk space comes back. ``Store.close`` waits for a chunk being read, then closes every
descriptor; a snapshot read after that raises ``StoreClosed``.

The copy is the one pause writers see. At 1,000,000 keys (docs/PERFORMANCE.md, "Export and
import"): 35-70 ms for the whole store on a lightly loaded machine (the sorted key list, then a
copy of the whole key -> location dict, done for any prefix holding more than a twelfth of the
keys), 271 ms under heavy load; 37 ms for a 10 % prefix, 2 ms for 1 %: a smaller prefix looks its
keys up one by one (~0.5 us each: sorted keys visit the dict out of insertion order). Memory: 39
bytes per key of a whole-store snapshot (the keys and location ints are shared with the index).

Owns the pins (``SegmentPins``, held by the ``SegmentSet``) and each snapshot's copy.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import TYPE_CHECKING, Final, Self

from .errors import CorruptStore, StoreClosed
from .hint import (
    HASH_MASK,
    LENGTH_MASK,
    LENGTH_SHIFT,
    OFFSET_MASK,
    OFFSET_SHIFT,
    REVISION_MASK,
    REVISION_SHIFT,
    SEGMENT_SHIFT,
)

if TYPE_CHECKING:
    from .fileio import FileIO
    from .index import KeyIndex
    from .segment import Segment

# Below this share of the store's keys, a prefix's locations are looked up key by key; above it
# the whole dict is copied at C speed (cheaper than ~12 random lookups per key it holds).
WHOLE_COPY_SHARE: Final = 12
CHUNK_KEYS: Final = 1000  # values read per chunk, at most ...
CHUNK_BYTES: Final = 1 << 20  # ... and about this many value bytes (one value may pass it)

Item = tuple[str, bytes, int]  # key, value, revision


class SegmentPins:
    """Which segments open snapshots still read; a retired one's descriptor stays open for them.

    Thread-safe (its own small lock): ``pin`` is called under the store lock, the rest from any
    thread.
    """

    def __init__(self, io: FileIO) -> None:
        self._io = io
        self._guard = threading.Condition(threading.Lock())
        self._counts: dict[int, int] = {}  # segment id -> snapshots pinning it
        self._retired: dict[int, Segment] = {}  # removed from the set while pinned
        self._readers = 0  # chunks being read right now
        self._closed = False

    @property
    def pinned(self) -> int:
        """Segments at least one open snapshot pins."""
        with self._guard:
            return len(self._counts)

    @property
    def retired(self) -> int:
        """Segments deleted by compaction whose descriptors snapshots keep open."""
        with self._guard:
            return len(self._retired)

    def pin(self, segments: Iterable[Segment]) -> None:
        with self._guard:
            if self._closed:
                raise StoreClosed("the store is closed")
            for segment in segments:
                self._counts[segment.segment_id] = self._counts.get(segment.segment_id, 0) + 1

    def unpin(self, segments: Iterable[Segment]) -> None:
        """Drop one pin from each; close the descriptors of retired ones nobody pins any more."""
        done: list[Segment] = []
        with self._guard:
            while self._readers:  # a chunk may be reading from one of them
                self._guard.wait()
            for segment in segments:
                count = self._counts.get(segment.segment_id, 0) - 1
                if count > 0:
                    self._counts[segment.segment_id] = count
                    continue
                self._counts.pop(segment.segment_id, None)
                retired = self._retired.pop(segment.segment_id, None)
                if retired is not None:
                    done.append(retired)
        for segment in done:
            self._io.close(segment.fd)

    def retire(self, segment: Segment) -> bool:
        """``segment`` leaves the set: True if a snapshot pins it (its descriptor stays open,
        closed by the last ``unpin``), False if the caller closes it now."""
        with self._guard:
            if not self._counts.get(segment.segment_id):
                return False
            self._retired[segment.segment_id] = segment
            return True

    @contextmanager
    def reading(self) -> Iterator[None]:
        """Around the reads of one chunk: the descriptors stay open until it ends."""
        with self._guard:
            if self._closed:
                raise StoreClosed("the store is closed")
            self._readers += 1
        try:
            yield
        finally:
            with self._guard:
                self._readers -= 1
                if not self._readers:
                    self._guard.notify_all()

    def close(self) -> None:
        """At store close: wait for chunks being read, refuse new reads, close retired files."""
        with self._guard:
            self._closed = True
            while self._readers:
                self._guard.wait()
            done = list(self._retired.values())
            self._retired.clear()
            self._counts.clear()
        for segment in done:
            self._io.close(segment.fd)


def prefix_end(prefix: str) -> str | None:
    """The least string above every string starting with ``prefix`` (None: there is none)."""
    while prefix and prefix[-1] == "\U0010ffff":
        prefix = prefix[:-1]
    if not prefix:
        return None
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


class Snapshot:
    """The keys starting with ``prefix`` at ``revision``; read with ``chunk()`` or iterate.

    Build one with ``Store.snapshot``; close it (or use it as a context manager) to unpin its
    segments. Reading is for one thread at a time.
    """

    def __init__(
        self,
        *,
        io: FileIO,
        pins: SegmentPins,
        segments: dict[int, Segment],
        revision: int,
        prefix: str,
        keys: list[str],
        location_of: Callable[[str], int],
        expiries: dict[str, float] | None = None,
    ) -> None:
        self._io = io
        self._expiries = expiries or {}
        self._pins = pins
        self._segments = segments
        self.revision = revision
        self.prefix = prefix
        self._keys = keys
        self._location_of = location_of
        self._position = 0
        self._closed = False

    @classmethod
    def take(
        cls,
        index: KeyIndex,
        segments: Iterable[Segment],
        pins: SegmentPins,
        io: FileIO,
        *,
        revision: int,
        prefix: str,
        now: float | None = None,
    ) -> Snapshot:
        """Copy the view and pin ``segments`` (every segment the index may point into).

        Called under the store lock: nothing may change between the copy and the pin. Keys
        expired by ``now`` are left out, as every read leaves them out.
        """
        keys = index.ordered_keys(prefix, prefix_end(prefix) if prefix else None)
        held = index.expiries
        if held and now is not None and index.expired_count(now):
            keys = [key for key in keys if not held.get(key, now + 1) <= now]
        location_of = index.lookup(keys, whole=len(keys) * WHOLE_COPY_SHARE >= len(index))
        # The view's expiries, copied with it: only the keys that expire, so nothing in a store
        # without TTLs (one pass over the view's keys otherwise).
        expiries = {key: held[key] for key in keys if key in held} if held else None
        table = {segment.segment_id: segment for segment in segments}
        pins.pin(table.values())
        return cls(
            io=io,
            pins=pins,
            segments=table,
            revision=revision,
            prefix=prefix,
            keys=keys,
            location_of=location_of,
            expiries=expiries,
        )

    def __len__(self) -> int:
        """How many keys the view holds."""
        return len(self._keys)

    def expires_at(self, key: str) -> float | None:
        """When ``key`` (of this view) expires, as of the snapshot; None if it never does."""
        return self._expiries.get(key)

    @property
    def remaining(self) -> int:
        """Keys not read yet."""
        return len(self._keys) - self._position

    @property
    def closed(self) -> bool:
        return self._closed

    def chunk(self, max_keys: int = CHUNK_KEYS, max_bytes: int = CHUNK_BYTES) -> list[Item]:
        """The next keys in order with their values and revisions; [] once all were read.

        At most ``max_keys`` items, and values of about ``max_bytes`` in all (always one at
        least), so memory per chunk stays bounded whatever the values' sizes.
        """
        with self._pins.reading():
            # Looked at once reading: a close from another thread either came first (and this
            # raises) or waits in ``unpin`` for this chunk to end.
            if self._closed:
                raise RuntimeError("the snapshot is closed")
            keys = self._keys
            start = self._position
            stop = min(start + max_keys, len(keys))
            items: list[Item] = []
            total = 0
            pread = self._io.pread
            table = self._segments
            location_of = self._location_of
            for key in keys[start:stop]:
                location = location_of(key)
                length = (location >> LENGTH_SHIFT) & LENGTH_MASK
                if items and total + length > max_bytes:
                    break
                segment = table[location >> SEGMENT_SHIFT]
                offset = (location >> OFFSET_SHIFT) & OFFSET_MASK
                value = pread(segment.fd, length, offset)
                if len(value) != length:
                    raise CorruptStore(str(segment.path), offset, "value cut short")
                if zlib.crc32(value) != location & HASH_MASK:
                    raise CorruptStore(str(segment.path), offset, "value fails its checksum")
                items.append((key, value, (location >> REVISION_SHIFT) & REVISION_MASK))
                total += length
        self._position = start + len(items)
        return items

    def __iter__(self) -> Iterator[Item]:
        """Every remaining (key, value, revision), in key order, a chunk at a time."""
        while chunk := self.chunk():
            yield from chunk

    def close(self) -> None:
        """Unpin the segments (a retired one's descriptor is closed now); idempotent."""
        if self._closed:
            return
        self._closed = True
        self._keys = []
        self._pins.unpin(self._segments.values())
        self._segments = {}

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
