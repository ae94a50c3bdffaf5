"""Batches (``Store.batch`` / ``abatch`` / ``Transaction.batch``) and ``Transaction.release``."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.engine_fixtures import OpenStore, Reopen
from support.storefiles import contents, last_segment, truncate

from filekv.engine import (
    Delete,
    InvalidBatch,
    InvalidKey,
    NoSavepoint,
    Put,
    Store,
    TransactionActive,
    TransactionTooLarge,
    ValueTooLarge,
    VersionMismatch,
)
from filekv.engine.record import OPERATION_HEADER

# -- Store.batch -----------------------------------------------------------------------------------


def test_batch_applies_every_operation_at_one_new_revision(store: Store) -> None:
    old = store.put("old", b"x")
    revision = store.batch([Put("a", b"1"), Put("b", b"2"), Delete("old")])
    assert revision == old + 1 == store.revision
    assert contents(store) == {"a": b"1", "b": b"2"}
    entry_a, entry_b = store.entry("a"), store.entry("b")
    assert entry_a is not None and entry_b is not None
    assert entry_a.revision == entry_b.revision == revision
    assert store.find(b"1") == ["a"]


def test_batch_is_one_record_on_disk(store: Store, reopen: Reopen) -> None:
    store.batch([Put(f"k{i}", b"v" * i) for i in range(50)])
    before = store.stats().disk_bytes
    store.put("single", b"v")
    # A record has one 32-byte header; fifty records would add fifty.
    single_put = store.stats().disk_bytes - before
    again = reopen(store)
    assert contents(again) == {**{f"k{i}": b"v" * i for i in range(50)}, "single": b"v"}
    assert single_put < 100


def test_batch_expect_failure_applies_nothing_and_names_the_first_failing_op(store: Store) -> None:
    rev_a = store.put("a", b"1")
    store.put("b", b"2")
    with pytest.raises(VersionMismatch) as caught:
        store.batch(
            [
                Put("a", b"new", expect=rev_a),  # holds
                Put("new", b"n", expect=0),  # holds
                Put("b", b"x", expect=rev_a),  # fails: b is at rev_a + 1
                Delete("c", expect=3),  # would fail too, but b's is first
            ]
        )
    assert caught.value.op_index == 2
    assert caught.value.key == "b"
    assert "op 2" in str(caught.value)
    assert contents(store) == {"a": b"1", "b": b"2"}
    assert store.revision == rev_a + 1


@pytest.mark.parametrize(
    ("op", "fails"),
    [
        (Put("a", b"x", expect=0), True),  # exists: expect=0 refuses
        (Put("missing", b"x", expect=0), False),
        (Delete("missing", expect=1), True),  # must exist at 1
        (Delete("a", expect=1), False),
        (Put("a", b"x", expect=2), True),
    ],
)
def test_batch_expect_follows_put_semantics(store: Store, op: Put | Delete, fails: bool) -> None:
    assert store.put("a", b"1") == 1
    if fails:
        with pytest.raises(VersionMismatch):
            store.batch([op])
        assert contents(store) == {"a": b"1"}
    else:
        assert store.batch([op]) == 2


def test_batch_several_ops_on_one_key_apply_in_order_last_wins(store: Store) -> None:
    rev = store.put("a", b"0")
    # Every expect is compared with the data before the batch: both hold though op 0 writes a.
    assert store.batch([Put("a", b"1", expect=rev), Put("a", b"2", expect=rev)]) == rev + 1
    assert store.get("a") == b"2"
    before = store.stats().disk_bytes
    assert store.batch([Put("b", b"x" * 1000), Delete("b")]) == rev + 1  # b ends absent
    assert "b" not in store and store.stats().disk_bytes == before  # nothing to write
    store.batch([Delete("a"), Put("a", b"3")])
    assert store.get("a") == b"3"
    with pytest.raises(VersionMismatch) as caught:
        store.batch([Put("c", b"1"), Put("c", b"2", expect=1)])  # c did not exist before
    assert caught.value.op_index == 1


def test_batch_delete_of_absent_key_is_no_error_and_writes_nothing(store: Store) -> None:
    store.put("a", b"1")
    before = store.stats().disk_bytes
    assert store.batch([Delete("ghost"), Delete("other ghost")]) == 1
    assert store.stats().disk_bytes == before
    # Mixed with a real write, the absent delete is simply left out of the record.
    assert store.batch([Delete("ghost"), Put("b", b"2")]) == 2
    assert contents(store) == {"a": b"1", "b": b"2"}


@pytest.mark.parametrize(
    ("ops", "error", "index"),
    [
        ([], InvalidBatch, None),
        ([Put("a", b"1"), Put("", b"2")], InvalidKey, 1),
        ([Put("k" * 2000, b"2")], InvalidKey, 0),
    ],
)
def test_batch_refuses_what_cannot_be_one_record(
    store: Store, ops: list[Put | Delete], error: type[Exception], index: int | None
) -> None:
    with pytest.raises(error) as caught:
        store.batch(ops)
    assert getattr(caught.value, "op_index", None) == index
    if index is not None:
        assert f"op {index}" in str(caught.value)
    assert len(store) == 0 and store.revision == 0


def test_batch_value_over_the_limit_names_its_op(open_store: OpenStore, db_path: Path) -> None:
    db = open_store(db_path, max_value_bytes=10)
    with pytest.raises(ValueTooLarge, match="op 1"):
        db.batch([Put("a", b"ok"), Put("b", b"x" * 11)])
    with pytest.raises(TypeError, match="op 0"):
        db.batch([Put("a", "text")])  # type: ignore[arg-type]
    assert len(db) == 0


def test_batch_is_bounded_by_the_transaction_limits(open_store: OpenStore, db_path: Path) -> None:
    db = open_store(db_path, max_transaction_ops=3, max_transaction_bytes=4096)
    with pytest.raises(TransactionTooLarge, match="4 operations"):
        db.batch([Put(f"k{i}", b"v") for i in range(4)])
    with pytest.raises(TransactionTooLarge, match="at op 1"):
        db.batch([Put("a", b"x" * 2000), Put("b", b"x" * 2100)])
    assert db.batch([Put(f"k{i}", b"v") for i in range(3)]) == 1


def test_batch_is_refused_while_a_transaction_is_open(store: Store) -> None:
    tx = store.transaction()
    with pytest.raises(TransactionActive):
        store.batch([Put("a", b"1")])
    tx.abort()
    assert store.batch([Put("a", b"1")]) == 1


def test_abatch_matches_batch_inline_and_in_a_thread(store: Store) -> None:
    async def run() -> tuple[int, int]:
        small = await store.abatch([Put("small", b"1"), Delete("nothing")])
        # Over the inline threshold: encoded in a thread, same answer.
        large = await store.abatch([Put(f"big{i}", b"x" * 40_000) for i in range(3)])
        return small, large

    assert asyncio.run(run()) == (1, 2)
    assert store.get("big2") == b"x" * 40_000


def test_batch_torn_on_disk_is_all_gone(store: Store, reopen: Reopen) -> None:
    store.put("before", b"1")
    size_before = last_segment(store.path).stat().st_size
    store.batch([Put(f"k{i}", b"value") for i in range(20)])
    size_after = last_segment(store.path).stat().st_size
    store.close()
    for cut in (size_before + 1, (size_before + size_after) // 2, size_after - 1):
        truncate(last_segment(store.path), cut)
        again = reopen(store)
        assert contents(again) == {"before": b"1"}, cut
        again.close()


# -- Transaction.batch -----------------------------------------------------------------------------


def test_transaction_batch_stages_all_and_commit_applies_them(store: Store) -> None:
    rev = store.put("a", b"1")
    with store.transaction() as tx:
        assert tx.batch([Put("a", b"2", expect=rev), Put("b", b"3"), Delete("ghost")]) == 3
        assert tx.get("a") == b"2" and tx.get("b") == b"3"
        assert store.get("a") == b"1"  # staged, not applied
    assert contents(store) == {"a": b"2", "b": b"3"}


def test_transaction_batch_repeated_key_last_wins(store: Store) -> None:
    with store.transaction() as tx:
        tx.batch([Put("a", b"1"), Delete("a"), Put("b", b"1"), Put("b", b"2")])
        assert tx.get("a") is None and tx.get("b") == b"2"
        assert tx.staged_ops == 2
    assert contents(store) == {"b": b"2"}


def test_transaction_batch_failing_expect_stages_nothing(store: Store) -> None:
    store.put("a", b"1")
    tx = store.transaction()
    tx.put("x", b"staged")
    with pytest.raises(VersionMismatch) as caught:
        tx.batch([Put("y", b"1"), Put("x", b"2", expect=0)])  # x exists in tx's view
    assert caught.value.op_index == 1
    assert tx.get("y") is None and tx.get("x") == b"staged"
    assert tx.staged_ops == 1
    tx.abort()


def test_transaction_batch_passing_the_limit_stages_nothing(
    open_store: OpenStore, db_path: Path
) -> None:
    db = open_store(db_path, max_transaction_ops=4)
    tx = db.transaction()
    tx.put("a", b"1")
    tx.put("b", b"1")
    with pytest.raises(TransactionTooLarge):
        tx.batch([Put("c", b"1"), Put("d", b"1"), Put("e", b"1")])
    assert (tx.staged_ops, tx.depth, tx.scan()) == (2, 1, ["a", "b"])
    tx.batch([Put("c", b"1"), Put("d", b"1")])
    assert tx.staged_ops == 4
    tx.commit()
    assert len(db) == 4


# -- Transaction.release ---------------------------------------------------------------------------


def test_release_merges_the_level_and_a_rollback_then_undoes_it(store: Store) -> None:
    store.put("keep", b"1")
    tx = store.transaction()
    tx.put("outer", b"1")
    tx.begin()
    tx.put("inner", b"2")
    tx.delete("keep")
    assert tx.release() == 1
    assert tx.get("inner") == b"2" and tx.get("keep") is None
    tx.begin()
    assert tx.rollback() == 1  # the released writes belong to level 1 now
    assert tx.get("inner") == b"2"
    assert tx.rollback() == 0
    assert contents(store) == {"keep": b"1"}


def test_release_at_depth_one_is_refused_and_changes_nothing(store: Store) -> None:
    tx = store.transaction()
    tx.put("a", b"1")
    with pytest.raises(NoSavepoint):
        tx.release()
    assert tx.depth == 1 and tx.get("a") == b"1"
    tx.commit()
    assert store.get("a") == b"1"


def test_release_then_commit_applies_the_inner_writes_over_the_outer(store: Store) -> None:
    with store.transaction() as tx:
        tx.put("a", b"outer")
        tx.put("b", b"outer")
        tx.begin()
        tx.put("a", b"inner")
        tx.delete("b")
        tx.release()
    assert contents(store) == {"a": b"inner"}


_STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.sampled_from("abcde"), st.binary(max_size=8)),
        st.tuples(st.just("delete"), st.sampled_from("abcde"), st.just(b"")),
        st.tuples(st.sampled_from(["begin", "release", "rollback"]), st.just(""), st.just(b"")),
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(steps=_STEPS)
def test_release_keeps_the_counts_of_a_flat_replay(
    tmp_path_factory: pytest.TempPathFactory, steps: list[tuple[str, str, bytes]]
) -> None:
    """After any begin/release/rollback sequence, the staged counts equal a fresh transaction's
    that stages the same final view's operations level by level: release frees what it folds."""
    path = tmp_path_factory.mktemp("release")
    with Store.open(path, fsync="never", auto_compact=False) as db:
        tx = db.transaction()
        model: list[dict[str, bytes | None]] = [{}]
        for kind, key, value in steps:
            if kind == "put":
                tx.put(key, value)
                model[-1][key] = value
            elif kind == "delete":
                tx.delete(key)
                model[-1][key] = None
            elif kind == "begin":
                tx.begin()
                model.append({})
            elif kind == "release" and len(model) > 1:
                tx.release()
                inner = model.pop()
                model[-1].update(inner)
            elif kind == "rollback" and len(model) > 1:
                tx.rollback()
                model.pop()
        assert tx.depth == len(model)
        assert tx.staged_ops == sum(len(level) for level in model)
        assert tx.staged_bytes == sum(
            OPERATION_HEADER.size + len(key) + len(value or b"")
            for level in model
            for key, value in level.items()
        )
        flat: dict[str, bytes | None] = {}
        for level in model:
            flat.update(level)
        assert {key: tx.get(key) for key in "abcde"} == {key: flat.get(key) for key in "abcde"}
        tx.abort()
