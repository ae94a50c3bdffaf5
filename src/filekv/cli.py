"""The ``filekv`` command: ``serve``, ``user add|passwd|revoke|remove|set-role|list``, ``compact``,
the client verbs of ``filekv.client_cli`` (``get``, ``put``, ``login``, ``begin``, ...), and
``backup``, ``restore`` (``filekv.backup_cli``), ``export``, ``import`` (``filekv.transfer_cli``).

Every ``serve`` flag is a ``Settings`` field of the same name (``--token-ttl`` is ``token_ttl``);
an unset flag falls back to ``FILEKV_<NAME>`` in the environment, then to the default.

Scripts run ``filekv get`` in loops, so a command costs only its own start-up: its module is
imported, and its click command built, when it is the one run (``_LazyCommands``); the list of
``filekv --help`` shows summaries of them, without their options. For the same reason this
module imports the settings (pydantic), rich and the client where they are used, not at the
top.
"""

from __future__ import annotations

import errno
import functools
import gc
import inspect
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, MutableMapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from enum import StrEnum
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Any, Final, get_args

import typer
from typer.core import TyperCommand, TyperGroup
from typer.main import (
    get_command_from_info,
    get_command_name,
    get_group_from_info,
    solve_typer_info_defaults,
)
from typer.models import CommandInfo, TyperInfo

import filekv

if TYPE_CHECKING:
    import uvicorn
    from rich.console import Console
    from typer._click import Command, Context, HelpFormatter  # typer's own copy of click

    from filekv.service.auth import AuthService
    from filekv.settings import Settings

logger = logging.getLogger(__name__)

SHUTDOWN_GRACE_SECONDS: Final = 10  # requests still running at a shutdown are cancelled after

#: The client verbs, named here so that running another command does not import them (a test
#: keeps this equal to ``filekv.client_cli.VERBS``).
CLIENT_VERBS: Final = (
    "get",
    "put",
    "delete",
    "ls",
    "find",
    "batch",
    "login",
    "logout",
    "register",
    "begin",
    "release",
    "commit",
    "rollback",
    "status",
    "watch",
)


def _registered(register: Callable[[typer.Typer], None]) -> typer.Typer:
    """A Typer holding the commands ``register`` adds."""
    commands = typer.Typer()
    register(commands)
    return commands


def _local_commands() -> typer.Typer:
    return local_app


@functools.cache
def _client_commands() -> typer.Typer:
    from filekv.client_cli import register_verbs

    return _registered(register_verbs)


@functools.cache
def _backup_commands() -> typer.Typer:
    from filekv.backup_cli import register_backup_verbs

    return _registered(register_backup_verbs)


@functools.cache
def _transfer_commands() -> typer.Typer:
    from filekv.transfer_cli import register_transfer_verbs

    return _registered(register_transfer_verbs)


#: Every command of ``filekv``, in the order of its ``--help``, and the Typer that holds it: a
#: function, so that the module defining the command is imported only when the command is built.
COMMANDS: Final[dict[str, Callable[[], typer.Typer]]] = {
    "serve": _local_commands,
    "compact": _local_commands,
    **dict.fromkeys(CLIENT_VERBS, _client_commands),
    "backup": _backup_commands,
    "restore": _backup_commands,
    "export": _transfer_commands,
    "import": _transfer_commands,
    "user": _local_commands,
}


class _LazyCommands(MutableMapping[str, "Command"]):
    """The ``filekv`` group's commands (its ``commands``): every name of ``COMMANDS`` is there
    from the start, each command is built when it is first looked up.

    Building all of them cost every ``filekv get`` about 0.17 s, and as much again to import
    their modules (``serve``'s flags read the settings' pydantic model). Looking up the command
    to run builds it alone; the names alone (typer's "Did you mean" on a typo) build nothing;
    ``--help``, which lists every command with its help, builds none (``_summary``).
    """

    def __init__(self, built: MutableMapping[str, Command]) -> None:
        self.built = built

    def __getitem__(self, name: str) -> Command:
        if name not in self.built and name in COMMANDS:
            self.built[name] = _build(name)
        return self.built[name]

    def __setitem__(self, name: str, command: Command) -> None:
        self.built[name] = command

    def __delitem__(self, name: str) -> None:
        del self.built[name]

    def __iter__(self) -> Iterator[str]:
        yield from COMMANDS
        yield from (name for name in self.built if name not in COMMANDS)

    def __len__(self) -> int:
        return sum(1 for _ in self)


def _registration(name: str) -> CommandInfo | TyperInfo:
    """What the module of command ``name`` registered: a command's info, or a group's."""
    source = COMMANDS[name]()
    for info in source.registered_commands:
        assert info.callback is not None
        if (info.name or get_command_name(info.callback.__name__)) == name:
            return info
    for group in source.registered_groups:
        if group.name == name:
            return group
    raise LookupError(f"no command {name!r} in {source}: COMMANDS is out of date")


