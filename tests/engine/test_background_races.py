"""Races between the store's background threads and compaction, made to happen on purpose.

Compaction deletes an input segment, then its hint if it ``exists()``. The hint writer, when it
finishes a hint whose segment compaction has just deleted, removes that hint itself. Both may
see the hint, and the second ``unlink`` got ENOENT: compaction then took the file it could not
delete for an I/O failure and stopped every write (``StoreFailed``) until a reopen. Found by a
fuzz of TTL puts, sweeps, compactions and crash copies (4 KiB segments, hints every KiB); here
the hint writer's removal is placed between compaction's look and its unlink.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from support.engine_fixtures import FAST

from filekv.engine import Store
from filekv.engine.fileio import FileIO


class _HintRemovedMeanwhile(FileIO):
    """Removes a ``.hint`` just before the engine does, as the hint writer may, while armed."""

    armed = False
    raced = 0

    def unlink(self, path: str) -> None:
        if self.armed and path.endswith(".hint"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
                self.raced += 1
        super().unlink(path)


def test_background_races_a_hint_removed_by_the_hint_writer_does_not_fail_compaction(
    tmp_path: Path,
) -> None:
    io = _HintRemovedMeanwhile()
    path = tmp_path / "db"
    db = Store.open(path, io=io, **{**FAST, "segment_bytes": 4096})
    try:
        for i in range(200):
            db.put(f"k{i % 50}", b"v%d" % i * 20)
        db._segments.wait_for_hints()  # every sealed input has its hint now
        assert len(list(path.glob("*.hint"))) >= 2
        io.armed = True
        assert db.compact()
        io.armed = False
        assert io.raced >= 2
        db.put("after", b"writes go on")  # StoreFailed before the fix
        assert db.get("k49") == b"v199" * 20
        db.check()
    finally:
        db.close()
    db = Store.open(path, **FAST)
    try:
        assert db.get("after") == b"writes go on"
        assert db.get("k0") == b"v150" * 20
    finally:
        db.close()
