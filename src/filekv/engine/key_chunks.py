"""The columns' sorted keys, in chunks: where a key is, and its entry number.

Why chunks (docs/PERFORMANCE.md, issue 9): keys written in random order are folded into the
columns a step at a time, and each new key goes into the one chunk its key falls in: a
bisection of a few hundred keys and a copy of that chunk, about a dozen held keys touched. In
one sorted list the same step merged among every held key between two new ones: at ten million
keys, each a string somewhere in gigabytes, a cache miss or two apiece (a 32,768-key step into
2M held keys took 367 ms; a load of 10M random keys 939 s, against 271 s with no fold at all).

A chunk is a view: the keys ``lst[lo:hi]`` of some list, whose entry numbers are ``at[j]`` (an
``array``, or bytes of 4 per key) or, when ``at`` is None, ``j`` itself. Keys loaded from hints
or appended in key order stay views of the list they came in (no copy: slicing ten million keys
into chunks took 0.6 s of an open and 80 MB); a chunk gets keys of its own the first time a key
is inserted into it, and is split into pieces of ``CHUNK`` once it holds twice that. Its keys
are a tuple and its entry numbers bytes (4 per key), not a list and an ``array``: the cyclic
collector stops tracking a tuple of strings once it has looked at it and never tracks bytes,
where the chunks' lists and arrays it tracked brought on full collections that visit every key
(13-16 in a 3M-key random load against 1 before, up to 0.8 s each; a fold step of 1.6 s at 10M
keys).

Nothing here changes once built: ``inserted`` returns new chunks that share every chunk it did
not touch, so a snapshot keeps the chunks it has (``KeyColumns.frozen``) and a failure part way
through leaves the old ones whole.

A position is ``chunk << 32 | j``: valid until the next ``inserted``, checked by every user.

Owns the chunk lists; ``KeyColumns`` owns what the entry numbers point at.
"""

from __future__ import annotations

import sys
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Iterator, Sequence
from itertools import chain, repeat
from typing import TypeAlias

CHUNK = 256  # keys per chunk built (a search: 8 compares in it), half the most one holds
_SHIFT = 32
_LOW = (1 << _SHIFT) - 1
_ORDER = sys.byteorder  # of the entry numbers in bytes: array("I")'s own
_SEPARATOR = chr(0xDCFF)  # a lone surrogate: never in a key (keys are valid Unicode)


# A chunk's entry numbers: an array viewed from ``lo`` to ``hi``, bytes of its own, or None.
Numbers: TypeAlias = "array[int] | bytes | None"


