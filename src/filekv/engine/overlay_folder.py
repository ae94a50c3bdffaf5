"""Folding the index's overlay into its columns while the store runs.

A store that takes ten million new keys holds them in the overlay at ~240 bytes each; folded
into the columns they cost ~130 (docs/PERFORMANCE.md, issue 9). The fold runs in a thread of its
own, ``index.FOLD_STEP`` keys per hold of the store lock (``KeyIndex.fold_step``: keys after
every held one appended, the others inserted into the chunk their key falls in), so a request
waits for one step at most, never for a whole fold; then it merges the value order the steps
added, without the lock.

Owns that thread; ``KeyIndex`` owns what it changes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from . import index as index_module
from .index import KeyIndex
from .recovery import return_freed_heap

log = logging.getLogger(__name__)


class OverlayFolder:
    """Starts a fold when the index asks for one; stops at close."""

    def __init__(self, lock: threading.Lock, index: KeyIndex, is_closed: Callable[[], bool]):
        self._lock = lock
        self._index = index
        self._is_closed = is_closed
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.folds = 0  # finished by this process (tests, stats)

    def maybe_start(self) -> None:
        """Start folding if the overlay holds enough new keys. Called under the lock."""
        if self._stop.is_set() or (self._thread is not None and self._thread.is_alive()):
            return
        if not self._index.fold_wanted():
            return
        self._thread = threading.Thread(target=self._run, name="filekv-fold", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._fold()
        except Exception:  # the overlay stays as it is: reads stay right, memory stays higher
            log.exception("folding the index overlay failed; the store goes on without it")

    def _fold(self) -> None:
        index = self._index
        folded = 0
        while not self._stop.is_set():
            with self._lock:
                if self._is_closed():
                    return
                # A short step: the new keys are used up (those written from now on wait for
                # the next fold).
                step = index_module.FOLD_STEP
                moved = index.fold_step(step)
                folded += moved
                if moved < step:
                    break
        if not folded:
            return
        index.settle_value_order(self._stop)
        # The steps' temporaries and the replaced value order were freed inside the C heap,
        # which glibc would otherwise keep (the same as after an open).
        return_freed_heap()
        self.folds += 1

    def wait_idle(self) -> None:
        """Wait for a fold under way to finish (benchmarks and tests)."""
        thread = self._thread
        if thread is not None:
            thread.join()

    def stop(self) -> None:
        """Stop folding (at close): a step under way finishes; the rest stays in the overlay."""
        self._stop.set()
        self.wait_idle()
