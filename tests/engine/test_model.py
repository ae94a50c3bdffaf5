"""A hypothesis state machine: the Store against a dict, with transactions, reopen, compaction
and folds of the index's overlay into its columns.

The model keeps ``key -> (value, revision)`` for committed data and a stack of staged levels for the
open transaction. Revisions of transaction writes are learned after commit (the engine picks them);
the model checks they are newer than every revision seen before.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from filekv.engine import Entry, Store, Transaction, TransactionActive, VersionMismatch

SOAK = os.environ.get("FILEKV_SOAK") == "1"

KEYS = st.one_of(
    st.sampled_from(["a", "a/1", "a/2", "ab", "b", "b/1", "é", "k\x00", "/", "z" * 40]),
    st.text(alphabet="ab/é\x00", min_size=1, max_size=3),
)
VALUES = st.sampled_from([b"", b"x", b"y", b"xy", b"\x00", b"v" * 300])
PREFIXES = st.sampled_from(["", "a", "a/", "b", "é", "k", "zz"])
AFTERS = st.one_of(st.none(), st.sampled_from(["", "a", "a/1", "ab", "b", "é", "k"]), KEYS)
LIMITS = st.one_of(st.none(), st.integers(min_value=0, max_value=4))
EXPECTS = st.sampled_from(["none", "zero", "current", "stale", "future"])

_MISSING: Any = object()


def _select(keys: list[str], prefix: str, after: str | None, limit: int | None) -> list[str]:
    chosen = [k for k in sorted(keys) if k.startswith(prefix) and (after is None or k > after)]
    return chosen if limit is None else chosen[:limit]


class StoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.folder = Path(tempfile.mkdtemp(prefix="filekv-model-"))
        self.options: dict[str, Any] = {
            "fsync": "never",
            "auto_compact": False,
            "segment_bytes": 4096,
        }
        self.db = Store.open(self.folder / "db", **self.options)
        self.model: dict[str, tuple[bytes, int]] = {}
        self.highest = 0  # newest revision the store has handed out
        self.old_revisions: dict[str, int] = {}  # a revision each key had before (for stale CAS)
        self.tx: Transaction | None = None
        self.levels: list[dict[str, bytes | None]] = []

    # -- helpers -------------------------------------------------------------------------------

    def _expect(self, key: str, how: str) -> int | None:
        current = self.model.get(key)
        if how == "none":
            return None
        if how == "zero":
            return 0
        if how == "current":
            return current[1] if current else 0
        if how == "stale":
            return self.old_revisions.get(key, 10**6)
        return self.highest + 10**6

    def _cas_ok(self, key: str, expect: int | None) -> bool:
        current = self.model.get(key)
        if expect is None:
            return True
        if expect == 0:
            return current is None
        return current is not None and current[1] == expect

    def _tx_view(self) -> dict[str, bytes]:
        view = {key: value for key, (value, _) in self.model.items()}
        for level in self.levels:
            for key, value in level.items():
                if value is None:
                    view.pop(key, None)
                else:
                    view[key] = value
        return view

    def _record_put(self, key: str, value: bytes, revision: int) -> None:
        assert revision > self.highest, f"revision {revision} not above {self.highest}"
        self.highest = revision
        if key in self.model:
            self.old_revisions[key] = self.model[key][1]
        self.model[key] = (value, revision)

    # -- plain writes --------------------------------------------------------------------------

    @rule(key=KEYS, value=VALUES, how=EXPECTS)
    def put(self, key: str, value: bytes, how: str) -> None:
        expect = self._expect(key, how)
        if self.tx is not None:
            try:
                self.db.put(key, value, expect=expect)
            except TransactionActive:
                return
            raise AssertionError("put while a transaction is open must raise TransactionActive")
        if self._cas_ok(key, expect):
            self._record_put(key, value, self.db.put(key, value, expect=expect))
        else:
            try:
                self.db.put(key, value, expect=expect)
            except VersionMismatch as error:
                assert (error.key, error.expected) == (key, expect)
                current = self.model.get(key)
                assert error.actual == (current[1] if current else None)
                return
            raise AssertionError(f"put({key!r}, expect={expect}) should mismatch")

    @rule(key=KEYS, how=EXPECTS)
    def delete(self, key: str, how: str) -> None:
        expect = self._expect(key, how)
        if self.tx is not None:
            try:
                self.db.delete(key, expect=expect)
            except TransactionActive:
                return
            raise AssertionError("delete while a transaction is open must raise TransactionActive")
        if self._cas_ok(key, expect):
            existed = self.db.delete(key, expect=expect)
            assert existed is (key in self.model)
            if existed:
                self.old_revisions[key] = self.model.pop(key)[1]
            assert self.db.revision >= self.highest
            self.highest = self.db.revision
        else:
            try:
                self.db.delete(key, expect=expect)
            except VersionMismatch as error:
                assert error.key == key
                return
            raise AssertionError(f"delete({key!r}, expect={expect}) should mismatch")

    # -- reads ---------------------------------------------------------------------------------

    @rule(key=KEYS)
    def get(self, key: str) -> None:
        current = self.model.get(key)
        assert self.db.get(key) == (current[0] if current else None)
        entry = self.db.entry(key)
        assert entry == (Entry(key, current[0], current[1]) if current else None)
        assert (key in self.db) is (current is not None)

    @rule(value=VALUES, prefix=PREFIXES, after=AFTERS, limit=LIMITS)
    def find(self, value: bytes, prefix: str, after: str | None, limit: int | None) -> None:
        matching = [k for k, (v, _) in self.model.items() if v == value]
        assert self.db.find(value, prefix=prefix, after=after, limit=limit) == _select(
            matching, prefix, after, limit
        )

    @rule(prefix=PREFIXES, after=AFTERS, limit=LIMITS)
    def scan(self, prefix: str, after: str | None, limit: int | None) -> None:
        assert self.db.scan(prefix, after=after, limit=limit) == _select(
            list(self.model), prefix, after, limit
        )

    # -- transactions --------------------------------------------------------------------------

    @precondition(lambda self: self.tx is None)
    @rule()
    def begin_transaction(self) -> None:
        self.tx = self.db.transaction()
        self.levels = [{}]
        assert self.tx.depth == 1

    @precondition(lambda self: self.tx is not None)
    @rule()
    def second_transaction_refused(self) -> None:
        try:
            self.db.transaction()
        except TransactionActive:
            return
        raise AssertionError("a second transaction must raise TransactionActive")

    @precondition(lambda self: self.tx is not None)
    @rule(key=KEYS, value=VALUES)
    def tx_put(self, key: str, value: bytes) -> None:
        assert self.tx is not None
        self.tx.put(key, value)
        self.levels[-1][key] = value

    @precondition(lambda self: self.tx is not None)
    @rule(key=KEYS)
    def tx_delete(self, key: str) -> None:
        assert self.tx is not None
        existed = key in self._tx_view()
        assert self.tx.delete(key) is existed
        self.levels[-1][key] = None

    @precondition(lambda self: self.tx is not None)
    @rule(key=KEYS)
    def tx_get(self, key: str) -> None:
        assert self.tx is not None
        view = self._tx_view()
        assert self.tx.get(key) == view.get(key)
        entry = self.tx.entry(key)
        if key not in view:
            assert entry is None
            return
        assert entry is not None and entry.key == key and entry.value == view[key]
        staged = any(key in level for level in self.levels)
        expected_revision = None if staged else self.model[key][1]
        assert entry.revision == expected_revision

    @precondition(lambda self: self.tx is not None)
    @rule(value=VALUES, prefix=PREFIXES, after=AFTERS, limit=LIMITS)
    def tx_find(self, value: bytes, prefix: str, after: str | None, limit: int | None) -> None:
        assert self.tx is not None
        matching = [k for k, v in self._tx_view().items() if v == value]
        assert self.tx.find(value, prefix=prefix, after=after, limit=limit) == _select(
            matching, prefix, after, limit
        )

    @precondition(lambda self: self.tx is not None)
    @rule(prefix=PREFIXES, after=AFTERS, limit=LIMITS)
    def tx_scan(self, prefix: str, after: str | None, limit: int | None) -> None:
        assert self.tx is not None
        assert self.tx.scan(prefix, after=after, limit=limit) == _select(
            list(self._tx_view()), prefix, after, limit
        )

    @precondition(lambda self: self.tx is not None and len(self.levels) < 5)
    @rule()
    def tx_begin(self) -> None:
        assert self.tx is not None
        self.levels.append({})
        assert self.tx.begin() == len(self.levels)

    @precondition(lambda self: self.tx is not None)
    @rule()
    def tx_rollback(self) -> None:
        assert self.tx is not None
        self.levels.pop()
        assert self.tx.rollback() == len(self.levels)
        if not self.levels:
            assert not self.tx.active
            self.tx = None

    @precondition(lambda self: self.tx is not None)
    @rule()
    def tx_abort(self) -> None:
        assert self.tx is not None
        self.tx.abort()
        assert self.tx.depth == 0
        self.tx = None
        self.levels = []

    @precondition(lambda self: self.tx is not None)
    @rule()
    def tx_commit(self) -> None:
        assert self.tx is not None
        before = self.highest
        final = self._tx_view()
        touched = {key for level in self.levels for key in level}
        self.tx.commit()
        assert not self.tx.active
        self.tx = None
        self.levels = []
        for key in touched:
            if key in final:
                entry = self.db.entry(key)
                assert entry is not None and entry.value == final[key]
                assert entry.revision is not None and entry.revision > before
                if key in self.model:
                    self.old_revisions[key] = self.model[key][1]
                self.model[key] = (final[key], entry.revision)
            elif key in self.model:
                self.old_revisions[key] = self.model.pop(key)[1]
        assert self.db.revision >= max([before, *(v[1] for v in self.model.values())])
        self.highest = self.db.revision

    # -- lifecycle -----------------------------------------------------------------------------

    @precondition(lambda self: self.tx is None)
    @rule()
    def reopen(self) -> None:
        self.db.check()
        self.db.close()
        self.db = Store.open(self.folder / "db", **self.options)
        assert self.db.revision >= self.highest
        self.highest = self.db.revision
        assert self.db.stats().recovered_truncations == 0

    @rule()
    def compact(self) -> None:
        if self.tx is not None:
            return  # compaction during a transaction is covered in test_store
        self.db.compact()

    @rule(limit=st.integers(min_value=1, max_value=4))
    def fold(self, limit: int) -> None:
        """What the store's folding thread does once its thresholds are met (a step under the
        lock, then the value order settled without it), here at any size."""
        with self.db._lock:
            self.db._index.fold_step(limit)
        self.db._index.settle_value_order()

    @invariant()
    def agrees_with_model(self) -> None:
        assert len(self.db) == len(self.model)
        assert self.db.scan() == sorted(self.model)
        assert self.db.revision >= self.highest

    def teardown(self) -> None:
        try:
            if self.tx is not None:
                self.tx.abort()
            self.db.check()
            self.db.close()
            final = Store.open(self.folder / "db", fsync="never")
            try:
                assert {k: final.get(k) for k in final.scan()} == {
                    k: v for k, (v, _) in self.model.items()
                }
                final.check()
            finally:
                final.close()
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)


StoreMachine.TestCase.settings = settings(
    max_examples=1000 if SOAK else 150,
    stateful_step_count=100 if SOAK else 50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestModelStoreMatchesDict = StoreMachine.TestCase
