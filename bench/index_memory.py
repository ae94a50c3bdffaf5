"""Where the index's memory per key (and its build time) goes: each structure built alone.

    .venv/bin/python bench/index_memory.py [--keys 1000000]

Builds, one after another in one fresh process, what ``KeyIndex``'s overlay holds (every key
written since the store was opened; keys loaded from hint files live in columns instead,
``key_columns.py``, about 120 B/key at 10M) for N keys of the ``bench/scale.py`` workload
(16-byte keys, distinct 100-byte values): the key strings, the
packed location integers, the key -> location dict, the ordered key list, the value-hash ints
and the hash -> key dict. Prints the RSS each added, in bytes per key, so the figure in
``bench/scale.py`` ("RSS after load") can be read as a sum of parts, and the seconds each took
to build (what a reopen took before it built columns instead: docs/PERFORMANCE.md). Two
reference rows, built and dropped, show what the dict's time is made of: the same dict with
keys already hashed, and a dict of as many int keys inserted in order (no random access). The
strings and ints are made by a Python loop here (a reopen decoded them at C speed), so only the
dict rows' seconds compared with a reopen's. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import gc
import os
import time
from itertools import repeat
from operator import and_

from sortedcontainers import SortedList

from filekv.engine.hint import HASH_MASK, pack
from filekv.engine.record import value_hash


def _rss() -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keys", type=int, default=1_000_000)
    keys_count = parser.parse_args().keys
    gc.disable()  # as recovery does: no cycles here, and the collector would only add time
    rows: list[tuple[str, int, float]] = []
    before = _rss()
    started = time.perf_counter()

    def measure(name: str) -> None:
        nonlocal before, started
        now = _rss()
        rows.append((name, now - before, time.perf_counter() - started))
        before = now
        started = time.perf_counter()

    keys = [f"key-{i:012d}" for i in range(keys_count)]
    measure("key strings (16 ASCII chars) + the list holding them")
    locations = [
        pack(1 + i // 470_000, 40 + 140 * (i % 470_000), 100, i + 1, value_hash(b"%100d" % i))
        for i in range(keys_count)
    ]
    measure("packed location ints (176 bits) + their list")
    by_key = dict(zip(keys, locations, strict=True))
    measure("dict key -> location")
    ordered = SortedList(keys)
    measure("SortedList of the keys")
    hashes = list(map(and_, locations, repeat(HASH_MASK)))
    measure("value-hash ints (32 bits) + their list")
    by_value = dict(zip(hashes, keys, strict=True))
    measure("dict value hash -> key")
    # References, not part of the index nor of the total: built, timed and freed.
    again = dict(zip(keys, locations, strict=True))
    del again
    measure("(reference: the same dict again, every key's hash cached)")
    in_order = dict(zip(range(keys_count), locations, strict=True))
    del in_order
    measure("(reference: a dict of as many ints inserted in order)")
    del hashes
    measure("(the list of hash ints dropped)")
    assert len(by_key) == len(ordered) == keys_count and len(by_value) <= keys_count
    del keys, locations
    measure("(the two lists dropped: the index keeps the objects)")
    total = sum(size for name, size, _ in rows if not name.startswith("(reference"))
    print(f"bench/index_memory.py --keys {keys_count:,}  (pid {os.getpid()})")
    print(f"{'structure':<60} {'MiB':>9} {'B/key':>7} {'seconds':>8}")
    for name, size, seconds in rows:
        print(f"{name:<60} {size / (1 << 20):>9,.1f} {size / keys_count:>7.1f} {seconds:>8.2f}")
    print(f"{'total':<60} {total / (1 << 20):>9,.1f} {total / keys_count:>7.1f}")


if __name__ == "__main__":
    main()
