"""Roles in ``users.json`` (issue 11): ``user`` or ``admin``, read by the server on every check.

Two ``AuthService`` objects on one data directory stand for the running server and the ``filekv
user`` command, as in ``test_auth_revoke.py``; here the server keeps the real reload interval,
since how soon a demotion takes effect is the point.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from filekv.service import users as users_module
from filekv.service.auth import AuthService, UsersUnavailable
from filekv.service.users import ROLES, UnknownUser, UserFile, UsersFileCorrupt

PASSWORD = "correct horse battery"
FAST_HASHER = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


def service(data_dir: Path) -> AuthService:
    return AuthService(data_dir, token_ttl=3600, registration="open", hasher=FAST_HASHER)


def _role_of(auth: AuthService, name: str) -> str:
    session = auth.authenticate(auth.login(name, PASSWORD).access_token)
    assert session is not None
    return session.role


def _write_users(data_dir: Path, users: dict[str, dict[str, object]]) -> None:
    data_dir.mkdir(exist_ok=True)
    (data_dir / "users.json").write_text(json.dumps({"format": 1, "users": users}))


@pytest.mark.parametrize(("role", "expected"), [("user", "user"), ("admin", "admin")])
def test_roles_add_user_stores_the_role(tmp_path: Path, role: str, expected: str) -> None:
    auth = service(tmp_path)
    auth.add_user("alice", PASSWORD, role=role)  # type: ignore[arg-type]
    assert json.loads((tmp_path / "users.json").read_text())["users"]["alice"]["role"] == expected
    assert _role_of(service(tmp_path), "alice") == expected


def test_roles_register_always_makes_a_user(tmp_path: Path) -> None:
    auth = service(tmp_path)
    auth.register("alice", PASSWORD)
    assert auth.roles() == [("alice", "user")]


def test_roles_old_users_file_without_roles_loads_everyone_as_user(tmp_path: Path) -> None:
    """A file written before roles existed (and before token epochs): everyone is a user."""
    hashed = FAST_HASHER.hash(PASSWORD)
    _write_users(tmp_path, {"alice": {"hash": hashed}, "bob": {"hash": hashed, "token_epoch": ""}})
    auth = service(tmp_path)
    assert auth.roles() == [("alice", "user"), ("bob", "user")]
    assert _role_of(auth, "alice") == "user"
    # The first change writes the role out, for every user; nobody becomes an admin by it.
    auth.set_role("bob", "admin")
    stored = json.loads((tmp_path / "users.json").read_text())["users"]
    assert {name: entry["role"] for name, entry in stored.items()} == {
        "alice": "user",
        "bob": "admin",
    }


@pytest.mark.parametrize("role", ["root", "Admin", "", None, 1, ["admin"], {"admin": True}])
def test_roles_unknown_role_in_the_file_is_damage_never_a_guess(
    tmp_path: Path, role: object
) -> None:
    _write_users(tmp_path, {"alice": {"hash": FAST_HASHER.hash(PASSWORD), "role": role}})
    with pytest.raises(UsersFileCorrupt, match="a role is not one of user, admin"):
        UserFile(tmp_path).usernames()
    with pytest.raises(UsersUnavailable):
        service(tmp_path).roles()


def test_roles_set_role_changes_only_the_role(tmp_path: Path) -> None:
    auth = service(tmp_path)
    auth.add_user("alice", PASSWORD)
    before = auth.users.find("alice")
    assert auth.set_role("ALICE", "admin") == "alice"
    after = auth.users.find("alice")
    assert before is not None and after is not None
    assert (after.role, after.password_hash, after.token_epoch) == (
        "admin",
        before.password_hash,
        before.token_epoch,  # tokens survive a role change: the role is read per check
    )


def test_roles_set_role_refuses_unknown_users_and_roles(tmp_path: Path) -> None:
    auth = service(tmp_path)
    auth.add_user("alice", PASSWORD)
    before = (tmp_path / "users.json").read_bytes()
    with pytest.raises(UnknownUser):
        auth.set_role("carol", "admin")
    with pytest.raises(ValueError, match="role must be one of"):
        auth.set_role("alice", "root")  # type: ignore[arg-type]
    assert (tmp_path / "users.json").read_bytes() == before


def test_roles_demoted_admin_is_a_user_within_the_reload_interval(tmp_path: Path) -> None:
    """The server's session carries the role as the file has it now, not as it was at login."""
    server, cli = service(tmp_path), service(tmp_path)
    server.add_user("root", PASSWORD, role="admin")
    token = server.login("root", PASSWORD).access_token
    assert (session := server.authenticate(token)) is not None and session.is_admin
    cli.set_role("root", "user")
    time.sleep(users_module.RELOAD_INTERVAL + 0.1)  # what `filekv user set-role` waits
    session = server.authenticate(token)
    assert session is not None and session.role == "user" and not session.is_admin
    cli.set_role("root", "admin")  # and promoted again, the same token is an admin's
    time.sleep(users_module.RELOAD_INTERVAL + 0.1)
    assert (session := server.authenticate(token)) is not None and session.is_admin


def test_roles_are_the_ones_the_cli_offers() -> None:
    from filekv.cli import RoleChoice

    assert tuple(choice.value for choice in RoleChoice) == ROLES == ("user", "admin")
