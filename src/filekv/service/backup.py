"""``GET /admin/backup``'s machinery: one backup at a time, streamed as a tar without buffering it.

``Backups.start`` takes the store's backup into a staging folder of hard links inside the data
directory (``backup_archive.stage_backup``, in a worker thread: it fsyncs, links and reads every
record to verify it), and answers with a ``BackupResponse`` that streams the archive from those
links: each chunk (at most 1 MiB) is read in a worker thread, sent, and the next read only once
the client has taken it (uvicorn's flow control), so memory holds a chunk, whatever the store's
size. The archive's length is known in advance (``archive_size``), so the answer has a
Content-Length and a client can tell a cut-off download from a whole one.

Bounds: one backup at a time (another is ``BackupRunning``, 429); a download still running after
``time_limit`` seconds (``backup_time_limit``) is cut off, so a slow reader cannot hold the slot
and the staged links for ever; so is one running when the server is told to stop (uvicorn would
let it finish first, holding up a SIGTERM). Whatever ends the stream (done, the client gone, cut
off, an error), the staging folder is removed and the slot freed; a folder left by a crash is
removed by the next backup (``remove_stale_staging``: while no backup runs, any is stale).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Callable, Generator
from pathlib import Path

import anyio
import anyio.to_thread
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from filekv.backup_archive import Manifest, archive_size, iter_archive, stage_backup
from filekv.engine import Store
from filekv.engine.backup import remove_stale_staging
from filekv.service.errors import BackupRunning
from filekv.service.export import cut_off

logger = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 10
SHUTDOWN_POLL_SECONDS = 0.2


class Backups:
    """The server's backup slot: at most one backup streams at a time."""

    def __init__(self, *, time_limit: float, stopping: Callable[[], bool] = lambda: False) -> None:
        self.time_limit = time_limit
        self.stopping = stopping  # is the server shutting down? (then a stream is cut off)
        self.running = False

    async def start(self, store: Store, username: str) -> BackupResponse:
        """Take a backup of ``store`` and the response that streams it; BackupRunning if one
        is streaming already."""
        if self.running:
            raise BackupRunning(RETRY_AFTER_SECONDS)
        self.running = True  # no await between the check and this: the slot is ours
        try:
            staging, manifest = await asyncio.to_thread(_stage, store)
        except BaseException:
            self.running = False
            raise
        logger.info(
            "backup of revision %d for %s: %d files, %d bytes",
            manifest.revision,
            username,
            len(manifest.files),
            manifest.data_bytes,
        )
        return BackupResponse(
            staging, manifest, time_limit=self.time_limit, stopping=self.stopping, done=self._done
        )

    def _done(self) -> None:
        self.running = False


def _stage(store: Store) -> tuple[Path, Manifest]:
    remove_stale_staging(store.path)  # we hold the slot: no other backup's folder is there
    return stage_backup(store, verify_in_child=True)  # the event loop keeps the GIL


class BackupResponse(Response):
    """The archive of a staged backup, streamed chunk by chunk; the staging folder is removed
    when the stream ends, however it ends."""

    media_type = "application/x-tar"

    def __init__(
        self,
        staging: Path,
        manifest: Manifest,
        *,
        time_limit: float,
        stopping: Callable[[], bool],
        done: Callable[[], None],
    ) -> None:
        self.staging = staging
        self.manifest = manifest
        self.time_limit = time_limit
        self.stopping = stopping
        self._done = done
        self.complete = False  # the whole archive was sent
        self.status_code = 200
        self.background = None
        name = f"filekv-backup-{manifest.revision}.tar"
        self.init_headers(
            {
                "content-length": str(archive_size(manifest)),
                "content-disposition": f'attachment; filename="{name}"',
                "x-filekv-revision": str(manifest.revision),
                "cache-control": "no-store",
            }
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        chunks = iter_archive(self.staging, self.manifest)
        try:
            async with anyio.create_task_group() as group:

                async def watch_for_disconnect() -> None:
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    if self.stopping():  # a stalled connection aborted at shutdown (protocol.py)
                        logger.warning("backup download cut off: the server is shutting down")
                    elif not self.complete:  # uvicorn says "disconnect" after a whole answer too
                        logger.info("backup download abandoned by the client")
                    group.cancel_scope.cancel()

                async def watch_for_shutdown() -> None:
                    # uvicorn lets a running answer finish before it stops: an archive could
                    # hold a SIGTERM for backup_time_limit. It is cut off instead.
                    while not self.stopping():
                        await anyio.sleep(SHUTDOWN_POLL_SECONDS)
                    logger.warning("backup download cut off: the server is shutting down")
                    group.cancel_scope.cancel()

                group.start_soon(watch_for_disconnect)
                group.start_soon(watch_for_shutdown)
                await self._stream(chunks, send)
                group.cancel_scope.cancel()
        finally:
            if not self.complete:  # cut off (time limit, shutdown) or abandoned: logged above,
                cut_off()  # so uvicorn's ERROR about an unfinished answer is not
            # Synchronous on purpose: this runs on cancellation too (shutdown, disconnect),
            # where an await would be cancelled before the links are gone. Closing the generator
            # closes its file; unlinking a few hundred links takes milliseconds.
            chunks.close()
            shutil.rmtree(self.staging, ignore_errors=True)
            self._done()

    async def _stream(self, chunks: Generator[bytes, None, None], send: Send) -> None:
        deadline = anyio.current_time() + self.time_limit

        async def deliver(message: Message) -> bool:
            with anyio.move_on_after(deadline - anyio.current_time()) as scope:
                await send(message)
            if scope.cancelled_caught:
                logger.warning(
                    "backup download cut off after %s s (backup_time_limit)", self.time_limit
                )
                return False
            return True

        start = {"type": "http.response.start", "status": 200, "headers": self.raw_headers}
        if not await deliver(start):
            return
        while True:
            try:
                # Not abandoned on cancellation: the read finishes before the generator closes.
                chunk = await anyio.to_thread.run_sync(next, chunks, None)
            except OSError:
                logger.exception("backup download cut off: reading the staged files failed")
                return
            if chunk is None:
                break
            if not await deliver({"type": "http.response.body", "body": chunk, "more_body": True}):
                return
        self.complete = await deliver(
            {"type": "http.response.body", "body": b"", "more_body": False}
        )
