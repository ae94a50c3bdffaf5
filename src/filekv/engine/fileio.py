"""The one layer through which the engine touches files.

Every write, fsync, rename and unlink the engine does goes through a ``FileIO``. Files it creates
are 0600 (owner only), as etcd makes its data files. Tests replace it
with a subclass that counts operations, fails the N-th one with EIO or ENOSPC, or forgets what was
written since the last fsync (simulated power loss) — the way SQLite tests its commit paths.
Owns no state: descriptors belong to whoever opened them (``SegmentSet``, compaction).
"""

from __future__ import annotations

import os


class FileIO:
    """Plain POSIX file operations on file descriptors."""

    def open(self, path: str, flags: int, mode: int = 0o600) -> int:
        return os.open(path, flags, mode)

    def write(self, fd: int, data: bytes) -> None:
        """Write all of ``data`` at the file's current position (append mode in practice)."""
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]

    def pread(self, fd: int, size: int, offset: int) -> bytes:
        return os.pread(fd, size, offset)

    def read_file(self, path: str) -> bytes:
        with open(path, "rb") as handle:
            return handle.read()

    def fsync(self, fd: int) -> None:
        os.fsync(fd)

    def truncate(self, fd: int, size: int) -> None:
        os.ftruncate(fd, size)

    def close(self, fd: int) -> None:
        os.close(fd)

    def rename(self, source: str, target: str) -> None:
        os.replace(source, target)

    def unlink(self, path: str) -> None:
        os.unlink(path)

    def fsync_dir(self, path: str) -> None:
        """Make renames, creations and unlinks in ``path`` durable."""
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
