"""The /auth routes and the auth service behind them, through a TestClient.

The app here is the auth router alone, wired like the real one (error table, ``app.state.auth``),
so the clock can be injected; ``test_auth_app.py`` checks the same things through ``create_app``.
"""

from __future__ import annotations

import gzip
import hashlib
import inspect
import logging
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest
from argon2 import PasswordHasher
from fastapi import FastAPI
from fastapi.testclient import TestClient

from filekv.service.auth import AuthService, InvalidCredentials, LoginThrottle
from filekv.service.errors import install_error_handlers
from filekv.service.routes import auth as auth_routes
from filekv.service.throttle import Attempt, Refused, address_key, name_key

PASSWORD = "correct horse battery"


@dataclass
class FakeClock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class EndedSessions:
    """Stands in for the transaction manager: logout tells it which session ended."""

    ended: list[str] = field(default_factory=list)

    def end_session(self, session_id: str) -> None:
        self.ended.append(session_id)


@dataclass
class AuthApp:
    client: TestClient
    service: AuthService
    clock: FakeClock
    data_dir: Path
    transactions: EndedSessions
    seen: list[str] = field(default_factory=list)  # every response body, for leak checks

    def register(self, username: str = "alice", password: str = PASSWORD) -> int:
        return self._record(
            self.client.post("/auth/register", json={"username": username, "password": password})
        ).status_code

    def login(self, username: str = "alice", password: str = PASSWORD) -> tuple[int, Any]:
        r = self._record(
            self.client.post("/auth/token", data={"username": username, "password": password})
        )
        return r.status_code, r.json()

    def token(self, username: str = "alice", password: str = PASSWORD) -> str:
        status, body = self.login(username, password)
        assert status == 200, body
        return str(body["access_token"])

    def me(self, token: str | None, **kwargs: object) -> int:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        headers.update(kwargs.pop("headers", {}))
        return self._record(self.client.get("/auth/me", headers=headers, **kwargs)).status_code

    def _record(self, response):
        self.seen.append(response.text + repr(dict(response.headers)))
        return response


def make_app(data_dir: Path, clock: FakeClock, **options: object) -> AuthApp:
    service = AuthService(
        data_dir,
        token_ttl=float(options.pop("token_ttl", 3600.0)),
        registration=str(options.pop("registration", "open")),
        clock=clock,
        throttle=options.pop("throttle", None),
    )
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(auth_routes.router)
    app.state.auth = service
    app.state.transactions = transactions = EndedSessions()
    return AuthApp(TestClient(app), service, clock, data_dir, transactions)


@pytest.fixture
def auth_app(tmp_path: Path) -> Iterator[AuthApp]:
    a = make_app(tmp_path / "data", FakeClock())
    with a.client:
        yield a


# -- register ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("registration", "existing", "body", "status"),
    [
        ("open", None, {"username": "alice", "password": PASSWORD}, 201),
        ("open", None, {"username": "a" * 64, "password": "12345678"}, 201),
        ("open", None, {"username": "A.b-c_9", "password": PASSWORD}, 201),
        ("closed", None, {"username": "alice", "password": PASSWORD}, 403),
        ("open", "alice", {"username": "alice", "password": "other password"}, 409),
        ("open", None, {"username": "", "password": PASSWORD}, 422),
        ("open", None, {"username": "a" * 65, "password": PASSWORD}, 422),
        ("open", None, {"username": "al ice", "password": PASSWORD}, 422),
        ("open", None, {"username": "al/ice", "password": PASSWORD}, 422),
        ("open", None, {"username": "älice", "password": PASSWORD}, 422),
        ("open", None, {"username": "alice\n", "password": PASSWORD}, 422),
        ("open", None, {"username": "alice", "password": "1234567"}, 422),
        ("open", None, {"username": "alice", "password": "x" * 1025}, 422),
        ("open", None, {"username": "alice"}, 422),
        ("open", None, {"password": PASSWORD}, 422),
        ("open", None, {"username": "alice", "password": PASSWORD, "admin": True}, 422),
        ("open", None, {"username": 7, "password": PASSWORD}, 422),
    ],
)
def test_register_status(
    tmp_path: Path, registration: str, existing: str | None, body: dict[str, Any], status: int
) -> None:
    a = make_app(tmp_path, FakeClock(), registration=registration)
    if existing:
        a.service.add_user(existing, PASSWORD)
    r = a.client.post("/auth/register", json=body)
    assert r.status_code == status, r.text
    if status == 201:
        assert r.json() == {"username": body["username"]}
        assert a.service.usernames() == [body["username"]]
    elif status != 422:
        assert isinstance(r.json()["detail"], str)
        assert a.service.usernames() == ([existing] if existing else [])
    else:
        assert a.service.usernames() == []


