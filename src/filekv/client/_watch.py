"""What ``Client.watch`` and ``AsyncClient.watch`` share: the stream's parser and its position.

``GET /watch`` answers Server-Sent Events. ``EventParser`` reads them a line at a time by the
WHATWG rules the server relies on (``id:`` updates the last event id even without data, so the
server's first ``id:`` names where the stream starts). ``Resume`` remembers the last event id
and builds each (re)connection's request from it, so a watch that loses its connection, or is
told ``overflow`` (it read too slowly), goes on exactly after the last change it yielded:
no gap, no duplicate. An ``id:`` the server sends on an idle stream, with no event (a heartbeat
saying where the stream is), moves that position too, so a watch on a quiet prefix does not
fall behind the history compaction keeps. ``Watch`` and ``AsyncWatch`` (what ``watch`` returns)
show the position, for a program that starts a new watch where one ended. Only the sending
differs between the two clients.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator, Generator, Iterator
from dataclasses import dataclass
from typing import Any, Final

import httpx

from filekv.client._errors import (
    FilekvError,
    Gone,
    ServerError,
    Unauthorized,
    Unavailable,
    error_for_status,
    invalid_argument,
    not_filekv,
    translate_decode_errors,
    translate_request_errors,
    translate_transport_errors,
)
from filekv.client._protocol import read_capped_async, read_capped_sync, tls_verify

# Without a byte for this long (the server sends a heartbeat every 15 s by default), the
# connection is taken for dead and made again.
READ_TIMEOUT: Final = 60.0
RETRY_SECONDS: Final = 1.0  # before reconnecting, unless the server said otherwise (retry:)
CHANGE_EVENTS: Final = frozenset(("put", "delete", "expire"))


@dataclass(frozen=True, slots=True)
class Change:
    """One committed change a watch saw: ``op`` is "put", "delete" or "expire"; ``value`` is
    None unless a put; ``expires_in`` the put's seconds to live (None: no expiry); ``event_id``
    the stream's id for it (``"7"``, or ``"7.1"`` inside a batch)."""

    revision: int
    op: str
    key: str
    value: str | None
    expires_in: float | None
    event_id: str


@dataclass(slots=True)
class Event:
    name: str
    data: str


class EventParser:
    """Server-Sent Events from lines (without their line ends)."""

    def __init__(self, last_id: str | None = None, retry: float | None = None) -> None:
        self.last_id = last_id  # of the last event completed (a blank line)
        self.retry = retry  # seconds, when the server said
        self._id = last_id  # read, but its event not complete yet
        self._name = ""
        self._data: list[str] = []

    def line(self, line: str) -> Event | None:
        """Feed one line; the event it completes, if any."""
        if not line:
            # The id counts once its event is whole (an id alone counts too): a connection
            # cut in the middle of an event resumes before it.
            self.last_id = self._id
            data, name = self._data, self._name or "message"
            self._data, self._name = [], ""
            return Event(name, "\n".join(data)) if data else None
        if line.startswith(":"):
            return None  # a comment: the heartbeat
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "data":
            self._data.append(value)
        elif field == "event":
            self._name = value
        elif field == "id" and "\0" not in value:
            self._id = value
        elif field == "retry" and value.isdigit():
            self.retry = int(value) / 1000
        return None


_LINE_BREAK: Final = re.compile(rb"\r\n|\r|\n")


class LineSplitter:
    """Bytes of an event stream into its lines, broken as Server-Sent Events break them: at CR,
    LF or CR LF, and nowhere else (``str.splitlines``, and so httpx's ``iter_lines``, also
    breaks at U+0085, U+2028, U+2029 and more, which a value or a key may hold). A CR LF split
    between two chunks is one line end. Each line is decoded once whole (a UTF-8 character never
    holds a CR or LF byte, so none is cut); a line not yet ended waits for the next chunk, and
    one never ended (the connection cut) is dropped, as the event it belongs to."""

    def __init__(self) -> None:
        self._partial = bytearray()  # the line begun, not yet ended
        self._after_cr = False  # the last chunk ended with CR: an LF opening the next is its
        self._first = True  # a byte order mark opening the stream is dropped

    def feed(self, chunk: bytes) -> list[str]:
        """The lines ``chunk`` completes, without their line ends."""
        if not chunk:
            return []
        if self._after_cr and chunk[:1] == b"\n":
            chunk = chunk[1:]
        self._after_cr = chunk[-1:] == b"\r"
        parts = _LINE_BREAK.split(chunk)
        self._partial += parts[0]
        if len(parts) == 1:
            return []
        ended = [bytes(self._partial), *parts[1:-1]]
        self._partial = bytearray(parts[-1])
        lines = [part.decode("utf-8", "replace") for part in ended]
        if self._first:
            self._first = False
            lines[0] = lines[0].removeprefix("\ufeff")
        return lines


