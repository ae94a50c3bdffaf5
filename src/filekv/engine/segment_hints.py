"""Hint files for plain sealed segments: written in the background once a segment is sealed.

A sealed segment never changes again, so its final state per key (a location, or deleted) can be
summed up once in a hint file (``hint.py``, version 3, deleted keys included). Opening the store
then loads every sealed segment from its hint and replays only the active segment's tail.

Writing one hint, each step safe to interrupt by a crash:

1. take each key's last operation: from the ``SegmentSummary`` the writer kept while the segment
   was active, or, for a segment read back from disk (replayed at open), by reading the segment
   (every record must check out: it is sealed);
2. write ``N.hint.tmp`` with its own checksum and the segment length it covers, fsync it;
3. rename it to ``N.hint``, fsync the directory.

A crash before 3 leaves a ``.tmp`` that the next open deletes; a hint that is torn, damaged, of
another segment or of another segment length is ignored and the segment replayed instead. A failed
write is logged and its temporary file removed: the store goes on, the segment is replayed.

The active segment gets a hint too, of what it holds so far (``ActivePrefix``): every
``active_hint_bytes`` it grows (32 MiB by default), from a copy of its summary taken under the
store lock, once the group commit made the segment durable up to there; the segment's final
hint replaces it once it is sealed. An open after a crash loads such a hint and replays only
what follows the length it covers (``recovery.py``): a crash then costs the replay of at most
32 MiB, not of a whole 64 MiB segment (docs/PERFORMANCE.md).

``HintWriter`` owns one background thread and its queue of sealed segments and active
prefixes, written in the order queued (a prefix before the same segment's final hint);
``close`` finishes the hints still queued (at most a segment or two: one takes about a second
at 64 MiB), so a cleanly closed store reopens without replaying any sealed segment.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .fileio import FileIO
from .hint import HintColumns, encode_hint, pack
from .record import PUT, iter_operations, value_hash
from .segment import TEMP_SUFFIX, Segment, SegmentSummary, hint_name, scan_segment
from .slices import sliced_map, sliced_sorted

log = logging.getLogger(__name__)


def summarize_segment(io: FileIO, path: Path, segment_id: int) -> HintColumns:
    """The hint of a sealed segment read back from disk: each key's last put or delete."""
    summary, length = scan_summary(io, path, segment_id)
    return hint_columns(segment_id, summary, length)


def scan_summary(io: FileIO, path: Path, segment_id: int) -> tuple[SegmentSummary, int]:
    """A sealed segment's summary, rebuilt by reading it; and the length it covers."""
    scanned = scan_segment(io, path, may_have_torn_tail=False)
    data = scanned.data
    version = scanned.header.version
    final: dict[str, int | None] = {}
    expiries: dict[str, float] = {}
    highest = scanned.header.base_revision
    for offset, revision in scanned.records:
        for op in iter_operations(data, offset, version):
            key = op.key.decode("utf-8")
            if op.kind == PUT:
                start = op.value_offset
                length = op.value_length
                hashed = value_hash(data[start : start + length])
                final[key] = pack(segment_id, start, length, revision, hashed)
                if op.expires_at is not None:
                    expiries[key] = op.expires_at
                    continue
            else:
                final[key] = None
            expiries.pop(key, None)
        highest = max(highest, revision)
    return SegmentSummary(final, highest, expiries), scanned.good_end


def hint_columns(segment_id: int, summary: SegmentSummary, length: int) -> HintColumns:
    """The hint file's columns for a plain segment of ``length`` bytes summed up by ``summary``."""
    final = summary.final
    # Sliced sorts and lookups (``slices.py``): the hint writer is a background thread, and one
    # sort of a segment's keys in a single C call kept the GIL from the event loop for as long.
    keys = sliced_sorted([key for key, location in final.items() if location is not None])
    deleted = sliced_sorted([key for key, location in final.items() if location is None])
    return HintColumns(
        segment_id=segment_id,
        max_revision=summary.max_revision,
        created_ms=int(time.time() * 1000),
        keys=keys,
        locations=sliced_map(final.__getitem__, keys),  # type: ignore[arg-type]  # puts: never None
        deleted=deleted,
        segment_length=length,
        expiries=dict(summary.expiries),
    )


@dataclass(frozen=True, slots=True)
class ActivePrefix:
    """The first ``length`` bytes of the active ``segment``, summed up by ``summary`` (a copy
    taken under the store lock when the segment was that long)."""

    segment: Segment
    summary: SegmentSummary
    length: int
    # Makes those bytes durable or raises: the store's group commit (``durability.py``), the one
    # judge of what reached the disk. An fsync of the segment here would not do: after a
    # failed fsync, Linux reports success for the same pages, which never reached the disk.
    durable: Callable[[], None]


