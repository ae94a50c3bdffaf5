"""Users, passwords and login tokens.

::

    AuthError                  base of what the auth service raises on purpose     401
    ├── InvalidCredentials     unknown user or wrong password (one answer for both)  401
    ├── RegistrationClosed     registration is closed: users come from the CLI     403
    ├── UsernameTaken          the name is already registered (in any case)        409
    ├── TooManyAttempts        too many failed logins; retry later                 429
    └── UsersUnavailable       users.json is damaged or cannot be read or written  503
        └── UsersDiskFull      no space left to write users.json; nothing changed  507

Passwords are hashed with argon2id (``PASSWORD_HASHER``: t=2, m=19 MiB, p=1, OWASP's baseline;
about 25 ms a hash on one core, so a login stays well under 100 ms on 2 cores). The hashing is
CPU-bound and synchronous: callers on an event loop run it in a thread (the auth routes are plain
``def`` routes, which FastAPI runs in its threadpool).

Tokens are 256-bit ``secrets.token_urlsafe(32)`` strings handed out once; the server keeps only
their SHA-256 with the user name, the user's token epoch and the expiry, in memory (a restart logs
everyone out; users stay). The token's SHA-256 is also the session id, the identity a transaction
holder is known by. A token check refuses a token whose user is gone from ``users.json`` or whose
epoch is not the user's current one (``filekv user revoke`` and ``user passwd`` replace it); the
file is looked at by ``UserFile.poll``: one ``stat`` at most every 0.5 s, never a wait. The
session a token check returns carries the user's role as that same table has it: the role is
never in the token, and a demoted admin is a ``user`` from the first check after the reload.

Failed logins are throttled by ``LoginThrottle`` (``throttle.py``): per user name and client
address, per address, and a per-name ceiling that slows and never locks; attempts are reserved
before the hash runs, so parallel guesses cannot overshoot.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import math
import secrets
import threading
import time
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from filekv.service.throttle import Attempt, LoginThrottle, Refused, address_key
from filekv.service.users import (
    DEFAULT_ROLE,
    Role,
    UserFile,
    UserRecord,
    UsersFileCorrupt,
    check_new_user,
    check_password,
)

logger = logging.getLogger(__name__)

__all__ = [
    "PASSWORD_HASHER",
    "AuthError",
    "AuthService",
    "InvalidCredentials",
    "IssuedToken",
    "LoginThrottle",
    "RegistrationClosed",
    "Session",
    "TooManyAttempts",
    "UsernameTaken",
    "UsersDiskFull",
    "UsersUnavailable",
]

# argon2id, OWASP's minimum recommended parameters (m=19 MiB, t=2, p=1): about 25 ms per hash.
PASSWORD_HASHER: Final = PasswordHasher(time_cost=2, memory_cost=19_456, parallelism=1)

TOKEN_BYTES: Final = 32  # 256 bits of randomness
# A logged-in user could otherwise mint tokens without end; past this the oldest one is dropped.
MAX_TOKENS_PER_USER: Final = 100
_PRUNE_EVERY: Final = 60.0  # seconds between sweeps of expired and revoked tokens
LOCAL_CLIENT: Final = "local"  # the client address of logins that do not come over HTTP

Clock = Callable[[], float]


class AuthError(Exception):
    """Base class of every error the auth service raises on purpose."""


class InvalidCredentials(AuthError):
    """Unknown user name or wrong password; deliberately indistinguishable."""


class RegistrationClosed(AuthError):
    """Registration is closed; an operator adds users with ``filekv user add``."""


class UsernameTaken(AuthError):
    """The user name is already registered (names are unique case-insensitively)."""


class TooManyAttempts(AuthError):
    """Too many failed logins; ``retry_after`` is whole seconds."""

    def __init__(
        self, retry_after: float, reason: str = "too many failed logins for this username"
    ) -> None:
        self.retry_after = max(1, math.ceil(retry_after))
        super().__init__(f"{reason}; retry after {self.retry_after} s")


class UsersUnavailable(AuthError):
    """``users.json`` is damaged, or cannot be read or written; the operator must look."""


class UsersDiskFull(UsersUnavailable):
    """No space left to write ``users.json``: nothing was changed; retry once space is freed."""


@dataclass(frozen=True, slots=True)
class Session:
    """A logged-in client: ``session_id`` is the token's SHA-256 (never the token itself).

    ``role`` is the user's role in ``users.json`` when the token was checked, for this request.
    """

    session_id: str
    username: str
    role: Role = DEFAULT_ROLE

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """What a successful login hands out, once."""

    access_token: str
    expires_in: int


@dataclass(slots=True)
class _TokenRecord:
    username: str  # as registered
    epoch: str  # the user's token epoch when the token was issued
    expires_at: float


class AuthService:
    """Registers users, checks passwords, issues, checks and revokes tokens. Thread-safe."""

    def __init__(
        self,
        data_dir: Path,
        *,
        token_ttl: float,
        registration: Literal["open", "closed"] | str,
        clock: Clock = time.monotonic,
        throttle: LoginThrottle | None = None,
        hasher: PasswordHasher = PASSWORD_HASHER,
    ) -> None:
        if token_ttl <= 0:
            raise ValueError("token_ttl must be positive")
        if registration not in ("open", "closed"):
            raise ValueError(f"registration must be 'open' or 'closed', not {registration!r}")
        self.users = UserFile(data_dir)
        self.token_ttl = token_ttl
        self.registration = registration
        self._clock = clock
        self._throttle = throttle or LoginThrottle()
        # The throttle's log lines name a user, never what else was typed as a name.
        self._throttle.known_name = self.users.known  # read under the throttle's lock: no I/O
        self._hasher = hasher
        # Verified against for unknown users, so they cost the same time as wrong passwords.
        self._dummy_hash = hasher.hash(secrets.token_urlsafe(16))
        self._lock = threading.Lock()
        self._tokens: dict[str, _TokenRecord] = {}  # sha256(token) -> record
        # user -> their token digests, oldest login first (dict as an ordered set)
        self._tokens_of: dict[str, dict[str, None]] = {}
        self._last_prune = clock()
        self.login_failures = 0  # wrong name or password, since start (GET /metrics)

    # -- users -----------------------------------------------------------------------------------

    def check_registration_open(self) -> None:
        """Raise ``RegistrationClosed`` unless self-service sign-up is allowed (costs nothing)."""
        if self.registration != "open":
            raise RegistrationClosed("registration is closed")

    def register(self, username: str, password: str) -> None:
        """Self-service sign-up through the API; only while registration is open.

        Always a ``user``: nothing a client sends can make an admin.
        """
        self.check_registration_open()
        self.add_user(username, password, role=DEFAULT_ROLE)

    def add_user(self, username: str, password: str, *, role: Role = DEFAULT_ROLE) -> None:
        """Add a user whatever the registration setting (the CLI's way).

        Raises ``InvalidUser`` (a ``ValueError``) for a bad name or password, ``UsernameTaken``
        (also for a name differing only in case from a user's), ``UsersUnavailable``.
        """
        check_new_user(username, password)
        with self._users_file():
            # Cheap check first so a taken name does not cost a hash; ``add`` re-checks atomically.
            if self.users.find(username) is not None:
                raise UsernameTaken("that username is taken")
            if not self.users.add(username, self._hasher.hash(_normal(password)), role=role):
                raise UsernameTaken("that username is taken")
        logger.info("user %r added (%s)", username, role)

    def set_role(self, username: str, role: Role) -> str:
        """Make the user an admin or a user (``filekv user set-role``). Its name.

        Its tokens keep working: a running server reads the new role on its next token check
        after the reload. Raises ``UnknownUser``, ``UsersUnavailable``.
        """
        with self._users_file():
            record = self.users.set_role(username, role)
        logger.info("role of %r set to %s", record.name, role)
        return record.name

    def set_password(self, username: str, password: str) -> str:
        """A new password (``filekv user passwd``); every token of the user dies. Its name.

        Raises ``InvalidUser`` for a bad password, ``UnknownUser``, ``UsersUnavailable``.
        """
        check_password(password)
        with self._users_file():
            record = self.users.set_password(username, self._hasher.hash(_normal(password)))
        self._forget_user(record.name)
        logger.info("password of %r changed; its tokens are revoked", record.name)
        return record.name

    def revoke_tokens(self, username: str) -> str:
        """Kill every token of the user (``filekv user revoke``), here and in a running server."""
        with self._users_file():
            record = self.users.revoke_tokens(username)
        self._forget_user(record.name)
        logger.info("every token of %r revoked", record.name)
        return record.name

    def remove_user(self, username: str) -> str:
        """Delete the user (``filekv user remove``); their tokens stop working. Its name."""
        with self._users_file():
            record = self.users.remove(username)
        self._forget_user(record.name)
        logger.info("user %r removed", record.name)
        return record.name

    def usernames(self) -> list[str]:
        """Every registered user name, sorted."""
        with self._users_file():
            return self.users.usernames()

    def roles(self) -> list[tuple[str, Role]]:
        """Every registered user name with its role, sorted by name."""
        with self._users_file():
            return [(record.name, record.role) for record in self.users.records()]

    # -- tokens ----------------------------------------------------------------------------------

    def login(
        self, username: str, password: str, *, client: str | None = LOCAL_CLIENT
    ) -> IssuedToken:
        """Check the password and hand out a new token.

        ``client`` is the caller's address (``request.client.host``). Raises ``TooManyAttempts``
        when a throttle budget is spent (before any hashing, so a refused attempt costs the
        server nothing), ``InvalidCredentials`` for an unknown name or wrong password, and
        ``UsersUnavailable`` when ``users.json`` cannot be read.
        """
        reserved = self._throttle.reserve(username, address_key(client), self._clock())
        if isinstance(reserved, Refused):
            raise TooManyAttempts(reserved.retry_after, reserved.reason)
        user, as_typed = self._check_password(reserved, username, password)
        self._upgrade_hash(user, password, as_typed=as_typed)

        token = secrets.token_urlsafe(TOKEN_BYTES)
        with self._lock:
            now = self._clock()
            self._prune(now)
            digest = _digest(token)
            self._tokens[digest] = _TokenRecord(user.name, user.token_epoch, now + self.token_ttl)
            mine = self._tokens_of.setdefault(user.name, {})
            mine[digest] = None
            while len(mine) > MAX_TOKENS_PER_USER:
                self._forget(next(iter(mine)))
        logger.info("login for %r", user.name)
        return IssuedToken(access_token=token, expires_in=int(self.token_ttl))

    def authenticate(self, token: str) -> Session | None:
        """The session a token belongs to, or None if unknown, revoked or expired.

        Cheap enough for every request: a dict lookup under a lock, and now and then (at most
        every 0.5 s) one ``stat`` of ``users.json`` to notice a revoke, a password change or a
        removed user.
        """
        return self._session(_digest(token))

    def session_alive(self, session_id: str) -> bool:
        """Whether the token behind ``session_id`` would still be accepted.

        The transaction manager asks it about the lock's holder: a holder whose token was logged
        out, expired, revoked (``filekv user revoke|passwd``, also from another process) or whose
        user was removed can never commit, so its transaction must not keep the store locked.
        As cheap as ``authenticate``.
        """
        return self._session(session_id) is not None

    def tokens_active(self) -> int:
        """Tokens issued and neither expired nor revoked (counted for ``GET /metrics``)."""
        with self._lock:
            now = self._clock()
            return sum(
                1
                for record in self._tokens.values()
                if now < record.expires_at and self._still_valid(record)
            )

    def logout(self, token: str) -> None:
        """Revoke this one token (the user's other tokens keep working)."""
        with self._lock:
            self._forget(_digest(token))

    # -- internals -------------------------------------------------------------------------------

    def _session(self, digest: str) -> Session | None:
        """The session of the token whose SHA-256 is ``digest``, or None (and it is dropped)."""
        self.users.poll()
        with self._lock:
            record = self._tokens.get(digest)
            if record is None:
                return None
            # The user as the file has it now: the epoch decides the token, and the role is
            # this request's (never cached with the token, so a demotion takes effect here).
            user = self.users.cached(record.username)
            if (
                self._clock() >= record.expires_at
                or user is None
                or user.token_epoch != record.epoch
            ):
                self._forget(digest)
                return None
            return Session(session_id=digest, username=record.username, role=user.role)

    def _check_password(
        self, attempt: Attempt, username: str, password: str
    ) -> tuple[UserRecord, bool]:
        """Verify against the stored hash (a dummy one for an unknown name); settle the attempt.
        The user, and whether the hash is of the password as typed rather than its NFC form.

        Passwords are hashed in Unicode NFC (RFC 8265's OpaqueString): "ä" typed as one code
        point or as "a" and a combining diaeresis (macOS, some keyboards) is the same password.
        A hash made before that is of the password as typed: a password that is not in NFC is
        tried that way too, for an unknown name as well, so that the time taken tells nothing
        about whether the name exists."""
        outcome: bool | None = None  # neither success nor failure if the file cannot be read
        as_typed = False
        try:
            with self._users_file():
                user = self.users.find(username)
            stored = user.password_hash if user is not None else None
            normal = _normal(password)
            outcome = self._verify(stored, normal)
            if normal != password and not outcome:
                outcome = as_typed = self._verify(stored, password)
        finally:
            self._throttle.settle(attempt, self._clock(), success=outcome)
        if not outcome:
            with self._lock:  # logins run in the threadpool: += is not atomic
                self.login_failures += 1
            if user is not None:
                logger.info("failed login for %r", user.name)
            else:
                # Not the name itself: people type their password into the name field.
                logger.info("failed login for an unknown user name (%d characters)", len(username))
            raise InvalidCredentials("incorrect username or password")
        assert user is not None  # _verify is never true without a stored hash
        return user, as_typed

    def _verify(self, stored: str | None, password: str) -> bool:
        try:
            return self._hasher.verify(stored or self._dummy_hash, password) and stored is not None
        except VerifyMismatchError:
            return False
        except (VerificationError, InvalidHashError):
            logger.error("stored password hash is unusable; treating the login as failed")
            return False

    def _upgrade_hash(self, user: UserRecord, password: str, *, as_typed: bool) -> None:
        """Re-hash after a successful login if the parameters changed, or if the hash is of the
        password as typed rather than its NFC form (made before passwords were normalised)."""
        try:
            if as_typed or self._hasher.check_needs_rehash(user.password_hash):
                new_hash = self._hasher.hash(_normal(password))
                self.users.replace_hash(user.name, user.password_hash, new_hash)
        except (InvalidHashError, OSError, UsersFileCorrupt) as exc:
            # The exception's text is not logged: nothing hash-like may reach a log line.
            logger.warning("could not upgrade the password hash of %r: %s", user.name, type(exc))

    @contextlib.contextmanager
    def _users_file(self) -> Iterator[None]:
        """Translate the users file's failures into answers (once, here)."""
        try:
            yield
        except UsersFileCorrupt as exc:  # UserFile logged it, once per damaged version
            raise UsersUnavailable("the users file is damaged; see the server log") from exc
        except OSError as exc:
            logger.warning("users file I/O failed: %s", exc)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise UsersDiskFull("the disk is full; the users file was not changed") from exc
            raise UsersUnavailable(
                "the users file could not be read or written; see the server log"
            ) from exc

    def _still_valid(self, record: _TokenRecord) -> bool:
        """Whether the token's user still exists with the epoch it was issued under."""
        user = self.users.cached(record.username)
        return user is not None and user.token_epoch == record.epoch

    def _forget_user(self, username: str) -> None:
        with self._lock:
            for digest in list(self._tokens_of.get(username, ())):
                self._forget(digest)

    def _prune(self, now: float) -> None:
        """Drop expired and revoked tokens now and then (called under the lock)."""
        if now - self._last_prune < _PRUNE_EVERY:
            return
        self._last_prune = now
        dead = [
            d for d, r in self._tokens.items() if now >= r.expires_at or not self._still_valid(r)
        ]
        for digest in dead:
            self._forget(digest)

    def _forget(self, digest: str) -> None:
        """Drop one token (called under the lock)."""
        record = self._tokens.pop(digest, None)
        if record is None:
            return
        mine = self._tokens_of.get(record.username)
        if mine is not None:
            mine.pop(digest, None)
            if not mine:
                del self._tokens_of[record.username]


def _normal(password: str) -> str:
    """The form a password is hashed in: Unicode NFC (see ``AuthService._check_password``)."""
    return unicodedata.normalize("NFC", password)


def _digest(token: str) -> str:
    # Tokens are URL-safe base64, never with spaces: ``Bearer  <token>`` (two spaces) is that
    # token, as the hot routes' own header parsing (deps.caller_session_id) already takes it.
    return hashlib.sha256(token.strip().encode("utf-8", "surrogatepass")).hexdigest()
