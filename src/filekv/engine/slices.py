"""Whole-list passes cut into slices, for the work of background threads (hint files).

A C-level pass (``map``, ``sorted``) over half a million entries is a single call,
and a thread keeps the GIL for the whole of a C call: the event loop, with every request behind
it, waited up to 348 ms while the hint writer encoded a 64 MiB segment's hint, 76 ms for a
100,000-key one (docs/PERFORMANCE.md, the issue-10 section). Cut into slices of ``SLICE``
entries, each call takes a few milliseconds, and between calls the interpreter hands the GIL on
as it does every 5 ms. The results are those of the plain calls, in the same order; the price
is a Python step per slice, and for ``sliced_sorted`` a merge of the sorted slices two at a
time.

Owns no state.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from typing import Any, Final, TypeVar

__all__ = ["SLICE", "sliced_map", "sliced_sorted"]

SLICE: Final = 4096
MERGE_RUN: Final = 16 * SLICE  # sorted runs are merged in one C call up to this length

T = TypeVar("T")


def sliced_map(function: Callable[..., T], *sequences: Sequence[Any]) -> list[T]:
    """``list(map(function, *sequences))``, a slice at a time (the sequences of equal length)."""
    out: list[T] = []
    extend = out.extend
    for first in range(0, len(sequences[0]), SLICE):
        end = first + SLICE
        extend(map(function, *(sequence[first:end] for sequence in sequences)))
    return out


def sliced_sorted(items: Sequence[T], key: Callable[[T], Any] | None = None) -> list[T]:
    """``sorted(items, key=key)``: slices sorted apiece, merged two by two while the merged runs
    stay short (each merge one ``list.sort`` of two sorted runs, which timsort merges in one
    linear pass), then the few long runs merged by ``heapq.merge``. Stable, as ``sorted``: of
    two equal items the one of the earlier run comes first.

    Measured on half a million items with a thread waiting on the GIL: merging every run with
    ``heapq.merge`` took 0.8 s (longest wait 42 ms); merging two by two up to a single run,
    0.58 s, but the last merges kept the GIL up to 78 ms; this mix, both short.
    """
    if len(items) <= SLICE:
        return sorted(items, key=key)  # type: ignore[type-var, arg-type]
    runs = [
        sorted(items[first : first + SLICE], key=key)  # type: ignore[type-var, arg-type]
        for first in range(0, len(items), SLICE)
    ]
    while len(runs) > 1 and len(runs[0]) < MERGE_RUN:
        merged = []
        for i in range(0, len(runs) - 1, 2):
            run = runs[i] + runs[i + 1]
            run.sort(key=key)
            merged.append(run)
        if len(runs) % 2:
            merged.append(runs[-1])
        runs = merged
    if len(runs) == 1:
        return runs[0]
    return list(heapq.merge(*runs, key=key))
