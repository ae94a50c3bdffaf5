"""``TransactionManager`` on its own, with a hand-driven clock: the lease without sleeping."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from filekv.engine import Store, Transaction, TransactionTooDeep
from filekv.service.errors import (
    Locked,
    NoTransaction,
    TransactionBroken,
    TransactionCooldown,
    TransactionEnded,
    TransactionExpired,
)
from filekv.service.transactions import (
    LOGIN_CHECK_INTERVAL,
    NO_TRANSACTION,
    TransactionManager,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(tmp_path / "data", fsync="never") as opened:
        yield opened


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def manager(store: Store, clock: Clock) -> TransactionManager:
    return TransactionManager(store, timeout=10.0, remember_expired=100.0, clock=clock)


@pytest.mark.parametrize(("elapsed", "retry_after"), [(0.0, 10), (0.5, 10), (9.2, 1), (9.99, 1)])
def test_manager_locked_retry_after_is_remaining_lease_rounded_up(
    manager: TransactionManager, clock: Clock, elapsed: float, retry_after: int
) -> None:
    manager.begin("alice")
    clock.now += elapsed
    with pytest.raises(Locked) as refused:
        manager.writer("bob")
    assert refused.value.retry_after == retry_after


def test_manager_writer_goes_to_the_store_without_transaction(
    manager: TransactionManager,
) -> None:
    for session in (None, "bob"):
        ticket = manager.writer(session)
        assert ticket == NO_TRANSACTION
        assert manager.write_target(session, ticket) is None


def _staging(manager: TransactionManager, session: str) -> Transaction:
    tx = manager.write_target(session, manager.writer(session))
    assert tx is not None
    return tx


def test_manager_lease_expires_lazily_and_is_renewed_by_use(
    manager: TransactionManager, clock: Clock
) -> None:
    manager.begin("alice")
    clock.now += 9
    assert manager.reader("alice") is not None  # renews
    clock.now += 9
    assert manager.writer("alice") != NO_TRANSACTION  # renews
    clock.now += 9
    assert manager.status("bob").active is True  # others do not renew
    clock.now += 1.5
    assert manager.status("bob").active is False
    with pytest.raises(TransactionExpired):
        manager.rollback("alice")
    with pytest.raises(NoTransaction):
        manager.rollback("alice")


def test_manager_expired_session_is_forgotten_after_a_while(
    manager: TransactionManager, clock: Clock
) -> None:
    manager.begin("alice")
    clock.now += 11
    assert manager.wants_identity is True
    clock.now += 101
    assert manager.wants_identity is False
    assert manager.begin("alice") == 1


def test_manager_staged_writes_are_discarded_on_expiry(
    manager: TransactionManager, store: Store, clock: Clock
) -> None:
    manager.begin("alice")
    _staging(manager, "alice").put("k", b"v")
    clock.now += 11
    assert manager.is_open is False
    assert store.get("k") is None
    store.put("k", b"w")


def test_manager_commit_applies_and_releases(manager: TransactionManager, store: Store) -> None:
    manager.begin("alice")
    assert manager.begin("alice") == 2
    _staging(manager, "alice").put("a", b"1")
    assert asyncio.run(manager.commit("alice")) == 1
    assert store.get("a") == b"1"
    assert manager.holder is None
    assert manager.status("alice").depth == 0


def test_manager_close_aborts_open_transaction(manager: TransactionManager, store: Store) -> None:
    manager.begin("alice")
    manager.close()
    assert manager.is_open is False
    store.put("k", b"v")


def test_manager_reaper_aborts_without_any_call(store: Store) -> None:
    manager = TransactionManager(store, timeout=0.05)

    async def scenario() -> None:
        reaper = asyncio.create_task(manager.run_reaper())
        await asyncio.sleep(0)
        manager.begin("alice")
        await asyncio.sleep(0.3)
        assert manager.holder is None
        reaper.cancel()

    asyncio.run(scenario())


def test_manager_end_session_of_holder_aborts_whole_and_is_not_remembered(
    manager: TransactionManager, store: Store
) -> None:
    manager.begin("alice")
    manager.begin("alice")
    tx = _staging(manager, "alice")
    tx.put("k", b"v")
    manager.end_session("alice")
    assert manager.holder is None and not tx.active
    assert store.get("k") is None
    assert manager.wants_identity is False  # not kept as "expired": no TransactionExpired later
    assert manager.writer("alice") == NO_TRANSACTION
    store.put("k", b"w")


def test_manager_end_session_of_others_changes_nothing(
    manager: TransactionManager, clock: Clock
) -> None:
    manager.end_session("alice")  # nothing open: a no-op
    manager.begin("alice")
    manager.end_session("bob")
    assert manager.holder == "alice"
    with pytest.raises(Locked):
        manager.writer("bob")


def test_manager_end_session_forgets_an_expired_session(
    manager: TransactionManager, clock: Clock
) -> None:
    manager.begin("alice")
    clock.now += 11
    assert manager.wants_identity is True
    manager.end_session("alice")
    assert manager.wants_identity is False


# -- one decision point per write (issue 17, finding 5) -----------------------------------------
# A write takes its ticket before its body is read and is placed by write_target after; whatever
# happened to the transaction in between, the write lands where it started or is refused.


@pytest.mark.parametrize("ending", ["rollback", "commit"])
def test_manager_write_whose_transaction_ended_meanwhile_is_refused(
    manager: TransactionManager, store: Store, ending: str
) -> None:
    manager.begin("alice")
    ticket = manager.writer("alice")  # the body is on its way
    if ending == "rollback":
        assert manager.rollback("alice") == 0
    else:
        assert asyncio.run(manager.commit("alice")) == 0
    with pytest.raises(TransactionEnded, match="ended while this write was received"):
        manager.write_target("alice", ticket)
    assert len(store) == 0
    # the next write is an ordinary one again
    assert manager.write_target("alice", manager.writer("alice")) is None


def test_manager_write_whose_level_was_rolled_back_meanwhile_is_refused(
    manager: TransactionManager,
) -> None:
    manager.begin("alice")
    _staging(manager, "alice").put("outer", b"1")
    manager.begin("alice")
    ticket = manager.writer("alice")
    assert manager.rollback("alice") == 1
    with pytest.raises(TransactionEnded, match="changed level"):
        manager.write_target("alice", ticket)
    tx = _staging(manager, "alice")
    assert tx.get("outer") == b"1" and tx.staged_ops == 1  # the outer level as it was


def test_manager_level_refused_as_too_deep_leaves_a_write_in_flight_alone(
    manager: TransactionManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A begin refused at the nesting limit changes nothing: the holder's write received before
    # it still lands (it was refused as "changed level" when the refusal bumped the generation).
    monkeypatch.setattr("filekv.engine.transaction.MAX_DEPTH", 2)
    manager.begin("alice")
    manager.begin("alice")
    ticket = manager.writer("alice")
    with pytest.raises(TransactionTooDeep):
        manager.begin("alice")
    assert manager.write_target("alice", ticket) is not None


def test_manager_write_whose_transaction_was_replaced_meanwhile_is_refused(
    manager: TransactionManager,
) -> None:
    manager.begin("alice")
    ticket = manager.writer("alice")
    manager.rollback("alice")
    manager.begin("alice")  # a new transaction of the same session: not the one it started in
    with pytest.raises(TransactionEnded, match="ended while this write was received"):
        manager.write_target("alice", ticket)


def test_manager_write_started_outside_a_transaction_that_one_began_meanwhile(
    manager: TransactionManager,
) -> None:
    alice, bob = manager.writer("alice"), manager.writer("bob")
    manager.begin("alice")
    with pytest.raises(TransactionEnded, match="began a transaction"):
        manager.write_target("alice", alice)
    with pytest.raises(Locked):
        manager.write_target("bob", bob)
    manager.rollback("alice")
    # a transaction that began and ended meanwhile leaves a direct write free to go
    assert manager.write_target("bob", bob) is None


def test_manager_writes_during_the_holders_commit_are_refused(
    manager: TransactionManager, store: Store
) -> None:
    async def scenario() -> None:
        manager.begin("alice")
        ticket = manager.writer("alice")
        _staging(manager, "alice").put("k", b"v")
        committing = asyncio.create_task(manager.commit("alice"))
        await asyncio.sleep(0)  # the commit has started and waits for its thread
        assert manager.holder == "alice"
        with pytest.raises(TransactionEnded, match="being committed"):
            manager.writer("alice")
        with pytest.raises(TransactionEnded, match="being committed"):
            manager.write_target("alice", ticket)
        for call in (manager.rollback, manager.begin):
            with pytest.raises(TransactionEnded, match="being committed"):
                call("alice")
        with pytest.raises(Locked):
            manager.writer("bob")
        assert manager.reader("alice") is None  # the store's view, before or after the commit
        assert await committing == 1
        assert store.get("k") == b"v"

    asyncio.run(scenario())


def test_manager_expired_sessions_writes_are_refused_until_it_acknowledges(
    manager: TransactionManager, store: Store, clock: Clock
) -> None:
    manager.begin("alice")
    ticket = manager.writer("alice")
    clock.now += 11  # the lease runs out while the body is read
    with pytest.raises(TransactionExpired, match="nor this write"):
        manager.write_target("alice", ticket)
    for _ in range(3):  # and stays refused: no later write goes to the store behind its back
        with pytest.raises(TransactionExpired):
            manager.writer("alice")
    assert manager.writer("bob") == NO_TRANSACTION  # others write as usual
    with pytest.raises(TransactionExpired):
        manager.rollback("alice")  # told once, on a transaction call: acknowledged
    assert manager.write_target("alice", manager.writer("alice")) is None
    assert len(store) == 0


# -- a bounded transaction, and an admin who breaks the lock (issue 11) -------------------------


@pytest.fixture
def bounded(store: Store, clock: Clock) -> TransactionManager:
    """A lease of 10 s and a maximum age of 60 s."""
    return TransactionManager(
        store, timeout=10.0, max_seconds=60.0, remember_expired=100.0, clock=clock
    )


# Every way a holder renews its lease; none of them may stretch the maximum age.
RENEWALS = {
    "write": lambda m: m.write_target("alice", m.writer("alice")),
    "read": lambda m: m.reader("alice"),
    "status": lambda m: m.status("alice"),
    "nested begin": lambda m: m.begin("alice"),
}


@pytest.mark.parametrize("renew", RENEWALS.values(), ids=list(RENEWALS))
def test_manager_max_seconds_rolls_back_a_holder_that_keeps_renewing(
    bounded: TransactionManager, store: Store, clock: Clock, renew: Callable[..., object]
) -> None:
    bounded.begin("alice", username="alice")
    _staging(bounded, "alice").put("k", b"v")
    for _ in range(11):  # 5 s apart: the 10 s lease never runs out
        clock.now += 5
        if clock.now < 1060:
            renew(bounded)
            assert bounded.holder == "alice"
    assert clock.now == 1055 and bounded.is_open
    clock.now = 1060  # 60 s after begin, however busy alice was
    assert bounded.is_open is False
    assert store.get("k") is None
    with pytest.raises(TransactionExpired, match=r"open longer than 60 s .* nor this write"):
        bounded.writer("alice")
    assert bounded.begin("bob") == 1  # the store is free for others


def test_manager_max_seconds_is_told_once_on_a_transaction_call(
    bounded: TransactionManager, clock: Clock
) -> None:
    bounded.begin("alice")
    for _ in range(7):
        clock.now += 9
        bounded.status("alice")
    with pytest.raises(TransactionExpired) as told:
        bounded.rollback("alice")
    assert str(told.value) == (
        "your transaction expired: it was open longer than 60 s (transaction_max_seconds) and "
        "was rolled back; nothing of it was applied"
    )
    # Acknowledged, but no new transaction for as long as it may last: the cooldown.
    with pytest.raises(TransactionCooldown) as cooling:
        bounded.begin("alice")
    assert cooling.value.retry_after == 60


@pytest.mark.parametrize(
    ("idle", "busy_for", "expires_in", "retry_after"),
    [
        (0.0, 0.0, 10.0, 10),  # the lease is the nearer deadline
        (4.0, 0.0, 6.0, 6),
        (0.0, 55.0, 5.0, 5),  # renewed, but 5 s short of the maximum age
        (0.0, 59.5, 0.5, 1),
    ],
)
def test_manager_time_left_is_the_nearer_of_lease_and_max_age(
    bounded: TransactionManager,
    clock: Clock,
    idle: float,
    busy_for: float,
    expires_in: float,
    retry_after: int,
) -> None:
    bounded.begin("alice")
    start = clock.now
    while clock.now - start < busy_for:
        clock.now = min(start + busy_for, clock.now + 5)
        bounded.status("alice")
    clock.now += idle
    assert bounded.status("bob").expires_in == expires_in
    with pytest.raises(Locked) as refused:
        bounded.writer("bob")
    assert refused.value.retry_after == retry_after


@pytest.mark.parametrize(("timeout", "max_seconds"), [(0.0, 1.0), (1.0, 0.0), (1.0, -5.0)])
def test_manager_refuses_limits_that_are_not_positive(
    store: Store, timeout: float, max_seconds: float
) -> None:
    with pytest.raises(ValueError, match="positive"):
        TransactionManager(store, timeout=timeout, max_seconds=max_seconds)


def test_manager_reaper_ends_an_old_transaction_at_its_max_age(store: Store) -> None:
    # A long lease, a short maximum age: the reaper wakes for the nearer one.
    manager = TransactionManager(store, timeout=60.0, max_seconds=0.1)

    async def scenario() -> None:
        reaper = asyncio.create_task(manager.run_reaper())
        await asyncio.sleep(0)
        manager.begin("alice")
        await asyncio.sleep(0.5)
        assert manager.holder is None
        reaper.cancel()

    asyncio.run(scenario())


def test_manager_break_lock_rolls_back_every_level_of_any_holder(
    bounded: TransactionManager, store: Store
) -> None:
    bounded.begin("alice", username="alice")
    _staging(bounded, "alice").put("a", b"1")
    bounded.begin("alice")
    _staging(bounded, "alice").put("b", b"2")
    assert asyncio.run(bounded.break_lock("root")) == 2
    assert bounded.holder is None and bounded.is_open is False
    assert (store.get("a"), store.get("b")) == (None, None)
    assert bounded.begin("bob") == 1


def test_manager_break_lock_with_nothing_open_is_none(bounded: TransactionManager) -> None:
    assert asyncio.run(bounded.break_lock("root")) is None
    assert bounded.wants_identity is False  # nobody to tell


@pytest.mark.parametrize(
    "first_call",
    ["begin", "commit", "rollback", "release"],
)
def test_manager_break_lock_former_holder_is_told_an_admin_ended_it(
    bounded: TransactionManager, store: Store, first_call: str
) -> None:
    bounded.begin("alice")
    ticket = bounded.writer("alice")  # a write on its way while the lock is broken
    asyncio.run(bounded.break_lock("root"))
    with pytest.raises(TransactionBroken, match=r"an admin ended your transaction.*nor this write"):
        bounded.write_target("alice", ticket)
    with pytest.raises(TransactionBroken, match="nor this write"):
        bounded.writer("alice")  # and every write until it acknowledges
    call = getattr(bounded, first_call)
    with pytest.raises(TransactionBroken) as told:
        result = call("alice")
        if asyncio.iscoroutine(result):
            asyncio.run(result)
    assert str(told.value) == (
        "an admin ended your transaction: it was rolled back; nothing of it was applied"
    )
    assert bounded.write_target("alice", bounded.writer("alice")) is None  # acknowledged
    assert len(store) == 0


def test_manager_break_lock_logs_both_user_names_at_warning(
    bounded: TransactionManager, caplog: pytest.LogCaptureFixture
) -> None:
    session = "f" * 64  # a session id is the token's SHA-256; only its first 8 digits are logged
    bounded.begin(session, username="alice")
    with caplog.at_level(logging.INFO, logger="filekv.service.transactions"):
        asyncio.run(bounded.break_lock("root"))
    (line,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    message = line.getMessage()
    assert "'root'" in message and "'alice'" in message and "depth 1" in message
    assert session not in message


def test_manager_break_lock_waits_for_a_running_commit(
    bounded: TransactionManager, store: Store
) -> None:
    async def scenario() -> None:
        bounded.begin("alice")
        _staging(bounded, "alice").put("k", b"v")
        committing = asyncio.create_task(bounded.commit("alice"))
        await asyncio.sleep(0)  # the commit has started and waits for its thread
        breaking = asyncio.create_task(bounded.break_lock("root"))
        await asyncio.sleep(0)
        assert not breaking.done()  # never aborted under a commit (it could split its record)
        assert await committing == 1
        assert await breaking is None  # committed: nothing was left to roll back

    asyncio.run(scenario())
    assert store.get("k") == b"v"


# -- a user whose transaction passed its maximum age waits before the next (cooldown) -----------


def _run_to_max_age(manager: TransactionManager, clock: Clock, session: str, user: str) -> None:
    """``session`` of ``user`` holds a transaction and renews it until its maximum age ends it."""
    manager.begin(session, username=user)
    opened = clock.now
    while clock.now < opened + 60:
        clock.now = min(opened + 60, clock.now + 5)
        manager.status(session)
    assert manager.holder is None


def test_manager_max_seconds_bars_every_session_of_its_user_for_the_cooldown(
    bounded: TransactionManager, clock: Clock
) -> None:
    """The audit's loop: the holder began again the instant it was told, and held the store for
    ever (also with a second token of the same user, taking turns)."""
    _run_to_max_age(bounded, clock, "laptop", "alice")
    with pytest.raises(TransactionExpired):
        bounded.begin("laptop", username="alice")  # told once
    for session in ("laptop", "phone"):  # every session of alice, not only the one that held
        with pytest.raises(TransactionCooldown) as cooling:
            bounded.begin(session, username="alice")
        assert cooling.value.retry_after == 60
        assert "you may begin another after 60 s" in str(cooling.value)
    assert bounded.is_open is False
    clock.now += 59.5
    with pytest.raises(TransactionCooldown) as cooling:
        bounded.begin("phone", username="alice")
    assert cooling.value.retry_after == 1  # counts down, whole seconds rounded up
    clock.now += 0.5
    assert bounded.begin("phone", username="alice") == 1


def test_manager_cooldown_leaves_the_lock_to_the_writer_that_waited(
    bounded: TransactionManager, clock: Clock
) -> None:
    """The audit's race: bob waits out his 423's Retry-After and wakes at the very deadline, but
    alice's looping client asks first; before, she got the lock back and bob lost every time."""
    bounded.begin("laptop", username="alice")
    while clock.now < 1055:  # alice keeps renewing: the lease never runs out
        clock.now += 5
        bounded.status("laptop")
    with pytest.raises(Locked) as refused:
        bounded.writer("bob")
    assert refused.value.retry_after == 5  # truthful: her maximum age ends then
    clock.now += refused.value.retry_after
    with pytest.raises(TransactionExpired):
        bounded.begin("laptop", username="alice")
    with pytest.raises(TransactionCooldown):
        bounded.begin("laptop", username="alice")
    with pytest.raises(TransactionCooldown):
        bounded.begin("phone", username="alice")
    assert bounded.begin("bob", username="bob") == 1


