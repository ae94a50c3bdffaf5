"""``filekv export`` and ``filekv import`` as a user runs them: real CLI processes, real servers.

The round trip (export, import into an empty server, export again: the same keys and values)
runs with 20,000 keys here (twenty batches of the default 1,000 each way) and with 1,000,000
under ``FILEKV_SOAK=1``.
"""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from support.server import FILEKV, Server, read_all

SOAK = os.environ.get("FILEKV_SOAK") == "1"
ROUND_TRIP_KEYS = 1_000_000 if SOAK else 20_000

MakeServer = Callable[..., Server]


def filekv(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [FILEKV, *args],
        input=None if stdin is None else stdin.decode(),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def write_lines(
    path: Path, items: list[dict[str, object]], bad: dict[int, bytes] | None = None
) -> Path:
    """JSON Lines of ``items``; ``bad`` replaces line N (1-based) with raw bytes."""
    with path.open("wb") as handle:
        for number, item in enumerate(items, 1):
            if bad and number in bad:
                handle.write(bad[number] + b"\n")
            else:
                handle.write(orjson.dumps(item) + b"\n")
    return path


def pairs(path: Path) -> list[tuple[str, str]]:
    return [(line["key"], line["value"]) for line in map(json.loads, path.read_text().splitlines())]


def test_cli_export_import_round_trip(make_server: MakeServer, tmp_path: Path) -> None:
    source_dir = tmp_path / "source"
    items = [
        {
            "key": f"user/{i:07d}/{'é' if i % 7 == 0 else 'e'}",
            "value": f"value {i} " + "x" * (i % 50),
        }
        for i in range(ROUND_TRIP_KEYS)
    ]
    items.append({"key": 'odd\nkey "quoted"', "value": "line one\nline two\t\u0000 ✓"})
    original = write_lines(tmp_path / "original.jsonl", items)
    loaded = filekv("import", str(original), "--data-dir", str(source_dir))  # offline
    assert loaded.returncode == 0, loaded.stderr
    assert f"wrote {len(items):,} keys" in loaded.stderr

    source = Server(source_dir, tmp_path / "source.log", fsync="never")
    source.start()
    target = make_server(fsync="never")
    try:
        exported = tmp_path / "exported.jsonl"
        result = filekv("export", "-o", str(exported), "--url", source.url)
        assert result.returncode == 0, result.stderr
        assert f"exported {len(items):,} keys" in result.stderr
        assert not (tmp_path / "exported.jsonl.partial").exists()
        assert pairs(exported) == sorted((item["key"], item["value"]) for item in items)

        result = filekv("import", str(exported), "--url", target.url)
        assert result.returncode == 0, result.stderr
        assert f"wrote {len(items):,} keys" in result.stderr

        again = tmp_path / "again.jsonl"
        assert filekv("export", "-o", str(again), "--url", target.url).returncode == 0
        assert pairs(again) == pairs(exported)
        with target.client() as http:
            assert http.get("/stats").json()["keys"] == len(items)
    finally:
        source.stop()


def test_cli_import_bad_line_names_it_and_keeps_earlier_batches(
    make_server: MakeServer, tmp_path: Path
) -> None:
    server = make_server(fsync="never")
    items = [{"key": f"k{i:05d}", "value": str(i)} for i in range(1, 2501)]
    path = write_lines(tmp_path / "in.jsonl", items, bad={2203: b'{"key": "k", "value": 5}'})
    result = filekv("import", str(path), "--url", server.url, "--batch-size", "1000")
    assert result.returncode == 2
    assert "line 2203" in result.stderr and '"value" must be a string' in result.stderr
    assert "wrote 2,000 keys (lines 1-2,000)" in result.stderr
    with server.client() as http:
        lines = http.get("/export").text.splitlines()
    assert [json.loads(line)["key"] for line in lines] == [f"k{i:05d}" for i in range(1, 2001)]


def test_cli_import_dry_run_validates_and_counts(tmp_path: Path) -> None:
    good = write_lines(tmp_path / "good.jsonl", [{"key": f"k{i}", "value": "v"} for i in range(5)])
    result = filekv("import", str(good), "--dry-run", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["valid"] == 5
    assert json.loads(result.stdout)["written"] == 0


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"not json", "not JSON"),
        (b'["k", "v"]', "expected an object"),
        (b'{"key": "", "value": "v"}', '"key" must be a non-empty string'),
        (b'{"value": "v"}', '"key" must be a non-empty string'),
        (b'{"key": "k", "value": "v", "ttl": 5}', "unknown field 'ttl'"),
        (b'{"key": "k", "value": "v", "revision": "7"}', '"revision" must be a whole number'),
        (b'{"key": "k", "value": "v", "expires_at": "soon"}', '"expires_at" must be a Unix'),
        (b'{"key": "k", "value": "v", "expires_at": 9e12}', '"expires_at" must be a Unix'),
        (b"\xff\xfe", "not JSON"),
        (b'{"key": "k", "value": "' + b"v" * (12 << 20) + b'"}', "longer than 12,582,912 bytes"),
    ],
    ids=[
        "text",
        "array",
        "empty key",
        "no key",
        "unknown field",
        "revision",
        "expiry not a number",
        "expiry past ten years",
        "bytes",
        "huge",
    ],
)
def test_cli_import_dry_run_names_the_bad_line(tmp_path: Path, line: bytes, message: str) -> None:
    bad = write_lines(tmp_path / "bad.jsonl", [{"key": "a", "value": "v"}] * 3, bad={2: line})
    result = filekv("import", str(bad), "--dry-run")
    assert result.returncode == 2
    assert f"line 2: {message}" in result.stderr


