"""The users file: atomic, private, shared safely between threads and processes, SIGKILL-proof."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from filekv.service.auth import AuthService, UsernameTaken
from filekv.service.users import InvalidUser, UserFile, UsersFileCorrupt

PASSWORD = "correct horse battery"
# Minimal argon2id cost: these tests are about the file, not the hash.
FAST_HASHER = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


def service(data_dir: Path) -> AuthService:
    return AuthService(data_dir, token_ttl=60, registration="open", hasher=FAST_HASHER)


@pytest.mark.parametrize(
    ("username", "password"),
    [
        ("", PASSWORD),
        ("a" * 65, PASSWORD),
        ("with space", PASSWORD),
        ("slash/y", PASSWORD),
        ("nul\x00", PASSWORD),
        ("trailing\n", PASSWORD),
        ("ok", "short"),
        ("ok", "x" * 1025),
    ],
)
def test_add_user_rejects_bad_names_and_passwords(
    tmp_path: Path, username: str, password: str
) -> None:
    auth = service(tmp_path)
    with pytest.raises(InvalidUser):
        auth.add_user(username, password)
    assert not (tmp_path / "users.json").exists()


def test_add_user_taken_name_raises(tmp_path: Path) -> None:
    auth = service(tmp_path)
    auth.add_user("alice", PASSWORD)
    with pytest.raises(UsernameTaken):
        auth.add_user("alice", "another password")


def test_users_file_concurrent_registrations_of_one_name_give_one_user(tmp_path: Path) -> None:
    auths = [service(tmp_path) for _ in range(2)]  # two "processes" sharing the directory
    outcomes: list[str] = []

    def register(i: int) -> None:
        try:
            auths[i % 2].register("alice", f"password number {i}")
            outcomes.append("ok")
        except UsernameTaken:
            outcomes.append("taken")

    threads = [threading.Thread(target=register, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["ok"] + ["taken"] * 7
    assert UserFile(tmp_path).usernames() == ["alice"]


def test_users_file_concurrent_registrations_of_many_names_lose_none(tmp_path: Path) -> None:
    auths = [service(tmp_path) for _ in range(3)]
    threads = [
        threading.Thread(target=auths[i % 3].register, args=(f"user{i}", PASSWORD))
        for i in range(30)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert UserFile(tmp_path).usernames() == sorted(f"user{i}" for i in range(30))


@pytest.mark.parametrize(
    "content",
    [b"", b"{", b"[]", b'{"format": 99, "users": {}}', b'{"format": 1, "users": {"a": 1}}'],
)
def test_users_file_that_is_not_one_is_refused(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "users.json").write_bytes(content)
    with pytest.raises(UsersFileCorrupt):
        UserFile(tmp_path).usernames()


def test_users_file_stale_temp_files_are_removed_on_next_write(tmp_path: Path) -> None:
    stale = tmp_path / ".users.json.12345.678.new"
    stale.write_text("half a file")
    service(tmp_path).add_user("alice", PASSWORD)
    assert not stale.exists()
    assert UserFile(tmp_path).usernames() == ["alice"]


def test_users_file_mode_is_0600_even_with_a_loose_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        service(tmp_path).add_user("alice", PASSWORD)
    finally:
        os.umask(old)
    assert (tmp_path / "users.json").stat().st_mode & 0o777 == 0o600


_WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from argon2 import PasswordHasher
    from filekv.service.auth import AuthService

    auth = AuthService(Path(sys.argv[1]), token_ttl=60, registration="open",
                       hasher=PasswordHasher(time_cost=1, memory_cost=8, parallelism=1))
    start = int(sys.argv[2])
    for i in range(start, start + 100_000):
        auth.add_user(f"user{i}", "password" + str(i))
        print(i, flush=True)  # acknowledged: add_user returned
    """
)


def test_users_file_survives_sigkill_mid_write(tmp_path: Path) -> None:
    """Kill a writer at random moments: the file always parses and holds every acknowledged user."""
    rng = random.Random(4)
    acknowledged: list[int] = []
    for round_ in range(4):
        proc = subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(tmp_path), str(round_ * 100_000)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        wanted = rng.randint(5, 40)
        for _ in range(wanted):
            acknowledged.append(int(proc.stdout.readline()))
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate()
        acknowledged.extend(int(line) for line in out.split())
        assert proc.returncode == -signal.SIGKILL

        document = json.loads((tmp_path / "users.json").read_bytes())
        stored = set(document["users"])
        assert {f"user{i}" for i in acknowledged} <= stored
        assert (tmp_path / "users.json").stat().st_mode & 0o777 == 0o600

    auth = service(tmp_path)
    last = acknowledged[-1]
    assert auth.login(f"user{last}", f"password{last}").access_token


def test_users_file_known_answers_from_what_was_read_without_io(tmp_path: Path) -> None:
    # The login throttle's log lines ask it under the throttle's lock: users.find polled the
    # file there, and a damaged file raised out of the throttle's bookkeeping (a 503 login).
    service(tmp_path).add_user("alice", PASSWORD)
    users = UserFile(tmp_path)
    assert users.find("alice") is not None  # read once
    (tmp_path / "users.json").write_bytes(b"{")  # damaged since
    os.utime(tmp_path / "users.json", (0, 0))
    assert users.known("ALICE") and not users.known("bob") and not users.known("\u212alice")
    with pytest.raises(UsersFileCorrupt):
        users.usernames()  # what reads the file sees the damage
