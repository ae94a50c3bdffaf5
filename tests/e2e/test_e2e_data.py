"""A real ``filekv serve``: data survives restarts, and no acknowledged write is ever lost."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from urllib.parse import quote

import httpx
import pytest
from support.server import Server, http_client, serve_command

MakeServer = Callable[..., Server]  # the ``make_server`` fixture


def url(key: str) -> str:
    return "/keys/" + quote(key, safe="/")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_e2e_data_survives_restart(make_server: MakeServer, sig: int) -> None:
    server = make_server()
    keys = ["plain", "a/b/c", "%41", "100%", "ünï/日本", "sp ace", "q?x#y"]
    with server.client() as http:
        for index, key in enumerate(keys):
            assert http.put(url(key), json={"value": f"v{index}"}).status_code == 201
        assert http.delete(url("plain")).status_code == 204
    server.restart(sig)
    with server.client() as http:
        assert http.get(url("plain")).status_code == 404
        for index, key in enumerate(keys[1:], start=1):
            answer = http.get(url(key))
            assert answer.status_code == 200, key
            assert answer.json() == {
                "key": key,
                "value": f"v{index}",
                "revision": answer.json()["revision"],
                "expires_in": None,
            }
        assert http.get("/keys").json()["keys"] == sorted(keys[1:])


def write_until_refused(
    base_url: str, worker: int, acked: dict[str, str], stop: threading.Event
) -> None:
    """Write unique keys until the server goes away; record every acknowledged one."""
    with http_client(base_url, timeout=5) as http:
        for sequence in range(1_000_000):
            if stop.is_set():
                return
            key, value = f"w{worker}/{sequence:07d}", f"value {worker} {sequence}"
            try:
                answer = http.put(url(key), json={"value": value})
            except httpx.HTTPError:
                return
            if answer.status_code != 201:
                return
            acked[key] = value


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_e2e_data_signal_mid_load_loses_no_acknowledged_write(
    make_server: MakeServer, sig: int
) -> None:
    server = make_server()
    acked: dict[str, str] = {}
    stop = threading.Event()
    workers = [
        threading.Thread(target=write_until_refused, args=(server.url, n, acked, stop))
        for n in range(8)
    ]
    for worker in workers:
        worker.start()
    deadline = time.monotonic() + 10
    while len(acked) < 200 and time.monotonic() < deadline:
        time.sleep(0.02)
    code = server.stop(sig)
    stop.set()
    for worker in workers:
        worker.join(10)
    assert len(acked) >= 200
    if sig == signal.SIGTERM:
        assert code == 0, server.log()  # a graceful shutdown, then exit status 0
        assert "store closed" in server.log()
    else:
        assert code == -signal.SIGKILL
    server.start()
    with server.client() as http:
        stored: list[str] = []
        after: str | None = None
        while True:
            params: dict[str, str | int] = {"limit": 10_000}
            if after is not None:
                params["after"] = after
            page = http.get("/keys", params=params).json()
            stored += page["keys"]
            after = page["next"]
            if after is None:
                break
        missing = set(acked) - set(stored)
        assert not missing, sorted(missing)[:10]
        for key in list(acked)[:: max(1, len(acked) // 50)]:
            assert http.get(url(key)).json()["value"] == acked[key]


def test_e2e_data_second_server_on_same_dir_refuses(make_server: MakeServer) -> None:
    import subprocess

    server = make_server()
    other = subprocess.run(
        serve_command(server.data_dir, 0), capture_output=True, timeout=30, text=True
    )
    assert other.returncode != 0
    assert str(server.data_dir) in other.stdout + other.stderr
    with server.client() as http:
        assert http.get("/healthz").status_code == 200
