"""Power-loss runs: replay a seeded workload, cut the power at operation K, check the disk image.

``reliability/test_power_loss.py`` drives these over every crash point of many seeds:
``count_operations`` finds the crash points, ``crash_and_check`` runs ``support.workload`` on a
``support.disk.SimDisk`` that cuts the power before operation K and reopens disk images of the
cut with the real ``FileIO``; ``concurrent_crash_and_check`` does the same with writers in
threads sharing fsyncs (group commit). Findings add up in a ``Tally``.
"""

from __future__ import annotations

import contextlib
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from filekv.engine import Store
from support.disk import PowerLoss, SimDisk
from support.workload import OPTIONS, Workload, read_all, read_revisions


@dataclass
class Tally:
    crash_points: int = 0
    images: int = 0
    operations_checked: int = 0  # acknowledged writes whose survival was checked, summed
    in_flight_applied: int = 0
    in_flight_dropped: int = 0
    violations: list[str] = field(default_factory=list)


class Runner:
    """Open stores on a SimDisk and remember the last one, to close it after the power cut."""

    def __init__(self, directory: Path, disk: SimDisk) -> None:
        self.directory = directory
        self.disk = disk
        self.store: Store | None = None

    def open(self) -> Store:
        self.store = Store.open(self.directory, io=self.disk, **OPTIONS)  # type: ignore[arg-type]
        return self.store

    def close(self) -> None:
        if self.store is not None:
            with contextlib.suppress(PowerLoss, Exception):
                self.store.close()


def count_operations(seed: int, steps: int, root: Path) -> int:
    """Mutating I/O operations of the whole workload: the crash points there are."""
    directory = root / f"dry-{seed}"
    disk = SimDisk(directory)
    runner = Runner(directory, disk)
    try:
        Workload(seed, steps=steps).run(runner.open)
    finally:
        runner.close()
    shutil.rmtree(directory, ignore_errors=True)
    return disk.ops


def crash_and_check(
    seed: int,
    steps: int,
    crash_at: int,
    root: Path,
    tally: Tally,
    *,
    images: int = 2,
    ordered_metadata: bool = True,
    reopen_check: bool = False,
) -> None:
    directory = root / f"run-{seed}-{crash_at}"
    disk = SimDisk(directory, crash_at=crash_at)
    runner = Runner(directory, disk)
    workload = Workload(seed, steps=steps)
    try:
        workload.run(runner.open)
    except BaseException:
        # The power cut surfaces as PowerLoss, or as whatever the engine turned it into
        # (StoreFailed from group commit); anything else is a real failure.
        if not disk.crashed:
            raise
    finally:
        runner.close()
    if not disk.crashed:
        shutil.rmtree(directory, ignore_errors=True)
        return
    tally.crash_points += 1
    model = workload.model
    acked = model.values
    alternative = model.in_flight.after if model.in_flight is not None else None
    rng = random.Random(seed * 1_000_003 + crash_at)
    for number in range(images):
        image = root / f"img-{seed}-{crash_at}-{number}"
        how = disk.image(image, rng, ordered_metadata=ordered_metadata)
        where = f"seed={seed} crash_at={crash_at} ({disk.ops} ops) image={number}: {how}"
        tally.images += 1
        tally.operations_checked += model.acknowledged
        try:
            with Store.open(image, **OPTIONS) as db:  # type: ignore[arg-type]
                recovered = read_all(db)
                db.check()
                if recovered == acked:
                    tally.in_flight_dropped += alternative is not None and alternative != acked
                    revisions = read_revisions(db)
                    if revisions != model.revisions:
                        tally.violations.append(
                            f"{where}: revisions {revisions} != acknowledged {model.revisions}"
                        )
                elif alternative is not None and recovered == alternative:
                    tally.in_flight_applied += 1
                else:
                    tally.violations.append(f"{where}: {_diff(recovered, acked, alternative)}")
                    continue
                if reopen_check:
                    db.put("after-recovery", b"x")
            if reopen_check:
                with Store.open(image, **OPTIONS) as db:  # type: ignore[arg-type]
                    if db.get("after-recovery") != b"x":
                        tally.violations.append(f"{where}: a write after recovery was lost")
        except Exception as error:
            tally.violations.append(f"{where}: reopening raised {error!r}")
        finally:
            shutil.rmtree(image, ignore_errors=True)
    shutil.rmtree(directory, ignore_errors=True)


def _short(state: dict[str, bytes] | None) -> dict[str, str] | None:
    if state is None:
        return None
    return {key: value[:12].decode(errors="replace") for key, value in sorted(state.items())}


def _diff(
    recovered: dict[str, bytes], acked: dict[str, bytes], alternative: dict[str, bytes] | None
) -> str:
    return (
        f"recovered {_short(recovered)} is neither the acknowledged state {_short(acked)} "
        f"nor that plus the interrupted step {_short(alternative)}"
    )


def concurrent_crash_and_check(
    seed: int,
    root: Path,
    tally: Tally,
    *,
    threads: int = 4,
    puts: int = 12,
    images: int = 3,
    modes: tuple[str, ...] = ("drop", "all", "tear", "subset"),
) -> None:
    """Writers in threads share fsyncs (group commit), so several writes are unsynced at once.

    Each thread owns its keys, so per key: the recovered value is the last one acknowledged, or
    the one that thread was writing when the power went.
    """
    import threading

    rng = random.Random(seed)
    directory = root / f"conc-{seed}"
    crash_at = rng.randint(5, threads * puts)  # opening takes 4 operations; writes cost 1-2
    disk = SimDisk(directory, crash_at=crash_at)
    acked: dict[str, bytes] = {}
    writing: dict[str, bytes] = {}
    db = Store.open(directory, io=disk, **OPTIONS)  # type: ignore[arg-type]
    barrier = threading.Barrier(threads)

    def writer(number: int) -> None:
        barrier.wait()
        for count in range(puts):
            key = f"t{number}-{count % 2}"
            value = f"{seed}:{number}:{count}:".encode() + b"v" * ((count * 37) % 200)
            writing[key] = value
            try:
                db.put(key, value)
            except BaseException:  # the power cut, or StoreFailed made of it
                return
            acked[key] = value
            del writing[key]

    workers = [threading.Thread(target=writer, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    with contextlib.suppress(PowerLoss, Exception):
        db.close()
    if not disk.crashed:
        return
    tally.crash_points += 1
    for number in range(images):
        image = root / f"conc-img-{seed}-{number}"
        how = disk.image(image, rng, modes=modes)
        where = f"concurrent seed={seed} crash_at={crash_at} image={number}: {how}"
        tally.images += 1
        tally.operations_checked += len(acked)
        try:
            with Store.open(image, **OPTIONS) as db2:  # type: ignore[arg-type]
                recovered = read_all(db2)
                db2.check()
            for key in set(recovered) | set(acked) | set(writing):
                allowed = {acked.get(key), writing.get(key)} if key in writing else {acked.get(key)}
                if recovered.get(key) not in allowed:
                    tally.violations.append(
                        f"{where}: {key!r} recovered {_short_value(recovered.get(key))}, "
                        f"allowed {[_short_value(v) for v in allowed]}"
                    )
        except Exception as error:
            tally.violations.append(f"{where}: reopening raised {error!r}")
        finally:
            shutil.rmtree(image, ignore_errors=True)
    shutil.rmtree(directory, ignore_errors=True)


def _short_value(value: bytes | None) -> str | None:
    return None if value is None else value[:12].decode(errors="replace")
