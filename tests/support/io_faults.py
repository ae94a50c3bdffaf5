"""SQLite-style I/O-error runs: the N-th mutating operation of a workload fails with EIO/ENOSPC.

After each fault the store must either have reported a ``StorageError`` (``DiskFull`` when a
write hit ENOSPC) and go on serving exactly the state it had acknowledged, or refuse every
further write with ``StoreFailed``. At the end the directory is reopened with the real
``FileIO`` twice — as written, and cut to exactly what was fsynced (a power cut right after) —
and must hold the acknowledged state: a write the store acknowledged but did not persist shows.

``reliability/test_io_errors.py`` drives ``fault_run`` over every fault point that
``count_fault_points`` finds; the workload is ``support.workload``'s, the disk
``support.disk.SimDisk``. Findings add up in a ``FaultTally``.
"""

from __future__ import annotations

import contextlib
import errno
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from filekv.engine import DiskFull, StorageError, Store, StoreFailed
from support.disk import SimDisk
from support.workload import OPTIONS, Outcome, Workload, read_all, read_revisions


@dataclass
class FaultTally:
    runs: int = 0
    faults_injected: int = 0
    reported: dict[str, int] = field(default_factory=dict)  # error class -> count
    store_failed_runs: int = 0
    raw_from_close: list[str] = field(default_factory=list)  # see test_io_errors.py's xfail
    operations_checked: int = 0
    violations: list[str] = field(default_factory=list)


def count_fault_points(seed: int, steps: int, root: Path) -> int:
    directory = root / f"fdry-{seed}"
    disk = SimDisk(directory)  # counts every mutating operation, fails none
    stores: list[Store] = []

    def open_store() -> Store:
        stores.append(Store.open(directory, io=disk, **OPTIONS))  # type: ignore[arg-type]
        return stores[-1]

    try:
        Workload(seed, steps=steps).run(open_store)
    finally:
        for store in stores:
            with contextlib.suppress(Exception):
                store.close()
    shutil.rmtree(directory, ignore_errors=True)
    return disk.fault_ops


class _Stop(Exception):
    """The store refused writes (StoreFailed): end the run here and check the disk."""


def fault_run(
    seed: int,
    steps: int,
    fail_at: int,
    error_number: int,
    root: Path,
    tally: FaultTally,
    *,
    persistent: bool = False,
    partial: bool = False,
) -> None:
    directory = root / f"fault-{seed}-{fail_at}-{error_number}-{int(persistent)}-{int(partial)}"
    disk = SimDisk(
        directory,
        fail_at=fail_at,  # of every kind of mutating operation: SimDisk's default
        fail_errno=error_number,
        fail_persistent=persistent,
        partial_writes=partial,
    )
    where = (
        f"seed={seed} fail_at={fail_at} errno={errno.errorcode[error_number]} "
        f"persistent={persistent} partial={partial}"
    )
    workload = Workload(seed, steps=steps)
    model = workload.model
    stores: list[Store] = []

    def open_store() -> Store:
        # A transient fault may hit recovery itself; the operator retries, as the HTTP service
        # would on restart.
        for attempt in range(3):
            try:
                stores.append(Store.open(directory, io=disk, **OPTIONS))  # type: ignore[arg-type]
                return stores[-1]
            except (StorageError, OSError) as error:
                _note(tally, error)
                if not isinstance(error, StorageError):
                    tally.violations.append(f"{where}: Store.open let a raw {error!r} out")
                if attempt == 2:
                    raise _Stop from error
        raise AssertionError("unreachable")

    def on_error(db: Store, outcome: Outcome, error: BaseException) -> bool:
        _note(tally, error)
        kind = disk.failed[-1] if disk.failed else "?"
        here = f"{where} during {outcome.kind} ({kind} failed)"
        if not isinstance(error, StorageError):
            if outcome.kind == "reopen" and db.closed:
                tally.raw_from_close.append(f"{here}: Store.close() raised {error!r}")
            else:
                tally.violations.append(f"{here}: a raw {error!r} reached the caller")
        elif (
            error_number == errno.ENOSPC
            and kind == "write"
            and not isinstance(error, DiskFull | StoreFailed)
        ):
            tally.violations.append(f"{here}: ENOSPC on a write reported as {error!r}")
        if db.closed:
            raise _Stop  # close() itself failed during a reopen step: check the disk now
        view = read_all(db)
        if isinstance(error, StoreFailed):
            if not _refuses_writes(db):
                tally.violations.append(f"{here}: reported StoreFailed but still takes writes")
            if view not in (model.values, outcome.after):
                tally.violations.append(f"{here}: after StoreFailed, reads show {view}")
            tally.store_failed_runs += 1
            raise _Stop
        if view != model.values:
            tally.violations.append(
                f"{here}: the step failed with {error!r} yet reads no longer show the "
                f"acknowledged state (applied: {view == outcome.after})"
            )
            raise _Stop
        return True

    try:
        workload.run(open_store, on_error)
    except _Stop:
        pass
    finally:
        for store in stores:
            with contextlib.suppress(Exception):
                store.close()
    tally.runs += 1
    tally.faults_injected += len(disk.failed)
    interrupted = model.in_flight.after if model.in_flight is not None else None
    for only in ("all", "drop"):
        image = root / f"{directory.name}-{only}"
        disk.image(image, random.Random(0), only=only)
        tally.operations_checked += model.acknowledged
        try:
            with Store.open(image, **OPTIONS) as db:  # type: ignore[arg-type]
                recovered = read_all(db)
                db.check()
                if recovered == model.values:
                    if read_revisions(db) != model.revisions:
                        tally.violations.append(f"{where} image={only}: revisions differ")
                elif recovered != interrupted:
                    tally.violations.append(
                        f"{where} image={only}: recovered {sorted(recovered)} is not the "
                        f"acknowledged state {sorted(model.values)}"
                    )
        except Exception as error:
            tally.violations.append(f"{where} image={only}: reopening raised {error!r}")
        finally:
            shutil.rmtree(image, ignore_errors=True)
    shutil.rmtree(directory, ignore_errors=True)


def _refuses_writes(db: Store) -> bool:
    try:
        db.put("probe-key", b"probe")
    except StoreFailed:
        return True
    except StorageError:
        return False
    return False


def _note(tally: FaultTally, error: BaseException) -> None:
    name = type(error).__name__
    tally.reported[name] = tally.reported.get(name, 0) + 1
