"""FileIO replacements for fault injection: fail the N-th operation, or simulate power loss.

``FaultyIO`` counts the operations that change files (write, fsync, fsync_dir, rename, truncate)
and raises ``OSError(errno)`` at the N-th — once, or from then on (a disk that stays full).

``PowerLossIO`` remembers, per file, the bytes known to be on stable storage (what an fsync of
that file covered) and which names a directory fsync made durable. At the N-th operation it takes
a *crash image*: the folder as a power cut would leave it — every file cut to its fsynced bytes,
or torn at a random byte past them; files created or renamed since the last directory fsync are
gone (or back under their old name) — and from then on every operation fails with EIO, so
nothing written after the cut can be acknowledged.
"""

from __future__ import annotations

import errno
import os
import random
import threading
from dataclasses import dataclass, field
from pathlib import Path

from filekv.engine.fileio import FileIO

MUTATING = ("write", "fsync", "fsync_dir", "rename", "truncate")


class FaultyIO(FileIO):
    def __init__(
        self,
        fail_at: int | None = None,
        error: int = errno.EIO,
        *,
        persistent: bool = False,
        partial: bool = False,
        only: tuple[str, ...] = MUTATING,
    ) -> None:
        self.fail_at = fail_at
        self.error = error
        self.persistent = persistent
        self.partial = partial  # a failing write first writes half of its bytes, like a real disk
        self.only = only
        self.count = 0
        self.fired: list[str] = []  # the operations that failed
        self.armed = True
        self.lock = threading.Lock()

    def _tick(self, operation: str) -> bool:
        """Count one operation; True if it must fail."""
        if operation not in self.only:
            return False
        with self.lock:
            self.count += 1
            if not self.armed or self.fail_at is None:
                return False
            if self.count == self.fail_at or (self.persistent and self.count > self.fail_at):
                self.fired.append(operation)
                return True
            return False

    def _fail(self) -> None:
        raise OSError(self.error, os.strerror(self.error))

    def write(self, fd: int, data: bytes) -> None:
        if self._tick("write"):
            if self.partial and len(data) > 1:
                os.write(fd, data[: len(data) // 2])
            self._fail()
        super().write(fd, data)

    def fsync(self, fd: int) -> None:
        if self._tick("fsync"):
            self._fail()
        super().fsync(fd)

    def fsync_dir(self, path: str) -> None:
        if self._tick("fsync_dir"):
            self._fail()
        super().fsync_dir(path)

    def rename(self, source: str, target: str) -> None:
        if self._tick("rename"):
            self._fail()
        super().rename(source, target)

    def truncate(self, fd: int, size: int) -> None:
        if self._tick("truncate"):
            self._fail()
        super().truncate(fd, size)


# -- power loss ------------------------------------------------------------------------------------


@dataclass
class _File:
    """One inode: the bytes an fsync put on stable storage, and (while open) its descriptor."""

    durable: bytes = b""
    fds: set[int] = field(default_factory=set)
    path: str = ""  # current name, for reading its current content


def _norm(path: str) -> str:
    return os.path.abspath(os.fspath(path))


def _read_fd(fd: int) -> bytes:
    """The file's whole content, even through a write-only descriptor (Linux /proc)."""
    with open(f"/proc/self/fd/{fd}", "rb") as handle:
        return handle.read()


class PowerLossIO(FileIO):
    def __init__(self, folder: Path, crash_at: int | None, seed: int, *, tear: bool = True) -> None:
        self.folder = _norm(str(folder))
        self.crash_at = crash_at
        self.rng = random.Random(seed)
        self.tear = tear
        self.count = 0
        self.lock = threading.RLock()
        self.files: dict[str, _File] = {}  # current name -> inode
        self.by_fd: dict[int, _File] = {}
        self.durable_names: dict[str, _File] = {}  # names as the last directory fsync left them
        self.image: dict[str, bytes] | None = None
        self.crashed = False
        for name in sorted(os.listdir(folder)) if folder.exists() else []:
            path = os.path.join(self.folder, name)
            if os.path.isfile(path):
                with open(path, "rb") as handle:
                    inode = _File(durable=handle.read(), path=path)
                self.files[path] = inode
                self.durable_names[path] = inode

    # each mutating operation first counts; the crash_at-th one takes the image after it ran
    def _before(self) -> None:
        if self.crashed:
            raise OSError(errno.EIO, "power is off")

    def _after(self) -> None:
        self.count += 1
        if self.crash_at is not None and self.count >= self.crash_at and not self.crashed:
            self.image = self._take_image()
            self.crashed = True
            raise OSError(errno.EIO, "power cut")

    def _current(self, inode: _File) -> bytes:
        for fd in inode.fds:
            return _read_fd(fd)
        try:
            with open(inode.path, "rb") as handle:
                return handle.read()
        except FileNotFoundError:
            return inode.durable

    def _take_image(self) -> dict[str, bytes]:
        image: dict[str, bytes] = {}
        for path, inode in self.durable_names.items():
            data = inode.durable
            current = self._current(inode)
            if self.tear and current.startswith(data) and len(current) > len(data):
                data = current[: len(data) + self.rng.randint(0, len(current) - len(data))]
            image[os.path.basename(path)] = data
        return image

    def take_image_now(self) -> dict[str, bytes]:
        with self.lock:
            return self._take_image()

    def open(self, path: str, flags: int, mode: int = 0o600) -> int:
        path = _norm(path)
        with self.lock:
            self._before()
            existed = os.path.exists(path)
            fd = super().open(path, flags, mode)
            inode = self.files.get(path) if existed else None
            if inode is None:
                inode = _File(path=path)
                self.files[path] = inode
            if flags & os.O_TRUNC:
                inode.durable = b""  # pessimistic: the old bytes are gone, new ones not yet synced
            inode.fds.add(fd)
            self.by_fd[fd] = inode
            return fd

    def close(self, fd: int) -> None:
        with self.lock:
            inode = self.by_fd.pop(fd, None)
            if inode is not None:
                inode.fds.discard(fd)
        super().close(fd)

    def write(self, fd: int, data: bytes) -> None:
        with self.lock:
            self._before()
            super().write(fd, data)
            self._after()

    def truncate(self, fd: int, size: int) -> None:
        with self.lock:
            self._before()
            super().truncate(fd, size)
            inode = self.by_fd.get(fd)
            if inode is not None and len(inode.durable) > size:
                inode.durable = inode.durable[:size]  # a shrink is treated as durable at once
            self._after()

    def fsync(self, fd: int) -> None:
        with self.lock:
            self._before()
            super().fsync(fd)
            inode = self.by_fd.get(fd)
            if inode is not None:
                inode.durable = _read_fd(fd)
            self._after()

    def rename(self, source: str, target: str) -> None:
        source, target = _norm(source), _norm(target)
        with self.lock:
            self._before()
            super().rename(source, target)
            inode = self.files.pop(source, None) or _File(path=target)
            inode.path = target
            self.files[target] = inode
            self._after()

    def unlink(self, path: str) -> None:
        path = _norm(path)
        with self.lock:
            self._before()
            super().unlink(path)
            self.files.pop(path, None)
            # An unlink is not durable until the directory is fsynced: durable_names keeps it.
            self._after()

    def fsync_dir(self, path: str) -> None:
        with self.lock:
            self._before()
            super().fsync_dir(path)
            if _norm(path) == self.folder:
                self.durable_names = {
                    name: inode
                    for name, inode in self.files.items()
                    if os.path.dirname(name) == self.folder
                }
            self._after()


def write_image(image: dict[str, bytes], folder: Path) -> None:
    folder.mkdir(parents=True)
    for name, data in image.items():
        if name == "LOCK":
            continue
        (folder / name).write_bytes(data)
