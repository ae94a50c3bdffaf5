"""The backup archive: a plain tar of a store's files, written as a stream and read back warily.

Layout (POSIX tar, GNU headers, every member a regular file at the top level, mode 0600)::

    filekv-backup.json      the manifest: format, revision, keys, created, files [{name, bytes,
                            sha256 (users.json only)}], manifest_sha256
    0000000001.seg          the segments, oldest first, each followed by its hint if it has one
    0000000001.hint
    ...
    0000000007.seg          the newest segment: empty (its header only), the one a restore
                            appends to next
    users.json              the users file, when the store had one (names, hashes, roles)

The manifest comes first and lists every member with its size, so a reader knows what is coming
(and refuses too much of it) before it writes a byte, and knows the archive's exact length
(``archive_size``: the HTTP answer's Content-Length). An archive is extracted by plain ``tar xf``
into a directory that ``filekv serve`` opens; ``read_archive`` is the careful reader used by
``filekv restore``: it parses tar headers itself, one block at a time, and accepts only the
member names above (no path, so nothing can land outside the destination), only regular files
(no links, devices or long-name extensions), only members the manifest lists with the size it
gives, at most ``MAX_MEMBERS`` of them and ``max_bytes`` in all, each limit checked before the
member's data is read. Every error names the archive and the offset in it.

Checksums (format 2): segments and hints carry their own (a CRC-32 per record, per segment
header, per hint file), which ``restore`` verifies; the two members that carry none get a SHA-256
in the manifest. ``users.json``'s is its ``files`` entry's ``sha256``, checked as it is extracted.
The manifest's own is ``manifest_sha256``: the SHA-256 of the manifest's bytes as written with
that field's 64 hex digits replaced by 64 zeros, checked before anything else in it is used.
Format 1 archives (from before these checksums) are still read: whatever has a checksum is
verified, and a format 2 manifest without ``manifest_sha256`` or ``users.json``'s ``sha256`` is
refused, so a damaged format 2 archive cannot pass for a format 1 one (no single bit flip turns
the ``2`` into a ``1``). Checksums catch damage, not forgery: whoever can rewrite an archive can
rewrite its checksums too.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import shutil
import tarfile
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from filekv.service.users import USERS_FILE

if TYPE_CHECKING:  # the engine is imported by what stages a backup, not by every CLI call
    from filekv.engine import Store

MANIFEST_NAME: Final = "filekv-backup.json"
USERS_NAME: Final = USERS_FILE
ARCHIVE_FORMAT: Final = 2  # 1: no SHA-256 of users.json nor of the manifest (still read)
BLOCK: Final = tarfile.BLOCKSIZE  # 512
RECORD: Final = tarfile.RECORDSIZE  # 20 blocks: the archive is padded to a whole record
CHUNK: Final = 1 << 20  # bytes read or written at a time
MAX_MEMBERS: Final = 100_000  # 6 TiB of 64 MiB segments with their hints
MAX_MANIFEST_BYTES: Final = 16 << 20
# A store's own files and the users file: no directory part, nothing else.
MEMBER_NAME: Final = re.compile(r"(?:[0-9]{10}\.(?:seg|hint)|users\.json)")
_SEGMENT_NAME: Final = re.compile(r"[0-9]{10}\.seg")
SHA256_PATTERN: Final = r"^[0-9a-f]{64}$"
# manifest_sha256 as written (the last one, as _sealed_digest finds it).
_CLAIMED_DIGEST: Final = re.compile(rb'"manifest_sha256"\s*:\s*"([0-9a-f]{64})"')
# What manifest_sha256 stands for while the digest is computed: as long as a digest, so the
# manifest's length (and the archive's, announced before it is written) does not change.
_BLANK_DIGEST: Final = "0" * 64
# The members without a checksum of their own, whose SHA-256 a format 2 manifest must give.
_NEEDS_DIGEST: Final = frozenset({USERS_NAME})

Progress = Callable[[int], None]  # told the bytes done since the last call


class ArchiveError(ValueError):
    """The archive is damaged, incomplete, too large or not a filekv backup; says where."""


class ArchiveFile(BaseModel):
    """One member the manifest announces."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=MEMBER_NAME.pattern)
    bytes: int = Field(ge=0)
    sha256: str | None = Field(default=None, pattern=SHA256_PATTERN)  # hex, of the member


