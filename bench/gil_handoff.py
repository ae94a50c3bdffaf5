"""What one hand-off between two Python threads costs on this machine (a benchmark, not a test).

Every durable put from a thread parks that thread until an fsync covers it and then wakes it:
at least one hand-off of the GIL per put, whatever the store does. Two threads ping-pong a pair
of locks here, first free to run on any CPU, then both pinned to one CPU (where a wake-up needs
no cross-CPU interrupt), so the figure that bounds bench/engine.py's "32 threads, durable" row
can be checked on its own:

    .venv/bin/python bench/gil_handoff.py            # 3 runs of 100,000 round trips each way
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
from _thread import allocate_lock


def ping_pong(round_trips: int) -> float:
    """Microseconds per hand-off: one thread releases, the other wakes, and back."""
    ping, pong = allocate_lock(), allocate_lock()
    ping.acquire()
    pong.acquire()

    def other() -> None:
        for _ in range(round_trips):
            ping.acquire()
            pong.release()

    thread = threading.Thread(target=other)
    thread.start()
    start = time.perf_counter()
    for _ in range(round_trips):
        ping.release()
        pong.acquire()
    elapsed = time.perf_counter() - start
    thread.join()
    return elapsed / round_trips / 2 * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--round-trips", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cpu", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        if args.cpu is not None:
            os.sched_setaffinity(0, {args.cpu})
        print(ping_pong(args.round_trips))
        return
    cpus = sorted(os.sched_getaffinity(0))
    rows = [("any CPU", None)]
    if len(cpus) > 1:
        rows.append((f"pinned to CPU {cpus[0]}", cpus[0]))
    print(f"{len(cpus)} CPUs, CPython {sys.version.split()[0]}, {args.round_trips:,} round trips")
    for label, cpu in rows:
        runs = []
        for _ in range(args.runs):
            # A fresh process per run, so pinning one run does not pin the next.
            command = [sys.executable, __file__, "--child", f"--round-trips={args.round_trips}"]
            if cpu is not None:
                command.append(f"--cpu={cpu}")
            out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            runs.append(float(out))
        median = statistics.median(runs)
        shown = ", ".join(f"{r:.1f}" for r in runs)
        print(
            f"{label:>16}: {median:5.1f} µs per hand-off (runs: {shown}) "
            f"= at most {1e6 / median:,.0f} parked-and-woken puts/s"
        )


if __name__ == "__main__":
    main()
