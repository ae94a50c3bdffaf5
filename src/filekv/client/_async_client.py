"""``AsyncClient``: the asyncio client, one pooled keep-alive connection through httpx."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from types import TracebackType
from typing import Any, BinaryIO, Final

import httpx

from filekv.client import _protocol as p
from filekv.client._errors import FilekvError, NotFound, translate_transport_errors
from filekv.client._export import AsyncExportStream
from filekv.client._models import Entry
from filekv.client._watch import AsyncWatch, Resume, watch_async

log = logging.getLogger(__name__)

_MISSING: Final[Any] = object()


class AsyncClient:
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
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = p.base_url(url)
        self.wait_locked = wait_locked
        self._timeout = timeout  # for the connection a watch opens (see watch)
        self._transport = transport
        self._http = httpx.AsyncClient(
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

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection."""
        await self._http.aclose()

    def __repr__(self) -> str:
        return f"AsyncClient({self.url!r})"

    async def _send(self, call: p.Call) -> httpx.Response:
        deadline = time.monotonic() + self.wait_locked
        waited = False
        while True:
            with translate_transport_errors():
                response = await self._attempt(call, after_lock_wait=waited)
            delay = p.lock_delay(response, deadline - time.monotonic())
            if delay is None:
                return p.check(response)
            log.debug("%s %s: locked, retrying in %.1f s", call.method, call.path, delay)
            await asyncio.sleep(delay)
            waited = True

    async def _attempt(self, call: p.Call, *, after_lock_wait: bool) -> httpx.Response:
        """``call`` sent and its answer read; once more if ``after_lock_wait`` and the
        connection was closed before any answer came (why: ``Client._attempt``)."""
        try:
            response = await self._http.send(call.request(self._http), stream=True)
        except p.NO_ANSWER as exc:
            if not after_lock_wait:
                raise
            log.debug("%s %s: closed unanswered (%r), sending again", call.method, call.path, exc)
            response = await self._http.send(call.request(self._http), stream=True)
        try:
            await response.aread()
        except BaseException:
            await response.aclose()
            raise
        return response

    # --- auth

    async def register(self, username: str, password: str) -> None:
        """Create a user (403 ``Forbidden`` if registration is closed, 409 if taken)."""
        p.decode_json(await self._send(p.register_call(username, password)))

    async def login(self, username: str, password: str) -> str:
        """Log in; the token is kept (``kv.token``) and also returned."""
        self.token = p.decode_token(await self._send(p.login_call(username, password)))
        return self.token

    async def logout(self) -> None:
        """Revoke this client's token and forget it."""
        p.decode_no_content(await self._send(p.LOGOUT))
        self.token = None

    async def whoami(self) -> str:
        """The user name of this client's token."""
        return p.decode_username(await self._send(p.ME))

    async def health(self) -> dict[str, Any]:
        """``GET /healthz``."""
        return p.decode_json(await self._send(p.HEALTH))

    async def stats(self) -> dict[str, Any]:
        """``GET /stats``: the store's statistics."""
        return p.decode_json(await self._send(p.STATS))

    # --- keys

    async def put(
        self, key: str, value: str, *, expect: int | None = None, ttl: float | None = None
    ) -> int | None:
        """Write ``key``; the new revision, or None if staged in your transaction.

        ``expect=REV`` writes only if the key is at revision REV, ``expect=0`` only if it does
        not exist (``PreconditionFailed`` otherwise). ``ttl``: seconds until the key expires.
        """
        return p.decode_revision(await self._send(p.put_call(key, value, expect, ttl)))

    async def entry(self, key: str) -> Entry:
        """The key, its value and revision; ``NotFound`` if absent."""
        return p.decode_entry(await self._send(p.get_call(key)))

    async def get(self, key: str, default: Any = _MISSING) -> Any:
        """The value of ``key``; ``NotFound`` if absent, unless a ``default`` is given."""
        try:
            return (await self.entry(key)).value
        except NotFound:
            if default is _MISSING:
                raise
            return default

    async def delete(self, key: str, *, expect: int | None = None) -> bool:
        """Delete ``key``; ``NotFound`` if absent; ``expect=`` as for ``put``. True if the
        delete was staged in your transaction (applied at commit), False if applied at once."""
        return p.decode_deleted(await self._send(p.delete_call(key, expect)))

    def keys(self, prefix: str = "", *, limit: int | None = None) -> AsyncIterator[str]:
        """Every key starting with ``prefix``, sorted, fetched a page (``limit``) at a time."""
        return self._pages(prefix=prefix, value=None, limit=limit)

    def find(self, value: str, prefix: str = "", *, limit: int | None = None) -> AsyncIterator[str]:
        """Every key whose value equals ``value`` (and starts with ``prefix``), sorted."""
        return self._pages(prefix=prefix, value=value, limit=limit)

    async def _pages(
        self, *, prefix: str, value: str | None, limit: int | None
    ) -> AsyncIterator[str]:
        after: str | None = None
        while True:
            call = p.page_call(prefix=prefix, value=value, after=after, limit=limit)
            keys, after = p.decode_page(await self._send(call))
            for key in keys:
                yield key
            if after is None:
                return

    async def batch(self, ops: Iterable[p.BatchOp]) -> int | None:
        """Apply ops atomically at one revision (None if staged in your transaction).

        Each op is ``("put", key, value)``, ``("delete", key)`` (optionally with an expected
        revision last) or a dict ``{"op", "key", "value", "expect"}``.
        """
        return p.decode_revision(await self._send(p.batch_call(ops)))

    @contextlib.asynccontextmanager
    async def export(self, prefix: str = "") -> AsyncIterator[AsyncExportStream]:
        """``Client.export`` for asyncio: ``async with kv.export("user/") as stream:`` then
        ``stream.revision`` and ``async for entry in stream`` (or ``stream.chunks()``), read as
        it arrives; ``Unavailable`` if cut short, ``TooManyRequests`` if the server streams too
        many exports already.
        """
        with translate_transport_errors():
            request = p.export_call(prefix).request(self._http)
            response = await self._http.send(request, stream=True)
        try:
            if not response.is_success:  # 3xx: not filekv's; at most 64 KiB of it read
                p.check(await p.read_capped_async(response))
            yield AsyncExportStream(response)
        finally:
            await response.aclose()

    # --- backup

    async def backup(
        self,
        out: BinaryIO,
        *,
        progress: Callable[[int], None] | None = None,
        on_start: Callable[[int], None] | None = None,
    ) -> dict[str, int]:
        """``Client.backup`` for asyncio: ``GET /admin/backup`` (admins only) written to ``out``
        as it arrives, ``{"revision", "bytes"}``; ``on_start(total_bytes)`` and
        ``progress(bytes)`` are plain callables, ``out`` a plain binary file (its writes block
        the event loop as briefly as a chunk takes). Read timeout ``BACKUP_READ_TIMEOUT``;
        ``Unavailable`` if cut short, and then ``out`` holds what arrived: write to a temporary
        file and rename it once this returns.
        """
        with translate_transport_errors():
            response = await self._http.send(p.BACKUP.request(self._http), stream=True)
            try:
                if not response.is_success:  # 3xx: not filekv's; at most 64 KiB of it read
                    p.check(await p.read_capped_async(response))
                total, revision = p.decode_backup_head(response)
                if on_start is not None:
                    on_start(total)
                written = 0
                async for chunk in response.aiter_raw():
                    out.write(chunk)
                    written += len(chunk)
                    if progress is not None:
                        progress(len(chunk))
            finally:
                await response.aclose()
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
    ) -> AsyncWatch:
        """``Client.watch`` for asyncio: ``async for change in kv.watch("cfg/"):``; the answer's
        ``last_event_id`` as ``Client.watch``'s."""
        resume = Resume(prefix, key, from_revision, last_event_id)
        changes = watch_async(
            self.url, self._http.headers, self._timeout, self._transport, resume, reconnect_timeout
        )
        return AsyncWatch(changes, resume)

    # --- transactions

    async def begin(self) -> int:
        """Begin the transaction, or a nested level of it: the new depth."""
        return p.decode_depth(await self._send(p.BEGIN))

    async def commit(self) -> int:
        """Commit every level atomically: how many writes were applied."""
        return p.decode_applied(await self._send(p.COMMIT))

    async def rollback(self) -> int:
        """Undo the innermost level: the depth left (0: the transaction ended)."""
        return p.decode_depth(await self._send(p.ROLLBACK))

    async def release(self) -> int:
        """Merge the innermost level into the one below: the depth left."""
        return p.decode_depth(await self._send(p.RELEASE))

    async def transaction_status(self) -> dict[str, Any]:
        """``{"active", "mine", "depth", "expires_in"}``."""
        return p.decode_json(await self._send(p.STATUS))

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[int]:
        """Begin (or nest) a level; yield its depth.

        On normal exit the outermost level commits and a nested one is released into its
        parent; on an exception that level is rolled back and the exception re-raised.
        """
        depth = await self.begin()
        try:
            yield depth
        except BaseException:
            try:
                await self.rollback()
            except FilekvError as exc:  # e.g. the lease expired: the original error matters
                log.warning("rollback of transaction level %d failed: %s", depth, exc)
            raise
        if depth == 1:
            await self.commit()
        else:
            await self.release()