def _build(name: str) -> Command:
    """The click command ``name``, as ``typer.main.get_group`` builds it, and no other one."""
    info = _registration(name)
    if isinstance(info, CommandInfo):
        command: Command = get_command_from_info(
            info,
            pretty_exceptions_short=app.pretty_exceptions_short,
            rich_markup_mode=app.rich_markup_mode,
        )
    else:
        command = get_group_from_info(
            info,
            pretty_exceptions_short=app.pretty_exceptions_short,
            rich_markup_mode=app.rich_markup_mode,
            suggest_commands=app.suggest_commands,
        )
    _unwrap_help(command)
    _refuse_empty_data_dir(command)
    return command


def _refuse_empty_data_dir(command: Command) -> None:
    """Have every ``--data-dir`` of ``command`` (and of its subcommands) refuse an empty value
    as ``FILEKV_DATA_DIR=`` is refused: one line, exit 2.

    typer makes ``Path("")`` of ``--data-dir ''``, which is the current directory: an unset
    ``$DIR`` in ``filekv serve --data-dir "$DIR"`` served (or compacted) whatever directory it
    ran in. The check is on the text given, before typer's ``Path``; ``.`` still means here."""
    for param in command.params:
        if param.name == "data_dir":
            param.process_value = _not_empty(param.process_value)  # type: ignore[method-assign,assignment]
    for sub in getattr(command, "commands", {}).values():
        _refuse_empty_data_dir(sub)


