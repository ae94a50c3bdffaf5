"""Transactions: read-your-writes, nesting, exclusivity, atomic commit, the async commit path."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from support.engine_fixtures import OpenStore, Reopen
from support.storefiles import contents, copy_store, last_segment, truncate

from filekv.engine import (
    Entry,
    InvalidKey,
    Store,
    Transaction,
    TransactionActive,
    TransactionClosed,
    TransactionTooLarge,
    ValueTooLarge,
    VersionMismatch,
)
from filekv.engine.batch import Put
from filekv.engine.errors import TransactionTooDeep
from filekv.engine.fileio import FileIO
from filekv.engine.transaction import MAX_DEPTH


def _seed(db: Store) -> dict[str, int]:
    return {
        key: db.put(key, value)
        for key, value in [("a", b"1"), ("b", b"2"), ("c", b"1"), ("d/x", b"3"), ("d/y", b"1")]
    }


# -- read your writes ------------------------------------------------------------------------------


def test_transaction_reads_its_own_writes(store: Store) -> None:
    revisions = _seed(store)
    tx = store.transaction()
    tx.put("a", b"new")
    tx.put("z", b"1")
    assert tx.delete("b") is True
    assert tx.get("a") == b"new"
    assert tx.get("z") == b"1"
    assert tx.get("b") is None
    assert tx.get("c") == b"1"
    assert tx.entry("a") == Entry("a", b"new", None)
    assert tx.entry("b") is None
    assert tx.entry("c") == Entry("c", b"1", revisions["c"])
    assert tx.find(b"1") == ["c", "d/y", "z"]
    assert tx.find(b"2") == []
    assert tx.find(b"new") == ["a"]
    assert tx.find(b"1", prefix="d/") == ["d/y"]
    assert tx.find(b"1", after="c", limit=1) == ["d/y"]
    assert tx.scan() == ["a", "c", "d/x", "d/y", "z"]
    assert tx.scan("d/") == ["d/x", "d/y"]
    assert tx.scan("", after="c", limit=2) == ["d/x", "d/y"]
    assert tx.scan(prefix="", after="d/y") == ["z"]
    tx.abort()


def test_transaction_delete_reports_existence_in_its_view(store: Store) -> None:
    store.put("committed", b"1")
    tx = store.transaction()
    assert tx.delete("absent") is False
    assert tx.delete("committed") is True
    assert tx.delete("committed") is False  # already deleted in this transaction
    tx.put("staged", b"1")
    assert tx.delete("staged") is True
    assert tx.get("staged") is None
    tx.put("committed", b"back")
    assert tx.get("committed") == b"back"
    assert tx.commit() >= 1
    assert contents(store) == {"committed": b"back"}


def test_transaction_put_over_deleted_then_delete_again(store: Store) -> None:
    store.put("k", b"1")
    with store.transaction() as tx:
        tx.delete("k")
        tx.put("k", b"2")
        tx.delete("k")
        assert tx.scan() == []
        assert tx.find(b"1") == [] and tx.find(b"2") == []
    assert store.get("k") is None
    assert len(store) == 0


def test_transaction_reads_committed_data_outside(store: Store) -> None:
    _seed(store)
    before = contents(store)
    tx = store.transaction()
    tx.put("a", b"changed")
    tx.delete("b")
    tx.put("new", b"1")
    assert contents(store) == before
    assert store.get("a") == b"1"
    assert store.get("new") is None
    assert "new" not in store and "b" in store
    assert store.find(b"1") == ["a", "c", "d/y"]
    assert store.scan() == sorted(before)
    assert len(store) == len(before)
    tx.commit()
    assert store.get("a") == b"changed"
    assert store.get("b") is None
    assert store.find(b"1") == ["c", "d/y", "new"]


def test_transaction_commit_counts_and_revisions(store: Store, reopen: Reopen) -> None:
    _seed(store)
    before = store.revision
    tx = store.transaction()
    tx.put("a", b"x")
    tx.put("new", b"y")
    tx.delete("b")
    assert tx.commit() == 3
    assert tx.depth == 0 and tx.active is False
    for key in ("a", "new"):
        entry = store.entry(key)
        assert entry is not None and entry.revision is not None and entry.revision > before
    assert store.revision > before
    after = store.revision
    db = reopen(store)
    assert db.get("a") == b"x" and db.get("new") == b"y" and db.get("b") is None
    assert db.revision >= after
    assert db.put("later", b"1") > after


def test_transaction_empty_commit(store: Store) -> None:
    store.put("a", b"1")
    tx = store.transaction()
    assert tx.commit() == 0
    assert contents(store) == {"a": b"1"}
    store.put("b", b"2")


# -- nesting ---------------------------------------------------------------------------------------


def test_transaction_nested_rollback_undoes_innermost_level(store: Store) -> None:
    store.put("base", b"0")
    tx = store.transaction()
    tx.put("l1", b"1")
    assert tx.begin() == 2
    tx.put("l2", b"2")
    tx.delete("base")
    assert tx.begin() == 3
    tx.put("l3", b"3")
    tx.put("l1", b"overwritten-in-3")
    assert tx.get("l1") == b"overwritten-in-3"
    assert tx.rollback() == 2
    assert tx.depth == 2
    assert tx.get("l3") is None
    assert tx.get("l1") == b"1"
    assert tx.get("base") is None
    assert tx.rollback() == 1
    assert tx.get("base") == b"0"
    assert tx.get("l2") is None
    assert tx.scan() == ["base", "l1"]
    assert tx.commit() == 1
    assert contents(store) == {"base": b"0", "l1": b"1"}


def test_transaction_commit_at_depth_applies_every_level(store: Store) -> None:
    tx = store.transaction()
    tx.put("l1", b"1")
    tx.begin()
    tx.put("l2", b"2")
    tx.begin()
    tx.put("l3", b"3")
    assert tx.depth == 3
    assert tx.commit() == 3
    assert tx.depth == 0 and not tx.active
    assert contents(store) == {"l1": b"1", "l2": b"2", "l3": b"3"}


def test_transaction_rollback_at_depth_one_ends_it(store: Store) -> None:
    tx = store.transaction()
    tx.put("a", b"1")
    assert tx.rollback() == 0
    assert tx.depth == 0
    assert tx.active is False
    assert store.get("a") is None
    store.put("b", b"2")  # the store is writable again
    with pytest.raises(TransactionClosed):
        tx.put("c", b"3")


def test_transaction_abort_rolls_back_every_level(store: Store) -> None:
    store.put("keep", b"1")
    tx = store.transaction()
    tx.put("a", b"1")
    tx.begin()
    tx.delete("keep")
    tx.begin()
    tx.abort()
    assert tx.depth == 0 and not tx.active
    tx.abort()  # no-op once ended
    assert contents(store) == {"keep": b"1"}
    store.put("b", b"2")


def test_transaction_begin_after_rollback_to_level(store: Store) -> None:
    tx = store.transaction()
    tx.begin()
    tx.put("x", b"1")
    tx.rollback()
    assert tx.begin() == 2
    tx.put("y", b"2")
    tx.commit()
    assert contents(store) == {"y": b"2"}


# -- exclusivity -----------------------------------------------------------------------------------

BLOCKED_CALLS: list[tuple[str, Callable[[Store], object]]] = [
    ("put", lambda db: db.put("k", b"v")),
    ("put-expect", lambda db: db.put("k", b"v", expect=0)),
    ("delete", lambda db: db.delete("a")),
    ("transaction", lambda db: db.transaction()),
    ("aput", lambda db: asyncio.run(db.aput("k", b"v"))),
    ("adelete", lambda db: asyncio.run(db.adelete("a"))),
]


@pytest.mark.parametrize("call", [c for _, c in BLOCKED_CALLS], ids=[n for n, _ in BLOCKED_CALLS])
def test_transaction_blocks_other_writers(store: Store, call: Callable[[Store], object]) -> None:
    store.put("a", b"1")
    tx = store.transaction()
    tx.put("t", b"1")
    with pytest.raises(TransactionActive):
        call(store)
    assert store.get("k") is None and store.get("a") == b"1"
    tx.commit()
    call(store)  # allowed once the transaction ended


def test_transaction_blocks_writers_in_other_threads(store: Store) -> None:
    tx = store.transaction()
    outcome: list[BaseException | None] = []

    def other() -> None:
        try:
            store.put("k", b"v")
            outcome.append(None)
        except BaseException as error:
            outcome.append(error)

    thread = threading.Thread(target=other)
    thread.start()
    thread.join()
    assert isinstance(outcome[0], TransactionActive)
    tx.abort()


@pytest.mark.parametrize("end", ["commit", "abort", "rollback", "context", "context-error"])
def test_transaction_store_writable_after_end(store: Store, end: str) -> None:
    if end == "context":
        with store.transaction() as tx:
            tx.put("t", b"1")
    elif end == "context-error":
        with pytest.raises(RuntimeError), store.transaction() as tx:
            tx.put("t", b"1")
            raise RuntimeError("boom")
    else:
        tx = store.transaction()
        tx.put("t", b"1")
        getattr(tx, end)()
    store.put("after", b"1")
    second = store.transaction()
    second.abort()


# -- context manager -------------------------------------------------------------------------------


def test_transaction_context_manager_commits(store: Store) -> None:
    with store.transaction() as tx:
        assert isinstance(tx, Transaction)
        tx.put("a", b"1")
        tx.begin()
        tx.put("b", b"2")
    assert not tx.active
    assert contents(store) == {"a": b"1", "b": b"2"}


def test_transaction_context_manager_aborts_on_exception(store: Store) -> None:
    store.put("keep", b"1")
    with pytest.raises(ValueError, match="boom"), store.transaction() as tx:
        tx.put("a", b"1")
        tx.delete("keep")
        tx.begin()
        tx.put("b", b"2")
        raise ValueError("boom")
    assert not tx.active
    assert contents(store) == {"keep": b"1"}


def test_transaction_context_manager_aborts_on_store_error(store: Store) -> None:
    store.put("a", b"1")
    with pytest.raises(VersionMismatch), store.transaction() as tx:
        tx.put("b", b"2")
        raise VersionMismatch("a", 1, 2)
    assert contents(store) == {"a": b"1"}


# -- ended transactions ----------------------------------------------------------------------------

ENDED_CALLS: list[tuple[str, Callable[[Transaction], object]]] = [
    ("put", lambda tx: tx.put("k", b"v")),
    ("delete", lambda tx: tx.delete("k")),
    ("get", lambda tx: tx.get("k")),
    ("entry", lambda tx: tx.entry("k")),
    ("find", lambda tx: tx.find(b"v")),
    ("scan", lambda tx: tx.scan("")),
    ("begin", lambda tx: tx.begin()),
    ("rollback", lambda tx: tx.rollback()),
    ("commit", lambda tx: tx.commit()),
    ("acommit", lambda tx: asyncio.run(tx.acommit())),
]


@pytest.mark.parametrize("how", ["commit", "abort", "rollback"])
@pytest.mark.parametrize("call", [c for _, c in ENDED_CALLS], ids=[n for n, _ in ENDED_CALLS])
def test_transaction_closed_after_end(
    store: Store, how: str, call: Callable[[Transaction], object]
) -> None:
    tx = store.transaction()
    tx.put("k", b"v")
    getattr(tx, how)()
    with pytest.raises(TransactionClosed):
        call(tx)
    tx.abort()  # still a no-op


def test_transaction_staging_validates(store: Store) -> None:
    tx = store.transaction()
    with pytest.raises(InvalidKey):
        tx.put("", b"v")
    with pytest.raises(InvalidKey):
        tx.delete("")
    with pytest.raises(ValueTooLarge):
        tx.put("k", b"x" * ((1 << 20) + 1))
    tx.put("k", b"ok")
    assert tx.commit() == 1
    assert contents(store) == {"k": b"ok"}


# -- atomicity on disk -----------------------------------------------------------------------------


def test_transaction_commit_is_one_record(tmp_path: Path, open_store: OpenStore) -> None:
    """Cut the commit's bytes anywhere: none of its writes may be visible, all earlier ones stay."""
    source = tmp_path / "source"
    db = open_store(source)
    _seed(db)
    base = contents(db)
    db.close()
    segment_name = last_segment(source).name
    before = (source / segment_name).stat().st_size
    db = open_store(source)
    with db.transaction() as tx:
        tx.put("a", b"tx-a")
        tx.begin()
        tx.put("t1", b"tx-1" * 10)
        tx.delete("b")
        tx.begin()
        tx.put("gone", b"rolled back")
        tx.rollback()
        tx.put("t2", b"tx-2")
    after_tx = contents(db)
    db.close()
    assert last_segment(source).name == segment_name
    after = (source / segment_name).stat().st_size
    assert after > before
    record = after - before
    for cut in range(record):
        target = copy_store(source, tmp_path / f"cut{cut}")
        truncate(target / segment_name, before + cut)
        again = open_store(target)
        assert contents(again) == base, f"commit record cut after {cut} of {record} bytes"
        assert again.stats().recovered_truncations == (1 if cut else 0)
        again.close()
    whole = open_store(copy_store(source, tmp_path / "whole"))
    assert contents(whole) == after_tx
    assert after_tx == {
        **{k: v for k, v in base.items() if k != "b"},
        "a": b"tx-a",
        "t1": b"tx-1" * 10,
        "t2": b"tx-2",
    }


