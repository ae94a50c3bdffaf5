"""The watch hub: one reader of the store's change feed, fanning changes out to HTTP watchers.

Each ``GET /watch`` stream and each long poll (``GET /keys?wait=``) is a ``Watcher`` with a
prefix (or one exact key). A thousand watchers each iterating the feed would each wake on every
write; instead one task (``WatchHub.run``) reads the feed a chunk of whole revisions at a time,
formats each change's Server-Sent Event once, and appends it to the queue of every watcher whose
prefix matches (a dict per prefix length: a change costs one lookup per distinct length).

Bounded: at most ``watch_max_watchers`` watchers (one more is 503); a watcher's queue holds at
most ``watch_queue_events`` events: one more and the watcher is marked overflowed, its queue
dropped, and its stream ends with ``event: overflow`` naming the last event it was sent (or
sooner, past ``QUEUE_BYTES`` of queued events).

Event ids: ``<revision>`` on a revision's last operation (every single put or delete), and
``<revision>.<i>`` on operation i (0-based) of a batch or commit when more of it follow, so that
``Last-Event-ID`` always names exactly what the client has: resuming after ``7.1`` sends the
rest of revision 7, resuming after ``7`` starts at revision 8.

Owns the watchers and the feed-reading task; the lifespan (``app.py``) starts and stops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

import orjson

from filekv.engine import Change, Compacted, Store, StoreClosed
from filekv.service.errors import TooManyWatchers

log = logging.getLogger(__name__)

STOP_POLL_SECONDS: Final = 0.5
# Bytes of events one watcher may have queued (values can be 1 MiB each): past this, overflow,
# as past watch_queue_events events. Events are shared between watchers, so this bounds what
# one slow reader can pin, not a copy per watcher.
QUEUE_BYTES: Final = 16 << 20  # how often the hub asks whether the server is shutting down
_EVENT_ID: Final = re.compile(r"(0|[1-9][0-9]{0,18})(?:\.(0|[1-9][0-9]{0,8}))?")

# (revision, index within the revision, the event's id, the event's bytes)
Event = tuple[int, int, str, bytes]
# How long a slot reserved by GET /watch waits for its stream to claim it: a response that
# never starts (the client gone before it) never runs the stream, so it cannot give it back.
RESERVATION_SECONDS: Final = 5.0


@dataclass(eq=False, slots=True)
class Reservation:
    """A watcher slot taken by the route, before its answer starts, for the stream to claim."""

    deadline: float  # time.monotonic() after which the slot is free again, if unclaimed
    live: bool = True  # neither claimed, released nor lapsed


@dataclass(frozen=True, slots=True)
class Position:
    """Where a stream resumes: after revision ``revision``, and if ``index`` is set, after
    operation ``index`` of revision ``revision + 1`` too (a batch cut in the middle)."""

    revision: int
    index: int | None = None

    def wants(self, revision: int, index: int) -> bool:
        if revision <= self.revision:
            return False
        return not (
            self.index is not None and revision == self.revision + 1 and index <= self.index
        )


def parse_event_id(text: str) -> Position | None:
    """``Last-Event-ID`` (``7`` or ``7.1``) as the position after it; None if malformed."""
    match = _EVENT_ID.fullmatch(text.strip())
    if match is None:
        return None
    revision = int(match.group(1))
    if match.group(2) is None:
        return Position(revision)
    return Position(revision - 1, int(match.group(2))) if revision > 0 else None


def event_id(revision: int, index: int, last: bool) -> str:
    return str(revision) if last else f"{revision}.{index}"


def format_event(change: Change, index: int, last: bool, now: float) -> bytes:
    """One change as a Server-Sent Event (``data`` is one line of JSON)."""
    expires_in = None
    if change.expires_at is not None:
        # As GET /keys rounds it (routes/keys.py): never 0.0 while the key lives (0.0004 s
        # left), 0.0 once it has expired (a put read back from the history).
        left = change.expires_at - now
        expires_in = max(round(left, 3), 0.001) if left > 0 else 0.0
    value = None if change.value is None else change.value.decode("utf-8", errors="replace")
    data = orjson.dumps(
        {
            "key": change.key,
            "value": value,
            "revision": change.revision,
            "expires_in": expires_in,
        }
    )
    head = f"id: {event_id(change.revision, index, last)}\nevent: {change.op}\ndata: "
    return head.encode() + data + b"\n\n"


def number_chunk(chunk: list[Change]) -> list[tuple[Change, int, bool]]:
    """Each change of a chunk of whole revisions with its index in its revision and whether it
    is the revision's last."""
    out: list[tuple[Change, int, bool]] = []
    index = 0
    for position, change in enumerate(chunk):
        if position and chunk[position - 1].revision == change.revision:
            index += 1
        else:
            index = 0
        last = position + 1 == len(chunk) or chunk[position + 1].revision != change.revision
        out.append((change, index, last))
    return out