def _not_empty(process: Callable[[Context, Any], Any]) -> Callable[[Context, Any], Any]:
    """``process`` (a parameter's ``process_value``), but a blank value is the invalid
    setting ``data_dir``, as the settings say it."""

    def checked(ctx: Context, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            _settings(data_dir=value)  # the settings' own refusal: one line, exit 2
            raise typer.Exit(2)  # (not reached: the settings refuse every blank data_dir)
        return process(ctx, value)

    return checked


def _unwrapped(text: str | None) -> str | None:
    """``text`` with each paragraph on one line (a paragraph starting with "\\b" kept as is).

    typer's rich help keeps a docstring's line breaks after its first paragraph, and then
    wraps the lines again to the terminal: "the store flushed" / "and closed" came out as two
    short lines in the middle of a sentence, on any width but the source's."""
    if not text:
        return text
    paragraphs = inspect.cleandoc(text).split("\n\n")
    return "\n\n".join(
        part if part.startswith("\b") else " ".join(part.split("\n")) for part in paragraphs
    )


def _unwrap_help(command: Command) -> None:
    """Unwrap the help of ``command`` and of its subcommands (``user``'s)."""
    command.help = _unwrapped(command.help)
    for sub in getattr(command, "commands", {}).values():
        _unwrap_help(sub)


def _summary(name: str) -> Command:
    """Command ``name`` as the list of ``filekv --help`` shows it: the fields typer's list reads
    (name, help, short help, hidden, deprecated, panel; a test keeps them equal to ``_build``'s),
    without the options, whose building is most of the cost of building a command."""
    info = _registration(name)
    if isinstance(info, CommandInfo):
        assert info.callback is not None
        # As get_command_from_info: the docstring, unless the command was given a help.
        text = inspect.getdoc(info.callback) if info.help is None else inspect.cleandoc(info.help)
        return TyperCommand(
            name=name,
            help=_unwrapped(text),
            short_help=info.short_help,
            hidden=info.hidden,
            deprecated=info.deprecated,
            rich_help_panel=info.rich_help_panel,
        )
    group = solve_typer_info_defaults(info)
    return TyperGroup(
        name=name,
        help=_unwrapped(group.help),
        short_help=group.short_help,
        hidden=group.hidden,
        deprecated=group.deprecated,
        rich_help_panel=group.rich_help_panel,
    )


class _LazyGroup(TyperGroup):
    """The ``filekv`` group: its commands are built when looked up (``_LazyCommands``)."""

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        self.commands = _LazyCommands(self.commands)

    def format_help(self, ctx: Context, formatter: HelpFormatter) -> None:
        # The client verbs' exit codes, under the list of commands: set here, as only the help
        # shows them, so that ``filekv serve`` does not import the client.
        from filekv.client_cli import EXIT_CODES_HELP

        self.epilog = EXIT_CODES_HELP
        # The list shows each command's name and help alone: summaries, not the commands, whose
        # options (serve's and the user commands' read the settings) took 0.3 s of CPU of 0.8.
        commands, self.commands = self.commands, {name: _summary(name) for name in COMMANDS}
        try:
            super().format_help(ctx, formatter)
        finally:
            self.commands = commands


app = typer.Typer(
    name="filekv",
    cls=_LazyGroup,
    help="filekv: a crash-safe key-value store in its own files, served over HTTP.",
    no_args_is_help=True,
    add_completion=False,
)
# serve, compact and user: the commands of this module, built by _LazyCommands as the others.
local_app = typer.Typer()
user_app = typer.Typer(
    help="Manage users (kept in <data-dir>/users.json, passwords hashed with argon2id).",
    no_args_is_help=True,
)
local_app.add_typer(user_app, name="user")


def _stderr() -> Console:
    from rich.console import Console

    return Console(stderr=True, soft_wrap=True, highlight=False)


def _help(field: str) -> str:
    """The flag's help: the setting's description, its choices, and its env variable.

    Called when typer builds the command, not at import: every option that calls it is written
    out in the command's signature (no module-level alias such as a ``DataDirOption``), so that
    importing this module does not import the settings.
    """
    from filekv.settings import Settings

    info = Settings.model_fields[field]
    choices = get_args(info.annotation)
    text = info.description or ""
    if choices and all(isinstance(c, str) for c in choices):
        text += f" One of: {', '.join(choices)}."
    return f"{text} (env FILEKV_{field.upper()}; default {info.default})"


def _settings(**flags: Any) -> Settings:
    """Settings from flags and environment, or a clear message and exit status 2."""
    from pydantic import ValidationError

    from filekv.settings import load_settings

    try:
        return load_settings(**flags)
    except ValidationError as exc:
        for error in exc.errors():
            name = ".".join(str(part) for part in error["loc"])
            _stderr().print(f"filekv: invalid setting {name}: {error['msg']}", markup=False)
        raise typer.Exit(2) from None


def _fail(message: str, code: int = 1) -> typer.Exit:
    _stderr().print(f"filekv: {message}", markup=False, highlight=False)
    return typer.Exit(code)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"filekv {filekv.__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """filekv: a crash-safe key-value store in its own files, served over HTTP."""


# -- serve ---------------------------------------------------------------------------------------


@local_app.command()
def serve(
    data_dir: Annotated[Path | None, typer.Option(help=_help("data_dir"))] = None,
    host: Annotated[str | None, typer.Option(help=_help("host"))] = None,
    port: Annotated[int | None, typer.Option(help=_help("port"))] = None,
    forwarded_allow_ips: Annotated[
        str | None, typer.Option(help=_help("forwarded_allow_ips"))
    ] = None,
    fsync: Annotated[str | None, typer.Option(help=_help("fsync"))] = None,
    fsync_interval_ms: Annotated[int | None, typer.Option(help=_help("fsync_interval_ms"))] = None,
    transaction_timeout: Annotated[
        float | None, typer.Option(help=_help("transaction_timeout"))
    ] = None,
    transaction_max_seconds: Annotated[
        float | None, typer.Option(help=_help("transaction_max_seconds"))
    ] = None,
    token_ttl: Annotated[float | None, typer.Option(help=_help("token_ttl"))] = None,
    auth_mode: Annotated[str | None, typer.Option(help=_help("auth_mode"))] = None,
    registration: Annotated[str | None, typer.Option(help=_help("registration"))] = None,
    max_key_bytes: Annotated[int | None, typer.Option(help=_help("max_key_bytes"))] = None,
    max_value_bytes: Annotated[int | None, typer.Option(help=_help("max_value_bytes"))] = None,
    max_transaction_bytes: Annotated[
        int | None, typer.Option(help=_help("max_transaction_bytes"))
    ] = None,
    max_transaction_ops: Annotated[
        int | None, typer.Option(help=_help("max_transaction_ops"))
    ] = None,
    compact_min_bytes: Annotated[int | None, typer.Option(help=_help("compact_min_bytes"))] = None,
    compact_dead_ratio: Annotated[
        float | None, typer.Option(help=_help("compact_dead_ratio"))
    ] = None,
    active_hint_bytes: Annotated[int | None, typer.Option(help=_help("active_hint_bytes"))] = None,
    header_timeout: Annotated[float | None, typer.Option(help=_help("header_timeout"))] = None,
    body_timeout: Annotated[float | None, typer.Option(help=_help("body_timeout"))] = None,
    body_total_timeout: Annotated[
        float | None, typer.Option(help=_help("body_total_timeout"))
    ] = None,
    export_max_concurrent: Annotated[
        int | None, typer.Option(help=_help("export_max_concurrent"))
    ] = None,
    export_time_limit: Annotated[
        float | None, typer.Option(help=_help("export_time_limit"))
    ] = None,
    backup_time_limit: Annotated[
        float | None, typer.Option(help=_help("backup_time_limit"))
    ] = None,
    watch_history: Annotated[int | None, typer.Option(help=_help("watch_history"))] = None,
    watch_max_watchers: Annotated[
        int | None, typer.Option(help=_help("watch_max_watchers"))
    ] = None,
    watch_queue_events: Annotated[
        int | None, typer.Option(help=_help("watch_queue_events"))
    ] = None,
    watch_heartbeat_seconds: Annotated[
        float | None, typer.Option(help=_help("watch_heartbeat_seconds"))
    ] = None,
    watch_stall_seconds: Annotated[
        float | None, typer.Option(help=_help("watch_stall_seconds"))
    ] = None,
    log_level: Annotated[str | None, typer.Option(help=_help("log_level"))] = None,
    log_format: Annotated[str | None, typer.Option(help=_help("log_format"))] = None,
    # Values (true/false, as the environment takes them), not flags: a --no-... column beside
    # them squeezed every option name of serve's help to "--transaction-max-seco…".
    log_keys: Annotated[
        str | None, typer.Option(metavar="true|false", help=_help("log_keys"))
    ] = None,
    metrics: Annotated[
        str | None, typer.Option(metavar="true|false", help=_help("metrics"))
    ] = None,
) -> None:
    """Serve the HTTP API (uvicorn with uvloop and httptools) until SIGINT or SIGTERM.

    SIGINT or SIGTERM shuts down gracefully (an open transaction rolled back, the store flushed
    and closed) and exits with status 0. Only one process may serve a data directory: a second
    one exits at once with status 1.
    """
    settings = _settings(
        data_dir=data_dir,
        host=host,
        port=port,
        forwarded_allow_ips=forwarded_allow_ips,
        fsync=fsync,
        fsync_interval_ms=fsync_interval_ms,
        transaction_timeout=transaction_timeout,
        transaction_max_seconds=transaction_max_seconds,
        token_ttl=token_ttl,
        auth_mode=auth_mode,
        registration=registration,
        max_key_bytes=max_key_bytes,
        max_value_bytes=max_value_bytes,
        max_transaction_bytes=max_transaction_bytes,
        max_transaction_ops=max_transaction_ops,
        compact_min_bytes=compact_min_bytes,
        compact_dead_ratio=compact_dead_ratio,
        active_hint_bytes=active_hint_bytes,
        header_timeout=header_timeout,
        body_timeout=body_timeout,
        body_total_timeout=body_total_timeout,
        export_max_concurrent=export_max_concurrent,
        export_time_limit=export_time_limit,
        backup_time_limit=backup_time_limit,
        watch_history=watch_history,
        watch_max_watchers=watch_max_watchers,
        watch_queue_events=watch_queue_events,
        watch_heartbeat_seconds=watch_heartbeat_seconds,
        watch_stall_seconds=watch_stall_seconds,
        log_level=log_level,
        log_format=log_format,
        log_keys=log_keys,
        metrics=metrics,
    )
    raise typer.Exit(run_server(settings))


def run_server(settings: Settings) -> int:
    """Run uvicorn on ``create_app(settings)``; the exit status (0 after a clean shutdown)."""
    import uvicorn

    from filekv.engine import RecoveryInterrupted, StoreLocked
    from filekv.service.app import create_app
    from filekv.service.logs import configure_logging
    from filekv.service.protocol import ReadLimits, protocol_class

    # Before the store is opened: a port in use or a host that is not this machine's was
    # found only after recovery (seconds at ten million keys), and a bad name was a JSON log
    # line of uvicorn's and exit 3. uvicorn binds again below (this socket is closed), so a
    # program taking the port in between is still caught there, with the same message.
    refused = _cannot_listen(settings.host, settings.port)
    if settings.data_dir.exists() and not settings.data_dir.is_dir():
        refused = f"data directory {settings.data_dir} is a file, not a directory"
    if refused:
        _stderr().print(f"filekv: {refused}", markup=False, highlight=False)
        return 1
    _raise_open_file_limit()
    # Every line in one format, uvicorn's too: it gets no logging config of its own, and its
    # access log is replaced by the application's (service/logs.py).
    configure_logging(settings.log_level, settings.log_format)
    app = create_app(settings)
    startup_errors: list[BaseException] = []
    app.router.lifespan_context = _remember_startup_error(
        app.router.lifespan_context, startup_errors
    )
    # The lifespan's failure is reported below in one line; uvicorn's traceback would bury it.
    uvicorn_error = logging.getLogger("uvicorn.error")
    quiet = _DropStartupTraceback(startup_errors)
    uvicorn_error.addFilter(quiet)
    messages = _StartupMessages()
    uvicorn_error.addFilter(messages)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        # httptools, with header size and read time limits enforced while it parses.
        http=protocol_class(
            ReadLimits(
                header_timeout=settings.header_timeout,
                body_timeout=settings.body_timeout,
                body_total_timeout=settings.body_total_timeout,
            )
        ),
        lifespan="on",
        forwarded_allow_ips=settings.forwarded_allow_ips,
        # uvicorn waits, at a shutdown, for every connection to close. One whose answer the
        # app cut off (a backup or export stopped by SIGTERM) is closed by uvicorn with a
        # flush first: to a client that reads nothing, that close never completes, and the
        # process never exits (seen once in about ten runs of the stalled-backup e2e test:
        # protocol.py aborts such a connection only if its writes are already paused when the
        # signal comes). After this long, the remaining requests are cancelled and the store
        # is closed as usual.
        timeout_graceful_shutdown=SHUTDOWN_GRACE_SECONDS,
        log_level=settings.log_level,
        log_config=None,
        access_log=False,
    )
    server = uvicorn.Server(config)
    app.state.stop_requested = lambda: server.should_exit
    code = 0
    stop = _StopOnSignal(server)
    try:
        with stop:
            server.run()
    except SystemExit as exc:  # uvicorn exits on a failed startup or an unusable port
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        uvicorn_error.removeFilter(quiet)
        uvicorn_error.removeFilter(messages)
    if messages.listen_error is not None:
        refusal = _listen_refusal(settings.host, settings.port, messages.listen_error)
        _stderr().print(f"filekv: {refusal}", markup=False, highlight=False)
        return 1
    if startup_errors:
        error = startup_errors[0]
        where = settings.data_dir.resolve()
        if isinstance(error, RecoveryInterrupted):
            # Asked to stop while still reading the files: recovery had changed nothing yet.
            _stderr().print(
                f"filekv: stopped while opening {where}; nothing was changed",
                markup=False,
                highlight=False,
            )
            return 0
        if isinstance(error, StoreLocked):
            _stderr().print(
                f"filekv: data directory {where} is in use by another process; not starting",
                markup=False,
                highlight=False,
            )
        else:
            _stderr().print(
                f"filekv: could not start on data directory {where}: {error}",
                markup=False,
                highlight=False,
            )
        return 1
    if code == 0 and not server.started:
        return 1
    return code


# The most descriptors serve asks for: far beyond what it uses (a connection each, a segment each).
MAX_OPEN_FILES: Final = 1 << 20


def _raise_open_file_limit() -> None:
    """Raise this process's soft limit on open files to its hard limit, as Go's runtime does for
    every program: the usual soft limit (1,024) is below the default watch_max_watchers (2,000
    streams, a descriptor each), and every sealed segment keeps a descriptor, so past ~1,000
    segments (64 GiB at the default segment size) every rotation failed with "Too many open
    files". The hard limit is the administrator's; only the soft one moves, and only up."""
    try:
        import resource
    except ImportError:  # not a POSIX system
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = MAX_OPEN_FILES if hard == resource.RLIM_INFINITY else min(hard, MAX_OPEN_FILES)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        with suppress(ValueError, OSError):  # refused: keep the limit it has
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def _cannot_listen(host: str, port: int) -> str | None:
    """Why the server could not listen on ``host``:``port`` (one line), or None if it can."""
    import socket

    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        with socket.socket(family, kind, proto) as probe:
            # As uvicorn's own socket: a port left in TIME_WAIT by the last run is usable.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as exc:
        return _listen_refusal(host, port, exc)
    return None


def _listen_refusal(host: str, port: int, exc: OSError) -> str:
    """The line that says why listening on ``host``:``port`` failed, and what to change."""
    import socket

    if exc.errno == errno.EADDRINUSE:
        return (
            f"port {port} on {host} is in use by another program;"
            " choose another with --port or FILEKV_PORT"
        )
    if isinstance(exc, socket.gaierror):
        return f"cannot listen on {host!r}: not an address or a known host name ({exc.strerror})"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"cannot listen on {host}: not an address of this machine (--host or FILEKV_HOST)"
    return f"cannot listen on {host} port {port}: {exc.strerror or exc}"


class _StopOnSignal:
    """SIGINT/SIGTERM handlers for around ``server.run()``: a signal means a clean exit 0.

    While it serves, uvicorn installs its own handlers (graceful shutdown); when it is done it
    puts back the ones it found, these, and raises the captured signal again so that they run.
    Python's defaults would turn that into death by SIGTERM (-15) or a KeyboardInterrupt after a
    clean shutdown; these handlers just ask the server to stop, which covers a signal that
    arrives before uvicorn's handlers are in place too.
    """

    _SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, server: uvicorn.Server) -> None:
        self.server = server
        self.previous: dict[int, Any] = {}

    def handle(self, signum: int, frame: FrameType | None) -> None:
        self.server.should_exit = True

    def __enter__(self) -> _StopOnSignal:
        # Handlers can only be set from the main thread (uvicorn skips its own there too).
        if threading.current_thread() is threading.main_thread():
            self.previous = {sig: signal.signal(sig, self.handle) for sig in self._SIGNALS}
        return self

    def __exit__(self, *exc_info: object) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


