"""The columns' keys in chunks (``key_chunks.py``) against a sorted list: built as views of a
loaded key list (with entry numbers or without), then keys inserted among and after the held
ones, a step at a time. Every position, entry number, range and iteration agrees with the model,
and the chunks a step started from are left as they were (snapshots keep them)."""

from __future__ import annotations

import gc
from array import array
from bisect import bisect_left, bisect_right
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from filekv.engine import key_chunks
from filekv.engine.key_chunks import KeyChunks

NAMES = st.text(alphabet="abcdé", min_size=1, max_size=4)


def _agrees(chunks: KeyChunks, model: dict[str, int], all_keys: list[str]) -> None:
    chunks.check(all_keys)
    keys = sorted(model)
    assert list(chunks) == keys and len(chunks) == len(keys)
    assert chunks.last_key() == (keys[-1] if keys else None)
    assert list(chunks.entry_numbers()) == [model[key] for key in keys]
    guess = 0
    for key in keys:
        position = chunks.position(key)
        assert position >= 0 and chunks.entry_at(position) == model[key]
        assert chunks.position_near(key, guess) == position
        guess = position + 1
    probes = [*keys, "", "a", "ab", "c", "dd", "éé", "zz", *(key + "a" for key in keys[:5])]
    for probe in probes:
        if probe not in model:
            assert chunks.position(probe) == -1
            assert chunks.position_near(probe, guess) == -1
        assert list(chunks.keys_from(probe, after=False)) == keys[bisect_left(keys, probe) :]
        assert list(chunks.keys_from(probe, after=True)) == keys[bisect_right(keys, probe) :]
        for end in (None, "b", "d", probe + "a"):
            stop = len(keys) if end is None else bisect_left(keys, end)
            expected = keys[bisect_left(keys, probe) : stop]
            assert chunks.keys_between(probe, end) == expected


@settings(max_examples=300, deadline=None)
@given(
    loaded=st.lists(NAMES, unique=True, max_size=30),
    numbered=st.booleans(),
    steps=st.lists(st.lists(NAMES, unique=True, max_size=20), max_size=6),
    chunk=st.sampled_from([1, 2, 3, 256]),
)
def test_key_chunks_agree_with_a_sorted_list(
    loaded: list[str], numbered: bool, steps: list[list[str]], chunk: int
) -> None:
    saved = key_chunks.CHUNK
    key_chunks.CHUNK = chunk
    try:
        _steps_agree(loaded, numbered, steps)
    finally:
        key_chunks.CHUNK = saved


def _steps_agree(loaded: list[str], numbered: bool, steps: list[list[str]]) -> None:
    keys = sorted(loaded)
    if numbered:  # as an open that merged hints: entry numbers of their own, in another list
        all_keys = [*keys[::-1], "zzzz"]
        at: Any = array("I", [len(keys) - 1 - i for i in range(len(keys))])
        chunks = KeyChunks.viewing(keys, at)
    else:  # as one hint, or a first fold: entry number = position
        all_keys = list(keys)
        chunks = KeyChunks.viewing(all_keys, None)
    model = {key: all_keys.index(key) for key in keys}
    _agrees(chunks, model, all_keys)
    for step in steps:
        new = sorted(set(step) - model.keys())
        before, seen = chunks, (list(chunks), list(chunks.entry_numbers()))
        first = len(all_keys)
        chunks = chunks.inserted(new, first, all_keys)
        all_keys += new
        model.update(zip(new, range(first, first + len(new)), strict=True))
        _agrees(chunks, model, all_keys)
        assert (list(before), list(before.entry_numbers())) == seen, "copy on write"


def test_key_chunks_split_a_chunk_that_takes_many_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keys inserted into one chunk until it holds twice CHUNK split it into pieces of CHUNK,
    each a tuple the cyclic collector stops tracking (a tracked list per chunk made each full
    collection visit every key: stalls of up to 1.6 s at ten million keys)."""
    monkeypatch.setattr(key_chunks, "CHUNK", 4)
    held = ["a", "m", "z"]
    chunks = KeyChunks.viewing(held, None)
    new = [f"b{i:02d}" for i in range(10)]
    chunks = chunks.inserted(new, 3, held)
    assert [len(piece) for piece in chunks._slices(0, 0)] == [4, 4, 4, 1]
    chunks.check([*held, *new])
    gc.collect()
    assert not any(map(gc.is_tracked, [*chunks._lists, *chunks._ats]))
