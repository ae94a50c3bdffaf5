"""HTTP benchmark: the real ``filekv serve`` side by side with a trivial FastAPI app.

    python bench/http.py [--duration 10] [--connections 64] [--big 1000000] [--quick]
    python bench/http.py --metrics-cost [--repeats 5]    # issue 11: what metrics and logs cost

Both servers run with the same uvicorn settings as ``filekv serve`` (uvloop, httptools, one worker,
lifespan on, log level warning), on 127.0.0.1 and a free port, in their own processes. The load
comes from a separate process: wrk (Debian's ``wrk``, PUT/POST bodies via a Lua script) if it is
installed, else an asyncio httpx loader. Data directories are preloaded with the engine directly
(much faster than over HTTP), then served with fsync=always.

Ratios (issue 3): GET /keys/{key} at 100k keys vs trivial GET; PUT /keys/{key} vs trivial POST;
GET /keys?value= at 1M keys vs at 10k keys. This is a benchmark, not a test: it asserts nothing.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path, where this file would shadow the
# standard library's ``http`` package for everything imported later (httpx, uvicorn, asyncio).
_HERE = str(Path(__file__).resolve().parent)
if sys.path and sys.path[0] in (_HERE, ""):
    sys.path.append(sys.path.pop(0))

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from typing import Any  # noqa: E402

from _common import (  # noqa: E402
    RESULTS_DIR,
    CpuWatch,
    bench_tmpdir,
    describe_load,
    fmt_rate,
    machine_info,
    wait_for_quiet,
)
from console_load import CONSOLE_KEYS, console_table, measure_console_load  # noqa: E402
from pydantic import BaseModel  # noqa: E402

VENV_BIN = Path(sys.executable).parent
VALUE_LEN = 100
BATCH = 100  # puts per POST /batch request


def key_of(i: int) -> str:
    return f"key:{i:012d}"


def value_of(i: int, distinct: int) -> str:
    head = f"value-{i % distinct:012d}-"
    return head + "v" * (VALUE_LEN - len(head))


# --------------------------------------------------------------------------- servers


class ValueIn(BaseModel):
    """The trivial POST's body; at module level so FastAPI can resolve the string annotation."""

    value: str


def trivial_app() -> Any:
    """The framework's ceiling: a constant JSON GET and a small pydantic POST, idiomatic FastAPI."""
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/const")
    async def const() -> dict[str, Any]:
        return {"key": "key:000000000042", "value": value_of(42, 10), "revision": 42}

    @app.post("/echo", status_code=201)
    async def echo(body: ValueIn) -> dict[str, Any]:
        return {"key": "key:000000000042", "value": body.value, "revision": 43, "staged": False}

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def serve_trivial(port: int) -> None:
    """Child mode: the trivial app under the same uvicorn.Config as ``filekv serve``."""
    import uvicorn

    config = uvicorn.Config(
        trivial_app(),
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        log_level="warning",
    )
    uvicorn.Server(config).run()


def preload(folder: str, n: int) -> None:
    """Child mode: write n keys (10 keys per value) straight through the engine, fsync=never."""
    from filekv.engine import Store

    distinct = max(1, n // 10)
    with Store.open(folder, fsync="never") as db:
        put = db.put
        for i in range(n):
            put(key_of(i), value_of(i, distinct).encode())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    name: str
    argv: list[str]
    port: int
    health: str
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None

    def start(self, log_dir: Path, timeout: float = 300.0) -> float:
        self.log = log_dir / f"{self.name}.log"
        handle = self.log.open("wb")
        self.proc = subprocess.Popen(self.argv, stdout=handle, stderr=subprocess.STDOUT)
        start = time.perf_counter()
        import httpx

        while time.perf_counter() - start < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log.read_text()[-2000:]}")
            try:
                r = httpx.get(f"http://127.0.0.1:{self.port}{self.health}", timeout=1.0)
                if r.status_code == 200:
                    return time.perf_counter() - start
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not become healthy in {timeout} s")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# --------------------------------------------------------------------------- load