# -- asyncio ---------------------------------------------------------------------------------------


class SlowFsyncIO(FileIO):
    """Slows fsync down so an awaitable write is certainly still pending while the loop ticks."""

    def fsync(self, fd: int) -> None:
        time.sleep(0.05)
        super().fsync(fd)


def test_transaction_async_api(db_path: Path, open_store: OpenStore, reopen: Reopen) -> None:
    db = open_store(db_path, fsync="always")

    async def main() -> None:
        rev = await db.aput("a", b"1")
        assert rev > 0
        assert await db.aput("a", b"2", expect=rev) > rev
        with pytest.raises(VersionMismatch):
            await db.aput("a", b"3", expect=rev)
        assert await db.adelete("missing") is False
        revs = await asyncio.gather(*(db.aput(f"k{i}", b"%d" % i) for i in range(32)))
        assert len(set(revs)) == 32
        assert await db.adelete("k0") is True
        tx = db.transaction()
        tx.put("t", b"1")
        tx.begin()
        tx.put("u", b"2")
        assert await tx.acommit() == 2
        assert not tx.active
        with pytest.raises(VersionMismatch):
            await db.adelete("a", expect=0)

    asyncio.run(main())
    expected = {"a": b"2", "t": b"1", "u": b"2"} | {f"k{i}": b"%d" % i for i in range(1, 32)}
    assert contents(db) == expected
    assert contents(reopen(db)) == expected


