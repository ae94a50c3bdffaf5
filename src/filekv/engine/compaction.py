"""Compaction (Bitcask's merge): rewrite the live records of every sealed segment into merged ones.

Steps, each safe to interrupt by a crash:

1. Under the lock, seal the active segment (fsync), reserve a run of ids M, M+1, ... for the
   outputs and start a new active segment after them. Inputs are every segment below M but the
   newest plain ones that hold the last ``watch_history`` revisions (kept for watchers, see
   ``_kept_history``); new writes go to the new active segment and later.
2. Without the lock, read the inputs oldest first; for each put still live (checked in short
   batches under the lock) append a copy to the current output (``merge_output.py``), keeping
   its revision. An output that reaches ``segment_bytes`` is finished and the next one started,
   so memory holds one output's keys at a time, never every live entry (bounded memory).
3. Finishing an output: fsync it, write its hint (sorted keys and locations, own checksum),
   fsync, rename both into place, fsync the directory. A crash before this leaves only ``.tmp``
   files, which the next open deletes.
4. Under the lock in batches, repoint keys that still sit where they were copied from, output by
   output as each is finished.
5. Once every output is finished, delete the inputs oldest first, fsyncing the directory after
   each. A crash at any point leaves a *suffix* of the inputs next to finished outputs (all of
   them once step 5 has begun); replaying the inputs in id order and then the outputs gives the
   same state, because an output holds only copies of records live when copied, each with its own
   revision, and any later write went to a segment after the outputs.

A failure before step 5 discards the unfinished output; outputs already finished stay (they are
valid segments the index may point into) and are merged again by the next compaction.

``Compactor`` owns compaction's own state: its lock (one compaction at a time), the background
thread, when to start one (the thresholds, looked at by the Store every few thousand writes),
and the counts that ``stats`` reports. It works on the ``SegmentSet`` and ``KeyIndex`` it is
handed, under the Store's lock, which it is handed too.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from typing import Final

from .errors import CorruptStore, StoreClosed
from .hint import (
    HASH_MASK,
    LENGTH_MASK,
    LENGTH_SHIFT,
    OFFSET_BITS,
    OFFSET_MASK,
    OFFSET_SHIFT,
    REVISION_MASK,
    REVISION_SHIFT,
    decode_hint,
    place_of,
)
from .index import KeyIndex
from .merge_output import LiveEntry, MergedOutput
from .record import PUT, FormatError, iter_operations, record_at, record_at_v1
from .segment import Segment, hint_name
from .segments import SegmentSet

log = logging.getLogger(__name__)

BATCH: Final = 2048  # entries checked or moved per hold of the store lock: a pause well under 1 ms
READ_WINDOW: Final = 1 << 20  # an input's live values are read in windows of about this size

INFINITE: Final = 1 << 62  # no size limit for the last reserved output
DAMAGED_VALUE: Final = (  # no key: logged by the background compaction (log_keys is the service's)
    "value fails its checksum; automatic compaction waits until its key is deleted or written "
    "again (Store.check() names it)"
)


class Compactor:
    """When and how the segments are merged; each method takes the store lock when it needs it."""

    def __init__(
        self,
        lock: threading.Lock,
        segments: SegmentSet,
        index: KeyIndex,
        *,
        is_closed: Callable[[], bool],
        revision: Callable[[], int],
        wait_for_round: Callable[[], None],
        min_bytes: int,
        dead_ratio: float,
        automatic: bool,
        keep_revisions: int = 0,
    ) -> None:
        self._lock = lock
        self._segments = segments
        self._index = index
        self._is_closed = is_closed
        self._revision = revision
        self._wait_for_round = wait_for_round
        self._min_bytes = min_bytes
        self._dead_ratio = dead_ratio
        self._automatic = automatic
        self._keep_revisions = keep_revisions  # watch_history: see _kept_history
        self._running = threading.Lock()  # one compaction at a time
        self._damaged: tuple[str, int] | None = None  # (key, location) of a value that failed
        self._thread: threading.Thread | None = None
        self.last_compaction: float | None = None  # time.time() of the last one
        self.compactions = 0  # run by this process
        # Told the seconds each finished compaction took (the service's metrics); None: nobody.
        self.observer: Callable[[float], None] | None = None

    @property
    def busy(self) -> bool:
        """A compaction is running (in the background or in a ``compact()`` call)."""
        return (self._thread is not None and self._thread.is_alive()) or self._running.locked()

    def maybe_start(self) -> None:
        """Start a background compaction if the thresholds say so. Called under the lock."""
        if not self._automatic or self._is_closed():
            return
        if self._damaged is not None:
            # A damaged value fails every try alike, each sealing a segment and keeping the
            # outputs it finished (the store grew every 1,024 writes): paused while it is live.
            if self._index.get(self._damaged[0]) == self._damaged[1]:
                return
            self._damaged = None
        if self._thread is not None and self._thread.is_alive():
            return
        disk = self._segments.data_bytes()
        if disk < self._min_bytes or disk == 0:
            return
        if 1 - self._segments.live_bytes(len(self._index.expiries)) / disk < self._dead_ratio:
            return
        if self._keep_revisions:
            mergeable = self._mergeable(self._kept_history())
            if len(mergeable) <= 1 and all(s.merged for s in mergeable):
                return  # the dead bytes are in history kept for watchers
        self._thread = threading.Thread(
            target=self._compact_in_background, name="filekv-compaction", daemon=True
        )
        self._thread.start()

    def _compact_in_background(self) -> None:
        try:
            self.compact()
        except StoreClosed:
            pass
        except Exception:
            log.exception("background compaction failed; the store goes on without it")

    def wait_idle(self) -> None:
        """Wait for a background compaction and for a ``compact()`` in another thread."""
        thread = self._thread
        if thread is not None:
            thread.join()
        with self._running:
            pass

    def compact(self) -> bool:
        """Run one compaction now; False if there was nothing to merge.

        An I/O error is raised as a StorageError (DiskFull for ENOSPC). Before the inputs are
        deleted, the unfinished output is removed and the store goes on (outputs already
        finished stay: they are valid segments); a failure to delete the inputs leaves files
        this process no longer tracks, so writes stop (StoreFailed) until a reopen reads the
        directory afresh.
        """
        with self._running:
            started = time.monotonic()
            try:
                plan = self._seal()
            except OSError as error:
                raise self._segments.storage_error(error, "starting a compaction") from error
            if plan is None:
                return False
            inputs, output_ids = plan
            copied, outputs = self._merge(inputs, output_ids)
            try:
                self._retire(inputs)
            except OSError as error:
                self._segments.fail(error)
                log.error("compaction could not delete its inputs; writes stop: %s", error)
                raise self._segments.storage_error(error, "deleting compacted segments") from error
            elapsed = time.monotonic() - started
            log.info(
                "compacted %d segments into %d in %.3f s (%d live entries)",
                len(inputs),
                outputs,
                elapsed,
                copied,
            )
            if self.observer is not None:
                try:
                    self.observer(elapsed)
                except Exception:  # the compaction is done: a broken observer must not undo it
                    log.exception("the compaction observer failed")
            return True

    def _seal(self) -> tuple[list[Segment], range] | None:
        """Seal the active segment and reserve the outputs' ids; None if already compact.

        Already compact: nothing but merged segments (each a previous compaction's output,
        holding only what was live then) and an empty active segment, with no dead bytes.
        An output is closed at ``segment_bytes``; the last reserved id takes whatever is left,
        so the outputs never need more ids than reserved, even when copies outgrow the records
        they come from (a put copied out of a batch gets a record header of its own).
        """
        segments = self._segments
        with self._lock:
            if self._is_closed():
                raise StoreClosed("the store is closed")
            active = segments.active
            assert active is not None
            sealed = [s for s in segments.all() if s is not active]
            kept = self._kept_history()
            if not kept and (
                active.size == active.header.size
                and all(s.merged for s in sealed)
                and segments.dead_bytes(len(self._index.expiries)) <= 0
            ):
                return None
            mergeable = self._mergeable(kept)
            if kept and len(mergeable) <= 1 and all(s.merged for s in mergeable):
                # Nothing to gain now: every plain segment holds history to keep. Sealing a
                # written active segment lets a later compaction merge it once its revisions
                # are older than keep_revisions (else a store whose whole history fits in one
                # segment would never be compacted before it is full).
                if active.size > active.header.size:
                    segments.start_new_segment(self._revision())
                return None
            total = sum(s.size for s in sealed) + active.size
            count = total // segments.segment_bytes + 2
            first = segments.reserve_ids(count)
            segments.start_new_segment(self._revision())
            inputs = [
                s for s in segments.all() if s.segment_id < first and s.segment_id not in kept
            ]
        return inputs, range(first, first + count)

    def _kept_history(self) -> set[int]:
        """Ids of the plain segments that hold revisions newer than ``keep_revisions`` ago,
        which watchers may still ask for (history.py reads them). Under the lock.

        A plain segment holds the revisions after its base revision up to the next plain
        segment's base (the active one: up to now), and plain segments are in revision order,
        so the kept ones are the newest run of them. Leaving them out of a compaction is safe
        in id order: everything a merged output copies is live, so no kept segment holds a
        later record of its key, and every record of a kept segment is newer than anything
        compaction copies (merged segments hold only revisions older than the kept ones).
        """
        if not self._keep_revisions:
            return set()
        revision = self._revision()
        horizon = revision - self._keep_revisions
        plain = [s for s in self._segments.all() if not s.merged]
        for index in range(len(plain)):
            following = plain[index + 1] if index + 1 < len(plain) else None
            reaches = following.header.base_revision if following is not None else revision
            if reaches > horizon:
                return {s.segment_id for s in plain[index:]}
        return set()

    def _mergeable(self, kept: set[int]) -> list[Segment]:
        """The segments a compaction would merge now (the active one included). Under the lock."""
        return [s for s in self._segments.all() if s.segment_id not in kept]

    def _merge(self, inputs: list[Segment], output_ids: range) -> tuple[int, int]:
        """Copy the live puts of ``inputs`` into finished outputs; return (copies, outputs)."""
        segments = self._segments
        ids = iter(output_ids)
        last_id = output_ids[-1]
        output: MergedOutput | None = None
        copied = finished = 0
        try:
            for segment in inputs:
                for batch in self._live_batches(segment):
                    while batch:
                        if output is None:
                            output = MergedOutput(
                                segments.io, segments.directory, next(ids), self._revision()
                            )
                        # The last reserved id takes whatever is left (see _seal).
                        last = output.segment_id == last_id
                        taken = output.append(batch, INFINITE if last else segments.segment_bytes)
                        copied += taken
                        batch = batch[taken:]
                        if batch:  # the output is full
                            self._finish(output)
                            output = None
                            finished += 1
            if output is not None:
                self._finish(output)
                output = None
                finished += 1
        except BaseException as error:  # an I/O error, or damage found (CorruptStore)
            if output is not None:
                self._discard(output)
            if isinstance(error, OSError):
                raise segments.storage_error(error, "compacting") from error
            raise
        return copied, finished

    def _finish(self, output: MergedOutput) -> None:
        """Make ``output`` durable, register it and repoint the keys still where it copied
        them from (in short batches under the lock)."""
        segment, hint_bytes = output.finish()
        keys, old_locations, new_locations = output.keys, output.old_locations, output.new_locations
        with self._lock:
            self._segments.add(segment, hint_bytes=hint_bytes)
        for first in range(0, len(keys), BATCH):
            end = first + BATCH
            with self._lock:
                self._index.move_many(
                    keys[first:end], old_locations[first:end], new_locations[first:end]
                )

    def _discard(self, output: MergedOutput) -> None:
        """Remove an unfinished output's files; if that fails too, stop writes."""
        try:
            output.discard()
        except OSError as error:
            # A stale copy left on disk could bring deleted keys back at a later open.
            self._segments.fail(error)
            log.error("could not remove a failed compaction's output; writes stop: %s", error)

    def _live_batches(self, segment: Segment) -> Iterator[list[LiveEntry]]:
        """The puts of ``segment`` that the index still points at, with their values, in batches.

        The candidates are the segment's final puts, from its summary or its hint file when it
        has one (no record parsed: a key the index still points at is live, whatever else the
        segment held), checked a batch at a time under the lock; their values are read in windows
        of ``READ_WINDOW`` bytes, so memory holds one batch. A segment with neither summary nor
        good hint (replayed at open) is read whole and parsed: at most ``segment_bytes`` for a
        plain one.
        """
        known = self._final_puts(segment)
        if known is None:
            yield from self._parsed_live_batches(segment)
            return
        io = self._segments.io
        fd = segment.fd
        for first in range(0, len(known), BATCH):
            live: list[tuple[int, str, int]] = []  # (offset, key, location)
            expiries: dict[str, float] = {}
            batch = known[first : first + BATCH]
            with self._lock:
                current = self._index.get_many([key for key, _ in batch])
                for (key, location), now in zip(batch, current, strict=True):
                    if now == location:
                        live.append(((location >> OFFSET_SHIFT) & OFFSET_MASK, key, location))
                held = self._index.expiries
                if held:  # while a location holds, so does its expiry: one record wrote both
                    expiries = {key: held[key] for _, key, _ in live if key in held}
            live.sort()
            entries: list[LiveEntry] = []
            window = b""
            window_start = window_end = 0
            for start, key, location in live:
                length = (location >> LENGTH_SHIFT) & LENGTH_MASK
                if start < window_start or start + length > window_end:
                    window_start = start
                    window = io.pread(fd, max(READ_WINDOW, length), start)
                    window_end = start + len(window)
                    if len(window) < length:
                        raise CorruptStore(str(segment.path), start, "a value ends past the file")
                at = start - window_start
                revision = (location >> REVISION_SHIFT) & REVISION_MASK
                expires_at = expiries.get(key) if expiries else None
                value = window[at : at + length]
                if zlib.crc32(value) != location & HASH_MASK:  # copied, it would look sound
                    self._damaged = (key, location)  # automatic compaction waits (maybe_start)
                    raise CorruptStore(str(segment.path), start, DAMAGED_VALUE)
                entries.append((key, key.encode("utf-8"), revision, location, value, expires_at))
            yield entries

    def _final_puts(self, segment: Segment) -> list[tuple[str, int]] | None:
        """(key, location) of each key ``segment`` leaves written, if known without parsing it."""
        summary = segment.summary  # a sealed segment's: it no longer changes
        if summary is not None:
            return [(key, where) for key, where in summary.final.items() if where is not None]
        path = self._segments.directory / hint_name(segment.segment_id)
        try:
            hint = decode_hint(self._segments.io.read_file(str(path)))
        except FileNotFoundError:
            return None
        except (FormatError, OSError) as error:
            log.warning("%s ignored by compaction (%s); reading the segment instead", path, error)
            return None
        if hint.segment_id != segment.segment_id or (
            not segment.merged and hint.segment_length != segment.size
        ):
            return None
        return list(zip(hint.keys, hint.locations, strict=True))

    def _parsed_live_batches(self, segment: Segment) -> Iterator[list[LiveEntry]]:
        """``_live_batches`` for a segment known only by its records.

        Inputs of either format version are read; the outputs are always the current version.
        """
        data = self._segments.io.read_file(str(segment.path))[: segment.size]
        candidates: list[tuple[str, bytes, int, int, int]] = []
        header = segment.header
        offset = header.size
        while offset < len(data):
            if header.version >= 2:
                found = record_at(data, offset, header.marker)
            else:
                found = record_at_v1(data, offset)
            if found is None:
                raise CorruptStore(str(segment.path), offset, "damaged record found by compaction")
            revision, end = found
            for op in iter_operations(data, offset, header.version):
                if op.kind == PUT:
                    candidates.append(
                        (op.key.decode("utf-8"), op.key, op.value_offset, op.value_length, revision)
                    )
            offset = end
        place_base = segment.segment_id << OFFSET_BITS
        for first in range(0, len(candidates), BATCH):
            live: list[LiveEntry] = []
            with self._lock:
                get = self._index.get
                expiries = self._index.expiries
                for key, encoded, start, length, revision in candidates[first : first + BATCH]:
                    location = get(key)
                    if location is not None and place_of(location) == place_base | start:
                        value = data[start : start + length]
                        expires_at = expiries.get(key) if expiries else None
                        live.append((key, encoded, revision, location, value, expires_at))
            yield live

    def _retire(self, inputs: list[Segment]) -> None:
        io = self._segments.io
        directory = self._segments.directory
        with self._lock:
            # A group-commit round that started before the seal may still be fsyncing an input;
            # rounds that start now sync the new active segment. Readers hold this lock.
            self._wait_for_round()
            for segment in inputs:
                self._segments.remove(segment)
            self.last_compaction = time.time()
            self.compactions += 1
        for segment in inputs:  # oldest first: see the module docstring, step 5
            io.unlink(str(segment.path))
            hint = directory / hint_name(segment.segment_id)
            if hint.exists():  # the hint writer removes one it finished too late: may win
                with contextlib.suppress(FileNotFoundError):
                    io.unlink(str(hint))
            # One directory fsync per deletion: a file system may persist unlinks in any order, and
            # only oldest-first keeps the survivors a suffix (else an old put could outlive the
            # newer segment that deleted its key).
            io.fsync_dir(str(directory))
