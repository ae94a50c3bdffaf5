"""Keys that expire: exact for every read at once, durable across reopen and compaction.

Every test runs on a fake clock (``Store.open(clock=...)``) with the background sweeper off, so
time moves only when the test says so and the sweep happens only when it is called.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.engine_fixtures import FAST, OpenStore
from support.storefiles import as_after_a_crash, segments

from filekv.engine import Store, StoreOptions
from filekv.engine.batch import Delete, Put
from filekv.engine.errors import InvalidTTL, TransactionActive, VersionMismatch
from filekv.engine.expiry import MAX_TTL
from filekv.engine.record import (
    EXPIRE,
    FORMAT_VERSION,
    decode_segment_header,
    iter_operations,
    record_at,
)

START = 1_700_000_000.0


class Clock:
    """A clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


OPTIONS = {**FAST, "options": StoreOptions(expiry_sweep_seconds=0, fsync="never")}


@pytest.fixture
def clock() -> Clock:
    return Clock()


def _open(open_store: OpenStore, path: Path, clock: Clock, **options: object) -> Store:
    return open_store(path, clock=clock, **{**OPTIONS, **options})


def _ops_on_disk(path: Path) -> list[tuple[int, int, str, float | None]]:
    """(revision, kind, key, expires_at) of every operation in the store's segments."""
    found = []
    for segment in segments(path):
        data = segment.read_bytes()
        header = decode_segment_header(data)
        offset = header.size
        while (checked := record_at(data, offset, header.marker)) is not None:
            revision, end = checked
            for op in iter_operations(data, offset, header.version):
                found.append((revision, op.kind, op.key.decode(), op.expires_at))
            offset = end
    return found


def test_ttl_key_reads_as_gone_the_moment_it_expires(
    open_store: OpenStore, tmp_path: Path, clock: Clock
) -> None:
    db = _open(open_store, tmp_path / "db", clock)
    db.put("session", b"blue", ttl=10)
    db.put("forever", b"blue")
    entry = db.entry("session")
    assert entry is not None and entry.expires_at == START + 10
    assert db.entry("forever") is not None and db.entry("forever").expires_at is None  # type: ignore[union-attr]
    clock.advance(9.999)
    assert db.get("session") == b"blue" and "session" in db and len(db) == 2
    clock.advance(0.001)  # exactly at expires_at: gone
    assert db.get("session") is None
    assert db.entry("session") is None
    assert "session" not in db
    assert len(db) == 1
    assert db.find(b"blue") == ["forever"]
    assert db.scan("") == ["forever"]
    assert db.delete("session") is False  # already gone: nothing to delete


def test_ttl_put_without_ttl_ends_an_expiry_and_a_new_ttl_replaces_it(
    open_store: OpenStore, tmp_path: Path, clock: Clock
) -> None:
    db = _open(open_store, tmp_path / "db", clock)
    db.put("a", b"1", ttl=5)
    db.put("a", b"2")  # as Redis SET: the expiry is gone
    db.put("b", b"1", ttl=5)
    db.put("b", b"2", ttl=50)
    clock.advance(10)
    assert db.get("a") == b"2" and db.entry("a").expires_at is None  # type: ignore[union-attr]
    assert db.get("b") == b"2"
    clock.advance(40)
    assert db.get("b") is None


@pytest.mark.parametrize(
    "ttl", [0, -1, math.inf, math.nan, MAX_TTL + 1, "10", True, None.__class__]
)
def test_ttl_out_of_range_is_refused_and_nothing_is_written(
    open_store: OpenStore, tmp_path: Path, clock: Clock, ttl: object
) -> None:
    db = _open(open_store, tmp_path / "db", clock)
    with pytest.raises(InvalidTTL):
        db.put("k", b"v", ttl=ttl)  # type: ignore[arg-type]
    with pytest.raises(InvalidTTL, match="op 1"):
        db.batch([Put("ok", b"v"), Put("k", b"v", ttl=ttl)])  # type: ignore[arg-type]
    assert db.revision == 0 and len(db) == 0


