"""Loading the hint files of consecutive segments into an empty index at once (``HintFold``),
and applying one on top of an index that already holds entries (``apply_hint``).

Owns nothing past a call: recovery (``recovery.py``) hands the hints it read, in segment
order, and the index and segment set to fill.
"""

from __future__ import annotations

from itertools import chain
from typing import Final

from .hint import HintColumns, length_of
from .index import KeyIndex
from .key_columns import KeyColumns, disjoint_prefix
from .segments import SegmentSet

# Hints after the first overlapping one are applied entry by entry (~3 us each at 10M keys)
# when they hold at most this share of the entries before them; else every hint is merged by a
# sort of every key (~0.6 us each: docs/PERFORMANCE.md).
APPLY_SHARE: Final = 8


class HintFold:
    """The hint files of consecutive segments, gathered while the index is still empty, then
    loaded into it at once as columns (``key_columns.py``: a later segment's entries win, its
    deleted keys drop out). Folding them into a dict took 6 s of a 15 s reopen at ten million
    keys; the columns are merged with a few C-level passes instead (issue 9)."""

    def __init__(self) -> None:
        self._hints: list[HintColumns] = []

    def add(self, hint: HintColumns) -> None:
        self._hints.append(hint)

    def load_into(self, segments: SegmentSet, index: KeyIndex) -> None:
        """Load what was gathered into the (empty) index, and start over.

        The last hints, when they overlap the ones before (keys written again: the newest
        segment's hint after a tail of overwrites) and hold at most 1/APPLY_SHARE as many
        entries, are applied on top entry by entry: the others then load end to end with no
        sort of every key (docs/PERFORMANCE.md)."""
        hints = self._hints
        self._hints = []
        if not hints:
            return
        base = disjoint_prefix(hints)
        if APPLY_SHARE * _entries(hints[base:]) > _entries(hints[:base]):
            base = len(hints)
        loaded, rest = hints[:base], hints[base:]
        del hints
        columns = KeyColumns.from_hints(loaded)
        if not any(hint.deleted for hint in loaded) and len(columns) == _entries(loaded):
            # Every entry is live (no delete, no key twice): the headers hold both sums.
            key_bytes = sum(hint.key_bytes for hint in loaded)
            value_bytes = sum(hint.value_bytes for hint in loaded)
        else:
            key_bytes, value_bytes = columns.key_bytes(), columns.value_bytes()
        expiries = _expiries_of(loaded)
        del loaded
        index.load_columns(columns)
        if expiries:
            index.load_expiries(expiries)
        segments.account_bulk(len(columns), key_bytes, value_bytes)
        for hint in rest:
            apply_hint(segments, index, hint)


def _entries(hints: list[HintColumns]) -> int:
    return sum(len(hint.keys) + len(hint.deleted) for hint in hints)


def _expiries_of(hints: list[HintColumns]) -> dict[str, float]:
    """The expiries ``hints`` leave (oldest first): a later put or delete of a key ends one."""
    expiries: dict[str, float] = {}
    for hint in hints:
        if expiries:
            for key in chain(hint.deleted, hint.keys):
                expiries.pop(key, None)
        expiries.update(hint.expiries)
    return expiries


def apply_hint(segments: SegmentSet, index: KeyIndex, hint: HintColumns) -> None:
    """Apply a hint to an index that already holds entries (after a replayed segment)."""
    account_set = segments.account_set
    set_location = index.set
    expiries = hint.expiries
    for key, location in zip(hint.keys, hint.locations, strict=True):
        account_set(len(key.encode()), length_of(location), set_location(key, location))
        if expiries or index.expiries:
            index.set_expiry(key, expiries.get(key))
    for key in hint.deleted:
        segments.account_remove(len(key.encode()), index.remove(key))