@pytest.mark.parametrize("call", ["aput", "adelete", "acommit"])
def test_transaction_async_writes_do_not_block_the_loop(
    db_path: Path, open_store: OpenStore, call: str
) -> None:
    db = open_store(db_path, fsync="always", io=SlowFsyncIO())
    db.put("a", b"1")

    async def main() -> int:
        ticks = 0
        done = False

        async def ticker() -> None:
            nonlocal ticks
            while not done:
                ticks += 1
                await asyncio.sleep(0.001)

        async def write() -> None:
            nonlocal done
            if call == "aput":
                await db.aput("b", b"2")
            elif call == "adelete":
                await db.adelete("a")
            else:
                tx = db.transaction()
                tx.put("b", b"2")
                await tx.acommit()
            done = True

        await asyncio.gather(write(), ticker())
        return ticks

    ticks = asyncio.run(main())
    assert ticks >= 2, "the event loop was blocked during the 50 ms fsync"


def test_transaction_larger_than_a_segment(
    db_path: Path, open_store: OpenStore, reopen: Reopen
) -> None:
    """One commit is one record, even when it is bigger than segment_bytes."""
    db = open_store(db_path, segment_bytes=4096)
    db.put("before", b"1")
    with db.transaction() as tx:
        for i in range(30):
            tx.put(f"big/{i:02}", bytes([i]) * 700)
    expected = {"before": b"1"} | {f"big/{i:02}": bytes([i]) * 700 for i in range(30)}
    assert contents(db) == expected
    db.put("after", b"2")
    expected["after"] = b"2"
    again = reopen(db)
    assert contents(again) == expected
    again.compact()
    assert contents(reopen(again)) == expected


