"""One output segment of a compaction, written as ``NNNNNNNNNN.seg.tmp`` until it is finished.

Compaction copies live puts into a run of such outputs, each at most about ``segment_bytes``,
so what it holds in memory at any time is one output's keys and locations (for its hint file)
and a small write buffer, never every live entry of the store (issue 9: one output per
compaction took 3x the store's steady memory at 10 million keys).

``finish`` makes an output durable in the order recovery relies on: the segment fsynced, its
hint written and fsynced, the segment renamed into place before its hint (a segment without a
hint is replayed; a hint without its segment is an orphan that ``open`` deletes), then the
directory fsynced. Until the rename, a crash leaves only ``.tmp`` files, which ``open`` deletes.

Owns the output's descriptor and buffers until ``finish`` or ``discard``.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Final

from .fileio import FileIO
from .hint import (
    HASH_MASK,
    LENGTH_SHIFT,
    OFFSET_SHIFT,
    REVISION_SHIFT,
    SEGMENT_SHIFT,
    HintColumns,
    encode_hint,
)
from .record import (
    FLAG_MERGED,
    PUT_VALUE_OFFSET,
    SegmentHeader,
    encode_put,
    encode_put_ttl,
    encode_segment_header,
)
from .segment import TEMP_SUFFIX, Segment, hint_name, new_marker, segment_name

FLUSH_BYTES: Final = 4 << 20  # buffered output written in pieces of about this size

# key, its UTF-8 bytes, revision, where it is (the index's location), its value, its expiry
LiveEntry = tuple[str, bytes, int, int, bytes, float | None]


class MergedOutput:
    """A merged segment being written: ``append`` copies, ``finish`` seals, ``discard`` undoes."""

    def __init__(self, io: FileIO, directory: Path, segment_id: int, base_revision: int) -> None:
        self._io = io
        self._directory = directory
        self.segment_id = segment_id
        self.header = SegmentHeader(segment_id, base_revision, FLAG_MERGED, new_marker())
        self._temp = directory / (segment_name(segment_id) + TEMP_SUFFIX)
        self._fd: int | None = io.open(
            str(self._temp), os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
        )
        self._buffer = bytearray(encode_segment_header(self.header))
        self.size = self.header.size  # bytes written or buffered
        self.keys: list[str] = []
        self.old_locations: list[int] = []  # where each key was copied from
        self.new_locations: list[int] = []  # where it is now
        self.expiries: dict[str, float] = {}  # of the keys copied, those whose value expires
        self._max_revision = 0

    def append(self, entries: list[LiveEntry], limit: int) -> int:
        """Copy live puts (revisions kept) until the output would pass ``limit`` bytes; return
        how many were taken (at least one: a record larger than ``limit`` fills an output alone).

        One call per batch, the loop's names bound once: compaction copies every live entry of
        the store, and a method call per entry was a third of its time.
        """
        marker = self.header.marker
        keys, old_locations, new_locations = self.keys, self.old_locations, self.new_locations
        buffer = self._buffer
        size = self.size
        highest = self._max_revision
        fixed = self.segment_id << SEGMENT_SHIFT
        taken = 0
        expiries = self.expiries
        for key, encoded, revision, old, value, expires_at in entries:
            if expires_at is None:
                record = encode_put(marker, revision, encoded, value)
            else:  # copied with its expiry, which stays what the client set
                record = encode_put_ttl(marker, revision, encoded, value, expires_at)
            if size + len(record) > limit and keys:
                break
            if expires_at is not None:
                expiries[key] = expires_at
            keys.append(key)
            old_locations.append(old)
            new_locations.append(  # pack(), inlined; the value hash is the old location's
                fixed
                | (size + PUT_VALUE_OFFSET + len(encoded)) << OFFSET_SHIFT
                | len(value) << LENGTH_SHIFT
                | revision << REVISION_SHIFT
                | old & HASH_MASK
            )
            if revision > highest:
                highest = revision
            buffer += record
            size += len(record)
            taken += 1
        self.size = size
        self._max_revision = highest
        if len(buffer) >= FLUSH_BYTES:
            self._flush()
        return taken

    def _flush(self) -> None:
        assert self._fd is not None
        self._io.write(self._fd, bytes(self._buffer))
        self._buffer.clear()

    def finish(self) -> tuple[Segment, int]:
        """Make the output durable under its final names; return it open for reading and the
        size of its hint file."""
        io = self._io
        assert self._fd is not None
        self._flush()
        io.fsync(self._fd)
        io.close(self._fd)
        self._fd = None
        order = sorted(range(len(self.keys)), key=self.keys.__getitem__)
        hint = encode_hint(
            HintColumns(
                segment_id=self.segment_id,
                max_revision=self._max_revision,
                created_ms=int(time.time() * 1000),
                keys=[self.keys[i] for i in order],
                locations=[self.new_locations[i] for i in order],
                expiries=self.expiries,
            )
        )
        del order
        hint_temp = self._directory / (hint_name(self.segment_id) + TEMP_SUFFIX)
        hint_fd = io.open(str(hint_temp), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        try:
            io.write(hint_fd, hint)
            io.fsync(hint_fd)
        finally:
            io.close(hint_fd)
        path = self._directory / segment_name(self.segment_id)
        io.rename(str(self._temp), str(path))
        io.rename(str(hint_temp), str(self._directory / hint_name(self.segment_id)))
        io.fsync_dir(str(self._directory))
        fd = io.open(str(path), os.O_RDONLY)
        return Segment(self.segment_id, path, fd, self.size, self.header, True), len(hint)

    def discard(self) -> None:
        """Remove whatever this output left on disk (OSError if that fails)."""
        io = self._io
        if self._fd is not None:
            with contextlib.suppress(OSError):
                io.close(self._fd)
            self._fd = None
        for name in (segment_name(self.segment_id), hint_name(self.segment_id)):
            for path in (self._directory / name, self._directory / (name + TEMP_SUFFIX)):
                if path.exists():
                    io.unlink(str(path))
        io.fsync_dir(str(self._directory))
