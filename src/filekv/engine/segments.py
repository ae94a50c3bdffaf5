"""The segment set: every open segment file of a data directory, and the write position.

Owns the segment table (id -> ``Segment``), the active segment that records are appended to,
the next segment id, rotation and sealing, the file descriptors (segments and the directory
``LOCK``), the live-bytes estimate, the hint-file sizes, the write sequence number that group
commit waits on, and the sticky I/O failure after which writes are refused.

Not thread-safe by itself: the Store calls it under its lock, except where a method says
otherwise. It knows nothing of keys or revisions beyond what a caller hands it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import logging
import os
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Final

from .errors import CorruptStore, DiskFull, StorageError, StoreFailed, StoreLocked
from .fileio import FileIO
from .hint import (
    HASH_MASK,
    LENGTH_MASK,
    LENGTH_SHIFT,
    OFFSET_MASK,
    OFFSET_SHIFT,
    SEGMENT_SHIFT,
    length_of,
    offset_of,
)
from .record import EXPIRY, PUT_VALUE_OFFSET
from .segment import Segment, SegmentSummary, create_segment, segment_name
from .segment_hints import ActivePrefix, HintWriter, write_segment_hint
from .snapshot import SegmentPins

log = logging.getLogger(__name__)

_NEVER: Final = 1 << 62  # a length no segment reaches

LOCK_NAME: Final = "LOCK"
# Bytes a live entry's put record (as compaction copies it) takes beyond its key and value (and
# expiry): the live-bytes estimate, ``live_bytes``.
ENTRY_OVERHEAD: Final = PUT_VALUE_OFFSET
# ``rotation_due``'s allowance for other threads' writes (at most a sixteenth of a segment).
ROTATION_SLACK: Final = 64 << 10


def entry_bytes(key_bytes: int, location: int) -> int:
    """The live-bytes estimate of one entry: its single-put record's size."""
    return ENTRY_OVERHEAD + key_bytes + length_of(location)


