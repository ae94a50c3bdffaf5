"""Time to live: checking a TTL, and the sweeper that writes each expired key's deletion.

An expired key is gone for every read at once (reads compare its ``expires_at`` with the clock;
``KeyIndex`` keeps the expiries). The sweeper only makes that durable and visible to watchers:
it writes an ``expire`` record per expired key, at least once a second, a bounded number per
lock hold, so readers and writers wait microseconds, never for the whole backlog.

Owns the sweeper thread; the store's ``Writer`` does the writing.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Final

from .errors import InvalidTTL, StoreClosed, StoreError

log = logging.getLogger(__name__)

MAX_TTL: Final = 10 * 365 * 24 * 3600.0  # ten years, in seconds
SWEEP_BATCH: Final = 512  # expiries written per hold of the store lock
PACE: Final = 3.0  # rest this many times a full batch's time before the next: 25 % at most
# ... unless the oldest expiry not yet written is older than LAG seconds: then rest only as long
# as the batch took (50 %), so that a wave of expiries is written within about half a minute.
LAG: Final = 5.0
PACE_LAGGING: Final = 1.0


def check_ttl(ttl: object) -> float:
    """``ttl`` as float seconds; InvalidTTL unless it is a real number in (0, ten years]."""
    if isinstance(ttl, bool) or not isinstance(ttl, int | float):
        raise InvalidTTL(f"a ttl is a number of seconds, not {type(ttl).__name__}")
    seconds = float(ttl)
    if not math.isfinite(seconds) or seconds <= 0 or seconds > MAX_TTL:
        raise InvalidTTL(f"a ttl must be above 0 and at most {MAX_TTL:.0f} seconds (ten years)")
    return seconds


class ExpirySweeper:
    """A daemon thread calling ``sweep`` every ``interval`` seconds.

    ``sweep()`` returns how many keys it expired; a full batch means more are waiting, so it is
    called again after a rest in proportion to its cost; ``lag()`` says how long ago the oldest
    expiry still to write fell due (0 if none), which shortens the rest.
    """

    def __init__(self, sweep: Callable[[], int], interval: float, lag: Callable[[], float]) -> None:
        self._sweep = sweep
        self._lag = lag
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="filekv-expiry", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                while True:
                    started = time.thread_time()
                    if self._sweep() < SWEEP_BATCH:
                        break  # nothing more is due: sleep until the next round
                    # More are due. Rest PACE times the CPU the batch took, so that a wave of
                    # expiries takes at most a quarter of the process's time (as Redis's active
                    # expiry keeps to 25 % of its CPU): reads and writes keep their speed while
                    # the backlog is written, as they already see it gone. CPU time, not wall
                    # time: waiting for the GIL behind busy readers must not slow it further.
                    # A backlog older than LAG gets half the time instead, as Redis's expiry
                    # works harder when many keys are stale.
                    pace = PACE_LAGGING if self._lag() > LAG else PACE
                    if self._stop.wait((time.thread_time() - started) * pace):
                        return
            except StoreClosed:
                return
            except StoreError as error:  # a failed store refuses writes; reads still expire
                log.warning("expiry sweep stopped until the store is reopened: %s", error)
                return
            except OSError as error:
                log.warning("expiry sweep failed, will retry: %s", error)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join()
