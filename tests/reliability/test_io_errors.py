"""I/O errors, SQLite-style (issue 4, item 2).

A seeded workload (puts, deletes, compare-and-set, nested transactions, compaction with 4 KiB
segments, reopenings) runs on ``SimDisk``; its N-th mutating I/O operation (open for create,
write, fsync, truncate, rename, unlink, directory fsync) fails with EIO or ENOSPC, for every N —
once, or from then on (a dead or full disk), failing writes sometimes writing half their bytes
first. After each fault the store must report a ``StorageError`` (``DiskFull`` for ENOSPC on a
write) and keep serving exactly the acknowledged state, or refuse every further write with
``StoreFailed``. Then the directory is reopened with the real ``FileIO`` as written and cut to
what was fsynced (an fsync that failed made nothing durable, as on Linux): both must hold every
acknowledged write, with its revision, and nothing else but possibly the step that failed.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import SOAK
from support.disk import SimDisk, scratch
from support.io_faults import FaultTally, count_fault_points, fault_run
from support.workload import OPTIONS

from filekv.engine import StorageError, Store

SEEDS = range(2000, 2160 if SOAK else 2008)
STEPS = 30


@pytest.fixture(autouse=True)
def _quiet_engine_logs() -> Iterator[None]:
    # Every injected fault is logged by the engine as an error: correct, and noise here.
    logging.disable(logging.CRITICAL)
    yield
    logging.disable(logging.NOTSET)


def test_io_errors_at_every_operation_never_acknowledge_unpersisted_writes() -> None:
    tally = FaultTally()
    points = 0
    with scratch() as root:
        for seed in SEEDS:
            total = count_fault_points(seed, STEPS, root)
            points += total
            for fail_at in range(1, total + 1):
                odd = fail_at % 2 == 1
                # Alternate so every N sees EIO and ENOSPC, once and from then on.
                fault_run(seed, STEPS, fail_at, errno.EIO if odd else errno.ENOSPC, root, tally)
                fault_run(
                    seed,
                    STEPS,
                    fail_at,
                    errno.ENOSPC if odd else errno.EIO,
                    root,
                    tally,
                    persistent=True,
                    partial=odd,
                )
    print(
        f"\nI/O errors: fault points {points}, runs {tally.runs}, faults injected "
        f"{tally.faults_injected}, errors reported {tally.reported}, runs ended by StoreFailed "
        f"{tally.store_failed_runs}, acknowledged writes checked {tally.operations_checked}, "
        f"violations {len(tally.violations)} (raw OSError from close(): "
        f"{len(tally.raw_from_close)})"
    )
    for violation in tally.violations[:5]:
        print("  " + violation)
    assert tally.runs >= 1000
    assert tally.reported.get("DiskFull", 0) > 0 and tally.reported.get("StoreFailed", 0) > 0
    assert tally.violations == []


@pytest.mark.parametrize("error_number", [errno.EIO, errno.ENOSPC])
def test_io_error_on_write_is_reported_and_the_store_goes_on(
    tmp_path: Path, error_number: int
) -> None:
    # The plain case, spelled out: a failed append (write 3: after the segment header and "a")
    # is cut back off and the next write works.
    disk = SimDisk(tmp_path, fail_kinds=("write",), fail_at=3, fail_errno=error_number)
    with Store.open(tmp_path, io=disk, **OPTIONS) as db:  # type: ignore[arg-type]
        db.put("a", b"1")
        with pytest.raises(StorageError) as raised:
            db.put("b", b"2")
        assert (type(raised.value).__name__ == "DiskFull") == (error_number == errno.ENOSPC)
        assert db.get("b") is None and db.get("a") == b"1"
        db.put("c", b"3")
    with Store.open(tmp_path, **OPTIONS) as db:  # type: ignore[arg-type]
        assert {key: db.get(key) for key in db.scan()} == {"a": b"1", "c": b"3"}


@pytest.mark.parametrize("error_number", [errno.EIO, errno.ENOSPC])
def test_io_error_in_close_is_a_storage_error(tmp_path: Path, error_number: int) -> None:
    # Operations with fsync counted: creating the first segment (1), the put (2), close (3).
    disk = SimDisk(tmp_path, fail_kinds=("fsync",), fail_at=3, fail_errno=error_number)
    db = Store.open(tmp_path, io=disk, **OPTIONS)  # type: ignore[arg-type]
    db.put("a", b"1")
    with pytest.raises(StorageError):
        db.close()
