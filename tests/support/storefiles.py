"""A store's folder seen from the outside: its segment and hint files, copies, damage, contents.

The engine suites find files (``segments``, ``hints``, ``last_segment``), damage them
(``flip_byte``, ``truncate``), make a closed store look crashed (``as_after_a_crash``), copy a
closed store (``copy_store``) and read every key back
through the public API (``contents``) with these, so that a test says what it does to the disk.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from filekv.engine import Store

SEGMENT_GLOB = "[0-9]" * 10 + ".seg"
HINT_GLOB = "[0-9]" * 10 + ".hint"
HEADER_BYTES = 40  # format version 2


def segments(path: Path) -> list[Path]:
    return sorted(path.glob(SEGMENT_GLOB))


def hints(path: Path) -> list[Path]:
    return sorted(path.glob(HINT_GLOB))


def last_segment(path: Path) -> Path:
    found = segments(path)
    assert found, f"no segment files in {path}"
    return found[-1]


def as_after_a_crash(path: Path) -> Path:
    """Leave a closed store's folder as a crash (SIGKILL, power cut) would have left it: without
    the hint that a clean close writes for the newest segment, so the next open replays that
    segment and checks its tail, as recovery after a crash does."""
    newest = last_segment(path)
    newest.with_name(newest.name.replace(".seg", ".hint")).unlink(missing_ok=True)
    return path


def copy_store(source: Path, target: Path) -> Path:
    """Copy a closed store's folder (without its LOCK, which the next open recreates)."""
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("LOCK"))
    return target


def contents(db: Store) -> dict[str, bytes]:
    """Every key and value, read through the public API."""
    result: dict[str, bytes] = {}
    for key in db.scan():
        value = db.get(key)
        assert value is not None, f"scan lists {key!r} but get returns None"
        result[key] = value
    return result


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(path: Path, size: int) -> None:
    with path.open("r+b") as handle:
        handle.truncate(size)
