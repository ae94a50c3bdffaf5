"""The byte layout of segment files and records: encoding and decoding, no I/O.

All integers are little-endian. Locations (the packed integers the index holds) and hint files
are in ``hint.py``. docs/FORMAT.md describes the same layout in prose. Owns no state.

Segment header, version 3 (as version 2; 40 bytes, at offset 0 of every ``NNNNNNNNNN.seg``)::

    0        6        8               16              24       28              36       40
    +--------+--------+---------------+---------------+--------+---------------+--------+
    | "FKVSEG"| version| segment id    | base revision | flags  | record marker | crc32  |
    +--------+--------+---------------+---------------+--------+---------------+--------+

The record marker is 8 random bytes drawn when the segment is created. It starts every record
of the segment, so recovery looks for record boundaries only where it is, and a record's
header checksum covers it. A value cannot pass for a record: its
bytes would have to hold this marker, which no client ever sees (it is in no answer), so a
torn write of a value made of encoded records still reads back as a torn tail, and a search for
the next record after damage costs one ``bytes.find`` pass instead of a checksum at every byte.

Record, versions 2 and 3 (one put, one delete, one expiry, or one whole transaction)::

    0               8        12       16              24       28       32
    +---------------+--------+--------+---------------+--------+--------+---------------------+
    | record marker | hcrc   | length | revision      | count  | bcrc   | count x operation   |
    +---------------+--------+--------+---------------+--------+--------+---------------------+
     hcrc: crc32 of (marker, length, revision, count, bcrc)
     bcrc: crc32 of the ``length`` bytes of operations

    operation: | kind u8 | key length u16 | value length u32 | key | value |
     kind 1 put, 2 delete (value length 0); version 3 adds:
     kind 3 put with an expiry: the value is followed by ``expires_at`` (f64, UNIX seconds),
            and ``value length`` counts those 8 bytes too, so the layout is walked as for a put;
     kind 4 expire: a delete written by the TTL sweeper (value length 0), told apart for
            watchers.

Version 3 exists so that a filekv that knows only kinds 1 and 2 refuses such a store by its
segment version instead of calling its records damaged; version 3 reads versions 1 and 2 too.

The header checksum makes the length trustworthy before a byte of the body is hashed, so a
damaged length can never make recovery hash gigabytes. A record is the unit of atomicity: its
body checksum covers every operation in it, so a transaction written as one record is either
whole on disk or detected as damaged and dropped. ``MAX_BODY`` bounds it, at write and at read.

Version 1 (read, never written): a 32-byte header without the marker, and records of
``| crc32 | length | revision u64 | count u32 | operations |`` with one checksum over the rest.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Final

SEGMENT_MAGIC: Final = b"FKVSEG"
FORMAT_VERSION: Final = 3  # what this filekv writes
OLDEST_VERSION: Final = 1  # the oldest it still reads

SEGMENT_HEADER_V1: Final = struct.Struct("<6sHQQI")  # magic, version, id, base revision, flags
SEGMENT_HEADER: Final = struct.Struct("<6sHQQI8s")  # ... and the record marker
SEGMENT_HEADER_SIZE_V1: Final = SEGMENT_HEADER_V1.size + 4  # + crc32: 32
SEGMENT_HEADER_SIZE: Final = SEGMENT_HEADER.size + 4  # + crc32: 40
MARKER_BYTES: Final = 8
FLAG_MERGED: Final = 1  # written by compaction, not by clients

RECORD_HEADER: Final = struct.Struct("<8sIIQII")  # marker, hcrc, length, revision, count, bcrc
RECORD_HEADER_SIZE: Final = RECORD_HEADER.size  # 32
_CHECKED: Final = struct.Struct("<IQII")  # what hcrc covers after the marker
OPERATION_HEADER: Final = struct.Struct("<BHI")  # kind, key length, value length
MAX_BODY: Final = 1 << 30  # the largest body written or read back; a larger length is damage
MAX_OPERATIONS: Final = 1 << 24

# Version 1 records (read only).
RECORD_PREFIX_V1: Final = struct.Struct("<II")  # crc32, body length
RECORD_BODY_HEADER_V1: Final = struct.Struct("<QI")  # revision, operation count
RECORD_OVERHEAD_V1: Final = RECORD_PREFIX_V1.size + RECORD_BODY_HEADER_V1.size  # 20
MAX_BODY_V1: Final = 1 << 31

PUT: Final = 1
DELETE: Final = 2
PUT_TTL: Final = 3  # a put whose operation ends with its expiry (version 3)
EXPIRE: Final = 4  # a delete written because the key expired (version 3)
KINDS: Final = frozenset((PUT, DELETE, PUT_TTL, EXPIRE))
EXPIRY: Final = struct.Struct("<d")  # after a PUT_TTL's value: expires_at, UNIX seconds

Operation = tuple[int, bytes, bytes]  # (kind, key, value); value is b"" for a delete


@dataclass(frozen=True, slots=True)
class SegmentHeader:
    segment_id: int
    base_revision: int
    flags: int
    marker: bytes = bytes(MARKER_BYTES)  # version 2: starts every record
    version: int = FORMAT_VERSION

    @property
    def merged(self) -> bool:
        return bool(self.flags & FLAG_MERGED)

    @property
    def size(self) -> int:
        """Bytes the header takes at the start of the file: where the first record starts."""
        return SEGMENT_HEADER_SIZE if self.version >= 2 else SEGMENT_HEADER_SIZE_V1


class FormatError(ValueError):
    """Bytes that do not decode as the structure they should be."""


class RecordTooLarge(ValueError):
    """A record over ``MAX_BODY``: recovery would refuse it, so it is never written."""


def encode_segment_header(header: SegmentHeader) -> bytes:
    if header.version != FORMAT_VERSION or len(header.marker) != MARKER_BYTES:
        raise ValueError(f"only version {FORMAT_VERSION} headers with an 8-byte marker are written")
    head = SEGMENT_HEADER.pack(
        SEGMENT_MAGIC,
        FORMAT_VERSION,
        header.segment_id,
        header.base_revision,
        header.flags,
        header.marker,
    )
    return head + zlib.crc32(head).to_bytes(4, "little")


def decode_segment_header(data: bytes) -> SegmentHeader:
    """The header at the start of ``data``, version 1 or 2."""
    if len(data) < SEGMENT_HEADER_SIZE_V1:
        raise FormatError("segment header is incomplete")
    magic, version = struct.unpack_from("<6sH", data, 0)
    if magic != SEGMENT_MAGIC:
        raise FormatError("not a filekv segment (bad magic)")
    if not OLDEST_VERSION <= version <= FORMAT_VERSION:
        # Each version has its own header size, so its checksum cannot be checked first.
        raise FormatError(
            f"segment format version {version} (or a damaged header); this filekv reads "
            f"versions {OLDEST_VERSION} to {FORMAT_VERSION}"
        )
    layout = SEGMENT_HEADER if version >= 2 else SEGMENT_HEADER_V1
    if len(data) < layout.size + 4:
        raise FormatError("segment header is incomplete")
    if not _header_crc_ok(data, layout.size):
        raise FormatError("segment header checksum mismatch")
    if version >= 2:
        _, _, segment_id, base_revision, flags, marker = SEGMENT_HEADER.unpack_from(data, 0)
        return SegmentHeader(segment_id, base_revision, flags, marker, version)
    _, _, segment_id, base_revision, flags = SEGMENT_HEADER_V1.unpack_from(data, 0)
    return SegmentHeader(segment_id, base_revision, flags, bytes(MARKER_BYTES), 1)


def _header_crc_ok(data: bytes, size: int) -> bool:
    return int.from_bytes(data[size : size + 4], "little") == zlib.crc32(data[:size])


def encode_body(operations: Sequence[Operation]) -> bytes:
    """The operations of a record, without its header (no marker or offset needed yet)."""
    parts: list[bytes] = []
    add = parts.extend
    pack_header = OPERATION_HEADER.pack
    for kind, key, value in operations:
        add((pack_header(kind, len(key), len(value)), key, value))
    body = b"".join(parts)
    if len(body) > MAX_BODY:
        raise RecordTooLarge(f"a record body of {len(body)} bytes is over {MAX_BODY}")
    return body


def encode_header(marker: bytes, revision: int, count: int, body: bytes, body_crc: int) -> bytes:
    """The 32-byte header of a record of ``count`` operations, for a segment with ``marker``."""
    length = len(body)
    if length > MAX_BODY:
        raise RecordTooLarge(f"a record body of {length} bytes is over {MAX_BODY}")
    checked = _CHECKED.pack(length, revision, count, body_crc)  # header bytes 12-31
    header_crc = zlib.crc32(checked, zlib.crc32(marker))
    return RECORD_HEADER.pack(marker, header_crc, length, revision, count, body_crc)


def encode_record(marker: bytes, revision: int, operations: Sequence[Operation]) -> bytes:
    body = encode_body(operations)
    return encode_header(marker, revision, len(operations), body, zlib.crc32(body)) + body


def encode_put(marker: bytes, revision: int, key: bytes, value: bytes, kind: int = PUT) -> bytes:
    """The common single-put record, without the general path's list building (hot path)."""
    body = OPERATION_HEADER.pack(kind, len(key), len(value)) + key + value
    return encode_header(marker, revision, 1, body, zlib.crc32(body)) + body


