"""The ``filekv`` client verbs: ``get``, ``put``, ``delete``, ``ls``, ``find``, ``batch``,
``login``, ``logout``, ``register``, ``begin``, ``release``, ``commit``, ``rollback``, ``status``,
``watch``.

Each verb is one call (or a few) of ``filekv.client.Client`` against ``--url`` / ``$FILEKV_URL``,
with the token of ``$FILEKV_TOKEN`` or the one ``filekv login`` stored for that URL
(``filekv.credentials``). Errors are one line on stderr and an exit code from ``EXIT_CODES``.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Final, NoReturn, TypeVar

import httpx
import typer

from filekv import credentials
from filekv.client import (
    DEFAULT_URL,
    Change,
    Client,
    Conflict,
    FilekvError,
    Forbidden,
    Gone,
    InvalidRequest,
    Locked,
    NotFound,
    PreconditionFailed,
    ServerError,
    TooLarge,
    TooManyRequests,
    Unauthorized,
    Unavailable,
)
from filekv.client._protocol import LIMITS, MAX_ERROR_BYTES, base_url, tls_verify

#: The one table from client exception to exit status (the first matching class wins).
EXIT_CODES: Final[tuple[tuple[type[FilekvError], int], ...]] = (
    (NotFound, 1),
    (InvalidRequest, 2),
    (TooLarge, 2),
    (Locked, 3),
    (Unauthorized, 4),
    (Forbidden, 4),
    (PreconditionFailed, 5),
    (Conflict, 6),
    (Unavailable, 7),
    (ServerError, 7),
    (TooManyRequests, 8),
    (Gone, 9),
)
# A FilekvError of no class above (a 405, a 404 of no key...): an answer no filekv server gives,
# so --url is not a filekv server: fix the URL (usage), retrying will not help.
EXIT_OTHER: Final = 2
_T = TypeVar("_T")

EXIT_CODES_HELP: Final = (
    "Exit codes of the client verbs: 0 ok, 1 not found, 2 usage or invalid input (also a --url "
    "that is not a filekv server), "
    "3 locked (another client holds the transaction, 423), 4 not authorized (401/403), "
    "5 precondition failed (412), 6 conflict (409), 7 server unreachable or 5xx, "
    "8 too many requests (429), 9 gone (410: watch history compacted away), "
    "130 interrupted (Ctrl-C; import says what it wrote). "
    "Server: --url or FILEKV_URL (default http://127.0.0.1:8000); "
    "token: FILEKV_TOKEN, else the one `filekv login` stored."
)


def exit_code(error: FilekvError) -> int:
    """The exit status for a client error."""
    for cls, code in EXIT_CODES:
        if isinstance(error, cls):
            return code
    return EXIT_OTHER


# -- options -------------------------------------------------------------------------------------

UrlOption = Annotated[
    str | None,
    typer.Option(
        "--url",
        envvar="FILEKV_URL",
        help=f"The server (env FILEKV_URL; default {DEFAULT_URL}).",
        show_default=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the answer as one line of JSON.")]
ExpectOption = Annotated[
    int | None,
    typer.Option(
        "--expect",
        min=0,
        help="Only if the key is at this revision (0: only if it does not exist); else exit 5.",
    ),
]
PasswordStdinOption = Annotated[
    bool,
    typer.Option(
        "--password-stdin", help="Read the password from the first line of stdin (scripts)."
    ),
]
KeyArgument = Annotated[str, typer.Argument(help="The key (any UTF-8, '/' allowed).")]


def fail(message: str, code: int) -> NoReturn:
    """One line on stderr, then exit ``code``."""
    one_line = " ".join(message.splitlines()) or "error"
    sys.stderr.write(f"filekv: {one_line}\n")
    sys.stderr.flush()
    raise typer.Exit(code)


def warn(message: str) -> None:
    """One line on stderr; the verb goes on."""
    sys.stderr.write(f"filekv: {' '.join(message.splitlines())}\n")
    sys.stderr.flush()


def _url(url: str | None) -> str:
    """The server's URL as the client takes it (without a trailing ``/``); exit 2 with the
    client's own reason if it refuses it (not http:// or https://, no host, a query...)."""
    try:
        return base_url(url or DEFAULT_URL)
    except InvalidRequest as exc:
        fail(f"{exc.detail}; check --url (or FILEKV_URL)", 2)


