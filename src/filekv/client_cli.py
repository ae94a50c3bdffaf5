"""The ``filekv`` client verbs: ``get``, ``put``, ``delete``, ``ls``, ``find``, ``batch``,
``login``, ``logout``, ``register``, ``begin``, ``release``, ``commit``, ``rollback``, ``status``,
``watch``.

Each verb is one call (or a few) of ``filekv.client.Client`` against ``--url`` / ``$FILEKV_URL``,
with the token of ``$FILEKV_TOKEN`` or the one ``filekv login`` stored for that URL
(``filekv.credentials``). Errors are one line on stderr and an exit code from ``EXIT_CODES``.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Final, NoReturn

import typer

from filekv import credentials
from filekv.client import (
    DEFAULT_URL,
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
EXIT_OTHER: Final = 7  # a FilekvError of no class above: the server answered something unexpected

EXIT_CODES_HELP: Final = (
    "Exit codes of the client verbs: 0 ok, 1 not found, 2 usage or invalid input, "
    "3 locked (another client holds the transaction, 423), 4 not authorized (401/403), "
    "5 precondition failed (412), 6 conflict (409), 7 server unreachable or 5xx, "
    "8 too many requests (429), 9 gone (410: watch history compacted away). "
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


def _url(url: str | None) -> str:
    return credentials.normalize_url(url or DEFAULT_URL)


@contextmanager
def connect(url: str | None, *, stored_token: bool = True) -> Iterator[Client]:
    """A client on the server with the token to use; client errors become exit codes."""
    server = _url(url)
    token = os.environ.get("FILEKV_TOKEN") or None
    if token is None and stored_token:
        token = credentials.get_token(server)
    try:
        with Client(server, token=token) as kv:
            yield kv
    except Unavailable as exc:
        fail(f"{server}: {exc.detail}", exit_code(exc))
    except FilekvError as exc:
        fail(exc.detail if exc.status is None else f"{exc.detail} ({exc.status})", exit_code(exc))


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, ensure_ascii=False) + "\n")


def emit_line(text: str) -> None:
    sys.stdout.write(text + "\n")


# -- keys ----------------------------------------------------------------------------------------


def get(key: KeyArgument, url: UrlOption = None, as_json: JsonOption = False) -> None:
    """Print the value of KEY, bare (so $(filekv get KEY) works); exit 1 if absent."""
    with connect(url) as kv:
        entry = kv.entry(key)
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
    if value == "-":
        value = sys.stdin.read()
    with connect(url) as kv:
        revision = kv.put(key, value, expect=expect, ttl=ttl)
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
    """Delete KEY (staged if you hold the transaction); exit 1 if absent."""
    with connect(url) as kv:
        kv.delete(key, expect=expect)
    if as_json:
        emit_json({"key": key, "deleted": True})


NullOption = Annotated[
    bool,
    typer.Option(
        "-0",
        "--null",
        help="End each key with a NUL instead of a newline (keys may hold newlines), "
        "as find -print0; for xargs -0.",
    ),
]


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
    with connect(url) as kv:
        _print_keys(kv.keys(prefix), as_json, null)


def find(
    value: Annotated[str, typer.Argument(help="The exact value to look for.")],
    prefix: Annotated[str, typer.Option("--prefix", help="Only keys starting with this.")] = "",
    null: NullOption = False,
    url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """List the keys whose value is exactly VALUE, sorted, one per line."""
    with connect(url) as kv:
        _print_keys(kv.find(value, prefix), as_json, null)


def _read_ops(source: str) -> list[dict[str, Any]]:
    """The ops of a JSON Lines file (or stdin for '-'); blank lines are skipped; bad ones exit 2."""
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
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
        allowed = {"put": {"op", "key", "value", "expect"}, "delete": {"op", "key", "expect"}}
        if (
            not isinstance(op, dict)
            or op.get("op") not in allowed
            or not isinstance(op.get("key"), str)
            or (op["op"] == "put" and not isinstance(op.get("value"), str))
            or not set(op) <= allowed[op["op"]]
            or not (op.get("expect") is None or type(op["expect"]) is int)
        ):
            fail(
                f'{source} line {number}: expected {{"op": "put", "key": K, "value": V,'
                f' "expect": REV?}} or {{"op": "delete", "key": K, "expect": REV?}}',
                2,
            )
        ops.append({k: v for k, v in op.items() if v is not None})
    if not ops:
        fail(f"{source}: no ops", 2)
    return ops


def batch(
    source: Annotated[
        str,
        typer.Argument(
            metavar="FILE|-",
            help='JSON Lines, one op a line: {"op": "put", "key": K, "value": V, "expect": REV?}'
            ' or {"op": "delete", "key": K, "expect": REV?}; "-" reads stdin.',
        ),
    ],
    url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Apply every op of FILE atomically at one revision, or none (exit 5 on a failed expect)."""
    ops = _read_ops(source)
    with connect(url) as kv:
        revision = kv.batch(ops)
    if as_json:
        emit_json({"revision": revision, "applied": len(ops), "staged": revision is None})
    else:
        emit_line("staged" if revision is None else str(revision))


