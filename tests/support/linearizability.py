"""A zipfian key sampler and the interval check of reads against per-key write histories.

Every write has a unique value, so a value read names the write that produced it. A read (or a
find) over the real-time interval ``[start, end]`` may return the value of write ``w`` only if

* ``w`` started before the read ended (no value from the future), and
* no other write ``w2`` to the same key is known to follow ``w`` and to be over before the read
  began: ``w2.start > w.end`` and ``w2.end < read.start`` (no stale value).

A write whose answer never came (an error, a timeout) has ``end = inf``: it may take effect at any
time after it started, and is never known to be over. This is the usual check for a linearizable
register, done per key; ``superseded`` answers the second rule in O(log n) with a suffix minimum.
"""

from __future__ import annotations

import bisect
import math
import random
from dataclasses import dataclass, field

INF = math.inf


class Zipf:
    """Ranks 0..n-1 with P(rank i) proportional to 1 / (i + 1) ** theta (YCSB uses 0.99)."""

    def __init__(self, n: int, theta: float = 0.99) -> None:
        total = 0.0
        self.cumulative: list[float] = []
        for rank in range(n):
            total += 1.0 / (rank + 1) ** theta
            self.cumulative.append(total)
        self.total = total

    def sample(self, rng: random.Random) -> int:
        return bisect.bisect_left(self.cumulative, rng.random() * self.total)


@dataclass
class Write:
    key: str
    value: str
    start: float
    end: float = INF  # INF until acknowledged (and for ever if it never was)


@dataclass
class KeyHistory:
    """One key's writes, sorted by start once the run is over."""

    writes: list[Write] = field(default_factory=list)
    starts: list[float] = field(default_factory=list)
    suffix_min_end: list[float] = field(default_factory=list)

    def freeze(self) -> None:
        self.writes.sort(key=lambda write: write.start)
        self.starts = [write.start for write in self.writes]
        self.suffix_min_end = [INF] * (len(self.writes) + 1)
        for index in range(len(self.writes) - 1, -1, -1):
            self.suffix_min_end[index] = min(self.writes[index].end, self.suffix_min_end[index + 1])

    def superseded(self, write: Write, before: float) -> bool:
        """Whether a write starting after ``write`` ended was over before time ``before``."""
        if write.end == INF:
            return False
        first_after = bisect.bisect_right(self.starts, write.end)
        return self.suffix_min_end[first_after] < before

    def completed_before(self, time: float) -> bool:
        return bool(self.writes) and min(write.end for write in self.writes) < time

    def certainly_holds(self, write: Write, start: float, end: float) -> bool:
        """Whether ``write``'s value is the key's value for the whole of ``[start, end]``."""
        if write.end >= start:
            return False
        return all(
            other is write or other.end < write.start or other.start > end for other in self.writes
        )


class History:
    """Every write of the run, by key and by (unique) value."""

    def __init__(self) -> None:
        self.keys: dict[str, KeyHistory] = {}
        self.by_value: dict[str, Write] = {}

    def begin_write(self, key: str, value: str, start: float) -> Write:
        write = Write(key, value, start)
        self.keys.setdefault(key, KeyHistory()).writes.append(write)
        self.by_value[value] = write
        return write

    def freeze(self) -> None:
        for history in self.keys.values():
            history.freeze()

    def check_read(self, key: str, value: str | None, start: float, end: float) -> str | None:
        """Why this read is impossible, or None if some linearization allows it."""
        history = self.keys.get(key, KeyHistory())
        if value is None:
            if history.completed_before(start):
                return f"read {key}: 404 after an acknowledged write"
            return None
        write = self.by_value.get(value)
        if write is None or write.key != key:
            return f"read {key}: {value!r} was never written to it"
        if write.start > end:
            return f"read {key}: {value!r} from the future"
        if history.superseded(write, start):
            return f"read {key}: stale {value!r}"
        return None

    def check_find(self, value: str, keys: list[str], start: float, end: float) -> str | None:
        """Sound (each key had the value during the call) and complete for a certain value."""
        write = self.by_value.get(value)
        if write is None:
            return f"find {value!r}: not a written value" if keys else None
        if any(key != write.key for key in keys):
            return f"find {value!r}: returned {keys}, only {write.key} ever had it"
        history = self.keys[write.key]
        if keys:
            if write.start > end or history.superseded(write, start):
                return f"find {value!r}: {write.key} did not hold it during the call"
        elif history.certainly_holds(write, start, end):
            return f"find {value!r}: missed {write.key}, which held it throughout"
        return None
