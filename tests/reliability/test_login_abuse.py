"""Login abuse (issue 4, item 8).

Repeated failed logins for one user name are answered 429 with a whole-number ``Retry-After``
(``LoginThrottle``: after ``max_failures`` failures within ``window`` seconds, a lock-out that
doubles up to ``max_delay``, never permanent); the real user logs in once the lock-out is over,
and other users are never affected. Passwords and argon2 hashes never appear in a response
body, nor in a real server's stdout/stderr at debug level.

Time is moved with the ``clock`` AuthService accepts (no sleeping); the real-server test uses
the default throttle (5 failures, then 30 s).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from serverproc import Server

from filekv.service.app import create_app
from filekv.service.auth import AuthService, LoginThrottle
from filekv.settings import Settings

PASSWORD = "the real password 42"
WRONG = [f"wrong guess number {n}" for n in range(40)]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clocked(tmp_path: Path) -> Iterator[tuple[TestClient, FakeClock]]:
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
        yield client, clock


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
    assert me.json() == {"username": "victim"}


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
    assert unknown.json() == wrong.json()  # no user enumeration through the message


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
