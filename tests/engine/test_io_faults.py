"""I/O faults and power loss, injected through the replaceable FileIO layer (SQLite-style).

For every N, the N-th file-changing operation of a small workload fails (EIO or ENOSPC, with or
without half of the bytes written). The store must surface a StorageError (DiskFull for ENOSPC on
a write), keep serving consistent reads, and never acknowledge a write it did not persist: after
the run, a reopen with the real FileIO shows every acknowledged write, none refused with DiskFull,
and the one operation that hit the fault whole or not at all.

Power loss: the simulated disk cuts the power before the N-th operation; the folder as the power
cut may leave it (per file, unsynced writes dropped, torn at a random byte, a random subset kept,
or all kept; un-fsynced directory changes undone from a random point) must reopen with every write
acknowledged under fsync="always" and no partial transaction.

Both run on ``support.disk.SimDisk``, the one fault-injecting disk of the suites.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import random
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support.disk import PowerLoss, SimDisk
from support.storefiles import contents

from filekv.engine import (
    DiskFull,
    StorageError,
    Store,
    StoreError,
    StoreFailed,
)

State = dict[str, bytes]
Effects = dict[str, bytes | None]

OPTIONS: dict[str, Any] = {"fsync": "always", "segment_bytes": 4096, "auto_compact": False}


@pytest.fixture(autouse=True)
def _quiet_engine_logs(caplog: pytest.LogCaptureFixture) -> None:
    """Hundreds of injected faults log hundreds of errors; a failure report needs none of them."""
    caplog.set_level(logging.CRITICAL, logger="filekv")


# -- the workload ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Op:
    name: str
    run: Callable[[Store], Effects]


def _put(key: str, value: bytes) -> Op:
    def run(db: Store) -> Effects:
        db.put(key, value)
        return {key: value}

    return Op(f"put {key}", run)


def _delete(key: str) -> Op:
    def run(db: Store) -> Effects:
        db.delete(key)
        return {key: None}

    return Op(f"delete {key}", run)


def _transaction(tag: str) -> Op:
    def run(db: Store) -> Effects:
        tx = db.transaction()
        try:
            tx.put(f"tx/{tag}/a", b"A" + tag.encode() * 30)
            tx.begin()
            tx.put(f"tx/{tag}/b", b"B" + tag.encode())
            tx.delete("k1")
            tx.begin()
            tx.put(f"tx/{tag}/rolled-back", b"never")
            tx.rollback()
            tx.commit()
        finally:
            tx.abort()  # a failed commit must not leave the store read-only
        return {
            f"tx/{tag}/a": b"A" + tag.encode() * 30,
            f"tx/{tag}/b": b"B" + tag.encode(),
            "k1": None,
        }

    return Op(f"transaction {tag}", run)


def _compact() -> Op:
    def run(db: Store) -> Effects:
        db.compact()
        return {}

    return Op("compact", run)


def workload() -> list[Op]:
    ops: list[Op] = []
    for i in range(8):
        ops.append(_put(f"k{i % 4}", b"%d" % i * (60 + i * 40)))  # values big enough to rotate
    ops.append(_delete("k2"))
    ops.append(_transaction("1"))
    ops.append(_compact())
    ops.append(_put("k1", b"after compaction"))
    for i in range(5):
        ops.append(_put(f"late{i}", b"L%d" % i * 200))
    ops.append(_transaction("2"))
    ops.append(_delete("late0"))
    ops.append(_compact())
    ops.append(_put("last", b"last"))
    # unique names: they key the effects learned in the counting run
    return [Op(f"#{index} {op.name}", op.run) for index, op in enumerate(ops)]


def _apply(state: State, effects: Effects) -> State:
    new = dict(state)
    for key, value in effects.items():
        if value is None:
            new.pop(key, None)
        else:
            new[key] = value
    return new


_EFFECTS_CACHE: dict[str, Effects] = {}


def _effects_of(op: Op) -> Effects:
    if op.name not in _EFFECTS_CACHE:
        raise KeyError(op.name)
    return _EFFECTS_CACHE[op.name]


def _learn_effects(tmp: Path) -> int:
    """Run the workload once on a healthy disk: learn each op's effects and count the ops."""
    disk = SimDisk(tmp)
    with Store.open(tmp, io=disk, **OPTIONS) as db:
        for op in workload():
            _EFFECTS_CACHE[op.name] = op.run(db)
    shutil.rmtree(tmp)
    return disk.fault_ops


