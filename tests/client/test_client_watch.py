"""``Client.watch`` and ``AsyncClient.watch`` against a real server, and ``filekv watch``.

Each watch runs in a thread (or a task) while the test writes; bounded waits only (a hang
fails), nothing asserts on time. The restart test is the one that matters most: the client
reconnects by itself and resumes after the last change it yielded.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import support.server
from clientkit import unique
from support.server import FILEKV, Server

from filekv.client import AsyncClient, Change, Client, FilekvError, Gone, InvalidRequest
from filekv.engine import Store


def _collect(watch: Iterator[Change], count: int, into: list[Change]) -> threading.Thread:
    def run() -> None:
        for change in watch:
            into.append(change)
            if len(into) == count:
                return

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_client_watch_yields_changes_from_a_revision(server: Server) -> None:
    prefix = unique("cw") + "/"
    with Client(server.url) as kv:
        first = kv.put(prefix + "a", "1")
        kv.batch([("put", prefix + "b", "2"), ("delete", prefix + "a")])
        got: list[Change] = []
        thread = _collect(kv.watch(prefix, from_revision=first), 4, got)
        kv.put(prefix + "c", "3")  # the client's own calls go on while it watches
        thread.join(30)
    assert not thread.is_alive()
    assert [(c.op, c.key, c.value) for c in got] == [
        ("put", prefix + "a", "1"),
        ("put", prefix + "b", "2"),
        ("delete", prefix + "a", None),
        ("put", prefix + "c", "3"),
    ]
    assert got[0].revision == first
    assert got[1].event_id == f"{first + 1}.0"
    assert got[2].event_id == str(first + 1)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_client_watch_resumes_across_a_server_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sig: int
) -> None:
    """Killed or stopped, the server comes back with every acknowledged write (fsync=always),
    and the watch goes on after the last change it yielded: nothing lost, nothing twice."""
    server = Server(tmp_path / "data", tmp_path / "server.log")
    server.start()
    # The client keeps its URL: the server comes back on the same port.
    monkeypatch.setattr(support.server, "free_port", lambda: server.port)
    try:
        with Client(server.url) as kv:
            got: list[Change] = []
            thread = _collect(kv.watch("r/", from_revision=1, reconnect_timeout=120), 6, got)
            written = [kv.put(f"r/{i}", str(i)) for i in range(3)]
            while len(got) < 3 and thread.is_alive():
                threading.Event().wait(0.02)
            server.restart(sig)
            written += [kv.put(f"r/{i}", "again") for i in range(3)]
            thread.join(60)
        assert not thread.is_alive()
        assert [c.revision for c in got] == written  # nothing lost, nothing twice
    finally:
        server.stop()


def test_async_client_watch(server: Server) -> None:
    prefix = unique("aw") + "/"

    async def main() -> list[Change]:
        async with AsyncClient(server.url) as kv:
            got: list[Change] = []

            async def watch() -> None:
                async for change in kv.watch(key=prefix + "k"):
                    got.append(change)
                    if len(got) == 2:
                        return

            task = asyncio.create_task(watch())
            await asyncio.sleep(0.3)  # the stream is open (a change before would be missed)
            await kv.put(prefix + "other", "not this key")
            await kv.put(prefix + "k", "1")
            await kv.delete(prefix + "k")
            await asyncio.wait_for(task, 30)
            return got

    got = asyncio.run(main())
    assert [(c.op, c.key, c.value) for c in got] == [
        ("put", prefix + "k", "1"),
        ("delete", prefix + "k", None),
    ]


def test_client_watch_errors_of_the_request_end_it(server: Server) -> None:
    with Client(server.url) as kv, pytest.raises(InvalidRequest):
        next(iter(kv.watch(key="")))


def test_client_and_cli_watch_from_a_compacted_revision(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with Store.open(data, fsync="never", watch_history=1) as store:
        for i in range(5):
            store.put("k", str(i).encode())
        store.compact()  # seals the segment with revisions 1-5
        for i in range(5):
            store.put("k", str(i).encode())
        assert store.compact()  # and merges it: history before revision 6 is gone
    server = Server(data, tmp_path / "server.log", fsync="never", watch_history=1)
    server.start()
    try:
        with Client(server.url) as kv, pytest.raises(Gone) as caught:
            next(iter(kv.watch(from_revision=1)))
        assert caught.value.oldest_revision is not None and caught.value.oldest_revision > 1
        environ = {k: v for k, v in os.environ.items() if not k.startswith("FILEKV_")}
        environ.update(FILEKV_URL=server.url, XDG_CONFIG_HOME=str(tmp_path))
        done = subprocess.run(
            [FILEKV, "watch", "--from", "1"],
            capture_output=True,
            text=True,
            env=environ,
            timeout=60,
        )
        assert done.returncode == 9, done.stderr
        assert done.stderr.startswith("filekv: ") and "(410)" in done.stderr
    finally:
        server.stop()


def test_cli_watch_prints_each_change(server: Server, tmp_path: Path) -> None:
    prefix = unique("cli") + "/"
    with Client(server.url) as kv:
        first = kv.put(prefix + "a", "x y")
        kv.delete(prefix + "a")
    environ = {k: v for k, v in os.environ.items() if not k.startswith("FILEKV_")}
    environ.update(FILEKV_URL=server.url, XDG_CONFIG_HOME=str(tmp_path))
    for extra, expected in (
        ([], [f'{first} put "{prefix}a" "x y"', f'{first + 1} delete "{prefix}a"']),
        (
            ["--json"],
            [
                {"revision": first, "op": "put", "key": prefix + "a", "value": "x y"},
                {"revision": first + 1, "op": "delete", "key": prefix + "a", "value": None},
            ],
        ),
    ):
        process = subprocess.Popen(
            [FILEKV, "watch", prefix, "--from", str(first), *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=environ,
        )
        try:
            assert process.stdout is not None
            lines = [process.stdout.readline().rstrip("\n") for _ in expected]
        finally:
            process.kill()
            process.wait(30)
        if extra:
            parsed = [json.loads(line) for line in lines]
            assert [{k: v for k, v in p.items() if k != "expires_in"} for p in parsed] == expected
        else:
            assert lines == expected


PAGE_BYTES = 16 << 20  # what the wrong URL would send, 16 MiB
CHUNK = b"<p>not an event stream</p>".ljust(64 << 10, b" ")


def _html(status: int, pulled: list[int]) -> tuple[dict[str, str], Iterator[bytes]]:
    def body() -> Iterator[bytes]:
        for _ in range(PAGE_BYTES // len(CHUNK)):
            pulled[0] += len(CHUNK)
            yield CHUNK

    return {"content-type": "text/html"}, body()


@pytest.mark.parametrize("status", [200, 404])
def test_client_watch_reads_little_of_an_answer_that_is_not_a_stream(status: int) -> None:
    """A --url naming a large page (or an endless stream of something else): the error is
    raised after at most 64 KiB of it is read, not once the whole is in memory."""
    pulled = [0]

    def answer(request: httpx.Request) -> httpx.Response:
        headers, body = _html(status, pulled)
        return httpx.Response(status, headers=headers, content=body)

    transport = httpx.MockTransport(answer)
    with (
        Client("http://filekv.test", transport=transport) as kv,
        pytest.raises(FilekvError) as error,
    ):
        next(iter(kv.watch(reconnect_timeout=0)))
    assert error.value.status == status
    assert pulled[0] <= 1 << 20
    assert len(error.value.detail) <= 64 << 10


@pytest.mark.parametrize("status", [200, 404])
def test_async_client_watch_reads_little_of_an_answer_that_is_not_a_stream(status: int) -> None:
    pulled = [0]

    async def answer(request: httpx.Request) -> httpx.Response:
        headers, body = _html(status, pulled)

        async def chunks() -> AsyncIterator[bytes]:
            for chunk in body:
                yield chunk

        return httpx.Response(status, headers=headers, content=chunks())

    async def main() -> FilekvError:
        transport = httpx.MockTransport(answer)
        async with AsyncClient("http://filekv.test", transport=transport) as kv:
            with pytest.raises(FilekvError) as error:
                await anext(aiter(kv.watch(reconnect_timeout=0)))
        return error.value

    error = asyncio.run(main())
    assert error.status == status
    assert pulled[0] <= 1 << 20
    assert len(error.detail) <= 64 << 10
