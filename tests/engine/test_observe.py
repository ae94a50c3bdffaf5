"""``Store.observe``: the callbacks the service's metrics use to watch fsyncs and compactions."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from filekv.engine import Store, StoreOptions

# Compaction may keep recent history for watchers (``watch_history``); these tests want the
# dead bytes merged away now, so they keep none where the option exists.
NO_HISTORY = (
    {"watch_history": 0}
    if "watch_history" in {f.name for f in dataclasses.fields(StoreOptions)}
    else {}
)


def _compactable(**fields: object) -> StoreOptions:
    return StoreOptions(auto_compact=False, **NO_HISTORY, **fields)  # type: ignore[arg-type]


def test_observe_fsync_rounds_report_time_and_records(tmp_path: Path) -> None:
    rounds: list[tuple[float, int]] = []
    with Store.open(tmp_path, fsync="always") as db:
        db.observe(fsync=lambda seconds, records: rounds.append((seconds, records)))
        for i in range(3):
            db.put(f"k{i}", b"v")
    assert len(rounds) >= 3  # one round per lone durable put, maybe one more at close
    assert all(seconds >= 0 for seconds, _ in rounds)
    assert sum(records for _, records in rounds) >= 3
    assert all(records >= 1 for _, records in rounds[:3])


def test_observe_compaction_reports_its_time(tmp_path: Path) -> None:
    seen: list[float] = []
    with Store.open(tmp_path, _compactable(fsync="never")) as db:
        db.observe(compaction=seen.append)
        for i in range(20):
            db.put("k", f"v{i}".encode())
        assert db.compact() is True
        assert db.compact() is False  # already compact: nothing ran, nothing reported
    assert len(seen) == 1 and seen[0] >= 0


def test_observe_a_failing_observer_never_fails_the_write(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(seconds: float, records: int) -> None:
        raise RuntimeError("observer bug")

    with Store.open(tmp_path, _compactable(fsync="always")) as db:
        db.observe(fsync=broken, compaction=lambda seconds: 1 / 0)  # type: ignore[func-returns-value]
        assert db.put("k", b"v") == 1
        db.put("k", b"w")
        assert db.compact() is True
        assert db.get("k") == b"w"
    assert "observer failed" in caplog.text


def test_observe_none_stops_watching(tmp_path: Path) -> None:
    rounds: list[int] = []
    with Store.open(tmp_path, fsync="always") as db:
        db.observe(fsync=lambda seconds, records: rounds.append(records))
        db.put("a", b"1")
        db.observe(fsync=None)
        db.put("b", b"2")
        watched = len(rounds)
    assert watched >= 1
    assert len(rounds) == watched  # nothing after it was unset, the close's round included
