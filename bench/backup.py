"""Backup under load: ``GET /admin/backup`` while 8 clients write, against the same writers alone.

    python bench/backup.py [--keys 300000] [--value-bytes 200] [--writers 8] [--rounds 3]

A real ``filekv serve`` (fsync=always, log level warning) on a store preloaded with the engine
(``--keys`` keys of ``--value-bytes`` bytes), with an admin added directly in ``users.json``. Eight
writer threads (httpx, one keep-alive connection each) PUT new keys without pause for the whole
run. Each round has two windows of the same length, side by side: a backup (the archive streamed
to /dev/null by a separate client, timed from request to last byte), and the same span with no
backup just before it. The writers' acknowledged PUTs are counted in each window: the ratio
during/without is the cost of a backup to writers. Also reported: each backup's time, size and
rate, and the writers' slowest PUT in each window (the pause while the store lock is held to seal
the active segment and link the sealed ones). A benchmark, not a test: it asserts nothing.
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
import os  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402

import httpx  # noqa: E402
from _common import (  # noqa: E402
    RESULTS_DIR,
    CpuWatch,
    bench_tmpdir,
    describe_load,
    machine_info,
    wait_for_quiet,
)

VENV_BIN = Path(sys.executable).parent
PASSWORD = "bench-admin-password"


@dataclass
class Writers:
    """Threads that PUT new keys until stopped; each acknowledgement's time and latency."""

    url: str
    count: int
    value: str
    stop: threading.Event = field(default_factory=threading.Event)
    acks: list[list[tuple[float, float]]] = field(default_factory=list)  # (done at, latency)
    threads: list[threading.Thread] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def start(self) -> None:
        self.acks = [[] for _ in range(self.count)]
        for n in range(self.count):
            thread = threading.Thread(target=self._run, args=(n,), daemon=True)
            thread.start()
            self.threads.append(thread)

    def _run(self, n: int) -> None:
        done = self.acks[n]
        with httpx.Client(base_url=self.url, timeout=60) as client:
            i = 0
            while not self.stop.is_set():
                started = time.monotonic()
                answer = client.put(f"/keys/bench/w{n}/{i:08d}", json={"value": self.value})
                finished = time.monotonic()
                if answer.status_code != 201:
                    self.errors.append(f"{answer.status_code} {answer.text[:100]}")
                    continue
                done.append((finished, finished - started))
                i += 1

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(60)

    def window(self, start: float, end: float) -> tuple[int, float]:
        """(PUTs acknowledged in [start, end), the slowest of them in seconds)."""
        count, slowest = 0, 0.0
        for per_thread in self.acks:
            for at, latency in list(per_thread):
                if start <= at < end:
                    count += 1
                    slowest = max(slowest, latency)
        return count, slowest


@dataclass
class Round:
    without_rate: float
    during_rate: float
    without_max_ms: float
    during_max_ms: float
    backup_seconds: float
    backup_bytes: int


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _preload(data_dir: Path, keys: int, value_bytes: int) -> None:
    from filekv.engine import Store
    from filekv.service.auth import AuthService

    value = b"v" * value_bytes
    with Store.open(data_dir, fsync="never", auto_compact=False) as db:
        for i in range(keys):
            db.put(f"preload/{i:08d}", value)
    AuthService(data_dir, token_ttl=3600, registration="closed").add_user(
        "root", PASSWORD, role="admin"
    )


def _serve(data_dir: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FILEKV_")}
    env.update(FILEKV_FSYNC="always", FILEKV_LOG_LEVEL="warning")
    with log.open("ab") as out:
        process = subprocess.Popen(
            [str(VENV_BIN / "filekv"), "serve", "--data-dir", str(data_dir), "--port", str(port)],
            env=env,
            stdout=out,
            stderr=out,
        )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"server did not start: {log.read_text()[-2000:]}")


def _backup(url: str, token: str, to: str = os.devnull) -> tuple[float, float, int]:
    """(start, end, bytes) of one backup streamed to ``to`` (/dev/null)."""
    started = time.monotonic()
    size = 0
    headers = {"Authorization": f"Bearer {token}"}
    with (
        httpx.Client(base_url=url, timeout=600) as client,
        client.stream("GET", "/admin/backup", headers=headers) as answer,
        open(to, "wb") as sink,
    ):
        answer.raise_for_status()
        for chunk in answer.iter_raw(1 << 20):
            sink.write(chunk)
            size += len(chunk)
    return started, time.monotonic(), size


def _time_restore(archive: Path, target: Path) -> str:
    """``filekv.restore`` of the last round's archive: seconds, keys, bytes."""
    from filekv.restore import restore

    with archive.open("rb") as source:
        result = restore(source, archive.name, target)
    return (
        f"the last round's archive restored in {result.seconds:.2f} s: {result.keys:,} keys, "
        f"{result.bytes / (1 << 20):.1f} MiB (every record verified, then opened)"
    )