def test_register_closed_still_allows_cli_add_user(tmp_path: Path) -> None:
    a = make_app(tmp_path, FakeClock(), registration="closed")
    a.service.add_user("root", PASSWORD)
    assert a.login("root")[0] == 200


# -- token -----------------------------------------------------------------------------------


def test_token_ok_shape(auth_app: AuthApp) -> None:
    assert auth_app.register() == 201
    status, body = auth_app.login()
    assert status == 200
    assert set(body) == {"access_token", "token_type", "expires_in"}
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 3600
    # token_urlsafe(32): 43 characters of base64url = 256 bits
    assert len(body["access_token"]) >= 43


def test_token_unknown_user_and_wrong_password_answer_alike(auth_app: AuthApp) -> None:
    auth_app.register()
    answers = []
    for username, password in [("alice", "wrong password"), ("bob", PASSWORD), ("x" * 300, "p")]:
        r = auth_app.client.post("/auth/token", data={"username": username, "password": password})
        answers.append((r.status_code, r.json(), r.headers.get("www-authenticate")))
    assert answers[0] == (401, {"detail": "incorrect username or password"}, "Bearer")
    assert answers[1] == answers[0] == answers[2]


@pytest.mark.parametrize(
    "form",
    [{}, {"username": "alice"}, {"password": PASSWORD}],
)
def test_token_missing_field_is_422(auth_app: AuthApp, form: dict[str, str]) -> None:
    r = auth_app.client.post("/auth/token", data=form)
    assert r.status_code == 422


def test_token_json_body_is_not_a_login(auth_app: AuthApp) -> None:
    auth_app.register()
    r = auth_app.client.post("/auth/token", json={"username": "alice", "password": PASSWORD})
    assert r.status_code == 422


class CountingHasher(PasswordHasher):
    """The real hasher, recording which hashes ``verify`` was asked to check."""

    def __init__(self) -> None:
        super().__init__(time_cost=2, memory_cost=19_456, parallelism=1)
        self.verified: list[str] = []

    def verify(self, hash: str | bytes, password: str | bytes) -> Literal[True]:
        self.verified.append(str(hash))
        return super().verify(hash, password)


def test_token_unknown_user_is_verified_against_a_hash(tmp_path: Path) -> None:
    """No timing oracle: an unknown name costs one argon2 verify, like a wrong password."""
    hasher = CountingHasher()
    service = AuthService(tmp_path, token_ttl=60, registration="open", hasher=hasher)
    service.add_user("alice", PASSWORD)
    for username in ["nobody", "alice"]:
        with pytest.raises(InvalidCredentials):
            service.login(username, "wrong password")
    assert len(hasher.verified) == 2
    assert all(h.startswith("$argon2id$") for h in hasher.verified)


# -- throttling ------------------------------------------------------------------------------


def test_token_throttled_after_repeated_failures_then_recovers(auth_app: AuthApp) -> None:
    auth_app.register()
    for _ in range(5):
        assert auth_app.login("alice", "wrong password")[0] == 401
    r = auth_app.client.post("/auth/token", data={"username": "alice", "password": PASSWORD})
    assert r.status_code == 429  # even the right password waits
    retry_after = int(r.headers["retry-after"])
    assert retry_after == 30
    assert "retry after 30" in r.json()["detail"]
    # other names are not affected
    auth_app.register("bob")
    assert auth_app.login("bob")[0] == 200
    auth_app.clock.advance(retry_after - 1)
    assert auth_app.login()[0] == 429
    auth_app.clock.advance(1)
    assert auth_app.login()[0] == 200
    # the success forgot the failures: four more failures do not lock
    for _ in range(4):
        assert auth_app.login("alice", "wrong password")[0] == 401
    assert auth_app.login()[0] == 200


def test_token_throttle_applies_to_unknown_names_too(auth_app: AuthApp) -> None:
    """A lock-out must not reveal whether a name exists."""
    for _ in range(5):
        assert auth_app.login("ghost", "wrong password")[0] == 401
    assert auth_app.login("ghost", "wrong password")[0] == 429


