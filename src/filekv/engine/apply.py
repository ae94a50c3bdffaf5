"""Applying a multi-operation record (a batch or a commit) to the in-memory state, once written.

Apart from ``writer.py`` so that each stays small enough to read at one sitting: the Writer
appends the record, then ``apply_record`` points the index, the segment's summary and the change
feed at what it holds. Owns no state.
"""

from __future__ import annotations

from .changes import CHANGE_COST, ChangeFeed
from .hint import LENGTH_SHIFT, OFFSET_SHIFT, REVISION_SHIFT, SEGMENT_SHIFT
from .history import RawChange
from .index import KeyIndex
from .record import (
    EXPIRY,
    OPERATION_HEADER,
    PUT,
    PUT_TTL,
    RECORD_HEADER_SIZE,
    Operation,
    value_hash,
)
from .segment import Segment
from .segments import SegmentSet


def value_hashes(operations: list[Operation]) -> list[int]:
    # A PUT_TTL's payload ends with its expiry, which is no part of the value.
    return [
        value_hash(value)
        if kind == PUT
        else value_hash(value[: -EXPIRY.size])
        if kind == PUT_TTL
        else 0
        for kind, _, value in operations
    ]


def apply_record(
    index: KeyIndex,
    segments: SegmentSet,
    feed: ChangeFeed,
    operations: list[Operation],
    keys: list[str],
    hashes: list[int],
    active: Segment,
    offset: int,
    revision: int,
) -> None:
    """Point the index (and the segment's summary) at a multi-operation record just written
    at ``offset`` in ``active``. Under the lock.

    ``keys`` and ``hashes`` go with ``operations`` (hashes of deletes unused): computed
    before the lock was taken, so readers wait for as little as possible.
    """
    position = offset + RECORD_HEADER_SIZE
    set_location, remove_key = index.set, index.remove
    summary = active.summary
    assert summary is not None  # the active segment always has one
    final = summary.final
    op_header = OPERATION_HEADER.size
    # ``pack`` inlined (one Python call less per operation, a tenth of a batch's cost).
    fixed = active.segment_id << SEGMENT_SHIFT | revision << REVISION_SHIFT
    written = written_bytes = 0  # for the live-bytes estimate, added up once per record
    replaced: list[tuple[int, int]] = []
    expiries = summary.expiries
    changes: list[RawChange] = []
    change = changes.append
    change_bytes = CHANGE_COST * len(operations)  # as ChangeFeed.publish counts each change
    for (kind, encoded, value), key, hashed in zip(operations, keys, hashes, strict=True):
        key_bytes = len(encoded)
        position += op_header + key_bytes
        if kind in (PUT, PUT_TTL):
            length = len(value)
            expires_at = None
            if kind == PUT_TTL:  # the payload ends with the expiry
                length -= EXPIRY.size
                (expires_at,) = EXPIRY.unpack_from(value, length)
            location = fixed | position << OFFSET_SHIFT | length << LENGTH_SHIFT | hashed
            previous = set_location(key, location)
            final[key] = location
            if expires_at is not None or index.expiries:
                index.set_expiry(key, expires_at)
                note_expiry(expiries, key, expires_at)
            elif expiries:
                expiries.pop(key, None)
            written += 1
            written_bytes += key_bytes + length
            position += len(value)
            if expires_at is not None:
                value = value[:length]  # the payload without its expiry
            change((revision, "put", key, value, expires_at))
            change_bytes += len(key) + length
        else:
            previous = remove_key(key)
            final[key] = None
            if expiries:
                expiries.pop(key, None)
            change((revision, "delete", key, None, None))
            change_bytes += len(key)
        if previous is not None:
            replaced.append((key_bytes, previous))
    feed.publish_many(changes, change_bytes)
    segments.account_record(written, written_bytes, replaced)
    summary.max_revision = revision


def note_expiry(expiries: dict[str, float], key: str, expires_at: float | None) -> None:
    """Keep a segment summary's expiries in step with its last put of ``key``."""
    if expires_at is None:
        expiries.pop(key, None)
    else:
        expiries[key] = expires_at
