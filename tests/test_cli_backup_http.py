"""``filekv backup`` over HTTP, as a user runs it (a real process, a real server): what it does
when its output cannot be written, and where ``--json`` goes when the archive goes to stdout."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from support.limits import limit_file_size
from support.server import FILEKV, PASSWORD, Server, login

MakeServer = Callable[..., Server]


@pytest.fixture
def admin_server(make_server: MakeServer) -> tuple[Server, dict[str, str]]:
    """A server holding 2,000 keys, and the environment of an admin's ``filekv`` on it."""
    server = make_server(fsync="never")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FILEKV_")}
    data_dir = str(server.data_dir)
    added = subprocess.run(
        [FILEKV, "user", "add", "root", "--admin", "--password-stdin", "--data-dir", data_dir],
        input=PASSWORD + "\n",
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert added.returncode == 0, added.stderr
    with server.client() as http:
        headers = login(http, "root")
        for batch in range(2):
            ops = [{"op": "put", "key": f"k{batch}/{i}", "value": "v" * 100} for i in range(1000)]
            assert http.post("/batch", json={"ops": ops}, headers=headers).status_code == 200
    token = headers["Authorization"].removeprefix("Bearer ")
    return server, {**env, "FILEKV_URL": server.url, "FILEKV_TOKEN": token}


def test_cli_backup_write_failure_is_one_line_and_leaves_the_old_archive(
    admin_server: tuple[Server, dict[str, str]], tmp_path: Path
) -> None:
    """The audit: an OSError traceback."""
    _server, env = admin_server
    (tmp_path / "out").mkdir()  # tmp_path holds the server's files
    out = tmp_path / "out" / "b.tar"
    out.write_bytes(b"the previous archive")
    made = subprocess.run(
        [FILEKV, "backup", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        preexec_fn=limit_file_size(100_000),
        check=False,
    )
    assert made.returncode == 1
    assert made.stderr == (
        f"filekv: cannot write {out}.partial: File too large; {out} is untouched, the partial "
        "file removed\n"
    )
    assert out.read_bytes() == b"the previous archive"
    assert [p.name for p in out.parent.iterdir()] == ["b.tar"]


def test_cli_backup_to_stdout_with_json_keeps_the_archive_whole(
    admin_server: tuple[Server, dict[str, str]], tmp_path: Path
) -> None:
    """The audit: the JSON summary was written after the archive, on stdout."""
    _server, env = admin_server
    made = subprocess.run(
        [FILEKV, "backup", "-", "--json"], capture_output=True, env=env, timeout=120, check=False
    )
    assert made.returncode == 0, made.stderr
    figures = json.loads(made.stderr)
    assert (figures["bytes"], figures["keys"], figures["to"]) == (len(made.stdout), 2000, "-")
    assert made.stdout.endswith(b"\0" * 1024)  # the tar's end, and nothing after it
    done = subprocess.run(
        [FILEKV, "restore", "-", "--data-dir", str(tmp_path / "copy"), "--json"],
        input=made.stdout,
        capture_output=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["keys"] == 2000
