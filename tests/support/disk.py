"""The one simulated disk of the test suites: power cuts, I/O errors, and what survives them.

``SimDisk`` replaces the engine's ``FileIO`` (``src/filekv/engine/fileio.py``, the one layer
through which the engine touches files). It does every operation on real files, so the engine
reads back what it wrote, but keeps its own account of what is *durable*:

* per file (an inode, followed across renames): the bytes as of its last successful fsync, and
  every write/truncate since (``pending``), an ``O_TRUNC`` open included;
* per directory: the names as of the last ``fsync_dir`` and every create/rename/unlink since.

Only files directly in ``directory`` are tracked; files already there when the disk is made count
as durable (a store an earlier run wrote and closed). ``LOCK`` is not a data file: the engine
takes it with ``os.open``, not through ``FileIO``. Real fsyncs are skipped: durability is what
this class says it is, and the tests stay fast.

**What mutates.** Of ``FileIO``'s methods, these change the disk, and only these are the points
where a power cut or an injected error can strike (``MUTATING``, counted in ``ops``): ``open``
when it creates or truncates a file, ``write``, ``fsync``, ``truncate``, ``rename``, ``unlink``,
``fsync_dir``. ``pread``, ``read_file``, a plain ``open`` and ``close`` change nothing.

**Power cut.** ``crash_at=K`` raises ``PowerLoss`` (a ``BaseException``) before the K-th mutating
operation and from every later operation but ``close``, reads included: the machine is off.
``image(dest, rng)`` then writes the directory as a disk might hold it: for each file, the
unsynced writes are dropped, or torn at a random byte, or a random subset of them is kept
(reordering; the gaps read back as zeros), or all kept; un-fsynced directory operations are undone
from some point on (``ordered_metadata``, as a journaling file system commits them) or any subset
of them is undone (``ordered_metadata=False``, what POSIX alone promises). ``image`` can be taken
at any moment, power cut or not.

**I/O errors.** Every mutating operation of a kind in ``fail_kinds`` (all of ``MUTATING`` unless
told) is counted in ``fault_ops``; the ``fail_at``-th raises ``OSError(fail_errno)`` — once, or
from then on with ``fail_persistent`` (a dead or full disk) — and its kind is appended to
``failed``. ``fail_at`` may be set, or reset to ``None`` (the disk is healthy again), at any
time. With ``partial_writes`` a failing write first writes half of its bytes, as a real disk may.
An fsync that fails loses its pending writes for good, as Linux does (the pages are marked clean):
they stay readable but never become durable.

**One disk, not two (issue 16).** This merges ``tests/reliability/_b_simdisk.py`` (``SimDisk``)
and ``tests/engine/faulty_io.py`` (``FaultyIO``: errors; ``PowerLossIO``: power cuts). Where they
disagreed, the stricter behaviour was kept:

* Fault points: ``FaultyIO`` failed only write, fsync, fsync_dir, rename and truncate, and the old
  ``SimDisk`` by default write, fsync, truncate, rename and unlink. Now every mutating kind can
  fail by default: opens that create a file and unlinks too.
* A failed fsync: ``FaultyIO`` only raised; here it also loses the file's unsynced writes.
* The crash point: ``PowerLossIO`` ran the K-th operation, then cut the power and raised ``EIO``
  from it and from every later one, so the engine took the cut for an I/O error and went on
  handling it. Here the cut comes before the K-th operation and is a ``PowerLoss`` that no
  ``except Exception`` or ``except OSError`` stops: a machine without power goes on with nothing,
  and any cleanup on the way out meets the dead disk again. "Ran K, then the cut" leaves the disk
  that "cut before K+1" leaves, but there the engine saw operation K succeed and may have
  acknowledged a write on the strength of it, which the image must then hold. A disk that fails
  every operation with ``EIO`` from some point on is ``fail_persistent=True``.
* Crash points: ``PowerLossIO`` also counted read-only opens, which change nothing on disk; they
  are not counted (a cut just before one leaves what a cut before the next mutating operation
  leaves). But after the cut they fail, and so do reads, which the old ``SimDisk`` let through.
* The image: ``PowerLossIO`` kept each file at its fsynced bytes or torn at a random byte past
  them, undid every un-fsynced directory operation, and made a truncate (``O_TRUNC`` too) durable
  at once. Here a truncate is pending until an fsync like a write, so an image may still hold the
  bytes it cut off, and images also keep writes out of order and some directory operations:
  every image ``PowerLossIO`` could make, this disk can make too, and more.
* Bookkeeping of files already in the directory (``PowerLossIO``) is done at construction, not
  by a separate call, and the real fsync (``FaultyIO``, ``PowerLossIO``) is skipped.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import shutil
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from filekv.engine.fileio import FileIO

# The FileIO operations that change the disk (an open only when it creates or truncates).
MUTATING: Final = ("open", "write", "fsync", "truncate", "rename", "unlink", "fsync_dir")


@contextlib.contextmanager
def scratch() -> Iterator[Path]:
    """A temporary directory in memory when the machine has /dev/shm (fast, and no real fsync)."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    path = Path(tempfile.mkdtemp(prefix="filekv-simdisk-", dir=base))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class PowerLoss(BaseException):
    """Raised from the I/O layer at the crash point; BaseException so no handler swallows it."""


