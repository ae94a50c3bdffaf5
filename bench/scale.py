"""The engine at scale: load, memory per key, reopen, compaction, reads (issue 9).

Each step runs in a fresh subprocess (so its peak RSS, VmHWM, is its own) on one data directory:
16-byte keys, 100-byte values, fsync="never", automatic compaction off. Every step closes the
store cleanly except "tail", which ends as a crash would (so its reopen replays the tail).

    .venv/bin/python bench/scale.py            # 10,000,000 keys
    .venv/bin/python bench/scale.py --quick    # 1,000,000 keys
    .venv/bin/python bench/scale.py --order random   # the load writes the keys shuffled

The load writes new keys in key order by default (as time-ordered keys arrive); ``--order
random`` writes the same keys shuffled, the harder case for folding the index's overlay into its
columns (each fold step then merges into keys already held instead of appending).

Prints a table with the targets of issue 9 and the ratio of each figure to its target.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _common import bench_tmpdir, machine_info

from filekv.engine import Store
from filekv.engine.index import KeyIndex

VALUE = 100
TAIL_BYTES = 64 << 20


def _status(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _reset_peak() -> None:
    """Start VmHWM afresh at the current RSS (Linux: ``clear_refs`` 5)."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def _key(i: int) -> str:
    return f"key-{i:012d}"


def _value(i: int) -> bytes:
    return (i.to_bytes(8, "little") * 13)[:VALUE]


started_open = 0.0
active_hint_bytes: int | None = None  # --active-hint-bytes: the store's option, if given


def _time_fold_steps() -> list[float]:
    """Time each step of folding the index's overlay into its columns (the store lock is held
    for exactly that long): wraps ``KeyIndex.fold_step`` in this process."""
    seconds: list[float] = []
    fold_step = KeyIndex.fold_step

    def timed(index: KeyIndex, limit: int | None = None) -> int:
        started = time.perf_counter()
        try:
            return fold_step(index, limit)
        finally:
            seconds.append(time.perf_counter() - started)

    KeyIndex.fold_step = timed  # type: ignore[method-assign]
    return seconds


def _open(path: Path) -> tuple[Store, float]:
    global started_open
    started = started_open = time.perf_counter()
    options: dict[str, Any] = {"fsync": "never", "auto_compact": False}
    if active_hint_bytes is not None:
        options["active_hint_bytes"] = active_hint_bytes
    db = Store.open(path, **options)
    return db, time.perf_counter() - started


def step(name: str, path: Path, keys: int, order: str = "sequential") -> dict[str, Any]:
    base = _status("VmRSS")
    if name == "load":
        numbers: range | list[int] = range(keys)
        if order == "random":
            numbers = list(numbers)
            random.Random(1).shuffle(numbers)
        # After the shuffled order is built (360 MB at 10M keys: not the store's), which stays
        # until every figure is taken, so that none of them counts it.
        base = _status("VmRSS")
        db, _ = _open(path)
        steps = _time_fold_steps()
        started = time.perf_counter()
        for i in numbers:
            db.put(_key(i), _value(i))
        elapsed = time.perf_counter() - started
        steady = _status("VmRSS")
        result = {"seconds": elapsed, "rss": steady - base, "peak": _status("VmHWM") - base}
        # A fold of the overlay into the columns may be under way: what RSS is once it is done.
        db._folder.wait_idle()  # noqa: SLF001 - a benchmark's look inside
        result["folded"] = _status("VmRSS") - base
        del numbers
        result["fold_steps"] = len(steps)
        result["longest_step"] = max(steps, default=0.0)
        result["median_step"] = statistics.median(steps) if steps else 0.0
        db.close()  # finishes the hints of the sealed segments
        return result
    if name == "tail":  # overwrite keys until the newest segment is nearly 64 MiB
        db, _ = _open(path)
        i = 0
        while True:
            for _ in range(10_000):
                db.put(_key(i % keys), _value(i + 1))
                i += 1
            newest = max(path.glob("*.seg"))
            if newest.stat().st_size >= TAIL_BYTES - (1 << 20):
                break
        db.sync()
        # A crash, not a close (which would write the newest segment's hint): the reopen that
        # follows replays the whole unsealed tail, as recovery after a SIGKILL does.
        print(json.dumps({"tail_bytes": newest.stat().st_size}), flush=True)
        os._exit(0)
    if name == "reopen":
        db, elapsed = _open(path)
        rss = _status("VmRSS") - base
        # The value order of the loaded columns is merged in a background thread after open;
        # until then a find bisects each hint's own order. How long after open it is done:
        db._index.wait_for_merge()  # noqa: SLF001 - a benchmark's look inside
        merged = time.perf_counter() - started_open
        result = {"seconds": elapsed, "rss": rss, "merged": merged}
        db.close()
        return result
    if name == "compact":
        db, _ = _open(path)
        # The peak of opening (its temporaries, and the value order merged in the background
        # after it) is not compaction's.
        db._index.wait_for_merge()  # noqa: SLF001 - a benchmark's look inside
        _reset_peak()
        steady = _status("VmRSS")
        started = time.perf_counter()
        db.compact()
        elapsed = time.perf_counter() - started
        result = {"seconds": elapsed, "steady": steady - base, "peak": _status("VmHWM") - base}
        db.close()
        return result
    if name == "reads":
        db, _ = _open(path)
        db._index.wait_for_merge()  # noqa: SLF001 - time finds once the value order is merged
        rng = random.Random(1)
        gets: list[float] = []
        finds: list[float] = []
        for _ in range(20_000):
            i = rng.randrange(keys)
            started = time.perf_counter_ns()
            db.get(_key(i))
            gets.append(time.perf_counter_ns() - started)
        for _ in range(2_000):
            i = rng.randrange(keys)
            started = time.perf_counter_ns()
            db.find(_value(i), limit=10)
            finds.append(time.perf_counter_ns() - started)
        disk = sum(p.stat().st_size for p in path.iterdir())
        db.close()
        return {
            "get_ns": statistics.median(gets),
            "find_ns": statistics.median(finds),
            "disk": disk,
        }
    raise ValueError(name)