def test_ttl_expired_key_is_absent_to_compare_and_set(
    open_store: OpenStore, tmp_path: Path, clock: Clock
) -> None:
    db = _open(open_store, tmp_path / "db", clock)
    revision = db.put("lock", b"me", ttl=1)
    clock.advance(2)
    with pytest.raises(VersionMismatch):
        db.put("lock", b"again", expect=revision)  # the revision is gone with the key
    db.put("lock", b"you", expect=0)  # "only if absent" succeeds: it is absent
    assert db.get("lock") == b"you"


def test_ttl_sweep_writes_one_expire_record_per_key_durably(
    open_store: OpenStore, tmp_path: Path, clock: Clock
) -> None:
    path = tmp_path / "db"
    db = _open(open_store, path, clock)
    for i in range(5):
        db.put(f"k{i}", b"v", ttl=1 + i)
    db.put("stays", b"v")
    assert db.sweep_expired() == 0  # nothing is due yet
    clock.advance(3)  # k0, k1, k2 are due
    before = db.revision
    assert db.sweep_expired() == 3
    assert db.revision == before + 3
    expired = [(rev, key) for rev, kind, key, _ in _ops_on_disk(path) if kind == EXPIRE]
    assert expired == [(before + 1, "k0"), (before + 2, "k1"), (before + 3, "k2")]
    assert db.sweep_expired() == 0
    db.close()
    clock.advance(100)  # the rest expire while the store is closed
    db = _open(open_store, path, clock)
    assert db.scan("") == ["stays"] and len(db) == 1  # gone on open, before any sweep
    assert db.sweep_expired() == 2


def test_ttl_sweep_is_bounded_per_call(open_store: OpenStore, tmp_path: Path, clock: Clock) -> None:
    db = _open(open_store, tmp_path / "db", clock)
    db.batch([Put(f"k{i:03d}", b"v", ttl=1) for i in range(300)])
    clock.advance(2)
    assert db.sweep_expired(limit=100) == 100
    assert len(db) == 0  # every read already sees them gone
    assert db.sweep_expired(limit=1000) == 200


def test_ttl_sweep_skips_keys_the_open_transaction_touched(
    open_store: OpenStore, tmp_path: Path, clock: Clock
) -> None:
    db = _open(open_store, tmp_path / "db", clock)
    db.put("mine", b"v", ttl=1)
    db.put("theirs", b"v", ttl=1)
    tx = db.transaction()
    tx.put("mine", b"staged")
    clock.advance(2)
    with pytest.raises(TransactionActive):
        db.put("other", b"v")  # clients are kept out, the sweeper is not
    assert db.sweep_expired() == 1  # "theirs" only
    assert tx.get("mine") == b"staged"
    tx.commit()
    assert db.get("mine") == b"staged" and db.entry("mine").expires_at is None  # type: ignore[union-attr]
    assert db.get("theirs") is None


def test_ttl_in_transactions_and_batches(
    open_store: OpenStore, tmp_path: Path, clock: Clock
) -> None:
    path = tmp_path / "db"
    db = _open(open_store, path, clock)
    with db.transaction() as tx:
        tx.put("t/short", b"v", ttl=5)
        tx.begin()
        tx.batch([Put("t/batch", b"v", ttl=7), Put("t/plain", b"v")])
        entry = tx.entry("t/batch")
        assert entry is not None and entry.expires_at == START + 7 and entry.revision is None
        tx.release()
    db.batch([Put("b/one", b"v", ttl=3), Delete("t/plain"), Put("b/two", b"v")])
    assert db.entry("t/short").expires_at == START + 5  # type: ignore[union-attr]
    clock.advance(4)
    assert db.scan("") == ["b/two", "t/batch", "t/short"]
    clock.advance(3)
    assert db.scan("") == ["b/two"]


