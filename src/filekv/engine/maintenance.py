"""The upkeep side of the Store: compact, backup, stats, observe and check.

A base class of ``Store`` (store.py), apart so that each module stays small enough to read at
one sitting. Owns no state: ``Store.__init__`` sets the attributes declared below.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path

from .backup import take_backup, verify_copy_in_child
from .compaction import Compactor
from .durability import GroupCommit, RoundObserver
from .errors import CorruptStore
from .index import KeyIndex
from .options import StoreOptions
from .overlay_folder import OverlayFolder
from .segments import SegmentSet
from .stats import StoreStats
from .writer import Writer


class StoreMaintenance:
    """What a Store does to look after itself, and what it tells about itself."""

    _lock: threading.Lock
    _index: KeyIndex
    _segments: SegmentSet
    _writer: Writer
    _group: GroupCommit
    _compactor: Compactor
    _folder: OverlayFolder
    _options: StoreOptions
    _clock: Callable[[], float]
    _closed: bool

    def _check_open(self) -> None: ...  # StoreReads's

    def _upkeep(self) -> None:
        """Start what background work the store needs; the writer calls it every thousand
        writes or so, under the lock."""
        self._compactor.maybe_start()
        self._folder.maybe_start()

    def compact(self) -> bool:
        """Merge every sealed segment into one, now; False if there was nothing to merge."""
        with self._lock:
            self._check_open()
        return self._compactor.compact()

    def backup(
        self, dest_dir: str | os.PathLike[str], *, verify_in_child: bool = False
    ) -> dict[str, int]:
        """Write a copy of the store as of one revision into ``dest_dir`` (new or empty) while
        writes go on: ``{"revision", "keys", "files", "bytes"}``. The copy is a store that
        ``Store.open`` accepts, every record checksum verified (``verify_in_child``: by a child
        process, as a server does to keep its interpreter free); ``backup.py`` says how."""
        self._check_open()
        return take_backup(
            self._lock,
            self._segments,
            is_closed=lambda: self._closed,
            revision=lambda: self._writer.revision,
            keys=lambda: len(self._index) - self._index.expired_count(self._clock()),
            destination=Path(dest_dir),
            verify=verify_copy_in_child if verify_in_child else None,
        ).as_dict()

    def stats(self) -> StoreStats:
        """A snapshot of the store's counts and sizes (``StoreStats`` says what each means)."""
        with self._lock:
            segments = self._segments
            compactor = self._compactor
            last_compaction = compactor.last_compaction
            return StoreStats(
                keys=len(self._index) - self._index.expired_count(self._clock()),
                disk_bytes=segments.disk_bytes(),
                live_bytes=segments.live_bytes(len(self._index.expiries)),
                segments=segments.count,
                fsync=self._options.fsync,
                last_compaction=(
                    datetime.fromtimestamp(last_compaction, UTC).isoformat()
                    if last_compaction is not None
                    else None
                ),
                recovered_truncations=segments.truncations,
                revision=self._writer.revision,
                compactions=compactor.compactions,
                compacting=compactor.busy,
                in_transaction=self._writer.transaction is not None,
            )

    def observe(
        self,
        *,
        fsync: RoundObserver | None = None,
        compaction: Callable[[float], None] | None = None,
    ) -> None:
        """Watch the store's background work (for metrics); None stops watching.

        ``fsync(seconds, records)`` after every successful group-commit round: how long the fsync
        took and how many records it made durable. ``compaction(seconds)`` after every finished
        compaction. Both are called in the thread that did the work, after it is done, so they
        must be quick and must not block; an exception they raise is logged and ignored.
        Unwatched, the store does no timing at all.
        """
        self._group.observer = fsync
        self._compactor.observer = compaction

    def check(self) -> None:
        """Verify that every index agrees with the others and with the files; raise if not."""
        with self._lock:
            self._index.check()
            check_values(self._segments, self._index.items())


def check_values(segments: SegmentSet, entries: Iterable[tuple[str, int]]) -> None:
    """CorruptStore, naming the key, unless each value reads back whole and matches the hash its
    location holds (``read_value`` checks both)."""
    for key, location in entries:
        try:
            segments.read_value(location)
        except CorruptStore as error:
            raise CorruptStore(
                error.path, error.offset, f"value of {key!r}: {error.reason}"
            ) from None
