"""Opening a data directory: reading its segments back into the indexes.

Segments are read in id order, each record in file order, last write wins. A merged segment with
a good hint file is bulk-loaded from it; any other segment is replayed record by record. Only the
newest segment may end in a torn record (it is the only one ever appended to): that tail is cut
and kept in ``.broken``. Everything else that does not check out is ``CorruptStore``.

Segments of format version 1 (an older filekv) are read as they are; the next write always goes
to a new version 2 segment, and compaction rewrites them as version 2. ``should_stop`` (asked
between segments and every few thousand records) lets a server that is told to stop during a
long recovery exit at once; recovery changes nothing on disk until it has read everything.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import CorruptStore, RecoveryInterrupted
from .record import (
    FORMAT_VERSION,
    LENGTH_MASK,
    LENGTH_SHIFT,
    PUT,
    PUT_VALUE_OFFSET,
    SEGMENT_HEADER_SIZE,
    SEGMENT_HEADER_SIZE_V1,
    FormatError,
    decode_hint,
    decode_segment_header,
    iter_operations,
    pack,
    value_hash,
)
from .segment import (
    HINT_SUFFIX,
    SEGMENT_SUFFIX,
    TEMP_SUFFIX,
    Segment,
    StopCheck,
    cut_tail,
    hint_name,
    list_segment_ids,
    scan_segment,
    segment_name,
)

if TYPE_CHECKING:
    from .store import Store

log = logging.getLogger(__name__)

# Bytes a live single-put record costs on disk beyond its key and value: the live-bytes estimate.
ENTRY_OVERHEAD = PUT_VALUE_OFFSET


def recover(store: Store, should_stop: StopCheck | None = None) -> None:
    """Read the directory's segments into ``store``'s indexes; cut a torn tail; set up writing."""
    directory = store._path
    for name in os.listdir(directory):
        stem, _, suffix = name.partition(".")
        # Only our own unfinished compaction outputs (NNNNNNNNNN.seg.tmp, .hint.tmp): other
        # programs' temporary files in the directory are theirs to clean up.
        if stem.isdigit() and "." + suffix in (
            SEGMENT_SUFFIX + TEMP_SUFFIX,
            HINT_SUFFIX + TEMP_SUFFIX,
        ):
            store._io.unlink(str(directory / name))
    ids = list_segment_ids(directory)
    for name in os.listdir(directory):
        stem, _, suffix = name.partition(".")
        if "." + suffix == HINT_SUFFIX and stem.isdigit() and int(stem) not in ids:
            store._io.unlink(str(directory / name))  # orphan of a deleted segment
    last = ids[-1] if ids else None
    for segment_id in ids:
        if should_stop is not None and should_stop():
            raise RecoveryInterrupted("asked to stop while opening the store")
        _load_segment(store, segment_id, is_last=segment_id == last, should_stop=should_stop)
    store._next_id = (last or 0) + 1
    newest = store._segments.get(last) if last is not None else None
    if (
        newest is not None
        and not newest.merged
        and newest.header.version == FORMAT_VERSION
        and newest.size < store._segment_bytes
    ):
        store._active = newest
    else:
        store._start_new_segment()
    merged = [s for s in store._segments.values() if s.merged]
    if merged:
        store._last_compaction = max(os.stat(s.path).st_mtime for s in merged)


def _load_segment(
    store: Store, segment_id: int, *, is_last: bool, should_stop: StopCheck | None
) -> None:
    path = store._path / segment_name(segment_id)
    if is_last and _is_unborn(path):
        # Crash while the segment was being created: its header never reached the disk,
        # and no record can have been written after it.
        _discard_unborn_segment(store, path)
        return
    flags = os.O_RDWR | os.O_APPEND if is_last else os.O_RDONLY
    fd = store._io.open(str(path), flags)
    try:
        header_bytes = store._io.pread(fd, SEGMENT_HEADER_SIZE, 0)
        try:
            header = decode_segment_header(header_bytes)
        except FormatError as error:
            raise CorruptStore(str(path), 0, str(error)) from error
        segment = Segment(segment_id, path, fd, header.size, header, header.merged)
        store._revision = max(store._revision, header.base_revision)
        if not (segment.merged and _load_hint(store, segment)):
            _replay(store, segment, is_last=is_last, should_stop=should_stop)
    except BaseException:
        store._io.close(fd)
        raise
    store._segments[segment_id] = segment


def _is_unborn(path: Path) -> bool:
    """A newest segment too short to hold its header (a version 1 header is shorter)."""
    size = os.path.getsize(path)
    if size >= SEGMENT_HEADER_SIZE:
        return False
    if size < SEGMENT_HEADER_SIZE_V1:
        return True
    try:
        return decode_segment_header(path.read_bytes()).version != 1
    except FormatError:
        return True


def _discard_unborn_segment(store: Store, path: Path) -> None:
    fd = store._io.open(str(path), os.O_RDWR)
    try:
        data = store._io.read_file(str(path))
        if data:
            cut_tail(store._io, path, fd, data, 0)
    finally:
        store._io.close(fd)
    store._io.unlink(str(path))
    store._io.fsync_dir(str(store._path))
    store._recovered_truncations += 1
    log.warning("%s: removed a segment whose creation a crash interrupted", path)


def _load_hint(store: Store, segment: Segment) -> bool:
    """Load a merged segment's hint file; False if there is none or it is damaged."""
    hint_path = store._path / hint_name(segment.segment_id)
    if not hint_path.exists():
        return False
    try:
        data = store._io.read_file(str(hint_path))
        hint = decode_hint(data)
        if hint.segment_id != segment.segment_id:
            raise FormatError("hint file names another segment")
    except (FormatError, OSError) as error:
        log.warning("%s ignored (%s); replaying the segment instead", hint_path, error)
        return False
    segment.size = os.path.getsize(segment.path)
    count = len(hint.keys)
    if not store._index.locations:
        store._index.bulk_load(hint)
        store._live_bytes += ENTRY_OVERHEAD * count + hint.key_bytes + hint.value_bytes
    else:  # earlier segments survived a crash mid-compaction: merge entry by entry
        for key, location in zip(hint.keys, hint.locations, strict=True):
            length = (location >> LENGTH_SHIFT) & LENGTH_MASK
            store._account_set(len(key.encode()), length, store._index.set(key, location))
    store._revision = max(store._revision, hint.max_revision)
    store._hint_bytes[segment.segment_id] = len(data)
    return True


def _replay(
    store: Store, segment: Segment, *, is_last: bool, should_stop: StopCheck | None
) -> None:
    scanned = scan_segment(
        store._io, segment.path, may_have_torn_tail=is_last, should_stop=should_stop
    )
    data = scanned.data
    index = store._index
    segment_id = segment.segment_id
    version = scanned.header.version
    for offset, revision in scanned.records:
        for op in iter_operations(data, offset, version):
            key = op.key.decode("utf-8")
            if op.kind == PUT:
                start = op.value_offset
                length = op.value_length
                hashed = value_hash(data[start : start + length])
                location = pack(segment_id, start, length, revision, hashed)
                store._account_set(len(op.key), length, index.set(key, location))
            else:
                store._account_remove(len(op.key), index.remove(key))
        store._revision = max(store._revision, revision)
    segment.size = scanned.good_end
    if scanned.good_end < len(data):
        cut_tail(store._io, segment.path, segment.fd, data, scanned.good_end)
        store._recovered_truncations += 1
