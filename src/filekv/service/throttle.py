"""Login throttling that an anonymous client cannot turn against a named user.

Three budgets of failed password checks, all in memory, all bounded::

    budget    key                      limit (defaults)                 then
    pair      (user name, address)     5 failures in 60 s               the pair waits 30 s,
                                                                        doubling up to 15 min
    address   address, any name        30 failures in 60 s              the address waits 60 s,
                                                                        doubling up to 15 min
    name      user name, any address   a bucket of 100 failures,        retry in about 1 s
                                       one back every second            (slows, never locks)

- The pair budget is what stops guessing one password from one place. Guesses from one address
  never lock the name for anyone else: alice, logging in from her own address, is not affected.
  A success resets the pair (not the address: one good account must not reset a sprayer).
- The address budget stops one address spraying many names.
- The name budget stops many addresses guessing one name together: past 100 failures they share
  one guess a second.
- Neither of the last two can lock an owner out: a (name, address) pair with a successful login
  within ``trusted_for`` (7 days) skips both, so alice behind the same NAT as a sprayer, or at
  her usual address during a distributed attack, still logs in (her pair budget still applies).

A lock-out never lasts forever: a pair or address quiet for longer than the longest lock-out
plus a window starts again from the first delay. User names are keyed as logins fold them (``alice``
and ``ALICE`` share a budget); IPv6 addresses by their /64, which one host usually holds whole.

Attempts are *reserved* before the password hash runs and *settled* after it, under one lock: an
attempt in flight counts as a failure until it is settled, so 60 parallel guesses get exactly
``max_failures`` password checks, never more. Every table holds at most ``max_entries`` entries
(least recently used dropped first), and entries idle past their usefulness are dropped as new
attempts arrive, oldest first.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Generic, TypeVar

from filekv.service.users import fold_name

logger = logging.getLogger(__name__)

__all__ = ["Attempt", "LoginThrottle", "Refused", "address_key"]

_MAX_NAME_KEY: Final = 65  # longer names can never exist; they all share one key
_MAX_ADDRESS_KEY: Final = 64
_IPV6_PREFIX: Final = 64

K = TypeVar("K")


def address_key(host: str | None) -> str:
    """The address a budget is kept for: the IP itself, an IPv6 address's /64, or the name."""
    if not host:
        return "unknown"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host[:_MAX_ADDRESS_KEY]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, _IPV6_PREFIX), strict=False))
    return str(ip)


def name_key(username: str) -> str:
    """The key of a user name's budgets: folded as logins fold it (ASCII only: the Kelvin sign
    is not a "k"), cut where no real name could reach."""
    return fold_name(username)[:_MAX_NAME_KEY]


@dataclass(frozen=True, slots=True)
class Attempt:
    """A reserved login attempt, to be settled once the password is checked."""

    name: str
    address: str
    trusted: bool  # a recent success from this pair: the address and name budgets were skipped


@dataclass(frozen=True, slots=True)
class Refused:
    """No attempt now: ``retry_after`` seconds, and which budget said so."""

    retry_after: float
    reason: str


@dataclass(slots=True)
class _Failures:
    recent: deque[float] = field(default_factory=deque)  # failure times within the window
    pending: int = 0  # attempts reserved and not yet settled; they count as failures
    lockouts: int = 0  # lock-outs in a row; sets the next delay
    locked_until: float = 0.0
    last_failure: float = 0.0
    touched: float = 0.0