def test_token_throttle_window_forgets_spread_out_failures(auth_app: AuthApp) -> None:
    auth_app.register()
    for _ in range(8):
        assert auth_app.login("alice", "wrong password")[0] == 401
        auth_app.clock.advance(16)  # at most 4 failures in any 60 s
    assert auth_app.login()[0] == 200


def _fail_round(throttle: LoginThrottle, name: str, address: str, now: float, n: int) -> None:
    for _ in range(n):
        attempt = throttle.reserve(name, address, now)
        assert isinstance(attempt, Attempt), attempt
        throttle.settle(attempt, now, success=False)


def _wait(throttle: LoginThrottle, name: str, address: str, now: float) -> float:
    answer = throttle.reserve(name, address, now)
    if isinstance(answer, Refused):
        return answer.retry_after
    throttle.settle(answer, now, success=None)  # only looking
    return 0.0


def test_throttle_backoff_doubles_up_to_the_cap_and_is_forgiven() -> None:
    throttle = LoginThrottle(max_failures=2, window=60, base_delay=10, max_delay=40)
    now = 0.0
    delays = []
    for _ in range(5):
        _fail_round(throttle, "alice", "1.2.3.4", now, 2)
        delays.append(_wait(throttle, "alice", "1.2.3.4", now))
        now += delays[-1]
        assert _wait(throttle, "alice", "1.2.3.4", now) == 0
    assert delays == [10, 20, 40, 40, 40]
    # quiet for longer than the longest lock-out plus a window: back to the first delay
    now += 40 + 60 + 1
    _fail_round(throttle, "alice", "1.2.3.4", now, 2)
    assert _wait(throttle, "alice", "1.2.3.4", now) == 10


@pytest.mark.parametrize("table", ["pairs", "addresses", "names", "trusted"])
def test_throttle_tables_are_bounded(table: str) -> None:
    throttle = LoginThrottle(max_entries=100)
    for i in range(1000):
        attempt = throttle.reserve(f"user{i}", f"10.0.{i // 256}.{i % 256}", float(i))
        assert isinstance(attempt, Attempt)
        throttle.settle(attempt, float(i), success=i % 2 == 0)
    entries = getattr(throttle, table)
    entries = getattr(entries, "entries", entries)
    assert 0 < len(entries) <= 100


def test_throttle_tables_forget_idle_entries() -> None:
    throttle = LoginThrottle(max_failures=5, window=60, max_delay=900, name_burst=10)
    for i in range(50):
        _fail_round(throttle, f"user{i}", f"10.0.0.{i}", 0.0, 1)
    assert len(throttle.pairs.entries) == 50
    # Long after the longest lock-out plus a window, one new attempt sweeps the old ones away.
    _fail_round(throttle, "late", "10.9.9.9", 2000.0, 1)
    assert len(throttle.pairs.entries) == len(throttle.addresses.entries) == 1
    assert list(throttle.names) == ["late"]


