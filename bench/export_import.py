"""Export and import over HTTP on loopback, beside single PUT, in one run (issue 11).

    python bench/export_import.py [--keys 1000000] [--repeats 3] [--duration 10]

Each round starts a fresh ``filekv serve`` (fsync=always, log level warning) on an empty data
directory and runs, one after the other:

- ``filekv import FILE --url`` of ``--keys`` keys (100-byte values; batches of 1000 through
  ``POST /batch``): keys/s, wall time of the CLI process, and the CPU seconds the CLI and the
  server each spent (where the time goes);
- ``filekv export -o FILE --url`` of those keys: keys/s, and the same CPU split;
- ``PUT /keys/{key}``, one key per request, from wrk with 64 connections, and from one client
  in a loop (what importing key by key gets): keys/s.

Then, for comparison, ``filekv import --data-dir`` (offline, no HTTP), and in this process the
snapshot an export takes: how long ``Store.snapshot`` holds the store lock (the pause writers
see) for the whole store and for prefixes of 10 % and 1 % of it, and its memory per key.
Medians of the rounds; the target (issue 11) is >= 30,000 keys/s for import and for export.
This is a benchmark, not a test: it asserts nothing.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path, where bench/http.py would shadow
# the standard library's ``http`` package for everything imported later (httpx).
_HERE = str(Path(__file__).resolve().parent)
if sys.path and sys.path[0] in (_HERE, ""):
    sys.path.append(sys.path.pop(0))

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402
from typing import Any  # noqa: E402

import httpx  # noqa: E402
import orjson  # noqa: E402
from _common import (  # noqa: E402
    RESULTS_DIR,
    CpuWatch,
    bench_tmpdir,
    describe_load,
    fmt_rate,
    machine_info,
    wait_for_quiet,
)

VENV_BIN = Path(sys.executable).parent
FILEKV = str(VENV_BIN / "filekv")
VALUE_LEN = 100
TARGET = 30_000


def key_of(i: int) -> str:
    return f"key:{i:012d}"


def value_of(i: int) -> str:
    head = f"value-{i:012d}-"
    return head + "v" * (VALUE_LEN - len(head))


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_input(path: Path, n: int) -> None:
    with path.open("wb") as handle:
        for first in range(0, n, 10_000):
            handle.write(
                b"".join(
                    orjson.dumps({"key": key_of(i), "value": value_of(i)}) + b"\n"
                    for i in range(first, min(n, first + 10_000))
                )
            )


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a running process (its threads included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class FilekvServer:
    def __init__(self, folder: Path, log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = [FILEKV, "serve", "--data-dir", str(folder), "--port", str(self.port)]
        argv += ["--fsync", "always", "--log-level", "warning"]
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {log_path.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError("server did not start")

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)
        self._log.close()


def run_cli(args: list[str]) -> float:
    """Run ``filekv ARGS`` to its end: wall seconds."""
    started = time.perf_counter()
    done = subprocess.run([FILEKV, *args], capture_output=True, timeout=3600, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"filekv {' '.join(args)} failed: {done.stderr.decode()[-2000:]}")
    return time.perf_counter() - started


def children_cpu() -> float:
    """CPU seconds of every child process waited for so far (the CLI runs)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed_cli(server: FilekvServer, args: list[str]) -> dict[str, float]:
    server_before = server.cpu()
    cli_before = children_cpu()
    wall = run_cli(args)
    return {
        "seconds": wall,
        "cli_cpu_s": children_cpu() - cli_before,
        "server_cpu_s": server.cpu() - server_before,
    }


PUT_LUA = r"""
local threads = {}
function setup(thread) thread:set("id", #threads); table.insert(threads, thread) end
function init(args) math.randomseed(4242 + id * 7919) end
request = function()
  local i = math.random(0, N - 1)
  local head = string.format("value-%012d-", i)
  local body = '{"value": "' .. head .. string.rep("v", VALUE_LEN - #head) .. '"}'
  return wrk.format("PUT", string.format("/keys/key:%012d", i),
                    {["Content-Type"] = "application/json"}, body)
end
function done(summary, latency, requests)
  io.write(string.format('WRKJSON {"requests": %d, "duration_us": %d, "errors": %d}\n',
    summary.requests, summary.duration,
    summary.errors.connect + summary.errors.read + summary.errors.write +
    summary.errors.status + summary.errors.timeout))
end
"""


