"""What the client returns besides plain values."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Entry:
    """A key, its value and its revision (None for the holder's staged, uncommitted write)."""

    key: str
    value: str
    revision: int | None
    expires_in: float | None = None  # seconds left when it was read; None: it never expires
