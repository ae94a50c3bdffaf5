"""A deterministic randomized engine workload and the model of what it acknowledged.

``Workload(seed).run(open_store)`` drives puts, deletes, compare-and-set, nested transactions
(begin / rollback / commit / abort), compaction and reopenings. Each step says, before running,
what the committed state will be if it succeeds; ``Model`` records what the store acknowledged.

Used by the power-loss runs (``support.power_loss``: a crash aborts the run from inside the I/O
layer) and by the I/O-error runs (``support.io_faults``: an operation fails with EIO/ENOSPC and
the run goes on), both with ``OPTIONS``: small segments and a small transaction limit, so that
rotation, compaction and refused transaction writes happen within a few dozen steps.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from filekv.engine import (
    DiskFull,
    StorageError,
    Store,
    StoreFailed,
    Transaction,
    TransactionTooLarge,
    VersionMismatch,
)
from support.planted import planted_value

KEYS = [f"k{i}" for i in range(6)] + ["dir/a", "dir/b", "ü-key"]

SEGMENT_BYTES = 4096  # the smallest the engine accepts: rotation every few writes
# Transactions of a few values reach this limit: the write past it must stage nothing.
MAX_TRANSACTION_BYTES = 1500
# The store options the workload runs with (power-loss and I/O-error runs alike).
# The active segment's hint is rewritten every kilobyte it grows (16 MiB by default), so that
# power cuts and I/O errors strike at every step of writing it too.
OPTIONS = {
    "fsync": "always",
    "segment_bytes": SEGMENT_BYTES,
    "active_hint_bytes": 1024,
    "auto_compact": False,
    "max_transaction_bytes": MAX_TRANSACTION_BYTES,
}
State = dict[str, bytes]


@dataclass
class Outcome:
    """What one step did to the committed state, as the caller saw it."""

    kind: str
    after: State  # the committed state if the step took effect
    keys: set[str]  # keys it writes
    revision_keys: dict[str, int] = field(default_factory=dict)


@dataclass
class Model:
    """Acknowledged committed state, with the revision of each key."""

    values: State = field(default_factory=dict)
    revisions: dict[str, int] = field(default_factory=dict)
    acknowledged: int = 0  # acknowledged writing operations (puts, deletes, commits)
    steps: int = 0
    in_flight: Outcome | None = None  # the step a crash or a fault interrupted


class Workload:
    def __init__(self, seed: int, *, steps: int = 25, value_max: int = 900) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.steps = steps
        self.value_max = value_max
        self.counter = 0
        self.refused = 0  # transaction writes refused at the store's limit
        self.model = Model()

    def value(self) -> bytes:
        """A fresh value; every third one is made of encoded records (support.planted)."""
        self.counter += 1
        tag = f"{self.seed}:{self.counter}:".encode()
        size = self.rng.randint(0, self.value_max)
        if self.counter % 3 == 0:
            return planted_value(tag, size)
        return tag + bytes([97 + self.counter % 26]) * size

    # -- one run ---------------------------------------------------------------------------------

    def run(
        self,
        open_store: Callable[[], Store],
        on_error: Callable[[Store, Outcome, BaseException], bool] | None = None,
    ) -> Store:
        """Run every step; a step's exception goes to ``on_error`` (True: go on) or propagates."""
        db = open_store()
        for _ in range(self.steps):
            choice = self.rng.random()
            try:
                if choice < 0.06:
                    self.model.in_flight = Outcome("reopen", dict(self.model.values), set())
                    db.close()
                    db = open_store()
                    self.check_reads(db)
                    continue
                if choice < 0.14:
                    self.model.in_flight = Outcome("compact", dict(self.model.values), set())
                    db.compact()
                elif choice < 0.40:
                    self.put(db)
                elif choice < 0.52:
                    self.delete(db)
                elif choice < 0.68:
                    self.cas(db)
                else:
                    self.transaction(db)
            except (StorageError, OSError) as error:
                outcome = self.model.in_flight
                assert outcome is not None
                if on_error is None or not on_error(db, outcome, error):
                    raise
            self.model.in_flight = None
            self.model.steps += 1
        return db

    def _ack(self, outcome: Outcome, revisions: dict[str, int]) -> None:
        self.model.values = outcome.after
        for key in outcome.keys:
            if key in outcome.after:
                self.model.revisions[key] = revisions[key]
            else:
                self.model.revisions.pop(key, None)
        self.model.acknowledged += 1

    def put(self, db: Store) -> None:
        key, value = self.rng.choice(KEYS), self.value()
        outcome = Outcome("put", {**self.model.values, key: value}, {key})
        self.model.in_flight = outcome
        revision = db.put(key, value)
        self._ack(outcome, {key: revision})

    def delete(self, db: Store) -> None:
        key = self.rng.choice(KEYS)
        after = dict(self.model.values)
        existed = after.pop(key, None) is not None
        outcome = Outcome("delete", after, {key})
        self.model.in_flight = outcome
        assert db.delete(key) == existed
        self._ack(outcome, {})

    def cas(self, db: Store) -> None:
        key = self.rng.choice(KEYS)
        current = self.model.revisions.get(key)
        good = self.rng.random() < 0.7
        expect = (current if current is not None else 0) if good else (current or 0) + 1000
        delete = self.rng.random() < 0.3 and current is not None
        after = dict(self.model.values)
        value = self.value()
        if delete:
            after.pop(key, None)
        else:
            after[key] = value
        outcome = Outcome("cas-delete" if delete else "cas-put", after, {key})
        self.model.in_flight = outcome
        try:
            if delete:
                assert db.delete(key, expect=expect) is True
                self._ack(outcome, {})
            else:
                self._ack(outcome, {key: db.put(key, value, expect=expect)})
        except VersionMismatch:
            assert not good, f"CAS with the current revision {expect} of {key!r} was refused"

    def _count_refusal(self, db: Store, tx: Transaction, key: str, value: bytes) -> None:
        """A staged write refused at the limit: it must really have passed it (7: op header)."""
        needed = tx.staged_bytes + 7 + len(key.encode()) + len(value)
        assert needed > db.options.max_transaction_bytes, "refused under the limit"
        self.refused += 1

    def transaction(self, db: Store) -> None:
        rng = self.rng
        committed = self.model.values
        levels: list[State | dict[str, None]] = [{}]
        self.model.in_flight = Outcome("begin", dict(committed), set())
        tx = db.transaction()
        try:
            for _ in range(rng.randint(1, 7)):
                roll = rng.random()
                key = rng.choice(KEYS)
                if roll < 0.45:
                    value = self.value()
                    try:
                        tx.put(key, value)
                    except TransactionTooLarge:
                        # Refused whole: the model stages nothing either (the store's
                        # max_transaction_bytes is small here, so big transactions hit it).
                        self._count_refusal(db, tx, key, value)
                        continue
                    levels[-1][key] = value  # type: ignore[assignment]
                elif roll < 0.65:
                    view = _view(committed, levels)
                    try:
                        assert tx.delete(key) == (key in view)
                    except TransactionTooLarge:
                        self._count_refusal(db, tx, key, b"")
                        continue
                    levels[-1][key] = None  # type: ignore[assignment]
                elif roll < 0.8:
                    levels.append({})
                    assert tx.begin() == len(levels)
                elif roll < 0.9 and len(levels) > 1:
                    levels.pop()
                    assert tx.rollback() == len(levels)
                else:
                    assert tx.get(key) == _view(committed, levels).get(key)
            if rng.random() < 0.25:
                if rng.random() < 0.5:
                    tx.abort()
                else:
                    while tx.rollback():
                        pass
                assert not tx.active
                return
            after = _view(committed, levels)
            staged: set[str] = set()
            for level in levels:
                staged.update(level)
            outcome = Outcome("commit", after, staged)
            self.model.in_flight = outcome
            assert tx.commit() == len(staged)
            revisions = {}
            for key in staged:
                entry = db.entry(key)
                if key in after:
                    assert entry is not None and entry.value == after[key]
                    assert entry.revision is not None
                    revisions[key] = entry.revision
                else:
                    assert entry is None
            self._ack(outcome, revisions)
        finally:
            if tx.active:
                tx.abort()

    def check_reads(self, db: Store) -> None:
        """The reopened store holds exactly the acknowledged state."""
        assert read_all(db) == self.model.values


def _view(committed: State, levels: list[State | dict[str, None]]) -> State:
    view = dict(committed)
    for level in levels:
        for key, value in level.items():
            if value is None:
                view.pop(key, None)
            else:
                view[key] = value  # type: ignore[assignment]
    return view


def read_all(db: Store) -> State:
    state = {}
    for key in db.scan():
        value = db.get(key)
        assert value is not None, f"{key!r} listed by scan but has no value"
        state[key] = value
    return state


def read_revisions(db: Store) -> dict[str, int]:
    revisions = {}
    for key in db.scan():
        entry = db.entry(key)
        assert entry is not None and entry.revision is not None
        revisions[key] = entry.revision
    return revisions


__all__ = [
    "DiskFull",
    "KEYS",
    "Model",
    "Outcome",
    "StoreFailed",
    "Workload",
    "read_all",
    "read_revisions",
]