@dataclass
class LoadResult:
    label: str
    server: str
    requests: int
    seconds: float
    latency_us: dict[str, float]
    errors: dict[str, int] = field(default_factory=dict)
    tool: str = "wrk"
    all_rates: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else float("nan")


LUA_COMMON = r"""
local threads = {}
function setup(thread)
  thread:set("thread_id", #threads)
  table.insert(threads, thread)
end
function init(args)
  math.randomseed(12345 + thread_id * 7919)
end
local function key_of(i) return string.format("key:%012d", i) end
local function value_of(i, distinct)
  local head = string.format("value-%012d-", i % distinct)
  return head .. string.rep("v", VALUE_LEN - #head)
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write("WRKJSON ", string.format(
    '{"requests": %d, "duration_us": %d, "p50": %d, "p90": %d, "p99": %d, "max": %d, ' ..
    '"mean": %.1f, "connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean, e.connect, e.read, e.write, e.status,
    e.timeout))
end
"""

LUA_REQUESTS = {
    "get_const": 'request = function() return wrk.format("GET", "/const") end',
    "post_echo": r"""
request = function()
  local body = '{"value": "' .. value_of(math.random(0, N - 1), DISTINCT) .. '"}'
  return wrk.format("POST", "/echo", {["Content-Type"] = "application/json"}, body)
end""",
    "get_key": r"""
request = function()
  return wrk.format("GET", "/keys/" .. key_of(math.random(0, N - 1)))
end""",
    "put_key": r"""
request = function()
  local i = math.random(0, N - 1)
  local body = '{"value": "' .. value_of(i + 1, DISTINCT) .. '"}'
  return wrk.format("PUT", "/keys/" .. key_of(i), {["Content-Type"] = "application/json"}, body)
end""",
    "batch_put": r"""
request = function()
  local first = math.random(0, N - 1)
  local ops = {}
  for j = 0, BATCH - 1 do
    local i = (first + j) % N
    ops[#ops + 1] = '{"op": "put", "key": "' .. key_of(i) .. '", "value": "' ..
      value_of(i + 1, DISTINCT) .. '"}'
  end
  local body = '{"ops": [' .. table.concat(ops, ",") .. ']}'
  return wrk.format("POST", "/batch", {["Content-Type"] = "application/json"}, body)
end""",
    "find_value": r"""
request = function()
  return wrk.format("GET", "/keys?value=" .. value_of(math.random(0, DISTINCT - 1), DISTINCT))
end""",
}


def wrk_script(tmp: Path, kind: str, n: int) -> Path:
    distinct = max(1, n // 10)
    header = (
        f"local N = {n}\nlocal DISTINCT = {distinct}\nlocal VALUE_LEN = {VALUE_LEN}\n"
        f"local BATCH = {BATCH}\n"
    )
    path = tmp / f"{kind}-{n}.lua"
    path.write_text(header + LUA_COMMON + LUA_REQUESTS[kind] + "\n")
    return path


def run_wrk(
    port: int, script: Path, seconds: float, connections: int, threads: int
) -> dict[str, Any]:
    argv = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        f"http://127.0.0.1:{port}",
    ]
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=seconds + 60)
    for line in done.stdout.splitlines():
        if line.startswith("WRKJSON "):
            return json.loads(line.removeprefix("WRKJSON "))  # type: ignore[no-any-return]
    raise RuntimeError(f"wrk gave no summary: {done.stdout}\n{done.stderr}")


