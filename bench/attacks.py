"""Before/after figures for issue 17 findings 3 and 9 (loopback only, every loop bounded).

usage: .venv/bin/python bench/attacks.py healthz|rss|halfopen

Run with PYTHONPATH=<a worktree of an older commit>/src to measure that commit side by side.
docs/RELIABILITY.md (section 9) quotes its figures.
"""

from __future__ import annotations

import contextlib
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from support.server import Server

CHUNK = b"a" * 65536


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def endless(port: int, total: int, deadline: float, stats: dict[str, object]) -> None:
    """Stream one header of up to ``total`` bytes; again on a new connection until ``deadline``."""
    stats.setdefault("connections", 0)
    stats.setdefault("sent", 0)
    while True:
        sent = 0
        stats["connections"] += 1  # type: ignore[operator]
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Endless: ")
                while sent < total and time.monotonic() < deadline:
                    sock.sendall(CHUNK)
                    sent += len(CHUNK)
                stats["outcome"] = "sent all"
                sock.settimeout(5)
                stats["answer"] = sock.recv(200)[:60]
        except OSError as exc:
            stats["outcome"] = type(exc).__name__
        stats["sent"] += sent  # type: ignore[operator]
        if time.monotonic() >= deadline or total > 300 << 20:
            return


def healthz(server: Server) -> None:
    deadline = time.monotonic() + 40
    stats: list[dict[str, object]] = [{}, {}]
    threads = [
        threading.Thread(target=endless, args=(server.port, 200 << 20, deadline, s)) for s in stats
    ]
    for t in threads:
        t.start()
    latencies = []
    errors = 0
    while any(t.is_alive() for t in threads) and time.monotonic() < deadline:
        start = time.monotonic()
        try:  # a new connection each time: no keep-alive race with a stalled server
            httpx.get(f"{server.url}/healthz", timeout=120).raise_for_status()
        except httpx.HTTPError:
            errors += 1
        latencies.append(time.monotonic() - start)
        time.sleep(0.05)
    print("healthz errors:", errors)
    for t in threads:
        t.join(130)
    latencies.sort()
    n = len(latencies)
    print(
        f"healthz during 2 x 200 MiB endless headers: n={n} "
        f"median={statistics.median(latencies):.4f}s "
        f"p90={latencies[int(n * 0.9)]:.4f}s max={latencies[-1]:.4f}s; attackers: {stats}"
    )


def rss_attack(server: Server) -> None:
    """One connection streams up to 512 MiB of one header for at most 120 s, then holds it open."""
    assert server.process is not None
    pid = server.process.pid
    before = rss(pid)
    peak = before
    sent = 0
    outcome = "sent all"
    deadline = time.monotonic() + 120
    with socket.create_connection(("127.0.0.1", server.port), timeout=130) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Endless: ")
        try:
            while sent < 512 << 20 and time.monotonic() < deadline:
                sock.sendall(CHUNK)
                sent += len(CHUNK)
                if sent % (4 << 20) == 0:
                    peak = max(peak, rss(pid))
        except OSError as exc:
            outcome = type(exc).__name__
        for _ in range(50):
            peak = max(peak, rss(pid))
            time.sleep(0.1)
        held = rss(pid)
    time.sleep(2)
    after = rss(pid)
    with httpx.Client(base_url=server.url, timeout=60) as http:
        ok = http.get("/healthz").status_code
    print(
        f"512 MiB header: RSS before={before / 2**20:.0f} MiB peak={peak / 2**20:.0f} MiB "
        f"connection still open (+5 s)={held / 2**20:.0f} MiB "
        f"closed (+2 s)={after / 2**20:.0f} MiB; "
        f"attacker sent {sent / 2**20:.0f} MiB in {120 - (deadline - time.monotonic()):.0f} s, "
        f"{outcome}; healthz {ok}"
    )


def halfopen(server: Server, count: int = 1000, wait: float = 40.0) -> None:
    assert server.process is not None
    before = rss(server.process.pid)
    socks = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        sock.sendall(b"GET /keys/half HTT")
        socks.append(sock)
    time.sleep(1)
    loaded = rss(server.process.pid)
    time.sleep(wait - 1)
    still_open = answered = 0
    for sock in socks:
        sock.setblocking(False)
        try:
            data = sock.recv(64, socket.MSG_PEEK)
            if data:
                answered += 1
        except BlockingIOError:
            still_open += 1
        except OSError:
            pass
        sock.close()
    print(
        f"{count} half-sent heads: still open after {wait:.0f} s: {still_open}; answered 408: "
        f"{answered}; RSS {before / 2**20:.0f} -> {loaded / 2**20:.0f} MiB with all open"
    )


def main() -> None:
    mode = sys.argv[1]
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(Path(tmp) / "data", Path(tmp) / "server.log", log_level="warning")
        server.start()
        try:
            {"healthz": healthz, "rss": rss_attack, "halfopen": halfopen}[mode](server)
        finally:
            with contextlib.suppress(Exception):
                server.stop()


if __name__ == "__main__":
    main()
