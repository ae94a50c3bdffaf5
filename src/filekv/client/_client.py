"""``Client``: the synchronous client, one pooled keep-alive connection through httpx."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any, BinaryIO, Final

import httpx

from filekv.client import _protocol as p
from filekv.client._errors import FilekvError, NotFound, translate_transport_errors
from filekv.client._export import ExportStream
from filekv.client._models import Entry
from filekv.client._watch import Resume, Watch, watch_sync

log = logging.getLogger(__name__)

_MISSING: Final[Any] = object()


class Client:
    """A filekv server at ``url`` (default ``$FILEKV_URL``, else ``http://127.0.0.1:8000``).

    ``token`` is a bearer token to send (``login`` sets it); ``timeout`` bounds each request in
    seconds; with ``wait_locked > 0`` an answer 423 (another client holds the transaction) is
    retried after its ``Retry-After`` or 2 s, whichever is sooner, for at most ``wait_locked``
    seconds in all, before ``Locked`` is raised (a retry cut off unanswered by a closing
    connection is sent once more on a new one). ``transport`` replaces httpx's (for tests).
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        token: str | None = None,
        timeout: float = 10.0,
        wait_locked: float = 0.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = p.base_url(url)
        self.wait_locked = wait_locked
        self._timeout = timeout  # for the connection a watch opens (see watch)
        self._transport = transport
        self._http = httpx.Client(
            base_url=self.url,
            timeout=timeout,
            limits=p.LIMITS,
            transport=transport,
            verify=p.tls_verify(self.url),
        )
        self.token = token

    @property
    def token(self) -> str | None:
        """The bearer token sent with every request (None: anonymous)."""
        return self._token

    @token.setter
    def token(self, token: str | None) -> None:
        self._token = token
        self._http.headers.pop("Authorization", None)
        self._http.headers.update(p.auth_headers(token))

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection."""
        self._http.close()

    def __repr__(self) -> str:
        return f"Client({self.url!r})"

    def _send(self, call: p.Call) -> httpx.Response:
        deadline = time.monotonic() + self.wait_locked
        waited = False
        while True:
            with translate_transport_errors():
                response = self._attempt(call, after_lock_wait=waited)
            delay = p.lock_delay(response, deadline - time.monotonic())
            if delay is None:
                return p.check(response)
            log.debug("%s %s: locked, retrying in %.1f s", call.method, call.path, delay)
            time.sleep(delay)
            waited = True

    def _attempt(self, call: p.Call, *, after_lock_wait: bool) -> httpx.Response:
        """``call`` sent and its answer read; once more if ``after_lock_wait`` and the
        connection was closed before any answer came.

        The re-send after a 423 goes out on the connection kept alive since that 423, which a
        proxy in front of the server may close at that moment (one whose keep-alive is shorter
        than ``LOCK_POLL_MAX``; the server's own is longer: see ``p.KEEPALIVE_EXPIRY``). The
        client waited for the lock, not for the network, so that is sent again on a new
        connection, and only that: the answer's head had not begun (the body is read apart,
        and an error there is not retried), and the lock had refused the previous attempt, so
        only a server that crashed in between can have applied it (and a crashed server then
        refuses the new connection: ``Unavailable`` as before).
        """
        try:
            response = self._http.send(call.request(self._http), stream=True)
        except p.NO_ANSWER as exc:
            if not after_lock_wait:
                raise
            log.debug("%s %s: closed unanswered (%r), sending again", call.method, call.path, exc)
            response = self._http.send(call.request(self._http), stream=True)
        try:
            response.read()
        except BaseException:
            response.close()
            raise
        return response

    # --- auth

    def register(self, username: str, password: str) -> None:
        """Create a user (403 ``Forbidden`` if registration is closed, 409 if taken)."""
        p.decode_json(self._send(p.register_call(username, password)))

    def login(self, username: str, password: str) -> str:
        """Log in; the token is kept (``kv.token``) and also returned."""
        self.token = p.decode_token(self._send(p.login_call(username, password)))
        return self.token

    def logout(self) -> None:
        """Revoke this client's token and forget it."""
        p.decode_no_content(self._send(p.LOGOUT))
        self.token = None

    def whoami(self) -> str:
        """The user name of this client's token."""
        return p.decode_username(self._send(p.ME))

    def health(self) -> dict[str, Any]:
        """``GET /healthz``."""
        return p.decode_json(self._send(p.HEALTH))

    def stats(self) -> dict[str, Any]:
        """``GET /stats``: the store's statistics."""
        return p.decode_json(self._send(p.STATS))

    # --- keys

    def put(
        self, key: str, value: str, *, expect: int | None = None, ttl: float | None = None
    ) -> int | None:
        """Write ``key``; the new revision, or None if staged in your transaction.

        ``expect=REV`` writes only if the key is at revision REV, ``expect=0`` only if it does
        not exist (``PreconditionFailed`` otherwise). ``ttl``: seconds until the key expires
        (then it is gone for every read); None: never, and an earlier expiry of the key ends.
        """
        return p.decode_revision(self._send(p.put_call(key, value, expect, ttl)))

    def entry(self, key: str) -> Entry:
        """The key, its value and revision; ``NotFound`` if absent."""
        return p.decode_entry(self._send(p.get_call(key)))

    def get(self, key: str, default: Any = _MISSING) -> Any:
        """The value of ``key``; ``NotFound`` if absent, unless a ``default`` is given."""
        try:
            return self.entry(key).value
        except NotFound:
            if default is _MISSING:
                raise
            return default

    def delete(self, key: str, *, expect: int | None = None) -> bool:
        """Delete ``key``; ``NotFound`` if absent; ``expect=`` as for ``put``. True if the
        delete was staged in your transaction (applied at commit), False if applied at once."""
        return p.decode_deleted(self._send(p.delete_call(key, expect)))

    def keys(self, prefix: str = "", *, limit: int | None = None) -> Iterator[str]:
        """Every key starting with ``prefix``, sorted, fetched a page (``limit``) at a time."""
        return self._pages(prefix=prefix, value=None, limit=limit)

    def find(self, value: str, prefix: str = "", *, limit: int | None = None) -> Iterator[str]:
        """Every key whose value equals ``value`` (and starts with ``prefix``), sorted."""
        return self._pages(prefix=prefix, value=value, limit=limit)

    def _pages(self, *, prefix: str, value: str | None, limit: int | None) -> Iterator[str]:
        after: str | None = None
        while True:
            call = p.page_call(prefix=prefix, value=value, after=after, limit=limit)
            keys, after = p.decode_page(self._send(call))
            yield from keys
            if after is None:
                return

    def batch(self, ops: Iterable[p.BatchOp]) -> int | None:
        """Apply ops atomically at one revision (None if staged in your transaction).

        Each op is ``("put", key, value)``, ``("delete", key)`` (optionally with an expected
        revision last) or a dict ``{"op", "key", "value", "expect"}``.
        """
        return p.decode_revision(self._send(p.batch_call(ops)))

    @contextlib.contextmanager
    def export(self, prefix: str = "") -> Iterator[ExportStream]:
        """``GET /export`` streamed: every key starting with ``prefix`` as of one revision.

        ``with kv.export("user/") as stream:`` then ``stream.revision`` and ``for entry in
        stream`` (or ``stream.chunks()`` for the raw JSON Lines); ``Unavailable`` if the answer
        is cut short, ``TooManyRequests`` if the server streams too many exports already.
        """
        with translate_transport_errors():
            response = self._http.send(p.export_call(prefix).request(self._http), stream=True)
        try:
            if not response.is_success:  # 3xx: not filekv's; at most 64 KiB of it read
                p.check(p.read_capped_sync(response))
            yield ExportStream(response)
        finally:
            response.close()

    # --- backup

    def backup(
        self,
        out: BinaryIO,
        *,
        progress: Callable[[int], None] | None = None,
        on_start: Callable[[int], None] | None = None,
    ) -> dict[str, int]:
        """``GET /admin/backup`` (admins only) written to ``out``: the store's tar archive as of
        one revision, ``{"revision", "bytes"}``. ``on_start(total_bytes)`` once the answer
        starts, ``progress(bytes)`` after each chunk written. The server verifies the store
        before it sends a byte, so the first byte may take a while: the read timeout is
        ``BACKUP_READ_TIMEOUT`` (``_protocol``). ``Unavailable`` if the archive arrives cut short.
        Nothing is written to ``out`` unless the answer is a success; a cut-off archive leaves
        what arrived in ``out``: write to a temporary file and rename it once this returns.
        """
        with translate_transport_errors():
            response = self._http.send(p.BACKUP.request(self._http), stream=True)
            try:
                if not response.is_success:  # 3xx: not filekv's; at most 64 KiB of it read
                    p.check(p.read_capped_sync(response))
                total, revision = p.decode_backup_head(response)
                if on_start is not None:
                    on_start(total)
                written = 0
                for chunk in response.iter_raw():
                    out.write(chunk)
                    written += len(chunk)
                    if progress is not None:
                        progress(len(chunk))
            finally:
                response.close()
        return p.backup_result(revision, written, total)

    # --- watching

    def watch(
        self,
        prefix: str = "",
        *,
        key: str | None = None,
        from_revision: int | None = None,
        reconnect_timeout: float | None = 60.0,
        last_event_id: str | None = None,
    ) -> Watch:
        """Every change under ``prefix`` (or to ``key``) from ``from_revision`` on (None: from
        now), as it is committed: ``for change in kv.watch("cfg/"):``. Runs until you stop.

        On a connection of its own; when it drops (or the server says this watcher fell
        behind) it reconnects and resumes where the stream was (after the last change yielded,
        or a later position the server named while idle), without a gap or a duplicate,
        giving up with ``Unavailable`` after ``reconnect_timeout`` seconds without the server
        (None: never). ``Gone`` (with ``oldest_revision``) if ``from_revision`` is compacted
        away. The answer's ``last_event_id`` is that position: ``last_event_id=`` (instead of
        ``from_revision``) starts a new watch right after it.
        """
        resume = Resume(prefix, key, from_revision, last_event_id)
        changes = watch_sync(
            self.url, self._http.headers, self._timeout, self._transport, resume, reconnect_timeout
        )
        return Watch(changes, resume)

    # --- transactions

    def begin(self) -> int:
        """Begin the transaction, or a nested level of it: the new depth."""
        return p.decode_depth(self._send(p.BEGIN))

    def commit(self) -> int:
        """Commit every level atomically: how many writes were applied."""
        return p.decode_applied(self._send(p.COMMIT))

    def rollback(self) -> int:
        """Undo the innermost level: the depth left (0: the transaction ended)."""
        return p.decode_depth(self._send(p.ROLLBACK))

    def release(self) -> int:
        """Merge the innermost level into the one below: the depth left."""
        return p.decode_depth(self._send(p.RELEASE))

    def transaction_status(self) -> dict[str, Any]:
        """``{"active", "mine", "depth", "expires_in"}``."""
        return p.decode_json(self._send(p.STATUS))

    @contextlib.contextmanager
    def transaction(self) -> Iterator[int]:
        """Begin (or nest) a level; yield its depth.

        On normal exit the outermost level commits and a nested one is released into its
        parent; on an exception that level is rolled back and the exception re-raised.
        """
        depth = self.begin()
        try:
            yield depth
        except BaseException:
            try:
                self.rollback()
            except FilekvError as exc:  # e.g. the lease expired: the original error matters
                log.warning("rollback of transaction level %d failed: %s", depth, exc)
            raise
        if depth == 1:
            self.commit()
        else:
            self.release()
