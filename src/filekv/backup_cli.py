"""``filekv backup`` and ``filekv restore``: a store to a tar archive and back.

``backup OUT.tar`` downloads ``GET /admin/backup`` from a running server (``--url``, with the token
``filekv login`` stored for it, an admin's), or with ``--data-dir D`` takes the backup straight
from a data directory no server is using (refused otherwise, as ``filekv compact`` is). The
archive is written beside ``OUT.tar`` as ``OUT.tar.partial`` and renamed once whole, so a cut-off
backup never lies under the real name; ``-`` writes it to stdout. An output it cannot write (a
missing folder, a folder) is refused before anything starts, exit 2 (``check_output_path``).

``restore IN.tar --data-dir D`` (``-``: stdin) is ``filekv.restore.restore``: it refuses a
directory in use, and one that is not empty unless ``--force``; checks every member before
writing it, the manifest's SHA-256 and users.json's, every record's checksum, and the revision
and key count the manifest gives; and changes nothing in ``D`` unless all of it checks out.
Both show a progress bar (bytes, speed, ETA) on stderr when stderr is a terminal, then a summary
line on stderr (``--json``: as JSON on stdout, or on stderr when the archive goes to stdout).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Annotated, Any, Final

import orjson
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from filekv.client_cli import EXIT_CODES_HELP, JsonOption, UrlOption, connect, fail

if TYPE_CHECKING:
    # Imported where an archive is made or read: building its pydantic model cost every
    # ``filekv`` command, ``get`` included, about 0.1 s of start-up.
    from filekv.backup_archive import Manifest

STDIO: Final = "-"
PARTIAL_SUFFIX: Final = ".partial"
EXIT_FAILED: Final = 1


def _progress(console: Console, verb: str) -> Progress:
    return Progress(
        TextColumn(verb),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not console.is_terminal,
        transient=True,
    )


@contextlib.contextmanager
def _output(out: Path) -> Iterator[IO[bytes]]:
    """``out`` to write, as ``out.partial`` renamed into place once written whole; or stdout."""
    if str(out) == STDIO:
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    partial = out.with_name(out.name + PARTIAL_SUFFIX)
    try:
        with partial.open("wb") as file:
            os.chmod(partial, 0o600)  # the archive holds every value and the password hashes
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(partial, out)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


class _ManifestTap:
    """Keeps the first bytes of an archive going by, enough to read its manifest afterwards."""

    def __init__(self, sink: IO[bytes]) -> None:
        from filekv.backup_archive import BLOCK, MAX_MANIFEST_BYTES

        self.sink = sink
        self.head = bytearray()
        self.keep = BLOCK + MAX_MANIFEST_BYTES

    def write(self, data: bytes) -> int:
        if len(self.head) < self.keep:
            self.head += data[: self.keep - len(self.head)]
        return self.sink.write(data)


def _summary(verb: str, figures: dict[str, Any], as_json: bool, *, stdout: bool = True) -> None:
    """The summary line on stderr; ``as_json``: as JSON on stdout, on stderr if not ``stdout``
    (the archive went there)."""
    if as_json:
        (sys.stdout if stdout else sys.stderr).write(orjson.dumps(figures).decode() + "\n")
        return
    sys.stderr.write(
        f"{verb} revision {figures['revision']}: {figures['keys']:,} keys, "
        f"{figures['bytes']:,} bytes in {figures['seconds']:.1f} s -> {figures['to']}\n"
    )


def backup(
    out: Annotated[
        Path, typer.Argument(help="The archive to write (a .tar file), or - for stdout.")
    ],
    url: UrlOption = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir",
            help="Back up this data directory directly, offline (no server may be using it); "
            "--url is then ignored.",
            show_default=False,
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Write a backup of the store as one tar archive, while it serves (over HTTP, as an admin)
    or offline (--data-dir). Restore it with `filekv restore`."""
    from filekv.transfer_cli import check_output_path

    if str(out) != STDIO:
        check_output_path(out, example="filekv.tar")  # exit 2 before anything is asked
    console = Console(stderr=True)
    started = time.monotonic()
    if data_dir is not None:
        manifest, written = _backup_offline(data_dir, out, console)
    else:
        manifest, written = _backup_over_http(url, out, console)
    figures = {
        "revision": manifest.revision,
        "keys": manifest.keys,
        "bytes": written,
        "files": len(manifest.files),
        "seconds": round(time.monotonic() - started, 3),
        "to": str(out),
    }
    _summary("backup of", figures, as_json, stdout=str(out) != STDIO)


