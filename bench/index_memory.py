"""Where the index's memory per key goes: each in-memory structure built alone, RSS measured.

    .venv/bin/python bench/index_memory.py [--keys 1000000]

Builds, one after another in one fresh process, what ``KeyIndex`` holds for N keys of the
``bench/scale.py`` workload (16-byte keys, distinct 100-byte values): the key strings, the
packed location integers, the key -> location dict, the ordered key list, the value-hash ints
and the hash -> key dict. Prints the RSS each added, in bytes per key, so the figure in
``bench/scale.py`` ("RSS per key") can be read as a sum of parts. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import gc
import os
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
    rows: list[tuple[str, int]] = []
    before = _rss()

    def measure(name: str) -> None:
        nonlocal before
        now = _rss()
        rows.append((name, now - before))
        before = now

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
    del hashes
    measure("(the list of hash ints dropped)")
    assert len(by_key) == len(ordered) == keys_count and len(by_value) <= keys_count
    del keys, locations
    measure("(the two lists dropped: the index keeps the objects)")
    total = sum(size for _, size in rows)
    print(f"bench/index_memory.py --keys {keys_count:,}  (pid {os.getpid()})")
    print(f"{'structure':<56} {'MiB':>9} {'B/key':>7}")
    for name, size in rows:
        print(f"{name:<56} {size / (1 << 20):>9,.1f} {size / keys_count:>7.1f}")
    print(f"{'total':<56} {total / (1 << 20):>9,.1f} {total / keys_count:>7.1f}")


if __name__ == "__main__":
    main()
