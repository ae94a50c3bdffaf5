"""Segment files: creating them, appending to them, and reading them back on open.

A segment is ``NNNNNNNNNN.seg``: a 40-byte header, then records appended one after another.
Only the newest segment is ever appended to, so only it can end in a torn record after a crash;
damage anywhere else is corruption and is reported, never skipped. Files are created 0600: the
values are the users' data, no other local account's.

Owns one file at a time: a ``Segment`` (its descriptor and write position) is held, once open, by
the ``SegmentSet`` (``segments.py``); these functions create, scan and cut segment files.
"""

from __future__ import annotations

import contextlib
import logging
import os
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from .errors import CorruptStore, RecoveryInterrupted
from .fileio import FileIO
from .record import (
    MARKER_BYTES,
    FormatError,
    SegmentHeader,
    decode_segment_header,
    encode_segment_header,
    record_at,
    record_at_v1,
)

log = logging.getLogger(__name__)

SEGMENT_SUFFIX = ".seg"
HINT_SUFFIX = ".hint"
BROKEN_SUFFIX = ".broken"
TEMP_SUFFIX = ".tmp"
STOP_CHECK_EVERY: Final = 4096  # records replayed between two looks at should_stop

StopCheck = Callable[[], bool]


def new_marker() -> bytes:
    """A segment's record marker: random, so no client can put one inside a value."""
    return os.urandom(MARKER_BYTES)


def segment_name(segment_id: int) -> str:
    return f"{segment_id:010d}{SEGMENT_SUFFIX}"


def hint_name(segment_id: int) -> str:
    return f"{segment_id:010d}{HINT_SUFFIX}"


def id_of(name: str, suffix: str) -> int | None:
    """The segment id in ``name`` if it is exactly ``segment_name(id)`` with ``suffix`` (ten
    ASCII digits, no more leading zeros), else None: any other file is not ours. ``isdigit``
    alone took "1.seg" (loaded twice beside 0000000001.seg), "12.seg" (a segment that is not
    there: the open failed) and "².seg" (``int`` refused it: ValueError)."""
    stem = name.removesuffix(suffix)
    if stem == name or not (stem.isascii() and stem.isdigit()):
        return None
    segment_id = int(stem)
    return segment_id if f"{segment_id:010d}" == stem else None


def list_segment_ids(directory: Path) -> list[int]:
    ids = [id_of(name, SEGMENT_SUFFIX) for name in os.listdir(directory)]
    return sorted(segment_id for segment_id in ids if segment_id is not None)


@dataclass(slots=True)
class SegmentSummary:
    """Each key's last operation in one plain segment, noted as the segment is written.

    ``final`` maps a key to its location, or to None when the segment's last operation on it is
    a delete; ``max_revision`` is the newest record's revision. Once the segment is sealed this
    *is* its hint file's content, so the hint is written without reading 64 MiB back and
    parsing every record (measured: that parse took a fifth of the CPU under sustained batch
    writes). Filled under the store lock while the segment is active; never changed after.
    """

    final: dict[str, int | None] = field(default_factory=dict)
    max_revision: int = 0
    # The keys of ``final`` whose last put here expires, and when (UNIX seconds); most stores
    # have none, so this stays empty and costs nothing.
    expiries: dict[str, float] = field(default_factory=dict)


@dataclass(slots=True)
class Segment:
    """One open segment file. ``size`` is the write position (end of the last good record).

    ``summary`` is kept for the active segment and, once sealed, until its hint is written;
    None when unknown (a segment read back from disk) or no longer needed.
    """

    segment_id: int
    path: Path
    fd: int
    size: int
    header: SegmentHeader
    merged: bool = field(default=False)
    summary: SegmentSummary | None = field(default=None)


def create_segment(
    io: FileIO, directory: Path, segment_id: int, base_revision: int, *, flags: int = 0
) -> Segment:
    """Create a segment durably: header written and fsynced, directory entry fsynced."""
    path = directory / segment_name(segment_id)
    header = SegmentHeader(segment_id, base_revision, flags, new_marker())
    fd = io.open(str(path), os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND)
    try:
        io.write(fd, encode_segment_header(header))
        io.fsync(fd)
        io.fsync_dir(str(directory))
    except BaseException:
        io.close(fd)
        # A half-made file must not stay: it would become the newest segment at the next open.
        with contextlib.suppress(OSError):
            io.unlink(str(path))
        raise
    summary = None if header.merged else SegmentSummary(max_revision=base_revision)
    return Segment(segment_id, path, fd, header.size, header, header.merged, summary)


@dataclass(slots=True)
class ScannedSegment:
    """What reading a segment file found: its header, its bytes, and where good records end."""

    header: SegmentHeader
    data: bytes
    good_end: int  # end of the last good record
    records: list[tuple[int, int]]  # (record offset, revision) of each good record