class _FailureBudget(Generic[K]):
    """Failures within a window per key, with lock-outs that double up to a cap."""

    def __init__(
        self,
        what: str,
        *,
        describe: Callable[[K], str],
        max_failures: int,
        window: float,
        base_delay: float,
        max_delay: float,
        max_entries: int,
        reset_on_success: bool,
    ) -> None:
        self.what = what
        self.describe = describe  # the key as a log line may show it
        self.max_failures = max_failures
        self.window = window
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.max_entries = max_entries
        self.reset_on_success = reset_on_success
        self.entries: OrderedDict[K, _Failures] = OrderedDict()  # least recently touched first

    @property
    def _forget_after(self) -> float:
        return self.max_delay + self.window

    def wait(self, key: K, now: float) -> float:
        """Seconds before ``key`` may try (0: now)."""
        record = self.entries.get(key)
        if record is None:
            return 0.0
        if now < record.locked_until:
            return record.locked_until - now
        self._prune(record, now)
        if len(record.recent) + record.pending >= self.max_failures:
            return 1.0  # the budget is taken by attempts in flight: one settles within a second
        return 0.0

    def reserve(self, key: K, now: float) -> None:
        record = self.entries.pop(key, None) or _Failures()
        record.pending += 1
        record.touched = now
        self.entries[key] = record
        self._expire(now)

    def settle(self, key: K, now: float, success: bool | None) -> None:
        record = self.entries.get(key)
        if record is None:  # dropped from a full table meanwhile
            return
        record.pending = max(0, record.pending - 1)
        if success:
            if self.reset_on_success:
                record.recent.clear()
                record.lockouts = 0
                record.locked_until = 0.0
                if not record.pending:
                    del self.entries[key]
            return
        if success is None:  # neither: the server could not check the password
            return
        # A quiet key is forgiven: no failure for longer than the longest lock-out plus a window.
        if now - record.last_failure > self._forget_after:
            record.lockouts = 0
        self._prune(record, now)
        record.recent.append(now)
        record.last_failure = now
        if len(record.recent) >= self.max_failures:
            delay = min(self.base_delay * 2**record.lockouts, self.max_delay)
            record.locked_until = now + delay
            record.lockouts += 1
            record.recent.clear()
            logger.warning(
                "login for %s locked for %.0f s after repeated failures", self.describe(key), delay
            )

    def _prune(self, record: _Failures, now: float) -> None:
        while record.recent and now - record.recent[0] > self.window:
            record.recent.popleft()

    def _expire(self, now: float) -> None:
        while len(self.entries) > self.max_entries:
            self.entries.popitem(last=False)
        while self.entries:
            key, oldest = next(iter(self.entries.items()))
            if oldest.pending or now - oldest.touched <= self._forget_after:
                break
            del self.entries[key]


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class LoginThrottle:
    """The three login budgets (see the module docstring). Thread-safe."""

    def __init__(
        self,
        *,
        max_failures: int = 5,
        window: float = 60.0,
        base_delay: float = 30.0,
        max_delay: float = 900.0,
        address_max_failures: int = 30,
        address_base_delay: float = 60.0,
        name_burst: int = 100,
        name_refill: float = 1.0,
        trusted_for: float = 7 * 86_400.0,
        max_entries: int = 100_000,
    ) -> None:
        # Which names are users', for the log lines: set by the auth service. Another name is
        # not logged (people type their password into the name field); its length is.
        self.known_name: Callable[[str], bool] = lambda name: False
        self.pairs: _FailureBudget[tuple[str, str]] = _FailureBudget(
            "pair",
            describe=lambda key: f"{self.shown(key[0])} from {key[1]}",
            max_failures=max_failures,
            window=window,
            base_delay=base_delay,
            max_delay=max_delay,
            max_entries=max_entries,
            reset_on_success=True,
        )
        self.addresses: _FailureBudget[str] = _FailureBudget(
            "address",
            describe=str,
            max_failures=address_max_failures,
            window=window,
            base_delay=address_base_delay,
            max_delay=max_delay,
            max_entries=max_entries,
            reset_on_success=False,
        )
        self.name_burst = name_burst
        self.name_refill = name_refill
        self.trusted_for = trusted_for
        self.max_entries = max_entries
        self.names: OrderedDict[str, _Bucket] = OrderedDict()
        self.trusted: OrderedDict[tuple[str, str], float] = OrderedDict()  # -> trusted until
        self._lock = threading.Lock()

    def shown(self, name: str) -> str:
        """``name`` (a name key) as a log line may show it: a user's name, else its length."""
        if self.known_name(name):
            return repr(name)
        return f"an unknown user name ({len(name)} characters)"

    def reserve(self, username: str, address: str, now: float) -> Attempt | Refused:
        """Reserve one password check for ``username`` from ``address``, or say how long to wait.

        Nothing is reserved when the answer is ``Refused``: a refused attempt costs nothing.
        """
        name = name_key(username)
        with self._lock:
            wait = self.pairs.wait((name, address), now)
            if wait > 0:
                return Refused(wait, "too many failed logins for this username")
            trusted = self.trusted.get((name, address), 0.0) > now
            if not trusted:
                wait = self.addresses.wait(address, now)
                if wait > 0:
                    return Refused(wait, "too many failed logins from this address")
                bucket = self._bucket(name, now)
                if bucket.tokens < 1:
                    return Refused(
                        (1 - bucket.tokens) * self.name_refill,
                        "too many failed logins for this username from many addresses",
                    )
                bucket.tokens -= 1
                if bucket.tokens < 1:
                    logger.warning(
                        "logins for %s from new addresses slowed to one every %.0f s: "
                        "many failed logins from many addresses",
                        self.shown(name),
                        self.name_refill,
                    )
            self.pairs.reserve((name, address), now)
            if not trusted:
                self.addresses.reserve(address, now)
            self._expire_names(now)
            return Attempt(name, address, trusted=trusted)

    def settle(self, attempt: Attempt, now: float, *, success: bool | None) -> None:
        """The outcome of a reserved attempt: True, False (a failure), None (not checked)."""
        with self._lock:
            self.pairs.settle((attempt.name, attempt.address), now, success)
            if not attempt.trusted:
                self.addresses.settle(attempt.address, now, success)
            if not attempt.trusted and success is not False:
                bucket = self.names.get(attempt.name)
                if bucket is not None:  # a success or a void attempt gives its token back
                    bucket.tokens = min(self.name_burst, bucket.tokens + 1)
            if success:
                key = (attempt.name, attempt.address)
                self.trusted.pop(key, None)
                self.trusted[key] = now + self.trusted_for
                while len(self.trusted) > self.max_entries:
                    self.trusted.popitem(last=False)

    def _bucket(self, name: str, now: float) -> _Bucket:
        bucket = self.names.pop(name, None) or _Bucket(float(self.name_burst), now)
        bucket.tokens = min(
            self.name_burst, bucket.tokens + (now - bucket.updated) / self.name_refill
        )
        bucket.updated = now
        self.names[name] = bucket
        return bucket

    def _expire_names(self, now: float) -> None:
        while len(self.names) > self.max_entries:
            self.names.popitem(last=False)
        full_after = self.name_burst * self.name_refill  # untouched this long: full again
        while self.names:
            name, oldest = next(iter(self.names.items()))
            if now - oldest.updated <= full_after:
                break
            del self.names[name]
        while self.trusted:
            key, until = next(iter(self.trusted.items()))
            if until > now:
                break
            del self.trusted[key]
