"""``Entry``: what a read of one key returns. Owns no state; imported by store and transaction."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Entry:
    """A key's value and the revision that wrote it (None for a transaction's staged value),
    and when it expires (UNIX seconds; None: never)."""

    key: str
    value: bytes
    revision: int | None
    expires_at: float | None = None
