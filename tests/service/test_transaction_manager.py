"""``TransactionManager`` on its own, with a hand-driven clock: the lease without sleeping."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from filekv.engine import Store
from filekv.service.errors import Locked, NoTransaction, TransactionExpired
from filekv.service.transactions import TransactionManager


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


def test_manager_writer_is_none_without_transaction(manager: TransactionManager) -> None:
    assert manager.writer(None) is None
    assert manager.writer("bob") is None


def test_manager_lease_expires_lazily_and_is_renewed_by_use(
    manager: TransactionManager, clock: Clock
) -> None:
    manager.begin("alice")
    clock.now += 9
    assert manager.reader("alice") is not None  # renews
    clock.now += 9
    assert manager.writer("alice") is not None  # renews
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
    tx = manager.begin("alice") and manager.writer("alice")
    assert tx is not None
    tx.put("k", b"v")
    clock.now += 11
    assert manager.is_open is False
    assert store.get("k") is None
    store.put("k", b"w")


def test_manager_commit_applies_and_releases(manager: TransactionManager, store: Store) -> None:
    manager.begin("alice")
    assert manager.begin("alice") == 2
    tx = manager.writer("alice")
    assert tx is not None
    tx.put("a", b"1")
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
    tx = manager.writer("alice")
    assert tx is not None
    tx.put("k", b"v")
    manager.end_session("alice")
    assert manager.holder is None and not tx.active
    assert store.get("k") is None
    assert manager.wants_identity is False  # not kept as "expired": no TransactionExpired later
    assert manager.writer("alice") is None
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
