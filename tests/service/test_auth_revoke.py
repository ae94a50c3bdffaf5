"""Revoking tokens, changing passwords, removing users (issue 17, finding 4), in-process.

Two ``AuthService`` objects on one data directory stand for the running server and the
``filekv user`` command: what the second writes to ``users.json``, the first obeys on its next
token check (``UserFile.poll``; its interval is set to 0 here, the real-server tests in
``tests/e2e/test_auth_e2e.py`` run with the real one).
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from filekv.service import users as users_module
from filekv.service.auth import AuthService, InvalidCredentials
from filekv.service.users import InvalidUser, UnknownUser

PASSWORD = "correct horse battery"
FAST_HASHER = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


def service(data_dir: Path) -> AuthService:
    return AuthService(data_dir, token_ttl=3600, registration="open", hasher=FAST_HASHER)


@pytest.fixture
def instant_reload(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(users_module, "RELOAD_INTERVAL", 0.0)


@pytest.fixture
def pair(tmp_path: Path, instant_reload: None) -> tuple[AuthService, AuthService]:
    server, cli = service(tmp_path), service(tmp_path)
    for name in ["alice", "bob"]:
        server.add_user(name, PASSWORD)
    return server, cli


def _token(auth: AuthService, name: str, password: str = PASSWORD) -> str:
    return auth.login(name, password).access_token


def test_revoke_by_another_process_kills_every_token_of_that_user_only(
    pair: tuple[AuthService, AuthService],
) -> None:
    server, cli = pair
    alice = [_token(server, "alice") for _ in range(3)]
    bob = _token(server, "bob")
    assert cli.revoke_tokens("ALICE") == "alice"
    assert [server.authenticate(t) for t in alice] == [None, None, None]
    assert server.authenticate(bob) is not None
    # The password still works: a new login gets a token that works.
    assert server.authenticate(_token(server, "alice")) is not None


def test_passwd_by_another_process_kills_tokens_and_the_old_password(
    pair: tuple[AuthService, AuthService],
) -> None:
    server, cli = pair
    old = _token(server, "alice")
    cli.set_password("alice", "a brand new password")
    assert server.authenticate(old) is None
    with pytest.raises(InvalidCredentials):
        server.login("alice", PASSWORD)
    assert server.authenticate(_token(server, "alice", "a brand new password")) is not None


def test_remove_by_another_process_kills_the_tokens_and_a_new_namesake_gets_none(
    pair: tuple[AuthService, AuthService],
) -> None:
    server, cli = pair
    old = _token(server, "alice")
    assert cli.remove_user("alice") == "alice"
    assert server.authenticate(old) is None
    with pytest.raises(InvalidCredentials):
        server.login("alice", PASSWORD)
    # A new user of the same name is someone else: the old token stays dead.
    cli.add_user("alice", PASSWORD)
    assert server.authenticate(old) is None
    assert server.usernames() == ["alice", "bob"]


def test_user_deleted_from_users_json_by_hand_loses_its_token(
    pair: tuple[AuthService, AuthService], tmp_path: Path
) -> None:
    """The attack as reported: the operator deletes a user from the file; the token worked on."""
    server, _ = pair
    token = _token(server, "alice")
    document = json.loads((tmp_path / "users.json").read_text())
    del document["users"]["alice"]
    (tmp_path / "users.json.edit").write_text(json.dumps(document))
    os.replace(tmp_path / "users.json.edit", tmp_path / "users.json")
    assert server.authenticate(token) is None


@pytest.mark.parametrize("verb", ["revoke_tokens", "remove_user"])
def test_changing_an_unknown_user_is_refused(
    pair: tuple[AuthService, AuthService], verb: str
) -> None:
    _, cli = pair
    before = (cli.users.path).read_bytes()
    with pytest.raises(UnknownUser):
        getattr(cli, verb)("carol")
    assert cli.users.path.read_bytes() == before


def test_passwd_refuses_bad_passwords_and_unknown_users(
    pair: tuple[AuthService, AuthService],
) -> None:
    _, cli = pair
    with pytest.raises(InvalidUser):
        cli.set_password("alice", " " * 10)
    with pytest.raises(InvalidUser):
        cli.set_password("alice", "short")
    with pytest.raises(UnknownUser):
        cli.set_password("carol", "long enough password")
    assert cli.login("alice", PASSWORD).access_token


def test_token_checks_stat_the_users_file_at_most_every_interval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing heavy on the hot path: 2,000 token checks, a handful of ``stat`` calls."""
    server = service(tmp_path)
    server.add_user("alice", PASSWORD)
    token = _token(server, "alice")
    monkeypatch.setattr(users_module, "RELOAD_INTERVAL", 0.05)
    stats = 0
    real_stat = os.stat

    def counting_stat(path: object, *args: object, **kwargs: object) -> os.stat_result:
        nonlocal stats
        if str(path).endswith("users.json"):
            stats += 1
        return real_stat(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(users_module.os, "stat", counting_stat)
    started = time.monotonic()
    for _ in range(2000):
        assert server.authenticate(token) is not None
    elapsed = time.monotonic() - started
    monkeypatch.undo()
    assert stats <= elapsed / 0.05 + 2, (stats, elapsed)


def test_token_check_never_waits_for_the_users_file_lock(
    pair: tuple[AuthService, AuthService],
) -> None:
    """A thread holding the users table (a write waiting for the CLI's flock) blocks nobody."""
    server, _ = pair
    token = _token(server, "alice")
    held = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with server.users._mutex:
            held.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(10)
        started = time.monotonic()
        assert server.authenticate(token) is not None
        assert time.monotonic() - started < 0.5
    finally:
        release.set()
        holder.join()
