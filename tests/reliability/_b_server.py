"""What RELIABILITY-B's tests read from a data directory (the server itself is ``serverproc``'s)."""

from __future__ import annotations

from pathlib import Path


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file of a data directory (but the LOCK) and its bytes."""
    return {
        str(path.relative_to(directory)): path.read_bytes()
        for path in sorted(directory.rglob("*"))
        if path.is_file() and path.name != "LOCK"
    }