def put_wrk(server: FilekvServer, tmp: Path, n: int, seconds: float) -> float:
    script = tmp / "put.lua"
    script.write_text(f"local N = {n}\nlocal VALUE_LEN = {VALUE_LEN}\n" + PUT_LUA)
    argv = ["wrk", "-t2", "-c64", f"-d{max(1, round(seconds))}s", "-s", str(script), server.url]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=False)
    for line in done.stdout.splitlines():
        if line.startswith("WRKJSON "):
            summary = json.loads(line.removeprefix("WRKJSON "))
            return float(summary["requests"] / (summary["duration_us"] / 1e6))
    raise RuntimeError(f"wrk gave no summary: {done.stdout} {done.stderr}")


def put_one_client(server: FilekvServer, n: int, seconds: float) -> float:
    count = 0
    with httpx.Client(base_url=server.url, timeout=30) as http:
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            i = count % n
            answer = http.put(f"/keys/{key_of(i)}", json={"value": value_of(i)})
            if answer.status_code >= 300:
                raise RuntimeError(answer.text)
            count += 1
        return count / (time.perf_counter() - started)


def snapshot_costs(folder: Path, n: int) -> dict[str, Any]:
    """The store lock held by Store.snapshot (whole store, 10 %, 1 %), and memory per key."""
    from filekv.engine import Put, Store

    results: dict[str, Any] = {}
    with Store.open(folder, fsync="never", auto_compact=False) as db:
        for first in range(0, n, 1000):
            db.batch([Put(key_of(i), value_of(i).encode()) for i in range(first, first + 1000)])
        fixed = len(key_of(0)) - len(str(n - 1))  # characters every key shares
        prefixes = {  # exact shares when n is a power of ten
            "whole store": "",
            "10 % prefix": key_of(0)[: fixed + 1],
            "1 % prefix": key_of(0)[: fixed + 2],
        }
        for label, prefix in prefixes.items():
            times = []
            for _ in range(5):
                started = time.perf_counter()
                snap = db.snapshot(prefix)
                times.append(time.perf_counter() - started)
                keys = len(snap)
                snap.close()
            results[label] = {"prefix": prefix, "keys": keys, "ms": 1000 * statistics.median(times)}
        tracemalloc.start()
        snap = db.snapshot("")
        size, _peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        results["bytes_per_key"] = size / max(1, len(snap))
        snap.close()
    return results


def run(args: argparse.Namespace) -> dict[str, Any]:
    tmp = bench_tmpdir(args.tmpdir) / f"filekv-export-bench-{os.getpid()}"
    tmp.mkdir(parents=True)
    try:
        log(f"writing {args.keys:,} lines of input")
        source = tmp / "input.jsonl"
        write_input(source, args.keys)
        rows: dict[str, list[dict[str, float]]] = {}
        wait_for_quiet(60, log=log)
        cpu = CpuWatch()
        for round_number in range(args.repeats):
            folder = tmp / f"round{round_number}"
            server = FilekvServer(folder, tmp / "server.log")
            try:
                log(f"round {round_number + 1}: import")
                result = timed_cli(server, ["import", str(source), "--url", server.url])
                rows.setdefault("import", []).append(result)
                log(f"round {round_number + 1}: export")
                out = tmp / "exported.jsonl"
                result = timed_cli(server, ["export", "-o", str(out), "--url", server.url])
                rows.setdefault("export", []).append(result)
                lines = sum(block.count(b"\n") for block in _blocks(out))
                if lines != args.keys:
                    raise RuntimeError(f"exported {lines} lines, not {args.keys}")
                log(f"round {round_number + 1}: PUT")
                rate = put_wrk(server, tmp, args.keys, args.duration)
                rows.setdefault("put_wrk", []).append({"rate": rate})
                rate = put_one_client(server, args.keys, args.duration)
                rows.setdefault("put_one", []).append({"rate": rate})
            finally:
                server.stop()
                shutil.rmtree(folder, ignore_errors=True)
            offline = tmp / f"offline{round_number}"
            wall = run_cli(["import", str(source), "--data-dir", str(offline)])
            rows.setdefault("import_offline", []).append({"seconds": wall})
            shutil.rmtree(offline, ignore_errors=True)
        load = cpu.summary()
        log("snapshot costs")
        snapshot = snapshot_costs(tmp / "snapshot", args.keys)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"rows": rows, "snapshot": snapshot, "load": load}