class Resume:
    """Where a watch is, and the request that goes on from there."""

    def __init__(
        self,
        prefix: str,
        key: str | None,
        from_revision: int | None,
        last_event_id: str | None = None,
    ) -> None:
        if from_revision is not None and last_event_id is not None:
            raise invalid_argument("give from_revision or last_event_id, not both")
        self.prefix = prefix
        self.key = key
        self.from_revision = from_revision
        self.parser = EventParser(last_event_id)

    @property
    def retry_seconds(self) -> float:
        return self.parser.retry if self.parser.retry is not None else RETRY_SECONDS

    def request(self, client: httpx.Client | httpx.AsyncClient) -> httpx.Request:
        params: dict[str, str | int] = {"key": self.key} if self.key is not None else {}
        if self.prefix:
            params["prefix"] = self.prefix
        headers = {"Accept": "text/event-stream"}
        if self.parser.last_id is not None:
            headers["Last-Event-ID"] = self.parser.last_id
        elif self.from_revision is not None:
            params["from_revision"] = self.from_revision
        with translate_request_errors("GET", "/watch"):
            return client.build_request("GET", "/watch", params=params, headers=headers)

    def new_parser(self) -> None:
        """A new connection: nothing half-read carries over, the position does."""
        last_id, retry = self.parser.last_id, self.parser.retry
        self.parser = EventParser(last_id, retry)

    def change(self, event: Event, response: httpx.Response) -> Change | None:
        """The change ``event`` announces; None for anything else. ``Gone`` if compaction
        overtook the stream while it caught up; ``FilekvError`` (``not_filekv``) if its data
        is not the JSON filekv sends."""
        if event.name in CHANGE_EVENTS:
            with translate_decode_errors(response):
                body: dict[str, Any] = json.loads(event.data)
                return Change(
                    revision=body["revision"],
                    op=event.name,
                    key=body["key"],
                    value=body.get("value"),
                    expires_in=body.get("expires_in"),
                    event_id=self.parser.last_id or str(body["revision"]),
                )
        if event.name == "compacted":
            with translate_decode_errors(response):
                body = json.loads(event.data)
                detail = str(body.get("detail", "compacted"))
                oldest = body.get("oldest_revision")
            raise Gone(detail, status=410, oldest_revision=oldest)
        if event.name == "unauthorized":  # the token died (logout, revoke, expiry): no reconnect
            with translate_decode_errors(response):
                detail = str(json.loads(event.data).get("detail", "the token is no longer valid"))
            raise Unauthorized(detail, status=401)
        return None  # "overflow": the stream ends and the watch reconnects from last_id


class Watch(Iterator[Change]):
    """What ``Client.watch`` returns: an iterator of the changes (``for change in watch``), and
    where the watch is (``last_event_id``)."""

    def __init__(self, changes: Generator[Change, None, None], resume: Resume) -> None:
        self._changes = changes
        self._resume = resume

    def __iter__(self) -> Watch:
        return self

    def __next__(self) -> Change:
        return next(self._changes)

    @property
    def last_event_id(self) -> str | None:
        """The id of the last event the server completed: the last change yielded, or an
        ``id:`` the server sent since on an idle stream (a heartbeat's); None before the first.
        ``watch(..., last_event_id=...)`` goes on from there, also after this one failed."""
        return self._resume.parser.last_id

    def close(self) -> None:
        """Close the watch's connection (leaving a ``for`` loop early does not; ending the
        program, or dropping every reference to the watch, does)."""
        self._changes.close()


class AsyncWatch(AsyncIterator[Change]):
    """What ``AsyncClient.watch`` returns: ``Watch`` for ``async for``."""

    def __init__(self, changes: AsyncGenerator[Change, None], resume: Resume) -> None:
        self._changes = changes
        self._resume = resume

    def __aiter__(self) -> AsyncWatch:
        return self

    async def __anext__(self) -> Change:
        return await anext(self._changes)

    @property
    def last_event_id(self) -> str | None:
        """As ``Watch.last_event_id``."""
        return self._resume.parser.last_id

    async def aclose(self) -> None:
        """Close the watch's connection."""
        await self._changes.aclose()


