"""The users file: ``users.json`` in the data directory, mapping user names to argon2id hashes.

Layout (JSON, written whole each time; a few users, rarely changed)::

    {"format": 1, "users": {"alice": {"hash": "$argon2id$v=19$m=19456,t=2,p=1$..."}}}

Every write is atomic and durable: a temp file in the same directory (mode 0600) is written and
fsynced, renamed over ``users.json`` with ``os.replace``, then the directory is fsynced, so after a
crash or SIGKILL the file is either the old or the new version, never a mix. An ``flock`` on
``users.json.lock`` serializes read-modify-write cycles between processes (the server and
``filekv user add``), and readers reload the file when its identity (inode, size, mtime) changes.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

logger = logging.getLogger(__name__)

USERS_FILE: Final = "users.json"
LOCK_FILE: Final = "users.json.lock"
FORMAT_VERSION: Final = 1
FILE_MODE: Final = 0o600

USERNAME_PATTERN: Final = r"^[A-Za-z0-9_.-]{1,64}$"
MIN_PASSWORD_CHARS: Final = 8
# Long enough for any passphrase, short enough that hashing one costs nothing unusual.
MAX_PASSWORD_CHARS: Final = 1024

_USERNAME_RE: Final = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_TEMP_PREFIX: Final = f".{USERS_FILE}."
# Not ".tmp": the engine deletes every "*.tmp" in the data directory when it opens.
_TEMP_SUFFIX: Final = ".new"


class InvalidUser(ValueError):
    """A user name or password that breaks the rules (see ``check_new_user``)."""


class UsersFileCorrupt(RuntimeError):
    """``users.json`` exists but is not a users file (it is never written partially)."""


def is_valid_username(username: str) -> bool:
    """Whether ``username`` follows the rules (1-64 of ``[A-Za-z0-9_.-]``)."""
    return _USERNAME_RE.fullmatch(username) is not None


def check_new_user(username: str, password: str) -> None:
    """Raise ``InvalidUser`` unless the name and password may be registered."""
    if not is_valid_username(username):
        raise InvalidUser("username must be 1-64 characters of A-Z, a-z, 0-9, '_', '.', '-'")
    if len(password) < MIN_PASSWORD_CHARS:
        raise InvalidUser(f"password must be at least {MIN_PASSWORD_CHARS} characters")
    if len(password) > MAX_PASSWORD_CHARS:
        raise InvalidUser(f"password must be at most {MAX_PASSWORD_CHARS} characters")


class UserFile:
    """The user name -> password hash table, persisted in ``<data_dir>/users.json``.

    Safe to share between threads; concurrent processes are serialized by an ``flock``.
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / USERS_FILE
        self._lock_path = self.data_dir / LOCK_FILE
        self._mutex = threading.Lock()
        self._users: dict[str, str] = {}
        self._identity: tuple[int, int, int] | None = None

    # -- reading ---------------------------------------------------------------------------------

    def password_hash(self, username: str) -> str | None:
        """The stored hash of ``username``, or None if there is no such user."""
        with self._mutex:
            self._refresh()
            return self._users.get(username)

    def usernames(self) -> list[str]:
        """Every user name, sorted."""
        with self._mutex:
            self._refresh()
            return sorted(self._users)

    # -- writing ---------------------------------------------------------------------------------

    def add(self, username: str, password_hash: str) -> bool:
        """Store a new user; False (and nothing written) if the name is already taken."""
        with self._mutex, self._file_lock():
            self._refresh()
            if username in self._users:
                return False
            users = dict(self._users)
            users[username] = password_hash
            self._write(users)
            return True

    def replace_hash(self, username: str, old_hash: str, new_hash: str) -> bool:
        """Swap a user's hash (after a parameter upgrade) if it is still ``old_hash``."""
        with self._mutex, self._file_lock():
            self._refresh()
            if self._users.get(username) != old_hash:
                return False
            users = dict(self._users)
            users[username] = new_hash
            self._write(users)
            return True

    # -- internals -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _file_lock(self) -> Iterator[None]:
        self.data_dir.mkdir(parents=True, exist_ok=True)
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
            self._users, self._identity = {}, None
            return
        identity = (st.st_ino, st.st_size, st.st_mtime_ns)
        if identity == self._identity:
            return
        with open(self.path, "rb") as f:
            raw = f.read()
        self._users = _decode(raw, self.path)
        self._identity = identity

    def _write(self, users: dict[str, str]) -> None:
        document = {"format": FORMAT_VERSION, "users": {n: {"hash": h} for n, h in users.items()}}
        data = json.dumps(document, indent=1, sort_keys=True).encode() + b"\n"
        temp = self.data_dir / f"{_TEMP_PREFIX}{os.getpid()}.{threading.get_ident()}{_TEMP_SUFFIX}"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
        try:
            # O_CREAT's mode is masked by the umask and ignored for an existing file: set it.
            os.fchmod(fd, FILE_MODE)
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
        os.close(fd)
        os.replace(temp, self.path)
        _fsync_dir(self.data_dir)
        self._users = users
        st = os.stat(self.path)
        self._identity = (st.st_ino, st.st_size, st.st_mtime_ns)
        logger.info("users file written: %d user(s)", len(users))

    def _remove_stale_temp_files(self) -> None:
        """Drop temp files a killed writer left behind (only ever called under the flock)."""
        for stale in self.data_dir.glob(f"{_TEMP_PREFIX}*{_TEMP_SUFFIX}"):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()


def _decode(raw: bytes, path: Path) -> dict[str, str]:
    try:
        document: Any = json.loads(raw)
        if document.get("format") != FORMAT_VERSION:
            raise ValueError(f"unknown format {document.get('format')!r}")
        users = {str(name): str(entry["hash"]) for name, entry in document["users"].items()}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UsersFileCorrupt(f"{path}: not a filekv users file ({exc})") from exc
    return users


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