Lifespan = Callable[[Any], AbstractAsyncContextManager[Any]]


def _remember_startup_error(lifespan: Lifespan, errors: list[BaseException]) -> Lifespan:
    """Wrap a lifespan so that an exception raised before it is up lands in ``errors``."""

    @asynccontextmanager
    async def wrapped(app: Any) -> AsyncIterator[Any]:
        started = False
        try:
            async with lifespan(app) as state:
                started = True
                _freeze_startup_heap()
                yield state
        except BaseException as exc:
            if not started:
                errors.append(exc)
            raise

    return wrapped


def _freeze_startup_heap() -> None:
    """Leave what exists once the server is up (the imported modules, the app, the recovered
    index) out of every later garbage collection.

    Requests keep allocating objects that outlive a young collection (each waits for its fsync),
    so full collections come every half second or so under load; each one walked the whole heap,
    hundreds of thousands of objects that never become garbage, for 40 to 70 ms with nothing to
    collect, stalling every request (measured under POST /batch: 36 such pauses in 17 s, a
    tenth of the server's time). ``gc.freeze`` is meant for this: collect once, then move the
    survivors to a generation no collection visits. Only ``filekv serve`` does it; objects that
    become garbage later are still freed by reference counting."""
    gc.collect()
    gc.freeze()


