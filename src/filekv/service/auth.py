"""Users, passwords and login tokens.

::

    AuthError                  base of what the auth service raises on purpose     401
    ├── InvalidCredentials     unknown user or wrong password (one answer for both)  401
    ├── RegistrationClosed     registration is closed: users come from the CLI     403
    ├── UsernameTaken          the name is already registered                      409
    └── TooManyAttempts        too many failed logins for this name; retry later   429

Passwords are hashed with argon2id (``PASSWORD_HASHER``: t=2, m=19 MiB, p=1, OWASP's baseline;
about 25 ms a hash on one core, so a login stays well under 100 ms on 2 cores). The hashing is
CPU-bound and synchronous: callers on an event loop run it in a thread (the auth routes are plain
``def`` routes, which FastAPI runs in its threadpool).

Tokens are 256-bit ``secrets.token_urlsafe(32)`` strings handed out once; the server keeps only
their SHA-256 with the user name and expiry, in memory (a restart logs everyone out; users stay).
The token's SHA-256 is also the session id, the identity a transaction holder is known by.

Failed logins are throttled per user name (``LoginThrottle``): after ``max_failures`` failures
within ``window`` seconds the name is refused with ``TooManyAttempts`` for ``base_delay`` seconds,
doubling with every further lock-out up to ``max_delay``. Never forever; a success resets it.
"""

from __future__ import annotations

import hashlib
import logging
import math
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from filekv.service.users import UserFile, check_new_user, is_valid_username

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
]

# argon2id, OWASP's minimum recommended parameters (m=19 MiB, t=2, p=1): about 25 ms per hash.
PASSWORD_HASHER: Final = PasswordHasher(time_cost=2, memory_cost=19_456, parallelism=1)

TOKEN_BYTES: Final = 32  # 256 bits of randomness
# A logged-in user could otherwise mint tokens without end; past this the oldest one is dropped.
MAX_TOKENS_PER_USER: Final = 100
_PRUNE_EVERY: Final = 60.0  # seconds between sweeps of expired tokens

Clock = Callable[[], float]


class AuthError(Exception):
    """Base class of every error the auth service raises on purpose."""


class InvalidCredentials(AuthError):
    """Unknown user name or wrong password; deliberately indistinguishable."""


class RegistrationClosed(AuthError):
    """Registration is closed; an operator adds users with ``filekv user add``."""


class UsernameTaken(AuthError):
    """The user name is already registered."""


class TooManyAttempts(AuthError):
    """Too many failed logins for this user name; ``retry_after`` is whole seconds."""

    def __init__(self, retry_after: float) -> None:
        self.retry_after = max(1, math.ceil(retry_after))
        super().__init__(
            f"too many failed logins for this username; retry after {self.retry_after} s"
        )


@dataclass(frozen=True, slots=True)
class Session:
    """A logged-in client: ``session_id`` is the token's SHA-256 (never the token itself)."""

    session_id: str
    username: str


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """What a successful login hands out, once."""

    access_token: str
    expires_in: int


@dataclass(slots=True)
class _TokenRecord:
    username: str
    expires_at: float


@dataclass(slots=True)
class _FailureRecord:
    recent: deque[float] = field(default_factory=deque)  # failure times within the window
    lockouts: int = 0  # lock-outs in a row; sets the next delay
    locked_until: float = 0.0
    last_failure: float = 0.0