# -- limits (issue 17, finding 1: a huge transaction was acknowledged, then lost) -----------


def test_transaction_over_op_limit_stages_nothing_and_stays_usable(
    open_store: OpenStore, db_path: Path
) -> None:
    db = open_store(db_path, max_transaction_ops=3)
    tx = db.transaction()
    for key in ("a", "b", "c"):
        tx.put(key, b"1")
    with pytest.raises(TransactionTooLarge):
        tx.put("d", b"1")
    with pytest.raises(TransactionTooLarge):
        tx.delete("e")
    assert tx.get("d") is None and tx.staged_ops == 3
    tx.put("a", b"rewritten in the same level: no new operation")
    assert tx.commit() == 3
    assert db.get("a") == b"rewritten in the same level: no new operation"
    assert db.get("d") is None


def test_transaction_byte_limit_counts_every_level(open_store: OpenStore, db_path: Path) -> None:
    db = open_store(db_path, max_transaction_bytes=1000)
    tx = db.transaction()
    tx.put("k", b"x" * 600)
    tx.begin()
    with pytest.raises(TransactionTooLarge):
        tx.put("k", b"y" * 600)  # the outer level still holds its 600 bytes
    assert tx.get("k") == b"x" * 600
    tx.put("small", b"z")
    assert tx.rollback() == 1  # frees the inner level's bytes
    assert tx.staged_bytes == 7 + 1 + 600
    tx.put("k", b"x" * 900)  # a rewrite replaces: 7 + 1 + 900 bytes in all
    with pytest.raises(TransactionTooLarge):
        tx.put("other", b"w" * 100)
    assert tx.commit() == 1
    assert db.get("k") == b"x" * 900