def is_stream(response: httpx.Response) -> bool:
    """Whether ``response`` is a watch's stream: 200 and ``text/event-stream``."""
    kind = response.headers.get("content-type", "").partition(";")[0].strip().lower()
    return response.status_code == 200 and kind == "text/event-stream"


def read_error_sync(response: httpx.Response) -> FilekvError:
    """``stream_error`` of an answer that is not a stream, reading at most
    ``MAX_ERROR_BYTES`` of it (a wrong URL may name a large file, or an endless stream of
    something else)."""
    return stream_error(read_capped_sync(response))


async def read_error_async(response: httpx.Response) -> FilekvError:
    """``read_error_sync`` for an ``httpx.AsyncClient``'s answer."""
    return stream_error(await read_capped_async(response))


def stream_error(response: httpx.Response) -> FilekvError:
    """The error for an answer (read) that is not a stream: the status's for 400 and up,
    ``not_filekv``'s for another status or a body that is not an event stream."""
    if response.status_code >= 400:
        return error_for_status(response)
    location = response.headers.get("location")
    why = f"a redirect to {location}" if location else "not a text/event-stream"
    return not_filekv(response, f"{why}; is the client's URL a filekv server's own?")


def _connection(
    url: str, headers: httpx.Headers, timeout: float, transport: Any, *, asynchronous: bool
) -> Any:
    # A connection of its own: the client's one pooled connection stays free for the calls a
    # program makes while it watches.
    limits = httpx.Timeout(timeout, read=READ_TIMEOUT)
    cls = httpx.AsyncClient if asynchronous else httpx.Client
    verify = tls_verify(url)
    return cls(base_url=url, headers=headers, timeout=limits, transport=transport, verify=verify)


def watch_sync(
    url: str,
    headers: httpx.Headers,
    timeout: float,
    transport: httpx.BaseTransport | None,
    resume: Resume,
    reconnect_timeout: float | None,
) -> Generator[Change, None, None]:
    """``Client.watch``: connect, yield the changes, reconnect from the last one."""
    http: httpx.Client = _connection(url, headers, timeout, transport, asynchronous=False)
    down_since: float | None = None
    try:
        while True:
            try:
                with translate_transport_errors():
                    response = http.send(resume.request(http), stream=True)
                    try:
                        if not is_stream(response):
                            raise read_error_sync(response)
                        down_since = None
                        resume.new_parser()
                        lines = LineSplitter()
                        for chunk in response.iter_bytes():
                            for line in lines.feed(chunk):
                                event = resume.parser.line(line)
                                change = None if event is None else resume.change(event, response)
                                if change is not None:
                                    yield change
                    finally:
                        response.close()
                continue  # the stream ended (overflow, a server shutting down): at once again
            except (Unavailable, ServerError) as error:
                down_since = _still_trying(down_since, reconnect_timeout, error)
            time.sleep(resume.retry_seconds)
    finally:
        http.close()


async def watch_async(
    url: str,
    headers: httpx.Headers,
    timeout: float,
    transport: httpx.AsyncBaseTransport | None,
    resume: Resume,
    reconnect_timeout: float | None,
) -> AsyncGenerator[Change, None]:
    """``AsyncClient.watch``: as ``watch_sync``."""
    http: httpx.AsyncClient = _connection(url, headers, timeout, transport, asynchronous=True)
    down_since: float | None = None
    try:
        while True:
            try:
                with translate_transport_errors():
                    response = await http.send(resume.request(http), stream=True)
                    try:
                        if not is_stream(response):
                            raise await read_error_async(response)
                        down_since = None
                        resume.new_parser()
                        lines = LineSplitter()
                        async for chunk in response.aiter_bytes():
                            for line in lines.feed(chunk):
                                event = resume.parser.line(line)
                                change = None if event is None else resume.change(event, response)
                                if change is not None:
                                    yield change
                    finally:
                        await response.aclose()
                continue
            except (Unavailable, ServerError) as error:
                down_since = _still_trying(down_since, reconnect_timeout, error)
            await asyncio.sleep(resume.retry_seconds)
    finally:
        await http.aclose()


def _still_trying(
    down_since: float | None, reconnect_timeout: float | None, error: Exception
) -> float:
    """When the server became unreachable; ``error`` once that is ``reconnect_timeout`` ago."""
    now = time.monotonic()
    if down_since is None:
        return now
    if reconnect_timeout is not None and now - down_since > reconnect_timeout:
        raise error
    return down_since
