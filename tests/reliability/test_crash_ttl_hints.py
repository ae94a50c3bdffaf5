"""SIGKILL while the store's background work runs: TTL expiry sweeps, hint writing, rotation of
tiny segments, automatic compaction, batches and commits.

``tests/engine/test_crash.py`` kills writers of puts and transactions (and a compaction loop);
here a writer process (this file, run as a script) also writes keys that expire within tens
of milliseconds, so the expiry sweeper writes ``expire`` records all the time, on 4 KiB segments
whose active part is hinted every KiB, with automatic compaction at low thresholds, so that the
kill lands inside a sweep, a hint, a seal or a compaction as often as inside a write. Each
operation is announced before the call and acknowledged after it. After each kill the folder is
reopened (it carries over to the next round) and checked:

- every key holds its last acknowledged value, or the value of the one operation in flight;
  a key whose value was put with a short TTL may be gone instead (it expired);
- the operation in flight, a batch or a commit of many keys, is there whole or not at all;
- ``check()`` passes. Run with ``FILEKV_SOAK=1`` for 60 rounds per durability mode.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from filekv.engine import Store

if not __package__:  # run by path as the writer: sys.path[0] is tests/reliability/
    sys.path[0] = str(Path(__file__).resolve().parent.parent)
from support import SOAK

ROUNDS = 60 if SOAK else 8
SHORT_TTL = 0.02
KEYS = 24

Effects = dict[str, list]  # key -> [value hex or None, expires soon]


def _writer(folder: Path, fsync: str, seed: int) -> None:
    """The child: write until killed; one ``I`` line (intent) and one ``A`` line (ack) per op."""
    from filekv.engine.batch import Delete, Put

    rng = random.Random(seed)
    db = Store.open(
        folder,
        fsync=fsync,
        segment_bytes=4096,
        active_hint_bytes=1024,
        auto_compact=True,
        compact_min_bytes=4096,
        compact_dead_ratio=0.3,
        watch_history=0,
        expiry_sweep_seconds=0.01,
    )
    os.write(1, b"READY\n")
    n = 0
    while True:
        n += 1
        choice = rng.random()
        effects: Effects = {}
        if choice < 0.4:
            key = f"k{rng.randrange(KEYS)}"
            value = (b"%s:%d:" % (key.encode(), n)) * rng.randrange(1, 12)
            ttl = rng.choice([None, SHORT_TTL, 3600.0])
            effects[key] = [value.hex(), ttl == SHORT_TTL]
            _announce(n, effects)
            db.put(key, value, ttl=ttl)
        elif choice < 0.5:
            key = f"k{rng.randrange(KEYS)}"
            effects[key] = [None, False]
            _announce(n, effects)
            db.delete(key)
        elif choice < 0.75:
            ops: list[Put | Delete] = []
            for _ in range(rng.randrange(2, 40)):
                key = f"k{rng.randrange(KEYS)}"
                if rng.random() < 0.8:
                    value = (b"%s:%d:" % (key.encode(), n)) * rng.randrange(1, 20)
                    ops.append(Put(key, value))
                    effects[key] = [value.hex(), False]
                else:
                    ops.append(Delete(key))
                    effects[key] = [None, False]
            _announce(n, effects)
            db.batch(ops)
        else:
            with db.transaction() as tx:  # committed as the block ends
                for _ in range(rng.randrange(2, 30)):
                    key = f"k{rng.randrange(KEYS)}"
                    value = (b"%s:%d:" % (key.encode(), n)) * rng.randrange(1, 20)
                    tx.put(key, value)
                    effects[key] = [value.hex(), False]
                _announce(n, effects)
        os.write(1, b"A %d\n" % n)


def _announce(n: int, effects: Effects) -> None:
    os.write(1, f"I {n} {json.dumps(effects)}\n".encode())


def _kill_one(folder: Path, fsync: str, rng: random.Random) -> list[str]:
    """Run the writer, kill it at a random moment; its lines. They are read as they come: a
    pipe left unread fills (64 KiB), the writer then blocks in its announcement and every kill
    would land there, never inside an operation."""
    errors = folder.parent / "writer.err"  # a file: an unread pipe could block the writer too
    with errors.open("wb") as stderr:
        child = subprocess.Popen(
            [sys.executable, __file__, str(folder), fsync, str(rng.randrange(1 << 30))],
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
    assert child.stdout is not None
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(map(bytes.decode, child.stdout)))
    reader.start()
    deadline = time.monotonic() + 30
    while not lines and time.monotonic() < deadline and child.poll() is None:
        time.sleep(0.005)
    assert lines and lines[0] == "READY\n", errors.read_text()[-2000:]
    time.sleep(rng.uniform(0.05, 0.4))
    child.send_signal(signal.SIGKILL)
    child.wait()
    reader.join()
    assert child.returncode == -signal.SIGKILL, errors.read_text()[-2000:]
    return [line.rstrip("\n") for line in lines[1:]]


def _value(effect: list) -> bytes | None:
    return None if effect[0] is None else bytes.fromhex(effect[0])


@pytest.mark.parametrize("fsync", ["always", "never"])
def test_crash_ttl_hints_sigkill_during_sweeps_hints_and_compactions(
    tmp_path: Path, fsync: str
) -> None:
    rng = random.Random()
    folder = tmp_path / "db"
    state: dict[str, bytes | None] = {}  # acknowledged, as of the last check
    fading: set[str] = set()  # keys whose acknowledged value expires soon
    acknowledged = checked_in_flight = 0
    for round_no in range(ROUNDS):
        lines = _kill_one(folder, fsync, rng)
        intents: dict[int, Effects] = {}
        acks: list[int] = []
        for line in lines:
            kind, _, rest = line.partition(" ")
            if kind == "I":
                number, _, effects = rest.partition(" ")
                intents[int(number)] = json.loads(effects)
            elif kind == "A":
                acks.append(int(rest))
        for number in acks:
            for key, effect in intents.pop(number).items():
                state[key] = _value(effect)
                fading.discard(key)
                if effect[1]:
                    fading.add(key)
            acknowledged += 1
        assert len(intents) <= 1, "one operation at a time"
        in_flight = next(iter(intents.values()), {})
        db = Store.open(folder, fsync="never", auto_compact=False, expiry_sweep_seconds=0)
        try:
            db.check()
            got = {key: db.get(key) for key in {*state, *in_flight}}
        finally:
            db.close()
        applied = [got[key] == _value(effect) for key, effect in in_flight.items()]
        flight_done = bool(in_flight) and all(
            ok or (effect[1] and got[key] is None)
            for ok, (key, effect) in zip(applied, in_flight.items(), strict=True)
        )
        for key, value in got.items():
            before = state.get(key)
            if key in in_flight and flight_done:
                continue
            # (a key of the operation in flight lands here when only part of it is there)
            assert value == before or (value is None and key in fading), (
                f"round {round_no}, {fsync}: {key} = {value!r}, acknowledged {before!r}"
            )
        if flight_done:
            checked_in_flight += 1
            for key, effect in in_flight.items():
                state[key] = _value(effect)
                fading.discard(key)
                if effect[1]:
                    fading.add(key)
        for key in list(fading):
            if got.get(key) is None:
                state[key] = None
                fading.discard(key)
    print(
        f"crash_ttl_hints {fsync}: rounds={ROUNDS} acknowledged={acknowledged} "
        f"in_flight_found_applied={checked_in_flight} keys={len(state)}"
    )


if __name__ == "__main__":
    _writer(Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]))