def encode_put_ttl(
    marker: bytes, revision: int, key: bytes, value: bytes, expires_at: float
) -> bytes:
    """A single put of a value that expires at ``expires_at`` (UNIX seconds)."""
    return encode_put(marker, revision, key, value + EXPIRY.pack(expires_at), PUT_TTL)


def encode_expire(marker: bytes, revision: int, key: bytes) -> bytes:
    """The record of one expiry (the sweeper writes many at a time: no list building)."""
    body = OPERATION_HEADER.pack(EXPIRE, len(key), 0) + key
    return encode_header(marker, revision, 1, body, zlib.crc32(body)) + body


def put_payload(value: bytes, expires_at: float | None) -> tuple[int, bytes]:
    """(kind, what follows the key) of a put: the value, and for an expiring one its expiry."""
    if expires_at is None:
        return PUT, value
    return PUT_TTL, value + EXPIRY.pack(expires_at)


def put_record_size(key: bytes, value: bytes, expires_at: float | None = None) -> int:
    extra = 0 if expires_at is None else EXPIRY.size
    return RECORD_HEADER_SIZE + OPERATION_HEADER.size + len(key) + len(value) + extra


# Where a single-put record's value starts, past the record and operation headers (add the key).
PUT_VALUE_OFFSET: Final = RECORD_HEADER_SIZE + OPERATION_HEADER.size