def _text(value: str, what: str) -> str:
    """``value`` if it is valid UTF-8 (an argument of undecodable bytes is not); else exit 2."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        fail(f"the {what} is not valid UTF-8: filekv keys and values are text", 2)
    return value


def _stdin_text(what: str) -> str:
    """All of stdin, as it is, decoded as UTF-8 (else exit 2)."""
    try:
        data = sys.stdin.buffer.read()
    except KeyboardInterrupt:
        interrupted()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        fail(f"the {what} on stdin is not valid UTF-8: filekv keys and values are text", 2)


# Where the token a client sends came from: FILEKV_TOKEN, the credentials file, or nowhere.
TOKEN_ENV: Final = "FILEKV_TOKEN"
TOKEN_FILE: Final = "credentials"
NO_SUCH_KEY: Final = "no such key"  # the detail of filekv's one 404
NOT_LOGGED_IN: Final = "not logged in: run `filekv login` (or set FILEKV_TOKEN)"
EXIT_INTERRUPTED: Final = 130  # 128 + SIGINT, as a shell reports a command Ctrl-C stopped
INTERRUPTED: Final = "interrupted (Ctrl-C)"
RECONNECT_SECONDS: Final = 60.0  # how long `watch` tries to get a lost connection back


def _stale_login(server: str) -> str:
    return (
        f"the stored login for {server} is no longer valid (a restart logs everyone out);"
        " run `filekv login` again, or `filekv logout`"
    )


def _dead_token(error: FilekvError) -> bool:
    """The server knows no such token (expired, revoked, or the server restarted)."""
    return isinstance(error, Unauthorized) and "invalid or expired token" in error.detail


def no_answer_reason(error: FilekvError) -> str:
    """Why no answer came (an ``Unavailable``), in a few words: ``connection refused``,
    ``timed out``; from the transport error that caused it, cleaned of its ``[Errno N]``."""
    cause = error.__cause__
    if isinstance(cause, httpx.TimeoutException):
        return "timed out"
    if cause is not None and str(cause):
        reason = str(cause)
    else:
        reason = error.detail.removeprefix("cannot reach the server").lstrip(": ") or "no answer"
    reason = re.sub(r"^\[Errno -?\d+\] ", "", reason).rstrip(".")
    return reason[:1].lower() + reason[1:]


def _unreachable(server: str, error: FilekvError) -> str:
    """``cannot reach the server at URL: connection refused`` from the transport error."""
    return f"cannot reach the server at {server}: {no_answer_reason(error)}"


def _not_filekv(server: str, what: str) -> str:
    return f"{server} is not a filekv server? {what}; check --url"


class AnswerCheck(httpx.BaseTransport):
    """httpx's own transport, which also looks at each error answer (400 and up): is it
    filekv's, JSON with a string ``detail``? ``foreign`` describes the last one that was not.

    The client makes an exception of the status of any error answer: a 501 HTML page of a web
    server that is not filekv was a ``ServerError`` (exit 7, the page flattened as its detail),
    a 404 page a ``NotFound``; ``_message`` says "not a filekv server" (exit 2) for such an
    answer whatever its status."""

    def __init__(self, server: str) -> None:
        # As the client's own (``Client`` makes it so when given no transport).
        self.inner = httpx.HTTPTransport(verify=tls_verify(server), limits=LIMITS)
        self.foreign: str | None = None

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if response.status_code < 400:
            self.foreign = None
            return response
        body = bytearray()
        try:
            for chunk in response.iter_raw():
                body += chunk
                if len(body) > MAX_ERROR_BYTES:
                    break
        finally:
            response.close()
        headers = [
            (name, value)
            for name, value in response.headers.multi_items()
            if name not in ("content-length", "transfer-encoding")
        ]
        if len(body) > MAX_ERROR_BYTES:  # far larger than any filekv error: not read further
            headers = [(n, v) for n, v in headers if n != "content-encoding"]
            body = bytearray()
        answer = httpx.Response(
            response.status_code,
            headers=headers,
            content=bytes(body),
            request=request,
            extensions=response.extensions,
        )
        self.foreign = None if _filekv_error(answer) else _described(answer)
        return answer

    def close(self) -> None:
        self.inner.close()


def _filekv_error(answer: httpx.Response) -> bool:
    """Whether an error answer is filekv's: JSON with a string ``detail`` (or the list of a
    422's validation errors)."""
    try:
        body: Any = answer.json()
    except (ValueError, httpx.DecodingError):
        return False
    return isinstance(body, dict) and isinstance(body.get("detail"), str | list)