def _run(name: str, path: Path, keys: int, order: str = "sequential") -> dict[str, Any]:
    out = subprocess.run(
        [
            *(sys.executable, __file__, "--step", name, "--dir", str(path)),
            *("--keys", str(keys), "--order", order),
            *(() if active_hint_bytes is None else ("--active-hint-bytes", str(active_hint_bytes))),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keys", type=int, default=10_000_000)
    parser.add_argument("--quick", action="store_true", help="1,000,000 keys")
    parser.add_argument("--order", choices=["sequential", "random"], default="sequential")
    parser.add_argument("--tmpdir", default=None)
    parser.add_argument(
        "--active-hint-bytes",
        type=int,
        default=None,
        help="the store's active_hint_bytes (default: the store's own default, 32 MiB)",
    )
    parser.add_argument("--step", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--dir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    keys = 1_000_000 if args.quick else args.keys
    global active_hint_bytes
    active_hint_bytes = args.active_hint_bytes
    if args.step:
        print(json.dumps(step(args.step, Path(args.dir), keys, args.order)))
        return
    root = bench_tmpdir(args.tmpdir)
    path = root / "scale-db"
    shutil.rmtree(path, ignore_errors=True)
    mib = 1 << 20
    try:
        load = _run("load", path, keys, args.order)
        plain = _run("reopen", path, keys)
        _run("tail", path, keys)
        tail = _run("reopen", path, keys)
        compact = _run("compact", path, keys)
        compacted = _run("reopen", path, keys)
        reads = _run("reads", path, keys)
    finally:
        shutil.rmtree(path, ignore_errors=True)
    per_key = load["rss"] / keys
    rows = [
        ("load", f"{keys / load['seconds']:,.0f} puts/s ({load['seconds']:.1f} s)", "", None),
        (
            "RSS after load",
            f"{load['rss'] / mib:,.0f} MiB = {per_key:.0f} B/key",
            "<= 190 B/key",
            per_key / 190,
        ),
        (
            "RSS after load, fold done",
            f"{load['folded'] / mib:,.0f} MiB = {load['folded'] / keys:.0f} B/key",
            "<= 190 B/key",
            load["folded"] / keys / 190,
        ),
        (
            "fold steps (store lock held)",
            f"{load['fold_steps']} steps, median {load['median_step'] * 1000:.0f} ms, "
            f"longest {load['longest_step'] * 1000:.0f} ms",
            "",
            None,
        ),
        (
            "load peak RSS",
            f"{load['peak'] / mib:,.0f} MiB",
            "<= 1.2x steady",
            load["peak"] / load["rss"] / 1.2,
        ),
        ("reopen, never compacted", f"{plain['seconds']:.2f} s", "<= 6 s", plain["seconds"] / 6),
        ("value order merged (background)", f"{plain['merged']:.2f} s after open began", "", None),
        (
            "RSS after that reopen",
            f"{plain['rss'] / mib:,.0f} MiB = {plain['rss'] / keys:.0f} B/key",
            "<= 190 B/key",
            plain["rss"] / keys / 190,
        ),
        ("reopen, 64 MiB unsealed tail", f"{tail['seconds']:.2f} s", "", None),
        ("compact()", f"{compact['seconds']:.1f} s", "", None),
        (
            "compaction peak RSS",
            f"{compact['peak'] / mib:,.0f} MiB ({compact['peak'] / compact['steady']:.2f}x "
            f"steady {compact['steady'] / mib:,.0f} MiB)",
            "<= 1.3x steady",
            compact["peak"] / compact["steady"] / 1.3,
        ),
        (
            "reopen after compaction",
            f"{compacted['seconds']:.2f} s",
            "<= 6 s",
            compacted["seconds"] / 6,
        ),
        (
            "value order merged (background)",
            f"{compacted['merged']:.2f} s after open began",
            "",
            None,
        ),
        ("get, median", f"{reads['get_ns'] / 1000:.1f} us", "", None),
        ("find, median", f"{reads['find_ns'] / 1000:.1f} us", "", None),
        ("disk bytes", f"{reads['disk'] / mib:,.0f} MiB", "", None),
    ]
    info = machine_info(root)
    described = ", ".join(f"{k}={v}" for k, v in info.items())
    print(f"bench/scale.py --keys {keys:,} --order {args.order}  ({described})")
    print(f"{'measure':<30} {'figure':<48} {'target':<16} {'/target':>8}")
    for measure, figure, target, ratio in rows:
        shown = "" if ratio is None else f"{ratio:.2f} {'PASS' if ratio <= 1 else 'MISS'}"
        print(f"{measure:<30} {figure:<48} {target:<16} {shown:>8}")
    print(f"uptime: {os.popen('uptime').read().strip()}")


if __name__ == "__main__":
    main()
