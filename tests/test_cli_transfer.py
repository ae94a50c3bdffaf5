"""``filekv export`` and ``filekv import`` as a user runs them: real CLI processes, real servers.

The round trip (export, import into an empty server, export again: the same keys and values)
runs with 20,000 keys here (twenty batches of the default 1,000 each way) and with 1,000,000
under ``FILEKV_SOAK=1``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pty
import select
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import orjson
import pytest
from support.limits import limit_file_size
from support.server import FILEKV, Server, read_all

from filekv import transfer_cli

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


# -- output paths, write failures, --json, Ctrl-C, unreachable servers (the CLI audit) ----------

UNREACHABLE = "http://127.0.0.1:9"  # nothing listens: a verb that asked it would exit 7


def _one_error_line(stderr: str) -> str:
    """The single ``filekv: ...`` line of ``stderr``: no traceback, nothing else."""
    assert "Traceback" not in stderr and "Error:" not in stderr, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("filekv: "), stderr
    return lines[0]


@pytest.mark.parametrize("case", ["missing directory", "a directory", "not a regular file"])
def test_cli_export_refuses_an_output_it_cannot_write_before_asking_the_server(
    tmp_path: Path, case: str
) -> None:
    """The audit: a FileNotFoundError or IsADirectoryError traceback, after the export ran."""
    output, says = {
        "missing directory": (tmp_path / "nope" / "x.jsonl", f"{tmp_path / 'nope'} does not exist"),
        "a directory": (tmp_path, f"{tmp_path} is a directory"),
        # A FIFO, never /dev/null: as root, the code before this replaced it with a file.
        "not a regular file": (tmp_path / "fifo", f"{tmp_path / 'fifo'} is not a regular file"),
    }[case]
    os.mkfifo(tmp_path / "fifo")
    result = filekv("export", "-o", str(output), "--url", UNREACHABLE)
    assert result.returncode == 2, result.stderr  # not 7: the server was never asked
    assert says in _one_error_line(result.stderr)
    assert result.stdout == ""
    assert not list(tmp_path.rglob("*.partial"))


def test_cli_export_write_failure_is_one_line_and_leaves_nothing(
    make_server: MakeServer, tmp_path: Path
) -> None:
    server = make_server(fsync="never")
    path = write_lines(
        tmp_path / "in.jsonl", [{"key": f"k{i}", "value": "v" * 100} for i in range(2000)]
    )
    assert filekv("import", str(path), "--url", server.url).returncode == 0
    output = tmp_path / "out" / "all.jsonl"
    output.parent.mkdir()
    result = subprocess.run(
        [FILEKV, "export", "-o", str(output), "--url", server.url],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=limit_file_size(50_000),
        check=False,
    )
    assert result.returncode == 1
    line = _one_error_line(result.stderr)
    assert line.startswith(f"filekv: cannot write {output}.partial: File too large; ")
    assert list(output.parent.iterdir()) == []  # neither the file nor its .partial
    with open("/dev/full", "wb") as full:
        to_full = subprocess.run(
            [FILEKV, "export", "--url", server.url],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
            check=False,
        )
    assert to_full.returncode == 1
    assert _one_error_line(to_full.stderr).startswith("filekv: cannot write to stdout: No space")


def test_cli_export_json_summary_on_stdout_or_beside_the_export(
    make_server: MakeServer, tmp_path: Path
) -> None:
    server = make_server(fsync="never")
    path = write_lines(tmp_path / "in.jsonl", [{"key": f"k{i}", "value": "v"} for i in range(5)])
    assert filekv("import", str(path), "--url", server.url).returncode == 0
    to_file = filekv("export", "-o", str(tmp_path / "out.jsonl"), "--json", "--url", server.url)
    assert to_file.returncode == 0, to_file.stderr
    figures = json.loads(to_file.stdout)
    assert (figures["keys"], figures["revision"]) == (5, 1)  # one batch: one revision
    assert figures["to"] == str(tmp_path / "out.jsonl")
    assert to_file.stderr == ""
    to_stdout = filekv("export", "--prefix", "k1", "--json", "--url", server.url)
    assert to_stdout.returncode == 0, to_stdout.stderr
    assert [json.loads(line)["key"] for line in to_stdout.stdout.splitlines()] == ["k1"]
    summary = json.loads(to_stdout.stderr)  # stdout holds the export: the summary is beside it
    assert (summary["keys"], summary["prefix"], summary["to"]) == (1, "k1", "-")


def _import_then_ctrl_c(server: Server, path: Path, *args: str) -> tuple[int, str, str]:
    """Run an import of ``path`` and send it SIGINT once the server holds some of its keys."""
    process = subprocess.Popen(
        [FILEKV, "import", str(path), "--url", server.url, "--batch-size", "10", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        with server.client() as http:
            deadline = time.monotonic() + 60
            while http.get("/stats").json()["keys"] < 100:
                assert process.poll() is None, process.communicate()
                assert time.monotonic() < deadline, "the import wrote nothing"
                time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    return process.returncode, stdout, stderr


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_cli_import_ctrl_c_says_exactly_what_was_written(
    make_server: MakeServer, tmp_path: Path, as_json: bool
) -> None:
    """The audit: exit 130 and not a word, though some batches were committed."""
    server = make_server(fsync="never")
    lines = 200_000  # at 10 keys a batch: far longer than it takes to be interrupted
    path = write_lines(
        tmp_path / "in.jsonl", [{"key": f"k{i:06d}", "value": "v"} for i in range(lines)]
    )
    code, stdout, stderr = _import_then_ctrl_c(server, path, *(["--json"] if as_json else []))
    assert code == 130, stderr
    assert "Traceback" not in stderr
    with server.client() as http:
        stored = http.get("/stats").json()["keys"]
    assert 100 <= stored < lines
    message, summary = stderr.splitlines()
    assert message == (
        f"filekv: interrupted (Ctrl-C): the keys of lines 1-{stored:,} are written, none after; "
        f"to write the rest: tail -n +{stored + 1} {path} | filekv import -"
    )
    assert summary.startswith(f"wrote {stored:,} keys (lines 1-{stored:,}) up to revision ")
    if as_json:
        figures = json.loads(stdout)
        assert (figures["written"], figures["last_line"]) == (stored, stored)
        assert figures["error"] == message.removeprefix("filekv: ")
    else:
        assert stdout == ""


def test_cli_import_to_an_unreachable_server_says_the_batch_was_not_sent(tmp_path: Path) -> None:
    """The audit: "the batch of lines 1-1 was refused" though it never left."""
    path = write_lines(tmp_path / "in.jsonl", [{"key": "k", "value": "v"}])
    result = filekv("import", str(path), "--url", "http://127.0.0.1:1")
    assert result.returncode == 7
    message, summary = result.stderr.splitlines()
    assert message == (
        "filekv: the batch of lines 1-1 could not be sent to http://127.0.0.1:1 (connection "
        "refused), none of it written; is the server running there? (--url or FILEKV_URL)"
    )
    assert summary.startswith("wrote 0 keys in ")


def test_cli_import_batch_without_an_answer_may_be_written(tmp_path: Path) -> None:
    """A server that takes the request and closes the connection without answering: the batch
    may have been written, and the message says so rather than "refused" or "not sent"."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def hang_up() -> None:
        with contextlib.suppress(OSError):
            while True:
                connection, _ = listener.accept()
                connection.recv(1 << 16)
                connection.close()

    threading.Thread(target=hang_up, daemon=True).start()
    try:
        path = write_lines(tmp_path / "in.jsonl", [{"key": "k", "value": "v"}])
        result = filekv("import", str(path), "--url", f"http://127.0.0.1:{port}")
    finally:
        listener.close()
    assert result.returncode == 7
    message = result.stderr.splitlines()[0]
    assert message.startswith(
        f"filekv: the batch of lines 1-1 was sent to http://127.0.0.1:{port} "
    )
    assert "but no answer came (" in message
    assert "), so it may or may not be written; check the keys of those lines" in message