def scan_segment(
    io: FileIO,
    path: Path,
    *,
    may_have_torn_tail: bool,
    should_stop: StopCheck | None = None,
    start: int = 0,
) -> ScannedSegment:
    """Read and check every record of a segment (from ``start``, a record's offset, if not 0:
    a hint sums up what comes before), in time linear in its size.

    A damaged record followed by nothing that parses is a torn tail (allowed only in the newest
    segment); a damaged record followed by a good one is corruption, whichever segment it is in,
    unless the damage is a write-back hole at the end of the newest segment (see below).
    ``should_stop`` is asked every few thousand records: when it says yes, RecoveryInterrupted.
    """
    data = io.read_file(str(path))
    try:
        header = decode_segment_header(data)
    except FormatError as error:
        raise CorruptStore(str(path), 0, str(error)) from error
    records: list[tuple[int, int]] = []
    offset = max(start, header.size)
    size = len(data)
    marker = header.marker
    marker_crc = zlib.crc32(marker)
    version_2 = header.version >= 2
    countdown = STOP_CHECK_EVERY
    while offset < size:
        if version_2:
            found = record_at(data, offset, marker, marker_crc)
        else:
            found = record_at_v1(data, offset)
        if found is None:
            break
        records.append((offset, found[0]))
        offset = found[1]
        countdown -= 1
        if not countdown:
            countdown = STOP_CHECK_EVERY
            if should_stop is not None and should_stop():
                raise RecoveryInterrupted(f"asked to stop while reading {path.name}")
    if offset < size:
        if version_2:
            resumes_at = _next_good_record(data, offset, marker)
        else:
            resumes_at = _next_good_record_v1(data, offset, should_stop)
        if resumes_at is not None and not (
            may_have_torn_tail and _is_write_back_hole(data, offset, resumes_at)
        ):
            raise CorruptStore(
                str(path), offset, f"damaged record followed by a good one at offset {resumes_at}"
            )
        if not may_have_torn_tail:
            raise CorruptStore(str(path), offset, "damaged record at the end of a sealed segment")
    return ScannedSegment(header, data, offset, records)


PAGE: Final = 4096
_ZERO_PAGE: Final = bytes(PAGE)


def _is_write_back_hole(data: bytes, start: int, end: int) -> bool:
    """Whether the damage in ``data[start:end]`` is a hole left by out-of-order write-back.

    After a power cut, pages written later may have reached the disk while earlier ones did
    not, which reads back as zeros. fsync makes the whole file durable, so nothing after such a
    hole was ever acknowledged as durable: it is a torn tail, not corruption in the middle.
    A hole is a stretch that is all zeros, or that holds a whole page-aligned page of zeros.
    """
    if not data[start:end].strip(b"\0"):
        return True
    first_page = -(-start // PAGE) * PAGE
    return any(
        data[page : page + PAGE] == _ZERO_PAGE for page in range(first_page, end - PAGE + 1, PAGE)
    )


def _next_good_record(data: bytes, damaged_at: int, marker: bytes) -> int | None:
    """The offset of any good record after ``damaged_at``, or None if the rest is all damage.

    Linear in the tail: ``bytes.find`` walks to each copy of the marker (only record starts hold
    it); a header is checked in O(1), and only a header that checks out, whose length can then be
    trusted, has its body hashed. Such records never overlap, so no byte is hashed twice.
    """
    view = memoryview(data)
    marker_crc = zlib.crc32(marker)
    position = data.find(marker, damaged_at + 1)
    while position != -1:
        # record_at checks the header first and hashes the body only if it checks out.
        if record_at(view, position, marker, marker_crc) is not None:
            return position
        position = data.find(marker, position + 1)
    return None


def _next_good_record_v1(data: bytes, damaged_at: int, should_stop: StopCheck | None) -> int | None:
    """``_next_good_record`` for a version 1 segment, which has no marker: every offset is tried.

    Only the newest segment of a store written by an older filekv can need this, once: the
    next write goes to a new version 2 segment. It can hash up to the end of the data at every
    offset (quadratic), which is why version 2 has a marker; ``should_stop`` is asked at every
    offset, since one offset alone can cost a checksum over the rest of the file.
    """
    view = memoryview(data)
    for offset in range(damaged_at + 1, len(data)):
        if record_at_v1(view, offset) is not None:
            return offset
        if should_stop is not None and should_stop():
            raise RecoveryInterrupted("asked to stop while looking past a damaged record")
    return None


def cut_tail(io: FileIO, path: Path, fd: int, data: bytes, good_end: int) -> None:
    """Keep the damaged tail's bytes in ``<segment>.broken`` and truncate the segment to its end."""
    broken = path.with_name(path.name + BROKEN_SUFFIX)
    number = 1
    while broken.exists():
        broken = path.with_name(f"{path.name}{BROKEN_SUFFIX}.{number}")
        number += 1
    broken_fd = io.open(str(broken), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        io.write(broken_fd, data[good_end:])
        io.fsync(broken_fd)
    finally:
        io.close(broken_fd)
    io.truncate(fd, good_end)
    io.fsync(fd)
    io.fsync_dir(str(path.parent))
    log.warning(
        "%s: cut a damaged tail of %d bytes at offset %d (kept in %s)",
        path,
        len(data) - good_end,
        good_end,
        broken.name,
    )
