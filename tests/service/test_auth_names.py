"""User names and passwords (issue 17, finding 12).

Names are unique whatever their case and kept as registered; a name starts with a letter or
digit (no ``.``, ``..``, ``__proto__``); a password is not only whitespace. A users file from
before these rules still loads and its users keep logging in.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import pytest
from argon2 import PasswordHasher
from fastapi.testclient import TestClient

from filekv.service.auth import AuthService, InvalidCredentials, UsernameTaken
from filekv.service.users import InvalidUser, UserFile

PASSWORD = "correct horse battery"
FAST_HASHER = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


def _register(client: TestClient, username: str, password: str = PASSWORD) -> int:
    answer = client.post("/auth/register", json={"username": username, "password": password})
    return answer.status_code


def _login(client: TestClient, username: str, password: str = PASSWORD) -> int:
    answer = client.post("/auth/token", data={"username": username, "password": password})
    return answer.status_code


@pytest.mark.parametrize(
    "username",
    [".", "..", "...", ".hidden", "__proto__", "_leading", "-rf", "--help", "_", "-"],
)
def test_names_that_do_not_start_with_a_letter_or_digit_are_refused(
    client: TestClient, username: str, tmp_path: Path
) -> None:
    assert _register(client, username) == 422
    with pytest.raises(InvalidUser, match="starting with a letter or digit"):
        AuthService(tmp_path / "cli", token_ttl=60, registration="closed").add_user(
            username, PASSWORD
        )


@pytest.mark.parametrize("username", ["a", "9", "a.b", "alice_1", "A-b.c_d", "x" * 64, "a.."])
def test_names_that_start_with_a_letter_or_digit_are_accepted(
    client: TestClient, username: str
) -> None:
    assert _register(client, username) == 201


@pytest.mark.parametrize("password", [" " * 8, "\t" * 8, " \t\n\r  \u00a0\u3000", " " * 1024])
def test_passwords_made_only_of_whitespace_are_refused(
    client: TestClient, password: str, tmp_path: Path
) -> None:
    assert _register(client, "alice", password) == 422
    with pytest.raises(InvalidUser, match="only whitespace"):
        AuthService(tmp_path / "cli", token_ttl=60, registration="closed").add_user(
            "alice", password
        )


def test_a_password_with_spaces_and_more_is_fine(client: TestClient) -> None:
    assert _register(client, "alice", "   x    ") == 201
    assert _login(client, "alice", "   x    ") == 200


def test_names_are_unique_whatever_the_case(client: TestClient) -> None:
    assert _register(client, "alice") == 201
    for other in ["Alice", "ALICE", "aLiCe"]:
        assert _register(client, other) == 409
    assert client.app.state.auth.usernames() == ["alice"]  # type: ignore[attr-defined]


def test_login_matches_the_name_whatever_its_case_and_shows_it_as_registered(
    client: TestClient,
) -> None:
    assert _register(client, "Alice") == 201
    answer = client.post("/auth/token", data={"username": "aLICE", "password": PASSWORD})
    assert answer.status_code == 200
    token = answer.json()["access_token"]
    me = client.get("/auth/me", headers={"Authorization": f"Bearer {token}"})
    assert me.json() == {"username": "Alice", "role": "user"}


# Non-ASCII spellings whose casefold is an ASCII user's name: the Kelvin sign, the long s, the
# "ff" ligature, the sharp s (casefold "ss").
LOOKALIKES = [
    ("kate", "\u212aate"),
    ("kate", "\u212aATE"),
    ("sam", "\u017fam"),
    ("sam", "\u017fAM"),
    ("jeff", "je\ufb00"),
    ("strasse", "stra\u00dfe"),
]


@pytest.mark.parametrize(("name", "spelling"), LOOKALIKES)
def test_login_with_a_non_ascii_lookalike_is_an_unknown_user(
    client: TestClient, name: str, spelling: str
) -> None:
    assert _register(client, name) == 201
    answer = client.post("/auth/token", data={"username": spelling, "password": PASSWORD})
    assert answer.status_code == 401
    assert answer.json()["detail"] == "incorrect username or password"  # as for "nobody"
    assert _login(client, name.upper()) == 200  # ASCII case still folds


@pytest.mark.parametrize(("name", "spelling"), LOOKALIKES)
def test_users_file_finds_no_user_by_a_non_ascii_lookalike(
    tmp_path: Path, name: str, spelling: str
) -> None:
    users = UserFile(tmp_path)
    assert users.add(name, "hash")
    assert users.find(spelling) is None and users.find(name.upper()) is not None


def test_login_with_a_lookalike_costs_one_verify_like_any_unknown_name(tmp_path: Path) -> None:
    """No timing oracle: the lookalike goes the unknown name's way, one argon2 verify against
    the dummy hash, so its answer and its time match those of a name nobody has."""
    verified: list[str] = []

    class Counting(PasswordHasher):
        def verify(self, hash: str | bytes, password: str | bytes) -> Literal[True]:
            verified.append(str(hash))
            return super().verify(hash, password)

    auth = AuthService(
        tmp_path,
        token_ttl=60,
        registration="open",
        hasher=Counting(time_cost=1, memory_cost=8, parallelism=1),
    )
    auth.add_user("kate", PASSWORD)
    for username in ["nobody", "\u212aate"]:
        with pytest.raises(InvalidCredentials):
            auth.login(username, PASSWORD)
    assert len(verified) == 2 and verified[0] == verified[1]  # the dummy hash, both times
    assert auth.login("KATE", PASSWORD).access_token


def test_case_variants_share_one_throttle(client: TestClient) -> None:
    assert _register(client, "alice") == 201
    for name in ["alice", "ALICE", "Alice", "aLice", "alicE"]:
        assert _login(client, name, "wrong password") == 401
    assert _login(client, "alice") == 429


def _legacy_file(data_dir: Path, names: list[str]) -> None:
    """A users.json as the code before issue 17 wrote it: no token_epoch, any case."""
    data_dir.mkdir(parents=True, exist_ok=True)
    users = {name: {"hash": FAST_HASHER.hash(f"{name} password")} for name in names}
    (data_dir / "users.json").write_text(json.dumps({"format": 1, "users": users}))


def test_legacy_file_with_names_differing_only_in_case_still_loads(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _legacy_file(tmp_path, ["alice", "Alice", "bob"])
    auth = AuthService(tmp_path, token_ttl=60, registration="open", hasher=FAST_HASHER)
    assert auth.usernames() == ["Alice", "alice", "bob"]
    assert "differing only in case" in caplog.text
    # Each of the pair logs in with its exact spelling; a third spelling is neither.
    for name in ["alice", "Alice"]:
        session = auth.authenticate(auth.login(name, f"{name} password").access_token)
        assert session is not None and session.username == name
    with pytest.raises(InvalidCredentials):
        auth.login("ALICE", "alice password")
    # No new name of that fold, and the rest is case-insensitive as usual.
    with pytest.raises(UsernameTaken):
        auth.add_user("aLiCe", PASSWORD)
    assert auth.login("BOB", "bob password").access_token
    # Removing one of the pair by its exact name leaves the other, which then matches any case.
    auth.remove_user("Alice")
    assert auth.usernames() == ["alice", "bob"]
    assert auth.login("ALICE", "alice password").access_token


def test_legacy_file_without_token_epochs_works_and_gets_them_when_changed(
    tmp_path: Path,
) -> None:
    _legacy_file(tmp_path, ["alice", "bob"])
    auth = AuthService(tmp_path, token_ttl=60, registration="open", hasher=FAST_HASHER)
    token = auth.login("alice", "alice password").access_token
    assert auth.authenticate(token) is not None
    auth.revoke_tokens("alice")
    assert auth.authenticate(token) is None
    stored = json.loads((tmp_path / "users.json").read_text())["users"]
    assert len(stored["alice"]["token_epoch"]) == 32
    assert stored["bob"]["token_epoch"] == ""  # untouched users keep what they had
    assert auth.login("bob", "bob password").access_token


def test_users_file_keeps_names_as_registered(tmp_path: Path) -> None:
    auth = AuthService(tmp_path, token_ttl=60, registration="open", hasher=FAST_HASHER)
    auth.add_user("MixedCase", PASSWORD)
    assert UserFile(tmp_path).usernames() == ["MixedCase"]
    assert json.loads((tmp_path / "users.json").read_text())["users"].keys() == {"MixedCase"}