def test_cli_import_ctrl_c_offline_counts_the_batch_it_was_writing(tmp_path: Path) -> None:
    """``--data-dir``: the batch being written when Ctrl-C comes is finished and counted."""
    from filekv.engine import Store

    data = tmp_path / "data"
    lines = 200_000
    items = [{"key": f"k{i:06d}", "value": "v"} for i in range(lines)]
    path = write_lines(tmp_path / "in.jsonl", items)
    process = subprocess.Popen(
        [FILEKV, "import", str(path), "--data-dir", str(data), "--batch-size", "10"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "FILEKV_FSYNC": "never"},
    )
    try:
        deadline = time.monotonic() + 60
        while sum(f.stat().st_size for f in data.glob("*.seg")) < 100_000:
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the import wrote nothing"
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        _stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, stderr
    with Store.open(data) as store:
        stored = sum(1 for _ in store.scan())
    assert 0 < stored < lines
    assert stderr.splitlines()[0].startswith(
        f"filekv: interrupted (Ctrl-C): the keys of lines 1-{stored:,} are written, none after"
    )


class _EmptiedOnceTested(list[transfer_cli.Batch]):
    """The sender thread's list of the batch on its way, which that thread empties (the batch
    answered) right after the main thread tested it, before it indexed it."""

    def __bool__(self) -> bool:
        held = len(self) > 0
        self.clear()
        return held