@dataclass(eq=False, slots=True)
class Watcher:
    """One stream's (or long poll's) filter and queue."""

    prefix: str
    exact: bool  # ``prefix`` is one key, not a prefix
    limit: int
    queue: deque[Event] = field(default_factory=deque)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    overflowed: bool = False
    closed: bool = False  # the server is shutting down or the store closed
    queued_bytes: int = 0
    heartbeat_due: bool = False  # the hub's timer asks for a comment line

    def matches(self, key: str) -> bool:
        return key == self.prefix if self.exact else key.startswith(self.prefix)

    def push(self, event: Event) -> None:
        if self.overflowed:
            return
        size = self.queued_bytes + len(event[3])
        if len(self.queue) >= self.limit or size > QUEUE_BYTES:
            self.overflowed = True
            self.queue.clear()  # memory stays bounded: the client resumes from its last id
            self.queued_bytes = 0
        else:
            self.queue.append(event)
            self.queued_bytes = size
        self.ready.set()

    def pop(self) -> Event:
        """The oldest event queued (the queue must not be empty). A stream takes its events one
        at a time: those not sent yet still count against the queue's bounds."""
        event = self.queue.popleft()
        self.queued_bytes -= len(event[3])
        return event

    def take(self) -> list[Event]:
        """Every event queued, in order; the queue is empty after."""
        events = list(self.queue)
        self.queue.clear()
        self.queued_bytes = 0
        return events

    def end(self) -> None:
        self.closed = True
        self.ready.set()

    def beat(self) -> None:
        self.heartbeat_due = True
        self.ready.set()