def run(args: argparse.Namespace) -> tuple[list[Round], dict[str, object]]:
    tmp = bench_tmpdir(args.tmpdir) / f"filekv-bench-backup-{os.getpid()}"
    tmp.mkdir(parents=True)
    try:
        print(f"preloading {args.keys:,} keys of {args.value_bytes} bytes ...", file=sys.stderr)
        _preload(tmp / "data", args.keys, args.value_bytes)
        wait_for_quiet(30, log=lambda m: print(m, file=sys.stderr))
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        cpu = CpuWatch()
        server = _serve(tmp / "data", port, tmp / "server.log")
        try:
            token = httpx.post(
                f"{url}/auth/token", data={"username": "root", "password": PASSWORD}, timeout=30
            ).json()["access_token"]
            writers = Writers(url, args.writers, "w" * 100)
            writers.start()
            time.sleep(args.warmup)
            rounds: list[Round] = []
            for number in range(args.rounds):
                last = number == args.rounds - 1
                start, end, size = _backup(
                    url, token, str(tmp / "last.tar") if last else os.devnull
                )
                span = end - start
                during, during_max = writers.window(start, end)
                without, without_max = writers.window(start - span - args.gap, start - args.gap)
                rounds.append(
                    Round(
                        without_rate=without / span,
                        during_rate=during / span,
                        without_max_ms=without_max * 1000,
                        during_max_ms=during_max * 1000,
                        backup_seconds=span,
                        backup_bytes=size,
                    )
                )
                print(f"round {number + 1}: {rounds[-1]}", file=sys.stderr)
                time.sleep(span + 2 * args.gap)  # the next "without" window has no backup in it
            writers.finish()
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(120)
        extra: dict[str, object] = {
            "machine": machine_info(tmp),
            "cpu": cpu.summary(),
            "errors": writers.errors[:5],
            "restore": _time_restore(tmp / "last.tar", tmp / "restored"),
        }
        return rounds, extra
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def report(args: argparse.Namespace, rounds: list[Round], extra: dict[str, object]) -> str:
    from rich.console import Console
    from rich.table import Table

    console = Console(record=True, width=140)
    machine = Table(title="machine", show_header=False)
    for key, value in extra["machine"].items():  # type: ignore[attr-defined]
        machine.add_row(key, value)
    machine.add_row("command", " ".join(["python", *sys.argv]))
    machine.add_row(
        "load",
        f"{args.writers} writer threads (httpx, keep-alive), PUT of new keys with 100-byte values "
        f"without pause; store preloaded with {args.keys:,} keys of {args.value_bytes} bytes; "
        "filekv serve with fsync=always, log level warning; the backup streamed to /dev/null",
    )
    machine.add_row("other load", describe_load(extra["cpu"]))  # type: ignore[arg-type]
    machine.add_row("restore", str(extra["restore"]))
    if extra["errors"]:
        machine.add_row("writer errors", "; ".join(extra["errors"]))  # type: ignore[arg-type]
    console.print(machine)

    table = Table(title="backup while the writers run, and the same span just before without one")
    for column in (
        "round",
        "backup s",
        "archive MiB",
        "MiB/s",
        "PUT/s without",
        "PUT/s during",
        "during / without",
        "slowest PUT without",
        "slowest PUT during",
    ):
        table.add_column(column, justify="right")
    for number, r in enumerate(rounds, 1):
        table.add_row(
            str(number),
            f"{r.backup_seconds:.2f}",
            f"{r.backup_bytes / (1 << 20):.1f}",
            f"{r.backup_bytes / (1 << 20) / r.backup_seconds:.0f}",
            f"{r.without_rate:,.0f}",
            f"{r.during_rate:,.0f}",
            f"{r.during_rate / r.without_rate:.2f}x",
            f"{r.without_max_ms:.0f} ms",
            f"{r.during_max_ms:.0f} ms",
        )

    def median(values: list[float]) -> float:
        return statistics.median(values)

    table.add_row(
        "median",
        f"{median([r.backup_seconds for r in rounds]):.2f}",
        f"{median([r.backup_bytes / (1 << 20) for r in rounds]):.1f}",
        f"{median([r.backup_bytes / (1 << 20) / r.backup_seconds for r in rounds]):.0f}",
        f"{median([r.without_rate for r in rounds]):,.0f}",
        f"{median([r.during_rate for r in rounds]):,.0f}",
        f"{median([r.during_rate / r.without_rate for r in rounds]):.2f}x",
        f"{median([r.without_max_ms for r in rounds]):.0f} ms",
        f"{median([r.during_max_ms for r in rounds]):.0f} ms",
    )
    console.print(table)
    return console.export_text()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=300_000)
    parser.add_argument("--value-bytes", type=int, default=200)
    parser.add_argument("--writers", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--gap", type=float, default=0.5, help="seconds between the windows")
    parser.add_argument("--tmpdir", default=None)
    parser.add_argument("--out", default=str(RESULTS_DIR / "backup.txt"))
    args = parser.parse_args()
    rounds, extra = run(args)
    text = report(args, rounds, extra)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
