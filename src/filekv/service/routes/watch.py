"""``GET /watch``: the store's changes as Server-Sent Events; and the long poll of ``GET /keys``.

A stream first sends what happened after the position it asks for (``from_revision``, or the
``Last-Event-ID`` a reconnecting ``EventSource`` sends), read from the change feed, then every
new change as the hub (``service/watch.py``) hands it over. The watcher is registered with the
hub *before* the history is read, and events the hub queued meanwhile are skipped up to the last
revision the history delivered: no gap, no duplicate. A comment line every
``watch_heartbeat_seconds`` keeps proxies from closing an idle stream. When the client goes
away, Starlette cancels the stream and the watcher is removed at once; when it stops reading,
``WatchResponse`` closes the stream after ``watch_stall_seconds``.

Same authorization as reading keys (``auth_mode=all`` needs a token). Errors are answered before
the stream starts: 422 for a malformed ``Last-Event-ID`` (its pattern is in the schema), 409 for a
position ahead of the store (a client that saw writes a crash lost, or another store's), 410
with ``oldest_revision`` for one compaction has dropped, 503 past ``watch_max_watchers``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncGenerator, Callable, Iterator
from typing import TYPE_CHECKING, Annotated, Any, Final
from urllib.parse import unquote_plus

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from starlette.requests import ClientDisconnect
from starlette.types import Message, Receive, Scope, Send

from filekv.engine import Compacted
from filekv.service.deps import request_session_id
from filekv.service.errors import BadRequest, RevisionAhead, TooManyWatchers
from filekv.service.export import cut_off
from filekv.service.schemas import OPTIONAL_BEARER, UNAUTHORIZED, error, invalid
from filekv.service.stalls import SendStalls
from filekv.service.watch import (
    Position,
    Reservation,
    Watcher,
    WatchHub,
    format_event,
    number_chunk,
    parse_event_id,
)
from filekv.service.wire import encoding_problem

if TYPE_CHECKING:
    from filekv.engine import Store
    from filekv.service.auth import AuthService
    from filekv.service.transactions import TransactionManager

log = logging.getLogger(__name__)

router = APIRouter(tags=["watch"])

# What the stream's ids look like: ``7``, or ``7.1`` inside a batch (never ``0.i``).
EVENT_ID_PATTERN: Final = r"^(0|[1-9][0-9]{0,18}(\.(0|[1-9][0-9]{0,8}))?)$"
MAX_WAIT_SECONDS: Final = 60.0  # the longest long poll
# ``wait``: digits, at most one dot, an optional exponent (ASCII only); at most 32 characters.
_WAIT: Final = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")
MAX_WAIT_TEXT: Final = 32
MAX_REVISION: Final = (1 << 63) - 1
RETRY_MS: Final = 2000  # what an EventSource waits before it reconnects
TOKEN_CHECK_SECONDS: Final = 0.5  # a stream's token is checked again at most this often
# The most bytes a stream hands the server at once (WatchResponse): what a client that stopped
# reading can make the stream hold, besides the transport's buffer.
SEND_BYTES: Final = 64 << 10

_SSE_EXAMPLE: Final = (
    'id: 7\nevent: put\ndata: {"key":"cfg/a","value":"1","revision":7,"expires_in":null}\n\n'
)


COMPACTED: Final[dict[str, Any]] = {
    "description": "The revision asked for is compacted away; `oldest_revision` is the oldest "
    "one still available.",
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {
                    "detail": {"type": "string"},
                    "oldest_revision": {"type": "integer"},
                },
                "required": ["detail", "oldest_revision"],
            }
        }
    },
}
TOO_MANY_WATCHERS: Final = error(
    "Too many watchers already (watch_max_watchers), or the store is not open."
)


def _query_error(name: str, kind: str, message: str) -> RequestValidationError:
    return RequestValidationError([{"type": kind, "loc": ("query", name), "msg": message}])


def check_filter(request: Request, prefix: str, key: str | None) -> None:
    """A prefix and a key no longer than a key may be (422): no key could ever match them.

    Listing, the long poll and ``/watch`` all refuse such a prefix alike. A text of at most a
    quarter of the limit in characters fits whatever it holds (UTF-8 takes at most 4 bytes a
    character), so the usual short one is never encoded.
    """
    limit: int = request.app.state.settings.max_key_bytes
    for name, text in (("prefix", prefix), ("key", key)):
        if (
            text is not None
            and len(text) > limit >> 2
            and len(text.encode("utf-8", errors="surrogatepass")) > limit
        ):
            raise _query_error(name, "string_too_long", f"longer than {limit} bytes in UTF-8")


# The query parameters that hold keys (or a prefix of them) or values, per route.
WATCH_TEXT_PARAMETERS: Final = frozenset(("prefix", "key"))
FIND_TEXT_PARAMETERS: Final = frozenset(("prefix", "value", "after"))


def check_query_encoding(request: Request, names: frozenset[str]) -> None:
    """422 when a query parameter in ``names`` (one that holds a key, a prefix or a value) has a
    broken percent-encoding or escapes that are not UTF-8: the path's rule for keys.

    Starlette decodes the query leniently (bad UTF-8 becomes U+FFFD, a stray ``%`` stays as it
    is), so ``prefix=%FF`` would match a key holding U+FFFD and two distinct raw texts would
    name one key. Only a raw query with a ``%`` can be broken: the usual one costs a byte search.
    """
    raw: bytes = request.scope.get("query_string", b"")
    if b"%" not in raw:
        return
    for part in raw.split(b"&"):
        if b"%" not in part:
            continue
        name, _, value = part.partition(b"=")
        # The name as Starlette reads it (``parse_qsl``): ``pre%66ix`` is ``prefix`` too.
        decoded = unquote_plus(name.decode("latin-1"))
        if decoded not in names:
            continue
        msg = encoding_problem(value, decoded)
        if msg is not None:
            raise _query_error(decoded, "query_encoding", msg)


LAST_EVENT_ID: Final[dict[str, Any]] = {
    "name": "Last-Event-ID",
    "in": "header",
    "required": False,
    "description": "Resume after this event (a reconnecting EventSource sends it): `7`, or "
    "`7.1` inside a batch. It wins over from_revision.",
    "schema": {"type": "string", "pattern": EVENT_ID_PATTERN, "maxLength": 30},
}


def _last_event_id(request: Request) -> str | None:
    """The ``Last-Event-ID`` header, 422 unless it names an event the stream could have sent."""
    text = request.headers.get("last-event-id")
    if text is None:
        return None
    if len(text) > 30 or re.fullmatch(EVENT_ID_PATTERN, text) is None:
        raise RequestValidationError(
            [
                {
                    "type": "string_pattern_mismatch",
                    "loc": ("header", "Last-Event-ID"),
                    "msg": "Last-Event-ID must be a revision (7) or an event of one (7.1)",
                }
            ]
        )
    return text


def start_position(
    store: Store,
    from_revision: int | None,
    last_event_id: str | None,
    *,
    after_revision: int | None = None,
) -> Position:
    """Where the stream starts: after ``Last-Event-ID`` if sent (a reconnect), else at
    ``from_revision`` (inclusive), else after ``after_revision`` (the long poll's), else after
    the current revision. RevisionAhead (409) when ahead of the store; Compacted (410) when no
    longer in the history."""
    current = store.revision
    # What the client sent, as it sent it: the 409 names that, not the position derived from it
    # (after_revision=N starts at N + 1, from_revision=N at N).
    sent: str | int
    if last_event_id is not None:
        position = parse_event_id(last_event_id)
        if position is None:
            raise BadRequest("Last-Event-ID must be a revision (7) or an event of one (7.1)")
        sent = last_event_id
    elif from_revision is not None:
        position = Position(from_revision - 1) if from_revision > 0 else Position(0)
        sent = from_revision
    elif after_revision is not None:
        position, sent = Position(after_revision), after_revision
    else:
        position, sent = Position(current), current
    # ``R.i`` is after operation i of revision R: that revision must be in the store too.
    named = position.revision if position.index is None else position.revision + 1
    if named > current:
        raise RevisionAhead(f"revision {sent} is ahead of the store (at revision {current})")
    oldest = store.oldest_revision
    if position.revision + 1 < oldest:
        raise Compacted(position.revision + 1, oldest)
    return position


@router.get(
    "/watch",
    summary="Watch changes (Server-Sent Events)",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "A stream of `put`, `delete` and `expire` events (then `overflow` "
            "if the client falls more than watch_queue_events behind, or `unauthorized` once "
            "the token the stream was opened with is no longer valid).",
            "content": {
                "text/event-stream": {"schema": {"type": "string"}, "example": _SSE_EXAMPLE}
            },
        },
        409: error("from_revision or Last-Event-ID is ahead of the store's revision."),
        401: UNAUTHORIZED,
        410: COMPACTED,
        422: invalid(
            "A bad parameter: prefix or key with a broken or non-UTF-8 percent-encoding "
            "(`query_encoding`), over max_key_bytes (`string_too_long`) or an empty key, a "
            "from_revision out of range, or a malformed Last-Event-ID."
        ),
        503: TOO_MANY_WATCHERS,
    },
    # Declared by hand and read by hand: a nullable header parameter would have schema
    # generators send the text "null".
    openapi_extra={"security": OPTIONAL_BEARER, "parameters": [LAST_EVENT_ID]},
)
async def watch(
    request: Request,
    prefix: Annotated[str, Query(description="Only keys starting with this.")] = "",
    key: Annotated[
        str | None,
        Query(
            min_length=1,
            description="Only this key (with a prefix too: only if the key starts with it).",
        ),
    ] = None,
    from_revision: Annotated[
        int | None,
        Query(ge=0, le=MAX_REVISION, description="Start at this revision (inclusive)."),
    ] = None,
) -> StreamingResponse:
    """Every committed change under ``prefix`` (or to ``key``) after the start, as it happens."""
    state = request.app.state
    transactions: TransactionManager = state.transactions
    session_id = request_session_id(request, transactions, write=False)
    check_query_encoding(request, WATCH_TEXT_PARAMETERS)
    check_filter(request, prefix, key)
    store: Store = state.store
    hub: WatchHub = state.watch_hub
    position = start_position(store, from_revision, _last_event_id(request))
    if key is None:
        watched, exact = prefix, False
    else:  # both filters hold; no key is empty, so "" matches nothing
        watched, exact = (key if key.startswith(prefix) else ""), True
    # A stream that came with a token lives only as long as its token (a logout, a revoke, its
    # expiry end it): a token sent is always checked, so a reconnect with it would be 401.
    token = None if session_id is None else _Token(state.auth, session_id)
    # The slot is taken now (503 if none is free), before the answer starts: a burst of
    # connections past watch_max_watchers is refused here, not by streams that start with 200
    # and end with overflow. The stream claims it; WatchResponse gives it back if it never ran.
    reservation = hub.reserve()
    return WatchResponse(
        _stream(store, hub, watched, exact, position, token, reservation),
        stalls=state.send_stalls,
        prefix=watched,
        release=lambda: hub.release(reservation),
    )


class WatchResponse(StreamingResponse):
    """The event stream, handed to the server a piece (at most ``SEND_BYTES``) at a time, and
    closed when one piece waits more than ``watch_stall_seconds`` for the client to take it
    (``stalls``: one check for every stream, ``service/stalls.py``).

    A client that stops reading (its socket's buffers full) would otherwise hold the stream's
    watcher slot for ever, and the events queued for it: the ``event: overflow`` that ends a
    slow reader's stream can never reach one that does not read. uvicorn writes a piece into the
    transport's buffer at once and makes the *next* send wait until that buffer has drained
    below its high-water mark (64 KiB), so a stalled stream holds about two pieces of its own
    (the rest of what it was handed is shared with the other watchers, and bounded by
    ``watch_queue_events`` and ``QUEUE_BYTES``). At the limit the stream ends without the
    chunked body's end (what ``/export`` does at ``export_time_limit``); its watcher is removed,
    and the client, once it reads again, resumes with its ``Last-Event-ID``: nothing is lost.
    """

    def __init__(
        self,
        content: AsyncGenerator[bytes, None],
        *,
        stalls: SendStalls,
        prefix: str,
        release: Callable[[], None] = lambda: None,
    ) -> None:
        self._events = content
        self._release = release
        super().__init__(
            content,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self._stalls = stalls
        self._prefix = prefix

    async def stream_response(self, send: Send) -> None:
        # Not a deadline for the stream (a healthy one runs for ever): each send notes when it
        # began, and the stall checker fires this timeout when one has waited too long.
        clock_time = asyncio.get_running_loop().time
        async with asyncio.timeout(None) as deadline:
            with self._stalls.watching(deadline) as clock:

                async def timed(message: Message) -> None:
                    clock.since = clock_time()
                    await send(message)
                    clock.since = 0.0
                    if deadline.when() is not None:  # fired as this send completed: undone
                        with contextlib.suppress(RuntimeError):  # too late: cancelled already
                            deadline.reschedule(None)

                start = {"type": "http.response.start", "status": 200, "headers": self.raw_headers}
                await timed(start)
                async for piece in self.body_iterator:
                    await timed({"type": "http.response.body", "body": piece, "more_body": True})
                # The end, after a last piece a stalled client holds.
                await timed({"type": "http.response.body", "body": b"", "more_body": False})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except TimeoutError:
            # Starlette's task group has cancelled the stream: its finally removed the watcher.
            log.warning(
                "watch stream of %r closed: its client took nothing for watch_stall_seconds (%s s)",
                self._prefix,
                self._stalls.stall_seconds,
            )
            cut_off()
        finally:
            # Its finally removes the watcher now, not when the garbage collector finds it: a
            # stream cut off while waiting in a send was not cancelled inside the generator.
            await self._events.aclose()
            self._release()  # the slot, if the stream never claimed it (no-op if it did)


def _start_id(position: Position) -> str:
    if position.index is None:
        return str(position.revision)
    return f"{position.revision + 1}.{position.index}"


class _Token:
    """A stream's token, checked again as the stream goes on, at most every
    ``TOKEN_CHECK_SECONDS`` (``AuthService.session_alive``: a dict lookup, and at most every
    0.5 s a ``stat`` of ``users.json``)."""

    def __init__(self, auth: AuthService, session_id: str) -> None:
        self._auth = auth
        self._session_id = session_id
        self._next = time.monotonic() + TOKEN_CHECK_SECONDS  # checked as the stream started

    def dead(self) -> bool:
        now = time.monotonic()
        if now < self._next:
            return False
        self._next = now + TOKEN_CHECK_SECONDS
        return not self._auth.session_alive(self._session_id)


TOKEN_GONE: Final = (
    "the token this stream was opened with is no longer valid (logged out, revoked or expired): "
    "log in again and reconnect with Last-Event-ID"
)


async def _stream(
    store: Store,
    hub: WatchHub,
    watched: str,
    exact: bool,
    position: Position,
    token: _Token | None = None,
    reservation: Reservation | None = None,
) -> AsyncGenerator[bytes, None]:
    last_id = _start_id(position)
    # Added here, in the slot the route reserved, not in the route: a response that never
    # starts (the client gone before the headers went out) never runs this generator, so its
    # finally could not remove it.
    try:
        watcher = hub.add(watched, exact=exact, reservation=reservation)
    except TooManyWatchers as exc:  # the reservation lapsed (a very late start) and no room
        yield _final("overflow", str(exc), last_id)
        return
    try:
        # An id alone sets a client's last event id without an event: a reconnect before the
        # first change still resumes from here.
        yield f"retry: {RETRY_MS}\nid: {last_id}\n\n".encode()
        # The history, up to whatever the store has now; the hub queues what comes after.
        upto = position.revision
        sent_id = last_id
        try:
            async for chunk in store.achange_chunks(after=position.revision, wait=False):
                now = time.time()
                parts = []
                for change, index, last in number_chunk(chunk):
                    if watcher.matches(change.key) and position.wants(change.revision, index):
                        parts.append(format_event(change, index, last, now))
                        last_id = str(change.revision) if last else f"{change.revision}.{index}"
                upto = chunk[-1].revision
                if parts and token is not None and token.dead():
                    yield _final("unauthorized", TOKEN_GONE, sent_id)
                    return
                sent_id = last_id
                for piece in pack(parts):
                    yield piece
        except Compacted as exc:  # compaction overtook a slow catch-up
            yield _final("compacted", exc.args[0], last_id, exc.oldest_available)
            return
        while True:
            if watcher.overflowed:
                detail = "this watcher fell too far behind: reconnect with Last-Event-ID"
                yield _final("overflow", detail, last_id)
                return
            if (watcher.queue or watcher.heartbeat_due) and token is not None and token.dead():
                yield _final("unauthorized", TOKEN_GONE, last_id)
                return
            if watcher.queue:
                # Off the queue into pieces of at most SEND_BYTES: no copy of the whole queue is
                # made (what is not handed over yet still counts against its bounds), and the
                # events of a burst go out together, one send for many.
                parts = []
                size = 0
                sent = False
                while watcher.queue and not watcher.overflowed:
                    revision, index, event_id, data = watcher.pop()
                    if revision <= upto or not position.wants(revision, index):
                        continue
                    last_id = event_id
                    sent = True
                    if parts and size + len(data) > SEND_BYTES:
                        yield parts[0] if len(parts) == 1 else b"".join(parts)
                        parts, size = [], 0
                    if len(data) > SEND_BYTES:
                        for piece in pack([data]):
                            yield piece
                    else:
                        parts.append(data)
                        size += len(data)
                if parts:
                    yield parts[0] if len(parts) == 1 else b"".join(parts)
                if sent:
                    watcher.heartbeat_due = False  # data is as good a sign of life
                continue
            if watcher.closed:
                return
            if watcher.heartbeat_due:
                watcher.heartbeat_due = False
                # With the id of where the stream is: every change up to the hub's position (or
                # to what the history read) that this watcher matches has been sent (the queue
                # is empty), so a watcher of a quiet prefix moves on too, and does not get 410
                # after a compaction for changes it never wanted. The WHATWG rules: an "id"
                # field sets the last event ID buffer, and the blank line's dispatch copies it
                # to the EventSource's last event ID *before* it drops an event without data:
                # no event fires, but the next reconnect sends this Last-Event-ID.
                last_id = _moved_on(last_id, max(upto, hub.position))
                yield f": heartbeat\nid: {last_id}\n\n".encode()
                continue
            watcher.ready.clear()
            await watcher.ready.wait()
    finally:
        hub.remove(watcher)


def _moved_on(last_id: str, reached: int) -> str:
    """The id to send once every change up to revision ``reached`` was handed over: ``reached``
    unless ``last_id`` is further (never backwards). ``R.i`` names revision R too: at
    ``reached`` = R the rest of R was not for this watcher."""
    named = int(last_id.partition(".")[0])
    return str(reached) if reached >= named else last_id


def pack(events: list[bytes]) -> Iterator[bytes]:
    """``events`` in pieces of at most ``SEND_BYTES``: small ones together, a big one cut."""
    buffer = bytearray()
    for data in events:
        if len(buffer) + len(data) <= SEND_BYTES:
            buffer += data
            continue
        if buffer:
            yield bytes(buffer)
            buffer.clear()
        if len(data) <= SEND_BYTES:
            buffer += data
        else:
            for start in range(0, len(data), SEND_BYTES):
                yield data[start : start + SEND_BYTES]
    if buffer:
        yield bytes(buffer)


def _final(event: str, detail: str, last_id: str, oldest: int | None = None) -> bytes:
    body: dict[str, Any] = {"detail": detail, "last_event_id": last_id}
    if oldest is not None:
        body["oldest_revision"] = oldest
    return f"event: {event}\ndata: ".encode() + orjson.dumps(body) + b"\n\n"


# -- the long poll of GET /keys --------------------------------------------------------------------


def parse_wait(text: str | None) -> float | None:
    """``wait`` checked as ``Query(ge=0, le=60)`` would (422 with the same shape)."""
    if text is None:
        return None
    # A plain decimal number only: float() also takes "1_0", " 5", "+5", "inf", "nan" and
    # other scripts' digits (U+FF15), none of which a client means as a number of seconds.
    if len(text) > MAX_WAIT_TEXT or _WAIT.fullmatch(text) is None:
        raise _query_error("wait", "float_parsing", "Input should be a valid number")
    seconds = float(text)
    if not 0 <= seconds <= MAX_WAIT_SECONDS:  # NaN fails both
        raise _query_error(
            "wait", "less_than_equal", f"Input should be between 0 and {MAX_WAIT_SECONDS:g}"
        )
    return seconds


def parse_after_revision(text: str | None) -> int | None:
    """``after_revision`` checked as ``Query(ge=0, le=2**63-1)`` would."""
    if text is None:
        return None
    if not text.isascii() or not text.isdigit() or len(text) > 19:
        raise _query_error(
            "after_revision", "int_parsing", "Input should be a revision: a whole number >= 0"
        )
    revision = int(text)
    if revision > MAX_REVISION:
        raise _query_error("after_revision", "less_than_equal", "Input is too large")
    return revision


async def wait_for_change(
    request: Request, prefix: str, wait: float | None, after_revision: int | None
) -> int:
    """The long poll: return (the store's revision, read first) as soon as a key under
    ``prefix`` has changed after ``after_revision`` (default: now), or after ``wait`` seconds."""
    state = request.app.state
    store: Store = state.store
    hub: WatchHub = state.watch_hub
    position = start_position(store, None, None, after_revision=after_revision)
    watcher = hub.add(prefix)
    try:
        changed = False
        async for chunk in store.achange_chunks(after=position.revision, wait=False):
            if any(change.key.startswith(prefix) for change in chunk):
                changed = True
                break
        if not changed and wait:
            await _changed_or_gone(request, watcher, position.revision, wait)
    finally:
        hub.remove(watcher)
    return store.revision


async def _changed_or_gone(request: Request, watcher: Watcher, after: int, wait: float) -> None:
    """Wait up to ``wait`` seconds for a change; ``ClientDisconnect`` if the client goes first.

    The poll holds a slot of ``watch_max_watchers`` while it waits, and nothing else listens for
    its client (a ``/watch`` stream's response does): a client that closed its connection kept
    its slot for the whole wait, and a few such clients made every watch and long poll 503 for
    up to a minute. ``ClientDisconnect`` ends the request (``protocol.client_disconnected``).
    """
    changed = asyncio.ensure_future(_changed(watcher, after))
    gone = asyncio.ensure_future(_client_gone(request))
    try:
        await asyncio.wait((changed, gone), timeout=wait, return_when=asyncio.FIRST_COMPLETED)
    finally:
        changed.cancel()
        gone.cancel()
        await asyncio.wait((changed, gone))
    if gone.done() and not gone.cancelled():
        gone.result()  # its own error, if receiving failed
        raise ClientDisconnect


async def _client_gone(request: Request) -> None:
    """Return once the client has disconnected (a GET's body, if any, is read and dropped)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _changed(watcher: Watcher, after: int) -> None:
    while True:
        if watcher.overflowed or watcher.closed:
            return
        if any(event[0] > after for event in watcher.take()):
            return
        watcher.ready.clear()
        await watcher.ready.wait()