class _DropStartupTraceback(logging.Filter):
    """Hide the traceback of a failed lifespan startup (``run_server`` prints a one-line reason).

    Starlette sends the traceback as the ``lifespan.startup.failed`` message and uvicorn logs it;
    only that one is dropped, and only once the startup error has been recorded.
    """

    def __init__(self, startup_errors: list[BaseException]) -> None:
        super().__init__()
        self.startup_errors = startup_errors

    def filter(self, record: logging.LogRecord) -> bool:
        return not (self.startup_errors and record.getMessage().startswith("Traceback"))


class _StartupMessages(logging.Filter):
    """uvicorn's start-up lines, for a newcomer: where the docs are, and why it cannot listen.

    "Uvicorn running on http://H:P" gets the docs URL added. A port already taken (or a host
    that is not this machine's) is logged by uvicorn as a bare ``[Errno 98]``; that record is
    dropped and remembered, and ``run_server`` says which setting to change instead.
    """

    def __init__(self) -> None:
        super().__init__()
        self.listen_error: OSError | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, OSError):  # uvicorn's bind or name lookup failed
            self.listen_error = record.msg
            return False
        if isinstance(record.msg, str) and record.msg.startswith("Uvicorn running on "):
            url = record.getMessage().removeprefix("Uvicorn running on ").partition(" ")[0]
            record.msg = f"filekv serving {url}; API docs at {url}/docs (press CTRL+C to quit)"
            record.args = ()
            record.__dict__.pop("color_message", None)  # uvicorn's coloured copy of the line
        return True


