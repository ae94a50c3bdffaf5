"""Online backup: a consistent copy of the store as of one revision, taken while writes go on.

Steps (``take_backup``, called by ``Store.backup``):

1. Under the store lock: seal the active segment if it is at least half full (fsync it and
   start a new one, as a rotation does), note the revision and the key count, and hard-link
   every sealed segment into the destination; write a copy of the new, empty active segment
   (its header only). Sealed segments never change again, and compaction unlinks a segment only
   after taking it out of the table under this same lock, so every file linked exists and is
   complete: the set is the store at that one revision. Links cost no copy and no space; the
   lock is held for one fsync, one segment creation and a link per segment (milliseconds).
   An active segment less than half full is not sealed: it is linked under a temporary name,
   its length noted, and its records up to there are copied (outside the lock: a segment only
   grows at its end) into a segment of the copy's own, followed by a header-only newest one of
   the next id. Sealing it every time gave a store backed up more often than it fills a
   segment one more segment per backup, never compacted while small (nothing in it is dead):
   300 backups of one write each left 301 segments, a file descriptor each.
2. Without the lock: wait for the background hint writer (the segment just sealed gets its hint),
   then link the hint file of each segment linked in 1 that has one. A hint is written to a
   temporary file and renamed into place, so a link is of a whole hint, never a half-written one.
3. Verify the copy: every record of every segment (``scan_segment``, each checksum), every hint
   (its checksum, its segment, the length it sums up). A hint that does not check out is left
   out (the segment is then replayed at open, as the live store would do); a damaged segment is
   ``CorruptStore``, naming the file and offset, and the copy is removed.

The newest segment of the copy is the header-only copy made in 1, never a link: whoever opens the
copy appends to (or cuts the torn tail of) its newest segment, which must not be a file the live
store shares. Every other file of the copy is only ever read, renamed or unlinked by a store
opened on it, so links to the live store's files are safe.

A destination on another file system cannot hold links: the links are made in a staging folder
inside the data directory (``.backup-*``; a stale one is removed by ``remove_stale_staging``),
copied to the destination, then removed.

Owns nothing once it returns: the copy is the caller's.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import secrets
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from .errors import CorruptStore, DiskFull, StorageError, StoreClosed, StoreFailed
from .fileio import FileIO
from .hint import decode_hint
from .record import FormatError, SegmentHeader, encode_segment_header
from .segment import (
    HINT_SUFFIX,
    SEGMENT_SUFFIX,
    hint_name,
    id_of,
    new_marker,
    scan_segment,
    segment_name,
)
from .segments import SegmentSet

log = logging.getLogger(__name__)

STAGING_PREFIX: Final = ".backup-"
# The name an active segment is linked under while its records are copied out of it.
COPYING_SUFFIX: Final = ".copying"
COPY_PIECE: Final = 1 << 20


@dataclass(frozen=True, slots=True)
class BackupResult:
    """What a backup holds: the revision it is of, its keys, and its files and their bytes."""

    revision: int
    keys: int
    files: int
    bytes: int

    def as_dict(self) -> dict[str, int]:
        return {
            "revision": self.revision,
            "keys": self.keys,
            "files": self.files,
            "bytes": self.bytes,
        }


@dataclass(frozen=True, slots=True)
class _Frozen:
    """What step 1 saw under the lock."""

    revision: int
    keys: int
    segment_ids: list[int]
    copied: tuple[str, int] | None  # the active segment's name and the bytes to copy of it


def take_backup(
    lock: threading.Lock,
    segments: SegmentSet,
    *,
    is_closed: Callable[[], bool],
    revision: Callable[[], int],
    keys: Callable[[], int],
    destination: Path,
    verify: Callable[[Path], None] | None = None,
) -> BackupResult:
    """Write a verified copy of the store into ``destination`` (new or empty); see the steps.

    ``verify`` checks the copy (default ``verify_copy``, in this process; a server passes
    ``verify_copy_in_child``)."""
    destination = Path(destination)
    _prepare(destination)
    store_dir = segments.directory
    same_device = os.stat(destination).st_dev == os.stat(store_dir).st_dev
    stage = destination if same_device else new_staging_dir(store_dir)
    try:
        frozen = _freeze(lock, segments, is_closed, revision, keys, stage)
        if frozen.copied is not None:
            _copy_prefix(stage, *frozen.copied)
        segments.wait_for_hints()
        for segment_id in frozen.segment_ids:
            with contextlib.suppress(FileNotFoundError):  # none, or compaction removed it
                os.link(store_dir / hint_name(segment_id), stage / hint_name(segment_id))
        (verify or verify_copy)(stage)
        if stage != destination:
            _copy_files(stage, destination)
        _fsync_dir(destination)
    except OSError as error:
        _empty(destination)
        if error.errno == errno.ENOSPC:
            raise DiskFull(f"the disk is full (taking a backup): {error}") from error
        raise StorageError(f"I/O error while taking a backup: {error}") from error
    except BaseException:
        _empty(destination)
        raise
    finally:
        if stage != destination:
            shutil.rmtree(stage, ignore_errors=True)
    names = os.listdir(destination)
    return BackupResult(
        revision=frozen.revision,
        keys=frozen.keys,
        files=len(names),
        bytes=sum(os.path.getsize(destination / name) for name in names),
    )


def _prepare(destination: Path) -> None:
    destination.mkdir(mode=0o700, parents=True, exist_ok=True)
    if any(destination.iterdir()):
        raise FileExistsError(f"backup destination {destination} is not empty")


def _freeze(
    lock: threading.Lock,
    segments: SegmentSet,
    is_closed: Callable[[], bool],
    revision: Callable[[], int],
    keys: Callable[[], int],
    stage: Path,
) -> _Frozen:
    """Step 1, under the store lock."""
    with lock:
        if is_closed():
            raise StoreClosed("the store is closed")
        if segments.failure is not None:
            raise StoreFailed("the store failed to sync to disk; back it up after a restart")
        active = segments.active
        assert active is not None
        copied = None
        if 2 * active.size >= segments.segment_bytes:
            try:
                segments.start_new_segment(revision())
            except OSError as error:
                raise segments.storage_error(error, "sealing a segment for a backup") from error
            active = segments.active
            assert active is not None
        elif active.size > active.header.size:  # copied from the link, after the lock
            os.link(active.path, stage / (active.path.name + COPYING_SUFFIX))
            copied = (active.path.name, active.size)
        sealed = [s for s in segments.all() if s is not active]
        for segment in sealed:
            os.link(segment.path, stage / segment.path.name)
        # The empty newest segment: the revision it starts at is the store's, even when no
        # record holds it any more (compaction drops deleted keys' records).
        if copied is None:
            newest = active.path.name
            header = segments.io.pread(active.fd, active.size, 0)
        else:
            newest = segment_name(active.segment_id + 1)
            empty = SegmentHeader(active.segment_id + 1, revision(), 0, new_marker())
            header = encode_segment_header(empty)
        frozen = _Frozen(revision(), keys(), [s.segment_id for s in sealed], copied)
    _write_file(stage / newest, header)
    return frozen


def _copy_prefix(stage: Path, name: str, length: int) -> None:
    """The first ``length`` bytes of the active segment linked as ``name`` + COPYING_SUFFIX,
    written as ``name``: every record it held when the backup froze the store (appends after
    that lie beyond ``length``; nothing before it ever changes), then the link removed."""
    link = stage / (name + COPYING_SUFFIX)
    left = length
    with link.open("rb") as source, (stage / name).open("xb") as target:
        os.fchmod(target.fileno(), 0o600)
        while left:  # in pieces: segment_bytes has no upper bound for an embedding program
            piece = source.read(min(left, COPY_PIECE))
            if not piece:
                raise StorageError(f"the active segment {name} is shorter than {length} bytes")
            target.write(piece)
            left -= len(piece)
        target.flush()
        os.fsync(target.fileno())
    link.unlink()


def verify_copy(directory: Path, io: FileIO | None = None, *, strict: bool = False) -> None:
    """CorruptStore unless every record of every segment in ``directory`` checks out; drop the
    hint files that do not (a segment without a good hint is replayed at open), or with
    ``strict`` (a restore: a damaged hint means a damaged archive) raise CorruptStore for them."""
    io = io or FileIO()
    sizes: dict[int, tuple[int, bool]] = {}  # segment id -> (bytes, merged)
    for name in sorted(os.listdir(directory)):
        segment_id = id_of(name, SEGMENT_SUFFIX)
        if segment_id is not None:
            path = directory / name
            scanned = scan_segment(io, path, may_have_torn_tail=False)
            sizes[segment_id] = (len(scanned.data), scanned.header.merged)
            del scanned
    for name in sorted(os.listdir(directory)):
        hinted = id_of(name, HINT_SUFFIX)
        if hinted is None:
            continue
        path = directory / name
        found = sizes.get(hinted)
        try:
            if found is None:
                raise FormatError("no segment of that id")
            hint = decode_hint(io.read_file(str(path)))
            if hint.segment_id != hinted:
                raise FormatError("hint file names another segment")
            size, merged = found
            if not merged and hint.segment_length != size:
                raise FormatError("hint file sums up another length of the segment")
        except FormatError as error:
            if strict:
                raise CorruptStore(str(path), 0, str(error)) from error
            log.warning(
                "%s left out of the backup (%s); its segment is replayed at open", name, error
            )
            path.unlink()


def verify_copy_in_child(directory: Path) -> None:
    """``verify_copy`` in a child process at a lower CPU priority, same result and errors.

    In a server, verifying in a thread holds the interpreter's lock for every record checked
    (seconds for a large store), which the event loop serving the writers then waits for; a child
    process leaves the server's interpreter alone, and runs on another core when there is one.
    """
    done = subprocess.run(
        [sys.executable, "-m", "filekv.engine.backup", str(directory)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode == 0:
        return
    try:
        found = json.loads(done.stdout)
        error = CorruptStore(str(found["path"]), int(found["offset"]), str(found["reason"]))
    except (ValueError, KeyError, TypeError):
        raise StorageError(f"verifying the backup failed: {done.stderr.strip()[-500:]}") from None
    raise error


def _verify_main(argv: list[str]) -> int:
    """``python -m filekv.engine.backup DIR``: ``verify_copy(DIR)``; damage as JSON, exit 1."""
    os.nice(10)  # the server comes first
    try:
        verify_copy(Path(argv[1]))
    except CorruptStore as error:
        # The one line the parent process reads back: a reply on the pipe, not a log message.
        damage = {"path": error.path, "offset": error.offset, "reason": error.reason}
        sys.stdout.write(json.dumps(damage) + "\n")
        return 1
    return 0


def remove_stale_staging(store_dir: Path) -> int:
    """Remove the staging folders a backup interrupted by a crash left in ``store_dir``.

    Only while no backup runs (at open, under the directory lock): their links keep old
    segments' space in use. Returns how many were removed.
    """
    removed = 0
    for name in os.listdir(store_dir):
        if name.startswith(STAGING_PREFIX) and (store_dir / name).is_dir():
            shutil.rmtree(store_dir / name, ignore_errors=True)
            removed += 1
    return removed


def new_staging_dir(store_dir: Path) -> Path:
    """A new, empty staging folder inside ``store_dir`` (same file system: links work)."""
    path = store_dir / f"{STAGING_PREFIX}{secrets.token_hex(8)}"
    path.mkdir(mode=0o700)
    return path


def _write_file(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def _copy_files(source: Path, destination: Path) -> None:
    for name in sorted(os.listdir(source)):
        target = destination / name
        shutil.copyfile(source / name, target)
        os.chmod(target, 0o600)
        fd = os.open(target, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _empty(directory: Path) -> None:
    """After a failed backup: remove what it wrote (the folder itself stays, as it was given)."""
    with contextlib.suppress(OSError):
        for name in os.listdir(directory):
            with contextlib.suppress(OSError):
                os.unlink(directory / name)


__all__ = [
    "STAGING_PREFIX",
    "BackupResult",
    "new_staging_dir",
    "remove_stale_staging",
    "take_backup",
    "verify_copy",
    "verify_copy_in_child",
]


if __name__ == "__main__":
    sys.exit(_verify_main(sys.argv))
