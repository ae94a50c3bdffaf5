"""The ``filekv`` command line: users, compaction, help text, and one server per data directory."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer
from serverproc import Server, serve_command
from typer.testing import CliRunner

from filekv.cli import app
from filekv.engine import Store
from filekv.service.auth import AuthService
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
    assert {"serve", "user", "user add", "user list", "compact"} <= names


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
    assert (result.exit_code, result.output) == (0, "alice\nbob\ncarol\n")
    monkeypatch.setenv("FILEKV_DATA_DIR", str(tmp_path))
    assert runner.invoke(app, ["user", "list"]).output == "alice\nbob\ncarol\n"
    assert runner.invoke(app, ["user", "list", "--data-dir", str(tmp_path / "empty")]).output == ""


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
        assert db.stats()["compactions"] >= 0
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
    "flags", [["--fsync", "sometimes"], ["--port", "70000"], ["--auth-mode", "nobody"]]
)
def test_cli_serve_rejects_bad_settings_before_starting(tmp_path: Path, flags: list[str]) -> None:
    result = runner.invoke(app, ["serve", "--data-dir", str(tmp_path), *flags])
    assert result.exit_code == 2
    assert "invalid setting" in result.output


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
    assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200


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