# -- auth ----------------------------------------------------------------------------------------


def _username(username: str | None) -> str:
    if username:
        return username
    name: str = typer.prompt("Username", err=True)
    return name


def _password(password_stdin: bool, *, confirm: bool) -> str:
    if password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    password: str = typer.prompt("Password", hide_input=True, confirmation_prompt=confirm, err=True)
    return password


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
    name = _username(username)
    password = _password(password_stdin, confirm=False)
    server = _url(url)
    with connect(server, stored_token=False) as kv:
        token = kv.login(name, password)
    try:
        path = credentials.store_token(server, token)
    except OSError as exc:
        fail(f"logged in, but could not store the token: {exc}", 7)
    if as_json:
        emit_json({"username": name, "url": server, "credentials": str(path)})
    else:
        sys.stderr.write(f"logged in to {server} as {name}\n")


def logout(url: UrlOption = None, as_json: JsonOption = False) -> None:
    """Revoke the stored token on the server and forget it (also if the server is gone)."""
    server = _url(url)
    token = credentials.get_token(server)
    if token is None:
        fail(f"not logged in to {server}", 4)
    try:
        with connect(server) as kv:
            kv.logout()
    finally:
        credentials.remove_token(server)
    if as_json:
        emit_json({"url": server, "logged_out": True})


def register(
    username: UsernameArgument = None,
    password_stdin: PasswordStdinOption = False,
    url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Create a user on the server (asks for the password twice); then `filekv login`."""
    name = _username(username)
    password = _password(password_stdin, confirm=True)
    with connect(url, stored_token=False) as kv:
        kv.register(name, password)
    if as_json:
        emit_json({"username": name})
    else:
        sys.stderr.write(f"registered {name}\n")


# -- transactions --------------------------------------------------------------------------------


def begin(url: UrlOption = None, as_json: JsonOption = False) -> None:
    """Begin the transaction (or a nested level) for the stored token; prints the depth."""
    with connect(url) as kv:
        depth = kv.begin()
    emit_json({"depth": depth}) if as_json else emit_line(str(depth))


def release(url: UrlOption = None, as_json: JsonOption = False) -> None:
    """Merge the innermost level into the one below; prints the depth left (exit 6 at depth 1)."""
    with connect(url) as kv:
        depth = kv.release()
    emit_json({"depth": depth}) if as_json else emit_line(str(depth))


def commit(url: UrlOption = None, as_json: JsonOption = False) -> None:
    """Commit every level atomically; prints how many writes were applied (exit 6 if none held)."""
    with connect(url) as kv:
        applied = kv.commit()
    emit_json({"depth": 0, "applied": applied}) if as_json else emit_line(str(applied))


def rollback(url: UrlOption = None, as_json: JsonOption = False) -> None:
    """Undo the innermost level; prints the depth left (0: the transaction ended)."""
    with connect(url) as kv:
        depth = kv.rollback()
    emit_json({"depth": depth}) if as_json else emit_line(str(depth))


def status(url: UrlOption = None, as_json: JsonOption = False) -> None:
    """Server health, key count and the transaction's state (exit 7 if the server is down)."""
    server = _url(url)
    with connect(server) as kv:
        health = kv.health()
        try:
            keys: int | None = int(kv.stats()["keys"])
        except (Unauthorized, Forbidden):  # auth_mode=all without a login
            keys = None
        transaction = kv.transaction_status()
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
        typer.Option("--json", help="One line of JSON per change: revision, op, key, value."),
    ] = False,
) -> None:
    """Print each change under PREFIX as it is committed, until interrupted (Ctrl-C).

    A line per change: revision, op (put, delete, expire), the key and a put's value (both as
    JSON strings). A lost connection is resumed after the last change printed; exit 9 if
    --from is older than the history the server keeps (watch_history).
    """
    with connect(url) as kv:
        try:
            for change in kv.watch(prefix, from_revision=from_revision):
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
        except KeyboardInterrupt:
            return


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
