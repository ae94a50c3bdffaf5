"""Writer process for test_crash.py: several threads write until the parent SIGKILLs the process.

Run by path: crash_writer.py FOLDER MODE ROUND SEED       (MODE: "ops" or "compact"). The
parent imports it too, for ``THREADS``, ``KEYS_PER_THREAD`` and ``value_for``.

Protocol on stdout, one line per os.write (atomic below PIPE_BUF, so threads never interleave):

    READY                               the store is open
    I <json [thread, op, effects]>      intent: op ``op`` of ``thread`` is about to be written;
                                        effects maps key -> tag (put) or null (delete)
    A <thread> <op>                     acknowledged: the call returned
    C                                   a db.compact() returned

Each thread writes only keys ``t<thread>/k<n>``, one operation at a time, so the parent knows, per
thread, the acknowledged operations and at most one operation in flight. Values are
``value_for(tag)``: unique per write, long enough that compaction has work to do, and made of
valid-looking encoded records (version 1, and version 2 with guessed markers), so that a torn
value would show if it could steer recovery. Some transactions are filled up to the store's
``max_transaction_bytes`` (the write past it is refused) and then committed.
"""

from __future__ import annotations

import json
import os
import random
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from filekv.engine import Store, TransactionActive, TransactionTooLarge

if not __package__:  # run by path: sys.path[0] is tests/support/, the package is in tests/
    sys.path[0] = str(Path(__file__).resolve().parent.parent)
from support.planted import planted_value

THREADS = 4
KEYS_PER_THREAD = 6
PAD = 400
BIG = 16 << 10  # values of transactions filled to the limit: tags ending in "!"
MAX_TRANSACTION_BYTES = 40 << 10

T = TypeVar("T")


def value_for(tag: str) -> bytes:
    return planted_value((tag + "|").encode(), BIG if tag.endswith("!") else PAD)


def emit(line: str) -> None:
    os.write(1, (line + "\n").encode())


def retry(call: Callable[[], T]) -> T:
    """Another thread's transaction makes the store read-only for a moment: wait and retry."""
    while True:
        try:
            return call()
        except TransactionActive:
            time.sleep(0.0005)


def worker(db: Store, thread: int, round_no: int, seed: int) -> None:
    rng = random.Random(seed * 1000 + thread)
    op = 0
    while True:
        op += 1
        tag = f"{round_no}:{thread}:{op}"
        choice = rng.random()
        if choice < 0.55:
            key = f"t{thread}/k{rng.randrange(KEYS_PER_THREAD)}"
            emit("I " + json.dumps([thread, op, {key: tag}]))
            retry(lambda key=key, tag=tag: db.put(key, value_for(tag)))
        elif choice < 0.65:
            key = f"t{thread}/k{rng.randrange(KEYS_PER_THREAD)}"
            emit("I " + json.dumps([thread, op, {key: None}]))
            retry(lambda key=key: db.delete(key))
        elif choice < 0.72:
            tx = retry(db.transaction)
            filled: dict[str, str | None] = {}
            for step in range(KEYS_PER_THREAD):  # 6 x 16 KiB: the limit comes first
                key = f"t{thread}/k{step}"
                step_tag = f"{tag}:{step}!"
                try:
                    tx.put(key, value_for(step_tag))
                except TransactionTooLarge:
                    break
                filled[key] = step_tag
            emit("I " + json.dumps([thread, op, filled]))
            tx.commit()
        else:
            tx = retry(db.transaction)
            levels: list[dict[str, str | None]] = [{}]
            for step in range(rng.randint(2, 10)):
                action = rng.random()
                key = f"t{thread}/k{rng.randrange(KEYS_PER_THREAD)}"
                if action < 0.5:
                    step_tag = f"{tag}:{step}"
                    tx.put(key, value_for(step_tag))
                    levels[-1][key] = step_tag
                elif action < 0.65:
                    tx.delete(key)
                    levels[-1][key] = None
                elif action < 0.85:
                    tx.begin()
                    levels.append({})
                elif len(levels) > 1:
                    tx.rollback()
                    levels.pop()
            effects: dict[str, str | None] = {}
            for level in levels:
                effects.update(level)
            emit("I " + json.dumps([thread, op, effects]))
            tx.commit()
        emit(f"A {thread} {op}")


def compactor(db: Store) -> None:
    while True:
        retry(db.compact)
        emit("C")
        time.sleep(0.002)


def main() -> None:
    folder, mode, round_no, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    options: dict[str, object] = {
        "fsync": "always",
        "max_transaction_bytes": MAX_TRANSACTION_BYTES,
        # The active segment's hint every 4 KiB it grows: a kill lands while one is written,
        # and every reopen starts its replay where the last one ends.
        "active_hint_bytes": 4 << 10,
    }
    if mode == "compact":
        options.update(segment_bytes=8 << 10, compact_min_bytes=8 << 10, compact_dead_ratio=0.2)
    db = Store.open(folder, **options)  # type: ignore[arg-type]
    emit("READY")
    threads = [
        threading.Thread(target=worker, args=(db, t, round_no, seed), daemon=True)
        for t in range(THREADS)
    ]
    if mode == "compact":
        threads.append(threading.Thread(target=compactor, args=(db,), daemon=True))
    for thread in threads:
        thread.start()
    while all(thread.is_alive() for thread in threads):
        time.sleep(0.01)
    # A thread died: its traceback is on stderr; exit non-zero so the parent reports it.
    os._exit(3)


if __name__ == "__main__":
    main()
