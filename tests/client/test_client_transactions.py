"""``transaction()`` levels (commit, release, rollback per level), ``wait_locked`` and ``batch``.

What each block left behind is read back by a second, anonymous client: it sees committed data
only.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from clientkit import Connect, login_new_user, unique
from support.server import Server

from filekv.client import Client, Conflict, Entry, Locked, PreconditionFailed


class Boom(Exception):
    pass


def _committed(server: Server, *keys: str) -> dict[str, str | None]:
    with Client(server.url) as reader:
        return {key: reader.get(key, default=None) for key in keys}


def test_transaction_commits_on_normal_exit(user: Any, server: Server) -> None:
    a, b = unique("a"), unique("b")
    with user.transaction() as depth:
        assert depth == 1
        assert user.put(a, "1") is None  # staged: no revision yet
        assert user.entry(a) == Entry(a, "1", None)
        assert _committed(server, a) == {a: None}
        with user.transaction() as inner:
            assert inner == 2
            user.put(b, "2")
            assert user.transaction_status()["depth"] == 2
        assert user.transaction_status()["depth"] == 1  # released into level 1
        assert _committed(server, b) == {b: None}
    status = user.transaction_status()
    assert (status["active"], status["mine"], status["depth"]) == (False, False, 0)
    assert _committed(server, a, b) == {a: "1", b: "2"}
    assert isinstance(user.entry(a).revision, int)


def test_transaction_status_fields(user: Any) -> None:
    with user.transaction():
        status = user.transaction_status()
        assert set(status) == {"active", "mine", "depth", "expires_in"}
        assert status["active"] is True and status["mine"] is True and status["depth"] == 1
        assert 0 < status["expires_in"] <= 30
    assert user.transaction_status()["active"] is False


def test_transaction_inner_exception_rolls_back_that_level_only(user: Any, server: Server) -> None:
    a, b = unique("a"), unique("b")
    with user.transaction():
        user.put(a, "1")
        with pytest.raises(Boom), user.transaction():
            user.put(b, "2")
            user.put(a, "overwritten")
            raise Boom
        assert user.transaction_status()["depth"] == 1
        assert user.get(a) == "1" and user.get(b, default=None) is None
    assert _committed(server, a, b) == {a: "1", b: None}


def test_transaction_outer_exception_rolls_back_released_levels(user: Any, server: Server) -> None:
    a, b = unique("a"), unique("b")
    with pytest.raises(Boom), user.transaction():
        user.put(a, "1")
        with user.transaction():
            user.put(b, "2")
        raise Boom
    assert user.transaction_status()["depth"] == 0
    assert _committed(server, a, b) == {a: None, b: None}


def test_transaction_middle_of_three_levels_raises(user: Any, server: Server) -> None:
    a, b, c = unique("a"), unique("b"), unique("c")
    with user.transaction():
        user.put(a, "1")
        with pytest.raises(Boom), user.transaction():
            user.put(b, "2")
            with user.transaction() as depth:
                assert depth == 3
                user.put(c, "3")
            assert user.transaction_status()["depth"] == 2
            raise Boom
        assert user.transaction_status()["depth"] == 1
    assert _committed(server, a, b, c) == {a: "1", b: None, c: None}


def test_transaction_innermost_of_three_raises(user: Any, server: Server) -> None:
    a, b, c = unique("a"), unique("b"), unique("c")
    with user.transaction():
        user.put(a, "1")
        with user.transaction():
            user.put(b, "2")
            with pytest.raises(Boom), user.transaction():
                user.put(c, "3")
                raise Boom
    assert _committed(server, a, b, c) == {a: "1", b: "2", c: None}


def test_transaction_delete_staged_and_committed(user: Any, server: Server) -> None:
    a = unique("a")
    user.put(a, "old")
    with user.transaction():
        assert user.delete(a) is True  # staged
        assert user.get(a, default=None) is None
        assert _committed(server, a) == {a: "old"}
    assert _committed(server, a) == {a: None}


def test_transaction_explicit_calls(user: Any, server: Server) -> None:
    a, b = unique("a"), unique("b")
    assert user.begin() == 1
    user.put(a, "1")
    assert user.begin() == 2
    user.put(b, "2")
    assert user.rollback() == 1
    assert user.begin() == 2
    user.put(b, "3")
    assert user.release() == 1
    with pytest.raises(Conflict):  # at depth 1: commit, not release
        user.release()
    assert user.commit() == 2
    assert _committed(server, a, b) == {a: "1", b: "3"}
    with pytest.raises(Conflict) as conflict:
        user.commit()
    assert conflict.value.status == 409 and conflict.value.detail == "you hold no transaction"
    with pytest.raises(Conflict):
        user.rollback()


def test_transaction_other_clients_get_locked(connect: Connect, user: Any, server: Server) -> None:
    other = connect(server.url)
    login_new_user(other)
    key = unique("k")
    with user.transaction():
        with pytest.raises(Locked) as locked:
            other.put(key, "x")
        assert locked.value.status == 423
        assert locked.value.retry_after is not None and 0 < locked.value.retry_after <= 30
        assert "locked" in locked.value.detail
        with pytest.raises(Locked):
            other.begin()
        with pytest.raises(Locked):
            connect(server.url).delete(key)  # anonymous too
        assert other.transaction_status()["mine"] is False
    assert other.put(key, "x") is not None


def test_wait_locked_waits_for_the_holder(connect: Connect, short_lease_server: Server) -> None:
    url = short_lease_server.url
    key = unique("k")
    holder = Client(url)
    login_new_user(holder)
    holder.begin()
    holder.put(key, "holder")
    committed = threading.Event()

    def commit_soon() -> None:
        time.sleep(1.0)
        holder.commit()
        committed.set()

    waiter = connect(url, wait_locked=30.0)
    thread = threading.Thread(target=commit_soon)
    started = time.monotonic()
    thread.start()
    try:
        revision = waiter.put(key, "waiter")
    finally:
        thread.join(30)
        holder.close()
    assert committed.is_set()
    assert isinstance(revision, int)
    assert waiter.get(key) == "waiter"  # written after the holder's commit
    assert time.monotonic() - started < 25  # a bound on the wait, not a measurement


def test_wait_locked_is_capped(connect: Connect, short_lease_server: Server) -> None:
    url = short_lease_server.url
    key = unique("k")
    with Client(url) as holder:
        login_new_user(holder)
        holder.begin()
        try:
            waiter = connect(url, wait_locked=1.0)
            started = time.monotonic()
            with pytest.raises(Locked):
                waiter.put(key, "waiter")
            elapsed = time.monotonic() - started
            assert 0.9 <= elapsed < 2.9  # waited out the cap, not the 3 s lease
        finally:
            holder.rollback()
    assert _committed(short_lease_server, key) == {key: None}


def test_batch_applies_tuples_and_dicts(connect: Connect, server: Server) -> None:
    kv = connect(server.url)
    a, b, c = unique("a"), unique("b"), unique("c")
    old = kv.put(b, "old")
    assert isinstance(old, int)
    revision = kv.batch(
        [("put", a, "1"), ("delete", b), {"op": "put", "key": c, "value": "3", "expect": 0}]
    )
    assert isinstance(revision, int) and revision > old
    assert _committed(server, a, b, c) == {a: "1", b: None, c: "3"}
    assert kv.entry(a).revision == kv.entry(c).revision == revision
    assert kv.batch([("delete", unique("missing"))]) is not None  # no expect: not an error


def test_batch_failed_expect_applies_nothing(connect: Connect, server: Server) -> None:
    kv = connect(server.url)
    a, b = unique("a"), unique("b")
    rev = kv.put(b, "x")
    assert isinstance(rev, int)
    with pytest.raises(PreconditionFailed) as failed:
        kv.batch([("put", a, "1"), ("put", b, "y", rev + 1000)])
    assert "1" in failed.value.detail  # names the index of the failing op
    assert _committed(server, a, b) == {a: None, b: "x"}


def test_batch_inside_a_transaction_is_staged(user: Any, server: Server) -> None:
    a = unique("a")
    with user.transaction():
        assert user.batch([("put", a, "1")]) is None
        assert _committed(server, a) == {a: None}
    assert _committed(server, a) == {a: "1"}


def test_batch_rejects_malformed_ops(server: Server) -> None:
    with Client(server.url) as kv:
        with pytest.raises(ValueError):
            kv.batch([("get", "a")])
        with pytest.raises(ValueError):
            kv.batch([{"op": "merge", "key": "a"}])


def test_delete_says_whether_it_was_staged(user: Any, server: Server) -> None:
    """``delete`` returns True when staged in the transaction, False when applied at once: from
    the answer itself (``X-Filekv-Staged``), not from a second request."""
    a, b = unique("a"), unique("b")
    user.put(a, "1")
    user.put(b, "2")
    assert user.delete(a) is False
    assert _committed(server, a) == {a: None}
    with user.transaction():
        assert user.delete(b) is True
        assert _committed(server, b) == {b: "2"}
    assert _committed(server, b) == {b: None}
    with Client(server.url) as anonymous:
        anonymous.put(a, "again")
        assert anonymous.delete(a) is False
