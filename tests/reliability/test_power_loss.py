"""Power loss, simulated below the engine (issue 4, item 2).

A SIGKILL keeps the page cache, so it cannot show that fsync is done right. Here the engine runs
on ``SimDisk`` (``support/disk.py``), which knows what each fsync and directory fsync made durable.
A seeded workload (puts, deletes, compare-and-set, nested transactions with begin / rollback /
commit / abort, ``compact()`` with 4 KiB segments so rotation happens, reopenings) is replayed and
the power is cut before its K-th I/O operation, for every K. Each cut gives disk images (per file:
unsynced writes dropped, torn at a random byte, a random subset kept, or all kept; un-fsynced
directory operations undone from a random point on), each reopened with the real ``FileIO``.

Every image must hold exactly the acknowledged state (with its revisions), or that state plus the
one step the cut interrupted, whole: never part of a transaction, never a rolled-back write.
``make test`` runs 12 seeds (4 with directory operations unordered); ``FILEKV_SOAK=1`` 300 (10).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from support import SOAK
from support.disk import scratch
from support.power_loss import (
    Tally,
    concurrent_crash_and_check,
    count_operations,
    crash_and_check,
)

SEEDS = range(1000, 1300 if SOAK else 1012)
STEPS = 40


@pytest.fixture(autouse=True)
def _quiet_recovery_logs() -> Iterator[None]:
    # Thousands of recoveries each log "cut a damaged tail": correct, and noise here.
    logging.disable(logging.WARNING)
    yield
    logging.disable(logging.NOTSET)


def _report(name: str, tally: Tally) -> None:
    print(
        f"\n{name}: crash points {tally.crash_points}, disk images {tally.images}, "
        f"acknowledged writes checked {tally.operations_checked}, interrupted step found "
        f"applied {tally.in_flight_applied} / dropped {tally.in_flight_dropped}, "
        f"violations {len(tally.violations)}"
    )
    for violation in tally.violations[:5]:
        print("  " + violation)


def test_power_loss_every_crash_point_keeps_acknowledged_writes() -> None:
    tally = Tally()
    with scratch() as root:
        for seed in SEEDS:
            total = count_operations(seed, STEPS, root)
            for crash_at in range(1, total + 1):
                crash_and_check(seed, STEPS, crash_at, root, tally, reopen_check=crash_at % 10 == 0)
    _report("power loss (sequential workload)", tally)
    assert tally.crash_points >= (1200 if not SOAK else 30000)
    assert tally.violations == []


def test_power_loss_during_group_commit_without_reordering() -> None:
    # Threads share fsyncs, so several appends are unsynced at once; dropped, torn or all kept.
    tally = Tally()
    with scratch() as root:
        for seed in range(3000 if SOAK else 300):
            concurrent_crash_and_check(seed, root, tally, modes=("drop", "all", "tear"))
    _report("power loss (concurrent writers, in-order persistence)", tally)
    assert tally.crash_points > 0
    assert tally.violations == []


def test_power_loss_during_group_commit_with_reordered_writeback() -> None:
    tally = Tally()
    with scratch() as root:
        for seed in range(300):
            concurrent_crash_and_check(seed, root, tally, modes=("subset",))
    _report("power loss (concurrent writers, reordered writeback)", tally)
    assert tally.violations == []


def test_power_loss_with_unordered_directory_operations() -> None:
    tally = Tally()
    with scratch() as root:
        for seed in SEEDS[: 10 if SOAK else 4]:
            total = count_operations(seed, STEPS, root)
            for crash_at in range(1, total + 1):
                crash_and_check(seed, STEPS, crash_at, root, tally, ordered_metadata=False)
    _report("power loss (directory operations persisted in any order)", tally)
    assert tally.violations == []
