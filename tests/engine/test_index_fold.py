"""Opening from several hint files folds them into one set of columns (``hint_fold.HintFold``,
``key_columns.py``), or the first ones into columns and the last few on top, entry by entry.

The folded index must answer exactly as the index that setting each hint's entries one by one
(and removing its deleted keys) builds: same locations, same key order, same candidates per value
hash, before and after further changes. Few hashes, so most keys share one.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from filekv.engine import Store, hint_fold, key_chunks, key_columns, value_order
from filekv.engine import index as index_module
from filekv.engine.hint import HintColumns, decode_hint, encode_hint, length_of, pack, unpack
from filekv.engine.hint_fold import HintFold
from filekv.engine.index import KeyIndex
from filekv.engine.segment import list_segment_ids
from filekv.engine.segments import ENTRY_OVERHEAD, entry_bytes

KEYS = [f"key{i:02d}" for i in range(10)] + ["é", "ü/x"]
segment_hint = st.tuples(
    st.dictionaries(
        st.sampled_from(KEYS), st.tuples(st.integers(0, 3), st.integers(1, 500)), max_size=8
    ),
    st.lists(st.sampled_from(KEYS), max_size=4, unique=True),
)


def _columns(segment_id: int, puts: dict[str, tuple[int, int]], deleted: list[str]) -> HintColumns:
    keys = sorted(puts)
    columns = HintColumns(
        segment_id=segment_id,
        max_revision=0,
        created_ms=0,
        keys=keys,
        locations=[pack(segment_id, 40 + i, 3, puts[k][1], puts[k][0]) for i, k in enumerate(keys)],
        deleted=sorted(set(deleted) - set(puts)),  # a segment's final state: put or deleted
    )
    return decode_hint(encode_hint(columns))  # as read from disk, value groups and all


def _view(index: KeyIndex) -> tuple[list[tuple[str, int]], dict[int, list[tuple[str, int]]]]:
    """Everything a reader can ask: each key's location in key order, each hash's candidates."""
    return list(index.items()), {hashed: index.candidates(hashed) for hashed in range(4)}


change = st.one_of(
    st.tuples(st.just("set"), st.sampled_from(KEYS), st.integers(0, 3), st.integers(1, 500)),
    st.tuples(st.just("remove"), st.sampled_from(KEYS)),
    st.tuples(st.just("move"), st.sampled_from(KEYS), st.integers(1, 500)),
    st.tuples(st.just("fold"), st.integers(1, 5)),  # the overlay's new keys into the columns
)


@settings(max_examples=300, deadline=None)
@given(
    hints=st.lists(segment_hint, min_size=1, max_size=5),
    changes=st.lists(change, max_size=12),
    apply_share=st.sampled_from([hint_fold.APPLY_SHARE, 0]),
)
def test_index_fold_of_hints_equals_setting_each_entry(
    hints: list[Any], changes: list[tuple[Any, ...]], apply_share: int
) -> None:
    # Chunks of 2 keys (256 in use): a dozen keys span several, and folds split them. And the
    # value order merged by buckets, as it is for large stores only. An apply_share of 0 applies
    # every hint from the first overlapping one on entry by entry, however many entries.
    chunk, whole, share = key_chunks.CHUNK, value_order.SMALL_VALUE_ORDER, hint_fold.APPLY_SHARE
    key_chunks.CHUNK, value_order.SMALL_VALUE_ORDER, hint_fold.APPLY_SHARE = 2, 0, apply_share
    try:
        _fold_equals_setting_each_entry(hints, changes)
    finally:
        key_chunks.CHUNK, value_order.SMALL_VALUE_ORDER, hint_fold.APPLY_SHARE = chunk, whole, share


def _fold_equals_setting_each_entry(hints: list[Any], changes: list[tuple[Any, ...]]) -> None:
    columns = [_columns(i + 1, puts, deleted) for i, (puts, deleted) in enumerate(hints)]
    eager = KeyIndex()
    for hint in columns:
        for key, location in zip(hint.keys, hint.locations, strict=True):
            eager.set(key, location)
        for key in hint.deleted:
            eager.remove(key)
    fold = HintFold()
    for hint in columns:
        fold.add(hint)
    folded = KeyIndex()
    accounts = _load(fold, folded)
    folded.check()
    assert _view(folded) == _view(eager) and len(folded) == len(eager)
    assert accounts.live == sum(
        ENTRY_OVERHEAD + len(key.encode()) + length_of(location) for key, location in eager.items()
    )
    # Each hint's own value order searched, then the merged one: the same candidates.
    loose = key_columns.KeyColumns.from_hints(columns)
    expected = {hashed: eager.candidates(hashed) for hashed in range(4)}
    assert {hashed: sorted(loose.candidates(hashed)) for hashed in range(4)} == expected
    assert loose.merge_value_order()
    assert {hashed: sorted(loose.candidates(hashed)) for hashed in range(4)} == expected
    # Then the same changes to both: the overlay on top of the columns agrees throughout.
    for step in changes:
        if step[0] == "set":
            _, key, hashed, revision = step
            location = pack(9, 40 + revision, 3, revision, hashed)
            assert folded.set(key, location) == eager.set(key, location)
        elif step[0] == "remove":
            assert folded.remove(step[1]) == eager.remove(step[1])
        elif step[0] == "fold":
            folded.fold_step(step[1])
            folded.settle_value_order()
        else:
            _, key, offset = step
            expected = eager.get(key)
            if expected is None:
                assert not folded.move(key, pack(1, 1, 1, 1, 1), pack(8, 1, 1, 1, 1))
                continue
            _, _, length, revision, hashed = unpack(expected)
            moved = pack(8, offset, length, revision, hashed)
            folded.move_many([key, key], [expected, expected], [moved, moved])  # the 2nd: no-op
            assert folded.get(key) == moved and eager.move(key, expected, moved)
            if moved != expected:
                assert not folded.move(key, expected, moved), "no longer where it was"
        assert _view(folded) == _view(eager) and len(folded) == len(eager)
        assert folded.get_many(KEYS) == [eager.get(key) for key in KEYS]
        assert folded.get_many(KEYS[::-1]) == [eager.get(key) for key in KEYS[::-1]]
        folded.check()


class _Accounts:
    """The SegmentSet methods a fold calls, counting what they are told as the set does."""

    def __init__(self) -> None:
        self.entries = self.key_bytes = self.value_bytes = self.live = 0

    def account_bulk(self, entries: int, key_bytes: int, value_bytes: int) -> None:
        self.entries += entries
        self.key_bytes += key_bytes
        self.value_bytes += value_bytes
        self.live += ENTRY_OVERHEAD * entries + key_bytes + value_bytes

    def account_set(self, key_bytes: int, value_bytes: int, previous: int | None) -> None:
        self.live += ENTRY_OVERHEAD + key_bytes + value_bytes
        self.account_remove(key_bytes, previous)

    def account_remove(self, key_bytes: int, previous: int | None) -> None:
        if previous is not None:
            self.live -= entry_bytes(key_bytes, previous)


def _load(fold: HintFold, index: KeyIndex) -> _Accounts:
    accounts = _Accounts()
    fold.load_into(accounts, index)  # type: ignore[arg-type]
    return accounts


def test_index_columns_find_every_key_across_windows_and_no_other() -> None:
    """The search at its real chunk size: every key of 1,000 found at its own location, keys
    before, between and after them not found."""
    keys = [f"k{i:05d}" for i in range(0, 3000, 3)]
    hint = _columns(1, {key: (i % 4, i + 1) for i, key in enumerate(keys)}, [])
    columns = key_columns.KeyColumns.from_hints([hint])
    assert [columns.get(key) for key in keys] == list(hint.locations)
    positions = [columns.position(key) for key in keys]
    assert positions == sorted(set(positions)) and min(positions) >= 0
    assert list(map(columns.location_at, positions)) == list(hint.locations)
    absent = ["", "a", "k", *(f"k{i:05d}" for i in range(1, 3000, 3)), "k99999", "z"]
    assert all(columns.get(key) is None and columns.position(key) == -1 for key in absent)


def test_index_value_order_merge_stops_when_asked_and_finds_stay_right() -> None:
    import threading

    hints = [_columns(n, {f"k{n}-{i}": (i % 4, i + 1) for i in range(50)}, []) for n in (1, 2)]
    columns = key_columns.KeyColumns.from_hints(hints)
    stop = threading.Event()
    stop.set()
    assert not columns.merge_value_order(stop), "stopped before it began"
    assert len(list(columns.candidates(1))) == 26  # 13 of each hint's 50 have hash 1
    assert columns.merge_value_order()
    assert len(list(columns.candidates(1))) == 26


def test_index_fold_counts_utf8_key_bytes_and_value_bytes() -> None:
    fold = HintFold()
    fold.add(_columns(1, {"a": (1, 1), "é": (2, 2)}, []))
    fold.add(_columns(2, {"ü/x": (3, 3)}, ["a"]))
    folded = KeyIndex()
    accounts = _load(fold, folded)
    assert (accounts.entries, accounts.key_bytes, accounts.value_bytes) == (2, 2 + 4, 3 + 3)


@pytest.mark.parametrize("merge", ["inline", "background"])
def test_index_fold_reopens_a_store_of_many_hinted_segments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, merge: str
) -> None:
    """A real store: dozens of sealed segments with overwrites and deletes across them. Its
    value order is merged during the open (small) or by the thread a large store starts."""
    if merge == "background":
        monkeypatch.setattr(value_order, "SMALL_VALUE_ORDER", 0)
    options: dict[str, Any] = {"fsync": "never", "auto_compact": False, "segment_bytes": 4096}
    expected: dict[str, bytes] = {}
    with Store.open(tmp_path, **options) as db:
        for i in range(2500):
            key = f"k{i % 150}"
            if i % 9 == 8:
                db.delete(key)
                expected.pop(key, None)
            else:
                value = b"same" if i % 4 == 0 else str(i).encode()
                db.put(key, value)
                expected[key] = value
        stats = db.stats()
    assert len(list_segment_ids(tmp_path)) > 20
    same = sorted(k for k, v in expected.items() if v == b"same")
    with Store.open(tmp_path, **options) as db:
        merger = db._index._merger  # which way the merge went
        assert (merger is not None) == (merge == "background")
        assert db.find(b"same") == same  # racing the merge, if it is still going
        db._index.wait_for_merge()
        db.check()
        assert {key: db.get(key) for key in db.scan("")} == expected
        assert db.find(b"same") == same
        assert db.stats().live_bytes == stats.live_bytes
        assert db._index._columns.unmerged_entries() == 0


HASH32 = st.integers(0, (1 << 32) - 1)


@settings(max_examples=200, deadline=None)
@given(
    runs=st.lists(
        st.tuples(
            st.lists(st.tuples(HASH32, st.integers(0, 1 << 20)), max_size=30),
            st.integers(0, 1 << 10),
            st.booleans(),
        ),
        max_size=5,
    ),
    small=st.booleans(),
)
def test_index_value_order_merged_by_bucket_equals_one_sort(runs: list[Any], small: bool) -> None:
    """Runs that ascend are merged a bucket at a time (or in one sort when small); a run that
    does not (a hint that lost its order) is caught and the whole sorted at once: the result is
    the plain sort of every (hash, entry) pair either way."""
    from array import array

    packed = []
    expected = []
    for pairs, first, ascending in runs:
        ordered = sorted(pairs) if ascending else pairs
        hashes = array("I", [h for h, _ in ordered])
        positions = array("I", [p for _, p in ordered])
        packed.append((first, hashes, positions))
        expected += [(h, first + p) for h, p in ordered]
    whole = value_order.SMALL_VALUE_ORDER
    value_order.SMALL_VALUE_ORDER = 1 << 16 if small else 0
    try:
        merged = value_order.merge_runs(packed)
    finally:
        value_order.SMALL_VALUE_ORDER = whole
    assert merged is not None
    assert list(zip(*merged, strict=True)) == sorted(expected)


def test_index_hints_after_a_replayed_segment_that_deleted_everything(tmp_path: Path) -> None:
    """Hinted segments, then a replayed one that deletes every key loaded so far, then hinted
    ones again that put a key back: those are applied entry by entry onto the columns (which
    remember the deletes), not loaded as new columns over them."""
    options: dict[str, Any] = {"fsync": "never", "auto_compact": False, "segment_bytes": 4096}
    big = b"F" * 3990  # a record that fits only a segment of its own: the next write rotates
    with Store.open(tmp_path, **options) as db:
        db.put("a", b"1")
        db.put("b", b"2")
        db.put("f1", big)  # segment 2
        for key in ("a", "b", "f1"):
            db.delete(key)  # segment 3: deletes only
        db.put("f2", big)  # segment 4
        db.delete("f2")
        db.put("a", b"back")  # segment 5 with the delete of f2
        db.put("f3", big)  # segment 6, hinted at close
    deletes = decode_hint((tmp_path / "0000000003.hint").read_bytes())
    assert (deletes.keys, sorted(deletes.deleted)) == ([], ["a", "b", "f1"])
    (tmp_path / "0000000003.hint").unlink()  # replayed at the next open
    with Store.open(tmp_path, **options) as db:
        assert {key: db.get(key) for key in db.scan("")} == {"a": b"back", "f3": big}
        assert len(db) == 2
        db.check()


def test_index_folds_while_the_store_runs_and_every_answer_stays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store's own thread folds the overlay's new keys into the columns as writes go on
    (thresholds and chunks made tiny; new keys mostly in ascending order, as times or sequence
    numbers are, some among the older ones, with overwrites and deletes of older ones): gets,
    finds and scans agree with a model, a snapshot taken between folds reads what it saw, and a
    reopen reads the same."""
    monkeypatch.setattr(index_module, "FOLD_MIN_KEYS", 200)
    monkeypatch.setattr(index_module, "FOLD_STEP", 64)
    monkeypatch.setattr(key_chunks, "CHUNK", 4)
    rng = random.Random(7)
    model: dict[str, bytes] = {}
    options: dict[str, Any] = {"fsync": "never", "auto_compact": False}
    with Store.open(tmp_path, **options) as db:
        for round_number in range(8):
            # The writer asks for upkeep every thousand writes: a fold starts at most then.
            for number in range(1000 * round_number, 1000 * (round_number + 1)):
                draw = rng.random()
                if draw < 0.3:
                    key = f"k{rng.randrange(number + 1):05d}"  # an older key again
                elif draw < 0.45:
                    key = f"k{rng.randrange(number + 1):05d}-{number}"  # new, among the older
                else:
                    key = f"k{number:05d}"
                if rng.random() < 0.1:
                    db.delete(key)
                    model.pop(key, None)
                else:
                    model[key] = str(rng.randrange(40)).encode()
                    db.put(key, model[key])
            if round_number == 3:
                snapshot, seen = db.snapshot(), dict(model)
        db._folder.wait_idle()
        with db._lock:  # what the writer's upkeep check does: the last one may have found
            db._folder.maybe_start()  # a fold still running
        db._folder.wait_idle()
        assert db._folder.folds >= 2
        columns = db._index._columns
        assert columns is not None and len(columns) > 2000, "most keys live in the columns"
        assert not db._index.fold_wanted(), "what is left is below the threshold"
        db.check()
        assert {key: db.get(key) for key in db.scan("")} == model
        for value in {*model.values(), b"absent"}:
            assert db.find(value) == sorted(k for k, v in model.items() if v == value)
        with snapshot:
            assert {key: value for key, value, _ in snapshot} == seen
    with Store.open(tmp_path, **options) as db:
        db.check()
        assert {key: db.get(key) for key in db.scan("")} == model


