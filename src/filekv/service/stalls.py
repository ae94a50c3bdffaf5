"""Cutting off sends that stall: one periodic check for every watch stream, not a timer per send.

A watch stream whose client stopped reading waits in ``send`` for ever (uvicorn makes a send
wait until the transport's buffer has drained). Such a stream must end after
``watch_stall_seconds``, or it holds its watcher slot and its queued events for good. A timer
around every send (``asyncio.timeout``) did that, but cost about a tenth of the server's CPU
at a million events a second (a timer handle made, pushed on the loop's heap and cancelled per
send). Here a stream only notes when its pending send began (an attribute store before and
after a send); one task looks at all of them every quarter of the limit and fires the
stream's own ``asyncio.timeout`` when one has waited too long: the stream's task is cancelled
inside that send and the stream sees ``TimeoutError``, as before. A stalled stream is thus cut
off between one and 1.25 times the limit after its send began.

Owns the register of pending sends and the checking task; the lifespan (``app.py``) starts and
stops it beside the watch hub.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

# How many checks per limit: a stall is cut off at most a quarter of the limit late.
CHECKS_PER_LIMIT: Final = 4


@dataclass(eq=False, slots=True)
class SendClock:
    """One stream's pending send: ``since`` is the loop time it began, 0.0 when none is."""

    deadline: asyncio.Timeout  # the stream's own timeout, fired by the checker
    since: float = 0.0


class SendStalls:
    """The streams with a send that may stall, and the task that cuts off the stalled ones."""

    def __init__(self, stall_seconds: float) -> None:
        self.stall_seconds = stall_seconds
        self._clocks: set[SendClock] = set()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._check_forever(), name="filekv-send-stalls")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    @contextlib.contextmanager
    def watching(self, deadline: asyncio.Timeout) -> Iterator[SendClock]:
        """Register a stream for as long as it sends; ``deadline`` is an ``asyncio.timeout(None)``
        the stream has entered (in its own task: the one to cancel)."""
        clock = SendClock(deadline)
        self._clocks.add(clock)
        try:
            yield clock
        finally:
            self._clocks.discard(clock)

    def check(self) -> int:
        """Fire the deadline of every send pending longer than the limit; how many were."""
        now = asyncio.get_running_loop().time()
        limit = now - self.stall_seconds
        stalled = 0
        for clock in self._clocks:
            if clock.since and clock.since <= limit and clock.deadline.when() is None:
                clock.deadline.reschedule(now)  # expires at once: the stream's task is cancelled
                stalled += 1
        return stalled

    async def _check_forever(self) -> None:
        period = self.stall_seconds / CHECKS_PER_LIMIT
        while True:
            await asyncio.sleep(period)
            self.check()