@dataclass(frozen=True, slots=True)
class DecodedOperation:
    kind: int  # PUT_TTL comes out as PUT, with its expiry; EXPIRE stays apart from DELETE
    key: bytes
    value_offset: int  # absolute offset of the value in the file
    value_length: int  # the value's, without a PUT_TTL's expiry
    expires_at: float | None = None


def record_at(
    data: bytes | memoryview, offset: int, marker: bytes, marker_crc: int | None = None
) -> tuple[int, int] | None:
    """Check the version 2 record at ``offset``; (revision, end offset), or None if damaged.

    "Damaged" covers a record cut short, a header or body checksum mismatch, and operations that
    do not add up to the length. The body is hashed only once the header checked out.
    """
    # The header first, in O(1), so that a length is trusted before any body byte is hashed.
    start = offset + RECORD_HEADER_SIZE
    if start > len(data):
        return None
    found, header_crc, length, revision, count, body_crc = RECORD_HEADER.unpack_from(data, offset)
    if found != marker or length > MAX_BODY:
        return None
    seed = zlib.crc32(marker) if marker_crc is None else marker_crc  # the marker, then 12-31
    end = start + length
    if (
        zlib.crc32(data[offset + 12 : start], seed) != header_crc
        or end > len(data)
        or zlib.crc32(data[start:end]) != body_crc
        or not _operations_fit(data, start, end, count)
    ):
        return None
    return revision, end


