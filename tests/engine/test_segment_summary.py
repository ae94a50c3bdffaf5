"""A sealed segment's hint comes from the summary its writer kept, not from reading it back.

Whatever the writes (puts, deletes, batches, transaction commits, a reopen that resumes the newest
segment mid-way), every hint file written from a ``SegmentSummary`` must equal, field for field,
the hint rebuilt by reading that segment's records (``summarize_segment``, the path a segment
read back from disk still takes).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from filekv.engine import Delete, Put, Store
from filekv.engine.fileio import FileIO
from filekv.engine.hint import decode_hint
from filekv.engine.segment import hint_name, list_segment_ids, segment_name
from filekv.engine.segment_hints import summarize_segment

SMALL: dict[str, Any] = {
    "fsync": "never",
    "auto_compact": False,
    "segment_bytes": 4096,
    "max_value_bytes": 400,
}

keys = st.sampled_from([f"k{i}" for i in range(12)] + ["é/ü", "a b%2F"])
values = st.binary(min_size=0, max_size=300)
step = st.one_of(
    st.tuples(st.just("put"), keys, values),
    st.tuples(st.just("delete"), keys),
    st.tuples(
        st.just("batch"),
        st.lists(st.one_of(st.tuples(keys, values), st.tuples(keys)), min_size=1, max_size=8),
    ),
    st.tuples(
        st.just("commit"),
        st.lists(st.one_of(st.tuples(keys, values), st.tuples(keys)), min_size=1, max_size=8),
    ),
    st.tuples(st.just("reopen")),
)


def _apply(db: Store, action: tuple[Any, ...]) -> None:
    kind = action[0]
    if kind == "put":
        db.put(action[1], action[2])
    elif kind == "delete":
        db.delete(action[1])
    elif kind == "batch":
        db.batch([Put(op[0], op[1]) if len(op) == 2 else Delete(op[0]) for op in action[1]])
    else:
        with db.transaction() as tx:
            for op in action[1]:
                if len(op) == 2:
                    tx.put(op[0], op[1])
                else:
                    tx.delete(op[0])


def _hints_match_segments(path: Path) -> int:
    """Compare every hint file with its segment's records; return how many were compared."""
    io = FileIO()
    compared = 0
    for segment_id in list_segment_ids(path):
        hint_path = path / hint_name(segment_id)
        if not hint_path.exists():
            continue
        written = decode_hint(hint_path.read_bytes())
        rebuilt = summarize_segment(io, path / segment_name(segment_id), segment_id)
        assert written.keys == rebuilt.keys, segment_id
        assert list(written.locations) == list(rebuilt.locations), segment_id
        assert written.deleted == rebuilt.deleted, segment_id
        assert written.max_revision == rebuilt.max_revision, segment_id
        assert written.segment_length == rebuilt.segment_length, segment_id
        compared += 1
    return compared


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(actions=st.lists(step, min_size=1, max_size=60))
def test_summary_hint_equals_the_hint_read_back(tmp_path_factory: Any, actions: list[Any]) -> None:
    path = tmp_path_factory.mktemp("store")
    db = Store.open(path, **SMALL)
    try:
        for action in actions:
            if action[0] == "reopen":
                db.close()
                db = Store.open(path, **SMALL)
            else:
                _apply(db, action)
        db._segments.wait_for_hints()
        db.check()
    finally:
        db.close()
    _hints_match_segments(path)


def test_summary_hints_cover_many_segments(tmp_path: Path) -> None:
    """A longer fixed history: dozens of sealed segments, each hinted from its summary."""
    db = Store.open(tmp_path, **SMALL)
    for i in range(3000):
        key = f"k{i % 97}"
        if i % 11 == 10:
            db.delete(key)
        elif i % 7 == 6:
            db.batch([Put(f"b{i % 13}", b"x" * (i % 50)), Delete(f"k{(i + 3) % 97}")])
        else:
            db.put(key, str(i).encode() * (i % 20))
        if i == 1500:
            db.close()
            db = Store.open(tmp_path, **SMALL)
    db.close()  # finishes the queued hints
    assert _hints_match_segments(tmp_path) >= 20


def test_summary_is_dropped_once_the_hint_is_written(tmp_path: Path) -> None:
    """Only the active segment keeps its summary in memory."""
    db = Store.open(tmp_path, **SMALL)
    try:
        for i in range(400):
            db.put(f"k{i}", b"v" * 40)
        db._segments.wait_for_hints()
        active = db._segments.active
        kept = [s.segment_id for s in db._segments.all() if s.summary is not None]
        assert active is not None and kept == [active.segment_id]
    finally:
        db.close()