# -- users ---------------------------------------------------------------------------------------

PasswordStdinOption = Annotated[
    bool,
    typer.Option(
        "--password-stdin", help="Read the password from the first line of stdin (scripts)."
    ),
]
UserNameArgument = Annotated[
    str, typer.Argument(help="User name (matched whatever its case).", show_default=False)
]


class RoleChoice(StrEnum):
    """The roles ``filekv user set-role`` takes (``users.ROLES``; a test keeps them equal)."""

    user = "user"
    admin = "admin"


def _read_password(password_stdin: bool, prompt: str = "Password") -> str:
    if password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    password: str = typer.prompt(prompt, hide_input=True, confirmation_prompt=True)
    return password


def _auth(data_dir: Path | None, *, existing: bool = True) -> AuthService:
    """The auth service on the data directory (imported late: ``--help`` stays fast).

    ``existing``: the directory must be there already (all but ``user add``, which may make the
    first admin before the first ``serve``): a typo in --data-dir listed no users, exit 0."""
    from filekv.service.auth import AuthService

    settings = _settings(data_dir=data_dir)
    if existing and not settings.data_dir.is_dir():
        raise _fail(f"no data directory at {settings.data_dir.resolve()}")
    _say_service_warnings()
    return AuthService(settings.data_dir, token_ttl=settings.token_ttl, registration="closed")