def test_index_value_order_merges_a_folds_runs_and_keeps_the_larger_ones() -> None:
    """After a fold only its own small runs (one per step) are merged into one; a larger run
    beside the merged one stays as it is, and every key is still found by its hash."""
    expected: dict[str, int] = {}

    def located(names: list[str], base: int) -> list[int]:
        locations = [pack(3, base + i, 1, base + i, (base + i) % 4) for i in range(len(names))]
        expected.update(zip(names, locations, strict=True))
        return locations

    first = [f"a{i:02d}" for i in range(20)]
    columns = key_columns.KeyColumns.from_sorted(first, located(first, 0))
    assert columns.merge_value_order()
    for base, names in ((100, [f"b{i:02d}" for i in range(10)]), (200, ["c0", "c1", "c2"])):
        columns.insert(names, located(names, base))
    columns.insert(["d0", "d1"], located(["d0", "d1"], 300))
    assert columns.merge_value_order(tail_up_to=3)
    merged, runs = columns._order
    assert merged is not None and len(merged[0]) == 20
    assert [len(run[1]) for run in runs] == [10, 5], "the two small runs became one"
    for hashed in range(4):
        found = sorted(columns.candidates(hashed))
        assert found == sorted((k, v) for k, v in expected.items() if v & 3 == hashed)
    assert columns.merge_value_order() and columns._order[1] == ()
    columns.check()


