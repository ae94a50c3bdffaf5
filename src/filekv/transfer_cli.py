"""``filekv export`` and ``filekv import``: moving keys out of and into a store as JSON Lines.

The format is ``GET /export``'s: one ``{"key": K, "value": V, "revision": R}`` object per line,
sorted by key (``revision`` is what the source store had; an import writes new revisions and
ignores it). ``export`` streams the server's snapshot to a file (written beside it as
``FILE.partial`` and renamed once complete, so a cut-off export never leaves a short file
under the real name) or to stdout. ``import`` reads a file or stdin line by line and writes
batches of ``--batch-size`` keys: through ``POST /batch`` (``--url``), or straight into a data
directory no server is using (``--data-dir``, as ``filekv compact`` does). ``--dry-run`` only
validates and counts.

A bad line stops the import with its line number; the batches written before it stay (each is
atomic), the lines of the batch it was in are not written, and the summary says how many keys
were; so does a Ctrl-C, which stops the import between batches (exit 130). Both verbs show a
progress bar (keys, keys/s, ETA) on stderr when stderr is a terminal, and none otherwise; the
summary line goes to stderr too (``--json``: as JSON on stdout, or on stderr when the export
itself goes to stdout). An ``-o`` that cannot be written is refused, exit 2, before the server
is asked; a write that fails on the way is one line, exit 1, and leaves no ``FILE.partial``.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shlex
import signal
import stat
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Annotated, Any, Final, NoReturn

import httpx
import orjson
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from filekv.client import Client, FilekvError, Unavailable
from filekv.client_cli import (
    EXIT_CODES_HELP,
    MAX_BATCH_OPS,
    JsonOption,
    UrlOption,
    connect,
    emit_json,
    exit_code,
    fail,
    no_answer_reason,
)

BATCH_KEYS: Final = MAX_BATCH_OPS  # POST /batch takes at most 1000 operations ...
BATCH_BYTES: Final = 12 << 20  # ... in a body of at most 16 MiB: keep a margin for the framing
LINE_FIELDS: Final = frozenset({"key", "value", "revision", "expires_at"})
# A longer line could not go in one POST /batch anyway (16 MiB bodies); it is refused unread.
MAX_LINE_BYTES: Final = BATCH_BYTES
EXIT_BAD_INPUT: Final = 2
PIPELINE_DEPTH: Final = 2  # batches read ahead of the one being sent
# The server's longest ttl (engine/expiry.py MAX_TTL), not imported: this module loads no engine
# (importing engine.expiry loads the filekv.engine package, which no client verb may).
MAX_TTL: Final = 10 * 365 * 24 * 3600.0
# The client's Unavailable caused by one of these: the request never left, nothing was written.
NOT_SENT: Final = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


class Refused(Exception):
    """A batch the server or the store would not write; ``code`` is the exit status."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class BadLine(Exception):
    """A line of the input that is not one ``{"key", "value", "revision"?}`` object."""

    def __init__(self, number: int, reason: str) -> None:
        super().__init__(f"line {number}: {reason}")
        self.number = number


# -- reading the input ---------------------------------------------------------------------------


def parse_line(number: int, line: bytes) -> tuple[str, str, float | None]:
    """The key, value and expiry (Unix seconds, or None) of one JSON line; BadLine naming
    ``number`` if it is not one."""
    try:
        item = orjson.loads(line)
    except orjson.JSONDecodeError as error:
        raise BadLine(number, f"not JSON ({error})") from None
    if not isinstance(item, dict):
        raise BadLine(number, 'expected an object {"key": K, "value": V, "revision": R?}')
    key = item.get("key")
    value = item.get("value")
    if not isinstance(key, str) or not key:
        raise BadLine(number, '"key" must be a non-empty string')
    if not isinstance(value, str):
        raise BadLine(number, '"value" must be a string')
    extra = item.keys() - LINE_FIELDS
    if extra:
        raise BadLine(number, f"unknown field {sorted(extra)[0]!r}")
    revision = item.get("revision")
    if revision is not None and (type(revision) is not int or revision < 0):
        raise BadLine(number, '"revision" must be a whole number >= 0')
    expires_at = item.get("expires_at")
    if expires_at is not None and (
        type(expires_at) not in (int, float)
        or not 0 < expires_at <= time.time() + MAX_TTL  # NaN fails both
    ):
        raise BadLine(number, '"expires_at" must be a Unix time at most ten years from now')
    return key, value, None if expires_at is None else float(expires_at)


