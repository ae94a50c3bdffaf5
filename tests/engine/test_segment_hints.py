"""Hint files of plain sealed segments (segment_hints.py): written after sealing, trusted whole.

Each test builds a store of several small sealed segments with puts and deletes, waits for the
background hints, and then leaves the directory as a crash at each step of writing one hint would
(no hint, a torn or complete ``.hint.tmp``, a torn or damaged ``.hint``, a hint of another segment):
reopening must give exactly the model's contents, and replay every segment whose hint is not whole.
"""

from __future__ import annotations

import errno
import os
import random
import zlib
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from support.disk import SimDisk
from support.engine_fixtures import OpenStore
from support.storefiles import contents, copy_store, flip_byte, hints, segments, truncate

from filekv.engine import Store, key_columns, recovery
from filekv.engine.fileio import FileIO
from filekv.engine.hint import (
    HINT_HEADER,
    HINT_HEADER_V3,
    HINT_HEADER_V4,
    decode_hint,
    encode_hint,
)
from filekv.engine.segment_hints import summarize_segment

SMALL: dict[str, Any] = {"segment_bytes": 4096, "max_value_bytes": 512, "max_key_bytes": 64}


def _build(open_store: OpenStore, path: Path) -> dict[str, bytes]:
    """A closed store of several sealed plain segments, each with its hint; return its contents."""
    db = open_store(path, **SMALL)
    model: dict[str, bytes] = {}
    _churn(db, model, 400, seed=9, keys=60, delete_every=5, longest=200)
    db._segments.wait_for_hints()
    assert contents(db) == model
    db.close()
    return model


def _churn(
    db: Store,
    model: dict[str, bytes],
    steps: int,
    *,
    seed: int,
    keys: int = 500,
    delete_every: int = 7,
    longest: int = 400,
) -> None:
    """Puts of random values to ``keys`` keys, every ``delete_every``-th step a delete of one
    that is there instead; ``model`` follows."""
    rng = random.Random(seed)
    for step in range(steps):
        key = f"k{rng.randrange(keys):03d}"
        if step % delete_every == delete_every - 1 and key in model:
            db.delete(key)
            del model[key]
        else:
            value = rng.randbytes(rng.randrange(1, longest))
            db.put(key, value)
            model[key] = value


