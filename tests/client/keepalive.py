"""``KeepAliveCutter``: a relay in front of a real server that makes the keep-alive race certain.

A server closes a keep-alive connection once it has been idle for its keep-alive timeout (uvicorn:
5 s). A client that sends its next request on that connection at that very moment has its
request cut off unanswered: httpx's ``RemoteProtocolError('Server disconnected without sending a
response.')``. With a real server the window is a few milliseconds wide; this relay widens it to
"always": a request arriving on a connection that has carried an answer and then been idle for
``keep_alive`` seconds or more is read and dropped, and the connection closed, as a server whose
timer fires just as the request arrives does. Anything sooner is relayed both ways unchanged.
``connections`` counts the connections accepted, ``cuts`` the requests dropped.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
import time
from types import TracebackType


class KeepAliveCutter:
    def __init__(self, upstream_port: int, keep_alive: float) -> None:
        self.upstream_port = upstream_port
        self.keep_alive = keep_alive
        self.connections = 0
        self.cuts = 0
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self._threads: list[threading.Thread] = []
        self._accepting = threading.Thread(target=self._accept, daemon=True)
        self._accepting.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}"

    def __enter__(self) -> KeepAliveCutter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._closed.set()
        self._accepting.join(10)
        self._listener.close()
        for thread in self._threads:
            thread.join(10)

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.connections += 1
            thread = threading.Thread(target=self._relay, args=(client,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _relay(self, client: socket.socket) -> None:
        # Like a reverse proxy, the relay keeps the client's connection apart from its own to
        # the server: when the server closes that one (its own keep-alive, or after an answer
        # with "Connection: close", which the client sees and acts on itself), the next request
        # goes on a new one. So only the relay decides when the client's connection is cut.
        upstream: socket.socket | None = None
        answered = False  # an answer went back: the connection is kept alive from now on
        last = time.monotonic()  # the last byte either way
        with contextlib.ExitStack() as stack:
            stack.enter_context(client)
            selector = stack.enter_context(selectors.DefaultSelector())
            selector.register(client, selectors.EVENT_READ)
            stack.callback(lambda: upstream is not None and upstream.close())
            while not self._closed.is_set():
                for key, _ in selector.select(timeout=0.1):
                    source: socket.socket = key.fileobj  # type: ignore[assignment]
                    try:
                        data = source.recv(65536)
                    except OSError:
                        data = b""
                    if not data and source is client:
                        return
                    if not data:  # the server closed its side: the client's stays open
                        assert upstream is not None
                        selector.unregister(upstream)
                        upstream.close()
                        upstream = None
                        continue
                    now = time.monotonic()
                    if source is client and answered and now - last >= self.keep_alive:
                        with self._lock:
                            self.cuts += 1
                        with contextlib.suppress(OSError):
                            client.shutdown(socket.SHUT_RDWR)
                        return
                    if source is client and upstream is None:
                        upstream = socket.create_connection(
                            ("127.0.0.1", self.upstream_port), timeout=10
                        )
                        selector.register(upstream, selectors.EVENT_READ)
                    target = upstream if source is client else client
                    assert target is not None
                    answered = answered or source is not client
                    try:
                        target.sendall(data)
                    except OSError:
                        return
                    last = now
