"""Values made of valid-looking encoded records: what a client would send to steer recovery.

Issue 17, finding 2: a value whose bytes hold an encoded record, torn by a power cut mid-append,
left that record after a damaged one, and format version 1 then refused to open the store. The
crash, power-loss and recovery suites write these values so that any such steering would show.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from filekv.engine.record import DELETE, MARKER_BYTES, PUT, encode_record, encode_record_v1

SECTOR = 512


# One of each kind a client could plant: as an older filekv wrote them, and version 2 with
# markers an attacker might guess (all zeros, all 0xFF).
PLANTED = (
    encode_record_v1(1 << 40, [(PUT, b"planted", b"value"), (DELETE, b"victim", b"")])
    + encode_record(bytes(MARKER_BYTES), 1 << 40, [(PUT, b"planted", b"value")])
    + encode_record(b"\xff" * MARKER_BYTES, 1 << 40, [(PUT, b"planted", b"value")])
)

VALUE_KINDS = ["v1-records", "v2-records-zero-marker", "v2-records-guessed-marker"]


def record_made_value(kind: str, size: int = 64 << 10) -> bytes:
    """``size`` bytes of records of ``kind``, one at the start of every 512-byte sector."""
    if kind == "v1-records":
        unit = encode_record_v1(10**9, [(PUT, b"planted", b"x" * 40), (DELETE, b"victim", b"")])
    elif kind == "v2-records-zero-marker":
        unit = encode_record(bytes(MARKER_BYTES), 10**9, [(PUT, b"planted", b"x" * 40)])
    elif kind == "v2-records-guessed-marker":
        unit = encode_record(os.urandom(MARKER_BYTES), 10**9, [(PUT, b"planted", b"x" * 40)])
    else:
        raise ValueError(kind)
    padded = unit + bytes(SECTOR - len(unit) % SECTOR)
    return (padded * (size // len(padded) + 1))[:size]


def planted_value(prefix: bytes, size: int) -> bytes:
    """``prefix`` followed by copies of ``PLANTED``, ``size`` bytes in all (at least the prefix)."""
    return (prefix + PLANTED * (size // len(PLANTED) + 1))[: max(size, len(prefix))]


def _ascii_record(encode: Callable[[int, bytes], bytes]) -> bytes:
    """An encoded record all of whose bytes are ASCII, found by trying revisions and values.

    Values sent through the HTTP API are text, so a planted record must be valid UTF-8: each
    checksum byte is ASCII one time in two, so a few hundred tries find one.
    """
    for revision in range(1 << 40, (1 << 40) + 100_000):
        for filler in range(64):
            encoded = encode(revision, b"planted-" + bytes([65 + filler % 26]) * (1 + filler))
            if max(encoded) < 0x80:
                return encoded
    raise AssertionError("no ASCII record found")


def planted_text() -> str:
    """Text whose UTF-8 bytes are valid records (version 1, and version 2 with a zero marker)."""
    v1 = _ascii_record(lambda revision, value: encode_record_v1(revision, [(PUT, b"k", value)]))
    v2 = _ascii_record(
        lambda revision, value: encode_record(bytes(MARKER_BYTES), revision, [(PUT, b"k", value)])
    )
    return (v1 + v2).decode("ascii")
