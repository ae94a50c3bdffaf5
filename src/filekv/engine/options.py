"""``StoreOptions``: the one definition of what ``Store.open`` can be told, with the defaults.

Owns no mutable state: one frozen value that checks itself when built, before anything is opened.
The server's settings (``filekv.settings``) take their defaults from here and build one with
``Settings.store_options()``; adding an option means adding a field here (and, if the server
should expose it, a field in ``Settings``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from .hint import LENGTH_MASK
from .record import EXPIRY, MAX_BODY, MAX_OPERATIONS, OPERATION_HEADER

FsyncMode = Literal["always", "interval", "never"]
FSYNC_MODES: Final = ("always", "interval", "never")


@dataclass(frozen=True, slots=True)
class StoreOptions:
    """Every tunable of an open store; ValueError on construction if one is out of range."""

    fsync: FsyncMode = "always"
    """When writes reach the disk: before put returns, every ``fsync_interval_ms``, or never."""
    fsync_interval_ms: int = 100
    """With fsync="interval": the longest gap between fsyncs."""
    max_key_bytes: int = 1024
    """Longest key, in UTF-8 bytes."""
    max_value_bytes: int = 1 << 20
    """Largest value, in bytes."""
    segment_bytes: int = 64 << 20
    """Size at which the active segment is sealed and a new one started."""
    active_hint_bytes: int = 32 << 20
    """The active segment's hint is written again each time the segment grew this much, so
    that an open after a crash replays about this much of it at most, not the whole segment;
    0: only at a clean close."""
    compact_min_bytes: int = 16 << 20
    """No automatic compaction below this many bytes on disk."""
    compact_dead_ratio: float = 0.5
    """Compact automatically when this share of the bytes on disk is dead."""
    auto_compact: bool = True
    """Whether compaction starts by itself (``compact_*``); ``Store.compact`` works either way."""
    max_transaction_bytes: int = 64 << 20
    """Most bytes one transaction may stage (keys, values, framing), every level."""
    max_transaction_ops: int = 10_000
    """Most writes and deletes one transaction may stage, every level."""
    expiry_sweep_seconds: float = 1.0
    """How often expired keys get their durable deletion written (they read as absent at once);
    0 turns the background sweep off (``Store.sweep_expired`` still does it when called)."""

    watch_history: int = 10_000
    """Revisions compaction keeps in the log for watchers resuming from an older one
    (``Store.changes``): at least the newest this many; 0 keeps only what is live."""
    watch_buffer_bytes: int = 16 << 20
    """Memory for the newest changes (keys, values, ~128 bytes each besides), so that live
    watchers never read the files; a watcher further behind reads them."""

    def __post_init__(self) -> None:
        self.validate()

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
        if (
            self.max_key_bytes + self.max_value_bytes + OPERATION_HEADER.size + EXPIRY.size
            > MAX_BODY
        ):
            raise ValueError(f"max_key_bytes + max_value_bytes must stay under {MAX_BODY} bytes")
        if not 1 <= self.max_transaction_bytes <= MAX_BODY:
            raise ValueError(f"max_transaction_bytes must be between 1 and {MAX_BODY}")
        if not 0 <= self.active_hint_bytes <= 1 << 40:
            raise ValueError("active_hint_bytes must be between 0 and 2**40")
        if not 0 <= self.expiry_sweep_seconds <= 3600:
            raise ValueError("expiry_sweep_seconds must be between 0 and 3600")
        if not 0 <= self.watch_history <= 1 << 40:
            raise ValueError("watch_history must be between 0 and 2**40")
        if not 0 <= self.watch_buffer_bytes <= 1 << 40:
            raise ValueError("watch_buffer_bytes must be between 0 and 2**40")
        if not 1 <= self.max_transaction_ops <= MAX_OPERATIONS:
            raise ValueError(f"max_transaction_ops must be between 1 and {MAX_OPERATIONS}")