class KeyChunks:
    """Sorted distinct keys in chunks, each key with an entry number."""

    __slots__ = ("_ats", "_count", "_firsts", "_his", "_lists", "_los")

    def __init__(
        self,
        lists: list[Sequence[str]],
        ats: list[Numbers],
        los: list[int],
        his: list[int],
        firsts: list[str],
        count: int,
    ) -> None:
        self._lists, self._ats, self._los, self._his = lists, ats, los, his
        # Each chunk's first key, copied into new strings that lie next to each other in memory:
        # a search bisects these first, then one chunk. Bisecting ten million keys directly
        # touches ~24 strings scattered over 640 MB, a cache and TLB miss each (4.3 us a search
        # at 10M keys on these machines; 3.6 us with a sample of every 64th key, the same with
        # chunks of 256).
        self._firsts = firsts
        self._count = count

    @classmethod
    def viewing(cls, keys: list[str], at: array[int] | None) -> KeyChunks:
        """Chunks viewing ``keys`` (sorted, distinct; entry numbers ``at``, None: positions)."""
        return cls([], [], [], [], [], 0).with_views(keys, at, 0, len(keys))

    def with_views(
        self, keys: list[str], at: array[int] | None, lo: int, hi: int, new: list[str] | None = None
    ) -> KeyChunks:
        """These chunks, then views of ``keys[lo:hi]`` (all after every key held). ``new``: those
        keys, when ``keys`` does not hold them yet (``inserted``: the caller appends them)."""
        lists, ats, his = self._lists, self._ats, self._his
        count = self._count + hi - lo
        offset = lo if new is not None else 0  # where keys[lo] is in ``new``
        if lists and lists[-1] is keys and ats[-1] is at and his[-1] == lo < hi:
            grown = min(hi, self._los[-1] + CHUNK)  # fill the last chunk up first (folds append)
            his = [*his[:-1], grown]  # a copy: these chunks stay as they are
            lo = grown
        starts = range(lo, hi, CHUNK)
        return KeyChunks(
            lists + list(repeat(keys, len(starts))),
            ats + list(repeat(at, len(starts))),
            self._los + list(starts),
            his + [min(start + CHUNK, hi) for start in starts],
            self._firsts
            + _copies((keys if new is None else new)[lo - offset : hi - offset : CHUNK]),
            count,
        )

    def __len__(self) -> int:
        return self._count

    def position(self, key: str) -> int:
        """Where ``key`` is, or -1."""
        c = bisect_right(self._firsts, key) - 1
        if c < 0:
            return -1  # before the first key
        lst, hi = self._lists[c], self._his[c]
        j = bisect_left(lst, key, self._los[c], hi)
        return c << _SHIFT | j if j < hi and lst[j] == key else -1

    def position_near(self, key: str, guess: int) -> int:
        """``position``, looking at ``guess`` first, then at the start of the next chunk (one
        compare when the caller walks keys in order that lie next to each other)."""
        c, j = guess >> _SHIFT, guess & _LOW
        lists = self._lists
        if c < len(lists):
            if self._los[c] <= j < self._his[c]:
                if lists[c][j] == key:
                    return guess
            elif j == self._his[c] and c + 1 < len(lists):
                c += 1
                j = self._los[c]
                if lists[c][j] == key:
                    return c << _SHIFT | j
        return self.position(key)

    def entry_at(self, position: int) -> int:
        """The entry number of the key at ``position``."""
        return _entry(self._ats[position >> _SHIFT], position & _LOW)

    def last_key(self) -> str | None:
        """The highest key, or None."""
        return self._lists[-1][self._his[-1] - 1] if self._lists else None

    def __iter__(self) -> Iterator[str]:
        return chain.from_iterable(self._slices(0, self._los[0] if self._los else 0))

    def keys_from(self, key: str, *, after: bool) -> Iterator[str]:
        """The keys from ``key`` on (``after``: strictly greater), in order."""
        return chain.from_iterable(self._slices(*self._seek(key, after=after)))

    def keys_between(self, start: str, end: str | None) -> list[str]:
        """The keys from ``start`` (included) to ``end`` (excluded; None: to the last)."""
        c, j = self._seek(start, after=False)
        if end is None:
            found: list[str] = []
            for piece in self._slices(c, j):
                found += piece
            return found
        stop_c, stop_j = self._seek(end, after=False)
        if (c, j) >= (stop_c, stop_j):
            return []
        if c == stop_c:
            return list(self._lists[c][j:stop_j]) if c < len(self._lists) else []
        found = []
        for n, piece in enumerate(self._slices(c, j), c):
            if n == stop_c:
                found += self._lists[n][self._los[n] : stop_j]
                break
            found += piece
        return found

    def _seek(self, key: str, *, after: bool) -> tuple[int, int]:
        """(chunk, j) of the first key >= ``key`` (> if ``after``); (chunks, 0): none."""
        firsts = self._firsts
        c = bisect_right(firsts, key) - 1
        if c < 0:
            return (0, self._los[0]) if firsts else (0, 0)
        find = bisect_right if after else bisect_left
        j = find(self._lists[c], key, self._los[c], self._his[c])
        if j == self._his[c]:
            c += 1
            j = self._los[c] if c < len(firsts) else 0
        return c, j

    def _slices(self, c: int, j: int) -> Iterator[Sequence[str]]:
        lists, los, his = self._lists, self._los, self._his
        if c < len(lists):
            yield lists[c][j : his[c]]
        for n in range(c + 1, len(lists)):
            yield lists[n][los[n] : his[n]]

    def entry_numbers(self) -> Iterator[int]:
        """Every key's entry number, in key order (C-level iteration: an open counts value
        bytes through it)."""
        return chain.from_iterable(
            range(lo, hi) if at is None else array("I", at[lo:hi] if type(at) is array else at)
            for at, lo, hi in zip(self._ats, self._los, self._his, strict=True)
        )

    def inserted(self, keys: list[str], first: int, all_keys: list[str]) -> KeyChunks:
        """These chunks with ``keys`` (sorted, none held) added, numbered ``first``, ``first``
        + 1 ... in ``all_keys`` (the list of every entry's key, which will hold them there).
        Keys after every held key become views of ``all_keys``; the others go into the chunk
        their key falls in."""
        last = self.last_key()
        cut = 0 if last is None else bisect_left(keys, last)  # those before the last held
        if not cut:
            return self.with_views(all_keys, None, first, first + len(keys), keys)
        lists, ats, los, his = list(self._lists), list(self._ats), list(self._los), list(self._his)
        firsts = list(self._firsts)
        full: list[int] = []  # chunks that reached twice CHUNK keys
        i = 0
        while i < cut:
            c = max(bisect_right(firsts, keys[i]) - 1, 0)
            end = cut if c + 1 == len(firsts) else bisect_left(keys, firsts[c + 1], i, cut)
            held = lists[c][los[c] : his[c]]
            numbers = ats[c]
            if numbers is None:
                held_at = array("I", range(los[c], his[c])).tobytes()
            elif type(numbers) is array:
                held_at = numbers[los[c] : his[c]].tobytes()
            else:  # a chunk of its own: from 0
                held_at = bytes(numbers)
            lists[c], ats[c] = _merged(held, held_at, keys[i:end], first + i)
            los[c], his[c] = 0, len(lists[c])
            if c == 0 and i == 0 and keys[0] < firsts[0]:
                firsts[0] = _copies([keys[0]])[0]
            if his[c] >= 2 * CHUNK:
                full.append(c)
            i = end
        chunks = KeyChunks(lists, ats, los, his, firsts, self._count + cut)
        if full:
            chunks = chunks.split(full)
        if cut < len(keys):
            chunks = chunks.with_views(all_keys, None, first + cut, first + len(keys), keys[cut:])
        return chunks

    def split(self, full: list[int]) -> KeyChunks:
        """A copy with each chunk of ``full`` (ascending; each with keys of its own) in pieces of
        CHUNK keys."""
        lists: list[Sequence[str]] = []
        ats: list[Numbers] = []
        los: list[int] = []
        his: list[int] = []
        firsts: list[str] = []
        done = 0
        for c in full:
            lists += self._lists[done:c]
            ats += self._ats[done:c]
            los += self._los[done:c]
            his += self._his[done:c]
            firsts += self._firsts[done:c]
            keys, at = self._lists[c], self._ats[c]
            assert type(at) is bytes
            starts = range(0, len(keys), CHUNK)
            lists += [keys[start : start + CHUNK] for start in starts]
            ats += [at[4 * start : 4 * (start + CHUNK)] for start in starts]
            los += repeat(0, len(starts))
            his += [min(CHUNK, len(keys) - start) for start in starts]
            firsts += _copies(keys[::CHUNK])
            done = c + 1
        lists += self._lists[done:]
        ats += self._ats[done:]
        los += self._los[done:]
        his += self._his[done:]
        firsts += self._firsts[done:]
        return KeyChunks(lists, ats, los, his, firsts, self._count)

    def check(self, all_keys: list[str]) -> None:
        """AssertionError unless the chunks are sorted, their firsts right, their count right,
        and each key's entry number names that key in ``all_keys``."""
        count = 0
        previous = None
        for c, (lst, at, lo, hi) in enumerate(
            zip(self._lists, self._ats, self._los, self._his, strict=True)
        ):
            if not lo < hi or hi - lo >= 2 * CHUNK:
                raise AssertionError(f"chunk {c} is empty or too large")
            if self._firsts[c] != lst[lo]:
                raise AssertionError(f"chunk {c}'s first key is stale")
            for j in range(lo, hi):
                key = lst[j]
                if previous is not None and previous >= key:
                    raise AssertionError("the chunks' keys are not sorted")
                if all_keys[_entry(at, j)] != key:
                    raise AssertionError(f"{key!r} has another key's entry number")
                previous = key
            count += hi - lo
        if count != self._count or len(self._firsts) != len(self._lists):
            raise AssertionError("the chunks' count is wrong")


def _merged(
    held: Sequence[str], held_at: bytes, new: list[str], first: int
) -> tuple[tuple[str, ...], bytes]:
    """``held`` with ``new`` (sorted, none held) inserted, and their entry numbers: ``new``'s
    are ``first`` on. A bisection per new key: a merge would compare every held key."""
    keys: list[str] = []
    at = bytearray()
    done = 0
    for number, key in enumerate(new, first):
        place = bisect_left(held, key, done)
        keys += held[done:place]
        at += held_at[4 * done : 4 * place]
        keys.append(key)
        at += number.to_bytes(4, _ORDER)
        done = place
    keys += held[done:]
    at += held_at[4 * done :]
    return tuple(keys), bytes(at)  # neither tracked by the cyclic collector


def _copies(keys: Sequence[str]) -> list[str]:
    """New strings equal to ``keys``, side by side in memory."""
    return _SEPARATOR.join(keys).split(_SEPARATOR) if keys else []


def _entry(at: Numbers, j: int) -> int:
    """The entry number at ``j`` of a chunk's numbers."""
    if at is None:
        return j
    if type(at) is bytes:
        return int.from_bytes(at[4 * j : 4 * j + 4], _ORDER)
    return at[j]