def test_ttl_staged_value_that_runs_out_reads_as_gone_in_its_transaction(
    open_store: OpenStore, tmp_path: Path, clock: Clock
) -> None:
    db = _open(open_store, tmp_path / "db", clock)
    tx = db.transaction()
    tx.put("k", b"v", ttl=1)
    clock.advance(1)
    assert tx.get("k") is None and tx.entry("k") is None
    tx.abort()


def test_ttl_staged_value_that_runs_out_leaves_scan_and_find_too(
    open_store: OpenStore, tmp_path: Path, clock: Clock
) -> None:
    """The holder's list and find-by-value drop a staged key once get calls it gone."""
    db = _open(open_store, tmp_path / "db", clock)
    db.put("ttl/committed", b"red")  # a committed match the expired staged write must hide
    db.put("ttl/other", b"red")
    tx = db.transaction()
    tx.put("ttls", b"red", ttl=0.5)
    tx.put("ttl/committed", b"red", ttl=0.5)
    assert tx.scan("ttl") == ["ttl/committed", "ttl/other", "ttls"]
    assert tx.find(b"red") == ["ttl/committed", "ttl/other", "ttls"]
    clock.advance(0.5)  # exactly at expires_at: gone, as for get
    assert tx.get("ttls") is None and tx.get("ttl/committed") is None
    assert tx.scan("ttl") == ["ttl/other"]
    assert tx.scan("", after="ttl/committed", limit=5) == ["ttl/other"]
    assert tx.find(b"red") == ["ttl/other"]
    assert tx.find(b"red", prefix="ttls") == []
    # What commit writes is unchanged: the records carry their expiry, already past.
    tx.commit()
    assert db.scan("ttl") == ["ttl/other"] and db.find(b"red") == ["ttl/other"]


@pytest.mark.parametrize(
    "how", ["clean close", "crash", "compaction", "compaction then crash", "compaction, no hints"]
)
def test_ttl_survives_reopen_and_compaction(
    open_store: OpenStore, tmp_path: Path, clock: Clock, how: str
) -> None:
    path = tmp_path / "db"
    db = _open(open_store, path, clock, segment_bytes=4096)
    for i in range(200):  # several segments
        db.put(f"k{i:03d}", b"x" * 40, ttl=(i % 4 + 1) * 10 if i % 3 else None)
    want = {key: db.entry(key).expires_at for key in db.scan("")}  # type: ignore[union-attr]
    if "compaction" in how:
        for i in range(0, 200, 5):
            db.put(f"k{i:03d}", b"x" * 40, ttl=100 if i % 2 else None)  # rewrite some
            want[f"k{i:03d}"] = START + 100 if i % 2 else None
        db.compact()
    db.close()
    if "crash" in how:
        as_after_a_crash(path)
    if "no hints" in how:  # every segment replayed: the expiries come from the records alone
        for hint in path.glob("*.hint"):
            hint.unlink()
    db = _open(open_store, path, clock, segment_bytes=4096)
    assert {key: db.entry(key).expires_at for key in db.scan("")} == want  # type: ignore[union-attr]
    clock.advance(25)
    assert sorted(db.scan("")) == sorted(
        k for k, at in want.items() if at is None or at > clock.now
    )


def test_ttl_new_segments_are_the_current_format_version(
    open_store: OpenStore, tmp_path: Path, clock: Clock
) -> None:
    path = tmp_path / "db"
    db = _open(open_store, path, clock)
    db.put("k", b"v", ttl=1)
    db.close()
    assert {decode_segment_header(p.read_bytes()).version for p in segments(path)} == {
        FORMAT_VERSION
    }
    assert FORMAT_VERSION == 3


# -- the model: random writes, clock moves, sweeps, reopens and compactions ---------------------

