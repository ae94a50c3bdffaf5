"""Crash safety with real SIGKILL: every acknowledged write survives, no transaction is half there.

A writer process (support/crash_writer.py: several threads, fsync="always", puts, deletes and nested
transactions) announces each operation's effects before the call and acknowledges it after. The
parent kills it at a random moment, reopens the folder and checks, per thread:

- the state equals "every acknowledged operation applied", or that plus the one operation that
  was in flight (announced, not acknowledged) applied *whole* — never a part of it;
- values are exactly what was written.

The folder is kept across rounds, so each round also recovers from the previous crash.
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
from dataclasses import dataclass, field
from pathlib import Path

import support.crash_writer
from support import SOAK
from support.crash_writer import KEYS_PER_THREAD, THREADS, value_for

from filekv.engine import Store

ROUNDS = 200 if SOAK else 20
WRITER = Path(support.crash_writer.__file__)

State = dict[str, str]  # key -> tag of its value; absent keys are absent


@dataclass
class Round:
    lines: list[str] = field(default_factory=list)
    returncode: int | None = None
    stderr: str = ""
    ready: bool = False


def _run_writer(folder: Path, mode: str, round_no: int, rng: random.Random) -> Round:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [
            sys.executable,
            str(WRITER),
            str(folder),
            mode,
            str(round_no),
            str(rng.randrange(1 << 30)),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    result = Round()
    ready = threading.Event()

    def read() -> None:
        assert process.stdout is not None
        buffer = b""
        while chunk := process.stdout.read1(65536):  # type: ignore[attr-defined]
            buffer += chunk
            *complete, buffer = buffer.split(b"\n")
            for raw in complete:
                line = raw.decode()
                if line == "READY":
                    ready.set()
                result.lines.append(line)
        # a line without its newline was cut by the kill: it does not count

    reader = threading.Thread(target=read)
    reader.start()
    if round_no % 5 == 4:
        time.sleep(rng.uniform(0.0, 0.4))  # may kill it while it opens and recovers
    else:
        ready.wait(timeout=30)
        time.sleep(rng.uniform(0.0, 0.35))
    os.kill(process.pid, signal.SIGKILL)
    result.returncode = process.wait()
    reader.join()
    assert process.stderr is not None
    result.stderr = process.stderr.read().decode()
    process.stderr.close()
    process.stdout.close()  # type: ignore[union-attr]
    result.ready = ready.is_set()
    return result


def _apply(state: State, effects: dict[str, str | None]) -> State:
    new = dict(state)
    for key, tag in effects.items():
        if tag is None:
            new.pop(key, None)
        else:
            new[key] = tag
    return new


def _observed(db: Store) -> State:
    state: State = {}
    for key in db.scan():
        raw = db.get(key)
        assert raw is not None, f"scan lists {key!r} but get returns None"
        tag = raw.split(b"|", 1)[0].decode()
        assert raw == value_for(tag), f"{key!r} holds a damaged value {raw[:40]!r}"
        state[key] = tag
    return state


def _thread_keys(state: State, thread: int) -> State:
    return {k: v for k, v in state.items() if k.startswith(f"t{thread}/")}


def _verify_round(before: State, result: Round, observed: State, round_no: int) -> None:
    intents: dict[tuple[int, int], dict[str, str | None]] = {}
    acked: set[tuple[int, int]] = set()
    for line in result.lines:
        if line.startswith("I "):
            thread, op, effects = json.loads(line[2:])
            intents[(thread, op)] = effects
        elif line.startswith("A "):
            _, thread, op = line.split()
            acked.add((int(thread), int(op)))
    assert acked <= set(intents), "acknowledged an operation it never announced"
    assert set(observed) <= {f"t{t}/k{k}" for t in range(THREADS) for k in range(KEYS_PER_THREAD)}
    for thread in range(THREADS):
        ops = sorted(op for (t, op) in intents if t == thread)
        expected = _thread_keys(before, thread)
        in_flight: dict[str, str | None] | None = None
        for op in ops:
            if (thread, op) in acked:
                assert in_flight is None, f"thread {thread}: op after an unacknowledged one"
                expected = _apply(expected, intents[(thread, op)])
            else:
                in_flight = intents[(thread, op)]
        found = _thread_keys(observed, thread)
        if found == expected:
            continue
        if in_flight is not None and found == _apply(expected, in_flight):
            continue
        lost = {k: v for k, v in expected.items() if found.get(k) != v}
        raise AssertionError(
            f"round {round_no}, thread {thread}: state is neither the acknowledged writes nor "
            f"those plus the whole in-flight operation.\n expected {expected}\n found    {found}\n"
            f" in flight {in_flight}\n differing from acknowledged: {lost}"
        )


def _crash_rounds(folder: Path, mode: str, seed: int) -> tuple[int, int]:
    rng = random.Random(seed)
    state: State = {}
    acknowledged = compactions = 0
    for round_no in range(ROUNDS):
        result = _run_writer(folder, mode, round_no, rng)
        assert result.returncode == -signal.SIGKILL, (
            f"round {round_no}: writer exited by itself ({result.returncode}):\n{result.stderr}"
        )
        assert "Traceback" not in result.stderr, f"round {round_no}:\n{result.stderr}"
        db = Store.open(folder, fsync="never", auto_compact=False)
        try:
            observed = _observed(db)
            _verify_round(state, result, observed, round_no)
            db.check()
        finally:
            db.close()
        state = observed
        acknowledged += sum(line.startswith("A ") for line in result.lines)
        compactions += result.lines.count("C")
    return acknowledged, compactions


def test_crash_sigkill_keeps_acknowledged_writes(tmp_path: Path) -> None:
    acknowledged, _ = _crash_rounds(tmp_path / "db", "ops", seed=1)
    assert acknowledged >= ROUNDS, "the writer acknowledged too little for the test to mean much"


def test_crash_sigkill_during_compaction(tmp_path: Path) -> None:
    acknowledged, compactions = _crash_rounds(tmp_path / "db", "compact", seed=2)
    assert acknowledged >= ROUNDS
    assert compactions >= ROUNDS // 2, f"only {compactions} compactions finished in {ROUNDS} rounds"


def test_crash_leftovers_are_cleaned_on_open(tmp_path: Path) -> None:
    """After crashes mid-compaction, reopening cleans temporary files: no unknown files remain."""
    folder = tmp_path / "db"
    rng = random.Random(3)
    for round_no in range(5):
        _run_writer(folder, "compact", round_no, rng)
    with Store.open(folder, fsync="never", auto_compact=False) as db:
        db.compact()
        db.check()
    names = sorted(p.name for p in folder.iterdir())
    unknown = [n for n in names if n != "LOCK" and not n.endswith((".seg", ".hint", ".broken"))]
    assert not unknown, f"files left behind: {unknown}"
