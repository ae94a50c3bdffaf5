"""The ``filekv`` command line: users, compaction, help text, and one server per data directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import typer
from support.server import FILEKV, Server, http_client, serve_command
from typer.testing import CliRunner

from filekv.cli import COMMANDS, app
from filekv.engine import Store
from filekv.service.auth import AuthService, InvalidCredentials
from filekv.settings import Settings

PASSWORD = "correct horse battery"

runner = CliRunner()


def _commands(command: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    """Every command under ``command`` (typer vendors click, so this goes by duck typing)."""
    found = [(path, command)]
    for name, sub in getattr(command, "commands", {}).items():
        found += _commands(sub, (*path, name))
    return found


ALL_COMMANDS = _commands(typer.main.get_command(app))


def test_cli_has_every_documented_command() -> None:
    names = {" ".join(path) for path, _ in ALL_COMMANDS}
    assert {
        "serve",
        "user",
        "user add",
        "user list",
        "user passwd",
        "user revoke",
        "user remove",
        "user set-role",
        "compact",
    } <= names


@pytest.mark.parametrize("path", [p for p, _ in ALL_COMMANDS], ids=lambda p: " ".join(p) or "-")
def test_cli_every_command_has_help(path: tuple[str, ...]) -> None:
    command = dict(ALL_COMMANDS)[path]
    assert (command.help or "").strip(), f"{path} has no help text"
    result = runner.invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output
    for param in command.params:
        if param.param_type_name == "option" and param.name != "help":
            assert (param.help or "").strip(), f"{path} {param.opts} has no help text"


def test_cli_serve_has_a_flag_for_every_setting() -> None:
    serve = dict(ALL_COMMANDS)[("serve",)]
    flags = {opt for param in serve.params for opt in getattr(param, "opts", [])}
    for field in Settings.model_fields:
        assert "--" + field.replace("_", "-") in flags


def _add(data_dir: Path, name: str, password: str = PASSWORD) -> tuple[int, str]:
    result = runner.invoke(
        app,
        ["user", "add", name, "--data-dir", str(data_dir), "--password-stdin"],
        input=password + "\n",
    )
    return result.exit_code, result.output


def test_cli_user_add_from_stdin_then_login(tmp_path: Path) -> None:
    assert _add(tmp_path, "alice") == (0, "added user alice\n")
    auth = AuthService(tmp_path, token_ttl=60, registration="closed")
    assert auth.login("alice", PASSWORD).access_token
    assert (tmp_path / "users.json").stat().st_mode & 0o777 == 0o600


def test_cli_user_add_prompts_twice_for_the_password(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["user", "add", "bob", "--data-dir", str(tmp_path)], input=f"{PASSWORD}\n{PASSWORD}\n"
    )
    assert result.exit_code == 0, result.output
    assert PASSWORD not in result.output  # hidden input
    assert AuthService(tmp_path, token_ttl=60, registration="closed").login("bob", PASSWORD)


@pytest.mark.parametrize(
    ("name", "password", "code", "message"),
    [
        ("alice", PASSWORD, 1, "already exists"),
        ("bad name", PASSWORD, 2, "username must be"),
        ("carol", "short", 2, "at least 8"),
    ],
)
def test_cli_user_add_refusals(
    tmp_path: Path, name: str, password: str, code: int, message: str
) -> None:
    _add(tmp_path, "alice")
    exit_code, output = _add(tmp_path, name, password)
    assert exit_code == code
    assert message in output


def test_cli_user_list_is_sorted_and_reads_the_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ["carol", "alice", "bob"]:
        _add(tmp_path, name)
    result = runner.invoke(app, ["user", "list", "--data-dir", str(tmp_path)])
    assert (result.exit_code, result.output) == (0, "alice\tuser\nbob\tuser\ncarol\tuser\n")
    monkeypatch.setenv("FILEKV_DATA_DIR", str(tmp_path))
    assert runner.invoke(app, ["user", "list"]).output == "alice\tuser\nbob\tuser\ncarol\tuser\n"
    (tmp_path / "empty").mkdir()
    assert runner.invoke(app, ["user", "list", "--data-dir", str(tmp_path / "empty")]).output == ""


def _user(data_dir: Path, *args: str, stdin: str | None = None) -> tuple[int, str]:
    result = runner.invoke(app, ["user", *args, "--data-dir", str(data_dir)], input=stdin)
    return result.exit_code, result.output


def _role(data_dir: Path, name: str) -> str:
    auth = AuthService(data_dir, token_ttl=60, registration="closed")
    session = auth.authenticate(auth.login(name, PASSWORD).access_token)
    assert session is not None
    return session.role


def test_cli_user_add_admin_and_list_shows_roles(tmp_path: Path) -> None:
    code, output = _user(tmp_path, "add", "root", "--admin", "--password-stdin", stdin=PASSWORD)
    assert (code, output) == (0, "added user root (admin)\n")
    assert _add(tmp_path, "alice") == (0, "added user alice\n")
    assert _user(tmp_path, "list") == (0, "alice\tuser\nroot\tadmin\n")
    assert (_role(tmp_path, "root"), _role(tmp_path, "alice")) == ("admin", "user")


@pytest.mark.parametrize(
    ("role", "message", "listed"),
    [
        ("admin", "alice is now an admin\n", "alice\tadmin\n"),
        ("user", "alice is now a user\n", "alice\tuser\n"),
    ],
)
def test_cli_user_set_role(tmp_path: Path, role: str, message: str, listed: str) -> None:
    _user(tmp_path, "add", "alice", "--admin", "--password-stdin", stdin=PASSWORD)
    _user(tmp_path, "set-role", "alice", "user")
    assert _user(tmp_path, "set-role", "ALICE", role) == (0, message)
    assert _user(tmp_path, "list") == (0, listed)
    assert _role(tmp_path, "alice") == role


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["set-role", "carol", "admin"], 1, "no user 'carol'"),
        (["set-role", "alice", "root"], 2, "Invalid value"),
        (["set-role", "alice", "ADMIN"], 2, "Invalid value"),
        (["set-role", "alice"], 2, "Missing argument"),
    ],
)
def test_cli_user_set_role_refusals(
    tmp_path: Path, args: list[str], code: int, message: str
) -> None:
    _add(tmp_path, "alice")
    before = (tmp_path / "users.json").read_bytes()
    result = runner.invoke(app, ["user", *args, "--data-dir", str(tmp_path)], terminal_width=200)
    assert (result.exit_code, message in result.output) == (code, True), result.output
    assert (tmp_path / "users.json").read_bytes() == before


def test_cli_user_list_of_a_users_file_without_roles(tmp_path: Path) -> None:
    """A ``users.json`` written before roles existed: it loads, and everyone is a user."""
    _add(tmp_path, "alice")
    _add(tmp_path, "bob")
    path = tmp_path / "users.json"
    document = json.loads(path.read_text())
    for entry in document["users"].values():
        del entry["role"]
    path.write_text(json.dumps(document))
    assert _user(tmp_path, "list") == (0, "alice\tuser\nbob\tuser\n")
    assert _role(tmp_path, "bob") == "user"


def test_cli_user_passwd_sets_the_password_and_kills_the_tokens(tmp_path: Path) -> None:
    _add(tmp_path, "alice")
    server = AuthService(tmp_path, token_ttl=60, registration="closed")
    token = server.login("alice", PASSWORD).access_token
    code, output = _user(tmp_path, "passwd", "ALICE", "--password-stdin", stdin="new secret 42\n")
    assert (code, output) == (0, "changed the password of alice; its tokens are revoked\n")
    assert server.authenticate(token) is None
    with pytest.raises(InvalidCredentials):
        server.login("alice", PASSWORD)
    assert server.login("alice", "new secret 42").access_token


def test_cli_user_passwd_prompts_twice(tmp_path: Path) -> None:
    _add(tmp_path, "bob")
    code, output = _user(tmp_path, "passwd", "bob", stdin="another password\nanother password\n")
    assert code == 0, output
    assert "another password" not in output
    assert AuthService(tmp_path, token_ttl=60, registration="closed").login(
        "bob", "another password"
    )


def test_cli_user_revoke_kills_every_token_and_keeps_the_password(tmp_path: Path) -> None:
    _add(tmp_path, "alice")
    _add(tmp_path, "bob")
    server = AuthService(tmp_path, token_ttl=60, registration="closed")
    alice = [server.login("alice", PASSWORD).access_token for _ in range(3)]
    bob = server.login("bob", PASSWORD).access_token
    assert _user(tmp_path, "revoke", "alice") == (0, "revoked every token of alice\n")
    assert [server.authenticate(t) for t in alice] == [None] * 3
    assert server.authenticate(bob) is not None
    assert server.login("alice", PASSWORD).access_token


def test_cli_user_remove_deletes_the_user(tmp_path: Path) -> None:
    _add(tmp_path, "alice")
    _add(tmp_path, "bob")
    server = AuthService(tmp_path, token_ttl=60, registration="closed")
    token = server.login("alice", PASSWORD).access_token
    assert _user(tmp_path, "remove", "Alice") == (0, "removed user alice\n")
    assert _user(tmp_path, "list") == (0, "bob\tuser\n")
    assert server.authenticate(token) is None
    assert _add(tmp_path, "alice")[0] == 0  # the name is free again; the old token stays dead
    assert server.authenticate(token) is None


@pytest.mark.parametrize(
    ("args", "stdin", "code", "message"),
    [
        (["passwd", "carol", "--password-stdin"], "long enough password\n", 1, "no user 'carol'"),
        (["passwd", "alice", "--password-stdin"], " " * 12 + "\n", 2, "only whitespace"),
        (["passwd", "alice", "--password-stdin"], "short\n", 2, "at least 8"),
        (["revoke", "carol"], None, 1, "no user 'carol'"),
        (["remove", "carol"], None, 1, "no user 'carol'"),
        (["add", "Alice", "--password-stdin"], PASSWORD + "\n", 1, "already exists"),
        (["add", "..", "--password-stdin"], PASSWORD + "\n", 2, "starting with a letter or digit"),
        (["add", "__proto__", "--password-stdin"], PASSWORD + "\n", 2, "letter or digit"),
        (["add", "carol", "--password-stdin"], " " * 8 + "\n", 2, "only whitespace"),
    ],
)
def test_cli_user_refusals(
    tmp_path: Path, args: list[str], stdin: str | None, code: int, message: str
) -> None:
    _add(tmp_path, "alice")
    before = (tmp_path / "users.json").read_bytes()
    exit_code, output = _user(tmp_path, *args, stdin=stdin)
    assert (exit_code, message in output) == (code, True), output
    assert (tmp_path / "users.json").read_bytes() == before


@pytest.mark.parametrize(
    "args",
    [
        ["list"],
        ["add", "bob", "--password-stdin"],
        ["revoke", "alice"],
        ["remove", "alice"],
        ["set-role", "alice", "admin"],
    ],
)
def test_cli_user_commands_on_a_damaged_users_file_say_what_is_wrong(
    tmp_path: Path, args: list[str]
) -> None:
    (tmp_path / "users.json").write_text('{"format": 1, "users": {"alice": {"hash": "$argon2id$x"')
    exit_code, output = _user(tmp_path, *args, stdin=PASSWORD + "\n")
    assert exit_code == 1
    assert "users.json" in output and "not a filekv users file" in output
    assert "restore it from a backup" in output
    assert "$argon2id$x" not in output


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("{not json", "not valid JSON: Expecting property name enclosed in double quotes"),
        ("[1, 2]", 'not the JSON object filekv writes, {"format": 1, "users": {...}}'),
        ('{"format": 1, "users": [1]}', "not the JSON object filekv writes"),
        ('{"format": 1, "users": {"alice": [1]}}', "not the JSON object filekv writes"),
        ('{"format": 2, "users": {}}', "unknown format"),
    ],
    ids=["not-json", "a-list", "users-a-list", "entry-a-list", "format"],
)
def test_cli_user_list_on_a_damaged_users_file_is_one_plain_line(
    tmp_path: Path, content: str, reason: str
) -> None:
    """It printed the server's log line first ("...; logins and registrations are refused until
    it is fixed", no "filekv:"), and for [1, 2] "AttributeError: 'list' object has no attribute
    'get'"."""
    (tmp_path / "users.json").write_text(content)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FILEKV_")}
    result = subprocess.run(
        [FILEKV, "user", "list", "--data-dir", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"filekv: {tmp_path / 'users.json'}: not a filekv users file (")
    assert reason in lines[0]
    assert lines[0].endswith("); fix users.json or restore it from a backup")
    assert "Error" not in lines[0] and "object has no attribute" not in lines[0]


def test_cli_user_list_says_the_service_warnings_as_its_own(tmp_path: Path) -> None:
    users = {"format": 1, "users": {"alice": {"hash": "h"}, "Alice": {"hash": "h"}}}
    (tmp_path / "users.json").write_text(json.dumps(users))
    result = subprocess.run(
        [FILEKV, "user", "list", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Alice\tuser\nalice\tuser\n"
    assert result.stderr == (
        "filekv: warning: users.json has names differing only in case (Alice, alice):"
        " each logs in only with its exact spelling\n"
    )


def test_cli_compact_keeps_data_and_reports(tmp_path: Path) -> None:
    with Store.open(tmp_path, auto_compact=False) as db:
        for round_ in range(5):
            for i in range(50):
                db.put(f"k{i}", f"v{round_}-{i}".encode())
        db.delete("k0")
    result = runner.invoke(app, ["compact", "--data-dir", str(tmp_path)], terminal_width=120)
    assert result.exit_code == 0, result.output
    for word in ["keys", "disk_bytes", "live_bytes", "segments", "before", "after"]:
        assert word in result.output
    with Store.open(tmp_path) as db:
        assert len(db) == 49
        assert db.get("k0") is None
        assert db.get("k7") == b"v4-7"
        assert db.stats().compactions >= 0
        db.check()


def test_cli_compact_refuses_a_directory_in_use(tmp_path: Path) -> None:
    with Store.open(tmp_path):
        result = runner.invoke(app, ["compact", "--data-dir", str(tmp_path)], terminal_width=300)
    assert result.exit_code == 1
    assert "in use" in result.output
    assert str(tmp_path.resolve()) in result.output


def test_cli_compact_refuses_a_missing_directory(tmp_path: Path) -> None:
    result = runner.invoke(app, ["compact", "--data-dir", str(tmp_path / "nope")])
    assert result.exit_code == 1
    assert "no data directory" in result.output


@pytest.mark.parametrize(
    "args",
    [
        ["serve", "--port", "0"],
        ["compact"],
        ["user", "list"],
        ["user", "add", "alice", "--password-stdin"],
        ["backup", "out.tar"],
        ["restore", "in.tar"],
        ["import", "in.jsonl"],
    ],
    ids=lambda args: " ".join(args[:2]),
)
@pytest.mark.parametrize("empty", [["--data-dir", ""], ["--data-dir="], ["--data-dir", " "]])
def test_cli_empty_data_dir_flag_is_refused_as_the_empty_env_is(
    tmp_path: Path, args: list[str], empty: list[str]
) -> None:
    # typer made Path("") of it, the current directory: serve and compact ran on the cwd.
    env = {k: v for k, v in os.environ.items() if not k.startswith("FILEKV_")}
    (tmp_path / "in.jsonl").write_text("")
    result = subprocess.run(
        [FILEKV, *args, *empty],
        cwd=tmp_path,
        env=env,
        input=PASSWORD + "\n",
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        "filekv: invalid setting data_dir: Value error, must not be empty"
        " (use . for the current directory)"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]  # nothing made here


@pytest.mark.parametrize(
    "flags",
    [
        ["--fsync", "sometimes"],
        ["--port", "70000"],
        ["--auth-mode", "nobody"],
        ["--transaction-max-seconds", "0"],
        ["--transaction-max-seconds", "-1"],
    ],
)
def test_cli_serve_rejects_bad_settings_before_starting(tmp_path: Path, flags: list[str]) -> None:
    result = runner.invoke(app, ["serve", "--data-dir", str(tmp_path), *flags])
    assert result.exit_code == 2
    assert "invalid setting" in result.output


def test_cli_serve_help_documents_transaction_max_seconds() -> None:
    result = runner.invoke(app, ["serve", "--help"], terminal_width=400)
    assert result.exit_code == 0
    text = " ".join(result.output.replace("│", " ").split())
    assert "--transaction-max-seconds" in text
    assert "however busy its holder" in text and "whichever of this and transaction_timeout" in text
    assert "FILEKV_TRANSACTION_MAX_SECONDS; default 300.0" in text


def test_cli_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.startswith("filekv ")


def test_cli_second_serve_on_a_directory_in_use_exits_at_once(
    make_server: Callable[..., Server], tmp_path: Path
) -> None:
    first = make_server()
    data_dir = first.data_dir
    url = first.url
    env = {k: v for k, v in os.environ.items() if not k.startswith("FILEKV_")}
    second = subprocess.run(
        serve_command(data_dir, 0),  # any port: it must never get as far as listening
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert second.returncode != 0
    assert str(data_dir.resolve()) in second.stderr
    assert "in use" in second.stderr
    assert "Uvicorn running" not in second.stderr
    # the first server is untouched
    with http_client(url, timeout=5) as http:
        assert http.get("/healthz").status_code == 200


def test_cli_serve_on_a_port_in_use_says_which_setting_to_change(
    make_server: Callable[..., Server], tmp_path: Path
) -> None:
    first = make_server()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FILEKV_")}
    second = subprocess.run(
        serve_command(tmp_path / "other", first.port),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode == 1
    lines = second.stderr.strip().splitlines()
    assert lines[-1] == (
        f"filekv: port {first.port} on 127.0.0.1 is in use by another program;"
        " choose another with --port or FILEKV_PORT"
    )
    assert "Errno" not in second.stderr
    assert not (tmp_path / "other").exists()  # found before the store was opened (or made)
    with first.client(timeout=5) as http:
        assert http.get("/healthz").status_code == 200


@pytest.mark.parametrize(
    ("host", "says"),
    [
        ("999.1.1.1", "not an address or a known host name"),  # was exit 3, a JSON log line
        ("no-such-host.invalid", "not an address or a known host name"),
        ("192.0.2.77", "not an address of this machine"),  # TEST-NET-1: nobody's here
    ],
)
def test_cli_serve_on_a_host_it_cannot_listen_on_says_so_in_one_line(
    tmp_path: Path, host: str, says: str
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FILEKV_")}
    run = subprocess.run(
        serve_command(tmp_path / "data", 0, "--host", host),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 1
    assert run.stderr.splitlines() == [run.stderr.strip()]  # one line
    assert run.stderr.startswith(f"filekv: cannot listen on {host}") or run.stderr.startswith(
        f"filekv: cannot listen on '{host}'"
    )
    assert says in run.stderr
    assert not (tmp_path / "data").exists()  # before the store was opened (or made)


def test_cli_serve_on_a_file_for_data_dir_says_so(tmp_path: Path) -> None:
    # It said "cannot open data directory ...: File exists", after uvicorn had started.
    (tmp_path / "data").write_text("not a store")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FILEKV_")}
    run = subprocess.run(
        serve_command(tmp_path / "data", 0), env=env, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 1
    assert (
        run.stderr.strip()
        == f"filekv: data directory {tmp_path / 'data'} is a file, not a directory"
    )


def test_cli_serve_start_up_line_names_the_docs_url(make_server: Callable[..., Server]) -> None:
    server = make_server()
    log = server.log_path.read_text()
    assert f"filekv serving {server.url}; API docs at {server.url}/docs" in log


README = Path(__file__).resolve().parent.parent / "README.md"


@pytest.mark.parametrize("path", [p for p, _ in ALL_COMMANDS if p], ids=" ".join)
def test_readme_documents_every_command(path: tuple[str, ...]) -> None:
    assert f"filekv {' '.join(path)}" in README.read_text()


@pytest.mark.parametrize("field", list(Settings.model_fields))
def test_readme_settings_table_has_every_setting(field: str) -> None:
    rows = [line for line in README.read_text().splitlines() if line.startswith(f"| `{field}` |")]
    assert len(rows) == 1, f"no settings-table row for {field}"
    assert f"`FILEKV_{field.upper()}`" in rows[0]
    default = Settings.model_fields[field].default
    assert f"`{default}`" in rows[0]


def test_readme_documents_every_route(tmp_path: Path) -> None:
    from filekv.service.app import create_app

    text = README.read_text()
    paths = create_app(Settings(data_dir=tmp_path)).openapi()["paths"]
    operations = [(m.upper(), path) for path, item in paths.items() for m in item]
    assert len(operations) >= 14
    for method, path in operations:
        assert f"`{method} {path}" in text, f"{method} {path} is missing from the README"


def test_serve_freezes_the_startup_heap_once_the_lifespan_is_up() -> None:
    # filekv serve leaves everything alive at startup out of later collections (cli.py,
    # _freeze_startup_heap); a lifespan that fails to start freezes nothing.
    import asyncio
    import gc
    from contextlib import asynccontextmanager

    from filekv.cli import _remember_startup_error

    seen: list[int] = []

    @asynccontextmanager
    async def lifespan(_: Any) -> Any:
        seen.append(gc.get_freeze_count())
        yield None

    @asynccontextmanager
    async def broken(_: Any) -> Any:
        raise OSError("no such data dir")
        yield None

    async def serve(wrapped: Any) -> int:
        async with wrapped(None):
            return gc.get_freeze_count()

    errors: list[BaseException] = []
    try:
        assert gc.get_freeze_count() == 0
        with pytest.raises(OSError):
            asyncio.run(serve(_remember_startup_error(broken, errors)))
        assert gc.get_freeze_count() == 0 and len(errors) == 1
        frozen = asyncio.run(serve(_remember_startup_error(lifespan, errors)))
        assert seen == [0]  # frozen after the lifespan is up, not before
        assert frozen > 0
    finally:
        gc.unfreeze()


def test_cli_start_up_loads_no_store_archive_or_web_code() -> None:
    """What every ``filekv`` command imports before it runs: not the engine's store, the
    backup archive's model, nor the web app (a third of ``filekv get``'s start-up, once); nor
    the settings or the client, which only some commands need."""
    heavy = (
        "filekv.engine.store",
        "filekv.backup_archive",
        "filekv.service.app",
        "fastapi",
        "filekv.settings",
        "filekv.client",
    )
    code = (
        "import json, sys, filekv.cli\n"
        f"print(json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)))\n"
    )
    assert _fresh_python(code) == []


def _fresh_python(code: str) -> Any:
    """Run ``code`` in a fresh interpreter with no ``FILEKV_*`` variables: the JSON of its last
    line of output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FILEKV_")}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


def _run_main(args: list[str], watched: tuple[str, ...]) -> tuple[int, list[str]]:
    """Run ``filekv ARGS`` as the console script does, in a fresh interpreter: its exit status
    and which of the ``watched`` modules it had imported by then."""
    code = (
        "import json, sys\n"
        "from filekv.cli import main\n"
        f"sys.argv = ['filekv', *{args!r}]\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as exit:\n"
        f"    loaded = sorted(m for m in {watched!r} if m in sys.modules)\n"
        "    print(json.dumps([exit.code, loaded]))\n"
    )
    status, loaded = _fresh_python(code)
    return status, loaded


def test_cli_client_verb_builds_and_imports_only_the_client() -> None:
    """``filekv get`` builds ``get`` alone: not ``serve`` or the user commands (whose flags read
    the settings' pydantic model), not the other modules' verbs; nor does it import httpx's own
    command line (rich, pygments). Together about half of its start-up."""
    heavy = (
        "filekv.settings",
        "pydantic_settings",
        "filekv.backup_cli",
        "filekv.transfer_cli",
        "filekv.engine",
        "rich.console",
        "pygments",
    )
    status, loaded = _run_main(["get", "k", "--url", "http://127.0.0.1:9"], heavy)
    assert status == 7  # nothing listens on port 9: the verb ran, and could not connect
    assert loaded == []


def test_cli_serve_imports_no_client_code(tmp_path: Path) -> None:
    """``filekv serve`` builds ``serve`` alone: it imports neither the client nor its verbs."""
    client = ("filekv.client_cli", "filekv.client", "httpx", "filekv.backup_cli")
    # An invalid setting: serve stops there, with everything it needs to start imported.
    status, loaded = _run_main(["serve", "--port", "70000", "--data-dir", str(tmp_path)], client)
    assert status == 2
    assert loaded == []


def test_cli_backup_over_http_imports_no_settings(tmp_path: Path) -> None:
    """``filekv backup --url`` reads no data directory: the settings (pydantic-settings, about
    0.15 s) are imported only by ``--data-dir`` and ``restore``."""
    args = ["backup", str(tmp_path / "b.tar"), "--url", "http://127.0.0.1:9"]
    status, loaded = _run_main(args, ("filekv.settings", "pydantic_settings"))
    assert status == 7
    assert loaded == []


def test_cli_lazy_command_table_matches_the_modules() -> None:
    """``filekv.cli.COMMANDS`` names every command each module registers, in its order: a verb
    left out of it would be missing from ``filekv``."""
    from filekv import cli, client_cli

    assert tuple(verb.__name__ for verb in client_cli.VERBS) == cli.CLIENT_VERBS
    for source in set(cli.COMMANDS.values()):
        registered = list(typer.main.get_group(source()).commands)
        assert registered == [name for name, of in cli.COMMANDS.items() if of is source]
    listing = runner.invoke(app, ["--help"])
    assert listing.exit_code == 0
    for name in cli.COMMANDS:
        assert f"│ {name} " in listing.output
    assert "Exit codes of the client verbs" in listing.output


@pytest.mark.parametrize("name", list(COMMANDS))
def test_cli_help_lists_each_command_as_built(name: str) -> None:
    """``filekv --help`` lists summaries of the commands, not the commands: the summary has
    every field typer's list reads, equal to the command's."""
    from filekv import cli

    built, summary = cli._build(name), cli._summary(name)
    for field in ("name", "help", "short_help", "hidden", "deprecated", "rich_help_panel"):
        assert getattr(summary, field) == getattr(built, field), field


def test_cli_help_builds_no_command() -> None:
    """``filekv --help`` (and ``filekv`` alone) builds no command's options: ``serve``'s and the
    user commands' import the settings; listing the commands with them took 0.3 s more."""
    for args in (["--help"], []):
        status, loaded = _run_main(args, ("filekv.settings", "pydantic_settings"))
        assert status == (0 if args else 2)
        assert loaded == []


def test_cli_user_commands_on_a_missing_data_dir_say_so(tmp_path: Path) -> None:
    # A typo in --data-dir listed no users and exited 0 (and revoke said "no user").
    for args in (
        ["list"],
        ["revoke", "alice"],
        ["remove", "alice"],
        ["set-role", "alice", "admin"],
    ):
        code, output = _user(tmp_path / "typo", *args)
        assert code == 1, args
        assert output.strip() == f"filekv: no data directory at {tmp_path / 'typo'}", args
    assert not (tmp_path / "typo").exists()


def test_cli_user_add_refuses_a_bad_name_before_asking_for_a_password(tmp_path: Path) -> None:
    # It asked for the password twice, then refused the name.
    code, output = _user(tmp_path, "add", "bad name", stdin="")
    assert code == 2
    assert "Password" not in output
    assert "invalid user name 'bad name'" in output


@pytest.mark.parametrize(
    ("args", "sentence"),
    [
        (["serve", "--help"], "the store flushed and closed) and exits with status 0"),
        (["watch", "--help"], "a put's value (both as JSON strings)"),
        (["--help"], "(over HTTP, as an admin) or offline (--data-dir)"),
    ],
)
def test_cli_help_keeps_sentences_whole(args: list[str], sentence: str) -> None:
    # typer's rich help kept the docstrings' line breaks, then wrapped again to the terminal:
    # "the store flushed" / "and closed" came out broken in the middle of the sentence.
    result = runner.invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert sentence in result.output
