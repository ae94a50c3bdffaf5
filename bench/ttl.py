"""Keys that expire at scale: exact for reads, swept in time, and reads keep their speed.

Issue 12's TTL target: 1,000,000 keys whose TTLs run out over 10 s are all gone for reads by their
time, all swept (a durable ``expire`` record each) within 30 s, while GET throughput stays at
least 0.8x that of the same store without expiries, measured in the same run.

Two stores of N keys (16-byte keys, 100-byte values, fsync="never", as bench/scale.py loads), one
plain, one whose keys expire evenly over the window. On each, a reader thread gets random keys
as fast as it can while the window runs and the sweeper works (engine calls, in process: the
reader competes with the sweeper thread for the store lock and the GIL, the harshest place to
see the sweeper's cost). Each get of a key whose expiry has passed must come back empty: every
one that does not is counted as a violation.

The expiring store is opened with a clock skewed back after loading, so its window starts two
seconds after the load ends whatever the load took (expiries are absolute times; the skew only
sets what "now" is, for reads and the sweeper alike).

    .venv/bin/python bench/ttl.py [--keys 1000000] [--window 10]
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import threading
import time
from pathlib import Path

from _common import RESULTS_DIR, CpuWatch, describe_load, machine_info, wait_for_quiet

from filekv.engine import Put, Store, StoreOptions

BATCH = 1000
LEAD = 2.0  # seconds from the end of the load to the first expiry
SWEEP_LIMIT = 30.0  # the target: all swept within this many seconds of the window's end


def key_of(i: int) -> str:
    return f"key-{i:012d}"


def load(store: Store, keys: int, expiries: list[float] | None) -> None:
    value = b"v" * 100
    for first in range(0, keys, BATCH):
        ops = []
        now = store.now()
        for i in range(first, min(first + BATCH, keys)):
            ttl = None if expiries is None else expiries[i] - now
            ops.append(Put(key_of(i), value, None, ttl))
        store.batch(ops)


class Reader(threading.Thread):
    """Random gets until stopped: gets per one-second interval, and expired keys still read."""

    def __init__(self, store: Store, keys: int, expiries: list[float] | None) -> None:
        super().__init__(daemon=True)
        self.store, self.keys, self.expiries = store, keys, expiries
        self.stop = threading.Event()
        self.per_second: list[int] = []
        self.violations = 0
        self.checked_expired = 0

    def run(self) -> None:
        store, keys, expiries = self.store, self.keys, self.expiries
        rng = random.Random(7)
        count = 0
        tick = time.monotonic() + 1
        while not self.stop.is_set():
            i = rng.randrange(keys)
            now = store.now()  # before the read: a key expired by now must read as gone
            entry = store.entry(key_of(i))
            if expiries is not None and expiries[i] <= now:
                self.checked_expired += 1  # about: its own expiry is a ttl counted at write time
            # A key read back must not have expired before the read began: its own expiry (the
            # one stored with it) is what every read compares with the clock.
            if entry is not None and entry.expires_at is not None and entry.expires_at <= now:
                self.violations += 1
            count += 1
            if time.monotonic() >= tick:
                self.per_second.append(count)
                count = 0
                tick += 1


def run_plain(folder: Path, keys: int, seconds: float) -> float:
    options = StoreOptions(fsync="never", auto_compact=False)
    with Store.open(folder, options) as store:
        load(store, keys, None)
        reader = Reader(store, keys, None)
        reader.start()
        time.sleep(seconds)
        reader.stop.set()
        reader.join()
    return statistics.median(reader.per_second)


def run_expiring(folder: Path, keys: int, window: float) -> dict[str, float]:
    skew = [0.0]
    options = StoreOptions(fsync="never", auto_compact=False)
    start_guess = time.time() + 3600.0  # far enough that nothing expires during the load
    expiries = [start_guess + window * i / keys for i in range(keys)]
    with Store.open(folder, options, clock=lambda: time.time() + skew[0]) as store:
        load(store, keys, expiries)
        loaded_revision = store.revision
        skew[0] = start_guess - LEAD - time.time()  # the window now opens LEAD s from here
        window_start = time.monotonic() + LEAD
        reader = Reader(store, keys, expiries)
        reader.start()
        swept_at = None
        while time.monotonic() < window_start + window + SWEEP_LIMIT + 5:
            if store.revision - loaded_revision >= keys:
                swept_at = time.monotonic()
                break
            time.sleep(0.05)
        reader.stop.set()
        reader.join()
        left = keys - (store.revision - loaded_revision)  # expire records not yet written
    # The reader's rate while expiries are due (the window and the sweep after it).
    during = reader.per_second[int(LEAD) :] or reader.per_second
    return {
        "gets_per_s": statistics.median(during),
        "swept_after_window_s": (swept_at - (window_start + window)) if swept_at else float("nan"),
        "violations": reader.violations,
        "checked_expired": reader.checked_expired,
        "left": left,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--window", type=float, default=10.0)
    parser.add_argument("--tmpdir", default=None)
    parser.add_argument(
        "--quiet-wait", type=float, default=60.0, help="seconds to wait for a quiet machine"
    )
    args = parser.parse_args()
    wait_for_quiet(args.quiet_wait, log=print)
    with tempfile.TemporaryDirectory(dir=args.tmpdir, prefix="filekv-ttl-") as root:
        info = machine_info(Path(root))
        watch = CpuWatch()
        expiring = run_expiring(Path(root) / "expiring", args.keys, args.window)
        plain = run_plain(Path(root) / "plain", args.keys, args.window + 5)
        load_line = describe_load(watch.summary())
    ratio = expiring["gets_per_s"] / plain
    swept = expiring["swept_after_window_s"]
    rows = [
        ("keys, expiring evenly over", f"{args.keys:,} over {args.window:g} s", ""),
        (
            "reads of an expired key that found it (must be 0)",
            f"{expiring['violations']:.0f} in {expiring['checked_expired']:,.0f} reads",
            "PASS" if expiring["violations"] == 0 else "FAIL",
        ),
        (
            "all swept, after the last expiry",
            f"{swept:.1f} s" if swept == swept else "not within the limit",
            "PASS" if swept == swept and swept <= SWEEP_LIMIT else "MISS",
        ),
        ("expiries not yet written at the end", f"{expiring['left']:,.0f}", ""),
        ("gets/s, plain store (median of 1 s)", f"{plain:,.0f}", ""),
        ("gets/s, while expiring and sweeping", f"{expiring['gets_per_s']:,.0f}", ""),
        ("ratio (target >= 0.8x)", f"{ratio:.2f}x", "PASS" if ratio >= 0.8 else "MISS"),
    ]
    width = max(len(r[0]) for r in rows)
    lines = [
        f"bench/ttl.py --keys {args.keys} --window {args.window:g}",
        f"machine: {info}",
        f"other load: {load_line}",
        "",
        *(f"{name:<{width}}  {value:>28}  {verdict}" for name, value, verdict in rows),
    ]
    text = "\n".join(lines)
    print(text)
    RESULTS_DIR.mkdir(exist_ok=True)
    (RESULTS_DIR / "ttl.txt").write_text(text + "\n")


if __name__ == "__main__":
    main()
