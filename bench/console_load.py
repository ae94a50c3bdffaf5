"""How long the web console at /ui takes to load with 10,000 keys in the store (issue 13).

    python bench/console_load.py [--keys 10000] [--runs 15]

Standalone, it preloads a store with the engine, starts ``filekv serve`` on it and prints one
table; ``bench/http.py`` calls ``measure_console_load`` on its own 10,000-key server and prints
the same table in its report.

"Loaded" means what a person waits for: the page, every script and stylesheet, and the first
page of keys drawn in the list (the console sets ``body[data-ready]`` and the performance mark
``filekv-ready`` then; before that it has also asked who is logged in, whether registration is
open, and the lock's state). Each run is a fresh browser context (an empty cache, as on a first
visit), in Debian's headless Chromium driven by Playwright, over loopback. Rows:

- ``/ui in the page``: from the navigation's start to the ``filekv-ready`` mark, read from the
  page's own clock (``performance``), so Playwright's messages to the browser are not counted.
  The target (300 ms) is for this row.
- ``/ui end to end``: the same, timed outside (from ``page.goto`` to seeing ``data-ready``).
- ``/healthz``: the browser's floor on this server, the smallest page it serves, timed outside
  the same way: the ratio column is each row against it.
- ``/docs``: Swagger UI until it has drawn the operations, for comparison.
- ``/ui over httpx``: no browser: the page, its assets and the first ``GET /keys`` fetched one
  after another on one connection, what the console's HTTP costs alone.

A benchmark, not a test: it asserts nothing.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path, where bench/http.py would shadow
# the standard library's ``http`` package (as bench/http.py explains for itself).
_HERE = str(Path(__file__).resolve().parent)
if sys.path and sys.path[0] in (_HERE, ""):
    sys.path.append(sys.path.pop(0))

import re  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import asdict, dataclass  # noqa: E402
from typing import Any  # noqa: E402

import httpx  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
CONSOLE_KEYS = 10_000  # the store the target is stated for
TARGET_MS = 300.0
FIRST_LISTING = "/keys?prefix=&limit=100"


@dataclass
class Row:
    label: str
    samples_ms: list[float]
    note: str = ""

    def pct(self, q: float) -> float:
        ordered = sorted(self.samples_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    @property
    def median(self) -> float:
        return statistics.median(self.samples_ms)


def _assets(url: str, client: httpx.Client) -> list[str]:
    page = client.get(f"{url}/ui").text
    return [f"{url}/{link}" for link in re.findall(r"""(?:src|href)=["']([^"'#]+)""", page)]


def _http_only(url: str, runs: int) -> Row:
    samples = []
    with httpx.Client(timeout=30) as client:
        assets = _assets(url, client)
        for _ in range(runs):
            start = time.perf_counter()
            client.get(f"{url}/ui").raise_for_status()
            for asset in assets:
                client.get(asset).raise_for_status()
            client.get(f"{url}{FIRST_LISTING}").raise_for_status()
            samples.append((time.perf_counter() - start) * 1000)
    return Row(
        "/ui over httpx (page, assets, first GET /keys)",
        samples,
        f"{len(assets) + 2} requests in a row, one connection",
    )


def measure_console_load(url: str, runs: int = 15) -> list[dict[str, Any]]:
    """The rows above (as dicts, for a JSON report) against the server at ``url``.

    Chromium or Playwright missing leaves only the httpx row.
    """
    return [asdict(row) for row in _measure(url, runs)]


def _measure(url: str, runs: int) -> list[Row]:
    rows = [_http_only(url, runs)]
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return rows
    if not CHROMIUM.exists():
        return rows
    in_page: list[float] = []
    outside: dict[str, list[float]] = {"ui": [], "healthz": [], "docs": []}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            for run in range(runs + 1):  # the first run warms the browser itself up, not kept
                for name, path, ready in (
                    ("healthz", "/healthz", None),
                    ("ui", "/ui", "body[data-ready='true']"),
                    ("docs", "/docs", ".opblock-tag"),
                ):
                    context = browser.new_context()
                    page = context.new_page()
                    start = time.perf_counter()
                    page.goto(f"{url}{path}", wait_until="load" if ready is None else "commit")
                    if ready is not None:
                        page.wait_for_selector(ready)
                    took = (time.perf_counter() - start) * 1000
                    if run:
                        outside[name].append(took)
                        if name == "ui":
                            mark = page.evaluate(
                                "performance.getEntriesByName('filekv-ready')[0].startTime"
                            )
                            in_page.append(float(mark))
                    context.close()
        finally:
            browser.close()
    return [
        Row("/ui in the page (navigation start to first listing drawn)", in_page, "target"),
        Row("/ui end to end (goto to first listing drawn)", outside["ui"]),
        Row("/healthz end to end (the browser's floor)", outside["healthz"], "floor"),
        Row("/docs end to end (Swagger UI drawn)", outside["docs"]),
        *rows,
    ]


def console_table(console: Any, measured: list[dict[str, Any]] | None, keys: int) -> None:
    """Print what ``measure_console_load`` returned as a table on a ``rich.console.Console``."""
    if not measured:
        return
    rows = [Row(**row) for row in measured]
    from rich.table import Table

    floor = next((row for row in rows if row.note == "floor"), None)
    table = Table(
        title=f"GET /ui: the console loaded ({keys:,} keys, fresh browser context each run, "
        f"median of {len(rows[0].samples_ms)} runs; target: under {TARGET_MS:g} ms in the page)"
    )
    for column in ("load", "median", "p90", "max", "x floor", "result"):
        table.add_column(column, justify="left" if column == "load" else "right")
    for row in rows:
        ratio = f"{row.median / floor.median:.2f}x" if floor and "end to end" in row.label else "-"
        verdict = ("PASS" if row.median < TARGET_MS else "MISS") if row.note == "target" else ""
        table.add_row(
            row.label,
            f"{row.median:.1f} ms",
            f"{row.pct(0.9):.1f} ms",
            f"{max(row.samples_ms):.1f} ms",
            ratio,
            verdict or row.note if row.note != "floor" else "",
        )
    console.print(table)


# --------------------------------------------------------------------------- standalone


def _preload(folder: Path, keys: int) -> None:
    code = (
        "import sys\nfrom filekv.engine import Store\n"
        "with Store.open(sys.argv[1], fsync='never') as db:\n"
        "    for i in range(int(sys.argv[2])):\n"
        "        db.put(f'key:{i:012d}', (f'value-{i % 1000:012d}-' + 'v' * 81).encode())\n"
    )
    subprocess.run([sys.executable, "-c", code, str(folder), str(keys)], check=True)


def main() -> None:
    import argparse
    import socket

    from _common import CpuWatch, describe_load, machine_info, wait_for_quiet
    from rich.console import Console

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=CONSOLE_KEYS)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=120.0,
        help="first wait up to this many seconds for other work on the machine to stop (0: no)",
    )
    args = parser.parse_args()
    if args.wait_quiet > 0:
        wait_for_quiet(args.wait_quiet)
    watch = CpuWatch()
    with tempfile.TemporaryDirectory(prefix="filekv-consolebench-") as tmp:
        folder = Path(tmp) / "data"
        _preload(folder, args.keys)
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        filekv = Path(sys.executable).parent / "filekv"
        argv = [str(filekv), "serve", "--data-dir", str(folder), "--port", str(port)]
        server = subprocess.Popen([*argv, "--log-level", "warning"])
        url = f"http://127.0.0.1:{port}"
        try:
            for _ in range(600):
                try:
                    if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
            rows = measure_console_load(url, args.runs)
        finally:
            server.terminate()
            server.wait(60)
    console = Console(width=140)
    for name, value in machine_info(Path(tempfile.gettempdir())).items():
        console.print(f"{name}: {value}")
    console.print(f"command: python {' '.join(sys.argv)}")
    console.print(f"other load: {describe_load(watch.summary())} (Chromium counts as other)")
    console_table(console, rows, args.keys)


if __name__ == "__main__":
    main()
