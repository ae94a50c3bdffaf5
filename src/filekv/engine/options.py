"""``StoreOptions``: the settings ``Store.open`` takes, and the check that they make sense.

Owns no mutable state: one frozen value, validated once before anything is opened.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from .hint import LENGTH_MASK
from .record import MAX_BODY, MAX_OPERATIONS, OPERATION_HEADER

FsyncMode = Literal["always", "interval", "never"]
FSYNC_MODES: Final = ("always", "interval", "never")


@dataclass(frozen=True, slots=True)
class StoreOptions:
    """Every tunable of an open store; ``Store.open`` has the defaults and says what each means."""

    fsync: FsyncMode
    fsync_interval_ms: int
    max_key_bytes: int
    max_value_bytes: int
    segment_bytes: int
    compact_min_bytes: int
    compact_dead_ratio: float
    auto_compact: bool
    max_transaction_bytes: int
    max_transaction_ops: int

    def validate(self) -> None:
        """ValueError naming the first option out of range."""
        if self.fsync not in FSYNC_MODES:
            raise ValueError(f"fsync must be one of {', '.join(FSYNC_MODES)}, not {self.fsync!r}")
        if not 1 <= self.max_key_bytes <= 0xFFFF:
            raise ValueError("max_key_bytes must be between 1 and 65535")
        if not 0 <= self.max_value_bytes <= LENGTH_MASK:
            raise ValueError("max_value_bytes is out of range")
        if (
            self.fsync_interval_ms < 1
            or self.segment_bytes < 4096
            or not 0 < self.compact_dead_ratio <= 1
        ):
            raise ValueError("fsync_interval_ms, segment_bytes or compact_dead_ratio out of range")
        # Every record the store may write must be one that recovery reads back (MAX_BODY).
        if self.max_key_bytes + self.max_value_bytes + OPERATION_HEADER.size > MAX_BODY:
            raise ValueError(f"max_key_bytes + max_value_bytes must stay under {MAX_BODY} bytes")
        if not 1 <= self.max_transaction_bytes <= MAX_BODY:
            raise ValueError(f"max_transaction_bytes must be between 1 and {MAX_BODY}")
        if not 1 <= self.max_transaction_ops <= MAX_OPERATIONS:
            raise ValueError(f"max_transaction_ops must be between 1 and {MAX_OPERATIONS}")
