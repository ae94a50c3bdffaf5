"""Server logs: the access log (one line per request) and the format of every other line.

``log_format=json`` (the default) writes one JSON object per line on stderr, for a log shipper:
log records as ``{"ts", "level", "logger", "message"}`` (plus ``"exc"`` with a traceback), and
each answered request as::

    {"ts": "2026-12-06T15:04:05.123Z", "level": "INFO", "logger": "filekv.access",
     "method": "GET", "route": "/keys/{key}", "status": 200, "duration_ms": 0.412,
     "request_id": "5f0c3a9e1b7d2c48", "client": "127.0.0.1", "user": "alice"}

``log_format=text`` writes the same as plain lines (``INFO      filekv.access: GET /keys/{key}
200 0.41 ms request_id=... user=alice``).

What an access line holds, and what it never does: the route *template* (never the raw path:
keys can be personal data), the key only with ``log_keys=true``, the user only when the request
carried a token the server verified (the route that checked it left the name in the ASGI scope,
``SCOPE_USER``: no token is decoded twice), never a value, a password or a token (no header, no
body, no query string is looked at).

The access log replaces uvicorn's; it is written when the log level is ``info`` or ``debug``,
as uvicorn's was. A line is built with orjson and queued; the lines of one turn of the event loop
(every request answered in it, under load) go to stderr in one ``os.write`` at the end of the
turn: a system call costs several microseconds here, more than building a line
(``docs/PERFORMANCE.md`` measures both). The write is on the event loop, as uvicorn's own access
log's was: a stderr that blocks (a pipe nobody reads) would block the server, as it would
uvicorn.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, MutableMapping
from typing import Any, Final

import orjson

from filekv.settings import LogFormat

__all__ = ["ACCESS_LOGGER", "SCOPE_REQUEST_ID", "SCOPE_USER", "AccessLog", "configure_logging"]

ACCESS_LOGGER: Final = "filekv.access"
# Keys of the ASGI scope (a dict shared by the middleware and the routes) that this module reads.
SCOPE_REQUEST_ID: Final = "filekv.request_id"
SCOPE_USER: Final = "filekv.user"
TEXT_FORMAT: Final = "%(levelname)-9s %(name)s: %(message)s"
# Access lines queued in one turn of the event loop before they are written anyway.
MAX_PENDING_LINES: Final = 256

Write = Callable[[bytes], None]


def write_stderr(data: bytes) -> None:
    """Write ``data`` whole to file descriptor 2; a closed or broken stderr loses it silently."""
    try:
        while data:
            written = os.write(2, data)
            data = data[written:]
    except OSError:
        pass  # a log line is never worth failing a request for


class _Clock:
    """ISO 8601 UTC times with milliseconds; the part up to the second is made once a second."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def iso(self, now: float) -> str:
        second = int(now)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._prefix}.{int((now - second) * 1000):03d}Z"


class AccessLog:
    """Formats and writes one access line per answered request."""

    def __init__(self, *, log_format: LogFormat, log_keys: bool, write: Write = write_stderr):
        self._json = log_format == "json"
        self._log_keys = log_keys
        self._write = write
        self._clock = _Clock()
        self._pending: list[bytes] = []

    def __call__(
        self,
        scope: MutableMapping[str, Any],
        route: str,
        status: int,
        seconds: float,
        request_id: str,
    ) -> None:
        user = scope.get(SCOPE_USER)
        key = scope.get("path_params", {}).get("key") if self._log_keys else None
        client = scope.get("client")
        host = client[0] if client else None
        if self._json:
            line: dict[str, Any] = {
                "ts": self._clock.iso(time.time()),
                "level": "INFO",
                "logger": ACCESS_LOGGER,
                "method": scope["method"],
                "route": route,
                "status": status,
                "duration_ms": round(seconds * 1000, 3),
                "request_id": request_id,
                "client": host,
            }
            if user is not None:
                line["user"] = user
            if key is not None:
                line["key"] = key
            self._emit(_json_line(line))
            return
        text = (
            f"INFO      {ACCESS_LOGGER}: {scope['method']} {route} {status} "
            f"{seconds * 1000:.2f} ms request_id={request_id} client={host}"
        )
        if user is not None:
            text += f" user={user}"
        if key is not None:
            text += f" key={key!r}"  # repr: a key's newline must not start a line of its own
        self._emit(text.encode("utf-8", "backslashreplace") + b"\n")

    def _emit(self, line: bytes) -> None:
        """Queue ``line``; the lines of one turn of the event loop go out in one write."""
        pending = self._pending
        pending.append(line)
        if len(pending) == 1:
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:  # not on an event loop: at once
                self.flush()
        elif len(pending) >= MAX_PENDING_LINES:
            self.flush()

    def flush(self) -> None:
        """Write the queued lines (also called at shutdown, so none is lost)."""
        if self._pending:
            data = b"".join(self._pending)
            self._pending.clear()
            self._write(data)


def _json_line(fields: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(fields, option=orjson.OPT_APPEND_NEWLINE)
    except TypeError:  # a str orjson refuses (a lone surrogate): escaped instead
        fields = {
            name: value.encode("utf-8", "backslashreplace").decode()
            if isinstance(value, str)
            else value
            for name, value in fields.items()
        }
        return orjson.dumps(fields, option=orjson.OPT_APPEND_NEWLINE)


class JsonFormatter(logging.Formatter):
    """Log records as the JSON lines of ``log_format=json``."""

    def __init__(self) -> None:
        super().__init__()
        self._clock = _Clock()

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = {
            "ts": self._clock.iso(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            fields["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            fields["exc"] = record.exc_text
        return _json_line(fields).decode().rstrip("\n")


def configure_logging(log_level: str, log_format: LogFormat) -> None:
    """One stderr handler on the root logger, formatted per ``log_format`` (``filekv serve``).

    uvicorn's loggers are left to propagate here (``run_server`` gives uvicorn no logging
    config), so its lines come out in the same format.
    """
    handler = logging.StreamHandler()
    handler.setFormatter(
        JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    logging.basicConfig(level=log_level.upper(), handlers=[handler], force=True)
