"""Watch benchmark (issue 12): many SSE watchers on one ``filekv serve``, and publish's cost.

    python bench/watch.py [--watchers 1000] [--prefixes 100] [--rate 1000] [--seconds 10]
                          [--wait-quiet 120]
    python bench/watch.py --part publish      # only the in-process put with and without the feed

Part "publish": ``Store.put`` (fsync=never, in process) with the change feed as it is, beside the
same store with ``publish`` replaced by a no-op (the difference is what the feed costs a put),
and ``ChangeFeed.publish`` alone; rounds interleaved, medians of the rounds.

Part "sse": a real ``filekv serve`` (fsync=always) in its own process; this process opens
``--watchers`` ``GET /watch`` streams (asyncio raw sockets on uvloop: a minimal HTTP/1.1 reader),
``--watchers / --prefixes`` of them on each prefix ``p<i>/``, then writes ``--rate`` puts a
second for ``--seconds`` over 32 keep-alive connections, each put to the next prefix in turn with
its send time (``time.monotonic()``) in the value. Every watcher must receive every event of its
prefix, each once; put-to-event latency is measured at the watcher (same clock); the server's
RSS is sampled every 100 ms (growth: peak minus the RSS with every watcher connected, before the
first put) and its CPU read from /proc. The client (1,000 sockets, parsing every event) runs in
this process on the same 2 cores: its CPU is reported beside the server's. Asserts nothing.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path, where bench/http.py would shadow
# the standard library's ``http`` package for everything imported later (httpx, uvicorn).
_HERE = str(Path(__file__).resolve().parent)
if sys.path and sys.path[0] in (_HERE, ""):
    sys.path.append(sys.path.pop(0))

import argparse  # noqa: E402
import asyncio  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402

import orjson  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from _common import (  # noqa: E402
    CpuWatch,
    bench_tmpdir,
    describe_load,
    machine_info,
    wait_for_quiet,
)
from support.server import Server  # noqa: E402

from filekv.engine import Store  # noqa: E402

WRITERS = 32  # keep-alive connections, one put in flight each: 1,000/s even at 30 ms a put


# --------------------------------------------------------------------------- publish


def bench_publish(rounds: int, puts: int, tmp: Path) -> None:
    def run(db: Store, offset: int) -> float:
        value = b"v" * 100
        start = time.perf_counter()
        for i in range(puts):
            db.put(f"k{(offset + i) % 1000}", value)
        return (time.perf_counter() - start) / puts * 1e9

    with (
        Store.open(tmp / "feed", fsync="never", auto_compact=False) as with_feed,
        Store.open(tmp / "nofeed", fsync="never", auto_compact=False) as without,
    ):
        # The baseline: the same put with publish doing nothing (white box, on purpose).
        without._writer._feed.publish = lambda *args: None  # type: ignore[method-assign]  # noqa: SLF001
        on: list[float] = []
        off: list[float] = []
        for r in range(rounds):
            on.append(run(with_feed, r * puts))
            off.append(run(without, r * puts))
        feed = with_feed._feed  # noqa: SLF001
        value = b"v" * 100
        start = time.perf_counter()
        for i in range(puts):
            feed.publish(10**9 + i, "put", "k", value, None)
        alone = (time.perf_counter() - start) / puts * 1e9
    print(f"\n## publish: Store.put in process, fsync=never, 100-byte values, {rounds} rounds")
    print("| measure | median ns/put | ratio |")
    print("| --- | ---: | ---: |")
    print(
        f"| put, change feed on | {statistics.median(on):,.0f} | "
        f"{statistics.median(on) / statistics.median(off):.3f}x |"
    )
    print(f"| put, publish a no-op (baseline) | {statistics.median(off):,.0f} | 1.000x |")
    print(f"| ChangeFeed.publish alone | {alone:,.0f} | — |")


# --------------------------------------------------------------------------- sse


@dataclass
class WatchStats:
    prefix: str
    keys: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    connected: bool = False


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    status = int((await reader.readline()).split()[1])
    headers: dict[str, str] = {}
    while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers


async def watcher(port: int, stats: WatchStats, ready: asyncio.Event) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
    writer.write(f"GET /watch?prefix={stats.prefix} HTTP/1.1\r\nHost: b\r\n\r\n".encode())
    status, headers = await _read_head(reader)
    assert status == 200, status
    chunked = headers.get("transfer-encoding") == "chunked"
    stats.connected = True
    ready.set()
    monotonic = time.monotonic
    loads = orjson.loads
    pending = b""
    try:
        while True:
            if chunked:
                size = int((await reader.readline()).strip(), 16)
                if size == 0:
                    return
                chunk = await reader.readexactly(size + 2)
                pending += chunk[:-2]
            else:
                chunk = await reader.read(65536)
                if not chunk:
                    return
                pending += chunk
            *events, pending = pending.split(b"\n\n")
            now = monotonic()
            for event in events:
                for line in event.split(b"\n"):
                    if line.startswith(b"data: "):
                        data = loads(line[6:])
                        stats.keys.append(data["key"])
                        stats.latencies.append(now - float(data["value"]))
    finally:
        writer.close()


async def put_writer(
    port: int, index: int, rate: float, seconds: float, prefixes: int, sent: dict[str, list[str]]
) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    interval = WRITERS / rate
    start = time.monotonic()
    count = 0
    while True:
        due = start + count * interval + index * interval / WRITERS
        if due - start >= seconds:
            return count
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        number = count * WRITERS + index
        prefix = f"p{number % prefixes}/"
        key = f"{prefix}{number}"
        body = orjson.dumps({"value": repr(time.monotonic())})
        writer.write(
            f"PUT /keys/{key} HTTP/1.1\r\nHost: b\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        status, headers = await _read_head(reader)
        await reader.readexactly(int(headers["content-length"]))
        assert status in (200, 201), status
        sent[prefix].append(key)
        count += 1


def _proc_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def bench_sse(args: argparse.Namespace, tmp: Path) -> None:
    server = Server(
        tmp / "data",
        tmp / "server.log",
        log_level="warning",
        watch_max_watchers=args.watchers + 10,
        watch_queue_events=10_000,
    )
    server.start()
    assert server.process is not None
    pid = server.process.pid
    try:
        stats = [WatchStats(f"p{i % args.prefixes}/") for i in range(args.watchers)]
        tasks = []
        for first in range(0, len(stats), 100):  # connect in waves: the accept backlog
            ready = [asyncio.Event() for _ in stats[first : first + 100]]
            for s, r in zip(stats[first : first + 100], ready, strict=True):
                tasks.append(asyncio.create_task(watcher(server.port, s, r)))
            await asyncio.wait_for(asyncio.gather(*(r.wait() for r in ready)), 60)
        await asyncio.sleep(1.0)
        rss_base = _proc_rss(pid)
        rss_peak = rss_base
        cpu0, own0, wall0 = _proc_cpu(pid), time.process_time(), time.monotonic()
        load = CpuWatch()
        sent: dict[str, list[str]] = defaultdict(list)

        async def sample_rss() -> None:
            nonlocal rss_peak
            while True:
                rss_peak = max(rss_peak, _proc_rss(pid))
                await asyncio.sleep(0.1)

        sampler = asyncio.create_task(sample_rss())
        counts = await asyncio.gather(
            *(
                put_writer(server.port, i, args.rate, args.seconds, args.prefixes, sent)
                for i in range(WRITERS)
            )
        )
        write_wall = time.monotonic() - wall0
        total = sum(counts)
        deadline = time.monotonic() + 30
        expected = {p: sorted(keys) for p, keys in sent.items()}
        while time.monotonic() < deadline:
            if all(len(s.keys) >= len(expected.get(s.prefix, [])) for s in stats):
                break
            await asyncio.sleep(0.1)
        wall = time.monotonic() - wall0
        server_cpu = _proc_cpu(pid) - cpu0
        own_cpu = time.process_time() - own0
        sampler.cancel()
        summary = load.summary()
        complete = sum(sorted(s.keys) == expected.get(s.prefix, []) for s in stats)
        latencies = sorted(x for s in stats for x in s.latencies)
        events = len(latencies)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        server.stop()

    def ms(q: float) -> str:
        return f"{latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000:.1f}"

    expected_events = total * args.watchers // args.prefixes
    growth = (rss_peak - rss_base) / 2**20
    rows = [
        ("puts written", f"{total:,} ({total / write_wall:,.0f}/s)", "1,000/s"),
        ("events delivered", f"{events:,} (expected {expected_events:,})", "all"),
        (
            "watchers with every event of their prefix, each once",
            f"{complete} / {len(stats)}",
            "all",
        ),
        ("put-to-event latency median", f"{ms(0.5)} ms", "<= 20 ms"),
        (
            "put-to-event latency p90 / p99 / max",
            f"{ms(0.9)} / {ms(0.99)} / {ms(1.0)} ms",
            "p99 <= 200 ms",
        ),
        ("server RSS with the watchers connected", f"{rss_base / 2**20:.1f} MiB", "—"),
        ("server RSS growth while writing (peak - that)", f"{growth:.1f} MiB", "<= 50 MB"),
        ("server CPU", f"{server_cpu / wall:.0%} of one core", "—"),
        ("client CPU (watchers + writers, this process)", f"{own_cpu / wall:.0%} of one core", "—"),
    ]
    print(
        f"\n## sse: {args.watchers} watchers on {args.prefixes} prefixes, "
        f"{args.rate:.0f} puts/s for {args.seconds:.0f} s (fsync=always, {WRITERS} writers)"
    )
    print("| measure | value | target |")
    print("| --- | ---: | --- |")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(f"\nother load: {describe_load(summary)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=["all", "publish", "sse"], default="all")
    parser.add_argument("--watchers", type=int, default=1000)
    parser.add_argument("--prefixes", type=int, default=100)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--tmpdir", default=None)
    parser.add_argument(
        "--wait-quiet", type=float, default=120.0, help="seconds to wait for an idle machine"
    )
    args = parser.parse_args()
    wait_for_quiet(args.wait_quiet, log=lambda message: print(f"({message})", flush=True))
    base = bench_tmpdir(args.tmpdir)
    print("# bench/watch.py")
    for name, value in machine_info(base).items():
        print(f"- {name}: {value}")
    with tempfile.TemporaryDirectory(dir=base) as scratch:
        tmp = Path(scratch)
        if args.part in ("all", "publish"):
            bench_publish(args.rounds, 20_000, tmp)
        if args.part in ("all", "sse"):
            import uvloop

            uvloop.run(bench_sse(args, tmp))


if __name__ == "__main__":
    main()