@dataclass
class Batch:
    """Keys and values read for the next write, and the lines they came from (an expired line's
    among them: a batch may hold only such lines, and no key to write)."""

    first_line: int = 0
    last_line: int = 0
    keys: list[str] = field(default_factory=list)
    values: list[str] = field(default_factory=list)
    expiries: list[float | None] = field(default_factory=list)  # Unix seconds, None: never
    size: int = 0
    expired: int = 0  # lines left out: their key had expired by the time they were read

    def operations(self) -> Iterator[tuple[str, str, float | None]]:
        """(key, value, ttl in seconds or None), the ttl counted from the moment this is first
        iterated: a write does so just before it sends the batch (which may have waited behind
        another since its lines were read), so the key expires when ``expires_at`` says, give
        or take the clocks' difference and the request's flight. At least 1 ms, so a key that
        expires while its batch is on the way is written and gone at once."""
        now = time.time()
        for key, value, expires_at in zip(self.keys, self.values, self.expiries, strict=True):
            yield key, value, None if expires_at is None else max(expires_at - now, 0.001)


def read_batches(lines: IO[bytes], batch_keys: int) -> Iterator[Batch]:
    """Batches of at most ``batch_keys`` keys (and ``BATCH_BYTES``), in input order; blank lines
    skipped. A bad line raises BadLine after the batches before its own were yielded."""
    batch = Batch()
    number = 0
    while line := lines.readline(MAX_LINE_BYTES + 1):
        number += 1
        if len(line) > MAX_LINE_BYTES:  # read no further: memory stays bounded per line
            raise BadLine(number, f"longer than {MAX_LINE_BYTES:,} bytes")
        if not line.strip():
            continue
        key, value, expires_at = parse_line(number, line)
        if expires_at is not None and expires_at <= time.time():
            # Gone already, as an export taken now would leave it out: counted, not written.
            if not batch.last_line:
                batch.first_line = number
            batch.last_line = number
            batch.expired += 1
            continue
        size = len(line) + 16  # as a batch operation: the line's JSON, give or take a field name
        if batch.keys and (len(batch.keys) >= batch_keys or batch.size + size > BATCH_BYTES):
            yield batch
            batch = Batch()
        if not batch.last_line:
            batch.first_line = number
        batch.last_line = number
        batch.keys.append(key)
        batch.values.append(value)
        batch.expiries.append(expires_at)
        batch.size += size
    if batch.last_line:  # its keys, or only expired lines: counted all the same
        yield batch


def count_lines(path: Path) -> int | None:
    """Lines in a regular file (for the progress bar's total and ETA); None for anything else."""
    if not path.is_file():
        return None
    count = 0
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            count += block.count(b"\n")
    return count


# -- progress ------------------------------------------------------------------------------------