class _CommandLog(logging.Handler):
    """The service's log lines in a user command: a warning as ``filekv: warning: ...``; an
    error not at all, as the command says it as its own failure, in one line. Without a
    handler, Python's last resort printed the server's line for a damaged users.json ("...;
    logins and registrations are refused until it is fixed") before the command's own."""

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR:
            return
        sys.stderr.write(f"filekv: warning: {' '.join(self.format(record).splitlines())}\n")
        sys.stderr.flush()


def _say_service_warnings() -> None:
    service = logging.getLogger("filekv.service")
    if not any(isinstance(handler, _CommandLog) for handler in service.handlers):
        service.addHandler(_CommandLog(logging.WARNING))


def _users_file_failure(exc: BaseException) -> typer.Exit:
    """Exit 1 with what is wrong with ``users.json`` (the operator's own file: say it all)."""
    from filekv.service.auth import UsersDiskFull
    from filekv.service.users import UsersFileCorrupt

    cause = exc.__cause__
    if isinstance(exc, UsersDiskFull):
        return _fail("the disk is full: users.json was not changed (free some space and retry)")
    if isinstance(cause, UsersFileCorrupt):
        return _fail(f"{_corrupt_users_file(cause)}; fix users.json or restore it from a backup")
    return _fail(f"{cause or exc}; fix users.json or restore it from a backup")


_NOT_USERS_FILE: Final = ": not a filekv users file"
_USERS_FILE_SHAPE: Final = 'not the JSON object filekv writes, {"format": 1, "users": {...}}'


def _corrupt_users_file(corrupt: BaseException) -> str:
    """``PATH: not a filekv users file (REASON)``, the reason in plain words: the server's log
    line names the exception that stopped the parsing, such as "AttributeError: 'list' object
    has no attribute 'get'" for a file holding ``[1, 2]``."""
    text = str(corrupt)
    end = text.find(_NOT_USERS_FILE + " (")
    if end < 0:
        return text
    head = text[: end + len(_NOT_USERS_FILE)]
    error = corrupt.__cause__
    if isinstance(error, json.JSONDecodeError):
        reason = f"not valid JSON: {error.msg} at line {error.lineno} column {error.colno}"
    elif isinstance(error, UnicodeDecodeError):
        reason = "not UTF-8 text"
    elif isinstance(error, KeyError):
        reason = "a required field is missing"
    elif isinstance(error, AttributeError) or (
        isinstance(error, TypeError) and not str(error).startswith("a ")  # not users.py's own
    ):
        reason = _USERS_FILE_SHAPE
    elif isinstance(error, ValueError | TypeError):  # users.py's own words: "unknown format"...
        reason = str(error)
    else:
        return text
    return f"{head} ({reason})"


def _wait_for_running_server() -> None:
    """Return only once a server running on the directory has seen the change.

    A server looks at ``users.json`` at most every ``RELOAD_INTERVAL`` seconds on token checks;
    waiting that long (and a little) means that when this command exits, tokens it revoked are
    refused.
    """
    from filekv.service.users import RELOAD_INTERVAL

    time.sleep(RELOAD_INTERVAL + 0.1)


@user_app.command("add")
def user_add(
    name: Annotated[
        str,
        typer.Argument(
            help="User name: 1-64 of A-Z, a-z, 0-9, '_', '.', '-', starting with a letter or "
            "digit; unique whatever the case."
        ),
    ],
    data_dir: Annotated[Path | None, typer.Option(help=_help("data_dir"))] = None,
    password_stdin: PasswordStdinOption = False,
    admin: Annotated[
        bool,
        typer.Option("--admin", help="Make the user an admin (may break the transaction lock)."),
    ] = False,
) -> None:
    """Add a user (works whether registration is open or closed, and while serving)."""
    from filekv.service.auth import UsernameTaken, UsersUnavailable
    from filekv.service.users import USERNAME_RULE, InvalidUser, is_valid_username

    if not is_valid_username(name):  # before asking for a password twice, not after
        raise _fail(f"invalid user name {name!r}: {USERNAME_RULE}", 2)
    auth = _auth(data_dir, existing=False)
    password = _read_password(password_stdin)
    try:
        auth.add_user(name, password, role="admin" if admin else "user")
    except InvalidUser as exc:
        raise _fail(str(exc), 2) from None
    except UsernameTaken:
        raise _fail(f"user {name!r} already exists (names are unique whatever the case)") from None
    except UsersUnavailable as exc:
        raise _users_file_failure(exc) from None
    typer.echo(f"added user {name} (admin)" if admin else f"added user {name}")


@user_app.command("passwd")
def user_passwd(
    name: UserNameArgument,
    data_dir: Annotated[Path | None, typer.Option(help=_help("data_dir"))] = None,
    password_stdin: PasswordStdinOption = False,
) -> None:
    """Set a user's password; every token the user holds stops working (also while serving)."""
    password = _read_password(password_stdin, "New password")
    changed = _change_user(name, data_dir, lambda auth: auth.set_password(name, password))
    typer.echo(f"changed the password of {changed}; its tokens are revoked")