def _replays(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """(segment id, offset) where each replay of recovery starts from now on."""
    starts: list[tuple[int, int]] = []
    real = recovery._replay

    def counting(segments: Any, index: Any, segment: Any, **kwargs: Any) -> int:
        starts.append((segment.segment_id, kwargs.get("start", 0)))
        return real(segments, index, segment, **kwargs)

    monkeypatch.setattr(recovery, "_replay", counting)
    return starts


def _ids(replays: list[tuple[int, int]]) -> list[int]:
    return [segment_id for segment_id, _ in replays]


def _sealed_ids(path: Path) -> list[int]:
    return [int(p.name.split(".")[0]) for p in segments(path)][:-1]


def test_segment_hints_every_segment_gets_one_and_reopen_replays_only_a_crashed_tail(
    open_store: OpenStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every sealed segment gets its hint in the background, and a clean close writes the
    newest one's: a reopen after a close replays nothing; after a crash only the newest."""
    path = tmp_path / "db"
    model = _build(open_store, path)
    sealed = _sealed_ids(path)
    newest = int(segments(path)[-1].name.split(".")[0])
    assert len(sealed) >= 5
    assert [int(p.name.split(".")[0]) for p in hints(path)] == [*sealed, newest]
    deleted = sum(len(decode_hint(p.read_bytes()).deleted) for p in hints(path))
    assert deleted > 0, "the workload must leave deletes in sealed segments"
    replayed = _replays(monkeypatch)
    db = open_store(path, **SMALL)
    assert contents(db) == model
    assert _ids(replayed) == []
    db.put("after-reopen", b"appended to the newest segment: its hint is stale now")
    model["after-reopen"] = b"appended to the newest segment: its hint is stale now"
    db.sync()
    os.unlink(path / "LOCK")  # a SIGKILL here: no close, so the newest hint is the old one
    db2 = open_store(copy_store(path, tmp_path / "crashed"), **SMALL)
    assert contents(db2) == model
    assert _ids(replayed) == [newest]


def test_segment_hints_summary_matches_replay_of_the_same_segment(
    open_store: OpenStore, tmp_path: Path
) -> None:
    path = tmp_path / "db"
    _build(open_store, path)
    for hint_file in hints(path):
        segment_id = int(hint_file.name.split(".")[0])
        segment = path / hint_file.name.replace(".hint", ".seg")
        on_disk = decode_hint(hint_file.read_bytes())
        fresh = summarize_segment(FileIO(), segment, segment_id)
        assert (on_disk.keys, list(on_disk.locations), on_disk.deleted) == (
            fresh.keys,
            list(fresh.locations),
            fresh.deleted,
        )
        assert on_disk.segment_length == os.path.getsize(segment)


def _damage(case: str, path: Path, victim: int, other: int, cut: int) -> None:
    hint = path / f"{victim:010d}.hint"
    data = hint.read_bytes()
    if case == "no hint yet":
        hint.unlink()
    elif case == "torn temp file":
        hint.unlink()
        (path / f"{victim:010d}.hint.tmp").write_bytes(data[: cut % len(data)])
    elif case == "whole temp file, not renamed":
        hint.rename(path / f"{victim:010d}.hint.tmp")
    elif case == "torn hint":
        truncate(hint, cut % len(data))
    elif case == "flipped byte":
        flip_byte(hint, cut % len(data))
    elif case == "hint of another segment":
        (path / f"{other:010d}.hint").replace(hint)
    elif case == "segment longer than its hint":
        with open(path / f"{victim:010d}.seg", "ab") as handle:
            handle.write(b"\0" * 7)  # a sealed segment never grows: the hint must not be used
    else:
        raise AssertionError(case)


CASES = [
    "no hint yet",
    "torn temp file",
    "whole temp file, not renamed",
    "torn hint",
    "flipped byte",
    "hint of another segment",
]


@pytest.mark.parametrize("case", CASES)
def test_segment_hints_a_crash_at_any_step_loses_nothing_and_a_bad_hint_is_not_trusted(
    open_store: OpenStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    source = tmp_path / "built"
    model = _build(open_store, source)
    sealed = _sealed_ids(source)
    size = (source / f"{sealed[1]:010d}.hint").stat().st_size
    cuts = [0, 1, HINT_HEADER.size - 1, HINT_HEADER.size + 5, size // 2, size - 5, size - 1]
    for trial, cut in enumerate(
        cuts if case in ("torn temp file", "torn hint", "flipped byte") else [0]
    ):
        path = copy_store(source, tmp_path / f"copy{trial}")
        victim, other = sealed[1], sealed[2]
        _damage(case, path, victim, other, cut)
        replayed = _replays(monkeypatch)
        db = open_store(path, **SMALL)
        assert contents(db) == model, (case, cut)
        assert victim in _ids(replayed), f"{case} at {cut}: the damaged hint was trusted"
        db._segments.wait_for_hints()  # the replayed segment gets its hint again
        assert not list(path.glob("*.tmp"))
        db.close()
        assert decode_hint((path / f"{victim:010d}.hint").read_bytes()).segment_id == victim
        monkeypatch.undo()


def test_segment_hints_a_store_without_them_opens_by_replay_and_gains_them(
    open_store: OpenStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The layout of an older version 2 store: plain sealed segments and no hint files."""
    path = tmp_path / "db"
    model = _build(open_store, path)
    for hint in hints(path):
        hint.unlink()
    replayed = _replays(monkeypatch)
    db = open_store(path, **SMALL)
    assert contents(db) == model
    assert _ids(replayed) == [int(p.name.split(".")[0]) for p in segments(path)]
    db._segments.wait_for_hints()
    db.close()  # the newest segment gets its hint at close
    assert [int(p.name.split(".")[0]) for p in hints(path)] == [
        int(p.name.split(".")[0]) for p in segments(path)
    ]


def _as_version(data: bytes, version: int) -> bytes:
    """A version 5 hint rewritten as ``version`` (2 or 4) wrote it: value groups where the value
    order is (every entry a single, as a store without shared values had them), and for version
    2 no header extensions (so no deleted or expiring keys)."""
    hint = decode_hint(data)
    fields = list(HINT_HEADER.unpack_from(data, 0))
    count = fields[3]
    fields[1], fields[8], fields[9] = version, count, 0  # version, singles = every entry, groups
    extensions = HINT_HEADER_V3.size + HINT_HEADER_V4.size
    keys_end = HINT_HEADER.size + extensions + fields[6]
    order_at = keys_end + 22 * count
    body = (
        data[HINT_HEADER.size : order_at] if version >= 3 else data[keys_end - fields[6] : order_at]
    )
    if version == 2:
        assert not hint.deleted and not hint.expiries
    groups = b"".join(i.to_bytes(4, "little") for i in range(count))
    old = HINT_HEADER.pack(*fields) + body + groups + data[order_at + 8 * count : -4]
    return old + zlib.crc32(old).to_bytes(4, "little")


def test_segment_hints_a_version_2_compaction_hint_still_loads(
    open_store: OpenStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "db"
    model = _build(open_store, path)
    db = open_store(path, **SMALL)
    db.compact()
    db.close()
    # Small segments: compaction writes several merged outputs, each with its hint.
    merged = [h for h in hints(path) if decode_hint(h.read_bytes()).segment_length == 0]
    assert len(merged) > 1
    for hint in merged:
        hint.write_bytes(_as_version(hint.read_bytes(), 2))
    assert sorted(key for h in merged for key in decode_hint(h.read_bytes()).keys) == sorted(model)
    replayed = _replays(monkeypatch)
    db = open_store(path, **SMALL)
    assert contents(db) == model
    assert not {int(hint.name.split(".")[0]) for hint in merged} & set(_ids(replayed))


def test_segment_hints_version_4_hints_still_load_and_find(
    open_store: OpenStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store written before the value order (hint version 4: value groups) opens from its hints
    (the value order is sorted at open), finds by value, and compaction writes version 5."""
    path = tmp_path / "db"
    model = _build(open_store, path)
    db = open_store(path, **SMALL)
    db.put("same-1", b"shared")
    db.put("same-2", b"shared")
    db.close()
    model.update({"same-1": b"shared", "same-2": b"shared"})
    for hint in hints(path):
        hint.write_bytes(_as_version(hint.read_bytes(), 4))
        assert HINT_HEADER.unpack_from(hint.read_bytes(), 0)[1] == 4
    replayed = _replays(monkeypatch)
    db = open_store(path, **SMALL)
    try:
        assert _ids(replayed) == [], "every version 4 hint is loaded, none replayed"
        assert contents(db) == model
        for value in [*list(model.values())[:20], b"shared"]:
            assert db.find(value) == sorted(k for k, v in model.items() if v == value)
        db.check()
        db.compact()
    finally:
        db.close()
    assert {HINT_HEADER.unpack_from(h.read_bytes(), 0)[1] for h in hints(path)} == {5}


def test_segment_hints_encode_decode_round_trip_with_deleted_keys() -> None:
    from filekv.engine.hint import HintColumns, pack

    columns = HintColumns(
        7,
        99,
        1,
        ["a", "b"],
        [pack(7, 50, 3, 9, 1), pack(7, 80, 4, 10, 1)],
        deleted=["c", "é"],
        segment_length=4096,
    )
    decoded = decode_hint(encode_hint(columns))
    assert (decoded.keys, list(decoded.locations), decoded.deleted, decoded.segment_length) == (
        ["a", "b"],
        list(columns.locations),
        ["c", "é"],
        4096,
    )


@pytest.mark.parametrize("fail_at", range(1, 6))
def test_segment_hints_an_io_error_while_writing_one_leaves_no_file_and_writes_go_on(
    tmp_path: Path, fail_at: int
) -> None:
    """Fail the hint writer's N-th disk-changing step (open, write, fsync, rename, fsync_dir)."""
    path = tmp_path / "db"
    db = Store.open(path, fsync="never", auto_compact=False, **SMALL)
    db.put("x", b"1" * 300)
    db._segments.wait_for_hints()
    faulty = SimDisk(path, fail_at=fail_at, fail_errno=errno.EIO)
    db._segments._hints._io = faulty  # only the hint writer sees the faults
    for i in range(40):
        db.put(f"k{i}", b"v" * 300)
    db._segments.wait_for_hints()
    assert faulty.failed, "the fault must hit the hint writer"
    assert not list(path.glob("*.tmp"))
    db.put("after", b"ok")
    db.close()
    db = Store.open(path, fsync="never", auto_compact=False, **SMALL)
    try:
        assert db.get("after") == b"ok"
        assert db.get("k39") == b"v" * 300
        assert db.get("x") == b"1" * 300
        db.check()
    finally:
        db.close()


def test_segment_hints_a_hint_finished_after_compaction_retired_its_segment_is_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hint writer builds a sealed segment's hint from memory, so it may finish after
    compaction deleted that segment: the hint it renamed in then must not stay behind (a flaky
    CI failure found it: a second hint file where a test expected one)."""
    import threading

    import filekv.engine.segment_hints as segment_hints

    real = segment_hints.write_segment_hint
    started, release = threading.Event(), threading.Event()

    def held(*args: Any) -> int:
        started.set()
        release.wait(10)
        return real(*args)

    monkeypatch.setattr(segment_hints, "write_segment_hint", held)
    path = tmp_path / "db"
    db = Store.open(path, fsync="never", auto_compact=False, watch_history=0, **SMALL)
    try:
        i = 0
        while not started.is_set():  # until a segment is sealed and its hint held
            db.put(f"k{i % 7}", b"v" * 300)
            i += 1
        assert started.wait(10)
        db.compact()  # merges the held segment and deletes it, before its hint exists
        release.set()
        db._segments.wait_for_hints()
        segment_ids = {int(p.stem) for p in path.glob("*.seg")}
        hint_ids = {int(p.stem) for p in path.glob("*.hint")}
        assert hint_ids <= segment_ids, f"hints of deleted segments: {hint_ids - segment_ids}"
        assert {key: db.get(key) for key in db.scan("")} == {f"k{j}": b"v" * 300 for j in range(7)}
    finally:
        release.set()
        db.close()


# The active segment's hint (``ActivePrefix``): rewritten every ``active_hint_bytes`` it grows.
GROWING: dict[str, Any] = {
    "segment_bytes": 1 << 20,
    "active_hint_bytes": 16 << 10,
    "max_value_bytes": 512,
    "max_key_bytes": 64,
    "fsync": "never",
    "auto_compact": False,
}


def test_segment_hints_the_active_segment_is_hinted_as_it_grows_and_a_crash_replays_the_rest(
    open_store: OpenStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "db"
    db = open_store(path, **GROWING)
    model: dict[str, bytes] = {}
    _churn(db, model, 3000, seed=5)
    db._segments.wait_for_hints()
    [segment] = segments(path)
    hint = decode_hint(segment.with_suffix(".hint").read_bytes())
    size = segment.stat().st_size
    assert size > 8 * GROWING["active_hint_bytes"], "the workload must grow one segment a lot"
    # The newest hint is at most one interval (and the record that crossed it) behind.
    assert 0 < size - hint.segment_length <= GROWING["active_hint_bytes"] + 512
    starts = _replays(monkeypatch)
    os.unlink(path / "LOCK")  # a SIGKILL here: no close
    crashed = open_store(copy_store(path, tmp_path / "crashed"), **GROWING)
    assert contents(crashed) == model
    assert starts == [(int(segment.stem), hint.segment_length)], "only what follows the hint"
    crashed.check()
    # The summary it goes on with holds both parts: a close writes the hint of all of it.
    _churn(crashed, model, 500, seed=6)
    crashed.close()
    whole = decode_hint((tmp_path / "crashed" / segment.with_suffix(".hint").name).read_bytes())
    assert whole.segment_length == (tmp_path / "crashed" / segment.name).stat().st_size
    starts.clear()
    reopened = open_store(tmp_path / "crashed", **GROWING)
    assert contents(reopened) == model and starts == []


def test_segment_hints_an_active_hint_that_ends_inside_a_record_is_not_trusted(
    open_store: OpenStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checksummed hint whose length does not end at a record (none is ever written) must not
    steer the replay into a record's middle, where it would cut the rest off as a torn tail."""
    path = tmp_path / "db"
    db = open_store(path, **GROWING)
    model: dict[str, bytes] = {}
    _churn(db, model, 1000, seed=7)
    db._segments.wait_for_hints()
    os.unlink(path / "LOCK")
    crashed = copy_store(path, tmp_path / "crashed")
    [segment] = segments(crashed)
    hint_path = segment.with_suffix(".hint")
    hint = decode_hint(hint_path.read_bytes())
    assert hint.segment_length < segment.stat().st_size
    hint_path.write_bytes(encode_hint(replace(hint, segment_length=hint.segment_length + 1)))
    starts = _replays(monkeypatch)
    assert contents(open_store(crashed, **GROWING)) == model
    assert starts == [(int(segment.stem), 0)], "replayed whole"


def test_segment_hints_a_last_hint_that_overlaps_is_applied_on_top_not_sorted_in(
    open_store: OpenStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keys written in key order fill segments whose hints do not overlap; a few keys written
    again then go to the newest segment, whose hint overlaps them. The open loads the others
    end to end and applies that one entry by entry (``hint_fold.py``), with the same result."""
    path = tmp_path / "db"
    db = open_store(path, **SMALL)
    model: dict[str, bytes] = {}
    for i in range(400):
        model[f"k{i:04d}"] = f"first {i}".encode()
        db.put(f"k{i:04d}", model[f"k{i:04d}"])
    db._segments.wait_for_hints()
    for i in range(0, 400, 40):
        model[f"k{i:04d}"] = b"again"
        db.put(f"k{i:04d}", b"again")
    db.delete("k0001")
    del model["k0001"]
    db.close()
    loaded: list[int] = []
    real = key_columns.KeyColumns.from_hints

    def spying(hints: Any) -> Any:
        loaded.append(len(hints))
        return real(hints)

    monkeypatch.setattr(key_columns.KeyColumns, "from_hints", staticmethod(spying))
    reopened = open_store(path, **SMALL)
    assert contents(reopened) == model
    assert loaded == [len(hints(path)) - 1], "all hints but the newest, end to end"
    reopened.check()
    assert reopened.find(b"again") == sorted(k for k, v in model.items() if v == b"again")


@pytest.mark.parametrize("fail_at", range(1, 6))
def test_segment_hints_an_io_error_while_writing_the_active_ones_loses_nothing(
    tmp_path: Path, fail_at: int
) -> None:
    """Fail the N-th disk-changing step of writing the active segment's hint (open, write,
    fsync, rename, fsync_dir; the segment's own fsync is the group commit's): writes go on, no
    temporary file stays, and a crash then still reopens to every write."""
    path = tmp_path / "db"
    db = Store.open(path, **GROWING)
    model: dict[str, bytes] = {}
    _churn(db, model, 10, seed=8)
    faulty = SimDisk(path, fail_at=fail_at, fail_errno=errno.EIO)
    db._segments._hints._io = faulty  # only the hint writer sees the faults
    _churn(db, model, 400, seed=9)
    db._segments.wait_for_hints()
    assert faulty.failed, "the fault must hit the hint writer"
    assert not list(path.glob("*.tmp"))
    _churn(db, model, 100, seed=10)
    db.sync()
    db._segments.wait_for_hints()  # (a hint written while the files are copied: a copy error)
    os.unlink(path / "LOCK")
    crashed = Store.open(copy_store(path, tmp_path / "crashed"), **GROWING)
    try:
        assert contents(crashed) == model
        crashed.check()
    finally:
        crashed.close()
        db.close()


def test_segment_hints_an_active_hint_is_written_only_once_what_it_covers_is_on_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With fsync="never" nothing but the hint writer makes the active segment's bytes durable
    before it is sealed: it fsyncs them before it writes a hint that says they are there. A
    power cut keeps only what was made durable, which holds every byte that hint covers."""
    path = tmp_path / "db"
    disk = SimDisk(path)
    db = Store.open(path, io=disk, **GROWING)  # type: ignore[arg-type]
    try:
        _churn(db, {}, 600, seed=11)
        db._segments.wait_for_hints()
        disk.image(tmp_path / "cut", random.Random(1), only="drop")
    finally:
        db.close()
    [segment] = segments(tmp_path / "cut")
    hint = decode_hint(segment.with_suffix(".hint").read_bytes())
    assert segment.stat().st_size >= hint.segment_length > 4 * GROWING["active_hint_bytes"]
    starts = _replays(monkeypatch)
    with Store.open(tmp_path / "cut", **GROWING) as cut:
        assert starts == [(int(segment.stem), hint.segment_length)]
        cut.check()  # every value the hint points at is there, and checks out
