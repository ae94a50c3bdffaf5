"""Restoring a backup archive into a data directory, offline (``filekv restore``).

Steps, nothing in the data directory touched until the backup is known to be whole and sound:

1. Lock the directory (its ``LOCK``, as ``Store.open`` does): a directory a server or another
   command is using is refused, and none can start on it meanwhile. A directory holding anything
   but that lock file is refused unless ``force``.
2. Extract the archive into a staging folder inside the directory (``backup_archive.read_archive``:
   names, types, sizes and counts checked before each member is written; the total checked
   against ``max_bytes`` and the free space first).
3. Verify: every record checksum of every segment and every hint's checksum (``verify_copy``,
   strict: a damaged hint means a damaged archive), and the users file parses (its SHA-256 and
   the manifest's own, when the archive has them, were checked in 2); then open the staging
   folder as a store (recovery reads it whole, and writes the hints the copy lacked) and check
   that its revision and its number of keys are the manifest's.
4. With ``force``, remove the directory's old store files (segments, hints, their temporary and
   ``.broken`` files, ``users.json``, stale backup staging folders); move the restored files in;
   fsync the directory. An interruption here leaves a directory to restore again, with the same
   archive.
"""

from __future__ import annotations

import calendar
import contextlib
import errno
import fcntl
import logging
import math
import os
import re
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final

from filekv.backup_archive import (
    USERS_NAME,
    ArchiveError,
    Extracted,
    Manifest,
    Progress,
    read_archive,
)
from filekv.engine import CorruptStore, Store, StoreError
from filekv.engine.backup import STAGING_PREFIX, verify_copy
from filekv.service.users import UserFile, UsersFileCorrupt

LOCK_NAME: Final = "LOCK"
RESTORE_PREFIX: Final = ".restore-"
# What a data directory holds that a restore replaces: the engine's files and the users file.
_STORE_FILE: Final = re.compile(r"[0-9]+\.(?:seg|hint)(?:\.tmp|\.broken(?:\.[0-9]+)?)?")


class RestoreRefused(Exception):
    """The restore was not done: the directory is in use or not empty, or the archive is bad."""


@dataclass(frozen=True, slots=True)
class RestoreResult:
    """What a restore brought back: the backup's revision, its keys, the files and bytes now in
    the data directory, and how long it took."""

    revision: int
    keys: int
    files: int
    bytes: int
    seconds: float


def restore(
    source: IO[bytes],
    source_name: str,
    data_dir: Path,
    *,
    force: bool = False,
    max_bytes: int | None = None,
    progress: Progress | None = None,
    on_manifest: Callable[[Manifest], None] | None = None,
) -> RestoreResult:
    """Restore the backup archive read from ``source`` into ``data_dir``; see the steps."""
    started = time.monotonic()
    created = not data_dir.exists()
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        lock_fd = _lock(data_dir)
    except BaseException:
        _remove_if_created(data_dir, created)
        raise
    restored = False
    try:
        others = sorted(n for n in os.listdir(data_dir) if n != LOCK_NAME)
        if others and not force:
            shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
            raise RestoreRefused(
                f"data directory {data_dir} is not empty ({shown}); "
                "restore into an empty one, or pass --force to replace its store"
            )
        for name in others:  # what an earlier interrupted restore or backup left
            if name.startswith((RESTORE_PREFIX, STAGING_PREFIX)) and (data_dir / name).is_dir():
                shutil.rmtree(data_dir / name, ignore_errors=True)
        free = shutil.disk_usage(data_dir).free
        limit = free if max_bytes is None else min(max_bytes, free)
        staging = data_dir / f"{RESTORE_PREFIX}{os.getpid()}"
        staging.mkdir(mode=0o700)
        try:
            extracted = read_archive(
                source,
                source_name,
                staging,
                max_bytes=limit,
                progress=progress,
                on_manifest=on_manifest,
            )
            keys = _verify(staging, extracted, source_name)
            (staging / LOCK_NAME).unlink(missing_ok=True)
            if force:
                _remove_store_files(data_dir)
            names = sorted(os.listdir(staging))
            for name in names:
                os.replace(staging / name, data_dir / name)
            _fsync_dir(data_dir)
            restored = True
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    finally:
        os.close(lock_fd)  # releases the flock
        if not restored:
            _remove_if_created(data_dir, created)
    return RestoreResult(
        revision=extracted.manifest.revision,
        keys=keys,
        files=len(names),
        bytes=sum(os.path.getsize(data_dir / n) for n in names),
        seconds=time.monotonic() - started,
    )


