"""Disk faults on a real file system (issue 4, item 6): a 2 MiB tmpfs as the data directory.

Filling it makes writes fail with 507 and a clear detail; reads keep working; nothing already
acknowledged is damaged (checked again after a restart); once space is freed (a filler file placed
beside the data directory is deleted) writes succeed again. A read-only data directory at
start-up makes ``filekv serve`` exit non-zero with a message naming the problem. Needs root and
mount(8); skipped with the reason otherwise. Every mount is unmounted in a ``finally``.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.server import Server

FILLER_BYTES = 640 << 10
VALUE_CHARS = 60_000


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, check=False)


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    mountpoint = tmp_path / "tiny"
    mountpoint.mkdir()
    mounted = _run("mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mountpoint))
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip() or mounted.returncode}")
    try:
        yield mountpoint
    finally:
        unmounted = _run("umount", str(mountpoint))
        if unmounted.returncode != 0:
            _run("umount", "-l", str(mountpoint))


def test_disk_full_gives_507_keeps_reads_and_recovers_when_space_is_freed(
    tiny_fs: Path, tmp_path: Path
) -> None:
    filler = tiny_fs / "filler"
    filler.write_bytes(b"\0" * FILLER_BYTES)  # tmpfs allocates it for real
    server = Server(tiny_fs / "data", tmp_path / "server.log")
    acknowledged: dict[str, str] = {}
    try:
        server.start()
        with server.client() as client:
            full = None
            for number in range(200):  # 2 MiB / 60 kB: full long before this bound
                key, value = f"fill/{number:04d}", f"{number:04d}" + "v" * VALUE_CHARS
                answer = client.put(f"/keys/{key}", json={"value": value})
                if answer.status_code == 507:
                    full = answer
                    break
                assert answer.status_code == 201, answer.text
                acknowledged[key] = value
            assert full is not None, "the 2 MiB file system never filled up"
            detail = full.json()["detail"]
            print(f"\ndisk full after {len(acknowledged)} writes: 507 {detail!r}")
            assert any(word in detail.lower() for word in ("disk", "space", "full")), detail
            # Full stays full: small writes may still fit, but a large one is refused again,
            # and the refused writes are not there.
            again = client.put("/keys/fill/again", json={"value": "v" * VALUE_CHARS})
            assert again.status_code == 507, again.text
            assert client.get("/keys/fill/again").status_code == 404

            # Reads keep working, every acknowledged value intact.
            assert client.get("/healthz").json() == {"status": "ok"}
            for key, value in acknowledged.items():
                got = client.get(f"/keys/{key}")
                assert got.status_code == 200 and got.json()["value"] == value, key
            listed = client.get("/keys", params={"prefix": "fill/", "limit": 10000}).json()
            assert listed["keys"] == sorted(acknowledged)

            # Free space: writes work again, without a restart.
            filler.unlink()
            after = client.put("/keys/after-free", json={"value": "v" * VALUE_CHARS})
            assert after.status_code == 201, after.text
            acknowledged["after-free"] = "v" * VALUE_CHARS
            deleted = client.delete("/keys/fill/0000")
            assert deleted.status_code == 204
            del acknowledged["fill/0000"]
        assert server.stop() == 0, server.log()[-2000:]  # a graceful shutdown exits 0
        assert "Application shutdown complete" in server.log()

        # Nothing acknowledged was damaged: a fresh process reads back exactly the same.
        server = Server(tiny_fs / "data", tmp_path / "server2.log")
        server.start()
        with server.client() as client:
            listed = client.get("/keys", params={"limit": 10000}).json()["keys"]
            assert listed == sorted(acknowledged)
            for key, value in acknowledged.items():
                assert client.get(f"/keys/{key}").json()["value"] == value, key
            assert client.get("/stats").json()["recovered_truncations"] == 0
    finally:
        server.stop()


def test_disk_full_read_only_data_dir_at_startup_exits_with_a_clear_error(
    tiny_fs: Path, tmp_path: Path
) -> None:
    data = tiny_fs / "data"
    server = Server(data, tmp_path / "first.log")
    server.start()
    with server.client() as client:
        assert client.put("/keys/kept", json={"value": "yes"}).status_code == 201
    assert server.stop() in (0, -signal.SIGTERM)
    remounted = _run("mount", "-o", "remount,ro", str(tiny_fs))
    if remounted.returncode != 0:
        pytest.skip(f"cannot remount read-only: {remounted.stderr.strip()}")
    assert not os.access(data, os.W_OK) or _run("touch", str(data / "probe")).returncode != 0

    refused = Server(data, tmp_path / "readonly.log")
    process = refused.spawn()
    try:
        code = process.wait(60)
    except subprocess.TimeoutExpired:
        refused.stop()
        pytest.fail(f"filekv serve kept running on a read-only data dir: {refused.log()}")
    output = refused.log()
    print(f"\nread-only start-up: exit {code}; output: {output.strip()[-300:]!r}")
    assert code != 0
    assert "read-only" in output.lower() or "read only" in output.lower(), output
    assert str(data) in output, output
    assert "Traceback" not in output, output  # a message for an operator, not a stack trace