class KeysPerSecond(ProgressColumn):
    """The task's speed as keys/s."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("-- keys/s" if speed is None else f"{speed:,.0f} keys/s")


@contextlib.contextmanager
def progress_bar(description: str, total: int | None, *, shown: bool = True) -> Iterator[Any]:
    """A function ``advance(keys)``: a rich progress bar on stderr if it is a terminal (and
    ``shown``), else nothing at all (no escape codes in a log or a pipe)."""
    console = Console(stderr=True)
    if not shown or not console.is_terminal:
        yield lambda _keys: None
        return
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("keys"),
        KeysPerSecond(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    ) as progress:
        task = progress.add_task(description, total=total)
        yield lambda keys: progress.advance(task, keys)


def _expired_left_out(count: int) -> str:
    if not count:
        return ""
    return f"; {count:,} expired {'key' if count == 1 else 'keys'} left out"


def _rate(keys: int, seconds: float) -> str:
    return f"{keys / seconds:,.0f} keys/s" if seconds > 0 else "-- keys/s"


def _note(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


# -- output files --------------------------------------------------------------------------------

EXIT_WRITE_FAILED: Final = 1  # the output could not be written (a full disk, say), as `backup`


def check_output_path(path: Path, stdout: str = "- for stdout", example: str = "out") -> None:
    """Refuse, with exit 2 and before any server is asked, an output file that cannot be made:
    its folder missing, not a folder or not writable (the file is written there as
    ``path.partial``, then renamed), or the path a folder or something else than a file.
    ``stdout`` says how to write to stdout instead, ``example`` is a file name to suggest."""
    folder = path.parent
    try:
        mode: int | None = path.stat().st_mode
    except FileNotFoundError:
        mode = None
    except OSError as error:
        fail(f"cannot write {path}: {error.strerror or error}; choose another path", EXIT_BAD_INPUT)
    if mode is not None and stat.S_ISDIR(mode):
        fail(f"{path} is a directory: give a file name, such as {path / example}", EXIT_BAD_INPUT)
    if mode is not None and not stat.S_ISREG(mode):
        fail(f"{path} is not a regular file: give a file name, or {stdout}", EXIT_BAD_INPUT)
    if not folder.is_dir():
        what = "is not a directory" if folder.exists() else "does not exist"
        fail(f"cannot write {path}: {folder} {what}; create it first", EXIT_BAD_INPUT)
    if not os.access(folder, os.W_OK | os.X_OK):
        fail(
            f"cannot write {path}: no permission to create files in {folder}; choose another "
            "directory",
            EXIT_BAD_INPUT,
        )


def write_failed(target: str, error: OSError, kept: str | None) -> NoReturn:
    """One line for an output that could not be written (``kept``: the file left as it was)."""
    left = "" if kept is None else f"; {kept} is untouched, the partial file removed"
    fail(f"cannot write {target}: {error.strerror or error}{left}", EXIT_WRITE_FAILED)


# -- export --------------------------------------------------------------------------------------


def export(
    prefix: Annotated[str, typer.Option("--prefix", help="Only keys starting with this.")] = "",
    output: Annotated[
        Path | None,
        typer.Option(
            "-o", "--output", help="Write to this file (default: stdout).", show_default=False
        ),
    ] = None,
    url: UrlOption = None,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Print the summary as one line of JSON: on stdout, or on stderr when the "
            "export itself goes to stdout.",
        ),
    ] = False,
) -> None:
    """Write every key (starting with PREFIX) as JSON Lines, sorted, all as of one revision."""
    if output is not None:
        check_output_path(output, stdout="leave out -o for stdout", example="export.jsonl")
    started = time.monotonic()
    partial = None if output is None else output.with_name(output.name + ".partial")
    try:
        with connect(url) as kv, kv.export(prefix) as stream:
            try:
                handle = sys.stdout.buffer if partial is None else partial.open("wb")
                try:
                    # Lines going to the terminal itself would be mixed with the bar: no bar then.
                    shown = partial is not None or not sys.stdout.isatty()
                    with progress_bar("export", stream.keys, shown=shown) as advance:
                        for data, count in stream.chunks():
                            handle.write(data)
                            advance(count)
                    handle.flush()
                finally:
                    if handle is not sys.stdout.buffer:
                        handle.close()
                if partial is not None and output is not None:
                    os.replace(partial, output)
            except OSError as error:
                if partial is None:
                    if isinstance(error, BrokenPipeError):
                        raise  # stdout's reader went away (`| head`): the quiet exit 1 as before
                    write_failed("to stdout", error, None)
                write_failed(str(partial), error, str(output))
    finally:
        if partial is not None:
            partial.unlink(missing_ok=True)
    seconds = time.monotonic() - started
    if as_json:
        figures = {
            "keys": stream.received,
            "revision": stream.revision,
            "prefix": prefix,
            "seconds": round(seconds, 3),
            "to": "-" if output is None else str(output),
        }
        if output is None:
            _note(json.dumps(figures, ensure_ascii=False))  # stdout holds the export
        else:
            emit_json(figures)
        return
    _note(
        f"exported {stream.received:,} keys at revision {stream.revision} in {seconds:.1f} s "
        f"({_rate(stream.received, seconds)})"
    )


# -- import --------------------------------------------------------------------------------------

EXIT_INTERRUPTED: Final = 130  # 128 + SIGINT, as a shell reports a command Ctrl-C stopped


@dataclass
class ImportResult:
    written: int = 0  # keys written (or, with --dry-run, that would be)
    expired: int = 0  # keys left out because they had expired
    last_line: int = 0  # the last line of the last batch written
    revision: int | None = None


class Interrupted(Exception):
    """Ctrl-C stopped the import: no batch was sent after it. ``unknown`` is the batch being sent
    when a second Ctrl-C gave up waiting for its answer (it may or may not be written)."""

    def __init__(self, unknown: Batch | None = None) -> None:
        super().__init__("interrupted")
        self.unknown = unknown


@contextlib.contextmanager
def _ctrl_c_held() -> Iterator[None]:
    """A Ctrl-C (SIGINT) while the block runs raises KeyboardInterrupt only once it is done, so
    that a batch being written is written and counted whole. Only in the main thread (the one
    signals reach), and not where SIGINT is ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pressed: list[int] = []
    previous = signal.getsignal(signal.SIGINT)
    if previous is signal.SIG_IGN:
        yield
        return
    signal.signal(signal.SIGINT, lambda signum, _frame: pressed.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if pressed:
        raise KeyboardInterrupt


def _open_input(source: str) -> IO[bytes]:
    if source == "-":
        return sys.stdin.buffer
    try:
        return Path(source).open("rb")
    except OSError as error:
        fail(f"cannot read {source}: {error.strerror or error}", EXIT_BAD_INPUT)


def _import_batches(
    batches: Iterator[Batch], result: ImportResult, write: Any, advance: Any
) -> None:
    for batch in batches:
        with _ctrl_c_held():
            revision = write(batch) if batch.keys else None  # nothing but expired lines
            if revision is not None:
                result.revision = revision
            result.written += len(batch.keys)
            result.expired += batch.expired
            result.last_line = batch.last_line
        advance(len(batch.keys))


def _import_pipelined(
    batches: Iterator[Batch], result: ImportResult, write: Any, advance: Any
) -> None:
    """``_import_batches``, with each batch sent by a second thread while this one reads and
    checks the next: the CLI's work and the server's overlap (they took turns before, and the
    sum of the two was the import's time). At most ``PIPELINE_DEPTH`` batches wait; they go out
    in order. A bad line still stops the reading, after the batches before it are sent; a
    refused batch stops the sending, and nothing after it is sent. A Ctrl-C stops both: the
    batch being sent gets its answer (a second Ctrl-C stops waiting for it), none after it is
    sent, and ``Interrupted`` is raised."""
    waiting: queue.Queue[Batch | None] = queue.Queue(maxsize=PIPELINE_DEPTH)
    failures: list[BaseException] = []
    stop = threading.Event()  # Ctrl-C: send nothing more
    sending: list[Batch] = []  # the batch on its way, while it is

    def send() -> None:
        while (batch := waiting.get()) is not None:
            if failures or stop.is_set():
                continue  # drain: the reader may be blocked on a full queue
            sending.append(batch)
            try:
                _import_batches(iter([batch]), result, write, advance)
            except BaseException as error:
                failures.append(error)
            finally:
                sending.clear()

    sender = threading.Thread(target=send, name="filekv-import-sender", daemon=True)
    sender.start()
    stopped: BaseException | None = None  # what ended the reading early
    try:
        for batch in batches:
            if failures:
                break
            waiting.put(batch)
    except KeyboardInterrupt:
        stop.set()
    except BaseException as error:  # a bad line: the batches before it are still sent
        stopped = error
    ended = False
    while True:
        try:
            if not ended:
                waiting.put(None)
                ended = True
            sender.join()
            break
        except KeyboardInterrupt:
            if stop.is_set():  # the second Ctrl-C: stop waiting for the batch on its way
                raise Interrupted(_on_its_way(sending)) from None
            stop.set()
    if failures:  # a batch refused before the line that is bad, if any: it is what stopped
        raise failures[0]
    if stop.is_set():
        raise Interrupted
    if stopped is not None:
        raise stopped


def _on_its_way(sending: list[Batch]) -> Batch | None:
    """The batch the sender thread is sending, if any: one look at ``sending``, which that
    thread may empty at any moment (testing it, then indexing it, could fail in between)."""
    return next(iter(sending), None)


def _write_online(kv: Client) -> Any:
    def write(batch: Batch) -> int | None:
        ops = [
            {"op": "put", "key": key, "value": value}
            if ttl is None
            else {"op": "put", "key": key, "value": value, "ttl": ttl}
            for key, value, ttl in batch.operations()
        ]
        try:
            return kv.batch(ops)
        except Unavailable as error:  # no answer: the server never saw it, or maybe it did
            raise Refused(_unanswered(batch, kv.url, error), exit_code(error)) from None
        except FilekvError as error:
            status = "" if error.status is None else f" ({error.status})"
            raise Refused(_refused(batch, error.detail + status), exit_code(error)) from None

    return write


def import_(
    source: Annotated[
        str,
        typer.Argument(
            metavar="FILE|-",
            help='JSON Lines as `filekv export` writes them: {"key": K, "value": V, '
            '"revision": R, "expires_at": T} per line ("revision" is ignored; "expires_at", '
            'for a key with a TTL, keeps it: an expired one is left out); "-" reads stdin.',
        ),
    ],
    url: UrlOption = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir",
            help="Write straight into this data directory instead of a server (refused while "
            "a server uses it).",
            show_default=False,
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only validate every line and count the keys.")
    ] = False,
    batch_size: Annotated[
        int,
        typer.Option("--batch-size", min=1, max=BATCH_KEYS, help="Keys written per atomic batch."),
    ] = BATCH_KEYS,
    as_json: JsonOption = False,
) -> None:
    """Write every key of FILE (JSON Lines) in atomic batches; a bad line stops it, naming it."""
    # A URL from FILEKV_URL alone does not count: --data-dir is then what was asked for.
    if url is not None and data_dir is not None and url != os.environ.get("FILEKV_URL"):
        fail("give --url or --data-dir, not both", EXIT_BAD_INPUT)
    started = time.monotonic()
    result = ImportResult()
    handle = _open_input(source)
    failure: tuple[str, int] | None = None
    try:
        total = None if source == "-" else count_lines(Path(source))
        batches = read_batches(handle, batch_size)
        with progress_bar("import", total) as advance:
            if dry_run:
                _import_batches(batches, result, lambda _batch: None, advance)
            elif data_dir is not None:
                _import_offline(data_dir, batches, result, advance)
            else:
                with connect(url) as kv:
                    _import_pipelined(batches, result, _write_online(kv), advance)
    except BadLine as error:
        failure = (f"{'stdin' if source == '-' else source} {error}", EXIT_BAD_INPUT)
    except Refused as error:
        failure = (str(error), error.code)
    except KeyboardInterrupt:
        failure = (_interrupted(source, result, None, dry_run), EXIT_INTERRUPTED)
    except Interrupted as error:
        failure = (_interrupted(source, result, error.unknown, dry_run), EXIT_INTERRUPTED)
    finally:
        if handle is not sys.stdin.buffer:
            handle.close()
    seconds = time.monotonic() - started
    verb = "would write" if dry_run else "wrote"
    summary = (
        f"{verb} {result.written:,} keys"
        f"{f' (lines 1-{result.last_line:,})' if result.last_line else ''}"
        f"{'' if result.revision is None else f' up to revision {result.revision}'}"
        f" in {seconds:.1f} s ({_rate(result.written, seconds)})"
        f"{_expired_left_out(result.expired)}"
    )
    if as_json:
        emit_json(
            {
                "written": 0 if dry_run else result.written,
                "valid": result.written,
                "last_line": result.last_line,
                "expired": result.expired,
                "revision": result.revision,
                "seconds": round(seconds, 3),
                "error": None if failure is None else failure[0],
            }
        )
    if failure is not None:
        _note(f"filekv: {failure[0]}")
        _note(summary)
        raise typer.Exit(failure[1])
    if not as_json:
        _note(summary)


