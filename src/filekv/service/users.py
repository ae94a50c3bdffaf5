"""The users file: ``users.json`` in the data directory, user names with argon2id hashes.

Layout (JSON, written whole each time; a few users, rarely changed)::

    {"format": 1, "users": {"alice": {"hash": "$argon2id$v=19$m=19456,t=2,p=1$...",
                                      "role": "user",
                                      "token_epoch": "5f0c3a9e1b7d4c26a8e9f1d2c3b4a596"}}}

``token_epoch`` is a random value every token of the user is bound to: ``revoke_tokens`` and
``set_password`` replace it, so every token issued before is refused; a removed user has none.
Files written before the field existed load with an empty epoch (their users keep working, and
the first revoke or password change gives them one).

``role`` is ``user`` or ``admin`` (``ROLES``). Only ``filekv user add --admin`` and ``filekv user
set-role`` make an admin; registration over HTTP always makes a ``user``. A file written before
the field existed loads with every user a ``user``; any other value makes the file damaged (it
is never guessed, least of all as ``admin``). A running server reads the role from the table
``poll`` keeps fresh, so a demoted admin loses the right on its next token check after the
reload (``RELOAD_INTERVAL``), like a revoked token.

Names are unique case-insensitively: ``alice`` and ``Alice`` cannot both be added. A name is kept
as registered, and looked up by its exact spelling first, then by its ASCII fold (``fold_name``:
A-Z to a-z, nothing else). A file from before that rule with two names differing only in case
still loads: each logs in with its exact spelling (a third spelling matches neither), and no new
such pair can be made.

Every write is atomic and durable: a temp file in the same directory (mode 0600) is written and
fsynced, renamed over ``users.json`` with ``os.replace``, then the directory is fsynced, so after a
crash or SIGKILL the file is either the old or the new version, never a mix. An ``flock`` on
``users.json.lock`` serializes read-modify-write cycles between processes (the server and
``filekv user ...``), and readers reload the file when its identity (inode, size, mtime) changes:
on every login, and on token checks through ``poll`` (one ``stat`` at most every
``RELOAD_INTERVAL`` seconds, never waiting for a lock).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import secrets
import string
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final, Literal, get_args

from filekv.engine.fileio import FileIO

logger = logging.getLogger(__name__)

USERS_FILE: Final = "users.json"
LOCK_FILE: Final = "users.json.lock"
FORMAT_VERSION: Final = 1
FILE_MODE: Final = 0o600
# Token checks look at the file's identity at most this often: a change made by another process
# (``filekv user revoke``) is seen by a running server within this many seconds.
RELOAD_INTERVAL: Final = 0.5

Role = Literal["user", "admin"]
ROLES: Final[tuple[Role, ...]] = get_args(Role)
DEFAULT_ROLE: Final[Role] = "user"

# A letter or digit first: no ".", "..", ".hidden", "-flag" or "__proto__"-like names.
USERNAME_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
USERNAME_RULE: Final = (
    "username must be 1-64 characters of A-Z, a-z, 0-9, '_', '.', '-', "
    "starting with a letter or digit"
)
MIN_PASSWORD_CHARS: Final = 8
# Long enough for any passphrase, short enough that hashing one costs nothing unusual.
MAX_PASSWORD_CHARS: Final = 1024
_EPOCH_BYTES: Final = 16

_USERNAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_ASCII_FOLD: Final = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)
_TEMP_PREFIX: Final = f".{USERS_FILE}."
# Recovery deletes only the engine's own unfinished files (NNNNNNNNNN.seg.tmp, .hint.tmp), so any
# suffix would survive an open; ".new" keeps clear of that pattern all the same.
_TEMP_SUFFIX: Final = ".new"
_MAX_REASON_CHARS: Final = 200


class InvalidUser(ValueError):
    """A user name or password that breaks the rules (see ``check_new_user``)."""


class UnknownUser(LookupError):
    """No user of that name (for the commands that change one)."""


class UsersFileCorrupt(RuntimeError):
    """``users.json`` exists but is not a users file (it is never written partially)."""


@dataclass(frozen=True, slots=True)
class UserRecord:
    """One user as stored: the name as registered, the argon2id hash, the token epoch, the role."""

    name: str
    password_hash: str
    token_epoch: str = ""
    role: Role = DEFAULT_ROLE


def fold_name(username: str) -> str:
    """The case-insensitive form of a name: ASCII letters lowered, every other character kept.

    Not ``casefold()``: it maps the Kelvin sign "\u212a" to "k" and the long s "\u017f" to
    "s", so "\u212aate" logged in as "kate" (``lower()`` too maps the Kelvin sign). Names are
    ASCII, so a spelling with any other character can match only a name spelt exactly so.
    """
    return username.translate(_ASCII_FOLD)


def is_valid_username(username: str) -> bool:
    """Whether ``username`` may be registered (1-64 of ``[A-Za-z0-9_.-]``, first alphanumeric)."""
    return _USERNAME_RE.fullmatch(username) is not None


def check_password(password: str) -> None:
    """Raise ``InvalidUser`` unless ``password`` may be set."""
    if len(password) < MIN_PASSWORD_CHARS:
        raise InvalidUser(f"password must be at least {MIN_PASSWORD_CHARS} characters")
    if len(password) > MAX_PASSWORD_CHARS:
        raise InvalidUser(f"password must be at most {MAX_PASSWORD_CHARS} characters")
    if not password.strip():
        raise InvalidUser("password must not be only whitespace")


def check_new_user(username: str, password: str) -> None:
    """Raise ``InvalidUser`` unless the name and password may be registered."""
    if not is_valid_username(username):
        raise InvalidUser(USERNAME_RULE)
    check_password(password)


def new_token_epoch() -> str:
    """A fresh random epoch: no token issued before it can match it."""
    return secrets.token_hex(_EPOCH_BYTES)


@dataclass(frozen=True, slots=True)
class _Table:
    """An immutable snapshot of the file: replaced whole, so readers need no lock."""

    users: Mapping[str, UserRecord]
    folded: Mapping[str, str | None]  # fold_name -> the one name with it, None if two share it

    @classmethod
    def of(cls, users: Mapping[str, UserRecord]) -> _Table:
        folded: dict[str, str | None] = {}
        for name in users:
            key = fold_name(name)
            folded[key] = None if key in folded else name
        return cls(users, folded)

    def find(self, username: str) -> UserRecord | None:
        exact = self.users.get(username)
        if exact is not None:
            return exact
        name = self.folded.get(fold_name(username))
        return self.users[name] if name is not None else None

    def taken(self, username: str) -> bool:
        return fold_name(username) in self.folded


_EMPTY: Final = _Table.of({})


class UserFile:
    """The users table, persisted in ``<data_dir>/users.json``.

    Safe to share between threads; concurrent processes are serialized by an ``flock``.
    """

    def __init__(self, data_dir: Path, *, io: FileIO | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / USERS_FILE
        self.io = io or FileIO()
        self._lock_path = self.data_dir / LOCK_FILE
        self._mutex = threading.Lock()
        self._table = _EMPTY
        self._identity: tuple[int, int, int] | None = None
        self._bad: tuple[tuple[int, int, int], UsersFileCorrupt] | None = None
        self._next_poll = 0.0

    # -- reading ---------------------------------------------------------------------------------

    def find(self, username: str) -> UserRecord | None:
        """The user of that name (exact spelling, else the one with its ASCII fold), or None."""
        with self._mutex:
            self._refresh()
            return self._table.find(username)

    def password_hash(self, username: str) -> str | None:
        """The stored hash of ``username``, or None if there is no such user."""
        found = self.find(username)
        return found.password_hash if found is not None else None

    def usernames(self) -> list[str]:
        """Every user name, sorted."""
        with self._mutex:
            self._refresh()
            return sorted(self._table.users)

    def records(self) -> list[UserRecord]:
        """Every user, sorted by name."""
        with self._mutex:
            self._refresh()
            return [self._table.users[name] for name in sorted(self._table.users)]

    def cached(self, name: str) -> UserRecord | None:
        """The user of exactly that name as last read, without any I/O (for token checks)."""
        return self._table.users.get(name)

    def known(self, username: str) -> bool:
        """Whether a user has that name (its ASCII fold) as last read: no I/O, no lock, never
        raises (for log lines written under another lock)."""
        return self._table.find(username) is not None

    def poll(self) -> None:
        """Reload the file if it changed, at most every ``RELOAD_INTERVAL`` s; never blocks.

        For the token-check hot path: it skips the check when another thread holds the table
        (that thread refreshes it anyway), and a damaged file leaves the last good table in
        place (logins and registrations report the damage; it is logged once).
        """
        now = time.monotonic()  # taken before the stat: a change after it is seen next time
        if now < self._next_poll or not self._mutex.acquire(blocking=False):
            return
        try:
            self._next_poll = now + RELOAD_INTERVAL
            with contextlib.suppress(UsersFileCorrupt, OSError):
                self._refresh()
        finally:
            self._mutex.release()

    # -- writing ---------------------------------------------------------------------------------

    def add(self, username: str, password_hash: str, *, role: Role = DEFAULT_ROLE) -> bool:
        """Store a new user; False (nothing written) if the name is taken, in any case."""
        with self._mutex, self._file_lock():
            self._refresh()
            if self._table.taken(username):
                return False
            users = dict(self._table.users)
            users[username] = UserRecord(username, password_hash, new_token_epoch(), role)
            self._write(users)
            return True

    def replace_hash(self, username: str, old_hash: str, new_hash: str) -> bool:
        """Swap a user's hash (after a parameter upgrade) if it is still ``old_hash``.

        The token epoch stays: this is the same password, stored better.
        """
        with self._mutex, self._file_lock():
            self._refresh()
            found = self._table.users.get(username)
            if found is None or found.password_hash != old_hash:
                return False
            users = dict(self._table.users)
            users[username] = replace(found, password_hash=new_hash)
            self._write(users)
            return True

    def set_password(self, username: str, password_hash: str) -> UserRecord:
        """A new password; every token of the user dies with the old epoch."""
        return self._change(
            username,
            lambda r: replace(r, password_hash=password_hash, token_epoch=new_token_epoch()),
        )

    def revoke_tokens(self, username: str) -> UserRecord:
        """A new token epoch: every token the user holds is refused from now on."""
        return self._change(username, lambda r: replace(r, token_epoch=new_token_epoch()))

    def set_role(self, username: str, role: Role) -> UserRecord:
        """Make the user an ``admin`` or a ``user``; its tokens stay (roles are read per check)."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
        return self._change(username, lambda r: replace(r, role=role))

    def remove(self, username: str) -> UserRecord:
        """Delete the user (their tokens die with them); the removed record is returned."""
        with self._mutex, self._file_lock():
            self._refresh()
            found = self._table.find(username)
            if found is None:
                raise UnknownUser(f"no user {username!r}")
            users = dict(self._table.users)
            del users[found.name]
            self._write(users)
            return found

    # -- internals -------------------------------------------------------------------------------

    def _change(self, username: str, change: Callable[[UserRecord], UserRecord]) -> UserRecord:
        with self._mutex, self._file_lock():
            self._refresh()
            found = self._table.find(username)
            if found is None:
                raise UnknownUser(f"no user {username!r}")
            changed = change(found)
            users = dict(self._table.users)
            users[found.name] = changed
            self._write(users)
            return changed

    @contextlib.contextmanager
    def _file_lock(self) -> Iterator[None]:
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._remove_stale_temp_files()
            yield
        finally:
            os.close(fd)  # closing releases the flock

    def _refresh(self) -> None:
        """Reload the file if another writer (or process) replaced it since we read it."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._table, self._identity, self._bad = _EMPTY, None, None
            return
        identity = (st.st_ino, st.st_size, st.st_mtime_ns)
        if identity == self._identity:
            return
        if self._bad is not None and self._bad[0] == identity:
            raise self._bad[1]  # already logged
        try:
            table = _Table.of(_decode(self.io.read_file(str(self.path)), self.path))
        except UsersFileCorrupt as exc:
            self._bad = (identity, exc)
            logger.error("%s; logins and registrations are refused until it is fixed", exc)
            raise
        self._table, self._identity, self._bad = table, identity, None
        pairs = sorted(n for n in table.users if table.folded[fold_name(n)] is None)
        if pairs:
            logger.warning(
                "users.json has names differing only in case (%s): each logs in only with its "
                "exact spelling",
                ", ".join(pairs),
            )

    def _write(self, users: dict[str, UserRecord]) -> None:
        document = {
            "format": FORMAT_VERSION,
            "users": {
                r.name: {"hash": r.password_hash, "role": r.role, "token_epoch": r.token_epoch}
                for r in users.values()
            },
        }
        data = json.dumps(document, indent=1, sort_keys=True).encode() + b"\n"
        temp = str(
            self.data_dir / f"{_TEMP_PREFIX}{os.getpid()}.{threading.get_ident()}{_TEMP_SUFFIX}"
        )
        fd = self.io.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
        try:
            # O_CREAT's mode is masked by the umask and ignored for an existing file: set it.
            os.fchmod(fd, FILE_MODE)
            self.io.write(fd, data)
            self.io.fsync(fd)
        except BaseException:
            self.io.close(fd)
            with contextlib.suppress(OSError):
                self.io.unlink(temp)
            raise
        self.io.close(fd)
        try:
            self.io.rename(temp, str(self.path))
        except BaseException:
            with contextlib.suppress(OSError):
                self.io.unlink(temp)
            raise
        self.io.fsync_dir(str(self.data_dir))
        self._table = _Table.of(users)
        st = os.stat(self.path)
        self._identity, self._bad = (st.st_ino, st.st_size, st.st_mtime_ns), None
        logger.info("users file written: %d user(s)", len(users))

    def _remove_stale_temp_files(self) -> None:
        """Drop temp files a killed writer left behind (only ever called under the flock)."""
        for stale in self.data_dir.glob(f"{_TEMP_PREFIX}*{_TEMP_SUFFIX}"):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()


def _decode(raw: bytes, path: Path) -> dict[str, UserRecord]:
    try:
        document: Any = json.loads(raw)
        if document.get("format") != FORMAT_VERSION:
            raise ValueError("unknown format")
        users: dict[str, UserRecord] = {}
        for name, entry in document["users"].items():
            if not isinstance(name, str) or not isinstance(entry["hash"], str):
                raise TypeError("a user entry is not a name with a hash")
            epoch = entry.get("token_epoch", "")
            if not isinstance(epoch, str):
                raise TypeError("a token_epoch is not a string")
            role = entry.get("role", DEFAULT_ROLE)
            if role not in ROLES:
                raise ValueError(f"a role is not one of {', '.join(ROLES)}")
            users[name] = UserRecord(name, entry["hash"], epoch, role)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        # The reason names the problem, never the file's content (a hash could be in it).
        reason = f"{type(exc).__name__}: {exc}"[:_MAX_REASON_CHARS]
        if isinstance(exc, KeyError):
            reason = "a required field is missing"
        raise UsersFileCorrupt(f"{path}: not a filekv users file ({reason})") from exc
    return users
