"""The transaction lock: who holds the store's one transaction, and the lease that frees it.

The holder is a login session (``Session.session_id``, a hash of the token), not a user name: the
same user logged in twice is two clients. While a transaction is open, the holder's writes are
staged in the engine ``Transaction`` and everyone else's writes are refused with ``Locked``.

The lease: every call by the holder renews it; a transaction idle for longer than ``timeout`` is
aborted whole and the lock released. However busy its holder, a transaction open for longer than
``max_seconds`` (the ``transaction_max_seconds`` setting) is aborted the same way, so no client
can keep the store read-only for more than that: the transaction ends at whichever deadline comes
first (``_deadline``). Expiry is checked lazily on every access *and* by a background task
(``run_reaper``), so a holder that vanished does not keep the lock until someone else asks.

After a transaction is rolled back for passing ``max_seconds``, its *user* (every session of it:
a second login would otherwise take turns with the first) may not begin another for ``cooldown``
seconds (``TransactionCooldown``, 429): without that, a client looping on begin got the lock back
the instant it was freed, and the writers waiting out their 423's ``Retry-After`` woke exactly at
the deadline to find it taken again, so the store stayed read-only for ever.

The holder's login must stay alive: ``begin`` takes a check of it (``alive``: the token is not
logged out, expired or revoked, and its user still exists). A holder whose token died (``filekv
user revoke|passwd|remove``, also from another process, or its ``token_ttl`` passing) can never
commit, so its transaction is rolled back within ``LOGIN_CHECK_INTERVAL`` (the check is made
at most that often: by the first request after it, or by the reaper); like a logout, it is not
remembered (its next call is 401).

An admin may end the transaction at any time (``break_lock``, ``DELETE /transactions``): it is
aborted the same way, whoever holds it, and the admin's and the holder's user names are logged.

A session whose transaction was ended behind its back (by the lease, the maximum age or an admin)
is remembered for a while (``remember_expired``), with the reason, so it is told (409:
``TransactionExpired``, or ``TransactionBroken`` for an admin) rather than silently starting
afresh: every write it sends, believing it staged, is refused, until it makes a transaction call
(begin, commit or rollback), which is refused once and so acknowledges the loss. Only then do its
writes go to the store again. A session that logs out (``end_session``) loses its transaction at
once and is not remembered: its token is dead, so its next call is 401 anyway.

One decision point per write. A write's body arrives over many event-loop turns, so a commit, a
rollback, a ``begin`` or the lease may change the transaction while it is read. ``writer``
checks the lock before the body is read and hands out a ``WriteTicket``: the generation of the
transaction's levels it saw (``NO_TRANSACTION`` when none was open). Every change of the levels
(begin, rollback, the start and the end of a commit, the end of the transaction) takes a new
generation. After the body is read, ``write_target`` decides, and the route stages or appends
without awaiting in between: the same generation still open means the write is staged there; no
transaction then and none now means it goes to the store; anything else is refused (409 to the
holder whose transaction ended or changed meanwhile, 423 to anyone else), so a write is never
staged in a level it did not start in, nor applied after the transaction it was sent into.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, NewType

from filekv.service.errors import (
    Locked,
    NoTransaction,
    TransactionBroken,
    TransactionCooldown,
    TransactionEnded,
    TransactionExpired,
)
from filekv.service.users import RELOAD_INTERVAL

if TYPE_CHECKING:
    from filekv.engine import Store, Transaction

logger = logging.getLogger(__name__)

_REAPER_MIN_SLEEP = 0.005
# How often the reaper asks whether the holder's login is still alive: a revoke from another
# process reaches the token table no faster than users.json is polled, so more often buys nothing.
LOGIN_CHECK_INTERVAL: Final = RELOAD_INTERVAL
# The shortest cooldown, whatever ``max_seconds``: a writer refused with 423 waits a Retry-After in
# whole seconds rounded up, so it wakes up to 1 s after the deadline, plus its round trip and a
# busy machine's scheduling; the cooldown must still be running when it asks.
_MIN_COOLDOWN: Final = 5.0

# Who a cooldown applies to: ("user", name), or ("session", id) for a holder known by no name.
_Who = tuple[str, str]

WriteTicket = NewType("WriteTicket", int)
"""What a write saw when it started: the transaction's level generation, or NO_TRANSACTION."""