def _states_allowed(acked: State, unknown: Effects | None) -> list[State]:
    return [acked] if unknown is None else [acked, _apply(acked, unknown)]


def _describe(found: State, allowed: list[State]) -> str:
    expected = allowed[0]
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    changed = sorted(k for k in set(found) & set(expected) if found[k] != expected[k])
    return f"missing {missing}, extra {extra}, changed {changed}"


# -- injected errors -------------------------------------------------------------------------------


def _drive(db: Store, disk: SimDisk, error: int) -> tuple[str | None, State, Effects | None]:
    """Run the workload; return (violation or None, acknowledged state, unknown effects)."""
    acked: State = {}
    unknown: Effects | None = (
        None  # effects of the one op that hit the fault with a non-DiskFull error
    )
    failed_store = False
    for op in workload():
        fired_before = len(disk.failed)
        try:
            effects = op.run(db)
        except DiskFull as exc:
            if error != errno.ENOSPC:
                return f"{op.name}: DiskFull for errno {error}: {exc!r}", acked, unknown
            # Nothing was done: retrying once space is back must work.
            try:
                effects = op.run(db)
            except Exception as retry_error:
                return f"{op.name}: retry after DiskFull raised {retry_error!r}", acked, unknown
            acked = _apply(acked, effects)
        except StorageError as exc:
            hit = len(disk.failed) > fired_before
            if hit:
                if (
                    error == errno.ENOSPC
                    and disk.failed[-1] == "write"
                    and not op.name.endswith("compact")
                ):
                    return (
                        f"{op.name}: ENOSPC on write raised {exc!r}, expected DiskFull",
                        acked,
                        unknown,
                    )
                unknown = _effects_of(op)
                failed_store = failed_store or isinstance(exc, StoreFailed)
            elif not isinstance(exc, StoreFailed):
                return (
                    f"{op.name}: after the fault, raised {exc!r} (expected StoreFailed or success)",
                    acked,
                    unknown,
                )
            else:
                failed_store = True
        except StoreError as exc:
            return f"{op.name}: raised {exc!r} under an I/O fault ({disk.failed})", acked, unknown
        except Exception as exc:
            return f"{op.name}: leaked {exc!r} (expected a StorageError)", acked, unknown
        else:
            if failed_store and not op.name.endswith("compact"):
                return (
                    f"{op.name}: succeeded after StoreFailed (writes are refused until reopen)",
                    acked,
                    unknown,
                )
            acked = _apply(acked, effects)
        try:
            found = contents(db)
        except Exception as exc:
            return f"after {op.name}: reads raised {exc!r}", acked, unknown
        allowed = _states_allowed(acked, unknown)
        if found not in allowed:
            return (
                f"after {op.name}: reads inconsistent: {_describe(found, allowed)}",
                acked,
                unknown,
            )
    return None, acked, unknown


def _run_with_fault(folder: Path, fail_at: int, error: int, partial: bool) -> str | None:
    """One run with the ``fail_at``-th operation failing; the violation found, or None."""
    disk = SimDisk(folder, fail_at=fail_at, fail_errno=error, partial_writes=partial)
    acked: State = {}
    unknown: Effects | None = None
    try:
        db = Store.open(folder, io=disk, **OPTIONS)
    except StorageError:
        db = None
    except Exception as exc:
        return f"open raised {exc!r}, not a StorageError"
    if db is not None:
        try:
            problem, acked, unknown = _drive(db, disk, error)
        finally:
            disk.fail_at = None  # the disk is healthy again
            with contextlib.suppress(StoreError):
                db.close()
        if problem:
            return problem
    try:
        again = Store.open(folder, fsync="never", auto_compact=False)
    except Exception as exc:
        return f"reopen with the real FileIO raised {exc!r}"
    try:
        found = contents(again)
        allowed = _states_allowed(acked, unknown)
        if found not in allowed:
            return f"after reopen: {_describe(found, allowed)} (fault in {disk.failed})"
        again.check()
    except Exception as exc:
        return f"after reopen: {exc!r}"
    finally:
        again.close()
    return None


