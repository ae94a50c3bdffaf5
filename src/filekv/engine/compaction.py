"""Compaction (Bitcask's merge): rewrite the live records of every sealed segment into one.

Steps, each safe to interrupt by a crash:

1. Under the lock, seal the active segment (fsync), reserve id M for the output and start a new
   active segment M+1. Inputs are every segment below M; new writes go to M+1 and later.
2. Without the lock, read the inputs oldest first; for each put still live (checked in short
   batches under the lock) append a copy to ``M.seg.tmp``, keeping its revision.
3. fsync the output, write ``M.hint.tmp`` (sorted keys and locations, own checksum), fsync, rename
   both into place, fsync the directory. A crash before this leaves only ``.tmp`` files, which
   the next open deletes.
4. Under the lock in batches, repoint keys that still sit where they were copied from.
5. Delete the inputs oldest first, fsyncing the directory after each. A crash midway leaves
   a *suffix* of inputs next to the output; replaying them in id order and then the output gives
   the same state, because a key's newest input record is always in the suffix that survives.

``Compactor`` owns compaction's own state: its lock (one compaction at a time), the background
thread, when to start one (the thresholds, looked at by the Store every few thousand writes),
and the counts that ``stats`` reports. It works on the ``SegmentSet`` and ``KeyIndex`` it is
handed, under the Store's lock, which it is handed too.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

from .errors import CorruptStore, StoreClosed
from .hint import (
    HASH_MASK,
    OFFSET_BITS,
    HintColumns,
    decode_hint,
    encode_hint,
    length_of,
    offset_of,
    pack,
    place_of,
    revision_of,
)
from .index import KeyIndex
from .record import (
    FLAG_MERGED,
    PUT,
    PUT_VALUE_OFFSET,
    FormatError,
    SegmentHeader,
    encode_put,
    encode_segment_header,
    iter_operations,
    record_at,
    record_at_v1,
)
from .segment import TEMP_SUFFIX, Segment, hint_name, new_marker, segment_name
from .segments import SegmentSet

log = logging.getLogger(__name__)

BATCH = 2048  # entries checked or moved per hold of the store lock: a pause well under 1 ms
FLUSH_BYTES = 4 << 20


Copied = tuple[list[str], list[int], list[int]]  # keys, where they were, where they are now
LiveEntry = tuple[str, bytes, int, int, int, int]  # key, encoded, value start, length, rev, old loc


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
        self._running = threading.Lock()  # one compaction at a time
        self._thread: threading.Thread | None = None
        self.last_compaction: float | None = None  # time.time() of the last one
        self.compactions = 0  # run by this process

    @property
    def busy(self) -> bool:
        """A compaction is running (in the background or in a ``compact()`` call)."""
        return (self._thread is not None and self._thread.is_alive()) or self._running.locked()

    def maybe_start(self) -> None:
        """Start a background compaction if the thresholds say so. Called under the lock."""
        if not self._automatic or self._is_closed():
            return
        if self._thread is not None and self._thread.is_alive():
            return
        disk = self._segments.data_bytes()
        if disk < self._min_bytes or disk == 0:
            return
        if 1 - self._segments.live_bytes / disk < self._dead_ratio:
            return
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

        An I/O error is raised as a StorageError (DiskFull for ENOSPC). Before the index moves to
        the output, the output is removed and the store goes on as before; after it, a failure to
        delete the inputs leaves files this process no longer tracks, so writes stop (StoreFailed)
        until a reopen reads the directory afresh.
        """
        with self._running:
            started = time.monotonic()
            try:
                plan = self._seal()
            except OSError as error:
                raise self._segments.storage_error(error, "starting a compaction") from error
            if plan is None:
                return False
            inputs, output_id = plan
            try:
                header, copied = self._write_output(inputs, output_id)
                output = self._open_output(output_id, header)
            except OSError as error:
                self._discard_output(output_id)
                raise self._segments.storage_error(error, "compacting") from error
            self._install(output, copied)
            try:
                self._retire(inputs)
            except OSError as error:
                self._segments.fail(error)
                log.error("compaction could not delete its inputs; writes stop: %s", error)
                raise self._segments.storage_error(error, "deleting compacted segments") from error
            log.info(
                "compacted %d segments into %s in %.3f s (%d live entries)",
                len(inputs),
                segment_name(output_id),
                time.monotonic() - started,
                len(copied[0]),
            )
            return True

    def _discard_output(self, output_id: int) -> None:
        """Remove every file of a failed compaction; if that fails too, stop writes."""
        directory = self._segments.directory
        try:
            for name in (segment_name(output_id), hint_name(output_id)):
                for path in (directory / name, directory / (name + TEMP_SUFFIX)):
                    if path.exists():
                        self._segments.io.unlink(str(path))
            self._segments.io.fsync_dir(str(directory))
        except OSError as error:
            # A stale copy left on disk could bring deleted keys back at a later open.
            self._segments.fail(error)
            log.error("could not remove a failed compaction's output; writes stop: %s", error)

    def _seal(self) -> tuple[list[Segment], int] | None:
        segments = self._segments
        with self._lock:
            if self._is_closed():
                raise StoreClosed("the store is closed")
            active = segments.active
            assert active is not None
            sealed = [s for s in segments.all() if s is not active]
            if active.size == active.header.size and (
                not sealed or (len(sealed) == 1 and sealed[0].merged)
            ):
                return None  # already compact: one merged segment and an empty active one
            output_id = segments.reserve_id()
            segments.start_new_segment(self._revision())
            inputs = [s for s in segments.all() if s.segment_id < output_id]
        return inputs, output_id

    def _write_output(self, inputs: list[Segment], output_id: int) -> tuple[SegmentHeader, Copied]:
        """Copy live entries into the output segment and its hint; return its header and the copies.

        Inputs of either format version are read; the output is always the current version.
        """
        io = self._segments.io
        directory = self._segments.directory
        output_path = directory / (segment_name(output_id) + TEMP_SUFFIX)
        keys: list[str] = []
        old_locations: list[int] = []
        new_locations: list[int] = []
        max_revision = 0
        fd = io.open(str(output_path), os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND)
        try:
            header = SegmentHeader(output_id, self._revision(), FLAG_MERGED, new_marker())
            marker = header.marker
            buffer = bytearray(encode_segment_header(header))
            position = header.size
            for segment in inputs:
                data = io.read_file(str(segment.path))[: segment.size]
                for batch in self._live_batches(segment, data):
                    for key, encoded, start, length, revision, old in batch:
                        value = data[start : start + length]
                        record = encode_put(marker, revision, encoded, value)
                        keys.append(key)
                        old_locations.append(old)
                        new_locations.append(
                            pack(
                                output_id,
                                position + PUT_VALUE_OFFSET + len(encoded),
                                length,
                                revision,
                                old & HASH_MASK,
                            )
                        )
                        max_revision = max(max_revision, revision)
                        buffer += record
                        position += len(record)
                    if len(buffer) >= FLUSH_BYTES:
                        io.write(fd, bytes(buffer))
                        buffer.clear()
            io.write(fd, bytes(buffer))
            io.fsync(fd)
        finally:
            io.close(fd)
        order = sorted(range(len(keys)), key=keys.__getitem__)
        hint = HintColumns(
            segment_id=output_id,
            max_revision=max_revision,
            created_ms=int(time.time() * 1000),
            keys=[keys[i] for i in order],
            locations=[new_locations[i] for i in order],
        )
        hint_path = directory / (hint_name(output_id) + TEMP_SUFFIX)
        hint_fd = io.open(str(hint_path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        try:
            io.write(hint_fd, encode_hint(hint))
            io.fsync(hint_fd)
        finally:
            io.close(hint_fd)
        # The segment first: a segment without its hint is replayed; a hint without its segment is
        # an orphan that open() deletes.
        io.rename(str(output_path), str(directory / segment_name(output_id)))
        io.rename(str(hint_path), str(directory / hint_name(output_id)))
        io.fsync_dir(str(directory))
        return header, (keys, old_locations, new_locations)

    def _live_batches(self, segment: Segment, data: bytes) -> list[list[LiveEntry]]:
        """The puts of ``segment`` that the index still points at, in batches.

        The candidates are the segment's final puts, from its summary or its hint file when it
        has one (no record parsed: a key the index still points at is live, whatever else the
        segment held), else from reading every record.
        """
        known = self._final_puts(segment)
        if known is not None:
            batches: list[list[LiveEntry]] = []
            for first in range(0, len(known), BATCH):
                live: list[LiveEntry] = []
                with self._lock:
                    get = self._index.locations.get
                    for key, location in known[first : first + BATCH]:
                        if get(key) == location:
                            live.append(
                                (
                                    key,
                                    key.encode("utf-8"),
                                    offset_of(location),
                                    length_of(location),
                                    revision_of(location),
                                    location,
                                )
                            )
                batches.append(live)
            return batches
        return self._parsed_live_batches(segment, data)

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

    def _parsed_live_batches(self, segment: Segment, data: bytes) -> list[list[LiveEntry]]:
        """``_live_batches`` for a segment known only by its records."""
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
        batches: list[list[LiveEntry]] = []
        for first in range(0, len(candidates), BATCH):
            live: list[LiveEntry] = []
            with self._lock:
                locations = self._index.locations
                for key, encoded, start, length, revision in candidates[first : first + BATCH]:
                    location = locations.get(key)
                    if location is not None and place_of(location) == place_base | start:
                        live.append((key, encoded, start, length, revision, location))
            batches.append(live)
        return batches

    def _open_output(self, output_id: int, header: SegmentHeader) -> Segment:
        directory = self._segments.directory
        path = directory / segment_name(output_id)
        fd = self._segments.io.open(str(path), os.O_RDONLY)
        segment = Segment(output_id, path, fd, os.path.getsize(path), header, True)
        with self._lock:
            self._segments.set_hint_bytes(
                output_id, os.path.getsize(directory / hint_name(output_id))
            )
        return segment

    def _install(self, output: Segment, copied: Copied) -> None:
        """Register the output; repoint, in short batches, keys still where they were copied."""
        keys, old_locations, new_locations = copied
        with self._lock:
            self._segments.add(output)
        for first in range(0, len(keys), BATCH):
            with self._lock:
                move = self._index.move
                for i in range(first, min(first + BATCH, len(keys))):
                    move(keys[i], old_locations[i], new_locations[i])

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
            if hint.exists():
                io.unlink(str(hint))
            # One directory fsync per deletion: a file system may persist unlinks in any order, and
            # only oldest-first keeps the survivors a suffix (else an old put could outlive the
            # newer segment that deleted its key).
            io.fsync_dir(str(directory))
