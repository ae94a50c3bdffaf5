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
"""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING

from .errors import CorruptStore
from .record import (
    FLAG_MERGED,
    HASH_MASK,
    OFFSET_BITS,
    PLACE_SHIFT,
    PUT,
    PUT_VALUE_OFFSET,
    HintColumns,
    SegmentHeader,
    encode_hint,
    encode_put,
    encode_segment_header,
    iter_operations,
    pack,
    record_at,
    record_at_v1,
)
from .segment import TEMP_SUFFIX, Segment, hint_name, new_marker, segment_name

if TYPE_CHECKING:
    from .store import Store

log = logging.getLogger(__name__)

BATCH = 2048  # entries checked or moved per hold of the store lock: a pause well under 1 ms
FLUSH_BYTES = 4 << 20


def compact(store: Store) -> bool:
    """Run one compaction of ``store``; False if there was nothing to merge.

    An I/O error is raised as a StorageError (DiskFull for ENOSPC). Before the index moves to
    the output, the output is removed and the store goes on as before; after it, a failure to
    delete the inputs leaves files this process no longer tracks, so writes stop (StoreFailed)
    until a reopen reads the directory afresh.
    """
    with store._compact_lock:
        started = time.monotonic()
        try:
            plan = _seal(store)
        except OSError as error:
            raise store._storage_error(error, "starting a compaction") from error
        if plan is None:
            return False
        inputs, output_id = plan
        try:
            header, copied = _write_output(store, inputs, output_id)
            output = _open_output(store, output_id, header)
        except OSError as error:
            _discard_output(store, output_id)
            raise store._storage_error(error, "compacting") from error
        _install(store, output, copied)
        try:
            _retire(store, inputs)
        except OSError as error:
            store._failure = error
            log.error("compaction could not delete its inputs; writes stop: %s", error)
            raise store._storage_error(error, "deleting compacted segments") from error
        log.info(
            "compacted %d segments into %s in %.3f s (%d live entries)",
            len(inputs),
            segment_name(output_id),
            time.monotonic() - started,
            len(copied[0]),
        )
        return True


def _discard_output(store: Store, output_id: int) -> None:
    """Remove every file of a failed compaction; if that fails too, stop writes."""
    directory = store._path
    try:
        for name in (segment_name(output_id), hint_name(output_id)):
            for path in (directory / name, directory / (name + TEMP_SUFFIX)):
                if path.exists():
                    store._io.unlink(str(path))
        store._io.fsync_dir(str(directory))
    except OSError as error:
        # A stale copy left on disk could bring deleted keys back at a later open.
        store._failure = error
        log.error("could not remove a failed compaction's output; writes stop: %s", error)


def _seal(store: Store) -> tuple[list[Segment], int] | None:
    with store._lock:
        if store._closed:
            from .errors import StoreClosed

            raise StoreClosed("the store is closed")
        active = store._active
        assert active is not None
        sealed = [s for s in store._segments.values() if s is not active]
        if active.size == active.header.size and (
            not sealed or (len(sealed) == 1 and sealed[0].merged)
        ):
            return None  # already compact: one merged segment and an empty active one
        output_id = store._next_id
        store._next_id += 1
        store._start_new_segment()
        inputs = sorted(
            (s for s in store._segments.values() if s.segment_id < output_id),
            key=lambda s: s.segment_id,
        )
    return inputs, output_id


Copied = tuple[list[str], list[int], list[int]]  # keys, where they were, where they are now


def _write_output(
    store: Store, inputs: list[Segment], output_id: int
) -> tuple[SegmentHeader, Copied]:
    """Copy live entries into the output segment and its hint; return its header and the copies.

    Inputs of either format version are read; the output is always the current version.
    """
    io = store._io
    directory = store._path
    output_path = directory / (segment_name(output_id) + TEMP_SUFFIX)
    keys: list[str] = []
    old_locations: list[int] = []
    new_locations: list[int] = []
    max_revision = 0
    fd = io.open(str(output_path), os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND)
    try:
        header = SegmentHeader(output_id, store._revision, FLAG_MERGED, new_marker())
        marker = header.marker
        buffer = bytearray(encode_segment_header(header))
        position = header.size
        for segment in inputs:
            data = io.read_file(str(segment.path))[: segment.size]
            for batch in _live_batches(store, segment, data):
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


LiveEntry = tuple[str, bytes, int, int, int, int]  # key, encoded, value start, length, rev, old loc


def _live_batches(store: Store, segment: Segment, data: bytes) -> list[list[LiveEntry]]:
    """The puts of ``segment`` that the index still points at, in batches."""
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
        with store._lock:
            locations = store._index.locations
            for key, encoded, start, length, revision in candidates[first : first + BATCH]:
                location = locations.get(key)
                if location is not None and location >> PLACE_SHIFT == place_base | start:
                    live.append((key, encoded, start, length, revision, location))
        batches.append(live)
    return batches


def _open_output(store: Store, output_id: int, header: SegmentHeader) -> Segment:
    directory = store._path
    path = directory / segment_name(output_id)
    fd = store._io.open(str(path), os.O_RDONLY)
    segment = Segment(output_id, path, fd, os.path.getsize(path), header, True)
    with store._lock:
        store._hint_bytes[output_id] = os.path.getsize(directory / hint_name(output_id))
    return segment


def _install(store: Store, output: Segment, copied: Copied) -> None:
    """Register the output and repoint, in short batches, keys still where they were copied from."""
    keys, old_locations, new_locations = copied
    with store._lock:
        store._segments[output.segment_id] = output
    for first in range(0, len(keys), BATCH):
        with store._lock:
            move = store._index.move
            for i in range(first, min(first + BATCH, len(keys))):
                move(keys[i], old_locations[i], new_locations[i])


def _retire(store: Store, inputs: list[Segment]) -> None:
    io = store._io
    directory = store._path
    with store._lock:
        # A group-commit round that started before the seal may still be fsyncing an input;
        # rounds that start now sync the new active segment. Readers hold this lock.
        store._group.wait_for_round()
        for segment in inputs:
            del store._segments[segment.segment_id]
            store._hint_bytes.pop(segment.segment_id, None)
            io.close(segment.fd)
        store._last_compaction = time.time()
        store._compactions += 1
    for segment in inputs:  # oldest first: see the module docstring, step 5
        io.unlink(str(segment.path))
        hint = directory / hint_name(segment.segment_id)
        if hint.exists():
            io.unlink(str(hint))
        # One directory fsync per deletion: a file system may persist unlinks in any order, and
        # only oldest-first keeps the survivors a suffix (else an old put could outlive the
        # newer segment that deleted its key).
        io.fsync_dir(str(directory))