NO_TRANSACTION: Final = WriteTicket(0)

_COMMITTING: Final = "your transaction is being committed; nothing more can join it"
_BROKEN: Final = "an admin ended your transaction: it was rolled back"


@dataclass(frozen=True, slots=True)
class _Ended:
    """A transaction rolled back behind its holder's back: why, and when to forget the session."""

    error: type[NoTransaction]
    reason: str
    forget_at: float


@dataclass(frozen=True, slots=True)
class TransactionStatus:
    """What ``GET /transactions`` reports to one caller."""

    active: bool
    mine: bool
    depth: int
    expires_in: float | None


@dataclass(frozen=True, slots=True)
class LockState:
    """The transaction lock as ``GET /metrics`` shows it: whoever holds it."""

    active: bool
    depth: int
    held_seconds: float


class TransactionManager:
    """Owns the one open engine transaction, its holder and its lease.

    Used from the event loop only (the routes that call it are ``async``), so its state needs no
    lock: nothing else runs between two of its statements but at an ``await``.
    """

    def __init__(
        self,
        store: Store,
        *,
        timeout: float,
        max_seconds: float = math.inf,
        remember_expired: float | None = None,
        cooldown: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not timeout > 0 or not max_seconds > 0:
            raise ValueError("timeout and max_seconds must be positive")
        self._store = store
        self._timeout = timeout
        self._max_seconds = max_seconds
        # As long as ``max_seconds`` (at least ``_MIN_COOLDOWN``): a user that always wants the
        # lock then holds it at most half the time, and every writer that waited out its 423
        # finds a lock that user cannot take back, with as long to begin as any transaction may
        # last. Shorter would let a looping client win again the moment it ends; it only bars
        # the user from *beginning* (plain writes go on), so longer would punish for nothing.
        self._cooldown_seconds = (
            cooldown if cooldown is not None else max(max_seconds, _MIN_COOLDOWN)
        )
        # Long enough that a client coming back after a pause still learns its work was dropped.
        self._remember_expired = (
            remember_expired if remember_expired is not None else max(3600.0, 10 * timeout)
        )
        self._clock = clock
        self._tx: Transaction | None = None
        self._holder: str | None = None
        self._holder_name: str | None = None  # the holder's user name, for the log and cooldown
        self._holder_alive: Callable[[], bool] | None = None  # whether its login still is
        self._login_checked_at = -math.inf  # when ``_holder_alive`` was last asked
        self._opened_at = 0.0
        self._lease_expires_at = 0.0
        self._committing = False
        self._commit_finished: asyncio.Event | None = None  # set when the running commit ends
        # Bumped by every change of the transaction's levels; never 0 while one is open.
        self._generation = 0
        self._opened_generation = 0  # the generation that opened the current transaction
        self._expired: dict[str, _Ended] = {}  # session_id -> why it ended, when to forget it
        self._cooldowns: dict[_Who, float] = {}  # user -> when it may begin again
        self._wakeup: asyncio.Event | None = None  # set by begin() for the sleeping reaper

    # -- what routes ask -------------------------------------------------------------------

    @property
    def holder(self) -> str | None:
        """The holder's session id as things stand, without first checking the lease."""
        return self._holder

    @property
    def is_open(self) -> bool:
        """Whether anyone holds a transaction (after retiring an expired one)."""
        self._expire_if_due()
        return self._tx is not None

    @property
    def wants_identity(self) -> bool:
        """Whether a write must be attributed to a session (a transaction is open, or expired)."""
        self._expire_if_due()
        return self._tx is not None or bool(self._expired)

    def reader(self, session_id: str | None) -> Transaction | None:
        """The holder's transaction for reading its staged view; None for everyone else.

        None for the holder too while its commit runs: the staged view is being applied, and the
        store shows each key either before or after it.
        """
        self._expire_if_due()
        if self._tx is not None and session_id is not None and session_id == self._holder:
            self._renew()
            return None if self._committing else self._tx
        return None

    def writer(self, session_id: str | None) -> WriteTicket:
        """Check that ``session_id`` may write, before its request is read; the write's ticket.

        Raises ``Locked`` for anyone but the holder while a transaction is open,
        ``TransactionEnded`` for the holder while its commit runs, and ``TransactionExpired``
        for a session whose transaction the lease rolled back (until it acknowledges).
        """
        self._expire_if_due()
        if self._tx is None:
            if session_id is not None and session_id in self._expired:
                raise self._expired_error(session_id, acknowledge=False)
            return NO_TRANSACTION
        if session_id is None or session_id != self._holder:
            raise Locked(self._remaining())
        if self._committing:
            raise TransactionEnded(_COMMITTING)
        self._renew()
        return WriteTicket(self._generation)

    def write_target(self, session_id: str | None, ticket: WriteTicket) -> Transaction | None:
        """Where a write that started with ``ticket`` goes now: a transaction, or None (the store).

        The one decision point: the caller stages into the answer, or appends to the store,
        without awaiting first. Refuses (see the module docstring) when the transaction the
        write started in ended or changed level, or one began, since ``writer``.
        """
        self._expire_if_due()
        tx = self._tx
        if ticket == NO_TRANSACTION:
            if tx is None:
                if session_id is not None and session_id in self._expired:
                    raise self._expired_error(session_id, acknowledge=False)
                return None
            if session_id is None or session_id != self._holder:
                raise Locked(self._remaining())
            raise TransactionEnded(
                "you began a transaction while this write was received; it was not applied"
            )
        if tx is not None and ticket == self._generation:
            self._renew()
            return tx
        if session_id is not None and session_id in self._expired:
            raise self._expired_error(session_id, acknowledge=False)
        if tx is not None and session_id == self._holder and ticket >= self._opened_generation:
            if self._committing:
                raise TransactionEnded(_COMMITTING)
            raise TransactionEnded(
                "your transaction changed level (begin or rollback) while this write was "
                "received; it was not staged"
            )
        raise TransactionEnded(
            "your transaction ended while this write was received; it was not applied"
        )

    def begin(
        self,
        session_id: str,
        *,
        username: str | None = None,
        alive: Callable[[], bool] | None = None,
    ) -> int:
        """Open the transaction, or a nested level of it for its holder; the new depth.

        ``username`` is the session's user: named in the log lines about this transaction, and
        the one a cooldown bars (``TransactionCooldown``) after a rollback for its maximum age.
        ``alive`` tells whether the session's login is still valid; once it is not, the
        transaction is rolled back (nobody could commit it).
        """
        self._expire_if_due()
        self._raise_if_expired(session_id)
        if self._tx is None:
            who = _who_of(session_id, username)
            cooldown_until = self._cooldowns.get(who)
            if cooldown_until is not None:
                raise TransactionCooldown(cooldown_until - self._clock(), self._max_seconds)
            self._tx = self._store.transaction()
            self._holder = session_id
            self._holder_name = username
            self._holder_alive = alive
            self._opened_at = self._login_checked_at = self._clock()  # it just logged in
            self._renew()
            self._generation += 1
            self._opened_generation = self._generation
            if self._wakeup is not None:
                self._wakeup.set()
            logger.info("transaction opened by %s", self._who())
            return self._tx.depth
        if session_id != self._holder:
            raise Locked(self._remaining())
        if self._committing:
            raise TransactionEnded(_COMMITTING)
        self._renew()
        depth = self._tx.begin()  # first: a level refused (TransactionTooDeep) changes nothing
        self._generation += 1
        return depth

    async def commit(self, session_id: str) -> int:
        """Apply every level atomically and durably (the fsync off the loop); writes applied."""
        tx = self._holders_transaction(session_id)
        self._committing = True
        self._commit_finished = finished = asyncio.Event()
        self._generation += 1  # writes received meanwhile are refused, never half in it
        try:
            applied = await tx.acommit()
        finally:
            self._committing = False
            finished.set()
            if tx.active:  # it failed (DiskFull, say): still open, with what it had
                self._generation += 1
            else:
                self._release()
        logger.info("transaction committed: %d writes", applied)
        return applied

    def release(self, session_id: str) -> int:
        """Merge the innermost level into the one below; the new depth (409 at depth 1)."""
        tx = self._holders_transaction(session_id)
        depth = tx.release()
        self._generation += 1  # a write received meanwhile was aimed at the level that went
        return depth

    def rollback(self, session_id: str) -> int:
        """Undo the innermost level; the new depth (0: the transaction ended)."""
        tx = self._holders_transaction(session_id)
        depth = tx.rollback()
        self._generation += 1
        if depth == 0:
            self._release()
        return depth

    def status(self, session_id: str | None) -> TransactionStatus:
        """The lock as seen by ``session_id``; renews the lease when it is the holder's."""
        self._expire_if_due()
        if self._tx is None:
            return TransactionStatus(active=False, mine=False, depth=0, expires_in=None)
        mine = session_id is not None and session_id == self._holder
        if mine:
            self._renew()
        return TransactionStatus(
            active=True,
            mine=mine,
            depth=self._tx.depth if mine else 0,
            expires_in=round(self._remaining(), 3),
        )

    def lock_state(self) -> LockState:
        """Whether the lock is held, how deep, and for how long (metrics; renews nothing)."""
        self._expire_if_due()
        if self._tx is None:
            return LockState(active=False, depth=0, held_seconds=0.0)
        held = max(0.0, self._clock() - self._opened_at)
        return LockState(active=True, depth=self._tx.depth, held_seconds=held)

    async def break_lock(self, admin: str) -> int | None:
        """An admin ends the transaction, whoever holds it: its depth, or None if none was open.

        Every level is rolled back and the lock released; the former holder is told, as after an
        expired lease (``TransactionBroken``, 409). A commit in flight is waited for, not aborted
        under (that could split its record): if it succeeds, there is nothing left to end, even
        if another client began a transaction the moment it released the lock (that one is not
        the transaction this admin asked about, and is left alone).
        """
        waited_for = self._opened_generation if self._committing else None
        while self._committing and self._commit_finished is not None:
            await self._commit_finished.wait()
        self._expire_if_due()
        if waited_for is not None and self._opened_generation != waited_for:
            logger.info(
                "admin %r asked to break the transaction lock; the transaction it found "
                "committed meanwhile",
                admin,
            )
            return None
        if self._tx is None:
            logger.info("admin %r asked to break the transaction lock; none was open", admin)
            return None
        depth = self._tx.depth
        logger.warning(
            "admin %r broke the transaction lock of %s at depth %d: rolled back",
            admin,
            self._who(),
            depth,
        )
        self._end(TransactionBroken, _BROKEN, self._clock())
        return depth

    # -- lifecycle -------------------------------------------------------------------------

    async def run_reaper(self) -> None:
        """Forever: abort the transaction when its lease runs out, even if nobody asks."""
        self._wakeup = wakeup = asyncio.Event()
        while True:
            # Asleep until a transaction opens, then until its lease would run out (a renewal
            # only means waking early and sleeping again), or its holder's login is due a check.
            delay = None
            if self._tx is not None:
                delay = max(_REAPER_MIN_SLEEP, self._remaining())
                if self._holder_alive is not None:
                    delay = min(delay, LOGIN_CHECK_INTERVAL)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wakeup.wait(), delay)
            wakeup.clear()
            self._expire_if_due()

    def end_session(self, session_id: str) -> None:
        """The session logged out: roll back its transaction whole and release the lock.

        A commit in flight is left to finish (aborting under it could split its record); it
        releases the lock itself.
        """
        self._expired.pop(session_id, None)
        if self._tx is None or session_id != self._holder or self._committing:
            return
        logger.info("%s logged out holding the transaction; rolled back", self._who())
        self._tx.abort()
        self._release()

    def close(self) -> None:
        """Abort any open transaction: nothing staged outlives the server."""
        if self._tx is not None:
            logger.warning("shutting down with a transaction open: rolled back")
            self._tx.abort()
            self._release()

    # -- internals -------------------------------------------------------------------------

    def _holders_transaction(self, session_id: str) -> Transaction:
        self._expire_if_due()
        self._raise_if_expired(session_id)
        if self._tx is None or session_id != self._holder:
            raise NoTransaction("you hold no transaction")
        if self._committing:
            raise TransactionEnded(_COMMITTING)
        self._renew()
        return self._tx

    def _raise_if_expired(self, session_id: str) -> None:
        """For transaction calls: tell an expired session, once; that acknowledges it."""
        if session_id in self._expired:
            raise self._expired_error(session_id, acknowledge=True)

    def _expired_error(self, session_id: str, *, acknowledge: bool) -> NoTransaction:
        ended = self._expired[session_id]
        message = f"{ended.reason}; nothing of it was applied"
        if acknowledge:
            del self._expired[session_id]
        else:
            message += (
                ", nor this write; your writes are refused until you begin, commit or roll back"
            )
        return ended.error(message)

    def _deadline(self) -> float:
        """When the open transaction is rolled back: its lease's end, or its maximum age."""
        return min(self._lease_expires_at, self._opened_at + self._max_seconds)

    def _remaining(self) -> float:
        return max(0.0, self._deadline() - self._clock())

    def _renew(self) -> None:
        self._lease_expires_at = self._clock() + self._timeout

    def _who(self) -> str:
        """The holder for a log line: its user name and session id prefix (never the token)."""
        session = (self._holder or "")[:8]
        if self._holder_name is None:
            return f"session {session}"
        return f"{self._holder_name!r} (session {session})"

    def _check_login(self, now: float) -> bool:
        """Whether the holder's login is still alive (asked now, and remembered when)."""
        self._login_checked_at = now
        alive = self._holder_alive
        return alive is None or alive()

    def _expire_if_due(self) -> None:
        now = self._clock()
        if self._expired:
            for session_id in [s for s, e in self._expired.items() if e.forget_at <= now]:
                del self._expired[session_id]
        if self._cooldowns:
            for who in [w for w, until in self._cooldowns.items() if until <= now]:
                del self._cooldowns[who]
        # A commit in flight is not idle: its fsync may outlast a short lease. Nor is it aborted
        # under for a dead login (that could split its record): it releases the lock itself.
        if self._tx is None or self._committing:
            return
        # At most every LOGIN_CHECK_INTERVAL, not on each of the requests that pass here (the
        # check takes the auth lock and may poll users.json): a revoke from another process is
        # seen no sooner anyway, and a logout ends the session at once (end_session).
        if (
            self._holder_alive is not None
            and now - self._login_checked_at >= LOGIN_CHECK_INTERVAL
            and not self._check_login(now)
        ):
            logger.warning(
                "the login of %s ended (token expired or revoked, or user removed) while it held "
                "the transaction; rolled back",
                self._who(),
            )
            self._tx.abort()
            self._release()
            return
        if now < self._deadline():
            return
        if now >= self._opened_at + self._max_seconds:
            logger.warning(
                "transaction of %s open longer than transaction_max_seconds (%g s); rolled back; "
                "no session of its user may begin another for %g s",
                self._who(),
                self._max_seconds,
                self._cooldown_seconds,
            )
            reason = (
                f"your transaction expired: it was open longer than {self._max_seconds:g} s "
                "(transaction_max_seconds) and was rolled back"
            )
            assert self._holder is not None
            who = _who_of(self._holder, self._holder_name)
            self._cooldowns[who] = now + self._cooldown_seconds
        else:
            logger.warning("transaction of %s expired; rolled back", self._who())
            reason = (
                f"your transaction expired: it was idle longer than {self._timeout:g} s and was "
                "rolled back"
            )
        self._end(TransactionExpired, reason, now)

    def _end(self, error: type[NoTransaction], reason: str, now: float) -> None:
        """Abort the open transaction behind its holder's back, who is told ``reason`` later."""
        assert self._tx is not None
        holder = self._holder
        self._tx.abort()
        self._release()
        if holder is not None:
            self._expired[holder] = _Ended(error, reason, now + self._remember_expired)

    def _release(self) -> None:
        self._generation += 1
        self._tx = None
        self._holder = None
        self._holder_name = None
        self._holder_alive = None
        self._lease_expires_at = 0.0


def _who_of(session_id: str, username: str | None) -> _Who:
    """Whom a cooldown bars: the user (all its sessions), or the session when it has no name."""
    return ("user", username) if username is not None else ("session", session_id)
