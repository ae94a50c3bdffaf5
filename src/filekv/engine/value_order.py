"""The columns' value order: (value hash, entry number) pairs ascending by hash, kept as runs and
merged into one a bucket of hashes at a time.

A find bisects the hashes of each run for its value's hash; the entry numbers say which entries
(``key_columns.py``) to check. An open starts with one run per hint; each fold step of the overlay
into the columns (``KeyColumns.insert``) adds one; a merge (a background thread: ten million
pairs take seconds) turns them back into one, so a find bisects a few runs, not hundreds.

Owns the merge of runs and the thread that runs it; the runs themselves are the columns'.
"""

from __future__ import annotations

import logging
import threading
from array import array
from bisect import bisect_left
from collections.abc import Callable, Sequence
from itertools import repeat
from operator import add
from typing import Final

from .hint import HintColumns
from .packed import HASH_AT, LITTLE_ENDIAN, u32_field

log = logging.getLogger(__name__)

# A run: (its first entry number, hashes ascending, their positions counted from that first).
Run = tuple[int, "array[int]", "array[int]"]
BUCKET_BITS: Final = 10  # a large merge goes a bucket of hashes (their top 10 bits) at a time
# A value order of up to this many entries is merged in one sort: a thread started for it cost
# more than the merge (6 ms of each open of a small store), and so did finding 1,024 buckets in
# each run (merging 1,000 entries from four runs: 4.7 ms by buckets, 0.34 ms in one piece).
SMALL_VALUE_ORDER = 1 << 16


def order_by_hash(entries: bytes | bytearray) -> tuple[array[int], array[int]]:
    """(entry positions by value hash, their hashes ascending) of packed ``entries``: sorted as
    packed pairs, with no key function (32,768 entries: 13 ms against 22)."""
    hashes = u32_field(entries, HASH_AT)
    ordered = merge_runs([(0, hashes, array("I", range(len(hashes))))], bucketed=False)
    assert ordered is not None  # nothing can stop it
    return ordered[1], ordered[0]


def hint_order(hint: HintColumns, entries: bytes | bytearray) -> tuple[array[int], array[int]]:
    """``order_by_hash`` as a version 5 hint stores it, else sorted here (older hints; a store
    rewrites them as version 5 when it compacts)."""
    if len(hint.by_hash) == len(hint.keys) and len(hint.hashes) == len(hint.keys):
        return _as_array(hint.by_hash), _as_array(hint.hashes)
    return order_by_hash(entries)


def _as_array(values: Sequence[int]) -> array[int]:
    return values if isinstance(values, array) else array("I", values)


def merge_runs(
    runs: Sequence[Run], stop: threading.Event | None = None, *, bucketed: bool = True
) -> tuple[array[int], array[int]] | None:
    """``runs`` merged into one: (hashes ascending, entry numbers). None if ``stop`` was set.

    Each pair is packed into one 64-bit integer (hash high, entry low) with strided byte copies,
    so the sort compares plain ints with no key function. A large merge goes a bucket of hashes
    at a time (found in each run by bisection): a bucket's ints are made together and sorted
    while they fit in the cache, and nothing beside the result is ever as large as the runs (one
    sort of ten million such ints took 3.3 s on these machines, most of it cache misses; sorting
    entry numbers by a key and gathering both columns, 6 s). A run that does not ascend (a hint
    that did not keep its order) puts some pair in a bucket not its own; that is seen, and
    everything is sorted in one piece instead. ``bucketed=False``: in one piece anyway (runs
    known not to ascend).
    """
    if stop is not None and stop.is_set():
        return None
    total = sum(len(run[1]) for run in runs)
    if total <= SMALL_VALUE_ORDER or not bucketed or not LITTLE_ENDIAN:
        return _unpacked(sorted(_packed(runs, None)))
    buckets, shift = 1 << BUCKET_BITS, 32 - BUCKET_BITS
    cuts: list[list[int]] = []  # per run: where each bucket starts, then its end
    for _, hashes, _ in runs:
        bounds, at = [0], 0
        for bucket in range(1, buckets):
            at = bisect_left(hashes, bucket << shift, at)  # from ``at``: never backwards
            bounds.append(at)
        bounds.append(len(hashes))
        cuts.append(bounds)
    out_hashes, out_entries = array("I"), array("I")
    for bucket in range(buckets):
        if stop is not None and stop.is_set():
            return None
        ordered = sorted(_packed(runs, [(bounds[bucket], bounds[bucket + 1]) for bounds in cuts]))
        if not ordered:
            continue
        if ordered[0] >> (32 + shift) != bucket or ordered[-1] >> (32 + shift) != bucket:
            return _unpacked(sorted(_packed(runs, None)))  # a run out of order
        hashes, entries = _unpacked(ordered)
        out_hashes += hashes
        out_entries += entries
    return out_hashes, out_entries


def _packed(runs: Sequence[Run], spans: list[tuple[int, int]] | None) -> array[int]:
    """The (hash, entry) pairs of ``runs`` (of each run's span, if given) as 64-bit ints."""
    wide = array("Q")
    for number, (first, hashes, positions) in enumerate(runs):
        low, high = spans[number] if spans is not None else (0, len(hashes))
        if low >= high:
            continue
        entries = positions[low:high]
        if first:
            entries = array("I", map(add, entries, repeat(first)))
        if not LITTLE_ENDIAN:  # pragma: no cover - no big-endian machine in CI
            wide.extend((h << 32) | e for h, e in zip(hashes[low:high], entries, strict=True))
            continue
        pairs = bytearray(8 * (high - low))
        low_bytes, high_bytes = entries.tobytes(), hashes[low:high].tobytes()
        for byte in range(4):
            pairs[byte::8] = low_bytes[byte::4]
            pairs[4 + byte :: 8] = high_bytes[byte::4]
        wide.frombytes(pairs)
    return wide


def _unpacked(ordered: list[int]) -> tuple[array[int], array[int]]:
    """Sorted 64-bit pairs back into (hashes, entries)."""
    if not LITTLE_ENDIAN:  # pragma: no cover - no big-endian machine in CI
        return array("I", (p >> 32 for p in ordered)), array("I", (p & 0xFFFFFFFF for p in ordered))
    merged = array("Q", ordered).tobytes()
    low_out, high_out = bytearray(len(merged) // 2), bytearray(len(merged) // 2)
    for byte in range(4):
        low_out[byte::4] = merged[byte::8]
        high_out[byte::4] = merged[4 + byte :: 8]
    hashes, entries = array("I"), array("I")
    hashes.frombytes(high_out)
    entries.frombytes(low_out)
    return hashes, entries


class ValueOrderMerger:
    """Owns a thread that runs ``merge`` once (a value order merged after open or after a fold
    of the overlay); ``stop`` ends it early, at close."""

    def __init__(self, merge: Callable[[threading.Event], object]) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(merge,), name="filekv-value-order", daemon=True
        )
        self._thread.start()

    def _run(self, merge: Callable[[threading.Event], object]) -> None:
        try:
            merge(self._stop)
        except Exception:  # finds stay right, one bisection per run: log, do not crash
            log.exception("merging the value order failed; find searches each run instead")

    def running(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def join(self) -> None:
        """Wait until the merge is done (benchmarks and tests)."""
        self._thread.join()
