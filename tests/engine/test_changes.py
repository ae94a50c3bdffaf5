"""The change feed: ``Store.changes`` / ``achanges`` against a model of the writes.

The model is the list of changes each write must produce (a batch or a commit: all its
operations under its one revision; a rollback or a no-op delete: nothing). Every test compares
the feed with it, from every starting revision, from the buffer, from the files (a tiny buffer,
or after a reopen), and across compaction, which keeps ``watch_history`` revisions.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import threading
from pathlib import Path

import pytest
from support.engine_fixtures import OpenStore, Reopen

from filekv.engine import Change, Compacted, Delete, Put, Store, StoreClosed
from filekv.engine.changes import CHANGE_COST

SOAK = os.environ.get("FILEKV_SOAK") == "1"
KEYS = ["a", "a/1", "a/2", "b", "b/1", "é", "cfg/x", "cfg/y"]


def _write_randomly(db: Store, rng: random.Random, writes: int) -> list[Change]:
    """Random puts, deletes, batches and transactions (some rolled back); the changes each
    one must produce, in order."""
    model: list[Change] = []
    live: set[str] = set(db.scan())
    for _ in range(writes):
        roll = rng.random()
        if roll < 0.45:
            key = rng.choice(KEYS)
            value = rng.randbytes(rng.choice([0, 3, 40, 700]))
            revision = db.put(key, value)
            model.append(Change(revision, "put", key, value, None))
            live.add(key)
        elif roll < 0.6:
            key = rng.choice(KEYS)
            existed = db.delete(key)
            assert existed == (key in live)
            if existed:
                model.append(Change(db.revision, "delete", key, None, None))
                live.discard(key)
        elif roll < 0.8:
            ops: list[Put | Delete] = []
            for _ in range(rng.randint(1, 5)):
                key = rng.choice(KEYS)
                if rng.random() < 0.7:
                    ops.append(Put(key, rng.randbytes(rng.randint(0, 30))))
                else:
                    ops.append(Delete(key))
            before = db.revision
            revision = db.batch(ops)
            final: dict[str, Put | Delete] = {}
            for op in ops:  # the last operation on a key wins, in its own position
                final.pop(op.key, None)
                final[op.key] = op
            expected = []
            for op in final.values():
                if isinstance(op, Put):
                    expected.append(Change(revision, "put", op.key, op.value, None))
                    live.add(op.key)
                elif op.key in live:
                    expected.append(Change(revision, "delete", op.key, None, None))
                    live.discard(op.key)
            assert (revision > before) == bool(expected)
            model.extend(expected)
        else:
            tx = db.transaction()
            staged: dict[str, bytes | None] = {}
            for _ in range(rng.randint(1, 4)):
                key = rng.choice(KEYS)
                if rng.random() < 0.7:
                    value = rng.randbytes(rng.randint(0, 20))
                    tx.put(key, value)
                    staged[key] = value  # a key keeps the place it was first staged at
                else:
                    tx.delete(key)
                    staged[key] = None
            if rng.random() < 0.25:
                tx.rollback()
                continue
            tx.commit()
            revision = db.revision
            for key, staged_value in staged.items():
                if staged_value is not None:
                    model.append(Change(revision, "put", key, staged_value, None))
                    live.add(key)
                elif key in live:
                    model.append(Change(revision, "delete", key, None, None))
                    live.discard(key)
    return model


def _all(db: Store, after: int) -> list[Change]:
    return list(db.changes(after=after, wait=False))


@pytest.mark.parametrize("buffer_bytes", [16 << 20, 600, 0], ids=["buffer", "small", "files"])
@pytest.mark.parametrize("seed", range(6 if SOAK else 2))
def test_changes_equal_the_model_from_every_revision(
    open_store: OpenStore, db_path: Path, seed: int, buffer_bytes: int
) -> None:
    db = open_store(
        db_path, segment_bytes=4096, watch_buffer_bytes=buffer_bytes, watch_history=10**6
    )
    model = _write_randomly(db, random.Random(seed), 400 if SOAK else 150)
    assert model, "the workload wrote something"
    assert _all(db, 0) == model
    for after in range(0, db.revision + 1):
        assert _all(db, after) == [c for c in model if c.revision > after], after


def test_changes_history_survives_reopen(
    open_store: OpenStore, reopen: Reopen, db_path: Path
) -> None:
    db = open_store(db_path, segment_bytes=4096, watch_history=10**6)
    model = _write_randomly(db, random.Random(7), 120)
    db = reopen(db)
    assert db.oldest_revision == 1
    assert _all(db, 0) == model  # every change now comes from the files
    more = _write_randomly(db, random.Random(8), 40)
    assert _all(db, 0) == model + more
    middle = model[len(model) // 2].revision
    assert _all(db, middle) == [c for c in model + more if c.revision > middle]


def test_changes_staged_writes_never_appear(store: Store) -> None:
    store.put("a", b"1")
    tx = store.transaction()
    tx.put("a", b"staged")
    tx.put("b", b"staged")
    assert _all(store, 0) == [Change(1, "put", "a", b"1", None)]
    tx.rollback()
    assert _all(store, 0) == [Change(1, "put", "a", b"1", None)]
    with store.transaction() as tx:
        tx.put("a", b"2")
        tx.delete("a")  # the commit writes only the delete
        tx.put("c", b"3")
    assert _all(store, 1) == [
        Change(2, "delete", "a", None, None),
        Change(2, "put", "c", b"3", None),
    ]


def test_changes_delete_of_absent_key_writes_no_change(store: Store) -> None:
    assert store.delete("nothing") is False
    assert store.batch([Delete("nothing")]) == 0
    assert _all(store, 0) == []


@pytest.mark.parametrize("buffer_bytes", [16 << 20, 0], ids=["buffer", "files"])
def test_changes_compacted_after_compaction(
    open_store: OpenStore, reopen: Reopen, db_path: Path, buffer_bytes: int
) -> None:
    db = open_store(db_path, segment_bytes=4096, watch_history=50, watch_buffer_bytes=buffer_bytes)
    model = _write_randomly(db, random.Random(3), 300)
    assert db.oldest_revision == 1
    assert db.compact()
    oldest = db.oldest_revision
    # Compaction dropped history (there was far more than 50 revisions of it) ...
    assert oldest > 1 or buffer_bytes
    # ... but kept at least the newest watch_history revisions, from the files too.
    reopened = reopen(db)
    oldest = reopened.oldest_revision
    assert 1 < oldest <= reopened.revision - 50 + 1
    assert _all(reopened, oldest - 1) == [c for c in model if c.revision >= oldest]
    with pytest.raises(Compacted) as caught:
        reopened.changes(after=oldest - 2)
    assert caught.value.oldest_available == oldest
    with pytest.raises(Compacted):
        list(reopened.changes(after=0, wait=False))


def test_changes_compaction_with_no_history_keeps_only_the_live(
    open_store: OpenStore, reopen: Reopen, db_path: Path
) -> None:
    db = open_store(db_path, segment_bytes=4096, watch_history=0)
    _write_randomly(db, random.Random(4), 200)
    db.compact()
    db = reopen(db)
    assert db.oldest_revision == db.revision + 1
    assert _all(db, db.revision) == []
    with pytest.raises(Compacted):
        db.changes(after=db.revision - 1)


def test_changes_compaction_repeated_keeps_data_and_history(
    open_store: OpenStore, reopen: Reopen, db_path: Path
) -> None:
    """Compactions interleaved with writes: the data stays the model's (the store fixture
    checks every index at teardown) and the feed from oldest_revision on stays exact."""
    db = open_store(db_path, segment_bytes=4096, watch_history=40, watch_buffer_bytes=0)
    rng = random.Random(11)
    model: list[Change] = []
    for _ in range(6):
        model += _write_randomly(db, rng, 80)
        db.compact()
        oldest = db.oldest_revision
        assert oldest <= db.revision - 40 + 1
        assert _all(db, oldest - 1) == [c for c in model if c.revision >= oldest]
    assert db.oldest_revision > 1  # history was dropped, the newest 40 revisions kept
    expected = {c.key: c.value for c in model}
    db = reopen(db)
    assert {k: db.get(k) for k in expected if db.get(k) is not None} == {
        k: v for k, v in expected.items() if v is not None
    }


def test_changes_wait_for_new_ones_and_end_at_close(open_store: OpenStore, db_path: Path) -> None:
    db = open_store(db_path)
    db.put("old", b"0")
    got: list[Change] = []
    ended: list[BaseException] = []

    def watch() -> None:
        try:
            for change in db.changes():
                got.append(change)
        except StoreClosed as error:
            ended.append(error)

    thread = threading.Thread(target=watch)
    thread.start()
    while db._feed._sync_waiting == 0:  # the watcher waits (white box: no sleep to guess)
        threading.Event().wait(0.001)
    db.put("k", b"1")
    db.batch([Put("k", b"2"), Put("j", b"3")])
    while len(got) < 3:
        threading.Event().wait(0.001)
    db.close()
    thread.join(10)
    assert not thread.is_alive()
    assert got == [
        Change(2, "put", "k", b"1", None),
        Change(3, "put", "k", b"2", None),
        Change(3, "put", "j", b"3", None),
    ]
    assert len(ended) == 1


def test_achanges_follow_writes_and_a_cancelled_watcher_leaves_nothing(store: Store) -> None:
    async def main() -> None:
        got: list[Change] = []

        async def watch() -> None:
            async for change in store.achanges(after=0):
                got.append(change)

        task = asyncio.create_task(watch())
        await asyncio.sleep(0.01)
        await store.aput("a", b"1")
        store.batch([Put("b", b"2"), Delete("a")])  # from the loop's thread too
        await asyncio.to_thread(store.put, "c", b"3")  # and from another thread
        for _ in range(1000):
            if len(got) == 4:
                break
            await asyncio.sleep(0.005)
        assert got == [
            Change(1, "put", "a", b"1", None),
            Change(2, "put", "b", b"2", None),
            Change(2, "delete", "a", None, None),
            Change(3, "put", "c", b"3", None),
        ]
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert store._feed._loop_waiters == {}

    asyncio.run(main())


def test_achange_chunks_never_split_a_revision(open_store: OpenStore, db_path: Path) -> None:
    db = open_store(db_path, watch_buffer_bytes=2000)
    for round_ in range(30):
        db.batch([Put(f"k{i}", bytes(20)) for i in range(round_ % 7 + 1)])

    async def chunks() -> list[list[Change]]:
        return [chunk async for chunk in db.achange_chunks(after=0, wait=False)]

    seen = asyncio.run(chunks())
    flat = [c for chunk in seen for c in chunk]
    assert [c.revision for c in flat] == sorted(c.revision for c in flat)
    assert len(flat) == sum(r % 7 + 1 for r in range(30))
    for earlier, later in itertools.pairwise(seen):
        assert earlier[-1].revision < later[0].revision


def test_changes_buffer_stays_within_its_budget(open_store: OpenStore, db_path: Path) -> None:
    db = open_store(db_path, watch_buffer_bytes=64 << 10)
    for i in range(3000):
        db.put(f"k{i % 50}", bytes(500))
    feed = db._feed
    assert feed._bytes <= 64 << 10
    assert len(feed._changes) - feed._head < (64 << 10) // 500
    assert len(feed._changes) <= 2 * (64 << 10) // 500 + 4096
    assert feed.floor > 2000  # older changes come from the files now
    assert _all(db, 100)[0].revision == 101


def test_changes_expire_appears_with_its_own_revision(open_store: OpenStore, db_path: Path) -> None:
    now = [1_000_000.0]
    db = open_store(db_path, clock=lambda: now[0], expiry_sweep_seconds=0)
    db.put("session", b"s", ttl=10)
    now[0] += 11
    assert db.sweep_expired() == 1
    changes = _all(db, 0)
    assert changes[0] == Change(1, "put", "session", b"s", 1_000_010.0)
    assert changes[1] == Change(2, "expire", "session", None, None)


@pytest.mark.parametrize("after", [-1, 1.5, "3"])
def test_changes_after_must_be_a_revision(store: Store, after: object) -> None:
    with pytest.raises(ValueError, match="after must be a revision"):
        store.changes(after=after)  # type: ignore[arg-type]


def test_changes_buffer_counts_a_record_as_its_changes(
    open_store: OpenStore, db_path: Path
) -> None:
    # A batch's or a commit's changes are published together (publish_many): the buffer's byte
    # count must be what publishing each would have added (a TTL's expiry is no part of it).
    db = open_store(db_path)
    db.put("gone", b"x")
    db.batch([Put("a", b"12345"), Put("é", b"v" * 40, ttl=60), Delete("gone"), Put("a", b"z")])
    with db.transaction() as tx:
        tx.put("b", b"in a commit", ttl=5)
        tx.delete("a")
    feed = db._feed
    buffered = [c for c in feed._changes[feed._head :] if c is not None]
    assert [(c.op, c.key, c.value) for c in _all(db, 0)] == [
        ("put", "gone", b"x"),
        ("put", "é", b"v" * 40),
        ("delete", "gone", None),
        ("put", "a", b"z"),
        ("put", "b", b"in a commit"),
        ("delete", "a", None),
    ]
    assert feed._bytes == sum(CHANGE_COST + len(c[2]) + len(c[3] or b"") for c in buffered)
