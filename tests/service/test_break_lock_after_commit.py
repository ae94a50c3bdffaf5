"""An admin's ``DELETE /transactions`` that waited for a running commit ends *that* transaction
or nothing: never one another client began the moment the commit released the lock.

Found by a mixed-load audit: ``break_lock`` waited for the commit, then broke whatever
transaction was open by the time it woke up. A client retrying ``POST /transactions`` (as every
writer refused with 423 does) could take the lock in the same event-loop turn the commit freed
it, and lose its brand-new transaction to an admin who had never seen it (409 "an admin ended
your transaction"), while the admin was told a transaction was rolled back although the one it
meant had just committed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from filekv.engine import Store, Transaction
from filekv.service.transactions import TransactionManager


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(tmp_path / "data", fsync="never") as opened:
        yield opened


def test_break_lock_waiting_for_a_commit_spares_the_next_holder(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    manager = TransactionManager(store, timeout=10.0)
    real_acommit = Transaction.acommit

    async def acommit_then_bob_begins(self: Transaction) -> int:
        applied = await real_acommit(self)
        # Bob's retried begin is next in the event loop's queue, ahead of the admin's wake-up
        # (as when his request arrived in the same turn the commit's thread finished).
        asyncio.get_running_loop().call_soon(manager.begin, "bob")
        return applied

    monkeypatch.setattr(Transaction, "acommit", acommit_then_bob_begins)

    async def scenario() -> int | None:
        manager.begin("alice")
        tx = manager.write_target("alice", manager.writer("alice"))
        assert tx is not None
        tx.put("k", b"v")
        committing = asyncio.create_task(manager.commit("alice"))
        await asyncio.sleep(0)  # the commit runs, waiting for its thread
        breaking = asyncio.create_task(manager.break_lock("root"))
        await asyncio.sleep(0)
        assert await committing == 1
        return await breaking

    assert asyncio.run(scenario()) is None  # alice's transaction committed: nothing to end
    assert store.get("k") == b"v"
    assert manager.holder == "bob"  # bob's transaction, begun after, is untouched
    bob = manager.write_target("bob", manager.writer("bob"))
    assert bob is not None and bob.active


def test_break_lock_waiting_for_a_failed_commit_ends_that_transaction(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A commit that fails leaves its transaction open: the waiting admin then ends it."""
    manager = TransactionManager(store, timeout=10.0)

    async def failing_acommit(self: Transaction) -> int:
        await asyncio.sleep(0)
        raise OSError("disk gone")

    monkeypatch.setattr(Transaction, "acommit", failing_acommit)

    async def scenario() -> int | None:
        manager.begin("alice")
        committing = asyncio.create_task(manager.commit("alice"))
        await asyncio.sleep(0)
        breaking = asyncio.create_task(manager.break_lock("root"))
        with pytest.raises(OSError):
            await committing
        return await breaking

    assert asyncio.run(scenario()) == 1
    assert manager.holder is None
