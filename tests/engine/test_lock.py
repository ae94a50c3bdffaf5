"""One store per folder: a second opener, in another process or this one, gets StoreLocked."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from support.engine_fixtures import OpenStore

from filekv.engine import Store, StoreLocked

TRY_OPEN = textwrap.dedent(
    """
    import sys
    from filekv.engine import Store, StoreLocked
    try:
        db = Store.open(sys.argv[1], fsync="never")
    except StoreLocked as error:
        print("locked", error)
        sys.exit(0)
    print("opened", db.get("k"))
    db.close()
    """
)

HOLD_OPEN = textwrap.dedent(
    """
    import sys, time
    from filekv.engine import Store
    db = Store.open(sys.argv[1], fsync="always")
    db.put("k", b"held")
    print("holding", flush=True)
    time.sleep(60)
    """
)


def _try_open(path: Path) -> str:
    result = subprocess.run(
        [sys.executable, "-c", TRY_OPEN, str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_lock_second_process_gets_store_locked(db_path: Path, open_store: OpenStore) -> None:
    db = open_store(db_path)
    db.put("k", b"v")
    assert _try_open(db_path).startswith("locked")
    db.close()
    assert _try_open(db_path) == "opened b'v'"


def test_lock_same_process_twice(db_path: Path, open_store: OpenStore) -> None:
    db = open_store(db_path)
    with pytest.raises(StoreLocked):
        Store.open(db_path, fsync="never")
    with pytest.raises(StoreLocked):  # a failed attempt must not disturb the holder's lock
        Store.open(str(db_path), fsync="never")
    db.put("k", b"still mine")
    db.close()
    again = open_store(db_path)
    assert again.get("k") == b"still mine"


def test_lock_released_when_holder_is_killed(db_path: Path, open_store: OpenStore) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_OPEN, str(db_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "holding"
        with pytest.raises(StoreLocked):
            Store.open(db_path, fsync="never")
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    db = open_store(db_path)
    assert db.get("k") == b"held"


def test_lock_other_process_cannot_open_while_this_one_holds(db_path: Path) -> None:
    with Store.open(db_path, fsync="never") as db:
        db.put("k", b"v")
        assert _try_open(db_path).startswith("locked")
    assert _try_open(db_path) == "opened b'v'"