def test_manager_cooldown_is_at_least_a_few_seconds_and_only_after_the_maximum_age(
    store: Store, clock: Clock
) -> None:
    # A tiny maximum age still leaves a waiting writer time to wake (Retry-After is rounded up).
    manager = TransactionManager(store, timeout=0.5, max_seconds=1.0, clock=clock)
    manager.begin("s1", username="alice")
    clock.now += 0.6  # idle past the lease: no cooldown, that is no way to hog the store
    assert manager.is_open is False
    with pytest.raises(TransactionExpired):
        manager.begin("s1", username="alice")
    assert manager.begin("s1", username="alice") == 1
    for _ in range(3):
        clock.now += 0.4
        manager.status("s1")
    assert manager.is_open is False  # 1.2 s: past the maximum age
    with pytest.raises(TransactionCooldown) as cooling:
        manager.begin("s2", username="alice")
    assert cooling.value.retry_after == 5
    clock.now += 5
    assert manager.begin("s2", username="alice") == 1


def test_manager_admin_break_and_rollback_start_no_cooldown(
    bounded: TransactionManager, clock: Clock
) -> None:
    bounded.begin("laptop", username="alice")
    asyncio.run(bounded.break_lock("root"))
    assert bounded.begin("phone", username="alice") == 1
    assert bounded.rollback("phone") == 0
    assert bounded.begin("phone", username="alice") == 1