def test_import_second_ctrl_c_takes_one_look_at_the_batch_on_its_way() -> None:
    """A second Ctrl-C names the batch being sent from one snapshot of the list the sender
    thread empties at any moment: a test, then an index, was an IndexError traceback when the
    batch was answered in between."""
    batch = transfer_cli.Batch(first_line=1, last_line=2)
    assert transfer_cli._on_its_way(_EmptiedOnceTested([batch])) is batch
    assert transfer_cli._on_its_way([]) is None


@pytest.mark.parametrize("how", ["online", "dry run", "offline"])
def test_cli_import_counts_expired_lines_wherever_they_are(
    make_server: MakeServer, tmp_path: Path, how: str
) -> None:
    """Expired lines are left out and counted, with the lines they are on, also at the end of the
    file where no key follows them in their batch, and in a file of nothing else."""
    stale = time.time() - 3600
    live = {"key": "i/live", "value": "x"}
    files = {
        "only expired": ([{"key": "i/b", "value": "x", "expires_at": 1}], (0, 1, 1)),
        "expired at the end": (
            [
                live,
                {"key": "i/b", "value": "x", "expires_at": 1},
                {"key": "i/c", "value": "x", "expires_at": stale},
            ],
            (1, 3, 2),
        ),
        "expired around a batch": (
            [
                {"key": "i/b", "value": "x", "expires_at": stale},
                live,
                {"key": "i/c", "value": "x", "expires_at": stale},
                {"key": "i/d", "value": "y"},
                {"key": "i/e", "value": "x", "expires_at": stale},
            ],
            (2, 5, 3),
        ),
    }
    target = make_server(fsync="never") if how == "online" else None
    for number, (name, (items, (valid, last_line, expired))) in enumerate(files.items()):
        path = write_lines(tmp_path / f"{number}.jsonl", items)
        where = {
            "online": ["--url", target.url if target else ""],
            "dry run": ["--dry-run"],
            "offline": ["--data-dir", str(tmp_path / f"data{number}")],
        }[how]
        result = filekv("import", str(path), "--json", "--batch-size", "1", *where)
        assert result.returncode == 0, (name, result.stderr)
        summary = json.loads(result.stdout)
        figures = (summary["valid"], summary["last_line"], summary["expired"])
        assert figures == (valid, last_line, expired), name
        plain = filekv("import", str(path), "--dry-run")
        noun = "key" if expired == 1 else "keys"
        assert f"; {expired} expired {noun} left out" in plain.stderr, name
        if valid:
            assert f"(lines 1-{last_line})" in plain.stderr, name


def test_import_counts_a_ttl_from_when_its_batch_is_sent() -> None:
    """A batch read, then sent later (it waited behind another): its ttls are counted from the
    moment it is sent, not from when its lines were read, so the key expires when it should."""
    expires_at = time.time() + 1000
    line = orjson.dumps({"key": "k", "value": "v", "expires_at": expires_at}) + b"\n"
    (batch,) = transfer_cli.read_batches(io.BytesIO(line), 10)
    time.sleep(0.5)  # waiting in the queue
    sent: list[tuple[float, list[dict[str, Any]]]] = []

    class Target:
        url = "http://filekv.test"

        def batch(self, ops: list[dict[str, Any]]) -> int:
            sent.append((time.time(), ops))
            return 1

    transfer_cli._write_online(cast(Any, Target()))(batch)
    ((at, ops),) = sent
    assert abs(ops[0]["ttl"] - (expires_at - at)) < 0.1
