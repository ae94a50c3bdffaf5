"""``GET /admin/backup`` and ``filekv backup``/``restore`` on a real ``filekv serve`` (issue 11).

The backup is taken while eight clients write; restored, it must hold exactly the acknowledged
writes up to its revision. The bounds are provoked for real: a second backup while one streams,
a client that stops reading, a client that goes away.
"""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from support.server import FILEKV, PASSWORD, Server, http_client, login

from filekv.engine import Store
from filekv.restore import restore

MakeServer = Callable[..., Server]
WRITERS = 8


def _run(
    *args: str, env: dict[str, str] | None = None, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FILEKV_")}
    return subprocess.run(
        [FILEKV, *args],
        input=stdin,
        capture_output=True,
        text=True,
        env={**clean, **(env or {})},
        timeout=120,
    )


def _admin(server: Server, client: httpx.Client, name: str = "root") -> dict[str, str]:
    added = _run(
        "user",
        "add",
        name,
        "--admin",
        "--password-stdin",
        "--data-dir",
        str(server.data_dir),
        stdin=PASSWORD + "\n",
    )
    assert added.returncode == 0, added.stderr
    return login(client, name)


def _staging(server: Server) -> list[str]:
    return [n for n in os.listdir(server.data_dir) if n.startswith(".backup-")]


def _wait_until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_e2e_backup_while_eight_writers_run_holds_exactly_the_writes_up_to_its_revision(
    make_server: MakeServer, tmp_path: Path
) -> None:
    server = make_server(fsync="always")
    acknowledged: list[list[tuple[str, str, int]]] = [[] for _ in range(WRITERS)]
    stop = threading.Event()
    errors: list[BaseException] = []

    def write(worker: int) -> None:
        try:
            with server.client() as client:
                for i in range(100_000):
                    if stop.is_set():
                        return
                    key, value = f"w{worker}/{i:06d}", f"value {worker} {i} " + "x" * 100
                    answer = client.put(f"/keys/{key}", json={"value": value})
                    assert answer.status_code == 201, answer.text
                    acknowledged[worker].append((key, value, answer.json()["revision"]))
        except BaseException as error:
            errors.append(error)

    with server.client() as client:
        root = _admin(server, client)
        threads = [threading.Thread(target=write, args=(n,)) for n in range(WRITERS)]
        for thread in threads:
            thread.start()
        try:
            _wait_until(lambda: sum(map(len, acknowledged)) >= 400)
            answer = client.get("/admin/backup", headers=root)
            _wait_until(lambda: sum(map(len, acknowledged)) >= 800 + 400)
        finally:
            stop.set()
            for thread in threads:
                thread.join(60)
    assert not errors, errors
    assert answer.status_code == 200
    revision = int(answer.headers["x-filekv-revision"])
    writes = [write for per_worker in acknowledged for write in per_worker]
    before = {key: value for key, value, written_at in writes if written_at <= revision}
    after = [key for key, _value, written_at in writes if written_at > revision]
    assert len(before) >= 400 and len(after) >= 100  # the backup was taken mid-run
    restore(io.BytesIO(answer.content), "backup.tar", tmp_path / "restored")
    with Store.open(tmp_path / "restored") as db:
        held = {key: (db.get(key) or b"").decode() for key in db.scan("w")}
        assert db.revision == revision
    assert held == before  # every write up to the revision, with its value, and none after
    print(
        f"backup under load: writers={WRITERS} revision={revision} archive_bytes="
        f"{len(answer.content)} acknowledged_before={len(before)} acknowledged_after="
        f"{len(after)} restored_keys={len(held)} violations=0"
    )


def test_e2e_backup_one_at_a_time_a_client_gone_one_stalled_and_a_sigterm(
    make_server: MakeServer,
) -> None:
    server = make_server(fsync="never", backup_time_limit=2)
    with server.client() as client:
        root = _admin(server, client)
        for i in range(24):  # 24 MiB: more than the sockets buffer, so a backup must wait
            client.put(f"/keys/big{i}", json={"value": "v" * (1 << 20)})
        with (
            http_client(server.url, timeout=30) as gone,
            gone.stream("GET", "/admin/backup", headers=root) as streaming,
        ):
            assert streaming.status_code == 200
            busy = client.get("/admin/backup", headers=root)
            assert busy.status_code == 429 and int(busy.headers["retry-after"]) >= 1
            assert "already running" in busy.json()["detail"]
            assert len(_staging(server)) == 1
        # That client went away mid-archive: its links are removed and the slot is free.
        _wait_until(lambda: not _staging(server))
        with (
            http_client(server.url, timeout=30) as slow,
            slow.stream("GET", "/admin/backup", headers=root) as streaming,
        ):
            time.sleep(3)  # reads nothing: the server's sends stall until backup_time_limit
            _wait_until(lambda: not _staging(server))
            with pytest.raises(httpx.RemoteProtocolError):
                for _chunk in streaming.iter_raw():
                    pass
        assert client.get("/admin/backup", headers=root).status_code == 200
    assert "backup download abandoned by the client" in server.log()
    assert "backup download cut off after 2.0 s (backup_time_limit)" in server.log()
    # The WARNING says it; uvicorn's ERROR about an unfinished answer is not logged.
    assert "without completing response" not in server.log()
    with (
        http_client(server.url, timeout=30) as stalled,
        stalled.stream("GET", "/admin/backup", headers=root) as streaming,
    ):
        assert streaming.status_code == 200
        # Reads nothing; uvicorn alone would wait for the answer to finish before it stops.
        assert server.stop() == 0  # raises if the server is still running after STOP_TIMEOUT
    assert "backup download cut off: the server is shutting down" in server.log()
    assert not _staging(server)


def test_e2e_cli_backup_over_http_and_restore_serve_the_same_data(
    make_server: MakeServer, tmp_path: Path
) -> None:
    server = make_server()
    config = {"XDG_CONFIG_HOME": str(tmp_path / "config")}
    with server.client() as client:
        root, alice = _admin(server, client), login(client, "alice")
        for i in range(50):
            client.put(f"/keys/k{i}", json={"value": f"v{i}"})
        anonymous = client.get("/admin/backup")
        assert anonymous.status_code == 401 and "detail" in anonymous.json()
        bad = client.get("/admin/backup", headers={"Authorization": "Bearer nonsense"})
        assert bad.status_code == 401
        user = client.get("/admin/backup", headers=alice)
        assert (user.status_code, user.json()["detail"]) == (403, "only an admin may do this")
        answer = client.get("/admin/backup", headers=root)
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/x-tar"
    assert answer.headers["x-filekv-revision"] == "50"
    assert answer.headers["content-disposition"] == 'attachment; filename="filekv-backup-50.tar"'
    assert int(answer.headers["content-length"]) == len(answer.content)
    with tarfile.open(fileobj=io.BytesIO(answer.content)) as tar:
        names = tar.getnames()
    assert names[0] == "filekv-backup.json" and names[-1] == "users.json"
    _wait_until(lambda: not _staging(server))
    as_alice = _run(
        "login", "alice", "--password-stdin", "--url", server.url, env=config, stdin=PASSWORD + "\n"
    )
    assert as_alice.returncode == 0, as_alice.stderr
    refused = _run("backup", str(tmp_path / "no.tar"), "--url", server.url, env=config)
    assert refused.returncode == 4 and "only an admin may do this (403)" in refused.stderr
    assert not list(tmp_path.glob("no.tar*"))  # no partial file left
    as_root = _run(
        "login", "root", "--password-stdin", "--url", server.url, env=config, stdin=PASSWORD + "\n"
    )
    assert as_root.returncode == 0, as_root.stderr
    done = _run("backup", str(tmp_path / "b.tar"), "--url", server.url, env=config)
    assert done.returncode == 0, done.stderr
    assert done.stderr.startswith("backup of revision 50: 50 keys, ")
    assert done.stderr.rstrip().endswith(f"-> {tmp_path / 'b.tar'}")
    assert oct(os.stat(tmp_path / "b.tar").st_mode & 0o777) == "0o600"
    restored = _run("restore", str(tmp_path / "b.tar"), "--data-dir", str(tmp_path / "restored"))
    assert restored.returncode == 0, restored.stderr
    assert restored.stderr.startswith("restored revision 50: 50 keys, ")
    # One bit of a password hash flipped: it still parses, only the SHA-256 the server put in
    # the manifest tells (before it, this restored and the right password was refused).
    damaged = bytearray((tmp_path / "b.tar").read_bytes())
    with tarfile.open(tmp_path / "b.tar") as tar:
        users = tar.getmember("users.json")
    damaged[damaged.index(b"$argon2id$", users.offset_data) + 40] ^= 0x01
    (tmp_path / "bad.tar").write_bytes(bytes(damaged))
    refused_restore = _run(
        "restore", str(tmp_path / "bad.tar"), "--data-dir", str(tmp_path / "bad")
    )
    assert refused_restore.returncode == 1
    assert refused_restore.stderr == (
        f"filekv: {tmp_path / 'bad.tar'}: member users.json is damaged: its SHA-256 is not the "
        f"one the manifest gives (offset {users.offset_data})\n"
    )
    assert not (tmp_path / "bad").exists()
    copy = Server(tmp_path / "restored", tmp_path / "restored.log")
    copy.start()
    try:
        with copy.client() as client:
            assert client.get("/keys/k7").json()["value"] == "v7"
            assert client.put("/keys/k50", json={"value": "new"}).json()["revision"] == 51
            token = client.post("/auth/token", data={"username": "root", "password": PASSWORD})
            headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
            assert client.get("/auth/me", headers=headers).json()["role"] == "admin"
    finally:
        copy.stop()