# -- the holder's login must outlive its transaction --------------------------------------------


class Login:
    """A holder's login as the auth service sees it: alive until revoked."""

    def __init__(self) -> None:
        self.valid = True
        self.checks = 0

    def __call__(self) -> bool:
        self.checks += 1
        return self.valid


def test_manager_holder_whose_login_died_is_rolled_back_when_anyone_asks(
    bounded: TransactionManager, store: Store, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    login = Login()
    bounded.begin("alice", username="alice", alive=login)
    _staging(bounded, "alice").put("k", b"v")
    with pytest.raises(Locked):
        bounded.writer("bob")
    login.valid = False  # revoked, its password changed, its user removed, or its token expired
    clock.now += LOGIN_CHECK_INTERVAL  # asked at most that often
    with caplog.at_level(logging.WARNING, logger="filekv.service.transactions"):
        assert bounded.write_target("bob", bounded.writer("bob")) is None  # the lock is free
    assert store.get("k") is None  # nothing of it applied
    assert bounded.wants_identity is False  # not remembered: its next call is 401 anyway
    (line,) = [r.getMessage() for r in caplog.records]
    assert "'alice'" in line and "login of" in line and "rolled back" in line
    assert bounded.begin("alice2", username="alice") == 1  # no cooldown: it hogged nothing


def test_manager_asks_whether_the_holders_login_lives_at_most_every_interval(
    bounded: TransactionManager, clock: Clock
) -> None:
    # It asked on every request that passed while a transaction was open (the auth lock, and a
    # poll of users.json, on the event loop), two or three times a request.
    login = Login()
    bounded.begin("alice", username="alice", alive=login)
    for _ in range(100):
        assert bounded.is_open
        with pytest.raises(Locked):
            bounded.writer("bob")
    assert login.checks == 0  # it had just logged in
    clock.now += LOGIN_CHECK_INTERVAL
    for _ in range(100):
        assert bounded.is_open
    assert login.checks == 1


def test_manager_holder_whose_login_died_is_rolled_back_by_the_reaper(store: Store) -> None:
    manager = TransactionManager(store, timeout=60.0, max_seconds=600.0)
    login = Login()

    async def scenario() -> None:
        reaper = asyncio.create_task(manager.run_reaper())
        await asyncio.sleep(0)
        manager.begin("alice", username="alice", alive=login)
        await asyncio.sleep(0.1)
        assert manager.holder == "alice"
        login.valid = False
        await asyncio.sleep(1.5)  # nobody asks; the lease has a minute left
        assert manager.holder is None
        reaper.cancel()

    asyncio.run(scenario())


def test_manager_running_commit_is_not_aborted_for_a_dead_login(
    bounded: TransactionManager, store: Store
) -> None:
    login = Login()

    async def scenario() -> None:
        bounded.begin("alice", alive=login)
        _staging(bounded, "alice").put("k", b"v")
        committing = asyncio.create_task(bounded.commit("alice"))
        await asyncio.sleep(0)
        login.valid = False
        assert bounded.is_open  # asked while committing: left to finish
        assert await committing == 1

    asyncio.run(scenario())
    assert store.get("k") == b"v"
    assert bounded.is_open is False