def _remove_if_created(data_dir: Path, created: bool) -> None:
    """After a failed restore into a directory it created: leave nothing behind."""
    if created:
        (data_dir / LOCK_NAME).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            data_dir.rmdir()


def _lock(data_dir: Path) -> int:
    fd = os.open(data_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        os.close(fd)
        if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise RestoreRefused(
                f"data directory {data_dir} is in use (is a server running?); not restoring"
            ) from None
        raise
    return fd


def _verify(staging: Path, extracted: Extracted, source_name: str) -> int:
    """Step 3; the number of keys in the restored store."""
    try:
        verify_copy(staging, strict=True)
    except CorruptStore as error:
        name = Path(error.path).name
        at = extracted.data_offsets.get(name, 0) + error.offset
        raise ArchiveError(
            f"{source_name}: member {name} is damaged at offset {error.offset} "
            f"(offset {at} of the archive): {error.reason}"
        ) from None
    if (staging / USERS_NAME).exists():
        _check_users(staging, source_name)
    manifest = extracted.manifest
    now = -math.inf  # before every expiry: len(store) counts every key held, expired or not
    try:
        # Opened only to be checked: nothing may write to the copy (no compaction, no sweep of
        # keys that expired since the backup: the server that serves it will do that).
        with Store.open(
            staging, auto_compact=False, expiry_sweep_seconds=0, clock=lambda: now
        ) as store:
            revision, held = store.revision, len(store)
            now = _backup_time(manifest.created) + 1  # created is in whole seconds
            keys = len(store)
    except StoreError as error:
        raise ArchiveError(f"{source_name}: the restored store does not open: {error}") from None
    if revision != manifest.revision:
        raise ArchiveError(
            f"{source_name}: the restored store is at revision {revision}, "
            f"the manifest says {manifest.revision}"
        )
    # The manifest counts the keys alive when the backup was taken: all those held, less the
    # ones expired by then; at least those still alive when its manifest was made (``keys``).
    # Both by the backup server's clock: this machine's may be behind, and then keys expired at
    # the backup looked alive here, and a good archive was refused.
    if not keys <= manifest.keys <= held:
        expired = f", {held - keys:,} of them expired" if held != keys else ""
        raise ArchiveError(
            f"{source_name}: the restored store holds {held:,} keys{expired}; "
            f"the manifest says {manifest.keys:,}"
        )
    return keys


def _backup_time(created: str) -> float:
    """The manifest's ``created`` (UTC, to the second) as a Unix time; -inf if it is not one
    (then only the keys held bound the manifest's count)."""
    try:
        return float(calendar.timegm(time.strptime(created, "%Y-%m-%dT%H:%M:%SZ")))
    except ValueError:
        return -math.inf


class _ThisThread(logging.Filter):
    """Drops the records the thread that made it logs (other threads' pass)."""

    def __init__(self) -> None:
        super().__init__()
        self.thread = threading.get_ident()

    def filter(self, record: logging.LogRecord) -> bool:
        return record.thread != self.thread


def _check_users(staging: Path, source_name: str) -> None:
    """ArchiveError, one line, unless the restored users file parses."""
    path = staging / USERS_NAME
    # UserFile is the server's reader: it also logs a damaged file, for the server's operator
    # ("logins and registrations are refused ..."), which would print a second line, naming
    # the staging folder, before this refusal. That log is not meant for a restore: muted here.
    users_log, muted = logging.getLogger(UserFile.__module__), _ThisThread()
    users_log.addFilter(muted)
    try:
        UserFile(staging).records()
    except (UsersFileCorrupt, OSError) as error:
        reason = str(error).removeprefix(f"{path}: ")  # the staging folder is gone afterwards
        raise ArchiveError(f"{source_name}: member {USERS_NAME} is damaged: {reason}") from None
    finally:
        users_log.removeFilter(muted)


def _remove_store_files(data_dir: Path) -> None:
    for name in os.listdir(data_dir):
        path = data_dir / name
        if _STORE_FILE.fullmatch(name) or name == USERS_NAME:
            path.unlink()
        elif name.startswith(STAGING_PREFIX) and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
    _fsync_dir(data_dir)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
