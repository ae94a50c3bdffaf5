"""Reading the change history back from the segment files, for a watcher behind the buffer.

Every record carries its revision, and plain segments (the ones clients' writes are appended
to) hold every record in revision order: a plain segment covers the revisions after its header's
``base_revision`` up to the next plain segment's. Merged segments (compaction's outputs) hold
only copies of entries live when they were made, older than every plain segment's records, so
they are never read here. Compaction keeps the newest ``watch_history`` revisions in plain
segments (``compaction.py``), so the history starts at the oldest plain segment.

A ``HistoryReader`` is planned under the store lock (which segments, how far each is written,
its own descriptor on each) and then read without it, in windows, so a watcher catching up on
a 64 MiB segment neither holds the lock nor loads the file whole. Its own descriptors keep the
bytes readable even if compaction unlinks a segment meanwhile (POSIX keeps an unlinked file's
data while a descriptor is open on it).

Owns the descriptors it opened, until ``close``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from .errors import CorruptStore
from .record import (
    DELETE,
    EXPIRE,
    PUT,
    RECORD_HEADER,
    RECORD_HEADER_SIZE,
    RECORD_PREFIX_V1,
    SegmentHeader,
    iter_operations,
    record_at,
    record_at_v1,
)

if TYPE_CHECKING:
    from .fileio import FileIO
    from .segment import Segment

WINDOW: Final = 1 << 20  # bytes read from a segment at a time (one record may need more)
CHUNK_CHANGES: Final = 1024  # changes handed out per ``next_chunk`` (whole records: maybe more)

# What each kind of operation is called in the feed (a put with a TTL decodes as PUT).
OP_NAMES: Final = {PUT: "put", DELETE: "delete", EXPIRE: "expire"}

# (revision, op, key, value, expires_at): a change as the feed stores it, before it is a Change.
RawChange = tuple[int, str, str, bytes | None, float | None]


def plain_segments(segments: list[Segment]) -> list[Segment]:
    """The segments clients' writes went to, oldest first (``segments`` in id order)."""
    return [segment for segment in segments if not segment.merged]


def history_start(plain: list[Segment]) -> int | None:
    """The revision after which the files hold every change (None: no plain segment)."""
    return plain[0].header.base_revision if plain else None


@dataclass(slots=True)
class _File:
    path: str
    fd: int
    size: int  # how far it was written when planned: records past this are the buffer's
    header: SegmentHeader


class HistoryReader:
    """The changes after ``after`` up to ``upto`` (inclusive) read from segment files."""

    def __init__(self, io: FileIO, plain: list[Segment], *, after: int, upto: int) -> None:
        """Under the store lock: open a descriptor on each plain segment that may hold a
        revision in (after, upto]. ``plain`` is every plain segment, oldest first."""
        self._io = io
        self._after = after
        self.upto = upto
        self._files: list[_File] = []
        try:
            for index, segment in enumerate(plain):
                following = plain[index + 1] if index + 1 < len(plain) else None
                if following is not None and following.header.base_revision <= after:
                    continue  # every record in it is at or before ``after``
                if segment.header.base_revision >= upto:
                    break  # it and the later ones hold only revisions after ``upto``
                fd = io.open(str(segment.path), os.O_RDONLY)
                self._files.append(_File(str(segment.path), fd, segment.size, segment.header))
        except BaseException:
            self.close()
            raise
        self._offset = self._files[0].header.size if self._files else 0
        self._window = b""
        self._window_start = 0
        self.done = not self._files

    def close(self) -> None:
        for file in self._files:
            self._io.close(file.fd)
        self._files.clear()
        self.done = True

    def _read(self, file: _File, offset: int, size: int) -> bytes:
        """``size`` bytes at ``offset`` (fewer at the planned end), kept as the window."""
        size = max(size, WINDOW)
        size = min(size, file.size - offset)
        self._window = self._io.pread(file.fd, size, offset)
        self._window_start = offset
        return self._window

    def next_chunk(self) -> list[RawChange]:
        """The next changes, whole records at a time; [] once ``upto`` is reached (then done)."""
        out: list[RawChange] = []
        while self._files and len(out) < CHUNK_CHANGES:
            file = self._files[0]
            if self._offset >= file.size:
                self._io.close(file.fd)
                self._files.pop(0)
                self._window = b""  # the next file's bytes are not these
                self._window_start = 0
                if self._files:
                    self._offset = self._files[0].header.size
                continue
            found = self._record(file)
            offset, revision, end, data, version = found
            if revision > self.upto:  # the rest is the buffer's (revisions only grow here)
                self.close()
                break
            if revision > self._after:
                for op in iter_operations(data, offset, version):
                    name = OP_NAMES.get(op.kind, "put")
                    key = op.key.decode("utf-8", errors="replace")
                    if op.kind == PUT:
                        start = op.value_offset
                        value: bytes | None = bytes(data[start : start + op.value_length])
                    else:
                        value = None
                    out.append((revision, name, key, value, op.expires_at))
            self._offset = end + self._window_start
        if not self._files:
            self.done = True
        return out

    def _record(self, file: _File) -> tuple[int, int, int, bytes, int]:
        """The record at the current offset: (offset in data, revision, end in data, data,
        version), reading a new window if it is not whole in the current one."""
        version = file.header.version
        at = self._offset - self._window_start
        window = self._window
        needed = _record_length(window, at, version) if at >= 0 else None
        if needed is None or at + needed > len(window):
            # Past the window: read from the record on (a window, or the record if larger).
            window = self._read(file, self._offset, WINDOW)
            at = 0
            needed = _record_length(window, at, version)
            if needed is not None and needed > len(window):
                window = self._read(file, self._offset, needed)
            if needed is None or needed > len(window):
                raise CorruptStore(file.path, self._offset, "a record ends past the file")
        if version >= 2:
            found = record_at(window, at, file.header.marker)
        else:
            found = record_at_v1(window, at)
        if found is None:
            raise CorruptStore(file.path, self._offset, "damaged record in the change history")
        revision, end = found
        return at, revision, end, window, version


def _record_length(data: bytes, at: int, version: int) -> int | None:
    """The whole length of the record at ``at`` from its header, None if it is cut short."""
    if version >= 2:
        if at + RECORD_HEADER_SIZE > len(data):
            return None
        return RECORD_HEADER_SIZE + int(RECORD_HEADER.unpack_from(data, at)[2])
    if at + RECORD_PREFIX_V1.size > len(data):
        return None
    return RECORD_PREFIX_V1.size + int(RECORD_PREFIX_V1.unpack_from(data, at)[1])