class SegmentSet:
    """The open segments of one directory. ``on_sealed(seq)``: every write up to seq is durable."""

    def __init__(
        self,
        directory: Path,
        io: FileIO,
        *,
        segment_bytes: int,
        on_sealed: Callable[[int], None],
        hint_sealed: bool = True,
        active_hint_bytes: int = 0,
        make_durable: Callable[[int], None] | None = None,
    ) -> None:
        self._directory = directory
        self._io = io
        self._segment_bytes = segment_bytes
        # Room for what other threads (the sweeper, writes already in worker threads) may
        # append between an async writer's ``rotation_due`` and its write: without it, a seal
        # could land on the event loop, an fsync of a whole segment with fsync="never".
        self._slack = min(ROTATION_SLACK, segment_bytes // 16)
        self._on_sealed = on_sealed
        self._segments: dict[int, Segment] = {}
        self._active: Segment | None = None
        self._hint_bytes: dict[int, int] = {}
        self._next_id = 1
        self._write_seq = 0
        # What a group-commit round must fsync: updated after every append and read without the
        # lock, so a round never waits for the lock that writers hold.
        self._sync_point: tuple[int, int] = (0, -1)
        self._live_bytes = 0
        self._truncations = 0
        self._failure: BaseException | None = None
        self._lock_fd = -1
        # Hint files of plain sealed segments, written in the background (segment_hints.py).
        self._hints = HintWriter(io, directory) if hint_sealed else None
        # The active segment's hint every ``active_hint_bytes`` (0: none), once
        # ``make_durable(seq)`` (the group commit's) made the writes up to ``seq`` durable.
        self._active_hint_bytes = active_hint_bytes if make_durable is not None else 0
        self._make_durable = make_durable
        self._active_hint_at = _NEVER  # the active segment's length that calls for a new hint
        # Segments that open snapshots read: a removed one's descriptor stays open for them.
        self.pins = SegmentPins(io)

    # ------------------------------------------------------------------ the directory

    @property
    def directory(self) -> Path:
        return self._directory

    @property
    def io(self) -> FileIO:
        return self._io

    @property
    def segment_bytes(self) -> int:
        return self._segment_bytes

    def lock_directory(self) -> None:
        """Take the directory's ``LOCK`` (StoreLocked if another open holds it)."""
        fd = os.open(self._directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            # flock locks belong to the open file description, so a second open() of the same
            # directory in this very process is refused too, not only another process.
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreLocked(
                f"data directory {self._directory} is in use by another process"
            ) from None
        self._lock_fd = fd

    @property
    def holds_lock(self) -> bool:
        return self._lock_fd >= 0

    def hint_active(self) -> None:
        """At a clean close, after the final fsync: write the active segment's hint too, so the
        next open replays nothing. It covers the segment's length now; a later append makes it
        stale (its length no longer matches) and the next open replays as before. A failure only
        means a replay: logged, not raised."""
        active = self._active
        if (
            self._hints is None
            or active is None
            or active.summary is None
            or self._failure is not None
            or active.size == active.header.size
        ):
            return
        self._hints.wait_idle()  # a prefix hint still queued must not land after this one
        try:
            self._hint_bytes[active.segment_id] = write_segment_hint(
                self._io, self._directory, active
            )
        except OSError as error:
            log.warning("no hint for %s at close (%s); it will be replayed", active.path, error)

    def maybe_hint_active(self) -> None:
        """After each write, under the store lock: once the active segment grew by
        ``active_hint_bytes`` since its last hint, have the background writer sum up what it
        holds now (``ActivePrefix``; a copy of its summary, 7-13 ms at 32 MiB of small records),
        so that an open after a crash replays only what follows."""
        active = self._active
        if active is None or active.size < self._active_hint_at:
            return  # (all but one write in tens of thousands)
        summary, hints, make_durable = active.summary, self._hints, self._make_durable
        if hints is None or summary is None or make_durable is None or self._failure is not None:
            self._active_hint_at = _NEVER
            return
        copy = SegmentSummary(dict(summary.final), summary.max_revision, dict(summary.expiries))
        self._hinted(active.size)
        durable = functools.partial(make_durable, self._write_seq)
        hints.schedule_prefix(ActivePrefix(active, copy, active.size, durable))

    def _hinted(self, length: int) -> None:
        """The active segment's hint covers its first ``length`` bytes (0: it has none)."""
        active = self._active
        every = self._active_hint_bytes
        if active is None or not every:
            self._active_hint_at = _NEVER
        else:
            self._active_hint_at = max(length, active.header.size) + every

    def release(self) -> None:
        """Stop the hint writer, close every segment file and release the directory lock."""
        if self._hints is not None:
            self._hints.close()
        self.pins.close()  # waits for a snapshot's chunk being read, then refuses the next
        for segment in self._segments.values():
            with contextlib.suppress(OSError):
                self._io.close(segment.fd)
        self._segments.clear()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = -1

    # ------------------------------------------------------------------ the table

    @property
    def active(self) -> Segment | None:
        return self._active

    @property
    def count(self) -> int:
        return len(self._segments)

    def all(self) -> list[Segment]:
        """Every segment, oldest first."""
        return sorted(self._segments.values(), key=lambda s: s.segment_id)

    def get(self, segment_id: int) -> Segment | None:
        return self._segments.get(segment_id)

    def add(self, segment: Segment, *, hint_bytes: int | None = None) -> None:
        """Register an open segment (and the size of its hint file, if it has one)."""
        self._segments[segment.segment_id] = segment
        if hint_bytes is not None:
            self._hint_bytes[segment.segment_id] = hint_bytes

    def schedule_hint(self, segment: Segment) -> None:
        """Have the background writer sum up sealed plain ``segment`` in a hint file."""
        if self._hints is not None and not segment.merged:
            self._hints.schedule(segment)
        else:
            segment.summary = None

    def wait_for_hints(self) -> None:
        """Wait until every hint scheduled so far is written (tests, benchmarks)."""
        if self._hints is not None:
            self._hints.wait_idle()

    def set_hint_bytes(self, segment_id: int, size: int) -> None:
        self._hint_bytes[segment_id] = size

    def remove(self, segment: Segment) -> None:
        """Forget ``segment`` and its hint file and close its descriptor (files stay on disk);
        a snapshot pinning it keeps the descriptor open until it is done (``snapshot.py``)."""
        del self._segments[segment.segment_id]
        self._hint_bytes.pop(segment.segment_id, None)
        if self._hints is not None:
            self._hints.written.pop(segment.segment_id, None)
        if not self.pins.retire(segment):
            self._io.close(segment.fd)

    def data_bytes(self) -> int:
        """Bytes of every segment file (hint files not counted)."""
        return sum(segment.size for segment in self._segments.values())

    def dead_bytes(self, expiring: int) -> int:
        """Segment bytes beyond the headers and ``live_bytes(expiring)``: what compacting would
        save (below 0 right after a transaction or a batch: see ``live_bytes``)."""
        headers = sum(segment.header.size for segment in self._segments.values())
        return self.data_bytes() - headers - self.live_bytes(expiring)

    def disk_bytes(self) -> int:
        """Bytes of every segment and hint file."""
        hints = dict(self._hints.written) if self._hints is not None else {}
        hints.update(self._hint_bytes)
        return self.data_bytes() + sum(
            size for segment_id, size in hints.items() if segment_id in self._segments
        )

    # ------------------------------------------------------------------ ids and rotation

    def set_next_id(self, segment_id: int) -> None:
        """After recovery: the id the next new segment gets."""
        self._next_id = segment_id

    def reserve_ids(self, count: int) -> int:
        """Take ``count`` ids in a row for segments made elsewhere (compaction's outputs);
        return the first. Ids left unused are simply skipped: only their order matters."""
        segment_id = self._next_id
        self._next_id += count
        return segment_id

    def resume(self, segment: Segment, hinted: int) -> None:
        """After recovery: keep appending to ``segment`` (already added), whose hint file covers
        its first ``hinted`` bytes (0: it has none)."""
        self._active = segment
        self._hinted(hinted)
        self._sync_point = (self._write_seq, segment.fd)

    def start_new_segment(self, base_revision: int) -> None:
        """Seal the active segment (fsynced whatever the mode) and start the next one."""
        sealed = self._active
        if sealed is not None:
            self._io.fsync(sealed.fd)
            self._on_sealed(self._write_seq)
        try:
            segment = create_segment(self._io, self._directory, self._next_id, base_revision)
        except OSError as error:
            if (self._directory / segment_name(self._next_id)).exists():
                # It could not even be removed: at the next open it would pass for the newest
                # segment, so the one we keep appending to would no longer be. Stop writing.
                self._failure = error
            raise
        self._next_id += 1
        self._segments[segment.segment_id] = segment
        self._active = segment
        self._hinted(0)
        self._sync_point = (self._write_seq, segment.fd)
        if sealed is not None:
            self.schedule_hint(sealed)

    def rotation_due(self, record_bytes: int) -> bool:
        """True when a record of at most ``record_bytes`` may not fit in the active segment, so
        that writing it would seal the segment first (an fsync and a new file, under the lock):
        the async writers then write from a worker thread. Read without the lock.

        Asked with each record's own bound: with a fixed margin (the largest record), every
        write in the last megabyte of a segment went to the few worker threads, and each
        waited there for its fsync; behind 64 connections, batches took 0.3 s around each
        rotation (docs/PERFORMANCE.md)."""
        active = self._active
        return active is not None and active.size + record_bytes + self._slack > self._segment_bytes

    # ------------------------------------------------------------------ appending

    def segment_for(self, size: int, base_revision: int) -> Segment:
        """The segment the next record of ``size`` bytes goes to.

        A full active segment is sealed first (the new one starts at ``base_revision``). A record
        is encoded only once its segment is known: its header starts with the segment's marker.
        """
        active = self._active
        assert active is not None
        if active.size + size > self._segment_bytes and active.size > active.header.size:
            try:
                self.start_new_segment(base_revision)
            except OSError as error:
                raise self.storage_error(error, "starting a new segment") from error
            active = self._active
            assert active is not None
        return active

    def write(self, active: Segment, record: bytes) -> int:
        """Append ``record`` at ``active.size``; return its sequence number.

        Each record appended gets the next sequence number, which is what writers wait on for
        durability. A failed write is cut back off the file, so a later write never lands after
        a torn one; if even that fails, the set stops accepting writes.
        """
        offset = active.size
        try:
            self._io.write(active.fd, record)
        except OSError as error:
            try:
                self._io.truncate(active.fd, offset)
            except OSError as undo_error:
                self._failure = undo_error
                log.error("could not cut a failed write back off %s: %s", active.path, undo_error)
            raise self.storage_error(error, "writing") from error
        active.size = offset + len(record)
        seq = self._write_seq = self._write_seq + 1
        self._sync_point = (seq, active.fd)
        return seq

    @property
    def write_seq(self) -> int:
        """The sequence number of the last record appended (read without the lock)."""
        return self._write_seq

    def sync_point(self) -> tuple[int, int]:
        """(write sequence number, active descriptor): what a group-commit round fsyncs."""
        return self._sync_point

    def sync_active(self) -> None:
        """For close: fsync the active segment, tell ``on_sealed``, then ``hint_active``."""
        active = self._active
        if active is not None:
            self._io.fsync(active.fd)
            self._on_sealed(self._write_seq)
            self.hint_active()

    # ------------------------------------------------------------------ failure

    @property
    def failure(self) -> BaseException | None:
        """The I/O error that left the files in an unknown state; writes refuse until reopen."""
        return self._failure

    def fail(self, error: BaseException) -> None:
        self._failure = error

    def storage_error(self, error: OSError, doing: str) -> StorageError:
        """The engine error to raise for ``error`` while ``doing`` something."""
        if error.errno == errno.ENOSPC:
            return DiskFull(f"the disk is full ({doing}); nothing was written")
        if self._failure is not None:
            return StoreFailed(f"I/O error while {doing}; the store refuses writes until reopened")
        return StorageError(f"I/O error while {doing}: {os.strerror(error.errno or errno.EIO)}")

    # ------------------------------------------------------------------ live bytes

    def live_bytes(self, expiring: int) -> int:
        """Bytes of the put records compaction would copy the live entries into, ``expiring`` of
        them (the index's expiries) with an expiry: more than the records they are in when those
        hold several operations (a commit's or batch's share one 32-byte record header)."""
        return self._live_bytes + EXPIRY.size * expiring

    def account_set(self, key_bytes: int, value_bytes: int, previous: int | None) -> None:
        """A key now holds a value of ``value_bytes``; ``previous`` is its old location."""
        self._live_bytes += ENTRY_OVERHEAD + key_bytes + value_bytes
        if previous is not None:
            self._live_bytes -= entry_bytes(key_bytes, previous)

    def account_record(
        self, written: int, written_bytes: int, replaced: list[tuple[int, int]]
    ) -> None:
        """A record wrote ``written`` values (``written_bytes`` of keys and values) and replaced
        or deleted the entries ``replaced`` lists as (key bytes, previous location)."""
        live = self._live_bytes + ENTRY_OVERHEAD * written + written_bytes
        for key_bytes, previous in replaced:
            live -= entry_bytes(key_bytes, previous)
        self._live_bytes = live

    def account_remove(self, key_bytes: int, previous: int | None) -> None:
        if previous is not None:
            self._live_bytes -= entry_bytes(key_bytes, previous)

    def account_bulk(self, entries: int, key_bytes: int, value_bytes: int) -> None:
        """``entries`` new keys at once (a hint file loaded into an empty index)."""
        self._live_bytes += ENTRY_OVERHEAD * entries + key_bytes + value_bytes

    @property
    def truncations(self) -> int:
        """Torn tails and unborn segments that recovery cut off."""
        return self._truncations

    def note_truncation(self) -> None:
        self._truncations += 1

    # ------------------------------------------------------------------ reads

    def read_value(self, location: int) -> bytes:
        """Read the value at a packed ``location`` from its segment; CorruptStore if it is cut
        short or no longer matches the checksum its location holds (a segment loaded from its
        hint, or before the newest one's hint ends, was not read at open: this is its check)."""
        # segment_of, length_of and offset_of written out: every GET comes here, and the three
        # calls would cost ~60 ns, 6 % of an in-process get.
        segment = self._segments[location >> SEGMENT_SHIFT]
        length = (location >> LENGTH_SHIFT) & LENGTH_MASK
        data = self._io.pread(segment.fd, length, (location >> OFFSET_SHIFT) & OFFSET_MASK)
        if len(data) != length or zlib.crc32(data) != location & HASH_MASK:
            why = "value cut short" if len(data) != length else "value fails its checksum"
            raise CorruptStore(str(segment.path), offset_of(location), why)
        return data