@dataclass
class Inode:
    durable: bytes = b""
    # ("write", offset, data) or ("truncate", size, b"") since the last good fsync
    pending: list[tuple[str, int, bytes]] = field(default_factory=list)


def _apply(content: bytes, op: tuple[str, int, bytes]) -> bytes:
    kind, where, data = op
    if kind == "truncate":
        return content[:where] if where <= len(content) else content + bytes(where - len(content))
    buf = bytearray(content)
    if where > len(buf):
        buf += bytes(where - len(buf))
    buf[where : where + len(data)] = data
    return bytes(buf)


class SimDisk(FileIO):
    def __init__(
        self,
        directory: Path,
        *,
        crash_at: int | None = None,
        fail_at: int | None = None,
        fail_kinds: tuple[str, ...] = MUTATING,
        fail_errno: int = errno.EIO,
        fail_persistent: bool = False,
        partial_writes: bool = False,
    ) -> None:
        self.directory = str(directory)
        self.names: dict[str, Inode] = {}  # the directory now
        self.durable_names: dict[str, Inode] = {}  # the directory as of the last fsync_dir
        self.dir_ops: list[tuple[str, str, str, Inode | None]] = []  # (kind, name, target, inode)
        self.fds: dict[int, tuple[Inode, bool]] = {}  # fd -> (inode, append mode)
        self.ops = 0  # mutating operations so far: the crash clock
        self.fault_ops = 0  # mutating operations of the kinds in fail_kinds: the fault clock
        self.crash_at = crash_at
        self.crashed = False
        self.fail_at = fail_at
        self.fail_kinds = fail_kinds
        self.fail_errno = fail_errno
        self.fail_persistent = fail_persistent
        self.partial_writes = partial_writes
        self.failed: list[str] = []  # kinds of the operations made to fail
        # Group commit fsyncs from one thread while another appends: the bookkeeping of one
        # operation must not interleave with another's.
        self.lock = threading.RLock()
        self.adopt_existing()

    # -- bookkeeping -----------------------------------------------------------------------------

    def adopt_existing(self) -> None:
        """Count files already in the directory as durable (a store made by an earlier run)."""
        if not os.path.isdir(self.directory):
            return
        for name in sorted(os.listdir(self.directory)):
            path = os.path.join(self.directory, name)
            if os.path.isfile(path) and name != "LOCK" and name not in self.names:
                with open(path, "rb") as handle:
                    inode = Inode(durable=handle.read())
                self.names[name] = inode
                self.durable_names[name] = inode

    def _powered(self, kind: str) -> None:
        """Any operation but close, after the power cut: the machine is off."""
        if self.crashed:
            raise PowerLoss(kind)

    def _step(self, kind: str) -> None:
        """Count one mutating operation: the power cut or the injected error may strike here."""
        self._powered(kind)
        self.ops += 1
        if self.crash_at is not None and self.ops >= self.crash_at:
            self.crashed = True
            raise PowerLoss(kind)
        if kind in self.fail_kinds:
            self.fault_ops += 1
            if self.fail_at is not None and (
                self.fault_ops == self.fail_at
                or (self.fail_persistent and self.fault_ops > self.fail_at)
            ):
                self.failed.append(kind)
                raise OSError(self.fail_errno, os.strerror(self.fail_errno))

    def _name(self, path: str) -> str | None:
        head, tail = os.path.split(path)
        return tail if os.path.abspath(head) == os.path.abspath(self.directory) else None

    # -- FileIO ----------------------------------------------------------------------------------

    def open(self, path: str, flags: int, mode: int = 0o600) -> int:
        with self.lock:
            name = self._name(path)
            creating = bool(flags & os.O_CREAT) and not os.path.exists(path)
            if creating or flags & os.O_TRUNC:
                self._step("open")
            else:
                self._powered("open")
            fd = os.open(path, flags, mode)
            if name is None:
                return fd
            inode = self.names.get(name)
            if inode is None:
                inode = Inode()
                self.names[name] = inode
                self.dir_ops.append(("create", name, "", inode))
            if flags & os.O_TRUNC:
                inode.pending.append(("truncate", 0, b""))
            self.fds[fd] = (inode, bool(flags & os.O_APPEND))
            return fd

    def write(self, fd: int, data: bytes) -> None:
        with self.lock:
            tracked = self.fds.get(fd)
            append = tracked is not None and tracked[1]
            offset = os.fstat(fd).st_size if append else os.lseek(fd, 0, os.SEEK_CUR)
            try:
                self._step("write")
            except OSError:
                if self.partial_writes and len(data) > 1:  # a short write, then the error
                    half = bytes(data[: len(data) // 2])
                    os.write(fd, half)
                    if tracked:
                        tracked[0].pending.append(("write", offset, half))
                raise
            super().write(fd, data)
            if tracked:
                tracked[0].pending.append(("write", offset, bytes(data)))

    def pread(self, fd: int, size: int, offset: int) -> bytes:
        with self.lock:
            self._powered("pread")
        return super().pread(fd, size, offset)

    def read_file(self, path: str) -> bytes:
        with self.lock:
            self._powered("read_file")
        return super().read_file(path)

    def fsync(self, fd: int) -> None:
        with self.lock:
            tracked = self.fds.get(fd)
            try:
                self._step("fsync")
            except OSError:
                if tracked:  # Linux marks the pages clean: those writes never reach the disk
                    tracked[0].pending.clear()
                raise
            if tracked:
                inode = tracked[0]
                for op in inode.pending:
                    inode.durable = _apply(inode.durable, op)
                inode.pending.clear()

    def truncate(self, fd: int, size: int) -> None:
        with self.lock:
            self._step("truncate")
            super().truncate(fd, size)
            tracked = self.fds.get(fd)
            if tracked:
                tracked[0].pending.append(("truncate", size, b""))

    def close(self, fd: int) -> None:  # not a disk operation: works after the power cut too
        with self.lock:
            self.fds.pop(fd, None)
            os.close(fd)

    def rename(self, source: str, target: str) -> None:
        with self.lock:
            self._step("rename")
            super().rename(source, target)
            src, dst = self._name(source), self._name(target)
            if src is not None and dst is not None and src in self.names:
                inode = self.names.pop(src)
                self.names[dst] = inode
                self.dir_ops.append(("rename", src, dst, inode))

    def unlink(self, path: str) -> None:
        with self.lock:
            self._step("unlink")
            super().unlink(path)
            name = self._name(path)
            if name is not None and name in self.names:
                self.dir_ops.append(("unlink", name, "", self.names.pop(name)))

    def fsync_dir(self, path: str) -> None:
        with self.lock:
            self._step("fsync_dir")
            if os.path.abspath(path) == os.path.abspath(self.directory):
                self.durable_names = dict(self.names)
                self.dir_ops.clear()

    # -- the disk after a power cut ----------------------------------------------------------------

    def image(
        self,
        dest: Path,
        rng: random.Random,
        *,
        ordered_metadata: bool = True,
        only: str | None = None,
        modes: tuple[str, ...] = ("drop", "all", "tear", "subset"),
    ) -> str:
        """Write one possible post-power-cut state of the directory into ``dest``; describe it.

        ``only="drop"``: exactly what was made durable; ``only="all"``: the files as the
        process sees them now (the page cache, including writes whose fsync failed).
        """
        with self.lock:  # a background thread (the hint writer) may still be at work
            return self._image(dest, rng, ordered_metadata, only, modes)

    def _image(
        self,
        dest: Path,
        rng: random.Random,
        ordered_metadata: bool,
        only: str | None,
        modes: tuple[str, ...],
    ) -> str:
        if only == "all":
            dest.mkdir(parents=True, exist_ok=True)
            for name in sorted(self.names):
                shutil.copyfile(os.path.join(self.directory, name), dest / name)
            return "as written"
        names = dict(self.durable_names)
        ops = self.dir_ops
        if only == "drop":
            kept = []
        elif only == "all":
            kept = list(ops)
        elif ordered_metadata:
            kept = ops[: rng.randint(0, len(ops))]
        else:
            kept = [op for op in ops if rng.random() < 0.5]
        for kind, name, target, inode in kept:
            if kind == "create":
                names[name] = inode  # type: ignore[assignment]
            elif kind == "rename":
                if names.get(name) is inode:
                    del names[name]
                names[target] = inode  # type: ignore[assignment]
            elif kind == "unlink" and names.get(name) is inode:
                del names[name]
        contents: dict[int, tuple[bytes, str]] = {}
        dest.mkdir(parents=True, exist_ok=True)
        for name, inode in sorted(names.items()):
            if id(inode) not in contents:
                contents[id(inode)] = self._content(inode, rng, only, modes)
            data, _how = contents[id(inode)]
            (dest / name).write_bytes(data)
        described = ",".join(f"{n}:{contents[id(i)][1]}" for n, i in sorted(names.items()))
        return f"dirops kept {len(kept)}/{len(ops)}; {described}"

    @staticmethod
    def _content(
        inode: Inode, rng: random.Random, only: str | None, modes: tuple[str, ...]
    ) -> tuple[bytes, str]:
        pending = inode.pending
        if not pending:
            return inode.durable, "durable"
        mode = only or rng.choice(modes)
        content = inode.durable
        if mode == "drop":
            return content, mode
        if mode == "all":
            for op in pending:
                content = _apply(content, op)
            return content, mode
        if mode == "tear":
            full = content
            for op in pending:
                full = _apply(full, op)
            # Torn: a prefix of the pending operations, the last write cut at a random byte.
            cut = rng.randrange(len(pending))
            for op in pending[:cut]:
                content = _apply(content, op)
            kind, where, data = pending[cut]
            if kind == "write":
                content = _apply(content, (kind, where, data[: rng.randint(0, len(data))]))
            return content, f"tear@{cut}"
        # subset: each pending write independently reached the disk or not (truncates keep order)
        for op in pending:
            if op[0] == "truncate" or rng.random() < 0.5:
                content = _apply(content, op)
        return content, mode