def _described(answer: httpx.Response) -> str:
    """``it answered 501 Not Implemented (text/html)``: what a foreign answer was."""
    kind = answer.headers.get("content-type", "no Content-Type").split(";")[0]
    reason = answer.reason_phrase or httpx.codes.get_reason_phrase(answer.status_code)
    return f"it answered {answer.status_code} {reason} ({kind}), not filekv's JSON error"


def _message(
    error: FilekvError, server: str, token_source: str | None, answers: AnswerCheck | None = None
) -> tuple[str, int]:
    """The one line and the exit code that say what happened and what to do. ``answers``: the
    transport of the client that raised ``error``, which says if its answer was not filekv's."""
    status = f" ({error.status})" if error.status is not None else ""
    if isinstance(error, Unavailable):
        return _unreachable(server, error), exit_code(error)
    if error.status is not None and answers is not None and answers.foreign is not None:
        return _not_filekv(server, answers.foreign), EXIT_OTHER
    if _dead_token(error):
        if token_source == TOKEN_FILE:
            return _stale_login(server), 4
        if token_source == TOKEN_ENV:
            return (
                f"{error.detail}{status}: the token in FILEKV_TOKEN; log in again"
                " (`filekv login`), or unset FILEKV_TOKEN",
                4,
            )
    if isinstance(error, Unauthorized) and error.detail.startswith("not authenticated"):
        return NOT_LOGGED_IN, 4
    if isinstance(error, InvalidRequest) and error.status is None and "too long" in error.detail:
        return "the key (or prefix) is too long: the server's max_key_bytes is far less", 2
    if type(error) is FilekvError or (isinstance(error, NotFound) and error.detail != NO_SUCH_KEY):
        # An answer of no class of its own (a 405, a redirect, a page that is not JSON...) or a
        # 404 of no key: a path or method filekv does not have, or a server that is not filekv.
        # (Not decided by the exit code: EXIT_OTHER is also InvalidRequest's and TooLarge's.)
        if "not a filekv answer" in error.detail:  # the client's own words: they name the URL
            return _not_filekv(server, error.detail), EXIT_OTHER
        return _not_filekv(server, f"it answered {error.status} {error.detail!r}"), EXIT_OTHER
    return f"{error.detail}{status}", exit_code(error)


@contextmanager
def _translated(
    server: str, token_source: str | None, answers: AnswerCheck | None = None
) -> Iterator[None]:
    """Every error of a client call as one line and an exit code: never a traceback. The
    client raises nothing but ``FilekvError`` (a URL too long, text that is not UTF-8, an
    answer that is not filekv's: ``client/_errors.py``), so that is all there is to catch."""
    try:
        yield
    except FilekvError as exc:
        message, code = _message(exc, server, token_source, answers)
        fail(message, code)
    except KeyboardInterrupt:  # click would say "Aborted!", exit 1
        interrupted()