def write_segment_hint(
    io: FileIO, directory: Path, segment: Segment, prefix: ActivePrefix | None = None
) -> int:
    """Write sealed ``segment``'s hint file atomically (steps 1-3 above); return its size.
    With ``prefix``, the hint of that much of the (active) segment instead."""
    segment_id = segment.segment_id
    summary = segment.summary
    if prefix is not None:
        if not segment.path.exists():
            raise FileNotFoundError(f"{segment.path.name} was deleted")
        # The bytes the hint sums up reach the disk before the hint that says they are there
        # (with fsync="never" nothing else would put them there before the segment is sealed).
        prefix.durable()
        columns = hint_columns(segment_id, prefix.summary, prefix.length)
    elif summary is not None:
        columns = hint_columns(segment_id, summary, segment.size)
    else:
        columns = summarize_segment(io, segment.path, segment_id)
    data = encode_hint(columns)
    del columns
    final = directory / hint_name(segment_id)
    temp = directory / (hint_name(segment_id) + TEMP_SUFFIX)
    fd = io.open(str(temp), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        try:
            io.write(fd, data)
            io.fsync(fd)
        finally:
            io.close(fd)
        io.rename(str(temp), str(final))
    except BaseException:
        with contextlib.suppress(OSError):
            io.unlink(str(temp))
        raise
    if not segment.path.exists():
        # Compaction retired the segment while its hint was built from memory: it deletes the
        # segment file before looking for a hint, so a hint renamed in after that look is seen
        # here, and goes. (Left, it was only a stray file until the next open removed it.)
        io.unlink(str(final))
        raise FileNotFoundError(f"{segment.path.name} was deleted while its hint was written")
    io.fsync_dir(str(directory))
    return len(data)


class HintWriter:
    """One background thread writing the hint of each segment handed to ``schedule``."""

    def __init__(self, io: FileIO, directory: Path) -> None:
        self._io = io
        self._directory = directory
        # A segment to hint (sealed, or a prefix of the active one), an event to set once
        # everything before it is done, or None: stop.
        self._queue: queue.SimpleQueue[Segment | ActivePrefix | threading.Event | None] = (
            queue.SimpleQueue()
        )
        self._thread: threading.Thread | None = None
        self._closing = False
        self.written: dict[int, int] = {}  # segment id -> hint size, read by the segment set

    def schedule(self, segment: Segment) -> None:
        """Write sealed ``segment``'s hint soon, in the background."""
        if self._closing:
            segment.summary = None
            return
        self._queue.put(segment)
        self._start()

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="filekv-segment-hints", daemon=True
            )
            self._thread.start()

    def schedule_prefix(self, prefix: ActivePrefix) -> None:
        """Write the hint of what the active segment held when ``prefix`` was taken, soon."""
        if not self._closing:
            self._queue.put(prefix)
            self._start()

    def wait_idle(self) -> None:
        """Wait until every hint scheduled so far is written (for tests and benchmarks)."""
        thread = self._thread
        if thread is None or self._closing:
            return
        done = threading.Event()
        self._queue.put(done)
        while not done.wait(0.1):
            if not thread.is_alive():
                return

    def close(self) -> None:
        """Finish the hints queued so far, stop the thread; later ``schedule`` calls do nothing."""
        self._closing = True
        thread = self._thread
        if thread is not None:
            self._queue.put(None)
            thread.join()
            self._thread = None

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if isinstance(item, threading.Event):
                item.set()
                continue
            prefix = item if isinstance(item, ActivePrefix) else None
            if prefix is not None and self._closing:
                continue  # closing: the close writes the whole hint (or the store failed)
            segment = item.segment if isinstance(item, ActivePrefix) else item
            try:
                self.written[segment.segment_id] = write_segment_hint(
                    self._io, self._directory, segment, prefix
                )
            except FileNotFoundError:
                pass  # compaction deleted the segment first: it needs no hint
            except Exception as error:  # a missing hint only means a replay
                name = segment.path.name
                log.warning("no hint file for %s (%s); it will be replayed", name, error)
            except BaseException as error:  # e.g. a simulated power cut: this thread stops here
                log.warning("hint writer stopped at %s (%r)", segment.path.name, error)
                self._closing = True
                self._drain()
                return
            finally:
                if prefix is None:
                    segment.summary = None  # the hint file (or a replay) holds it now

    def _drain(self) -> None:
        """Wake every ``wait_idle`` still queued once the thread can no longer serve them."""
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, threading.Event):
                item.set()
            elif isinstance(item, Segment):
                item.summary = None