@pytest.mark.parametrize(
    ("host", "key"),
    [
        ("203.0.113.7", "203.0.113.7"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff::1", "2001:db8:1:2::/64"),  # the same /64: one budget
        ("::ffff:203.0.113.7", "203.0.113.7"),
        ("testclient", "testclient"),
        (None, "unknown"),
    ],
)
def test_throttle_address_key(host: str | None, key: str) -> None:
    assert address_key(host) == key


# -- tokens: me, logout, expiry, forgeries ---------------------------------------------------


def test_me_returns_the_username(auth_app: AuthApp) -> None:
    auth_app.register()
    token = auth_app.token()
    r = auth_app.client.get("/auth/me", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200
    assert r.json() == {"username": "alice", "role": "user"}


@pytest.mark.parametrize(
    ("token", "extra"),
    [
        (None, {}),
        ("garbage", {}),
        ("", {}),
        (None, {"headers": {"X-User": "alice"}}),
        (None, {"cookies": {"user": "alice"}}),
        ("garbage", {"headers": {"X-User": "alice"}, "cookies": {"user": "alice"}}),
    ],
    ids=["none", "garbage", "empty", "x-user-header", "user-cookie", "all-forged"],
)
def test_me_without_a_valid_token_is_401(
    auth_app: AuthApp, token: str | None, extra: dict[str, Any]
) -> None:
    auth_app.register()
    auth_app.token()  # alice is logged in elsewhere: that must not help
    if "cookies" in extra:
        auth_app.client.cookies.update(extra.pop("cookies"))
    r = auth_app.client.get(
        "/auth/me",
        headers={
            **({"Authorization": f"Bearer {token}"} if token is not None else {}),
            **extra.get("headers", {}),
        },
    )
    auth_app.client.cookies.clear()
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"
    assert isinstance(r.json()["detail"], str)


def test_logout_kills_only_that_token(auth_app: AuthApp) -> None:
    auth_app.register()
    first, second = auth_app.token(), auth_app.token()
    assert first != second
    r = auth_app.client.post("/auth/logout", headers={"Authorization": f"Bearer {first}"})
    assert r.status_code == 204
    assert r.content == b""
    assert auth_app.me(first) == 401
    assert auth_app.me(second) == 200
    r = auth_app.client.post("/auth/logout", headers={"Authorization": f"Bearer {first}"})
    assert r.status_code == 401
    # The transaction manager heard of the one session that ended (to free its transaction).
    assert auth_app.transactions.ended == [hashlib.sha256(first.encode()).hexdigest()]


def test_logout_without_token_is_401(auth_app: AuthApp) -> None:
    assert auth_app.client.post("/auth/logout").status_code == 401


def test_token_expires_after_ttl(tmp_path: Path) -> None:
    a = make_app(tmp_path, FakeClock(), token_ttl=60.0)
    a.register()
    token = a.token()
    a.clock.advance(59.9)
    assert a.me(token) == 200
    a.clock.advance(0.1)
    assert a.me(token) == 401


def test_session_id_is_the_token_hash_not_the_token(auth_app: AuthApp) -> None:
    auth_app.register()
    token = auth_app.token()
    session = auth_app.service.authenticate(token)
    assert session is not None
    assert session.username == "alice"
    assert session.session_id == hashlib.sha256(token.encode()).hexdigest()
    assert token not in repr(auth_app.service._tokens)


def test_tokens_per_user_are_capped(auth_app: AuthApp, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("filekv.service.auth.MAX_TOKENS_PER_USER", 3)
    auth_app.register()
    tokens = [auth_app.token() for _ in range(5)]
    assert [auth_app.me(t) for t in tokens] == [401, 401, 200, 200, 200]


# -- persistence and secrecy -----------------------------------------------------------------


def test_users_survive_a_restart(auth_app: AuthApp) -> None:
    auth_app.register()
    auth_app.register("bob", "bobs password")
    again = AuthService(auth_app.data_dir, token_ttl=60, registration="open")
    assert again.usernames() == ["alice", "bob"]
    assert again.login("bob", "bobs password").access_token
    # tokens do not survive a restart
    old = auth_app.token()
    assert again.authenticate(old) is None


def test_users_file_is_private_and_written_atomically(auth_app: AuthApp) -> None:
    auth_app.register()
    auth_app.register("bob")
    users_file = auth_app.data_dir / "users.json"
    assert users_file.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in auth_app.data_dir.iterdir() if p.name.endswith((".tmp", ".new"))] == []
    text = users_file.read_text()
    assert PASSWORD not in text
    assert text.count("$argon2id$") == 2


def test_user_added_by_another_process_is_seen_without_restart(auth_app: AuthApp) -> None:
    """``filekv user add`` writes the file while the server runs; the server reloads it."""
    other = AuthService(auth_app.data_dir, token_ttl=60, registration="closed")
    other.add_user("carol", PASSWORD)
    assert auth_app.login("carol")[0] == 200
    assert auth_app.register("carol") == 409


def test_hashes_and_passwords_never_in_responses_or_logs(
    auth_app: AuthApp, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    auth_app.register()
    auth_app.register()  # 409
    token = auth_app.token()
    auth_app.me(token)
    for _ in range(6):
        auth_app.login("alice", "wrong password")
    auth_app.login("nobody", "wrong password")
    auth_app.client.post("/auth/logout", headers={"Authorization": f"Bearer {token}"})
    stored = (auth_app.data_dir / "users.json").read_text()
    the_hash = stored.split('"hash": "')[1].split('"')[0]
    leaked = "\n".join(auth_app.seen) + "\n".join(r.getMessage() for r in caplog.records)
    for secret in ["$argon2", the_hash, PASSWORD, "wrong password"]:
        assert secret not in leaked
    assert auth_app.seen  # the check looked at something


def test_routes_do_not_hash_on_the_event_loop() -> None:
    """argon2 is CPU-bound: the routes that hash are plain functions, run in the threadpool.

    Logout hashes nothing and must run on the event loop, beside the transaction manager.
    """
    for route in auth_routes.router.routes:
        on_loop = inspect.iscoroutinefunction(route.endpoint)
        assert on_loop == (route.path == "/auth/logout"), route.path


def test_openapi_documents_every_status(auth_app: AuthApp) -> None:
    paths = auth_app.client.get("/openapi.json").json()["paths"]
    expected = {
        ("/auth/register", "post"): {"201", "403", "409", "413", "415", "422", "503", "507"},
        ("/auth/token", "post"): {"200", "401", "413", "415", "422", "429", "503"},
        ("/auth/logout", "post"): {"204", "401"},
        ("/auth/me", "get"): {"200", "401"},
    }
    # (create_app adds 431 to every route; this app is the auth router alone.)
    for (path, method), statuses in expected.items():
        assert set(paths[path][method]["responses"]) == statuses, path
    token_body = paths["/auth/token"]["post"]["requestBody"]["content"]
    assert "application/x-www-form-urlencoded" in token_body
    assert "Retry-After" in paths["/auth/token"]["post"]["responses"]["429"]["headers"]


# -- the lock audit: failed logins' log lines, token spelling, whether a session lives ---------


def test_failed_login_logs_a_known_users_name_and_never_an_unknown_one(
    auth_app: AuthApp, caplog: pytest.LogCaptureFixture
) -> None:
    """People type their password into the name field: that must not reach the log."""
    caplog.set_level(logging.DEBUG)
    auth_app.register()
    assert auth_app.login("Hunter2-MySecretPass", PASSWORD)[0] == 401
    assert auth_app.login("ALICE", "wrong password")[0] == 401
    messages = [r.getMessage() for r in caplog.records]
    assert not any("hunter2" in m.lower() for m in messages), messages
    assert "failed login for an unknown user name (20 characters)" in messages
    assert "failed login for 'alice'" in messages  # as registered, not as typed


@pytest.mark.parametrize("spelled", [" {}", "  {}", "{} ", "\t{}"])
def test_token_with_surrounding_whitespace_is_the_same_token(
    auth_app: AuthApp, spelled: str
) -> None:
    """``Authorization: Bearer  <token>`` (two spaces) is that token on every route, as the hot
    routes' own header parsing already takes it, whatever FastAPI's parser leaves around it."""
    auth_app.register()
    token = auth_app.token()
    session = auth_app.service.authenticate(spelled.format(token))
    assert session is not None
    assert session.session_id == hashlib.sha256(token.encode()).hexdigest()
    auth_app.service.logout(spelled.format(token))
    assert auth_app.service.authenticate(token) is None


def test_session_alive_follows_logout_revoke_removal_and_expiry(tmp_path: Path) -> None:
    a = make_app(tmp_path, FakeClock(), token_ttl=60.0)
    for name in ("alice", "bob", "carol", "dave"):
        a.register(name)
    service = a.service
    alice, bob, carol, dave = (
        service.authenticate(a.token(name)) for name in ("alice", "bob", "carol", "dave")
    )
    assert alice and bob and carol and dave
    ids = {s.username: s.session_id for s in (alice, bob, carol, dave)}
    assert all(service.session_alive(i) for i in ids.values())
    assert service.session_alive("0" * 64) is False  # never issued
    service.revoke_tokens("alice")
    service.set_password("bob", "another password")
    service.remove_user("carol")
    assert [service.session_alive(ids[n]) for n in ("alice", "bob", "carol", "dave")] == [
        False,
        False,
        False,
        True,
    ]
    a.clock.advance(60.0)
    assert service.session_alive(ids["dave"]) is False


def test_throttle_names_fold_as_logins_do() -> None:
    # One budget per name whatever its case; a lookalike ("\u212a", the Kelvin sign) is another
    # name, as it is at login (users.fold_name), not kate's.
    assert name_key("KATE") == name_key("kate")
    assert name_key("\u212aate") != name_key("kate")


def test_throttle_log_lines_name_users_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The lock-out and slow-down lines named whatever was typed as the name: a password, often."""
    caplog.set_level(logging.DEBUG)
    throttle = LoginThrottle(max_failures=2, name_burst=2)
    auth_app = make_app(tmp_path, FakeClock(), throttle=throttle)
    auth_app.register()
    for name in ("alice", "Hunter2-MySecretPass"):
        for _ in range(3):
            auth_app.login(name, "wrong password")
    lines = [r.getMessage() for r in caplog.records if r.name == "filekv.service.throttle"]
    assert any("'alice'" in line and "locked" in line for line in lines), lines
    assert any("an unknown user name (20 characters)" in line for line in lines), lines
    assert not any("hunter2" in line.lower() for line in lines), lines


@pytest.mark.parametrize("path", ["/auth/register", "/auth/token"])
def test_auth_content_coded_body_is_415_unread(auth_app: AuthApp, path: str) -> None:
    # A gzip body was parsed as it came: a misleading 422 (or 401 for a login form).
    answer = auth_app.client.post(
        path,
        content=gzip.compress(b'{"username": "alice", "password": "alice-secret-1"}'),
        headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
    )
    assert answer.status_code == 415
    assert "Content-Encoding" in answer.json()["detail"] or "coding" in answer.json()["detail"]


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "application/xml"]
)
def test_auth_register_body_not_declared_json_is_415_and_registers_nobody(
    auth_app: AuthApp, content_type: str
) -> None:
    # A JSON body declared as something else was a 422 about its fields (PUT and batch: 415).
    answer = auth_app.client.post(
        "/auth/register",
        content=b'{"username": "tp", "password": "alice-secret-1"}',
        headers={"Content-Type": content_type},
    )
    assert answer.status_code == 415
    assert "JSON" in answer.json()["detail"]
    declared = auth_app.client.post(
        "/auth/register", json={"username": "tp", "password": "alice-secret-1"}
    )
    assert declared.status_code == 201  # nobody was registered by the refused one


# -- passwords in Unicode NFC ------------------------------------------------------------------

NFC_PASSWORD = "p\u00e4ssw\u00f6rd\u20ac\u20ac"  # "ä" and "ö" as one code point each
NFD_PASSWORD = unicodedata.normalize("NFD", NFC_PASSWORD)  # "a" + U+0308, as macOS types it


@pytest.mark.parametrize(
    ("registered", "typed"), [(NFC_PASSWORD, NFD_PASSWORD), (NFD_PASSWORD, NFC_PASSWORD)]
)
def test_password_is_the_same_whatever_its_unicode_form(
    tmp_path: Path, registered: str, typed: str
) -> None:
    # The same typed password failed (401) when the client's keyboard composed it otherwise.
    assert registered != typed
    service = AuthService(tmp_path, token_ttl=60, registration="open")
    service.add_user("alice", registered)
    assert service.login("alice", typed).access_token
    assert service.login("alice", registered).access_token


def test_password_hashed_as_typed_before_still_logs_in_and_is_rehashed(tmp_path: Path) -> None:
    # A hash made before passwords were normalised is of the password as typed (here NFD).
    hasher = CountingHasher()
    service = AuthService(tmp_path, token_ttl=60, registration="open", hasher=hasher)
    service.users.add("alice", hasher.hash(NFD_PASSWORD))
    assert service.login("alice", NFD_PASSWORD).access_token
    rehashed = service.users.find("alice")
    assert rehashed is not None and hasher.verify(rehashed.password_hash, NFC_PASSWORD)
    hasher.verified.clear()
    assert service.login("alice", NFC_PASSWORD).access_token  # the NFC hash now, one verify
    assert len(hasher.verified) == 1


def test_password_not_in_nfc_costs_the_same_for_an_unknown_name(tmp_path: Path) -> None:
    # Tried in both forms for a user: for a name nobody has too, or the time would tell.
    hasher = CountingHasher()
    service = AuthService(tmp_path, token_ttl=60, registration="open", hasher=hasher)
    service.add_user("alice", PASSWORD)
    counts = []
    for username in ["nobody", "alice"]:
        hasher.verified.clear()
        with pytest.raises(InvalidCredentials):
            service.login(username, NFD_PASSWORD)
        counts.append(len(hasher.verified))
    assert counts == [2, 2]