class Manifest(BaseModel):
    """The archive's first member: what it holds, as of which revision."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal[1, 2] = ARCHIVE_FORMAT
    revision: int = Field(ge=0)
    keys: int = Field(ge=0)
    created: str
    files: list[ArchiveFile] = Field(max_length=MAX_MEMBERS)
    # Last, so that a reader finds it as the last occurrence of its value (``_sealed_digest``).
    manifest_sha256: str | None = Field(default=None, pattern=SHA256_PATTERN)

    @property
    def data_bytes(self) -> int:
        return sum(f.bytes for f in self.files)

    def encode(self) -> bytes:
        # exclude_none: no "sha256": null for the members that have checksums of their own
        return self.model_dump_json(indent=1, exclude_none=True).encode() + b"\n"

    def sealed(self) -> Manifest:
        """This manifest with its ``manifest_sha256`` set (see the module's "Checksums")."""
        blank = self.model_copy(update={"manifest_sha256": _BLANK_DIGEST})
        digest = hashlib.sha256(blank.encode()).hexdigest()
        return self.model_copy(update={"manifest_sha256": digest})


def _sealed_digest(data: bytes, claimed: str) -> str:
    """The SHA-256 of the manifest ``data`` with its ``manifest_sha256`` value, ``claimed``,
    blanked: equal to ``claimed`` if and only if the bytes are those that were sealed."""
    quoted = f'"{claimed}"'.encode()
    at = data.rfind(quoted)
    if at < 0:  # written some other way (a JSON escape): not the bytes that were sealed
        return ""
    blank = data[: at + 1] + _BLANK_DIGEST.encode() + data[at + 1 + len(claimed) :]
    return hashlib.sha256(blank).hexdigest()


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def build_manifest(directory: Path, *, revision: int, keys: int) -> Manifest:
    """The sealed manifest of the backup in ``directory``: segments in id order, each with its
    hint, then the users file, with its SHA-256 (a small file, read once more here)."""
    names = [n for n in os.listdir(directory) if MEMBER_NAME.fullmatch(n)]
    # Each segment, then its hint; the users file last.
    ordered = sorted(names, key=lambda n: (n == USERS_NAME, n.partition(".")[0], n.endswith("t")))
    return Manifest(
        revision=revision,
        keys=keys,
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        files=[
            ArchiveFile(
                name=n,
                bytes=os.path.getsize(directory / n),
                sha256=_sha256_of(directory / n) if n in _NEEDS_DIGEST else None,
            )
            for n in ordered
        ],
    ).sealed()


def stage_backup(store: Store, *, verify_in_child: bool = False) -> tuple[Path, Manifest]:
    """Take ``store``'s backup into a new staging folder inside its directory (hard links: no
    copy, no space), with a link to the users file; the folder and the archive's manifest.
    ``verify_in_child``: see ``Store.backup`` (a server's choice).
    The caller removes the folder (``shutil.rmtree``) once the archive is written."""
    from filekv.engine.backup import new_staging_dir

    staging = new_staging_dir(store.path)
    try:
        result = store.backup(staging, verify_in_child=verify_in_child)
        # users.json is replaced whole (rename), never written in place: a link is one version.
        with contextlib.suppress(FileNotFoundError):  # no users yet
            os.link(store.path / USERS_NAME, staging / USERS_NAME)
        manifest = build_manifest(staging, revision=result["revision"], keys=result["keys"])
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return staging, manifest


def _padded(size: int) -> int:
    return -(-size // BLOCK) * BLOCK


def archive_size(manifest: Manifest) -> int:
    """The exact length in bytes of the archive ``iter_archive`` writes for ``manifest``."""
    total = BLOCK + _padded(len(manifest.encode()))
    total += sum(BLOCK + _padded(f.bytes) for f in manifest.files)
    total += 2 * BLOCK  # the end-of-archive marker
    return -(-total // RECORD) * RECORD


def _header(name: str, size: int, mtime: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o600
    info.mtime = mtime
    info.type = tarfile.REGTYPE
    header = info.tobuf(tarfile.GNU_FORMAT, "utf-8", "strict")
    assert len(header) == BLOCK  # short names only: no long-name extension block
    return header


def iter_archive(directory: Path, manifest: Manifest) -> Generator[bytes, None, None]:
    """The archive of the files in ``directory`` that ``manifest`` lists, in chunks of at most
    ``CHUNK`` bytes; each file is read as it is reached (blocking I/O: off any event loop)."""
    mtime = int(time.time())
    data = manifest.encode()
    yield _header(MANIFEST_NAME, len(data), mtime) + data + bytes(_padded(len(data)) - len(data))
    written = BLOCK + _padded(len(data))
    for member in manifest.files:
        yield _header(member.name, member.bytes, mtime)
        fd = os.open(directory / member.name, os.O_RDONLY)
        try:
            offset = 0
            while offset < member.bytes:
                chunk = os.pread(fd, min(CHUNK, member.bytes - offset), offset)
                if not chunk:
                    raise OSError(f"{member.name} is shorter than the manifest says")
                offset += len(chunk)
                yield chunk
        finally:
            os.close(fd)
        padding = _padded(member.bytes) - member.bytes
        if padding:
            yield bytes(padding)
        written += BLOCK + _padded(member.bytes)
    end = written + 2 * BLOCK
    yield bytes(-(-end // RECORD) * RECORD - written)


# -- reading ---------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Reader:
    """Reads exact counts of bytes from ``source``, keeping the offset for error messages."""

    source: IO[bytes]
    name: str
    offset: int = 0

    def read(self, size: int, what: str) -> bytes:
        parts: list[bytes] = []
        left = size
        while left:
            chunk = self.source.read(min(left, CHUNK))
            if not chunk:
                raise ArchiveError(
                    f"{self.name}: ends at offset {self.offset + size - left}, inside {what}"
                )
            parts.append(chunk)
            left -= len(chunk)
        self.offset += size
        return b"".join(parts) if len(parts) != 1 else parts[0]

    def fail(self, at: int, message: str) -> ArchiveError:
        return ArchiveError(f"{self.name}: {message} (offset {at})")


@dataclass(frozen=True, slots=True)
class Extracted:
    """What ``read_archive`` wrote: the manifest, and where each member's data starts in the
    archive (for naming the archive offset of damage found later)."""

    manifest: Manifest
    data_offsets: dict[str, int]


def _next_header(reader: _Reader) -> tarfile.TarInfo | None:
    """The next member's header, or None at the end-of-archive marker."""
    at = reader.offset
    block = reader.read(BLOCK, "a tar header")
    if block == bytes(BLOCK):
        return None
    try:
        info = tarfile.TarInfo.frombuf(block, "utf-8", "strict")
    except (tarfile.HeaderError, UnicodeDecodeError) as error:
        raise reader.fail(at, f"damaged tar header ({error})") from None
    if info.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):
        raise reader.fail(at, f"member {info.name!r} is not a regular file (refused)")
    return info


def read_archive(
    source: IO[bytes],
    source_name: str,
    destination: Path,
    *,
    max_bytes: int,
    progress: Progress | None = None,
    on_manifest: Callable[[Manifest], None] | None = None,
) -> Extracted:
    """Extract the filekv backup read from ``source`` into the empty folder ``destination``.

    ArchiveError, before anything past the offending header is read or written, for: a damaged
    or truncated archive, a first member that is not a manifest, a member the manifest does not
    list (any other name, a duplicate, another size), a member that is not a regular file, more
    than ``MAX_MEMBERS`` members or more than ``max_bytes`` of data in all, a member missing at
    the end, a manifest that does not match its SHA-256; and once a member's bytes are written
    into ``destination``, for a member that does not match the SHA-256 the manifest gives it.
    Record checksums are not checked here: ``restore`` does that on the extracted files.
    """
    reader = _Reader(source, source_name)
    manifest = _read_manifest(reader)
    if manifest.data_bytes > max_bytes:
        raise ArchiveError(
            f"{source_name}: the backup holds {manifest.data_bytes:,} bytes, over the limit of "
            f"{max_bytes:,} (--max-bytes, or the free space at the destination)"
        )
    if on_manifest is not None:
        on_manifest(manifest)
    expected = {f.name: f.bytes for f in manifest.files}
    digests = {f.name: f.sha256 for f in manifest.files if f.sha256 is not None}
    offsets: dict[str, int] = {}
    while True:
        at = reader.offset
        info = _next_header(reader)
        if info is None:
            break
        size = expected.get(info.name)
        if size is None:
            why = "a second copy of" if info.name in offsets else "not in the manifest:"
            raise reader.fail(at, f"member {why} {info.name!r} (refused)")
        if info.size != size:
            raise reader.fail(
                at, f"member {info.name!r} holds {info.size} bytes, the manifest says {size}"
            )
        data_at = reader.offset
        offsets[info.name] = data_at
        del expected[info.name]
        digest = _extract(reader, destination / info.name, size, progress, info.name in digests)
        if digest is not None and digest != digests[info.name]:
            raise reader.fail(
                data_at,
                f"member {info.name} is damaged: its SHA-256 is not the one the manifest gives",
            )
    if expected:
        missing = ", ".join(sorted(expected)[:5])
        raise ArchiveError(
            f"{source_name}: ends at offset {reader.offset} without {len(expected)} member(s) "
            f"the manifest lists ({missing})"
        )
    return Extracted(manifest, offsets)


def read_manifest(head: bytes, source_name: str) -> Manifest:
    """The manifest at the start of an archive, from its first bytes."""
    return _read_manifest(_Reader(io.BytesIO(head), source_name))


def _read_manifest(reader: _Reader) -> Manifest:
    at = reader.offset
    block = reader.read(BLOCK, "the first tar header")
    if block[:2] == b"\x1f\x8b":
        raise reader.fail(0, "compressed (gzip); decompress it first, e.g. gunzip -c X | ... -")
    if block == bytes(BLOCK):
        raise reader.fail(0, "an empty archive, not a filekv backup")
    try:
        info = tarfile.TarInfo.frombuf(block, "utf-8", "strict")
    except (tarfile.HeaderError, UnicodeDecodeError) as error:
        raise reader.fail(at, f"not a tar archive, or a damaged one ({error})") from None
    if info.name != MANIFEST_NAME or info.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):
        raise reader.fail(at, f"not a filekv backup: its first member is {info.name!r}")
    if info.size > MAX_MANIFEST_BYTES:
        raise reader.fail(at, f"manifest of {info.size:,} bytes, over {MAX_MANIFEST_BYTES:,}")
    data_at = reader.offset
    data = reader.read(info.size, "the manifest")
    reader.read(_padded(info.size) - info.size, "the manifest")
    # The digest first, before any field is read: a flip anywhere else says what it is, not
    # which field it happened to break.
    claimed = [digest.decode() for digest in _CLAIMED_DIGEST.findall(data)]
    if claimed and _sealed_digest(data, claimed[-1]) != claimed[-1]:
        raise reader.fail(data_at, "damaged manifest: it does not match its manifest_sha256")
    try:
        manifest = Manifest.model_validate_json(data)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise reader.fail(data_at, f"damaged manifest: {where}: {first['msg']}") from None
    if manifest.manifest_sha256 is not None:
        if _sealed_digest(data, manifest.manifest_sha256) != manifest.manifest_sha256:
            raise reader.fail(data_at, "damaged manifest: it does not match its manifest_sha256")
    elif manifest.format >= 2:
        raise reader.fail(data_at, "damaged manifest: format 2 without its manifest_sha256")
    names = [f.name for f in manifest.files]
    if len(set(names)) != len(names):
        raise reader.fail(data_at, "damaged manifest: a file is listed twice")
    if manifest.format >= 2:
        unchecked = [f.name for f in manifest.files if f.name in _NEEDS_DIGEST and not f.sha256]
        if unchecked:
            raise reader.fail(
                data_at, f"damaged manifest: {unchecked[0]} listed without its sha256"
            )
    if not any(_SEGMENT_NAME.fullmatch(n) for n in names):
        raise reader.fail(data_at, "damaged manifest: no segment listed")
    return manifest


def _extract(
    reader: _Reader, path: Path, size: int, progress: Progress | None, hashed: bool
) -> str | None:
    """Write the member's ``size`` bytes to ``path``; with ``hashed``, their SHA-256 (hex)."""
    digest = hashlib.sha256() if hashed else None
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        left = size
        while left:
            chunk = reader.read(min(CHUNK, left), f"member {path.name}")
            if digest is not None:
                digest.update(chunk)
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view) :]
            left -= len(chunk)
            if progress is not None:
                progress(len(chunk))
        os.fsync(fd)
    finally:
        os.close(fd)
    reader.read(_padded(size) - size, f"the padding of member {path.name}")
    return None if digest is None else digest.hexdigest()