class WatchHub:
    """Who watches what, and the task that reads the feed for all of them."""

    def __init__(
        self,
        store: Store,
        *,
        max_watchers: int,
        queue_events: int,
        heartbeat_seconds: float = 15.0,
        stop_requested: Callable[[], bool] | None = None,
    ) -> None:
        self._store = store
        self._heartbeat_seconds = heartbeat_seconds
        self._max_watchers = max_watchers
        self._queue_events = queue_events
        self._stop_requested = stop_requested
        self._prefixes: dict[int, dict[str, set[Watcher]]] = {}  # length -> prefix -> watchers
        self._exact: dict[str, set[Watcher]] = {}
        self._count = 0
        # Slots reserved for streams not started yet, oldest first (all reserve the same time).
        self._reservations: deque[Reservation] = deque()
        self._reserved = 0  # how many of them are live
        self.position = store.revision  # every revision up to here is dispatched
        self._task: asyncio.Task[None] | None = None
        self._stopper: asyncio.Task[None] | None = None
        self._beater: asyncio.Task[None] | None = None
        self.closed = False
        # Set while someone watches: with nobody, the hub does not wake on every write.
        self._wanted = asyncio.Event()

    @property
    def watchers(self) -> int:
        return self._count

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="filekv-watch-hub")
        if self._stop_requested is not None:
            self._stopper = asyncio.create_task(self._watch_for_stop(), name="filekv-watch-stop")
        self._beater = asyncio.create_task(self._heartbeats(), name="filekv-watch-heartbeat")

    async def stop(self) -> None:
        self._end_all()
        for task in (self._task, self._stopper, self._beater):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    def check_room(self) -> None:
        """TooManyWatchers (503) if no other watcher may be added now (reserved slots count)."""
        self._lapse()
        if self._count + self._reserved >= self._max_watchers:
            raise TooManyWatchers(
                f"the server already serves {self._max_watchers} watchers (watch_max_watchers)"
            )

    def reserve(self) -> Reservation:
        """A slot for a stream about to start (TooManyWatchers if none is free), taken at once:
        the route answers 503 itself, not the stream an ``overflow`` once it has started. The
        stream claims it (``add``); unclaimed, it is free again after ``RESERVATION_SECONDS``
        or once ``release``d."""
        self.check_room()
        reservation = Reservation(time.monotonic() + RESERVATION_SECONDS)
        self._reservations.append(reservation)
        self._reserved += 1
        return reservation

    def release(self, reservation: Reservation) -> None:
        """Give back a slot reserved and not claimed (no-op otherwise)."""
        if reservation.live:
            reservation.live = False
            self._reserved -= 1

    def _lapse(self) -> None:
        # Amortized O(1): each reservation is appended and popped once. Claimed or released
        # ones wait behind a live one at most RESERVATION_SECONDS.
        now = time.monotonic()
        queue = self._reservations
        while queue and (not queue[0].live or queue[0].deadline <= now):
            self.release(queue.popleft())

    def add(
        self, prefix: str, *, exact: bool = False, reservation: Reservation | None = None
    ) -> Watcher:
        """A new watcher, dispatched every change after ``self.position`` from now on; in the
        slot of ``reservation`` if it is still live, else in a free one (TooManyWatchers)."""
        if reservation is not None and reservation.live:
            self.release(reservation)  # the slot passes to the watcher
        else:
            self.check_room()
        watcher = Watcher(prefix, exact, self._queue_events)
        if self.closed:
            watcher.end()
        if not self._count and not self._wanted.is_set():
            # The hub was idle: it goes on from now, which is no later than anything the new
            # watcher's own catch-up reads (that starts after this returns).
            self.position = self._store.revision
            self._wanted.set()
        if exact:
            self._exact.setdefault(prefix, set()).add(watcher)
        else:
            self._prefixes.setdefault(len(prefix), {}).setdefault(prefix, set()).add(watcher)
        self._count += 1
        return watcher

    def remove(self, watcher: Watcher) -> None:
        table = self._exact if watcher.exact else self._prefixes.get(len(watcher.prefix), {})
        group = table.get(watcher.prefix)
        if group is None or watcher not in group:
            return
        group.discard(watcher)
        self._count -= 1
        if not group:
            del table[watcher.prefix]
            if not watcher.exact and not table:
                del self._prefixes[len(watcher.prefix)]

    def dispatch(self, chunk: list[Change]) -> None:
        """Hand each change to the watchers whose filter it matches (on the event loop)."""
        now = time.time()
        prefixes = self._prefixes
        exact = self._exact
        for change, index, last in number_chunk(chunk):
            key = change.key
            event: Event | None = None
            groups = [exact[key]] if key in exact else []
            for length, table in prefixes.items():
                if length <= len(key):
                    group = table.get(key[:length])
                    if group:
                        groups.append(group)
            for group in groups:
                if event is None:
                    event = (
                        change.revision,
                        index,
                        event_id(change.revision, index, last),
                        format_event(change, index, last, now),
                    )
                for watcher in group:
                    watcher.push(event)
        if chunk:
            self.position = chunk[-1].revision

    async def _run(self) -> None:
        try:
            while True:
                await self._wanted.wait()
                try:
                    async for chunk in self._store.achange_chunks(after=self.position):
                        self.dispatch(chunk)
                        if not self._count:  # the last watcher left: idle until the next
                            self._wanted.clear()
                            break
                except Compacted:
                    # The hub fell further behind than the buffer and the history reach (a
                    # starved loop): every watcher gets overflow and resumes by itself (or
                    # hears 410); the hub goes on from now.
                    log.warning("the watch hub fell behind the change history; watchers resume")
                    self._overflow_all()
                    self.position = self._store.revision
        except StoreClosed:
            pass
        except Exception:
            log.exception("the watch hub stopped reading the change feed")
        finally:
            self._end_all()

    def _overflow_all(self) -> None:
        for table in [self._exact, *self._prefixes.values()]:
            for group in table.values():
                for watcher in group:
                    watcher.overflowed = True
                    watcher.take()
                    watcher.ready.set()

    async def _watch_for_stop(self) -> None:
        # uvicorn waits for open responses before it shuts the application down, and a watch
        # stream never ends by itself: end them all once the server is told to stop.
        assert self._stop_requested is not None
        while not self._stop_requested():
            await asyncio.sleep(STOP_POLL_SECONDS)
        self._end_all()

    async def _heartbeats(self) -> None:
        # One timer for every stream: a timeout per stream and per wait (asyncio.wait_for)
        # cost more than the event itself at thousands of events a second.
        while True:
            await asyncio.sleep(self._heartbeat_seconds)
            for watcher in self._all():
                watcher.beat()

    def _all(self) -> list[Watcher]:
        return [
            watcher
            for table in [self._exact, *self._prefixes.values()]
            for group in table.values()
            for watcher in group
        ]

    def _end_all(self) -> None:
        self.closed = True
        for table in [self._exact, *self._prefixes.values()]:
            for group in table.values():
                for watcher in group:
                    watcher.end()