def _refused(batch: Batch, detail: str) -> str:
    return (
        f"the batch of lines {batch.first_line}-{batch.last_line} was refused, none of it "
        f"written: {detail}"
    )


def _unanswered(batch: Batch, url: str, error: Unavailable) -> str:
    """What a batch that got no answer did: never left (refused or unreachable: nothing written),
    or left and the connection was lost (written or not, nobody here knows)."""
    lines = f"lines {batch.first_line}-{batch.last_line}"
    reason = no_answer_reason(error)
    if isinstance(error.__cause__, NOT_SENT):
        return (
            f"the batch of {lines} could not be sent to {url} ({reason}), none of it written; "
            "is the server running there? (--url or FILEKV_URL)"
        )
    return (
        f"the batch of {lines} was sent to {url} but no answer came ({reason}), so it may or "
        f"may not be written; check the keys of those lines, or import again from line "
        f"{batch.first_line}"
    )


def _interrupted(source: str, result: ImportResult, unknown: Batch | None, dry_run: bool) -> str:
    done = result.last_line
    if dry_run:
        return f"interrupted (Ctrl-C): lines 1-{done:,} checked, the rest not"
    text = (
        f"interrupted (Ctrl-C): the keys of lines 1-{done:,} are written, none after"
        if done
        else "interrupted (Ctrl-C): no key written"
    )
    if unknown is not None:
        text += (
            f" but maybe the batch of lines {unknown.first_line}-{unknown.last_line}, which was "
            "on its way (a second Ctrl-C stopped waiting for its answer)"
        )
    if source != "-" and done:
        text += f"; to write the rest: tail -n +{done + 1} {shlex.quote(source)} | filekv import -"
    return text


def _import_offline(
    data_dir: Path, batches: Iterator[Batch], result: ImportResult, advance: Any
) -> None:
    from filekv.engine import Put, Store, StoreError, StoreLocked
    from filekv.settings import load_settings

    settings = load_settings(data_dir=data_dir)
    try:
        store = Store.open(data_dir, settings.store_options())
    except StoreLocked:
        fail(f"data directory {data_dir.resolve()} is in use (is a server running?)", 1)
    except StoreError as error:
        fail(f"cannot open {data_dir}: {error}", 1)
    with store:

        def write(batch: Batch) -> int:
            ops = [
                Put(key, value.encode("utf-8"), None, ttl) for key, value, ttl in batch.operations()
            ]
            try:
                return store.batch(ops)
            except StoreError as error:
                raise Refused(_refused(batch, str(error)), EXIT_BAD_INPUT) from None

        _import_batches(batches, result, write, advance)


VERBS: Final = ((export, "export"), (import_, "import"))


def register_transfer_verbs(app: typer.Typer) -> None:
    """Add ``export`` and ``import`` to the ``filekv`` app."""
    for verb, name in VERBS:
        app.command(name, epilog=EXIT_CODES_HELP)(verb)