def interrupted() -> NoReturn:
    """Exit 130 for a Ctrl-C, as ``filekv import`` does: the exit code of the help's table."""
    fail(INTERRUPTED, EXIT_INTERRUPTED)


def _token(server: str, stored_token: bool) -> tuple[str | None, str | None]:
    """The token to send and where it came from (``TOKEN_ENV``, ``TOKEN_FILE`` or None)."""
    token = os.environ.get("FILEKV_TOKEN") or None
    if token is not None:
        return token, TOKEN_ENV
    if stored_token and (token := credentials.get_token(server)) is not None:
        return token, TOKEN_FILE
    return None, None


@contextmanager
def connect(url: str | None, *, stored_token: bool = True) -> Iterator[Client]:
    """A client on the server with the token to use; client errors become exit codes."""
    with session(url, stored_token=stored_token) as verb:
        yield verb.kv


class Session:
    """A verb's client: ``read`` retries anonymously when a stored login died, writes do not."""

    def __init__(
        self,
        server: str,
        kv: Client,
        token_source: str | None,
        answers: AnswerCheck | None = None,
    ) -> None:
        self.server = server
        self.kv = kv
        self.token_source = token_source
        self.answers = answers  # kv's transport: was an error answer filekv's?

    def read(self, action: Callable[[Client], _T]) -> _T:
        """``action(kv)``; if the stored token is dead, warn once and do it again without it
        (a restart logs everyone out, and reading needs no login unless auth_mode=all)."""
        try:
            return action(self.kv)
        except Unauthorized as exc:
            if not self.drop_dead_token(exc):
                raise
        return action(self.kv)

    def drop_dead_token(self, error: FilekvError) -> bool:
        """Whether ``error`` says the stored token died; if so it is no longer sent."""
        if self.token_source != TOKEN_FILE or not _dead_token(error):
            return False
        warn(_stale_login(self.server))
        self.kv.token = None
        self.token_source = None
        return True


@contextmanager
def session(url: str | None, *, stored_token: bool = True) -> Iterator[Session]:
    """A ``Session`` on ``--url``; every error inside becomes one line and an exit code."""
    server = _url(url)
    token, source = _token(server, stored_token)
    answers = AnswerCheck(server)
    verb = Session(server, Client(server, token=token, transport=answers), source, answers)
    try:
        with _translated(server, source, answers):
            yield verb
    finally:
        verb.kv.close()


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, ensure_ascii=False) + "\n")


def emit_line(text: str) -> None:
    sys.stdout.write(text + "\n")


# -- keys ----------------------------------------------------------------------------------------


def get(key: KeyArgument, url: UrlOption = None, as_json: JsonOption = False) -> None:
    """Print the value of KEY, bare (so $(filekv get KEY) works); exit 1 if absent."""
    _text(key, "key")
    with session(url) as verb:
        entry = verb.read(lambda kv: kv.entry(key))
    if as_json:
        emit_json(
            {
                "key": entry.key,
                "value": entry.value,
                "revision": entry.revision,
                "expires_in": entry.expires_in,
            }
        )
    else:
        emit_line(entry.value)