@pytest.mark.parametrize(
    ("error", "partial"),
    [(errno.EIO, False), (errno.EIO, True), (errno.ENOSPC, False), (errno.ENOSPC, True)],
    ids=["EIO", "EIO-half-written", "ENOSPC", "ENOSPC-half-written"],
)
def test_io_fault_at_every_operation(tmp_path: Path, error: int, partial: bool) -> None:
    total = _learn_effects(tmp_path / "count")
    assert total > 20
    failures: dict[int, str] = {}
    for fail_at in range(1, total + 1):
        folder = tmp_path / f"n{fail_at}"
        problem = _run_with_fault(folder, fail_at, error, partial)
        if problem:
            failures[fail_at] = problem
        shutil.rmtree(folder, ignore_errors=True)
    assert not failures, f"{len(failures)} of {total} fault points misbehaved:\n" + "\n".join(
        f"  op #{n}: {why}" for n, why in list(failures.items())[:12]
    )


def test_io_disk_full_refuses_writes_until_space_returns(tmp_path: Path) -> None:
    folder = tmp_path / "db"
    disk = SimDisk(folder, fail_kinds=("write",), fail_errno=errno.ENOSPC, fail_persistent=True)
    db = Store.open(folder, io=disk, **OPTIONS)
    try:
        db.put("a", b"1")
        disk.fail_at = disk.fault_ops + 1  # the disk is full from the next write on
        for attempt in range(3):
            with pytest.raises(DiskFull):
                db.put(f"b{attempt}", b"2" * 100)
            with pytest.raises(DiskFull), db.transaction() as tx:
                tx.put("c", b"3")
            assert contents(db) == {"a": b"1"}
        disk.fail_at = None  # space freed
        db.put("b", b"2")
        assert contents(db) == {"a": b"1", "b": b"2"}
        db.check()
    finally:
        db.close()
    with Store.open(tmp_path / "db", fsync="never") as again:
        assert contents(again) == {"a": b"1", "b": b"2"}
        again.check()


def test_io_fsync_failure_fails_the_store_until_reopen(tmp_path: Path) -> None:
    folder = tmp_path / "db"
    disk = SimDisk(folder, fail_kinds=("fsync",), fail_errno=errno.EIO)
    db = Store.open(folder, io=disk, **OPTIONS)
    try:
        db.put("a", b"1")
        disk.fail_at = disk.fault_ops + 1
        with pytest.raises(StoreFailed):
            db.put("b", b"2")
        with pytest.raises(StoreFailed):
            db.put("c", b"3")
        with pytest.raises(StoreFailed):
            db.delete("a")
        assert db.get("a") == b"1"  # reads go on
        assert db.get("c") is None
    finally:
        disk.fail_at = None
        with contextlib.suppress(StoreError):
            db.close()
    with Store.open(tmp_path / "db", fsync="never") as again:
        found = contents(again)
        assert found in ({"a": b"1"}, {"a": b"1", "b": b"2"})
        again.put("d", b"4")
        again.check()


# -- power loss ------------------------------------------------------------------------------------


def _prepare(folder: Path) -> State:
    """Data written (and closed cleanly) before the power-loss run: it must survive everything."""
    with Store.open(folder, **OPTIONS) as db:
        db.put("k0", b"before" * 20)
        db.put("k1", b"before-1")
        db.put("old", b"old")
        return contents(db)


def _shutdown(db: Store, disk: SimDisk) -> None:
    """Close a store whose power was cut, and any descriptor it could not close itself."""
    with contextlib.suppress(Exception, PowerLoss):
        db.close()
    for fd in list(disk.fds):
        with contextlib.suppress(OSError):
            disk.close(fd)