def _change_user(name: str, data_dir: Path | None, change: Callable[[AuthService], str]) -> str:
    """Run ``change`` on the users file; its answer once a running server has seen it."""
    from filekv.service.auth import UsersUnavailable
    from filekv.service.users import InvalidUser, UnknownUser

    auth = _auth(data_dir)
    try:
        changed = change(auth)
    except InvalidUser as exc:  # a new password that breaks the rules
        raise _fail(str(exc), 2) from None
    except UnknownUser:
        raise _fail(f"no user {name!r}") from None
    except UsersUnavailable as exc:
        raise _users_file_failure(exc) from None
    _wait_for_running_server()
    return changed


@user_app.command("revoke")
def user_revoke(
    name: UserNameArgument,
    data_dir: Annotated[Path | None, typer.Option(help=_help("data_dir"))] = None,
) -> None:
    """Kill every token of a user at once, also on a running server; the password stays."""
    revoked = _change_user(name, data_dir, lambda auth: auth.revoke_tokens(name))
    typer.echo(f"revoked every token of {revoked}")


@user_app.command("remove")
def user_remove(
    name: UserNameArgument,
    data_dir: Annotated[Path | None, typer.Option(help=_help("data_dir"))] = None,
) -> None:
    """Remove a user; their tokens stop working at once, also on a running server."""
    removed = _change_user(name, data_dir, lambda auth: auth.remove_user(name))
    typer.echo(f"removed user {removed}")


@user_app.command("set-role")
def user_set_role(
    name: UserNameArgument,
    role: Annotated[
        RoleChoice,
        typer.Argument(help="admin (may break the transaction lock) or user.", show_default=False),
    ],
    data_dir: Annotated[Path | None, typer.Option(help=_help("data_dir"))] = None,
) -> None:
    """Make a user an admin or a plain user; a running server obeys before this returns."""
    changed = _change_user(name, data_dir, lambda auth: auth.set_role(name, role.value))
    typer.echo(f"{changed} is now {'an admin' if role is RoleChoice.admin else 'a user'}")


@user_app.command("list")
def user_list(
    data_dir: Annotated[Path | None, typer.Option(help=_help("data_dir"))] = None,
) -> None:
    """List the users, one per line: the name, a tab, the role (user or admin)."""
    from filekv.service.auth import UsersUnavailable

    try:
        roles = _auth(data_dir).roles()
    except UsersUnavailable as exc:
        raise _users_file_failure(exc) from None
    for username, role in roles:
        typer.echo(f"{username}\t{role}")


# -- compact -------------------------------------------------------------------------------------


@local_app.command()
def compact(data_dir: Annotated[Path | None, typer.Option(help=_help("data_dir"))] = None) -> None:
    """Compact the store now (rewrite live data, drop dead bytes) and print the figures.

    The server must not be running on the directory: the store allows one process at a time.
    """
    from rich.console import Console
    from rich.table import Table

    from filekv.engine import Store, StoreError, StoreLocked

    settings = _settings(data_dir=data_dir)
    if not settings.data_dir.is_dir():
        raise _fail(f"no data directory at {settings.data_dir.resolve()}")
    try:
        with Store.open(settings.data_dir, settings.store_options(auto_compact=False)) as db:
            before = db.stats()
            db.compact()
            after = db.stats()
    except StoreLocked:
        raise _fail(
            f"data directory {settings.data_dir.resolve()} is in use (is a server running?)"
        ) from None
    except StoreError as exc:
        raise _fail(f"compaction failed: {exc}") from None

    table = Table(title=f"compacted {settings.data_dir}")
    table.add_column("")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    for field in ("keys", "disk_bytes", "live_bytes", "segments"):
        table.add_row(field, f"{getattr(before, field):,}", f"{getattr(after, field):,}")
    Console().print(table)


def _skip_httpx_cli() -> None:
    """Have ``import httpx`` leave out httpx's own command line (``httpx._main``).

    ``httpx/__init__`` imports it for ``httpx.main``, and with it click, pygments and rich's
    console, progress and syntax: about 80 ms, a fifth of what ``filekv get`` imports, for a
    program this process never runs (encode/httpx#3547 would import it only for ``python -m
    httpx``). When that import fails, as without the ``httpx[cli]`` extra, httpx defines a stub
    ``main`` instead; a ``None`` in ``sys.modules`` makes it fail.
    """
    if "httpx" not in sys.modules:
        sys.modules["httpx._main"] = None  # type: ignore[assignment]


def main() -> None:
    """Console-script entry point (``filekv``)."""
    _skip_httpx_cli()
    app()


if __name__ == "__main__":
    main()
