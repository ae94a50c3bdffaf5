"""``filekv backup --data-dir`` and ``filekv restore``: offline, in process (``CliRunner``).

Over HTTP, ``filekv backup`` is tested on a real server in ``tests/e2e/test_e2e_backup.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Final

import pytest
from typer.testing import CliRunner

from filekv.cli import app
from filekv.engine import Store
from filekv.service.users import UserFile

runner = CliRunner()
FILEKV: Final = str(Path(sys.executable).parent / "filekv")
FAST = {"fsync": "never", "auto_compact": False}


def _store(path: Path, keys: int = 30) -> None:
    with Store.open(path, **FAST) as db:
        for i in range(keys):
            db.put(f"k{i}", f"v{i}".encode())


def _contents(path: Path) -> dict[str, bytes | None]:
    with Store.open(path, **FAST) as db:
        return {key: db.get(key) for key in db.scan()}


def test_cli_backup_offline_and_restore_round_trip(tmp_path: Path) -> None:
    _store(tmp_path / "data")
    made = runner.invoke(
        app, ["backup", str(tmp_path / "b.tar"), "--data-dir", str(tmp_path / "data")]
    )
    assert made.exit_code == 0, made.output
    assert made.output.startswith("backup of revision 30: 30 keys, ")
    assert not list(tmp_path.glob("*.partial"))
    assert not [n for n in os.listdir(tmp_path / "data") if n.startswith(".backup-")]
    done = runner.invoke(
        app, ["restore", str(tmp_path / "b.tar"), "--data-dir", str(tmp_path / "copy"), "--json"]
    )
    assert done.exit_code == 0, done.output
    figures = json.loads(done.stdout)
    assert (figures["revision"], figures["keys"], figures["to"]) == (30, 30, str(tmp_path / "copy"))
    assert _contents(tmp_path / "copy") == _contents(tmp_path / "data")


def test_cli_backup_to_stdout_and_restore_from_stdin(tmp_path: Path) -> None:
    _store(tmp_path / "data")
    made = runner.invoke(app, ["backup", "-", "--data-dir", str(tmp_path / "data")])
    assert made.exit_code == 0
    archive = made.stdout_bytes
    assert archive[257:262] == b"ustar"  # a tar header, on stdout; the summary went to stderr
    done = runner.invoke(app, ["restore", "-", "--data-dir", str(tmp_path / "copy")], input=archive)
    assert done.exit_code == 0, done.output
    assert _contents(tmp_path / "copy") == _contents(tmp_path / "data")


def test_cli_backup_offline_refuses_a_directory_in_use(tmp_path: Path) -> None:
    with Store.open(tmp_path / "data", **FAST):
        made = runner.invoke(
            app, ["backup", str(tmp_path / "b.tar"), "--data-dir", str(tmp_path / "data")]
        )
    assert made.exit_code == 1
    assert "is in use (is a server running?)" in made.output
    assert not list(tmp_path.glob("b.tar*"))


def test_cli_backup_offline_refuses_a_missing_directory(tmp_path: Path) -> None:
    made = runner.invoke(
        app, ["backup", str(tmp_path / "b.tar"), "--data-dir", str(tmp_path / "nope")]
    )
    assert made.exit_code == 1 and "no data directory at" in made.output
    assert not (tmp_path / "nope").exists()


def test_cli_restore_refuses_a_directory_in_use_or_not_empty(tmp_path: Path) -> None:
    _store(tmp_path / "data")
    runner.invoke(app, ["backup", str(tmp_path / "b.tar"), "--data-dir", str(tmp_path / "data")])
    _store(tmp_path / "other", keys=3)
    refused = runner.invoke(
        app, ["restore", str(tmp_path / "b.tar"), "--data-dir", str(tmp_path / "other")]
    )
    assert (
        refused.exit_code == 1 and "is not empty" in refused.output and "--force" in refused.output
    )
    with Store.open(tmp_path / "other", **FAST):
        busy = runner.invoke(
            app,
            ["restore", str(tmp_path / "b.tar"), "--data-dir", str(tmp_path / "other"), "--force"],
        )
    assert busy.exit_code == 1 and "is in use" in busy.output
    assert len(_contents(tmp_path / "other")) == 3
    forced = runner.invoke(
        app, ["restore", str(tmp_path / "b.tar"), "--data-dir", str(tmp_path / "other"), "--force"]
    )
    assert forced.exit_code == 0, forced.output
    assert _contents(tmp_path / "other") == _contents(tmp_path / "data")


def test_cli_restore_of_a_corrupted_archive_names_the_file_and_offset(tmp_path: Path) -> None:
    _store(tmp_path / "data", keys=200)
    runner.invoke(app, ["backup", str(tmp_path / "b.tar"), "--data-dir", str(tmp_path / "data")])
    data = bytearray((tmp_path / "b.tar").read_bytes())
    with tarfile.open(tmp_path / "b.tar") as tar:
        segment = next(m for m in tar.getmembers() if m.name.endswith(".seg"))
    data[segment.offset_data + segment.size // 2] ^= 0x55
    (tmp_path / "bad.tar").write_bytes(bytes(data))
    done = runner.invoke(
        app, ["restore", str(tmp_path / "bad.tar"), "--data-dir", str(tmp_path / "copy")]
    )
    assert done.exit_code == 1
    line = " ".join(done.output.split())
    assert line.startswith(
        f"filekv: {tmp_path / 'bad.tar'}: member {segment.name} is damaged at offset "
    )
    assert "of the archive)" in line
    assert not (tmp_path / "copy").exists()


@pytest.mark.parametrize("size", [0, 100, 511])
def test_cli_restore_of_a_short_or_empty_file_is_refused(tmp_path: Path, size: int) -> None:
    (tmp_path / "short.tar").write_bytes(b"\0" * size)
    done = runner.invoke(
        app, ["restore", str(tmp_path / "short.tar"), "--data-dir", str(tmp_path / "copy")]
    )
    assert done.exit_code == 1 and "short.tar: ends at offset" in done.output


def test_cli_restore_of_a_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    done = runner.invoke(
        app, ["restore", str(tmp_path / "nope.tar"), "--data-dir", str(tmp_path / "copy")]
    )
    assert done.exit_code == 2 and "cannot read" in done.output
    assert not (tmp_path / "copy").exists()


def test_cli_restore_max_bytes_refuses_a_larger_archive(tmp_path: Path) -> None:
    _store(tmp_path / "data")
    runner.invoke(app, ["backup", str(tmp_path / "b.tar"), "--data-dir", str(tmp_path / "data")])
    done = runner.invoke(
        app,
        [
            "restore",
            str(tmp_path / "b.tar"),
            "--data-dir",
            str(tmp_path / "copy"),
            "--max-bytes",
            "10",
        ],
    )
    assert done.exit_code == 1 and "over the limit of 10" in done.output


def _backup_with_a_user(tmp_path: Path) -> bytes:
    _store(tmp_path / "data", keys=53)
    UserFile(tmp_path / "data").add("alice", "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaA")
    made = runner.invoke(
        app, ["backup", str(tmp_path / "b.tar"), "--data-dir", str(tmp_path / "data")]
    )
    assert made.exit_code == 0, made.output
    return (tmp_path / "b.tar").read_bytes()


@pytest.mark.parametrize(
    ("damage", "why"),
    [
        (b"c2F", "member users.json is damaged: its SHA-256 is not the one the manifest"),
        (b'"ali', "member users.json is damaged: its SHA-256 is not the one the manifest"),
        (b'"keys": 5', "damaged manifest: it does not match its manifest_sha256"),
    ],
    ids=["password-salt", "user-name", "manifest-keys"],
)
def test_cli_restore_refuses_a_bit_flipped_in_users_json_or_the_manifest(
    tmp_path: Path, damage: bytes, why: str
) -> None:
    """The audit's cases: each restored with exit 0 before (the user's password then refused,
    the user renamed, the key count wrong)."""
    data = bytearray(_backup_with_a_user(tmp_path))
    data[data.index(damage) + len(damage) - 1] ^= 0x01  # its last byte: "53" becomes "43"
    (tmp_path / "bad.tar").write_bytes(bytes(data))
    done = runner.invoke(
        app, ["restore", str(tmp_path / "bad.tar"), "--data-dir", str(tmp_path / "copy")]
    )
    assert done.exit_code == 1
    assert done.output.startswith(f"filekv: {tmp_path / 'bad.tar'}: {why}")
    assert done.output.count("\n") == 1, done.output
    assert not (tmp_path / "copy").exists()


def test_cli_restore_of_a_malformed_users_json_says_so_in_one_line(tmp_path: Path) -> None:
    """A users.json damaged before the backup was taken (its SHA-256 is of the damaged bytes):
    refused in one line, not after the server's log of a damaged users file. A real process:
    that log reached stderr through logging's last resort, which pytest's handlers hide."""
    _store(tmp_path / "data")
    (tmp_path / "data" / "users.json").write_text('{"format": 1, "users": {"bob": {}}}\n')
    made = runner.invoke(
        app, ["backup", str(tmp_path / "b.tar"), "--data-dir", str(tmp_path / "data")]
    )
    assert made.exit_code == 0, made.output
    done = subprocess.run(
        [FILEKV, "restore", str(tmp_path / "b.tar"), "--data-dir", str(tmp_path / "copy")],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("FILEKV_")},
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stderr == (
        f"filekv: {tmp_path / 'b.tar'}: member users.json is damaged: not a filekv users file "
        "(a required field is missing)\n"
    )
    assert not (tmp_path / "copy").exists()


@pytest.mark.parametrize("case", ["missing directory", "a directory", "not a regular file"])
@pytest.mark.parametrize("source", ["data-dir", "url"])
def test_cli_backup_refuses_an_output_it_cannot_write_before_starting(
    tmp_path: Path, case: str, source: str
) -> None:
    """The audit: over HTTP a FileNotFoundError or IsADirectoryError traceback; offline, the
    whole backup taken first, then "backup failed" (exit 1)."""
    _store(tmp_path / "data")
    out, says = {
        "missing directory": (tmp_path / "nope" / "b.tar", f"{tmp_path / 'nope'} does not exist"),
        "a directory": (tmp_path, f"{tmp_path} is a directory"),
        # A FIFO, never /dev/null: as root, the code before this replaced it with a file.
        "not a regular file": (tmp_path / "fifo", f"{tmp_path / 'fifo'} is not a regular file"),
    }[case]
    os.mkfifo(tmp_path / "fifo")
    # Nothing listens on port 9: a backup that asked it would exit 7.
    where = (
        ["--data-dir", str(tmp_path / "data")]
        if source == "data-dir"
        else ["--url", "http://127.0.0.1:9"]
    )
    made = runner.invoke(app, ["backup", str(out), *where])
    assert made.exit_code == 2, made.output
    assert made.stderr.startswith("filekv: ") and says in made.stderr
    assert made.stderr.count("\n") == 1 and made.stdout == ""
    assert not list(tmp_path.rglob("*.partial"))
    assert not [n for n in os.listdir(tmp_path / "data") if n.startswith(".backup-")]


def test_cli_backup_to_stdout_with_json_puts_the_summary_on_stderr(tmp_path: Path) -> None:
    """The audit: the JSON summary was appended to the archive on stdout."""
    _store(tmp_path / "data")
    made = runner.invoke(app, ["backup", "-", "--data-dir", str(tmp_path / "data"), "--json"])
    assert made.exit_code == 0, made.output
    archive = made.stdout_bytes
    assert archive.endswith(b"\0" * 1024)  # the tar's end, and nothing after it
    figures = json.loads(made.stderr)
    assert (figures["bytes"], figures["keys"], figures["to"]) == (len(archive), 30, "-")
    done = runner.invoke(app, ["restore", "-", "--data-dir", str(tmp_path / "copy")], input=archive)
    assert done.exit_code == 0, done.output
    assert _contents(tmp_path / "copy") == _contents(tmp_path / "data")