def _operations_fit(data: bytes | memoryview, position: int, end: int, count: int) -> bool:
    for _ in range(count):
        if position + OPERATION_HEADER.size > end:
            return False
        kind, key_length, value_length = OPERATION_HEADER.unpack_from(data, position)
        if kind not in KINDS or (kind == PUT_TTL and value_length < EXPIRY.size):
            return False
        position += OPERATION_HEADER.size + key_length + value_length
    return position == end


def record_at_v1(data: bytes | memoryview, offset: int) -> tuple[int, int] | None:
    """``record_at`` for a version 1 segment (read only)."""
    end_of_prefix = offset + RECORD_PREFIX_V1.size
    if end_of_prefix > len(data):
        return None
    crc, length = RECORD_PREFIX_V1.unpack_from(data, offset)
    end = end_of_prefix + length
    if length < RECORD_BODY_HEADER_V1.size or length > MAX_BODY_V1 or end > len(data):
        return None
    if zlib.crc32(data[offset + 4 : end]) != crc:
        return None
    revision, count = RECORD_BODY_HEADER_V1.unpack_from(data, end_of_prefix)
    if not _operations_fit(data, offset + RECORD_OVERHEAD_V1, end, count):
        return None
    return revision, end


def encode_record_v1(revision: int, operations: Sequence[Operation]) -> bytes:
    """A version 1 record. The engine never writes one: tests and benchmarks build old stores."""
    body = RECORD_BODY_HEADER_V1.pack(revision, len(operations)) + b"".join(
        OPERATION_HEADER.pack(kind, len(key), len(value)) + key + value
        for kind, key, value in operations
    )
    length = len(body).to_bytes(4, "little")
    return zlib.crc32(body, zlib.crc32(length)).to_bytes(4, "little") + length + body


def encode_segment_header_v1(header: SegmentHeader) -> bytes:
    """A version 1 segment header, for tests and benchmarks only (see ``encode_record_v1``)."""
    head = SEGMENT_HEADER_V1.pack(
        SEGMENT_MAGIC, 1, header.segment_id, header.base_revision, header.flags
    )
    return head + zlib.crc32(head).to_bytes(4, "little")


def iter_operations(
    data: bytes | memoryview, offset: int, version: int = FORMAT_VERSION
) -> Iterator[DecodedOperation]:
    """The operations of a record already checked by ``record_at`` (or ``record_at_v1``)."""
    if version >= 2:
        position = offset + RECORD_HEADER_SIZE
        (count,) = struct.unpack_from("<I", data, offset + 24)
    else:
        position = offset + RECORD_OVERHEAD_V1
        (count,) = struct.unpack_from("<I", data, offset + RECORD_PREFIX_V1.size + 8)
    for _ in range(count):
        kind, key_length, value_length = OPERATION_HEADER.unpack_from(data, position)
        key_start = position + OPERATION_HEADER.size
        value_start = key_start + key_length
        position = value_start + value_length
        key = bytes(data[key_start:value_start])
        if kind == PUT_TTL:
            value_length -= EXPIRY.size
            (expires_at,) = EXPIRY.unpack_from(data, value_start + value_length)
            yield DecodedOperation(PUT, key, value_start, value_length, expires_at)
        else:
            yield DecodedOperation(kind, key, value_start, value_length)


# A stable 32-bit hash of a value for the value index; equal hashes are verified by reading.
# The C function itself, not a wrapper: batches and replays call it once per operation.
value_hash: Final[Callable[[bytes], int]] = zlib.crc32