class LoginThrottle:
    """Per-user-name failure counting with exponential lock-outs (never permanent).

    Not thread-safe by itself: ``AuthService`` calls it under its lock.
    """

    def __init__(
        self,
        *,
        max_failures: int = 5,
        window: float = 60.0,
        base_delay: float = 30.0,
        max_delay: float = 900.0,
        max_names: int = 100_000,
    ) -> None:
        self.max_failures = max_failures
        self.window = window
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.max_names = max_names
        # Oldest failure first, so the table stays bounded under a spray of made-up names.
        self._names: OrderedDict[str, _FailureRecord] = OrderedDict()

    def retry_after(self, username: str, now: float) -> float:
        """Seconds until ``username`` may try again (0 if it may try now)."""
        record = self._names.get(username)
        if record is None:
            return 0.0
        return max(0.0, record.locked_until - now)

    def failed(self, username: str, now: float) -> None:
        """Count a failed login; lock the name once it failed too often within the window."""
        record = self._names.pop(username, None) or _FailureRecord()
        # A quiet name is forgiven: no failure for longer than the longest lock-out plus a window.
        if now - record.last_failure > self.max_delay + self.window:
            record = _FailureRecord()
        while record.recent and now - record.recent[0] > self.window:
            record.recent.popleft()
        record.recent.append(now)
        record.last_failure = now
        if len(record.recent) >= self.max_failures:
            delay = min(self.base_delay * 2**record.lockouts, self.max_delay)
            record.locked_until = now + delay
            record.lockouts += 1
            record.recent.clear()
            logger.warning(
                "login for %r locked for %.0f s after repeated failures", username, delay
            )
        self._names[username] = record
        while len(self._names) > self.max_names:
            self._names.popitem(last=False)

    def succeeded(self, username: str) -> None:
        """A correct password: forget the name's failures."""
        self._names.pop(username, None)


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
        self._hasher = hasher
        # Verified against for unknown users, so they cost the same time as wrong passwords.
        self._dummy_hash = hasher.hash(secrets.token_urlsafe(16))
        self._lock = threading.Lock()
        self._tokens: dict[str, _TokenRecord] = {}  # sha256(token) -> record
        # user -> their token digests, oldest login first (dict as an ordered set)
        self._tokens_of: dict[str, dict[str, None]] = {}
        self._last_prune = clock()

    # -- users -----------------------------------------------------------------------------------

    def register(self, username: str, password: str) -> None:
        """Self-service sign-up through the API; only while registration is open."""
        if self.registration != "open":
            raise RegistrationClosed("registration is closed")
        self.add_user(username, password)

    def add_user(self, username: str, password: str) -> None:
        """Add a user whatever the registration setting (the CLI's way).

        Raises ``InvalidUser`` (a ``ValueError``) for a bad name or password, ``UsernameTaken``.
        """
        check_new_user(username, password)
        # Cheap check first so a taken name does not cost a hash; ``add`` re-checks atomically.
        if self.users.password_hash(username) is not None:
            raise UsernameTaken("that username is taken")
        if not self.users.add(username, self._hasher.hash(password)):
            raise UsernameTaken("that username is taken")
        logger.info("user %r added", username)

    def usernames(self) -> list[str]:
        """Every registered user name, sorted."""
        return self.users.usernames()

    # -- tokens ----------------------------------------------------------------------------------

    def login(self, username: str, password: str) -> IssuedToken:
        """Check the password and hand out a new token.

        Raises ``TooManyAttempts`` while the name is locked (before any hashing, so a locked name
        costs the server nothing) and ``InvalidCredentials`` for an unknown name or wrong password.
        """
        with self._lock:
            wait = self._throttle.retry_after(username, self._clock())
        if wait > 0:
            raise TooManyAttempts(wait)

        stored = self.users.password_hash(username)
        if not self._verify(stored, password):
            if is_valid_username(username):  # names that can never exist need no lock-out state
                with self._lock:
                    self._throttle.failed(username, self._clock())
            logger.info("failed login for %r", username)
            raise InvalidCredentials("incorrect username or password")
        assert stored is not None  # _verify is never true without a stored hash
        self._upgrade_hash(username, stored, password)

        token = secrets.token_urlsafe(TOKEN_BYTES)
        with self._lock:
            now = self._clock()
            self._throttle.succeeded(username)
            self._prune(now)
            digest = _digest(token)
            self._tokens[digest] = _TokenRecord(username, now + self.token_ttl)
            mine = self._tokens_of.setdefault(username, {})
            mine[digest] = None
            while len(mine) > MAX_TOKENS_PER_USER:
                self._forget(next(iter(mine)))
        logger.info("login for %r", username)
        return IssuedToken(access_token=token, expires_in=int(self.token_ttl))

    def authenticate(self, token: str) -> Session | None:
        """The session a token belongs to, or None if unknown, revoked or expired."""
        digest = _digest(token)
        with self._lock:
            record = self._tokens.get(digest)
            if record is None:
                return None
            if self._clock() >= record.expires_at:
                self._forget(digest)
                return None
            return Session(session_id=digest, username=record.username)

    def logout(self, token: str) -> None:
        """Revoke this one token (the user's other tokens keep working)."""
        with self._lock:
            self._forget(_digest(token))

    # -- internals -------------------------------------------------------------------------------

    def _verify(self, stored: str | None, password: str) -> bool:
        try:
            return self._hasher.verify(stored or self._dummy_hash, password) and stored is not None
        except VerifyMismatchError:
            return False
        except (VerificationError, InvalidHashError):
            logger.error("stored password hash is unusable; treating the login as failed")
            return False

    def _upgrade_hash(self, username: str, stored: str, password: str) -> None:
        """Re-hash with the current parameters after a successful login, if they changed."""
        try:
            if self._hasher.check_needs_rehash(stored):
                self.users.replace_hash(username, stored, self._hasher.hash(password))
        except (InvalidHashError, OSError) as exc:
            # The exception's text is not logged: nothing hash-like may reach a log line.
            logger.warning("could not upgrade the password hash of %r: %s", username, type(exc))

    def _prune(self, now: float) -> None:
        """Drop expired tokens now and then (called under the lock)."""
        if now - self._last_prune < _PRUNE_EVERY:
            return
        self._last_prune = now
        expired = [d for d, r in self._tokens.items() if now >= r.expires_at]
        for digest in expired:
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


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()
