"""``slices.py``: the sliced passes give exactly what the plain calls give, across slice edges."""

from __future__ import annotations

import random
from operator import add
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import filekv.engine.slices as slices
from filekv.engine.hint import HASH_MASK, HintColumns, decode_hint, encode_hint, pack, value_order
from filekv.engine.slices import sliced_map, sliced_sorted


@pytest.fixture(autouse=True)
def small_slices(monkeypatch: Any) -> None:
    # Slices of 3: every size below crosses several slice edges (the real size is 4096); runs
    # merged two by two up to 6 items, then by heapq.merge: both kinds of merge are exercised.
    monkeypatch.setattr(slices, "SLICE", 3)
    monkeypatch.setattr(slices, "MERGE_RUN", 6)


@given(st.lists(st.integers(-5, 5), max_size=40))
def test_sliced_sorted_is_sorted_and_stable(items: list[int]) -> None:
    tagged = list(enumerate(items))  # equal items keep their order: the tag tells
    assert sliced_sorted(items) == sorted(items)
    assert sliced_sorted(tagged, key=lambda pair: pair[1]) == sorted(tagged, key=lambda p: p[1])


@given(st.lists(st.integers(0, 9), max_size=40))
def test_sliced_map_is_map(items: list[int]) -> None:
    assert sliced_map(str, items) == list(map(str, items))
    assert sliced_map(add, items, items[::-1]) == list(map(add, items, items[::-1]))


@given(st.lists(st.integers(0, 6), max_size=40))
def test_value_order_sliced_as_in_one_pass(hashes: list[int]) -> None:
    # The plain algorithm: positions by hash, equal hashes in position order.
    by_hash = sorted(range(len(hashes)), key=lambda i: (hashes[i], i))
    assert value_order(hashes) == (by_hash, [hashes[i] for i in by_hash])


def test_a_hint_of_many_slices_round_trips() -> None:
    # Real slice size here: 10,000 keys are three slices of the keys block and of every pass.
    slices.SLICE = 4096
    slices.MERGE_RUN = 16 * 4096
    rng = random.Random(7)
    keys = sorted({f"key/{rng.getrandbits(40):012d}-é" for _ in range(10_000)})
    locations = [pack(1, 64 + 40 * i, 5, i + 1, rng.randrange(3000)) for i in range(len(keys))]
    hint = HintColumns(1, len(keys), 0, keys, locations, deleted=keys[:5000:7])
    decoded = decode_hint(encode_hint(hint))
    assert decoded.keys == keys
    assert list(decoded.locations) == locations
    assert decoded.deleted == keys[:5000:7]
    hashes = [location & HASH_MASK for location in locations]
    assert (list(decoded.by_hash), list(decoded.hashes)) == value_order(hashes)