def _backup_over_http(url: str | None, out: Path, console: Console) -> tuple[Manifest, int]:
    from filekv.backup_archive import ArchiveError, read_manifest
    from filekv.transfer_cli import write_failed

    try:
        with _output(out) as sink, _progress(console, "backup") as bar, connect(url) as kv:
            task = bar.add_task("backup", total=None)
            tap = _ManifestTap(sink)
            done = kv.backup(
                tap,  # type: ignore[arg-type]  # a file-like: only write is used
                on_start=lambda total: bar.update(task, total=total),
                progress=lambda size: bar.advance(task, size),
            )
    except OSError as error:  # writing the archive (a full disk, say); _output removed .partial
        if str(out) == STDIO:
            write_failed("the archive to stdout", error, None)
        write_failed(f"{out}{PARTIAL_SUFFIX}", error, str(out))
    try:
        return read_manifest(bytes(tap.head), "the downloaded archive"), done["bytes"]
    except ArchiveError as error:
        fail(str(error), EXIT_FAILED)


def _backup_offline(data_dir: Path, out: Path, console: Console) -> tuple[Manifest, int]:
    from filekv.backup_archive import archive_size, iter_archive, stage_backup
    from filekv.engine import Store, StoreError, StoreLocked
    from filekv.engine.backup import remove_stale_staging
    from filekv.settings import load_settings  # not at the top: a backup over HTTP needs none

    if not data_dir.is_dir():
        fail(f"no data directory at {data_dir.resolve()}", EXIT_FAILED)
    options = load_settings(data_dir=data_dir).store_options(auto_compact=False)
    try:
        with Store.open(data_dir, options) as store:
            remove_stale_staging(data_dir)  # we hold the directory: no backup is running
            staging, manifest = stage_backup(store)
            try:
                total = archive_size(manifest)
                with _output(out) as sink, _progress(console, "backup") as bar:
                    task = bar.add_task("backup", total=total)
                    for chunk in iter_archive(staging, manifest):
                        sink.write(chunk)
                        bar.advance(task, len(chunk))
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    except StoreLocked:
        fail(f"data directory {data_dir.resolve()} is in use (is a server running?)", EXIT_FAILED)
    except (StoreError, OSError) as error:
        fail(f"backup failed: {error}", EXIT_FAILED)
    return manifest, total


def restore(
    archive: Annotated[
        Path, typer.Argument(help="The backup archive (from `filekv backup`), or - for stdin.")
    ],
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir",
            help="The data directory to restore into: created if missing; must be empty "
            "unless --force, and not in use (env FILEKV_DATA_DIR; default data).",
            show_default=False,
        ),
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force", help="Replace the store already in --data-dir (its users file too)."
        ),
    ] = False,
    max_bytes: Annotated[
        int | None,
        typer.Option(
            "--max-bytes",
            min=0,
            help="Refuse an archive holding more than this many bytes (always refused: more "
            "than the free space).",
            show_default=False,
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Restore a backup archive into a data directory no server is using; every checksum in it
    is verified before anything in the directory changes."""
    from filekv.backup_archive import ArchiveError
    from filekv.engine import StoreError
    from filekv.restore import RestoreRefused
    from filekv.restore import restore as restore_archive
    from filekv.settings import load_settings

    target = load_settings(data_dir=data_dir).data_dir
    console = Console(stderr=True)
    with contextlib.ExitStack() as stack:
        if str(archive) == STDIO:
            source: IO[bytes] = sys.stdin.buffer
        else:
            try:
                source = stack.enter_context(archive.open("rb"))
            except OSError as error:
                fail(f"cannot read {archive}: {error.strerror or error}", 2)
        bar = stack.enter_context(_progress(console, "restore"))
        task = bar.add_task("restore", total=None)
        try:
            result = restore_archive(
                source,
                str(archive),
                target,
                force=force,
                max_bytes=max_bytes,
                progress=lambda size: bar.advance(task, size),
                on_manifest=lambda manifest: bar.update(task, total=manifest.data_bytes),
            )
        except (RestoreRefused, ArchiveError) as error:
            fail(str(error), EXIT_FAILED)
        except (StoreError, OSError) as error:
            fail(f"restore failed: {error}", EXIT_FAILED)
    figures = {
        "revision": result.revision,
        "keys": result.keys,
        "bytes": result.bytes,
        "files": result.files,
        "seconds": round(result.seconds, 3),
        "to": str(target),
    }
    _summary("restored", figures, as_json)


def register_backup_verbs(app: typer.Typer) -> None:
    """Add ``backup`` and ``restore`` to the ``filekv`` command."""
    app.command(epilog=EXIT_CODES_HELP)(backup)
    app.command()(restore)