def httpx_loader_child(argv: list[str]) -> None:
    """Child mode (no wrk): an asyncio httpx loader, one coroutine per connection."""
    import asyncio
    import random

    import httpx

    port, kind, n, seconds, connections = (
        argv[0],
        argv[1],
        int(argv[2]),
        float(argv[3]),
        int(argv[4]),
    )
    distinct = max(1, n // 10)
    base = f"http://127.0.0.1:{port}"

    def request(rng: random.Random) -> tuple[str, str, dict[str, Any] | None]:
        if kind == "get_const":
            return "GET", "/const", None
        if kind == "post_echo":
            return "POST", "/echo", {"value": value_of(rng.randrange(n), distinct)}
        if kind == "get_key":
            return "GET", f"/keys/{key_of(rng.randrange(n))}", None
        if kind == "put_key":
            i = rng.randrange(n)
            return "PUT", f"/keys/{key_of(i)}", {"value": value_of(i + 1, distinct)}
        if kind == "batch_put":
            first = rng.randrange(n)
            ops = [
                {"op": "put", "key": key_of(i % n), "value": value_of(i % n + 1, distinct)}
                for i in range(first, first + BATCH)
            ]
            return "POST", "/batch", {"ops": ops}
        return "GET", f"/keys?value={value_of(rng.randrange(distinct), distinct)}", None

    async def main() -> dict[str, Any]:
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        latencies: list[float] = []
        errors = 0
        async with httpx.AsyncClient(base_url=base, limits=limits, timeout=10) as client:
            stop = time.perf_counter() + seconds

            async def worker(seed: int) -> None:
                nonlocal errors
                rng = random.Random(seed)
                while time.perf_counter() < stop:
                    method, path, body = request(rng)
                    t0 = time.perf_counter()
                    r = await client.request(method, path, json=body)
                    latencies.append(time.perf_counter() - t0)
                    if r.status_code >= 400:
                        errors += 1

            start = time.perf_counter()
            await asyncio.gather(*(worker(i) for i in range(connections)))
            elapsed = time.perf_counter() - start
        latencies.sort()
        m = len(latencies)

        def pct(q: float) -> float:
            return latencies[min(m - 1, int(q * m))] * 1e6 if m else 0.0

        return {
            "requests": m,
            "duration_us": int(elapsed * 1e6),
            "p50": pct(0.5),
            "p90": pct(0.9),
            "p99": pct(0.99),
            "max": pct(1.0),
            "status": errors,
        }

    print("WRKJSON " + json.dumps(asyncio.run(main())), flush=True)


def run_load(
    args: argparse.Namespace, tmp: Path, port: int, kind: str, n: int, seconds: float
) -> dict[str, Any]:
    if args.tool == "wrk":
        return run_wrk(port, wrk_script(tmp, kind, n), seconds, args.connections, args.threads)
    argv = [sys.executable, __file__, "--child-httpx", str(port), kind, str(n), str(seconds)]
    argv.append(str(args.connections))
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    for line in done.stdout.splitlines():
        if line.startswith("WRKJSON "):
            return json.loads(line.removeprefix("WRKJSON "))  # type: ignore[no-any-return]
    raise RuntimeError(f"httpx loader failed: {done.stderr[-2000:]}")


def measure(
    args: argparse.Namespace,
    tmp: Path,
    server: Server,
    label: str,
    kind: str,
    n: int,
) -> LoadResult:
    if args.warmup > 0:
        run_load(args, tmp, server.port, kind, n, args.warmup)
    raw = run_load(args, tmp, server.port, kind, n, args.duration)
    errors = {
        k: int(raw[k]) for k in ("connect", "read", "write", "status", "timeout") if raw.get(k)
    }
    result = LoadResult(
        label=label,
        server=server.name,
        requests=int(raw["requests"]),
        seconds=raw["duration_us"] / 1e6,
        latency_us={k: float(raw[k]) for k in ("p50", "p90", "p99", "max")},
        errors=errors,
        tool=args.tool,
    )
    p50_ms, p99_ms = result.latency_us["p50"] / 1000, result.latency_us["p99"] / 1000
    log(
        f"  {label:<34} {fmt_rate(result.rate):>10} req/s  p50 {p50_ms:.2f} ms"
        f"  p99 {p99_ms:.2f} ms  errors {errors or 0}"
    )
    return result


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- the run


def filekv_server(folder: Path, port: int, keys: int) -> Server:
    argv = [
        str(VENV_BIN / "filekv"),
        "serve",
        "--data-dir",
        str(folder),
        "--port",
        str(port),
        "--fsync",
        "always",
        "--log-level",
        "warning",
    ]
    return Server(f"filekv serve ({keys:,} keys)", argv, port, "/healthz")


def run(args: argparse.Namespace) -> tuple[list[LoadResult], dict[str, Any]]:
    """Preload, start every server at once, then run the rows round-robin ``--repeats`` times.

    Interleaving (trivial GET, filekv GET, trivial POST, filekv PUT, ...) spreads the noise of a
    shared machine over both sides of each ratio instead of landing on one of them.
    """
    tmp = Path(tempfile.mkdtemp(prefix="filekv-httpbench-", dir=bench_tmpdir(args.tmpdir)))
    extra: dict[str, Any] = {"machine": machine_info(tmp.parent)}
    if args.wait_quiet > 0:
        extra["busy_pct_before"] = wait_for_quiet(args.wait_quiet, log=log)
    watch = CpuWatch()
    servers: list[Server] = []
    runs: dict[str, list[LoadResult]] = {}
    try:
        sizes = [n for n in dict.fromkeys((args.keys, args.small, args.big)) if n > 0]
        log("preloading " + ", ".join(f"{n:,}" for n in sizes) + " keys with the engine")
        dirs = {}
        for n in sizes:
            dirs[n] = tmp / f"data-{n}"
            start = time.perf_counter()
            subprocess.run(
                [sys.executable, __file__, "--child-preload", str(dirs[n]), str(n)], check=True
            )
            extra[f"preload_{n}_s"] = time.perf_counter() - start
        os.sync()  # the preload's dirty pages must not land on the timed fsyncs

        port = free_port()
        trivial = Server(
            "trivial FastAPI",
            [sys.executable, __file__, "--child-trivial", str(port)],
            port,
            "/healthz",
        )
        by_size = {n: filekv_server(dirs[n], free_port(), n) for n in sizes}
        for server in (trivial, *by_size.values()):
            log(f"starting {server.name}")
            extra[f"startup_s {server.name}"] = server.start(tmp)
            servers.append(server)

        main = by_size[args.keys]
        rows: list[tuple[Server, str, str, int]] = [
            (trivial, "trivial GET /const", "get_const", 1),
            (main, f"GET /keys/{{key}} ({args.keys:,} keys)", "get_key", args.keys),
            (trivial, "trivial POST /echo (pydantic)", "post_echo", args.keys),
            (main, "PUT /keys/{key} fsync=always", "put_key", args.keys),
            (main, f"POST /batch of {BATCH} puts fsync=always", "batch_put", args.keys),
        ]
        for n in (args.small, args.big):
            if n > 0:
                rows.append((by_size[n], f"GET /keys?value= ({n:,} keys)", "find_value", n))
        for repeat in range(args.repeats):
            log(f"round {repeat + 1} of {args.repeats}")
            for server, label, kind, n in rows:
                if kind in ("put_key", "batch_put"):
                    os.sync()
                runs.setdefault(label, []).append(measure(args, tmp, server, label, kind, n))
        if CONSOLE_KEYS in by_size:  # issue 13: GET /ui with 10,000 keys, in headless Chromium
            log("timing GET /ui (the console) in headless chromium")
            url = f"http://127.0.0.1:{by_size[CONSOLE_KEYS].port}"
            extra["console"] = measure_console_load(url, runs=5 if args.quick else 15)
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    extra["cpu"] = watch.summary()
    extra["all_runs"] = {
        label: [{"rate": r.rate, **r.latency_us} for r in results]
        for label, results in runs.items()
    }
    return [median_run(results) for results in runs.values()], extra


def median_run(results: list[LoadResult]) -> LoadResult:
    """The run with the median rate (its own latencies), labelled with every run's rate."""
    ordered = sorted(results, key=lambda r: r.rate)
    chosen = ordered[(len(ordered) - 1) // 2]
    chosen.all_rates = [r.rate for r in results]
    return chosen


def report(args: argparse.Namespace, results: list[LoadResult], extra: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(record=True, width=140)
    machine = Table(title="machine", show_header=False)
    for k, v in extra["machine"].items():
        machine.add_row(k, v)
    machine.add_row("command", " ".join(["python", *sys.argv]))
    tool = "wrk " + _wrk_version() if args.tool == "wrk" else "asyncio httpx loader"
    machine.add_row(
        "load",
        f"{tool}, {args.connections} connections, {args.threads} threads, "
        f"{args.duration:g} s per row after a {args.warmup:g} s warm-up, rows interleaved, "
        f"{args.repeats} rounds, loopback",
    )
    machine.add_row(
        "servers",
        "uvicorn, uvloop + httptools, 1 worker, log level warning; filekv with fsync=always",
    )
    if "cpu" in extra:
        machine.add_row("other load", describe_load(extra["cpu"]))
    console.print(machine)

    table = Table(
        title=f"HTTP: requests per second (median of {args.repeats} interleaved runs) and the "
        "latency of that median run"
    )
    for col in ("request", "server", "req/s", "all runs", "p50", "p90", "p99", "max", "errors"):
        table.add_column(col, justify="left" if col in ("request", "server") else "right")
    for r in results:
        table.add_row(
            r.label,
            r.server,
            fmt_rate(r.rate),
            " ".join(fmt_rate(x) for x in r.all_rates),
            *(f"{r.latency_us[k] / 1000:.2f} ms" for k in ("p50", "p90", "p99", "max")),
            ", ".join(f"{k} {v}" for k, v in r.errors.items()) or "0",
        )
    console.print(table)

    def get(label: str) -> LoadResult | None:
        return next((r for r in results if r.label.startswith(label)), None)

    rows: list[tuple[str, str, float | None, float, bool, str]] = []
    a, b = get("GET /keys/{key}"), get("trivial GET")
    rows.append(
        (
            f"GET /keys/{{key}} ({args.keys:,} keys)",
            ">= 0.7 x trivial GET",
            a.rate / b.rate if a and b else None,
            0.7,
            True,
            "req/s ratio",
        )
    )
    a, b = get("PUT /keys/{key}"), get("trivial POST")
    rows.append(
        (
            "PUT /keys/{key}, fsync=always",
            ">= 0.7 x trivial POST",
            a.rate / b.rate if a and b else None,
            0.7,
            True,
            "req/s ratio",
        )
    )
    a, b = get(f"GET /keys?value= ({args.big:,}"), get(f"GET /keys?value= ({args.small:,}")
    rows.append(
        (
            f"GET /keys?value= at {args.big:,} keys",
            f"<= 1.5 x its time at {args.small:,} keys",
            b.rate / a.rate if a and b else None,
            1.5,
            False,
            "time per request (1 / req/s) ratio",
        )
    )
    p50 = a.latency_us["p50"] / b.latency_us["p50"] if a and b else None
    batch, single = get("POST /batch"), get("PUT /keys/{key}")
    rows.append(
        (
            f"POST /batch of {BATCH} puts, fsync=always",
            ">= 20 x single PUTs (keys written/s)",
            BATCH * batch.rate / single.rate if batch and single else None,
            20.0,
            True,
            f"keys/s ratio: {BATCH} x batch req/s over PUT req/s",
        )
    )
    tgt = Table(title="targets (issues 3 and 10): ratios measured in this run")
    for col in ("measure", "target", "measured", "result", "how"):
        tgt.add_column(col)
    verdicts = []
    for name, target, measured, bound, at_least, how in rows:
        if measured is None:
            verdict, shown = "not measured", "-"
        else:
            ok = measured >= bound if at_least else measured <= bound
            verdict, shown = ("PASS" if ok else "MISS"), f"{measured:.2f}x"
        if name.startswith("GET /keys?value=") and p50 is not None:
            how += f"; p50 ratio {p50:.2f}x"
        tgt.add_row(name, target, shown, verdict, how)
        verdicts.append(
            {"measure": name, "target": target, "measured": measured, "result": verdict}
        )
    console.print(tgt)
    console_table(console, extra.get("console"), CONSOLE_KEYS)
    if args.save:
        RESULTS_DIR.mkdir(exist_ok=True)
        stem = "http-quick" if args.quick else "http"
        console.save_text(str(RESULTS_DIR / f"{stem}.txt"))
        out = {
            "args": vars(args),
            "results": [{**r.__dict__, "rate": r.rate} for r in results],
            "targets": verdicts,
            "extra": extra,
        }
        (RESULTS_DIR / f"{stem}.json").write_text(json.dumps(out, indent=1, default=str))


# ------------------------------------------------------------------- metrics cost (issue 11)

# The same store served three ways, side by side: what GET /metrics's counting and the JSON
# access log cost the hot routes. Only the settings differ; each server has its own copy.
METRICS_VARIANTS: tuple[tuple[str, list[str]], ...] = (
    ("metrics on", ["--metrics", "true", "--log-level", "warning"]),
    ("metrics off", ["--metrics", "false", "--log-level", "warning"]),
    ("metrics on + access log", ["--metrics", "true", "--log-level", "info"]),
)
METRICS_TARGET = 0.9  # issue 11: within 10 % of the rate without metrics


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure_with_cpu(
    args: argparse.Namespace, tmp: Path, server: Server, label: str, kind: str, n: int
) -> tuple[LoadResult, float]:
    """``measure``, and the server's CPU microseconds per request during the timed part.

    The server's own CPU time per request hardly changes when other work shares the machine,
    where its rate does: on a busy machine it is the steadier measure of what a setting costs.
    """
    assert server.proc is not None
    if args.warmup > 0:
        run_load(args, tmp, server.port, kind, n, args.warmup)
    before = _cpu_seconds(server.proc.pid)
    result = measure(argparse.Namespace(**{**vars(args), "warmup": 0}), tmp, server, label, kind, n)
    spent = _cpu_seconds(server.proc.pid) - before
    return result, spent / result.requests * 1e6 if result.requests else float("nan")


def run_metrics_cost(args: argparse.Namespace) -> tuple[list[LoadResult], dict[str, Any]]:
    """GET and PUT /keys/{key} against each of ``METRICS_VARIANTS``, rows interleaved.

    The access log variant writes its JSON lines to a file on the same disk (the server's
    stderr), as a server run by systemd or Docker writes to its log collector.
    """
    tmp = Path(tempfile.mkdtemp(prefix="filekv-metricsbench-", dir=bench_tmpdir(args.tmpdir)))
    extra: dict[str, Any] = {"machine": machine_info(tmp.parent)}
    if args.wait_quiet > 0:
        extra["busy_pct_before"] = wait_for_quiet(args.wait_quiet, log=log)
    watch = CpuWatch()
    servers: list[Server] = []
    runs: dict[str, list[LoadResult]] = {}
    cpu: dict[str, list[float]] = {}
    try:
        log(f"preloading {args.keys:,} keys with the engine, one copy per server")
        first = tmp / "data-0"
        subprocess.run(
            [sys.executable, __file__, "--child-preload", str(first), str(args.keys)], check=True
        )
        for index, (name, flags) in enumerate(METRICS_VARIANTS):
            folder = tmp / f"data-{index}"
            if index:
                shutil.copytree(first, folder)
            port = free_port()
            argv = [str(VENV_BIN / "filekv"), "serve", "--data-dir", str(folder)]
            argv += ["--port", str(port), "--fsync", "always", *flags]
            servers.append(Server(f"filekv serve, {name}", argv, port, "/healthz"))
        os.sync()
        for server in servers:
            log(f"starting {server.name}")
            extra[f"startup_s {server.name}"] = server.start(tmp)
        rows = [
            (server, f"{label} ({name})", kind)
            for kind, label in (("get_key", "GET /keys/{key}"), ("put_key", "PUT /keys/{key}"))
            for server, (name, _) in zip(servers, METRICS_VARIANTS, strict=True)
        ]
        for repeat in range(args.repeats):
            log(f"round {repeat + 1} of {args.repeats}")
            # Each round starts at the next variant, so none is always timed first or last.
            shift = repeat % len(METRICS_VARIANTS)
            by_kind = [rows[i : i + len(METRICS_VARIANTS)] for i in (0, len(METRICS_VARIANTS))]
            for server, label, kind in [
                r for group in by_kind for r in group[shift:] + group[:shift]
            ]:
                if kind == "put_key":
                    os.sync()
                result, cpu_us = measure_with_cpu(args, tmp, server, label, kind, args.keys)
                runs.setdefault(label, []).append(result)
                cpu.setdefault(label, []).append(cpu_us)
                log(f"    server CPU {cpu_us:.0f} us per request")
        access_log = servers[2].log
        if access_log is not None and access_log.exists():
            extra["access_log_lines"] = sum(
                1 for line in access_log.open("rb") if b'"filekv.access"' in line
            )
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    extra["cpu"] = watch.summary()
    extra["all_runs"] = {
        label: [{"rate": r.rate, **r.latency_us} for r in results]
        for label, results in runs.items()
    }
    extra["server_cpu_us"] = cpu
    return [median_run(results) for results in runs.values()], extra


def report_metrics_cost(
    args: argparse.Namespace, results: list[LoadResult], extra: dict[str, Any]
) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(record=True, width=140)
    machine = Table(title="machine", show_header=False)
    for k, v in extra["machine"].items():
        machine.add_row(k, v)
    machine.add_row("command", " ".join(["python", *sys.argv]))
    tool = "wrk " + _wrk_version() if args.tool == "wrk" else "asyncio httpx loader"
    machine.add_row(
        "load",
        f"{tool}, {args.connections} connections, {args.threads} threads, {args.duration:g} s "
        f"per row after a {args.warmup:g} s warm-up, rows interleaved, {args.repeats} rounds, "
        f"loopback, {args.keys:,} keys",
    )
    machine.add_row(
        "servers",
        "filekv serve, fsync=always, uvloop + httptools, 1 worker: "
        + "; ".join(f"{name}: {' '.join(flags)}" for name, flags in METRICS_VARIANTS),
    )
    if "access_log_lines" in extra:
        machine.add_row("access log", f"{extra['access_log_lines']:,} JSON lines written")
    if "cpu" in extra:
        machine.add_row("other load", describe_load(extra["cpu"]))
    console.print(machine)

    table = Table(
        title=f"Metrics cost: requests per second (median of {args.repeats} interleaved runs) "
        "and the latency of that median run"
    )
    cpu: dict[str, list[float]] = extra.get("server_cpu_us", {})
    cpu_median = {label: statistics.median(values) for label, values in cpu.items() if values}
    columns = ("request", "req/s", "all runs", "server CPU us/req (median, all)", "p50", "p99")
    for col in (*columns, "errors"):
        table.add_column(col, justify="left" if col == "request" else "right")
    for r in results:
        table.add_row(
            r.label,
            fmt_rate(r.rate),
            " ".join(fmt_rate(x) for x in r.all_rates),
            f"{cpu_median.get(r.label, float('nan')):.0f} ("
            + " ".join(f"{x:.0f}" for x in cpu.get(r.label, []))
            + ")",
            *(f"{r.latency_us[k] / 1000:.2f} ms" for k in ("p50", "p99")),
            ", ".join(f"{k} {v}" for k, v in r.errors.items()) or "0",
        )
    console.print(table)

    by_label = {r.label: r for r in results}
    targets = Table(title="targets (issue 11): ratios measured in this run")
    for col in ("measure", "target", "measured", "result"):
        targets.add_column(col)
    verdicts = []
    for route in ("GET /keys/{key}", "PUT /keys/{key}"):
        off = by_label.get(f"{route} (metrics off)")
        for name, bound in (("metrics on", METRICS_TARGET), ("metrics on + access log", None)):
            on = by_label.get(f"{route} ({name})")
            measured = on.rate / off.rate if on and off else None
            target = f">= {bound} x metrics off" if bound else "(no target) vs metrics off"
            if measured is None:
                verdict = "not measured"
            elif bound is None:
                verdict = "-"
            else:
                verdict = "PASS" if measured >= bound else "MISS"
            shown = f"{measured:.3f}x" if measured is not None else "-"
            targets.add_row(f"{route}, {name}", target, shown, verdict)
            verdicts.append(
                {"measure": f"{route}, {name}", "measured": measured, "result": verdict}
            )
            on_cpu = cpu_median.get(f"{route} ({name})")
            off_cpu = cpu_median.get(f"{route} (metrics off)")
            if on_cpu and off_cpu:
                targets.add_row(
                    f"{route}, {name}: server CPU per request",
                    "(context) vs metrics off",
                    f"{on_cpu / off_cpu:.3f}x",
                    f"{on_cpu - off_cpu:+.1f} us",
                )
    console.print(targets)
    if args.save:
        RESULTS_DIR.mkdir(exist_ok=True)
        stem = "http-metrics-quick" if args.quick else "http-metrics"
        console.save_text(str(RESULTS_DIR / f"{stem}.txt"))
        out = {
            "args": vars(args),
            "results": [{**r.__dict__, "rate": r.rate} for r in results],
            "targets": verdicts,
            "extra": extra,
        }
        (RESULTS_DIR / f"{stem}.json").write_text(json.dumps(out, indent=1, default=str))


def _wrk_version() -> str:
    done = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
    first = (done.stdout or done.stderr).strip().splitlines()
    return first[0].split(" [")[0].removeprefix("wrk ") if first else "?"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=None, help="seconds per row (10)")
    p.add_argument("--warmup", type=float, default=None, help="seconds of warm-up per row (2)")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--threads", type=int, default=2, help="wrk threads")
    p.add_argument("--keys", type=int, default=100_000, help="keys for GET/PUT /keys/{key}")
    p.add_argument("--big", type=int, default=None, help="large store for find (1000000)")
    p.add_argument("--small", type=int, default=10_000, help="small store for find")
    p.add_argument("--repeats", type=int, default=None, help="rounds over every row (3)")
    p.add_argument("--quick", action="store_true", help="3 s rows, 200k-key large store")
    p.add_argument("--tool", choices=("wrk", "httpx"), default=None)
    p.add_argument("--tmpdir", default=None)
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=120.0,
        help="first wait up to this many seconds for other work on the machine to stop (0: no)",
    )
    p.add_argument("--no-save", dest="save", action="store_false")
    p.add_argument(
        "--metrics-cost",
        action="store_true",
        help="only GET and PUT /keys/{key} with metrics on, off, and on with the access log",
    )
    args = p.parse_args(argv)
    args.duration = args.duration or (3.0 if args.quick else 10.0)
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.warmup = args.warmup if args.warmup is not None else (1.0 if args.quick else 2.0)
    args.big = args.big if args.big is not None else (200_000 if args.quick else 1_000_000)
    args.tool = args.tool or ("wrk" if shutil.which("wrk") else "httpx")
    return args


def main() -> None:
    argv = sys.argv[1:]
    if argv and argv[0] == "--child-trivial":
        serve_trivial(int(argv[1]))
        return
    if argv and argv[0] == "--child-preload":
        preload(argv[1], int(argv[2]))
        return
    if argv and argv[0] == "--child-httpx":
        httpx_loader_child(argv[1:])
        return
    args = parse_args(argv)
    if args.metrics_cost:
        report_metrics_cost(args, *run_metrics_cost(args))
        return
    results, extra = run(args)
    report(args, results, extra)


if __name__ == "__main__":
    main()