def test_index_fold_step_takes_keys_among_and_after_the_held_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """New keys spread among the held ones and new keys after every held one are folded alike,
    the lowest first, a step at a time, splitting the chunks they fill; a fold is wanted only
    once they are a FOLD_SHARE-th of the held keys (an eighth here). Every answer stays."""
    monkeypatch.setattr(index_module, "FOLD_MIN_KEYS", 1)
    monkeypatch.setattr(index_module, "FOLD_SHARE", 8)
    monkeypatch.setattr(key_chunks, "CHUNK", 8)
    index, eager = KeyIndex(), KeyIndex()

    def write(keys: list[str], segment: int) -> None:
        for number, key in enumerate(keys):
            for target in (index, eager):
                target.set(key, pack(segment, number, 1, number, number % 4))

    held = [f"k{i:04d}" for i in range(0, 2000, 2)]
    write(held, 1)
    assert index.fold_step(len(held)) == len(held), "no columns yet: all at once"
    among = [f"k{i:04d}" for i in random.Random(3).sample(range(1, 1998, 2), 100)]
    write(among, 2)
    assert not index.fold_wanted(), "100 new keys beside 1,000 held"
    write([f"m{i:04d}" for i in range(50)], 3)  # after every held key
    assert index.fold_wanted()
    assert index.fold_step(60) == 60
    assert index._added[0] == sorted(among)[60], "the lowest first"
    index.check()
    assert index.fold_step(100) == 90 and index.fold_step(100) == 0 and not index._added
    index.check()
    index.settle_value_order()
    assert list(index.items()) == list(eager.items())
    assert all(index.candidates(h) == eager.candidates(h) for h in range(4))