def test_cli_export_import_keeps_ttls_and_leaves_out_expired_lines(
    make_server: MakeServer, tmp_path: Path
) -> None:
    source = make_server()
    with source.client() as http:
        assert http.put("/keys/t/short", json={"value": "s", "ttl": 600}).status_code == 201
        assert http.put("/keys/t/plain", json={"value": "p"}).status_code == 201
        lines = [json.loads(line) for line in http.get("/export").text.splitlines()]
    by_key = {line["key"]: line for line in lines}
    assert "expires_at" not in by_key["t/plain"]
    expires_at = by_key["t/short"]["expires_at"]
    # An export line from long ago: its key has expired, so import leaves it out.
    stale = {"key": "t/stale", "value": "x", "expires_at": expires_at - 10_000}
    path = write_lines(tmp_path / "ttl.jsonl", [*lines, stale])
    target = make_server()
    result = filekv("import", str(path), "--url", target.url, "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["written"], summary["expired"]) == (2, 1)
    with target.client() as http:
        short = http.get("/keys/t/short").json()
        assert short["expires_in"] is not None
        assert abs(short["expires_in"] - (expires_at - time.time())) < 30  # the same expiry
        assert http.get("/keys/t/plain").json()["expires_in"] is None
        assert http.get("/keys/t/stale").status_code == 404


def test_cli_import_from_stdin_and_refused_batch(make_server: MakeServer, tmp_path: Path) -> None:
    server = make_server(fsync="never", max_value_bytes=10)
    lines = (
        b'{"key": "a", "value": "short"}\n\n{"key": "b", "value": "far too long a value"}\n'
        b'{"key": "c", "value": "fine"}\nnot json\n'  # read ahead while b is sent: neither counts
    )
    result = filekv("import", "-", "--url", server.url, "--batch-size", "1", stdin=lines)
    assert result.returncode == 2, result.stderr
    assert "the batch of lines 3-3 was refused" in result.stderr
    assert "wrote 1 keys (lines 1-1)" in result.stderr
    with server.client() as http:
        assert read_all(http, "") == {"a": "short"}


def test_cli_import_data_dir_in_use_is_refused(make_server: MakeServer, tmp_path: Path) -> None:
    server = make_server()
    path = write_lines(tmp_path / "in.jsonl", [{"key": "k", "value": "v"}])
    result = filekv("import", str(path), "--data-dir", str(server.data_dir))
    assert result.returncode == 1
    assert "in use" in result.stderr
    both = filekv("import", str(path), "--data-dir", "x", "--url", server.url)
    assert both.returncode == 2
    # FILEKV_URL in the environment is no --url: --data-dir is what was asked for.
    offline = tmp_path / "offline"
    env = {**os.environ, "FILEKV_URL": server.url}
    result = subprocess.run(
        [FILEKV, "import", str(path), "--data-dir", str(offline)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert list(offline.glob("*.seg"))


def test_cli_export_to_stdout_and_errors(make_server: MakeServer, tmp_path: Path) -> None:
    server = make_server(auth_mode="all")
    result = filekv("export", "--url", server.url)
    assert result.returncode == 4  # 401: not logged in
    assert result.stdout == ""
    down = filekv("export", "--url", "http://127.0.0.1:9", "-o", str(tmp_path / "out.jsonl"))
    assert down.returncode == 7
    assert not list(tmp_path.glob("out.jsonl*"))  # neither the file nor its .partial


def _run_on_a_terminal(args: list[str]) -> bytes:
    """Run with stderr on a pseudo-terminal; everything written there."""
    master, slave = pty.openpty()
    process = subprocess.Popen(
        [FILEKV, *args], stdout=subprocess.DEVNULL, stderr=slave, stdin=subprocess.DEVNULL
    )
    os.close(slave)
    output = b""
    while True:
        ready, _, _ = select.select([master], [], [], 60)
        if not ready:
            break
        try:
            data = os.read(master, 1 << 16)
        except OSError:  # EIO: the process closed the terminal
            break
        if not data:
            break
        output += data
    process.wait(60)
    os.close(master)
    return output


def test_cli_import_progress_bar_only_on_a_terminal(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "in.jsonl", [{"key": f"k{i}", "value": "v"} for i in range(3000)])
    on_terminal = _run_on_a_terminal(["import", str(path), "--dry-run"])
    assert b"keys/s" in on_terminal and b"3000/3000" in on_terminal
    assert b"\x1b[" in on_terminal
    piped = filekv("import", str(path), "--dry-run")
    assert "\x1b[" not in piped.stderr and "3000/3000" not in piped.stderr
    assert "would write 3,000 keys" in piped.stderr


def test_cli_export_progress_bar_on_a_terminal(make_server: MakeServer, tmp_path: Path) -> None:
    server = make_server(fsync="never")
    path = write_lines(tmp_path / "in.jsonl", [{"key": f"k{i}", "value": "v"} for i in range(3000)])
    assert filekv("import", str(path), "--url", server.url).returncode == 0
    out = tmp_path / "out.jsonl"
    on_terminal = _run_on_a_terminal(["export", "-o", str(out), "--url", server.url])
    assert b"keys/s" in on_terminal and b"3000/3000" in on_terminal
    assert len(out.read_text().splitlines()) == 3000


def test_import_takes_the_servers_longest_ttl() -> None:
    # transfer_cli keeps its own copy of MAX_TTL (it loads no engine module): the two must agree,
    # or import would refuse lines the server takes, or send ttls the server refuses.
    from filekv import transfer_cli
    from filekv.engine.expiry import MAX_TTL

    assert transfer_cli.MAX_TTL == MAX_TTL
