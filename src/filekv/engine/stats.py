"""``StoreStats``: what ``Store.stats()`` reports, one frozen value per call.

Owns no state: a snapshot the Store fills under its lock. Each field's ``metadata["description"]``
is the text ``GET /stats`` documents (``service/schemas.py`` builds its schema from these fields).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


def _about(text: str) -> Any:
    return field(metadata={"description": text})


@dataclass(frozen=True, slots=True)
class StoreStats:
    """Counts and sizes of an open store at one moment."""

    keys: int = _about("Keys stored.")
    disk_bytes: int = _about("Bytes of every segment and hint file on disk.")
    live_bytes: int = _about(
        "Bytes the live entries would take once compacted (a put record each); the segments'"
        " records beyond it are what compacting would save. Can exceed disk_bytes after a"
        " transaction or batch, whose operations share one 32-byte record header."
    )
    segments: int = _about("Segment files.")
    fsync: str = _about("The fsync mode: always, interval or never.")
    last_compaction: str | None = _about("ISO time of the last compaction, or null.")
    recovered_truncations: int = _about("Torn tails cut at the last open.")
    revision: int = _about("The store's revision: that of its latest write.")
    compactions: int = _about("Compactions since the store was opened.")
    compacting: bool = _about("Whether a compaction is running now.")
    in_transaction: bool = _about("Whether a transaction is open.")

    def as_dict(self) -> dict[str, Any]:
        """The fields by name, as ``GET /stats`` answers them."""
        return asdict(self)