def test_transaction_at_the_limits_commits_and_reopens(
    open_store: OpenStore, reopen: Reopen, db_path: Path
) -> None:
    db = open_store(db_path, max_transaction_bytes=4 << 20, max_transaction_ops=64)
    tx = db.transaction()
    value = bytes(range(256)) * (((4 << 20) // 64 - 64) // 256)
    for i in range(64):
        tx.put(f"big/{i:02d}", value)
    with pytest.raises(TransactionTooLarge):
        tx.put("one/more", b"")
    assert tx.commit() == 64
    db = reopen(db)
    assert len(db) == 64 and all(db.get(f"big/{i:02d}") == value for i in range(64))


def test_transaction_nesting_stops_at_max_depth(store: Store) -> None:
    """The attack: one begin after another (42,195 levels in 40 s over HTTP), each read then
    walking every level. The begin past the limit opens nothing; the transaction stays usable."""
    tx = store.transaction()
    tx.put("outer", b"1")
    for depth in range(2, MAX_DEPTH + 1):
        assert tx.begin() == depth
    tx.put("inner", b"2")
    for _ in range(3):
        with pytest.raises(TransactionTooDeep, match=f"{MAX_DEPTH} levels"):
            tx.begin()
    assert tx.depth == MAX_DEPTH
    assert tx.get("inner") == b"2" and tx.scan() == ["inner", "outer"]
    assert tx.batch([Put("batched", b"3")]) == 1  # a batch's own level is no begin
    assert tx.rollback() == MAX_DEPTH - 1
    assert tx.begin() == MAX_DEPTH  # room again once a level went
    assert tx.commit() == 1
    assert contents(store) == {"outer": b"1"}


def test_acommit_runs_off_the_event_loop(open_store: OpenStore, db_path: Path) -> None:
    db = open_store(db_path)
    loop_thread: list[threading.Thread] = []
    commit_threads: list[threading.Thread] = []
    original = db.commit_transaction

    def spy(*args: object, **kwargs: object) -> tuple[int, int]:
        commit_threads.append(threading.current_thread())
        return original(*args, **kwargs)  # type: ignore[arg-type]

    db.commit_transaction = spy  # type: ignore[method-assign]

    async def run() -> int:
        loop_thread.append(threading.current_thread())
        tx = db.transaction()
        tx.put("k", b"v")
        return await tx.acommit()

    assert asyncio.run(run()) == 1
    assert commit_threads and commit_threads[0] is not loop_thread[0]
    assert db.get("k") == b"v"


# -- compare-and-set inside a transaction ----------------------------------------------------------


def test_transaction_put_expect_checks_committed_revision(store: Store) -> None:
    rev = store.put("k", b"v")
    with store.transaction() as tx:
        with pytest.raises(VersionMismatch) as raised:
            tx.put("k", b"w", expect=rev + 1)
        assert (raised.value.expected, raised.value.actual) == (rev + 1, rev)
        with pytest.raises(VersionMismatch):
            tx.put("k", b"w", expect=0)
        assert tx.staged_ops == 0  # nothing staged by a failed check
        assert tx.put("k", b"w", expect=rev) is True
        assert tx.put("new", b"n", expect=0) is False
    assert (store.get("k"), store.get("new")) == (b"w", b"n")


def test_transaction_delete_expect_checks_committed_revision(store: Store) -> None:
    rev = store.put("k", b"v")
    with store.transaction() as tx:
        with pytest.raises(VersionMismatch):
            tx.delete("k", expect=rev + 1)
        with pytest.raises(VersionMismatch):
            tx.delete("absent", expect=1)
        assert tx.delete("absent", expect=0) is False
        assert tx.delete("k", expect=rev) is True
    assert store.get("k") is None


@pytest.mark.parametrize(
    ("staged", "expect", "allowed"),
    [
        ("put", 0, False),  # a staged value exists in the view
        ("put", 1, False),  # and has no revision until commit
        ("delete", 0, True),  # a staged delete makes the key absent
        ("delete", 1, False),
    ],
)
def test_transaction_expect_sees_every_nested_level(
    store: Store, staged: str, expect: int, allowed: bool
) -> None:
    assert store.put("k", b"v") == 1
    tx = store.transaction()
    tx.begin()
    if staged == "put":
        tx.put("k", b"outer")
    else:
        tx.delete("k")
    tx.begin()  # the write sits one level out: the check must see it from depth 3
    if allowed:
        assert tx.put("k", b"inner", expect=expect) is False
        assert tx.get("k") == b"inner"
    else:
        with pytest.raises(VersionMismatch, match="written in this transaction"):
            tx.put("k", b"inner", expect=expect)
        with pytest.raises(VersionMismatch):
            tx.delete("k", expect=expect)
    tx.rollback()  # back to depth 2: the outer write alone
    assert tx.get("k") == (b"outer" if staged == "put" else None)
    tx.rollback()  # depth 1: nothing staged, the committed revision counts again
    assert tx.put("k", b"again", expect=1) is True
    tx.commit()
    assert store.get("k") == b"again"


def test_transaction_expect_validates_the_key_first(store: Store) -> None:
    with store.transaction() as tx, pytest.raises(InvalidKey):
        tx.put("", b"v", expect=5)
