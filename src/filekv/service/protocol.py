"""The HTTP protocol: uvicorn's httptools protocol with read limits enforced while it parses.

uvicorn with httptools buffers a request's head with no bound (the request target is grown by
concatenation, a header being received by httptools the same way) and waits for a request as long
as a client likes. ``ReadLimitedProtocol`` bounds both, at the cost of a counter per read and per
header, and a timer only for a request whose head or body spans more than one read:

======================  ==================================================  =====================
limit                   counted                                             answer
======================  ==================================================  =====================
``MAX_HEADER_BYTES``    header names and values, as parsed                  431, connection kept
2 x that                bytes of a head not complete yet, as sent, but the  431, then closed
                        request target
``max_target_bytes``    the request target (path and query), as received    414, then closed
``header_timeout``      from connection open, or from the first byte of a   408 (a silent close
                        keep-alive request, to the end of its headers       if nothing was sent)
``body_timeout``        the longest pause between two reads of a body       408, then closed
``body_total_timeout``  from the end of the headers to the end of the body  408, then closed
======================  ==================================================  =====================

Memory: a connection holds at most ``max_target_bytes`` + 2 x ``MAX_HEADER_BYTES`` of an
unfinished head plus one read (uvloop reads at most 256 KB at a time), for at most
``header_timeout`` seconds; a body is the route's business (it caps what it reads) and is bounded
in time by the body timeouts. The number of connections is bounded by the process's open-file
limit (``ulimit -n``).

A refused connection is closed gracefully ("lingering close", as nginx does): the answer is
written, the write side shut, and what the client still sends is discarded (not parsed, not kept)
for at most ``LINGER_SECONDS`` or ``LINGER_BYTES``, so that a client still sending its request
reads the answer instead of a reset. Time spent waiting for the application (reading paused
because it has not consumed the body yet, or ``Expect: 100-continue`` not answered yet) is not
held against the client.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Final

import httptools
from starlette.requests import Request
from starlette.responses import Response
from uvicorn._types import ASGIReceiveCallable, ASGISendCallable, Scope
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from filekv.service.middleware import new_request_id
from filekv.settings import Settings

_SETTING_DEFAULTS: Final = Settings.model_fields

logger = logging.getLogger(__name__)

# 16 KiB of header names and values is what nginx and Node.js accept by default and far above
# any request this API needs (a bearer token is 43 characters).
MAX_HEADER_BYTES: Final = 16 * 1024
# The bytes of an unfinished head (request line and headers as sent, the target aside) are cut
# at twice the limit: separators and whitespace are not counted by the limit but must be bounded.
MAX_UNFINISHED_HEAD_BYTES: Final = 2 * MAX_HEADER_BYTES
# The longest request target: httptools itself refuses a longer URL (and uvicorn then answers a
# bare 400), so this is where the 414 must come. settings.py caps max_key_bytes so that a key of
# which every byte is %-encoded still fits, with room for the query.
MAX_TARGET_BYTES: Final = 65_535
LINGER_SECONDS: Final = 2.0
LINGER_BYTES: Final = 1 << 20
# Once the server is stopping, the longest pause in a request body before the request is refused
# (503) instead of the graceful shutdown waiting for it: a body still flowing finishes, a
# stalled one does not hold the exit for the whole grace period.
SHUTDOWN_BODY_PAUSE: Final = 1.0


@dataclass(frozen=True, slots=True)
class ReadLimits:
    """How long and how much a request may take to arrive (the settings of the same names)."""

    # The defaults are the settings' own, so each is written down once (settings.py).
    header_timeout: float = _SETTING_DEFAULTS["header_timeout"].default
    body_timeout: float = _SETTING_DEFAULTS["body_timeout"].default
    body_total_timeout: float = _SETTING_DEFAULTS["body_total_timeout"].default
    max_target_bytes: int = MAX_TARGET_BYTES


class _HeadRefused(Exception):
    """Raised from a parser callback to stop parsing: the head is over a limit."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def _error_body(detail: str, request_id: str) -> bytes:
    # Like every error body of the application's, it names its request (a new id: the request
    # never reached the application, and its head may not even be complete).
    return json.dumps({"detail": detail, "request_id": request_id}).encode()


class _HeadersTooLarge:
    """The ASGI app that answers a request whose complete headers are over the limit: 431."""

    def __init__(self, size: int) -> None:
        self.request_id = new_request_id()
        self.body = _error_body(
            f"request headers are {size} bytes; the limit is {MAX_HEADER_BYTES}", self.request_id
        )

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 431,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(self.body)).encode("ascii")),
                    (b"x-request-id", self.request_id.encode("ascii")),
                ],
            }
        )
        await send({"type": "http.response.body", "body": self.body, "more_body": False})