_KEYS = st.sampled_from([f"k{i}" for i in range(6)])
_STEP = st.one_of(
    st.tuples(st.just("put"), _KEYS, st.one_of(st.none(), st.integers(1, 30))),
    st.tuples(st.just("delete"), _KEYS, st.none()),
    st.tuples(st.just("batch"), _KEYS, st.integers(1, 30)),
    st.tuples(st.just("tick"), st.just(""), st.integers(0, 20)),
    st.tuples(st.just("sweep"), st.just(""), st.none()),
    st.tuples(st.just("reopen"), st.just(""), st.none()),
    st.tuples(st.just("crash"), st.just(""), st.none()),
    st.tuples(st.just("compact"), st.just(""), st.none()),
)


@settings(
    max_examples=60 if os.environ.get("FILEKV_SOAK") != "1" else 400,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(steps=st.lists(_STEP, max_size=40))
def test_ttl_model_exact_across_reopen_and_compaction(
    tmp_path_factory: pytest.TempPathFactory, steps: list[tuple[str, str, int | None]]
) -> None:
    path = tmp_path_factory.mktemp("ttl-model") / "db"
    clock = Clock()
    options = StoreOptions(expiry_sweep_seconds=0, fsync="never", segment_bytes=4096)
    db = Store.open(path, options, clock=clock)
    model: dict[str, tuple[bytes, float | None]] = {}
    try:
        for number, (step, key, arg) in enumerate(steps):
            value = b"v%d" % number
            if step == "put":
                db.put(key, value, ttl=arg)
                model[key] = (value, None if arg is None else clock.now + arg)
            elif step == "batch":
                assert arg is not None
                db.batch([Put(key, value, ttl=arg), Put("plain", value)])
                model[key] = (value, clock.now + arg)
                model["plain"] = (value, None)
            elif step == "delete":
                db.delete(key)
                model.pop(key, None)
            elif step == "tick":
                assert arg is not None
                clock.advance(arg)
            elif step == "sweep":
                db.sweep_expired()
            elif step == "compact":
                db.compact()
            else:
                db.close()
                if step == "crash":
                    as_after_a_crash(path)
                db = Store.open(path, options, clock=clock)
            live = {k: v for k, (v, at) in model.items() if at is None or at > clock.now}
            assert {k: db.get(k) for k in db.scan("")} == live, (number, step)
            assert len(db) == len(live)
            for k, (_, at) in model.items():
                if k in live:
                    assert db.entry(k).expires_at == at  # type: ignore[union-attr]
            db.check()
    finally:
        db.close()


def test_ttl_snapshot_leaves_out_expired_keys(
    open_store: OpenStore, tmp_path: Path, clock: Clock
) -> None:
    db = _open(open_store, tmp_path / "db", clock)
    db.put("a/1", b"v", ttl=1)
    db.put("a/2", b"v")
    db.put("a/3", b"v", ttl=100)
    clock.advance(2)
    with db.snapshot("a/") as snap:
        assert [key for key, _, _ in snap] == ["a/2", "a/3"]
        assert (snap.expires_at("a/2"), snap.expires_at("a/3")) == (None, START + 100)


def test_ttl_staged_delete_of_a_key_that_ran_out_writes_nothing_but_counts_as_staged(
    open_store: OpenStore, tmp_path: Path, clock: Clock
) -> None:
    """Its expiry is the sweeper's own operation (an ``expire`` in the feed): the commit's record
    holds no delete for it, and the commit counts it among the staged writes, as it counts a
    delete of a key that was never there."""
    db = _open(open_store, tmp_path / "db", clock)
    db.put("short", b"x", ttl=1)
    db.put("kept", b"x")
    revision = db.revision
    tx = db.transaction()
    tx.delete("short")
    tx.delete("kept")
    tx.put("new", b"y")
    clock.advance(1)  # "short" runs out while the transaction is open
    assert tx.commit() == 3
    assert db.get("short") is None and db.get("kept") is None and db.get("new") == b"y"
    assert db.revision == revision + 1  # one record: the delete of "kept" and the put