def put(
    key: KeyArgument,
    value: Annotated[
        str, typer.Argument(help="The value; '-' reads it from stdin, as it is (no newline cut).")
    ],
    expect: ExpectOption = None,
    ttl: Annotated[
        float | None,
        typer.Option(
            "--ttl", min=0.001, help="Seconds until the key expires (then it is gone for reads)."
        ),
    ] = None,
    url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Write KEY (staged if you hold the transaction); prints the new revision, or 'staged'."""
    if ttl is not None and not math.isfinite(ttl):
        fail(f"--ttl must be a number of seconds (at most ten years), not {ttl}", 2)
    _text(key, "key")
    value = _stdin_text("value") if value == "-" else _text(value, "value")
    with session(url) as verb:
        revision = verb.kv.put(key, value, expect=expect, ttl=ttl)
    if as_json:
        emit_json({"key": key, "revision": revision, "staged": revision is None, "expires_in": ttl})
    else:
        emit_line("staged" if revision is None else str(revision))


def delete(
    key: KeyArgument,
    expect: ExpectOption = None,
    url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Delete KEY (staged if you hold the transaction: prints 'staged'); exit 1 if absent."""
    _text(key, "key")
    with session(url) as verb:
        staged = verb.kv.delete(key, expect=expect)  # the answer says it (X-Filekv-Staged)
    if as_json:
        emit_json({"key": key, "deleted": True, "staged": staged})
    elif staged:
        emit_line("staged")


NullOption = Annotated[
    bool,
    typer.Option(
        "-0",
        "--null",
        help="End each key with a NUL instead of a newline (keys may hold newlines), "
        "as find -print0; for xargs -0.",
    ),
]


def _started(keys: Iterator[str]) -> Iterator[str]:
    """``keys`` with its first page fetched already (so that its errors come now)."""
    for first in keys:
        return itertools.chain([first], keys)
    return iter(())


def _print_keys(keys: Iterator[str], as_json: bool, null: bool) -> None:
    if as_json:
        emit_json({"keys": list(keys)})
        return
    end = "\0" if null else "\n"
    for key in keys:
        sys.stdout.write(key + end)


def ls(
    prefix: Annotated[str, typer.Argument(help="Only keys starting with this.")] = "",
    null: NullOption = False,
    url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """List the keys (starting with PREFIX), sorted, one per line; every page is fetched."""
    _text(prefix, "prefix")
    with session(url) as verb:
        _print_keys(verb.read(lambda kv: _started(kv.keys(prefix))), as_json, null)


def find(
    value: Annotated[str, typer.Argument(help="The exact value to look for.")],
    prefix: Annotated[str, typer.Option("--prefix", help="Only keys starting with this.")] = "",
    null: NullOption = False,
    url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """List the keys whose value is exactly VALUE, sorted, one per line."""
    _text(value, "value")
    _text(prefix, "prefix")
    with session(url) as verb:
        _print_keys(verb.read(lambda kv: _started(kv.find(value, prefix))), as_json, null)


# The server's limit on the ops of one POST /batch (service/schemas.py MAX_BATCH_OPS), not
# imported: that module loads pydantic and the engine, and a client verb loads neither.
MAX_BATCH_OPS: Final = 1000
BATCH_FIELDS: Final = {
    "put": frozenset({"op", "key", "value", "expect", "ttl"}),
    "delete": frozenset({"op", "key", "expect"}),
}
BATCH_LINES: Final = (
    '{"op": "put", "key": K, "value": V, "expect": REV?, "ttl": SECONDS?}'
    ' or {"op": "delete", "key": K, "expect": REV?}'
)


def _valid_op(op: Any) -> bool:
    if not isinstance(op, dict) or op.get("op") not in BATCH_FIELDS:
        return False
    ttl = op.get("ttl")
    return (
        set(op) <= BATCH_FIELDS[op["op"]]
        and isinstance(op.get("key"), str)
        and (op["op"] == "delete" or isinstance(op.get("value"), str))
        and (op.get("expect") is None or type(op["expect"]) is int)
        and (ttl is None or (type(ttl) in (int, float) and math.isfinite(ttl)))
    )


def _read_ops(source: str) -> list[dict[str, Any]]:
    """The ops of a JSON Lines file (or stdin for '-'); blank lines are skipped; bad ones exit 2."""
    if source == "-":
        text = _stdin_text("batch")
    else:
        try:
            text = Path(source).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            fail(f"cannot read {source}: {exc}", 2)
    ops: list[dict[str, Any]] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            op = json.loads(line)
        except ValueError as exc:
            fail(f"{source} line {number}: not JSON ({exc})", 2)
        if not _valid_op(op):
            fail(f"{source} line {number}: expected {BATCH_LINES}", 2)
        for field in ("key", "value"):
            if field in op:
                _text(op[field], f"{field} of {source} line {number}")
        ops.append({k: v for k, v in op.items() if v is not None})
    if not ops:
        fail(f"{source}: no ops", 2)
    if len(ops) > MAX_BATCH_OPS:
        fail(f"{source}: {len(ops)} ops; a batch takes at most {MAX_BATCH_OPS}", 2)
    return ops


def batch(
    source: Annotated[
        str,
        typer.Argument(
            metavar="FILE|-",
            help=f"JSON Lines, one op a line: {BATCH_LINES}; at most {MAX_BATCH_OPS} ops;"
            ' "-" reads stdin.',
        ),
    ],
    url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Apply every op of FILE atomically at one revision, or none (exit 5 on a failed expect)."""
    ops = _read_ops(source)
    with session(url) as verb:
        revision = verb.kv.batch(ops)
    if as_json:
        emit_json({"revision": revision, "applied": len(ops), "staged": revision is None})
    else:
        emit_line("staged" if revision is None else str(revision))


# -- auth ----------------------------------------------------------------------------------------


def _prompt(label: str, *, hide_input: bool = False, confirm: bool = False) -> str:
    """Ask on the terminal; exit 2 if stdin ends first (nothing to read the answer from)."""
    try:
        answer: str = typer.prompt(
            label, hide_input=hide_input, confirmation_prompt=confirm, err=True
        )
    except typer.Abort as exc:
        if isinstance(exc.__context__, EOFError):
            sys.stderr.write("\n")
            fail(f"no {label.lower()} given (stdin closed)", 2)
        if isinstance(exc.__context__, KeyboardInterrupt):  # else click: "Aborted.", exit 1
            if not hide_input:  # (getpass ends the line itself)
                sys.stderr.write("\n")
            interrupted()
        raise
    return answer


def _username(username: str | None) -> str:
    return _text(username or _prompt("Username"), "user name")


def _password(password_stdin: bool, *, confirm: bool) -> str:
    if password_stdin:
        try:
            line = sys.stdin.readline()
        except KeyboardInterrupt:
            interrupted()
        if not line:
            fail("no password given (stdin closed)", 2)
        password = line.rstrip("\r\n")
    else:
        password = _prompt("Password", hide_input=True, confirm=confirm)
    if not password:
        fail("empty password", 2)
    return _text(password, "password")


UsernameArgument = Annotated[
    str | None, typer.Argument(help="User name (asked for if not given).", show_default=False)
]


def login(
    username: UsernameArgument = None,
    password_stdin: PasswordStdinOption = False,
    url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Log in and keep the token for this server in $XDG_CONFIG_HOME/filekv/credentials.json."""
    server = _url(url)
    name = _username(username)
    password = _password(password_stdin, confirm=False)
    with session(server, stored_token=False) as verb:
        token = verb.kv.login(name, password)
    try:
        path = credentials.store_token(server, token)
    except OSError as exc:
        fail(f"logged in, but could not store the token: {exc}", 7)
    if as_json:
        emit_json({"username": name, "url": server, "credentials": str(path)})
    else:
        sys.stderr.write(f"logged in to {server} as {name}\n")


def logout(url: UrlOption = None, as_json: JsonOption = False) -> None:
    """Forget the stored token and revoke it on the server (exit 7 if it could not be told)."""
    server = _url(url)
    token = credentials.get_token(server)
    if token is None:
        fail(f"not logged in to {server}", 4)
    try:
        credentials.remove_token(server)
    except OSError as exc:
        fail(f"could not forget the stored token: {exc}", 2)
    answers = AnswerCheck(server)
    try:
        with Client(server, token=token, transport=answers) as kv:
            kv.logout()
    except FilekvError as exc:
        _logout_failed(exc, server, answers)
    if as_json:
        emit_json({"url": server, "logged_out": True})


def _logout_failed(exc: FilekvError, server: str, answers: AnswerCheck) -> None:
    """Exit with what ``exc`` says, unless it means the token was forgotten there already."""
    if exc.status is not None and answers.foreign is not None:
        fail(*_message(exc, server, None, answers))  # not a filekv server: exit 2
    if isinstance(exc, Unavailable | ServerError):
        reason = _message(exc, server, None)[0]
        fail(
            f"forgot the stored token; the server could not be told ({reason}), so it stays"
            " valid there until it expires (token_ttl) or the server restarts",
            7,
        )
    if isinstance(exc, Unauthorized) and _dead_token(exc):
        return  # the server had forgotten it already: logged out
    fail(*_message(exc, server, None))


def register(
    username: UsernameArgument = None,
    password_stdin: PasswordStdinOption = False,
    url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Create a user on the server (asks for the password twice); then `filekv login`."""
    server = _url(url)
    name = _username(username)
    password = _password(password_stdin, confirm=True)
    with session(server, stored_token=False) as verb:
        verb.kv.register(name, password)
    if as_json:
        emit_json({"username": name})
    else:
        sys.stderr.write(f"registered {name}\n")


# -- transactions --------------------------------------------------------------------------------
# Never retried without a dead stored token: the transaction died with it (exit 4 says so).


def begin(url: UrlOption = None, as_json: JsonOption = False) -> None:
    """Begin the transaction (or a nested level) for the stored token; prints the depth."""
    with session(url) as verb:
        depth = verb.kv.begin()
    emit_json({"depth": depth}) if as_json else emit_line(str(depth))


def release(url: UrlOption = None, as_json: JsonOption = False) -> None:
    """Merge the innermost level into the one below; prints the depth left (exit 6 at depth 1)."""
    with session(url) as verb:
        depth = verb.kv.release()
    emit_json({"depth": depth}) if as_json else emit_line(str(depth))


def commit(url: UrlOption = None, as_json: JsonOption = False) -> None:
    """Commit every level atomically; prints how many writes were applied (exit 6 if none held)."""
    with session(url) as verb:
        applied = verb.kv.commit()
    emit_json({"depth": 0, "applied": applied}) if as_json else emit_line(str(applied))


def rollback(url: UrlOption = None, as_json: JsonOption = False) -> None:
    """Undo the innermost level; prints the depth left (0: the transaction ended)."""
    with session(url) as verb:
        depth = verb.kv.rollback()
    emit_json({"depth": depth}) if as_json else emit_line(str(depth))


def _status(kv: Client) -> tuple[dict[str, Any], int | None, dict[str, Any]]:
    health = kv.health()
    try:
        keys: int | None = int(kv.stats()["keys"])
    except Unauthorized as exc:
        if _dead_token(exc):
            raise
        keys = None  # auth_mode=all without a login
    except Forbidden:
        keys = None
    return health, keys, kv.transaction_status()


def status(url: UrlOption = None, as_json: JsonOption = False) -> None:
    """Server health, key count and the transaction's state (exit 7 if the server is down)."""
    with session(url) as verb:
        health, keys, transaction = verb.read(_status)
    server = verb.server
    if as_json:
        emit_json({"url": server, "health": health, "keys": keys, "transaction": transaction})
        return
    emit_line(f"server: {server} {health.get('status', '?')}")
    emit_line(f"keys: {'unknown (log in)' if keys is None else keys}")
    if not transaction.get("active"):
        emit_line("transaction: none")
    elif transaction.get("mine"):
        emit_line(
            f"transaction: yours, depth {transaction.get('depth')},"
            f" expires in {transaction.get('expires_in')} s"
        )
    else:
        emit_line("transaction: held by another client")


# -- watching ------------------------------------------------------------------------------------


def _print_change(change: Change, as_json: bool) -> None:
    if as_json:
        emit_json(
            {
                "revision": change.revision,
                "op": change.op,
                "key": change.key,
                "value": change.value,
                "expires_in": change.expires_in,
            }
        )
    else:
        key = json.dumps(change.key, ensure_ascii=False)
        line = f"{change.revision} {change.op} {key}"
        if change.value is not None:
            line += " " + json.dumps(change.value, ensure_ascii=False)
        emit_line(line)
    sys.stdout.flush()  # a pipe sees each change as it happens


def _watch(verb: Session, prefix: str, start: int | None, as_json: bool) -> None:
    """Print the changes from ``start`` on; a lost connection is made again (for at most
    ``RECONNECT_SECONDS``) and the watch resumes where its stream was: right after the last
    change printed, or after the later position the server named on an idle stream (the id of
    a heartbeat), so a quiet prefix does not fall behind the history the server keeps."""
    position: str | None = None  # the stream's last event id, once the server sent one
    down_since: float | None = None
    while True:
        began = time.monotonic()
        changes = verb.kv.watch(
            prefix,
            from_revision=None if position is not None else start,
            last_event_id=position,
            reconnect_timeout=0,
        )
        try:
            for change in changes:
                down_since = None
                _print_change(change, as_json)
        except (Unavailable, ServerError) as exc:
            if time.monotonic() - began > 10 * RETRY_SECONDS:
                down_since = None  # it was watching until now: a new outage
            if down_since is None:
                down_since = time.monotonic()
                warn(f"{_message(exc, verb.server, None)[0]}; reconnecting")
            # The deadline counts whether the server is down or up with /watch failing (a 503:
            # too many watchers): either way, no watch for RECONNECT_SECONDS ends it.
            while True:
                if time.monotonic() - down_since > RECONNECT_SECONDS:
                    raise
                if _reachable(verb.kv):
                    break
                time.sleep(RETRY_SECONDS)
        except Unauthorized as exc:  # the server restarted: the stored token died with it
            if not verb.drop_dead_token(exc):
                raise
        finally:
            position = changes.last_event_id


def _reachable(kv: Client) -> bool:
    try:
        kv.health()
    except (Unavailable, ServerError):
        return False
    return True


RETRY_SECONDS: Final = 1.0


def watch(
    prefix: Annotated[
        str, typer.Argument(help="Only keys starting with this (default: every key).")
    ] = "",
    from_revision: Annotated[
        int | None,
        typer.Option(
            "--from", min=0, help="Start at this revision (inclusive); default: from now."
        ),
    ] = None,
    url: UrlOption = None,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json", help="One line of JSON per change: revision, op, key, value, expires_in."
        ),
    ] = False,
) -> None:
    """Print each change under PREFIX as it is committed, until interrupted (Ctrl-C).

    A line per change: revision, op (put, delete, expire), the key and a put's value (both as
    JSON strings). Exit 7 at once if the server cannot be reached; a connection lost later is
    made again (said on stderr; exit 7 after 60 s without a watch: the server down, or
    answering 5xx, such as 503 too many watchers) and the watch resumes where its stream was
    (after the last change printed, or the later position an idle stream's heartbeat named);
    exit 9 if --from is older than the history the server keeps (watch_history).
    """
    _text(prefix, "prefix")
    with session(url) as verb:  # a Ctrl-C ends it: exit 130, as the help's table says
        # One call first: an unreachable server, or a dead stored login, is said at once.
        stats = verb.read(lambda kv: kv.stats())
        start = from_revision
        if start is None and type(stats.get("revision")) is int:
            start = stats["revision"] + 1  # from now, also across a reconnect
        _watch(verb, prefix, start, as_json)


VERBS: Final[tuple[Callable[..., None], ...]] = (
    get,
    put,
    delete,
    ls,
    find,
    batch,
    login,
    logout,
    register,
    begin,
    release,
    commit,
    rollback,
    status,
    watch,
)


def register_verbs(app: typer.Typer) -> None:
    """Add the verbs to the ``filekv`` app, and the exit codes to its ``--help``."""
    for verb in VERBS:
        app.command(verb.__name__, epilog=EXIT_CODES_HELP)(verb)
    app.info.epilog = EXIT_CODES_HELP