class _CloseIfAnsweredBeforeBody:
    """The application, behind a check made when it starts to answer: if the request's body
    has not all arrived, the answer says "connection: close", and the protocol closes the
    connection after it with a lingering close (``on_response_complete``) instead of parsing
    the rest of the body. A client told nothing reused the connection for its next request,
    and found it closed: "Server disconnected without sending a response".

    A request whose body had all arrived when the application started (nearly every one: a
    small body comes in the read that brings the head) costs one check.
    """

    def __init__(self, app: Any, protocol: ReadLimitedProtocol) -> None:
        self.app = app
        self.protocol = protocol

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        cycle = getattr(send, "__self__", None)  # uvicorn's RequestResponseCycle.send
        if cycle is None or not getattr(cycle, "more_body", False):
            await self.app(scope, receive, send)
            if cycle is not None and not getattr(cycle, "response_complete", True):
                self.protocol.abandoned(cycle)
            return

        async def send_closing(message: Any) -> None:
            if message["type"] != "http.response.start" or not cycle.more_body:
                await send(message)
                return
            closing: Any = {**message}
            closing["headers"] = [*message.get("headers", ()), (b"connection", b"close")]
            await send(closing)
            # uvicorn took the header to mean an abrupt close after the answer: with the body
            # still arriving, the kernel then resets the connection, and the client may lose
            # the answer. The protocol closes it instead, once this very answer is complete
            # (on_response_complete: a pipelined request's cycle may be the newest by then).
            cycle.keep_alive = True
            self.protocol.closing_cycle = cycle

        await self.app(scope, receive, send_closing)
        if not getattr(cycle, "response_complete", True):
            self.protocol.abandoned(cycle)


class ReadLimitedProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` that refuses oversized heads and closes requests that stall.

    One timer slot serves the phase the connection is in: the head's deadline, the body's, or the
    lingering close; ``limits`` is set per server by ``protocol_class``.
    """

    limits: ClassVar[ReadLimits] = ReadLimits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.app = _CloseIfAnsweredBeforeBody(self.app, self)
        # The request whose answer said "connection: close" while its body was still arriving
        # (set by _CloseIfAnsweredBeforeBody): the connection ends with that answer.
        self.closing_cycle: Any = None
        self.url = b""
        self._timer: asyncio.TimerHandle | None = None
        self._head_begun = False  # from on_message_begin to on_headers_complete
        self._in_body = False  # from on_headers_complete to on_message_complete
        self._head_bytes = 0  # bytes read since the last message ended, while not in a body
        self._header_bytes = 0  # header names and values of the current request
        self._body_started_at = 0.0
        self._body_read_at = 0.0
        self._body_paused = False  # reading was paused for the application at the last check
        self._discarding = False  # refused: what arrives is dropped until the connection closes
        self._stopping = False  # the server is shutting down: a body may pause for less
        self._discarded_bytes = 0

    # -- connection ------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # nginx's client_header_timeout also bounds the wait for the first byte.
        self._arm(self.limits.header_timeout, self._head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def shutdown(self) -> None:
        """uvicorn's graceful shutdown, except for an answer stuck on a client that reads nothing.

        uvicorn lets an answer still being sent finish, and waits for its connection to close;
        one streamed to a client that has stopped reading (a stalled backup download: the
        transport's buffer full, writes paused) would hold the server's exit for ever, its
        unsent bytes waiting to be flushed. That connection is aborted instead.

        Nor does a request whose body stalls: one that stopped mid-body (or trickled it) held
        every SIGTERM for the whole grace period, 10 s, as long as ``docker stop`` waits before
        its SIGKILL, and was then cancelled with an ERROR traceback. From now on its body may
        pause for ``SHUTDOWN_BODY_PAUSE`` at most, then it is refused (503) as a body timeout
        refuses it: the application reading the body sees the client gone, and the answer says
        why. A body still flowing arrives and its request is answered as usual.
        """
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete and self.flow.write_paused:
            self.transport.abort()
            return
        # Not while refused already: the lingering close after that answer has its own timer.
        if (
            self._in_body
            and not self._discarding
            and cycle is not None
            and not cycle.response_started
        ):
            self._stopping = True
            self._disarm()
            self._arm(SHUTDOWN_BODY_PAUSE, self._body_timer_fired)
        super().shutdown()

    def abandoned(self, cycle: Any) -> None:
        """The application returned from an answer it did not finish: a watch stream cut off at
        ``watch_stall_seconds``, an export at ``export_time_limit``, a backup download at
        ``backup_time_limit``. uvicorn then closes the transport, which waits for its unsent
        bytes to drain before it lets go of the socket: for ever, if the client reads nothing,
        the descriptor and the transport's buffer held while that client opens the next
        connection. When the client is not taking data (writes paused) the transport is
        aborted instead: its buffer is dropped and the socket closed at once. What the kernel
        still holds is delivered as usual, then the end of the connection, so a client that
        reads again sees the answer cut short, as after a close; the kernel drops the socket
        if the client never reads (``tcp_orphan_retries``, ``tcp_max_orphans``)."""
        if getattr(cycle, "disconnected", True) or not self.flow.write_paused:
            return
        self.transport.abort()

    def handle_websocket_upgrade(self) -> None:
        self._disarm()  # the transport now belongs to the websocket protocol
        super().handle_websocket_upgrade()

    def data_received(self, data: bytes) -> None:
        if self._discarding:
            self._discarded_bytes += len(data)
            if self._discarded_bytes > LINGER_BYTES:
                self.transport.close()
            return
        self._unset_keepalive_if_required()
        if self._in_body:
            self._body_read_at = self.loop.time()
        else:
            self._head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _HeadRefused):
                self._refuse(exc.__context__.status, exc.__context__.detail)
            else:
                self._bad_request()
            return
        except httptools.HttpParserError:
            self._bad_request()
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        if self._in_body:
            if self._timer is None:
                self._body_started_at = self._body_read_at = self.loop.time()
                self._body_paused = False
                self._arm(self.limits.body_timeout, self._body_timer_fired)
        elif self._head_bytes:  # a head has started since the last request ended
            if self._head_bytes - len(self.url) > MAX_UNFINISHED_HEAD_BYTES:
                self._refuse(
                    431,
                    f"request headers over {MAX_UNFINISHED_HEAD_BYTES} bytes and not complete; "
                    f"the limit is {MAX_HEADER_BYTES}",
                )
            elif self._timer is None:
                self._arm(self.limits.header_timeout, self._head_timed_out)

    def _bad_request(self) -> None:
        msg = "Invalid HTTP request received."
        self.logger.warning(msg)
        self.send_400_response(msg)

    # -- parser callbacks ------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_begun = True
        self._header_bytes = 0

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > self.limits.max_target_bytes:
            raise _HeadRefused(
                414, f"request target over {self.limits.max_target_bytes} bytes; refused"
            )

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._head_begun = False
        self._in_body = True
        self._disarm()
        if self._header_bytes <= MAX_HEADER_BYTES:
            super().on_headers_complete()
            return
        # Parsed, so the connection can go on: the request is answered by a 431 app instead.
        logger.info("%s: refused with 431: headers of %d bytes", self._peer(), self._header_bytes)
        app = self.app
        self.app = _HeadersTooLarge(self._header_bytes)
        try:
            super().on_headers_complete()
        finally:
            self.app = app

    def on_message_complete(self) -> None:
        self._in_body = False
        self._head_bytes = 0
        self.url = b""
        self._disarm()
        super().on_message_complete()

    # -- timers ----------------------------------------------------------------------------------

    def _arm(self, delay: float, callback: Callable[[], object]) -> None:
        self._timer = self.loop.call_later(delay, callback)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _head_timed_out(self) -> None:
        self._timer = None
        if self._in_body or self.transport.is_closing():
            return
        if self._head_bytes == 0:  # nothing sent: close as an idle keep-alive connection is
            logger.debug("%s: closed: no request in %s s", self._peer(), self.limits.header_timeout)
            self.transport.close()
            return
        self._refuse(408, f"request headers not complete within {self.limits.header_timeout:g} s")

    def _body_timer_fired(self) -> None:
        self._timer = None
        if not self._in_body or self.transport.is_closing():
            return
        now = self.loop.time()
        cycle = self.cycle
        paused = self.flow.read_paused or (cycle is not None and cycle.waiting_for_100_continue)
        if paused or self._body_paused:
            # The application is (or was, at the last check) the one not reading: the client
            # gets a whole pause from now.
            self._body_read_at = now
        self._body_paused = paused
        limits = self.limits
        pause = SHUTDOWN_BODY_PAUSE if self._stopping else limits.body_timeout
        idle_deadline = self._body_read_at + pause
        total_deadline = self._body_started_at + limits.body_total_timeout
        if now < idle_deadline and now < total_deadline:
            self._arm(min(idle_deadline, total_deadline) - now, self._body_timer_fired)
            return
        if self._stopping and now < total_deadline:
            self._refuse(503, "the server is shutting down; the request's body had not all arrived")
            return
        if now >= total_deadline:
            detail = f"request body not complete within {limits.body_total_timeout:g} s"
        else:
            detail = f"request body paused for more than {limits.body_timeout:g} s"
        self._refuse(408, detail)

    # -- refusing --------------------------------------------------------------------------------

    def _refuse(self, status: int, detail: str) -> None:
        """Answer ``status`` and close; only close if another answer is or was under way."""
        if self._discarding:  # refused already: its answer is written, its close under way
            return
        self._disarm()
        self._discarding = True
        cycle = self.cycle
        if self._in_body and cycle is not None:
            if cycle.response_started:  # answered already (or answering): nothing to add
                logger.info("%s: closed (%d): %s", self._peer(), status, detail)
                self.transport.close()
                return
            # The application is waiting for this body: it sees a disconnect and its answer,
            # if any, is dropped; this one is written instead.
            cycle.disconnected = True
            cycle.message_event.set()
        elif cycle is not None and not cycle.response_complete:
            # A head behind a response still in progress: answering now would come out of
            # order; the connection closes when that response is complete.
            logger.info("%s: closing (%d): %s", self._peer(), status, detail)
            cycle.keep_alive = False
            return
        logger.info("%s: refused with %d: %s", self._peer(), status, detail)
        self.transport.write(self._error_response(status, detail))
        self._close_lingering()

    def on_response_complete(self) -> None:
        """uvicorn's, unless the application answered before the request's body had all arrived
        (a 413 refused unread, a 401, 422 or 423 given before reading): then the rest of the
        body is not parsed but discarded, and the connection closed as a refused one is (the
        answer said "connection: close": ``_CloseIfAnsweredBeforeBody``). uvicorn would go on
        parsing it to keep the connection, for as long and as much as the client sends: a
        Content-Length of 100 GB, trickled, held a connection for body_total_timeout."""
        closing = self.closing_cycle
        # Answers end in order, so the one that said "close" has just ended if it is complete
        # (the newest cycle, ``self.cycle``, may be a pipelined request's, whose body is whole).
        if closing is None or not closing.response_complete or self.transport.is_closing():
            super().on_response_complete()
            return
        self.closing_cycle = None
        self.server_state.total_requests += 1
        self._in_body = False
        self._disarm()
        logger.info("%s: closing: answered before the request body arrived", self._peer())
        self._discarding = True
        self.flow.resume_reading()  # read and drop, so that a client still sending gets there
        self._close_lingering()

    def _close_lingering(self) -> None:
        """Shut the write side, then drop what arrives until the client closes, LINGER_SECONDS
        pass or LINGER_BYTES arrive (``data_received``), whichever comes first."""
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self._arm(LINGER_SECONDS, self.transport.close)
        else:
            self.transport.close()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a request the parser refused, as JSON like every other error."""
        self.transport.write(self._error_response(400, msg))
        self.transport.close()

    def _error_response(self, status: int, detail: str) -> bytes:
        request_id = new_request_id()
        body = _error_body(detail, request_id)
        content = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            content.extend([name, b": ", value, b"\r\n"])
        content.extend(
            [
                b"content-type: application/json\r\n",
                b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
                b"x-request-id: " + request_id.encode("ascii") + b"\r\n",
                b"connection: close\r\n",
                b"\r\n",
                body,
            ]
        )
        return b"".join(content)

    def _peer(self) -> str:
        return f"{self.client[0]}:{self.client[1]}" if self.client else "client"


async def client_disconnected(request: Request, exc: Exception) -> Response:
    """Starlette handler for ``ClientDisconnect``: the client left, or was timed out, mid-body.

    Nobody reads this answer (uvicorn drops what is sent to a closed connection); it only keeps
    a slow client's 408 from being logged as an exception in the application.
    """
    return Response(status_code=400)


def protocol_class(limits: ReadLimits) -> type[ReadLimitedProtocol]:
    """A ``ReadLimitedProtocol`` subclass with these limits, for ``uvicorn.Config(http=...)``."""
    return type("FilekvHttpProtocol", (ReadLimitedProtocol,), {"limits": limits})
