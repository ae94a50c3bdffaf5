"""Opening a data directory: locking it and reading its segments back into the indexes.

Segments are read in id order, each record in file order, last write wins. A sealed segment
(merged, or plain with a per-segment hint from ``segment_hints.py``) with a good hint file is
loaded from it; the newest plain segment, and any without a good hint, is replayed record by
record (and a replayed sealed segment gets its hint written in the background). Only the
newest segment may end in a torn record (it is the only one ever appended to): that tail is cut
and kept in ``.broken``. Everything else that does not check out is ``CorruptStore``.

Segments of format version 1 (an older filekv) are read as they are; the next write always goes
to a new version 2 segment, and compaction rewrites them as version 2. ``should_stop`` (asked
between segments and every few thousand records) lets a server that is told to stop during a
long recovery exit at once; recovery changes nothing on disk until it has read everything.

Owns nothing once it returns: it fills the ``SegmentSet`` (segments, live bytes, truncations,
the active segment) and the ``KeyIndex`` it is handed, and reports the revision it found.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path

from .errors import CorruptStore, RecoveryInterrupted, StorageError
from .fileio import FileIO
from .hint import HintColumns, decode_hint, pack
from .hint_fold import HintFold, apply_hint
from .index import KeyIndex
from .record import (
    FORMAT_VERSION,
    PUT,
    SEGMENT_HEADER_SIZE,
    SEGMENT_HEADER_SIZE_V1,
    FormatError,
    decode_segment_header,
    iter_operations,
    value_hash,
)
from .segment import (
    HINT_SUFFIX,
    SEGMENT_SUFFIX,
    TEMP_SUFFIX,
    Segment,
    SegmentSummary,
    StopCheck,
    cut_tail,
    hint_name,
    id_of,
    list_segment_ids,
    scan_segment,
    segment_name,
)
from .segments import SegmentSet

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Recovered:
    """What recovery found beyond the segments and the index it filled."""

    revision: int  # the highest revision in the directory
    last_compaction: float | None  # mtime of the newest merged segment, if any


def open_directory(
    segments: SegmentSet, index: KeyIndex, should_stop: StopCheck | None = None
) -> Recovered:
    """Create the directory if needed, lock it and ``recover`` it; StorageError on an OSError.

    On any failure every file opened so far is closed again and the lock released.
    """
    directory = segments.directory
    try:
        # 0700, as etcd's: the files hold every value, for this account only.
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        segments.lock_directory()
    except OSError as error:
        raise StorageError(
            f"cannot open data directory {directory}: {error.strerror or error}"
        ) from error
    # Loading an index allocates millions of objects and no reference cycles; the cyclic
    # garbage collector would rescan them all again and again (measured: half the time).
    collecting = gc.isenabled()
    gc.disable()
    try:
        recovered = recover(segments, index, should_stop)
    except OSError as error:
        segments.release()
        raise StorageError(
            f"cannot recover data directory {directory}: {error.strerror or error}"
        ) from error
    except BaseException:
        segments.release()
        raise
    finally:
        if collecting:
            gc.enable()
    return_freed_heap()
    return recovered


def recover(
    segments: SegmentSet, index: KeyIndex, should_stop: StopCheck | None = None
) -> Recovered:
    """Read the directory's segments into ``segments`` and ``index``; cut a torn tail; set up
    the active segment for writing."""
    directory = segments.directory
    io = segments.io
    for name in os.listdir(directory):
        # Only our own unfinished compaction outputs (NNNNNNNNNN.seg.tmp, .hint.tmp): other
        # programs' temporary files in the directory are theirs to clean up.
        if any(id_of(name, end + TEMP_SUFFIX) is not None for end in (SEGMENT_SUFFIX, HINT_SUFFIX)):
            io.unlink(str(directory / name))
    ids = list_segment_ids(directory)
    for name in os.listdir(directory):
        hinted = id_of(name, HINT_SUFFIX)
        if hinted is not None and hinted not in ids:
            io.unlink(str(directory / name))  # orphan of a deleted segment
    last = ids[-1] if ids else None
    revision = 0
    unhinted: list[int] = []
    folded = HintFold()
    covered = 0
    for segment_id in ids:
        if should_stop is not None and should_stop():
            raise RecoveryInterrupted("asked to stop while opening the store")
        found, hinted, covered = _load_segment(
            segments,
            index,
            folded,
            segment_id,
            is_last=segment_id == last,
            should_stop=should_stop,
        )
        revision = max(revision, found)
        if not hinted:
            unhinted.append(segment_id)
    folded.load_into(segments, index)
    segments.set_next_id((last or 0) + 1)
    newest = segments.get(last) if last is not None else None
    if (
        newest is not None
        and not newest.merged
        and newest.header.version == FORMAT_VERSION
        and newest.size < segments.segment_bytes
    ):
        segments.resume(newest, covered)  # (the newest segment's, from the loop's last turn)
    else:
        segments.start_new_segment(revision)
    # Plain sealed segments that had to be replayed get their hint now, in the background.
    active = segments.active
    for segment_id in unhinted:
        segment = segments.get(segment_id)
        if segment is not None and segment is not active and segment.header.version >= 2:
            segments.schedule_hint(segment)
    merged = [s for s in segments.all() if s.merged]
    last_compaction = max(os.stat(s.path).st_mtime for s in merged) if merged else None
    return Recovered(revision, last_compaction)


def _load_segment(
    segments: SegmentSet,
    index: KeyIndex,
    folded: HintFold,
    segment_id: int,
    *,
    is_last: bool,
    should_stop: StopCheck | None,
) -> tuple[int, bool, int]:
    """Load one segment: (the highest revision it holds, 0 if it was discarded; whether it was
    loaded from a hint file, whole; how many of its bytes that hint covers, 0 if none). Only
    the newest segment is always replayed, from where its hint ends if it has one."""
    io = segments.io
    path = segments.directory / segment_name(segment_id)
    if is_last and _is_unborn(path):
        # Crash while the segment was being created: its header never reached the disk,
        # and no record can have been written after it.
        _discard_unborn_segment(segments, path)
        return 0, True, 0
    flags = os.O_RDWR | os.O_APPEND if is_last else os.O_RDONLY
    fd = io.open(str(path), flags)
    hint_bytes: int | None = None
    try:
        header_bytes = io.pread(fd, SEGMENT_HEADER_SIZE, 0)
        try:
            header = decode_segment_header(header_bytes)
        except FormatError as error:
            raise CorruptStore(str(path), 0, str(error)) from error
        segment = Segment(segment_id, path, fd, header.size, header, header.merged)
        revision = header.base_revision
        # A plain segment's hint may sum up only its first bytes: the newest segment's, written
        # while it was active (``ActivePrefix``) or at a clean close before more was appended;
        # the rest is replayed after it. It is used only if a record starts where it ends.
        loaded = _read_hint(segments, segment, expected=not is_last or segment.merged)
        covered = segment.size
        if loaded is not None and not segment.merged:
            covered = loaded[0].segment_length
            if covered < segment.size and not _record_starts(io, segment, covered):
                log.warning("%s: its hint ends inside a record; replaying it whole", path)
                loaded, covered = None, segment.size
        if loaded is not None:
            hint, hint_bytes = loaded
            revision = max(revision, hint.max_revision)
            if not segment.merged and (is_last or covered < segment.size):
                # appended to next, or replayed from ``covered`` on: its summary, from the hint
                final: dict[str, int | None] = dict(zip(hint.keys, hint.locations, strict=True))
                final.update(zip(hint.deleted, repeat(None)))
                segment.summary = SegmentSummary(final, hint.max_revision, dict(hint.expiries))
            if not index.is_pristine():  # a replayed segment came first: entry by entry
                apply_hint(segments, index, hint)
            else:
                folded.add(hint)
            if covered < segment.size and not is_last:
                hint_bytes = None  # a sealed segment: to get its whole hint, from memory
        if loaded is None or covered < segment.size:
            folded.load_into(segments, index)  # what came before this part, first
            start = covered if loaded is not None else 0
            found = _replay(
                segments, index, segment, is_last=is_last, should_stop=should_stop, start=start
            )
            revision = max(revision, found)
    except BaseException:
        io.close(fd)
        raise
    segments.add(segment, hint_bytes=hint_bytes)
    return revision, hint_bytes is not None, covered if loaded is not None else 0


def _record_starts(io: FileIO, segment: Segment, offset: int) -> bool:
    """Whether a record of ``segment`` may start at ``offset``: the segment's marker is there
    (any damage after it is found by the replay, as a torn tail or not)."""
    marker = segment.header.marker
    return segment.header.version >= 2 and io.pread(segment.fd, len(marker), offset) == marker


def _is_unborn(path: Path) -> bool:
    """A newest segment too short to hold its header (a version 1 header is shorter), or all
    zeros: its length reached the disk but not its header (a file system may zero-fill what a
    crash left unwritten). Records are appended only once the header is durable, so no write
    can have been acknowledged in either; anything else that does not decode is CorruptStore."""
    size = os.path.getsize(path)
    if size >= SEGMENT_HEADER_SIZE:
        with path.open("rb") as handle:
            if handle.read(SEGMENT_HEADER_SIZE).strip(b"\0"):
                return False
        return not path.read_bytes().strip(b"\0")
    if size < SEGMENT_HEADER_SIZE_V1:
        return True
    try:
        return decode_segment_header(path.read_bytes()).version != 1
    except FormatError:
        return True


def _discard_unborn_segment(segments: SegmentSet, path: Path) -> None:
    io = segments.io
    fd = io.open(str(path), os.O_RDWR)
    try:
        data = io.read_file(str(path))
        if data:
            cut_tail(io, path, fd, data, 0)
    finally:
        io.close(fd)
    io.unlink(str(path))
    io.fsync_dir(str(segments.directory))
    segments.note_truncation()
    log.warning("%s: removed a segment whose creation a crash interrupted", path)


def _read_hint(
    segments: SegmentSet, segment: Segment, *, expected: bool = True
) -> tuple[HintColumns, int] | None:
    """A segment's hint file and its size, or None if there is none, it is damaged, or it sums
    up more than the segment holds (a plain one: its hint may cover a first part only). A hint
    that is not ``expected`` (the newest segment's) is passed over quietly."""
    hint_path = segments.directory / hint_name(segment.segment_id)
    if not hint_path.exists():
        return None
    try:
        data = segments.io.read_file(str(hint_path))
        hint = decode_hint(data)
        if hint.segment_id != segment.segment_id:
            raise FormatError("hint file names another segment")
        if not segment.merged and not (
            segment.header.size <= hint.segment_length <= os.path.getsize(segment.path)
        ):
            raise FormatError("hint file sums up another length of the segment")
    except (FormatError, OSError) as error:
        log.log(
            logging.WARNING if expected else logging.DEBUG,
            "%s ignored (%s); replaying the segment instead",
            hint_path,
            error,
        )
        return None
    segment.size = os.path.getsize(segment.path)
    return hint, len(data)


def _replay(
    segments: SegmentSet,
    index: KeyIndex,
    segment: Segment,
    *,
    is_last: bool,
    should_stop: StopCheck | None,
    start: int = 0,
) -> int:
    """Replay a segment record by record (from ``start`` on, if not 0: a hint loaded the rest,
    and ``segment.summary`` holds its summary); return the highest revision in it.

    The newest segment also gets its ``SegmentSummary`` back (it is appended to next, or sealed
    at once), so its hint can be written without reading it again.
    """
    scanned = scan_segment(
        segments.io,
        segment.path,
        may_have_torn_tail=is_last,
        should_stop=should_stop,
        start=start,
    )
    data = scanned.data
    segment_id = segment.segment_id
    version = scanned.header.version
    account_set = segments.account_set
    account_remove = segments.account_remove
    seed = segment.summary if start else None
    # Each key's last operation here, for the summary; and of those puts, the ones that expire.
    final: dict[str, int | None] = seed.final if seed is not None else {}
    expiries: dict[str, float] = seed.expiries if seed is not None else {}
    highest = seed.max_revision if seed is not None else 0
    for offset, revision in scanned.records:
        for op in iter_operations(data, offset, version):
            try:
                key = op.key.decode("utf-8")
            except UnicodeDecodeError:  # only a record crafted with good checksums holds one
                raise CorruptStore(str(segment.path), offset, "a key is not UTF-8") from None
            if op.kind == PUT:
                start = op.value_offset
                length = op.value_length
                hashed = value_hash(data[start : start + length])
                location = pack(segment_id, start, length, revision, hashed)
                account_set(len(op.key), length, index.set(key, location))
                final[key] = location
                expires_at = op.expires_at
                if expires_at is not None or index.expiries:
                    index.set_expiry(key, expires_at)
                if expires_at is not None:
                    expiries[key] = expires_at
                    continue
            else:
                account_remove(len(op.key), index.remove(key))
                final[key] = None
            if expiries:
                expiries.pop(key, None)
        highest = max(highest, revision)
    segment.size = scanned.good_end
    if (is_last or seed is not None) and not segment.merged:
        highest = max(highest, scanned.header.base_revision)
        segment.summary = SegmentSummary(final, highest, expiries)
    if scanned.good_end < len(data):
        cut_tail(segments.io, segment.path, segment.fd, data, scanned.good_end)
        segments.note_truncation()
    return highest


def return_freed_heap() -> None:
    """Hand back to the OS the heap pages that loading the index used for temporaries.

    Loading a hint file frees large temporaries (the decoded key block, column arrays) inside
    the C heap; glibc keeps those pages, which showed as 20 % more RSS per key than a store
    built by writes. ``malloc_trim`` returns them. Elsewhere (no glibc) this does nothing.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    # Looked up once per process: ``find_library`` runs ``ldconfig -p`` in a subprocess, which
    # cost 3.4 ms of every open (a third of opening a small store).
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None