def _blocks(path: Path) -> Any:
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            yield block


def report(args: argparse.Namespace, data: dict[str, Any]) -> str:
    n = args.keys
    rows = data["rows"]

    def rate_of(name: str) -> float:
        samples = rows[name]
        if "rate" in samples[0]:
            return float(statistics.median(s["rate"] for s in samples))
        return float(statistics.median(n / s["seconds"] for s in samples))

    def cpu_of(name: str, field: str) -> str:
        return f"{statistics.median(s[field] for s in rows[name]):.2f} s"

    put_one = rate_of("put_one")
    lines = [
        f"filekv export/import over HTTP on loopback: {n:,} keys, {VALUE_LEN}-byte values, "
        f"fsync=always, medians of {args.repeats} rounds",
        f"command: python bench/export_import.py --keys {n} --repeats {args.repeats} "
        f"--duration {args.duration:g}",
        "",
        "| row | keys/s | vs one-client PUT | target | CLI CPU | server CPU |",
        "| --- | ---: | ---: | --- | ---: | ---: |",
    ]
    for name, label, target in [
        ("import", "`filekv import FILE --url` (POST /batch, 1000 a batch)", True),
        ("export", "`filekv export -o FILE --url` (GET /export)", True),
        ("put_wrk", "`PUT /keys/{key}`, wrk, 64 connections", False),
        ("put_one", "`PUT /keys/{key}`, one client in a loop", False),
        ("import_offline", "`filekv import FILE --data-dir` (no HTTP)", False),
    ]:
        rate = rate_of(name)
        verdict = ""
        if target:
            verdict = ">= 30,000: " + ("PASS" if rate >= TARGET else "MISS")
        has_cpu = "cli_cpu_s" in rows[name][0]
        lines.append(
            f"| {label} | {fmt_rate(rate)} | {rate / put_one:.1f}x | {verdict} | "
            f"{cpu_of(name, 'cli_cpu_s') if has_cpu else ''} | "
            f"{cpu_of(name, 'server_cpu_s') if has_cpu else ''} |"
        )
    snapshot = data["snapshot"]
    lines += [
        "",
        f"Store.snapshot at {n:,} keys (the store lock is held for the whole call; median of 5):",
        "",
        "| view | keys | lock held |",
        "| --- | ---: | ---: |",
    ]
    for label in ("whole store", "10 % prefix", "1 % prefix"):
        item = snapshot[label]
        lines.append(f"| {label} (`{item['prefix']}`) | {item['keys']:,} | {item['ms']:.1f} ms |")
    lines += [
        "",
        f"memory of a whole-store snapshot: {snapshot['bytes_per_key']:.0f} bytes per key",
        "",
    ]
    for key, value in machine_info(bench_tmpdir(args.tmpdir)).items():
        lines.append(f"- {key}: {value}")
    lines.append(f"- other load: {describe_load(data['load'])}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per PUT row")
    parser.add_argument("--tmpdir", default=None)
    parser.add_argument("--no-save", dest="save", action="store_false")
    args = parser.parse_args()
    data = run(args)
    text = report(args, data)
    print(text)
    if args.save:
        RESULTS_DIR.mkdir(exist_ok=True)
        (RESULTS_DIR / "export_import.txt").write_text(text + "\n")
        (RESULTS_DIR / "export_import.json").write_text(json.dumps(data, indent=2) + "\n")


if __name__ == "__main__":
    main()
