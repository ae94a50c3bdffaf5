"""Login abuse (issue 4, item 8; issue 17, finding 8).

Repeated failed logins for one user name from one address are answered 429 with a whole-number
``Retry-After`` (``LoginThrottle``: after ``max_failures`` failures within ``window`` seconds, a
lock-out that doubles up to ``max_delay``, never permanent); the real user logs in once the
lock-out is over, and other users are never affected. Passwords and argon2 hashes never appear
in a response body, nor in a real server's stdout/stderr at debug level.

Issue 17: an anonymous client cannot turn the throttle against a named user. Its guesses lock
only its own (name, address) pair, so the owner logging in from elsewhere is let in; one address
spraying names is locked by its own budget; many addresses guessing one name are slowed to one
guess a second, and never the owner's known address. Attempts are reserved before the hash, so
60 parallel guesses get exactly 5 password checks (the reported race got 8).

Time is moved with the ``clock`` AuthService accepts (no sleeping); the real-server tests use
the default throttle (5 failures, then 30 s) and real client addresses (127.0.0.x).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

import httpx
import pytest
from argon2 import PasswordHasher
from fastapi import FastAPI
from fastapi.testclient import TestClient
from support.server import Server

from filekv.client._protocol import tls_verify
from filekv.service.app import create_app
from filekv.service.auth import AuthService, InvalidCredentials, LoginThrottle, TooManyAttempts
from filekv.settings import Settings

PASSWORD = "the real password 42"
WRONG = [f"wrong guess number {n}" for n in range(40)]
FAST_HASHER = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)  # for counting, not timing


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clocked_app(tmp_path: Path) -> Iterator[tuple[FastAPI, TestClient, FakeClock]]:
    clock = FakeClock()
    app = create_app(Settings(data_dir=tmp_path / "data", fsync="always"))
    with TestClient(app) as client:
        # The lifespan built the service; replace it with one on our clock and a known throttle.
        app.state.auth = AuthService(
            tmp_path / "data",
            token_ttl=3600,
            registration="open",
            clock=clock,
            throttle=LoginThrottle(max_failures=3, window=60, base_delay=30, max_delay=240),
        )
        yield app, client, clock


@pytest.fixture
def clocked(
    clocked_app: tuple[FastAPI, TestClient, FakeClock],
) -> tuple[TestClient, FakeClock]:
    _, client, clock = clocked_app
    return client, clock


def _fast_auth(tmp_path: Path, clock: FakeClock, throttle: LoginThrottle) -> AuthService:
    """An AuthService on a fake clock with a cheap hasher, for counting attempts."""
    return AuthService(
        tmp_path,
        token_ttl=60,
        registration="open",
        clock=clock,
        hasher=FAST_HASHER,
        throttle=throttle,
    )


def _from(app: FastAPI, address: str) -> TestClient:
    """Another client of the same running app, from ``address``."""
    return TestClient(app, client=(address, 40000))


def _login(client: TestClient | httpx.Client, username: str, password: str) -> httpx.Response:
    return client.post("/auth/token", data={"username": username, "password": password})


def _register(client: TestClient | httpx.Client, username: str) -> None:
    answer = client.post("/auth/register", json={"username": username, "password": PASSWORD})
    assert answer.status_code == 201, answer.text


def _assert_throttled(answer: httpx.Response) -> int:
    assert answer.status_code == 429, answer.text
    assert answer.json()["detail"]
    retry_after = answer.headers["Retry-After"]
    assert retry_after.isdigit(), retry_after  # whole seconds, as the contract says
    return int(retry_after)


def test_login_abuse_locks_the_name_then_lets_the_real_user_in(
    clocked: tuple[TestClient, FakeClock],
) -> None:
    client, clock = clocked
    _register(client, "victim")
    _register(client, "bystander")
    for guess in WRONG[:3]:
        assert _login(client, "victim", guess).status_code == 401
    assert _assert_throttled(_login(client, "victim", WRONG[3])) == 30
    # Locked means locked, even for the right password (the attacker learns nothing).
    assert _assert_throttled(_login(client, "victim", PASSWORD)) == 30
    # Only this name is locked.
    assert _login(client, "bystander", PASSWORD).status_code == 200
    clock.now += 20
    assert _assert_throttled(_login(client, "victim", PASSWORD)) == 10
    clock.now += 10.5
    answer = _login(client, "victim", PASSWORD)
    assert answer.status_code == 200, answer.text
    token = answer.json()["access_token"]
    me = client.get("/auth/me", headers={"Authorization": f"Bearer {token}"})
    assert me.json() == {"username": "victim", "role": "user"}


def test_login_abuse_lockouts_grow_but_never_last_forever(
    clocked: tuple[TestClient, FakeClock],
) -> None:
    client, clock = clocked
    _register(client, "victim")
    delays = []
    guesses = iter(WRONG)
    for _round in range(6):
        for _ in range(3):
            assert _login(client, "victim", next(guesses)).status_code == 401
        delay = _assert_throttled(_login(client, "victim", PASSWORD))
        delays.append(delay)
        clock.now += delay + 0.5
    print(f"\nlock-out delays after each burst of 3 failures: {delays}")
    assert delays == [30, 60, 120, 240, 240, 240]  # doubling, capped at max_delay
    assert _login(client, "victim", PASSWORD).status_code == 200
    # And the success forgave the past: the next lock-out starts small again.
    for _ in range(3):
        assert _login(client, "victim", next(guesses)).status_code == 401
    assert _assert_throttled(_login(client, "victim", PASSWORD)) == 30


def test_login_abuse_unknown_names_answer_like_wrong_passwords(
    clocked: tuple[TestClient, FakeClock],
) -> None:
    client, _ = clocked
    _register(client, "victim")
    unknown = _login(client, "nobody-here", "whatever password")
    wrong = _login(client, "victim", WRONG[0])
    assert unknown.status_code == wrong.status_code == 401
    # No user enumeration through the message (each answer names its own request, of course).
    assert {**unknown.json(), "request_id": None} == {**wrong.json(), "request_id": None}
    assert unknown.json()["request_id"] != wrong.json()["request_id"]


def test_login_abuse_real_server_never_shows_passwords_or_hashes(tmp_path: Path) -> None:
    server = Server(tmp_path / "data", tmp_path / "server.log", log_level="debug")
    bodies: list[str] = []
    statuses: list[int] = []
    server.start()
    try:
        with server.client() as client:
            for username in ("victim", "other"):
                answer = client.post(
                    "/auth/register", json={"username": username, "password": PASSWORD}
                )
                bodies.append(answer.text)
                assert answer.status_code == 201
            for guess in WRONG[:8]:
                answer = _login(client, "victim", guess)
                bodies.append(answer.text)
                statuses.append(answer.status_code)
            throttled = _login(client, "victim", PASSWORD)
            bodies.append(throttled.text)
            retry = _assert_throttled(throttled)
            answer = _login(client, "other", PASSWORD)
            bodies.append(answer.text)
            assert answer.status_code == 200
            token = answer.json()["access_token"]
            for path in ("/auth/me", "/stats", "/transactions", "/openapi.json"):
                bodies.append(client.get(path, headers={"Authorization": f"Bearer {token}"}).text)
    finally:
        server.stop()
    log = server.log()
    print(f"\nreal server: failed-login statuses {statuses}, then 429 Retry-After {retry}")
    assert statuses[:5] == [401] * 5 and set(statuses[5:]) == {429}
    users_file = (tmp_path / "data" / "users.json").read_text()
    assert "$argon2id$" in users_file  # the hashes exist, so not finding them below means something
    secrets = [PASSWORD, "$argon2", *WRONG[:8]]
    for secret in secrets:
        assert not any(secret in body for body in bodies), f"{secret!r} in a response body"
        assert secret not in log, f"{secret!r} in the server's output"
    assert "failed login" in log.lower() or "locked" in log.lower()  # it does log the events


def test_login_abuse_rejected_password_is_not_echoed(
    clocked: tuple[TestClient, FakeClock],
) -> None:
    client, _ = clocked
    answer = client.post("/auth/register", json={"username": "shorty", "password": "short7"})
    assert answer.status_code == 422
    assert "short7" not in answer.text, answer.text


# -- issue 17, finding 8: the throttle cannot be turned against a named user --------------------


def test_login_abuse_anonymous_guesses_do_not_lock_the_owner_out(
    clocked_app: tuple[FastAPI, TestClient, FakeClock],
) -> None:
    """The reported attack: five anonymous wrong passwords, and alice's right one got 429."""
    app, client, _ = clocked_app
    _register(client, "alice")
    attacker, alice = _from(app, "203.0.113.66"), _from(app, "198.51.100.7")
    statuses = [_login(attacker, "alice", guess).status_code for guess in WRONG[:10]]
    assert statuses == [401] * 3 + [429] * 7  # the attacker's own pair is locked ...
    assert _login(alice, "alice", PASSWORD).status_code == 200  # ... not alice
    assert _login(attacker, "alice", PASSWORD).status_code == 429  # (locked means locked)


