"""``Client.watch`` and ``AsyncClient.watch`` against a real server, and ``filekv watch``.

Each watch runs in a thread (or a task) while the test writes; bounded waits only (a hang
fails), nothing asserts on time. The restart test is the one that matters most: the client
reconnects by itself and resumes after the last change it yielded.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import pytest
import support.server
from clientkit import unique
from support.server import FILEKV, Server

from filekv import client_cli
from filekv.client import (
    AsyncClient,
    Change,
    Client,
    FilekvError,
    Gone,
    InvalidRequest,
    Unauthorized,
)
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


# -- line ends: CR, LF and CR LF only ----------------------------------------------------------

# Characters str.splitlines breaks at besides CR and LF (httpx's iter_lines did too): in an event
# stream they are a value's or a key's own.
ODD_BREAKS = ("\u0085", "\u2028", "\u2029", "\x0b", "\x0c", "\x1c")


def test_client_and_cli_watch_keys_and_values_with_unicode_line_separators(
    server: Server, tmp_path: Path
) -> None:
    prefix = unique("sep") + "/"
    written = [(f"{prefix}k{char}{i}", f"v{char}w") for i, char in enumerate(ODD_BREAKS)]
    with Client(server.url) as kv:
        first = kv.put(prefix + "plain", "v\u2028w")
        for key, value in written:
            kv.put(key, value)
        expected = [(prefix + "plain", "v\u2028w"), *written]
        got: list[Change] = []
        thread = _collect(kv.watch(prefix, from_revision=first), len(expected), got)
        thread.join(30)
    assert not thread.is_alive()
    assert [(c.key, c.value) for c in got] == expected

    async def main() -> list[Change]:
        async with AsyncClient(server.url) as kv:
            changes: list[Change] = []
            async for change in kv.watch(prefix, from_revision=first):
                changes.append(change)
                if len(changes) == len(expected):
                    return changes
        raise AssertionError("the watch ended")

    assert [(c.key, c.value) for c in asyncio.run(asyncio.wait_for(main(), 30))] == expected

    environ = {k: v for k, v in os.environ.items() if not k.startswith("FILEKV_")}
    environ.update(FILEKV_URL=server.url, XDG_CONFIG_HOME=str(tmp_path))
    process = subprocess.Popen(
        [FILEKV, "watch", prefix, "--from", str(first), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=environ,
    )
    try:
        assert process.stdout is not None
        lines = [process.stdout.readline() for _ in expected]
    finally:
        process.kill()
        process.wait(30)
    assert process.stderr is not None
    assert [(p["key"], p["value"]) for p in map(json.loads, lines)] == expected, (
        process.stderr.read()
    )


# An event of every line end SSE knows (LF, CR LF, CR), cut into chunks at awkward places: a CR
# LF split between two chunks, a character split between two, U+2028 in the data.
ODD_CHUNKS = [
    b"retry: 10\r",
    b"\nid: 4\r\n\r",
    b"\n: heartbeat\rid: 5\revent: put\r",
    b'\ndata: {"key": "a\xe2\x80',
    b'\xa8b", "value": "x\xc2',
    b'\x85y", "revision": 5, "expires_in": null}\n',
    b"\r",
    b"\n",
]


def test_client_watch_breaks_lines_at_cr_lf_and_crlf_only() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, headers={"content-type": "text/event-stream"}, content=iter(ODD_CHUNKS)
        )

    with Client("http://filekv.test", transport=httpx.MockTransport(answer)) as kv:
        watch = kv.watch()
        change = next(watch)
    assert (change.key, change.value, change.event_id) == ("a\u2028b", "x\u0085y", "5")
    assert watch.last_event_id == "5"


def test_async_client_watch_breaks_lines_at_cr_lf_and_crlf_only() -> None:
    async def answer(request: httpx.Request) -> httpx.Response:
        async def chunks() -> AsyncIterator[bytes]:
            for chunk in ODD_CHUNKS:
                yield chunk

        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=chunks())

    async def main() -> tuple[Change, str | None]:
        transport = httpx.MockTransport(answer)
        async with AsyncClient("http://filekv.test", transport=transport) as kv:
            watch = kv.watch()
            change = await anext(watch)
            await watch.aclose()
            return change, watch.last_event_id

    change, last_event_id = asyncio.run(main())
    assert (change.key, change.value, change.event_id) == ("a\u2028b", "x\u0085y", "5")
    assert last_event_id == "5"


# -- a heartbeat's id moves the position --------------------------------------------------------


class FakeWatchServer:
    """A stand-in for filekv over real HTTP: each ``GET /watch`` gets the next of ``answers``
    (status, body; 200 is an event stream, sent and then the connection closed: dropped),
    ``/healthz`` is 200; ``watches`` records each /watch's query and Last-Event-ID."""

    def __init__(self, answers: list[tuple[int, bytes]]) -> None:
        self.answers = answers
        self.watches: list[tuple[str, str | None]] = []
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path, _, query = self.path.partition("?")
                if path == "/healthz":
                    self._answer(200, "application/json", b'{"status": "ok"}')
                    return
                fake.watches.append((query, self.headers.get("Last-Event-ID")))
                if not fake.answers:
                    self._answer(410, "application/json", b'{"detail": "the test is over"}')
                    return
                status, body = fake.answers.pop(0)
                kind = "text/event-stream" if status == 200 else "application/json"
                self._answer(status, kind, body)

            def _answer(self, status: int, kind: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Connection", "close")
                self.end_headers()  # no length: the body ends where the connection does
                self.wfile.write(body)
                self.wfile.flush()

            def log_message(self, *args: object) -> None:
                pass

        self.http = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"
        self.thread = threading.Thread(target=self.http.serve_forever, daemon=True)

    def __enter__(self) -> FakeWatchServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.shutdown()
        self.http.server_close()


# Where the stream starts (4), the change at revision 5, then an idle stream's heartbeats: a
# comment and an id with no data (the hub at revision 9, no change under the prefix since).
IDLE_STREAM = (
    b"retry: 10\nid: 4\n\n"
    b'id: 5\nevent: put\ndata: {"key": "a", "value": "1", "revision": 5, "expires_in": null}\n\n'
    b": heartbeat\n\n: heartbeat\nid: 9\n\n"
)
NEXT_CHANGE = b'id: 12\nevent: put\ndata: {"key": "a", "value": "2", "revision": 12}\n\n'


def test_client_watch_resumes_after_a_heartbeats_id() -> None:
    """The connection drops after a heartbeat named position 9: the reconnect asks for what
    follows 9, not 5 (the last change), as an EventSource would."""
    with FakeWatchServer([(200, IDLE_STREAM), (200, NEXT_CHANGE)]) as fake, Client(fake.url) as kv:
        watch = kv.watch("a", from_revision=5)
        assert next(watch).revision == 5
        assert next(watch).revision == 12
        assert watch.last_event_id == "12"
        watch.close()
    assert fake.watches == [("prefix=a&from_revision=5", None), ("prefix=a", "9")]
    with Client("http://filekv.test") as kv, pytest.raises(InvalidRequest, match="not both"):
        kv.watch(from_revision=5, last_event_id="9")


def test_async_client_watch_resumes_after_a_heartbeats_id() -> None:
    async def main(url: str) -> list[int]:
        async with AsyncClient(url) as kv:
            watch = kv.watch("a", from_revision=5)
            revisions = [(await anext(watch)).revision, (await anext(watch)).revision]
            await watch.aclose()
            return revisions

    with FakeWatchServer([(200, IDLE_STREAM), (200, NEXT_CHANGE)]) as fake:
        assert asyncio.run(asyncio.wait_for(main(fake.url), 30)) == [5, 12]
    assert fake.watches == [("prefix=a&from_revision=5", None), ("prefix=a", "9")]


def test_cli_watch_resumes_after_a_heartbeats_id(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`filekv watch` makes a watch again itself once the client's own reconnect failed too (two
    503s): that one goes on from the heartbeat's 9 as well, not from the last change printed."""
    busy = (503, b'{"detail": "too many watchers"}')
    monkeypatch.setattr(client_cli, "RETRY_SECONDS", 0.01)
    with FakeWatchServer([(200, IDLE_STREAM), busy, busy]) as fake, Client(fake.url) as kv:
        verb = client_cli.Session(fake.url, kv, None)
        with pytest.raises(Gone):  # the fake's end
            client_cli._watch(verb, "a", 5, as_json=False)
    assert capsys.readouterr().out == '5 put "a" "1"\n'
    assert fake.watches == [
        ("prefix=a&from_revision=5", None),
        ("prefix=a", "9"),  # the client's reconnect
        ("prefix=a", "9"),  # and its second try
        ("prefix=a", "9"),  # filekv watch's
    ]


def test_client_watch_ends_with_unauthorized_when_its_token_dies(
    make_server: Callable[..., Server],
) -> None:
    # The server ends a stream whose token died with a last "event: unauthorized"; the client
    # took it for an unknown event, reconnected with the dead token, and only then failed.
    server = make_server(auth_mode="all")
    with server.client() as http:
        watcher = support.server.login(http, "watcher")
        writer = support.server.login(http, "writer")
        token = watcher["Authorization"].removeprefix("Bearer ")
        start = http.get("/stats", headers=writer).json()["revision"] + 1
        outcome: list[BaseException | Change] = []

        def watch() -> None:
            try:
                with Client(server.url, token=token) as kv:
                    for change in kv.watch("au/", from_revision=start):
                        outcome.append(change)
            except BaseException as exc:
                outcome.append(exc)

        thread = threading.Thread(target=watch, daemon=True)
        thread.start()
        assert http.put("/keys/au/1", json={"value": "a"}, headers=writer).status_code == 201
        deadline = time.monotonic() + 10
        while not outcome and time.monotonic() < deadline:
            time.sleep(0.05)
        assert http.post("/auth/logout", headers=watcher).status_code == 204
        time.sleep(0.6)  # the stream asks about its token at most every 0.5 s
        assert http.put("/keys/au/2", json={"value": "b"}, headers=writer).status_code == 201
        thread.join(10)
    assert not thread.is_alive()
    assert isinstance(outcome[0], Change) and outcome[0].key == "au/1"
    assert isinstance(outcome[-1], Unauthorized), outcome
    # The stream's own last word, not the 401 of a reconnect made with the dead token.
    assert "the token this stream was opened with" in outcome[-1].detail
    assert not any(isinstance(o, Change) and o.key == "au/2" for o in outcome)
