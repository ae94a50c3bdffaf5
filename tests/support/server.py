"""A real ``filekv serve`` subprocess and logging in to it: end to end, CLI, client, reliability.

``Server(data_dir, log_path, *args, **settings)`` runs exactly what a user runs, ``filekv serve
--data-dir D --port P`` plus any extra CLI ``args``, with each keyword setting passed as its
``FILEKV_<NAME>`` environment variable (``fsync="always"`` unless told otherwise). Every start
takes a new free loopback port and appends the process's output to ``log_path``, after a
``--- start N on port P`` line, so the whole history of a restarted server stays in one file.

Deadlines are generous because the machine is small and shared; they only bound waits so that a
hang fails, nothing here asserts on time.

Talking to it: ``PASSWORD`` (every test user's, unless a test needs its own), ``login`` (register
if new, log in: the session's headers), ``read_all`` (every key under a prefix with its value,
following the paging cursor) and ``quote_key`` (a key as it goes in a URL path).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

import httpx

from filekv.client._protocol import tls_verify

FILEKV: Final = str(Path(sys.executable).parent / "filekv")
START_TIMEOUT: Final = 60.0
STOP_TIMEOUT: Final = 60.0
CLIENT_TIMEOUT: Final = 30.0
LOG_TAIL: Final = 4000  # enough of the log to see why a start failed, without flooding the report
PASSWORD: Final = "correct horse battery"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def serve_command(data_dir: Path, port: int, *args: str) -> list[str]:
    """The ``filekv serve`` command line, for tests that run a second process their own way."""
    return [FILEKV, "serve", "--data-dir", str(data_dir), "--port", str(port), *args]


class Server:
    """One ``filekv serve`` on ``data_dir``; it can be started again on the same directory."""

    def __init__(self, data_dir: Path, log_path: Path, *args: str, **settings: Any) -> None:
        self.data_dir = data_dir
        self.log_path = log_path
        self.args = args
        self.settings: dict[str, Any] = {"fsync": "always", **settings}
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def spawn(self) -> subprocess.Popen[bytes]:
        """Start the process on a new port without waiting for it to serve (or to fail)."""
        self.port = free_port()
        env = {**os.environ}
        env.update({f"FILEKV_{name.upper()}": str(value) for name, value in self.settings.items()})
        with self.log_path.open("ab") as log:
            log.write(f"--- start {self.starts} on port {self.port}\n".encode())
            log.flush()  # before the child writes to the same file
            self.process = subprocess.Popen(
                serve_command(self.data_dir, self.port, *self.args),
                env=env,
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
            )
        self.starts += 1
        return self.process

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Spawn, wait for ``/healthz``; raise with the log's tail if it exits or never answers."""
        process = self.spawn()
        deadline = time.monotonic() + timeout
        # One client for every poll: a new one per poll cost ~175 ms of this process's CPU
        # (and so of the server's start on two cores), mostly loading the CA bundle.
        with http_client(self.url, timeout=2) as probe:
            while time.monotonic() < deadline:
                if process.poll() is not None:
                    raise RuntimeError(f"server exited {process.returncode}: {self.log_tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    if probe.get("/healthz").status_code == 200:
                        return
                time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"server did not become healthy in {timeout} s: {self.log_tail()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int | None:
        """Send ``sig`` and wait for the exit: the exit code (negative: ended by that signal).

        ``None`` if it was never spawned, so a ``finally`` can always call it. A process still
        running after ``timeout`` is killed and ``TimeoutExpired`` raised: a hung shutdown must
        fail the test, and must not outlive it.
        """
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        finally:
            self.kill()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def restart(self, sig: int = signal.SIGTERM) -> None:
        self.stop(sig)
        self.start()

    def client(self, **kwargs: Any) -> httpx.Client:
        kwargs.setdefault("timeout", CLIENT_TIMEOUT)
        return http_client(self.url, **kwargs)

    def log(self) -> str:
        """Everything every start of this server wrote, so that "never logged" checks see it all."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self) -> str:
        return self.log()[-LOG_TAIL:]


@contextlib.contextmanager
def running(folder: Path, *args: str, **settings: Any) -> Iterator[Server]:
    """A started ``Server`` on ``folder/data`` logging to ``folder/server.log``; stopped after
    (a module's shared server: ``with running(tmp_path_factory.mktemp(...)) as server``)."""
    server = Server(folder / "data", folder / "server.log", *args, **settings)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def user_command(
    data_dir: Path | str, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``filekv user ARGS --data-dir D``, as an operator runs it beside the server: no
    ``FILEKV_*`` variables of the test's environment, its output captured."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FILEKV_")}
    return subprocess.run(
        [FILEKV, "user", *args, "--data-dir", str(data_dir)],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


# -- talking to it ---------------------------------------------------------------------------------


def http_client(url: str, **kwargs: Any) -> httpx.Client:
    """An ``httpx.Client`` of ``url`` (``kwargs`` as httpx takes them) that skips loading the CA
    bundle for a plain ``http://`` URL, as filekv's own client does (``tls_verify``): httpx
    loads it for every new client, ~175 ms of CPU each on these machines, which the suite paid
    hundreds of times beside the servers it was waiting for."""
    kwargs.setdefault("verify", tls_verify(url))
    return httpx.Client(base_url=url, **kwargs)


def login(client: httpx.Client, username: str = "alice") -> dict[str, str]:
    """Register ``username`` if new, log in: the Authorization header of a new session.

    ``client`` may be a ``TestClient`` too (it is an ``httpx.Client``).
    """
    client.post("/auth/register", json={"username": username, "password": PASSWORD})
    answer = client.post("/auth/token", data={"username": username, "password": PASSWORD})
    assert answer.status_code == 200, answer.text
    return {"Authorization": f"Bearer {answer.json()['access_token']}"}


def read_all(client: httpx.Client, prefix: str) -> dict[str, str]:
    """Every committed key under ``prefix`` with its value, following the paging cursor."""
    keys: list[str] = []
    after: str | None = None
    for _ in range(100_000):  # bounded: each page advances the cursor
        params: dict[str, str | int] = {"prefix": prefix, "limit": 1000}
        if after is not None:
            params["after"] = after
        page = client.get("/keys", params=params)
        assert page.status_code == 200, page.text
        body = page.json()
        keys.extend(body["keys"])
        after = body["next"]
        if after is None:
            break
    values: dict[str, str] = {}
    for key in keys:
        answer = client.get(f"/keys/{quote_key(key)}")
        assert answer.status_code == 200, (key, answer.status_code, answer.text)
        values[key] = answer.json()["value"]
    return values


def quote_key(key: str) -> str:
    return quote(key, safe="/")