def test_login_abuse_one_address_spraying_names_is_locked_by_its_own_budget(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    auth = _fast_auth(
        tmp_path,
        clock,
        LoginThrottle(max_failures=5, address_max_failures=10, address_base_delay=60),
    )
    auth.add_user("alice", PASSWORD)
    auth.add_user("bob", PASSWORD)
    assert auth.login("alice", PASSWORD, client="203.0.113.66")  # alice, behind the same NAT
    outcomes = []
    for i in range(12):  # one guess per made-up name: never 5 for one pair
        try:
            auth.login(f"name{i}", "guess", client="203.0.113.66")
            outcomes.append("ok")
        except InvalidCredentials:
            outcomes.append("401")
        except TooManyAttempts as exc:
            outcomes.append(f"429 {exc.retry_after}")
    assert outcomes == ["401"] * 10 + ["429 60"] * 2
    assert auth.login("bob", PASSWORD, client="198.51.100.7").access_token  # elsewhere: fine
    with pytest.raises(TooManyAttempts):  # bob never logged in from there: the address waits
        auth.login("bob", PASSWORD, client="203.0.113.66")
    # alice logged in from there before: the sprayer cannot lock her out of her usual address.
    assert auth.login("alice", PASSWORD, client="203.0.113.66").access_token


def test_login_abuse_many_addresses_are_slowed_but_the_owners_address_is_not(
    tmp_path: Path,
) -> None:
    """A distributed guesser shares one guess a second; alice's known address is let through."""
    clock = FakeClock()
    auth = _fast_auth(tmp_path, clock, LoginThrottle(name_burst=20, name_refill=1.0))
    auth.add_user("alice", PASSWORD)
    assert auth.login("alice", PASSWORD, client="198.51.100.7")  # alice's usual address
    checked = refused = 0
    for i in range(200):  # 200 addresses, 2 guesses each, all within one second
        for _ in range(2):
            try:
                auth.login("alice", "guess", client=f"10.0.{i}.1")
            except InvalidCredentials:
                checked += 1
            except TooManyAttempts as exc:
                assert exc.retry_after == 1  # slowed, not locked
                refused += 1
    assert checked == 20 and refused == 380
    assert auth.login("alice", PASSWORD, client="198.51.100.7")  # the owner is not locked out
    clock.now += 5  # five seconds later: five more guesses for the whole crowd
    later = 0
    for i in range(200, 220):
        try:
            auth.login("alice", "guess", client=f"10.0.{i}.1")
        except InvalidCredentials:
            later += 1
        except TooManyAttempts:
            pass
    assert later == 5


class CountingHasher(PasswordHasher):
    """A real argon2id hasher that counts verifications (the expensive part of a login)."""

    def __init__(self) -> None:
        super().__init__(time_cost=2, memory_cost=19_456, parallelism=1)
        self.verified = 0
        self._count_lock = threading.Lock()

    def verify(self, hash: str | bytes, password: str | bytes) -> Literal[True]:
        with self._count_lock:
            self.verified += 1
        return super().verify(hash, password)


def test_login_abuse_parallel_guesses_get_exactly_max_failures_checks(tmp_path: Path) -> None:
    """The reported race: 60 parallel guesses got 8 password checks instead of 5."""
    hasher = CountingHasher()
    auth = AuthService(tmp_path, token_ttl=60, registration="open", hasher=hasher)
    auth.add_user("alice", PASSWORD)
    hasher.verified = 0
    barrier = threading.Barrier(60)

    def guess(n: int) -> str:
        barrier.wait()
        try:
            auth.login("alice", WRONG[n % len(WRONG)], client="203.0.113.66")
        except InvalidCredentials:
            return "401"
        except TooManyAttempts:
            return "429"
        return "200"

    with ThreadPoolExecutor(60) as pool:
        outcomes = list(pool.map(guess, range(60)))
    print(f"\n60 parallel guesses: {hasher.verified} password checks, {outcomes.count('429')} 429s")
    assert hasher.verified == 5
    assert sorted(outcomes) == ["401"] * 5 + ["429"] * 55


def _client_from(server: Server, address: str) -> httpx.Client:
    transport = httpx.HTTPTransport(local_address=address, verify=tls_verify(server.url))
    return httpx.Client(base_url=server.url, transport=transport, timeout=30)


def test_login_abuse_real_server_throttle_cannot_lock_out_the_owner(tmp_path: Path) -> None:
    """On real sockets: an attacker at 127.0.0.2 guessing in parallel, alice at 127.0.0.1."""
    server = Server(tmp_path / "data", tmp_path / "server.log")
    server.start()
    try:
        with server.client() as alice:
            _register(alice, "alice")
        with _client_from(server, "127.0.0.2") as attacker:

            def guess(n: int) -> int:
                return _login(attacker, "alice", WRONG[n % len(WRONG)]).status_code

            with ThreadPoolExecutor(60) as pool:
                statuses = list(pool.map(guess, range(60)))
            again = _login(attacker, "alice", PASSWORD).status_code
        with server.client() as alice:
            owner = _login(alice, "alice", PASSWORD).status_code
    finally:
        server.stop()
    print(
        f"\nreal server: 60 parallel guesses from 127.0.0.2: {statuses.count(401)} checked, "
        f"{statuses.count(429)} refused; then alice from 127.0.0.1: {owner}"
    )
    assert statuses.count(401) == 5 and statuses.count(429) == 55
    assert again == 429
    assert owner == 200