def _fresh(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    return path


def _power_cut(tmp_path: Path, crash_at: int | None, seed: int) -> str | None:
    folder = _fresh(tmp_path / "live")
    acked = _prepare(folder)
    disk = SimDisk(folder, crash_at=crash_at)  # the prepared files count as durable
    in_flight: Effects | None = None
    try:
        db = Store.open(folder, io=disk, **OPTIONS)
    except (StorageError, PowerLoss):
        db = None
    except Exception as exc:
        return f"open raised {exc!r}"
    if db is not None:
        for op in workload():
            try:
                effects = op.run(db)
            except (Exception, PowerLoss) as exc:
                if not disk.crashed:
                    return f"{op.name} failed before the power cut: {exc!r}"
                # The machine is dead from here on; how the error surfaced is test_io_fault's job.
                in_flight = _effects_of(op)
                break
            acked = _apply(acked, effects)  # acknowledged: it must be on stable storage now
    after = _fresh(tmp_path / "after")
    image = disk.image(after, random.Random(seed))
    if db is not None:
        _shutdown(db, disk)
    try:
        again = Store.open(after, fsync="never", auto_compact=False)
    except Exception as exc:
        return f"reopen after the power cut raised {exc!r}"
    try:
        found = contents(again)
        allowed = _states_allowed(acked, in_flight)
        if found not in allowed:
            return f"{_describe(found, allowed)}; image {image}"
        again.check()
        again.put("after-power-cut", b"ok")
    except Exception as exc:
        return f"after reopen: {exc!r}"
    finally:
        again.close()
    return None


def test_io_power_loss_at_every_operation(tmp_path: Path) -> None:
    _learn_effects(tmp_path / "count")
    folder = tmp_path / "probe"
    _prepare(folder)
    probe = SimDisk(folder)
    with Store.open(folder, io=probe, **OPTIONS) as db:
        for op in workload():
            op.run(db)
    total = probe.ops
    shutil.rmtree(folder)
    assert total > 20
    failures: dict[int, str] = {}
    for crash_at in [*range(1, total + 1), None]:
        for seed in range(2):
            problem = _power_cut(tmp_path, crash_at, seed=(crash_at or 0) * 2 + seed)
            if problem:
                failures[crash_at or 0] = f"(seed {seed}) {problem}"
                break
    assert not failures, f"{len(failures)} of {total} power-cut points lost data:\n" + "\n".join(
        f"  op #{n}: {why}" for n, why in list(failures.items())[:12]
    )


def test_io_power_loss_fresh_store(tmp_path: Path) -> None:
    """A store created and written under fsync="always": the first acknowledged put survives."""
    folder = tmp_path / "fresh"
    disk = SimDisk(folder)
    db = Store.open(folder, io=disk, **OPTIONS)
    db.put("first", b"1")
    disk.image(tmp_path / "after", random.Random(1))
    db.close()
    with Store.open(tmp_path / "after", fsync="never") as again:
        assert contents(again) == {"first": b"1"}


def _threaded_power_cut(tmp_path: Path, crash_at: int | None) -> str | None:
    """Four threads put under fsync="always" (group commit) until the power is cut."""
    folder = _fresh(tmp_path / "threads")
    folder.mkdir()
    disk = SimDisk(folder, crash_at=crash_at)
    try:
        db = Store.open(folder, io=disk, **OPTIONS)
    except (StorageError, PowerLoss):
        return None  # the power went off while it opened: nothing was acknowledged
    acked: dict[str, int] = {}  # key -> newest acknowledged sequence number
    attempted: dict[str, int] = {}
    lock = threading.Lock()
    start = threading.Barrier(4)

    def writer(thread: int) -> None:
        start.wait()
        for n in range(1, 16):
            key = f"t{thread}/k{n % 3}"
            with lock:
                attempted[key] = n
            try:
                db.put(key, f"{thread}:{n}".encode() * 20)
            except (Exception, PowerLoss):
                return  # the power is off (PowerLoss, or StoreFailed made of it)
            with lock:
                acked[key] = n

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    after = _fresh(tmp_path / "threads-after")
    disk.image(after, random.Random(crash_at or 0))
    _shutdown(db, disk)
    with Store.open(after, fsync="never", auto_compact=False) as again:
        for key, n in acked.items():
            raw = again.get(key)
            if raw is None:
                return f"acknowledged {key}={n} is gone"
            unit = raw.decode()[: len(raw) // 20]  # the value is "<thread>:<n>" 20 times
            if raw != unit.encode() * 20 or not unit.startswith(key[1:].split("/")[0] + ":"):
                return f"{key}: damaged value {raw[:40]!r}"
            value_n = int(unit.split(":")[1])
            if value_n < n:
                return f"{key}: found write {value_n}, acknowledged {n}"
            if value_n > attempted[key]:
                return f"{key}: found write {value_n} never attempted"
        again.check()
    return None


def test_io_power_loss_with_concurrent_writers(tmp_path: Path) -> None:
    """Group commit must acknowledge a put only once an fsync that covers its record is done."""
    failures: dict[int, str] = {}
    for crash_at in [*range(1, 90, 3), None]:
        problem = _threaded_power_cut(tmp_path, crash_at)
        if problem:
            failures[crash_at or 0] = problem
    assert not failures, failures
