"""Shared helpers for the benchmarks: the machine description, timing samples and formatting.

Kept beside bench/engine.py and bench/http.py (not in src/) because nothing in the product needs it.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"


# --------------------------------------------------------------------------- machine


def _mount_of(path: Path) -> tuple[str, str, str]:
    """(mount point, device, filesystem type) holding ``path``: the longest matching mount."""
    real = str(path.resolve())
    best = ("?", "?", "?")
    best_len = -1
    try:
        lines = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return best
    for line in lines:
        parts = line.split()
        if len(parts) < 3:
            continue
        device, mount_point, fstype = parts[0], parts[1], parts[2]
        inside = real == mount_point or real.startswith(mount_point.rstrip("/") + "/")
        if inside and len(mount_point) > best_len:
            best, best_len = (mount_point, device, fstype), len(mount_point)
    return best


def bench_tmpdir(requested: str | None) -> Path:
    """A scratch folder on a real disk: the system temp dir unless it is tmpfs or another disk.

    Benchmarking fsync on tmpfs would measure memory, not the disk /work lives on.
    """
    if requested:
        path = Path(requested)
        path.mkdir(parents=True, exist_ok=True)
        return path
    system_tmp = Path(tempfile.gettempdir())
    work = Path("/work") if Path("/work").exists() else BENCH_DIR
    same_disk = system_tmp.stat().st_dev == work.stat().st_dev
    if _mount_of(system_tmp)[2] != "tmpfs" and same_disk:
        return system_tmp
    fallback = BENCH_DIR / ".tmp"
    fallback.mkdir(exist_ok=True)
    return fallback


def machine_info(tmpdir: Path) -> dict[str, str]:
    cpu_model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "?"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) // 1024} MiB"
                break
    except OSError:
        pass
    mount_point, device, fstype = _mount_of(tmpdir)
    return {
        "cpus (nproc)": str(len(os.sched_getaffinity(0))),
        "cpu model": cpu_model,
        "memory": mem,
        "kernel": platform.release(),
        "python": f"{platform.python_implementation()} {sys.version.split()[0]}",
        "temp dir": f"{tmpdir} ({fstype} on {device}, mounted at {mount_point})",
    }


# --------------------------------------------------------------------------- samples


@dataclass
class Sample:
    """One timed repetition: ``count`` operations in ``seconds``, with per-operation latencies."""

    count: int
    seconds: float
    latencies_ns: list[int] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds > 0 else float("nan")


@dataclass
class Result:
    """Repetitions of one measure on one system; the rate is the median of the repetitions."""

    measure: str
    system: str
    samples: list[Sample]
    note: str = ""

    @property
    def rate(self) -> float:
        return statistics.median(s.rate for s in self.samples)

    @property
    def count(self) -> int:
        return sum(s.count for s in self.samples)

    def percentiles_ns(self) -> dict[str, float]:
        """median, p90, p99, max of per-op latency, pooled over every repetition."""
        pooled = sorted(x for s in self.samples for x in s.latencies_ns)
        if not pooled:
            return {}
        n = len(pooled)

        def at(q: float) -> float:
            return float(pooled[min(n - 1, int(q * n))])

        return {"median": at(0.5), "p90": at(0.9), "p99": at(0.99), "max": float(pooled[-1])}

    def to_json(self) -> dict[str, object]:
        return {
            "measure": self.measure,
            "system": self.system,
            "ops_per_s": self.rate,
            "repeats": [{"count": s.count, "seconds": s.seconds} for s in self.samples],
            "latency_ns": self.percentiles_ns(),
            "note": self.note,
        }


# --------------------------------------------------------------------------- formatting


def fmt_rate(rate: float) -> str:
    if rate != rate:  # NaN
        return "—"
    if rate >= 100:
        return f"{rate:,.0f}"
    if rate >= 1:
        return f"{rate:,.1f}"
    return f"{rate:.3f}"


def fmt_ns(ns: float | None) -> str:
    if ns is None:
        return "—"
    if ns < 1_000_000:
        return f"{ns / 1000:.1f} µs"
    if ns < 1_000_000_000:
        return f"{ns / 1_000_000:.2f} ms"
    return f"{ns / 1_000_000_000:.2f} s"


def fmt_ratio(ratio: float | None) -> str:
    if ratio is None or ratio != ratio:
        return "—"
    if 0 < ratio < 0.01:
        return f"{ratio:.1e}x"
    return f"{ratio:.2f}x"


def rss_bytes() -> int:
    """Resident set size of this process right now (from /proc/self/statm)."""
    resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


# --------------------------------------------------------------------------- other load


def _cpu_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine since boot, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal
    return total - idle, total


def _own_cpu_seconds() -> float:
    import resource

    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)  # waited-for children: servers, wrk
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


class CpuWatch:
    """How much of the machine's CPU went to *other* processes while a benchmark ran.

    The machines this runs on are shared (test suites run beside it), so every report says how
    busy the machine was besides the benchmark itself; above a few percent, treat numbers as noisy.
    """

    def __init__(self) -> None:
        self.busy0, _ = _cpu_jiffies()
        self.own0 = _own_cpu_seconds()
        self.wall0 = time.monotonic()

    def summary(self) -> dict[str, float]:
        busy1, _ = _cpu_jiffies()
        wall = time.monotonic() - self.wall0
        hz = os.sysconf("SC_CLK_TCK")
        cpus = len(os.sched_getaffinity(0))
        busy_s = (busy1 - self.busy0) / hz
        own_s = _own_cpu_seconds() - self.own0
        capacity = wall * cpus
        return {
            "wall_s": wall,
            "machine_busy_pct": 100 * busy_s / capacity if capacity else 0.0,
            "benchmark_pct": 100 * own_s / capacity if capacity else 0.0,
            "others_pct": max(0.0, 100 * (busy_s - own_s) / capacity) if capacity else 0.0,
        }


def describe_load(summary: dict[str, float]) -> str:
    return (
        f"{summary['others_pct']:.0f}% of all CPUs went to other processes during the run "
        f"(machine {summary['machine_busy_pct']:.0f}% busy, this benchmark "
        f"{summary['benchmark_pct']:.0f}%)"
    )


def wait_for_quiet(max_wait_s: float, threshold_pct: float = 10.0, log: Any = None) -> float:
    """Wait (up to ``max_wait_s``) until the machine is nearly idle for 3 s; return its busy %."""
    deadline = time.monotonic() + max_wait_s
    cpus = len(os.sched_getaffinity(0))
    hz = os.sysconf("SC_CLK_TCK")
    while True:
        busy0, _ = _cpu_jiffies()
        time.sleep(3.0)
        busy1, _ = _cpu_jiffies()
        busy_pct = 100 * (busy1 - busy0) / hz / (3.0 * cpus)
        if busy_pct <= threshold_pct or time.monotonic() >= deadline:
            if busy_pct > threshold_pct and log is not None:
                log(f"machine still {busy_pct:.0f}% busy after waiting; running anyway")
            return busy_pct
        if log is not None:
            log(f"machine {busy_pct:.0f}% busy with other work; waiting for it to quieten")
