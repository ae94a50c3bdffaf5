"""Model check under load: 64 concurrent clients, YCSB-like, every answer checked afterwards.

One ``filekv serve`` (``fsync=always``) on ``KEYS`` preloaded keys; 64 asyncio clients over one
``httpx.AsyncClient`` (64 connections) for ``DURATION`` seconds (10; 120 with ``FILEKV_SOAK=1``):
45 % reads and 45 % updates of zipfian keys (theta 0.99), 5 % finds (``GET /keys?value=``) of a
recently written value, 5 % scans (``GET /keys?prefix=``). Each update writes a unique value, so
every read, find and scan can be checked against the per-key histories
(``support.linearizability``): a value read was the latest at some point of the read, finds are
sound and complete, scans see exactly the keys (none is ever deleted). Figures (ops/s, errors by
status, violations) print with ``-s``.
"""

from __future__ import annotations

import asyncio
import collections
import random
import time
from pathlib import Path

import httpx
import pytest
from support import SOAK
from support.linearizability import History, Zipf
from support.server import Server

from filekv.client._protocol import tls_verify

CLIENTS = 64
KEYS = 500
DURATION = 120.0 if SOAK else 10.0
PREFIXES = [f"ycsb/k{digit}" for digit in range(5)]  # keys are ycsb/k0000 .. ycsb/k0499


def key_name(rank: int) -> str:
    # Rank scattered over the key space (as YCSB hashes it), so hot keys are not all adjacent.
    return f"ycsb/k{(rank * 7919) % KEYS:04d}"


class Load:
    def __init__(self, http: httpx.AsyncClient, seed: int) -> None:
        self.http = http
        self.seed = seed
        self.history = History()
        self.zipf = Zipf(KEYS)
        self.reads: list[tuple[str, str | None, float, float]] = []
        self.finds: list[tuple[str, list[str], float, float]] = []
        self.scans: list[tuple[str, list[str]]] = []
        self.errors: collections.Counter[str] = collections.Counter()
        self.counts: collections.Counter[str] = collections.Counter()
        self.latest_started: dict[str, str] = {}

    async def update(self, key: str, value: str) -> None:
        write = self.history.begin_write(key, value, time.monotonic())
        self.latest_started[key] = value
        try:
            answer = await self.http.put(f"/keys/{key}", json={"value": value})
        except httpx.HTTPError as exc:
            self.errors[type(exc).__name__] += 1
            return
        if answer.status_code in (200, 201):
            write.end = time.monotonic()
        else:
            self.errors[f"PUT {answer.status_code}"] += 1

    async def read(self, key: str) -> None:
        start = time.monotonic()
        try:
            answer = await self.http.get(f"/keys/{key}")
        except httpx.HTTPError as exc:
            self.errors[type(exc).__name__] += 1
            return
        end = time.monotonic()
        if answer.status_code == 200:
            self.reads.append((key, answer.json()["value"], start, end))
        elif answer.status_code == 404:
            self.reads.append((key, None, start, end))
            self.errors["GET 404"] += 1
        else:
            self.errors[f"GET {answer.status_code}"] += 1

    async def find(self, value: str) -> None:
        start = time.monotonic()
        try:
            answer = await self.http.get("/keys", params={"value": value})
        except httpx.HTTPError as exc:
            self.errors[type(exc).__name__] += 1
            return
        if answer.status_code == 200:
            self.finds.append((value, answer.json()["keys"], start, time.monotonic()))
        else:
            self.errors[f"FIND {answer.status_code}"] += 1

    async def scan(self, prefix: str) -> None:
        try:
            answer = await self.http.get("/keys", params={"prefix": prefix, "limit": 1000})
        except httpx.HTTPError as exc:
            self.errors[type(exc).__name__] += 1
            return
        if answer.status_code == 200:
            self.scans.append((prefix, answer.json()["keys"]))
        else:
            self.errors[f"SCAN {answer.status_code}"] += 1

    async def client(self, number: int, deadline: float) -> None:
        rng = random.Random(self.seed * 1000 + number)
        sequence = 0
        while time.monotonic() < deadline:
            key = key_name(self.zipf.sample(rng))
            roll = rng.random()
            if roll < 0.45:
                self.counts["read"] += 1
                await self.read(key)
            elif roll < 0.90:
                sequence += 1
                self.counts["update"] += 1
                await self.update(key, f"c{number}-{sequence}")
            elif roll < 0.95:
                self.counts["find"] += 1
                await self.find(self.latest_started.get(key, "init-none"))
            else:
                self.counts["scan"] += 1
                await self.scan(rng.choice(PREFIXES))

    async def preload(self) -> None:
        semaphore = asyncio.Semaphore(CLIENTS)

        async def one(index: int) -> None:
            async with semaphore:
                await self.update(f"ycsb/k{index:04d}", f"init-{index}")

        await asyncio.gather(*(one(index) for index in range(KEYS)))

    def check(self) -> list[str]:
        self.history.freeze()
        violations = []
        for key, value, start, end in self.reads:
            if (why := self.history.check_read(key, value, start, end)) is not None:
                violations.append(why)
        for value, keys, start, end in self.finds:
            if (why := self.history.check_find(value, keys, start, end)) is not None:
                violations.append(why)
        every_key = sorted(f"ycsb/k{index:04d}" for index in range(KEYS))
        for prefix, keys in self.scans:
            expected = [key for key in every_key if key.startswith(prefix)]
            if keys != expected:
                violations.append(f"scan {prefix}: {len(keys)} keys, expected {len(expected)}")
        return violations


async def run_load(url: str, seed: int) -> tuple[Load, float, int]:
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    async with httpx.AsyncClient(
        base_url=url, limits=limits, timeout=120, verify=tls_verify(url)
    ) as http:
        load = Load(http, seed)
        await load.preload()
        preload_errors = sum(load.errors.values())
        started = time.monotonic()
        deadline = started + DURATION
        await asyncio.gather(*(load.client(number, deadline) for number in range(CLIENTS)))
        elapsed = time.monotonic() - started
    return load, elapsed, preload_errors


@pytest.mark.timeout(900 if SOAK else 300)
def test_load_model_64_clients_every_answer_linearizable(tmp_path: Path) -> None:
    seed = random.randrange(1 << 30)
    server = Server(tmp_path / "data", tmp_path / "server.log", log_level="warning")
    server.start()
    try:
        load, elapsed, preload_errors = asyncio.run(run_load(server.url, seed))
    finally:
        server.stop()
    violations = load.check()
    operations = sum(load.counts.values())
    errors = dict(sorted(load.errors.items()))
    print(
        f"\nload_model: seed={seed} clients={CLIENTS} keys={KEYS} seconds={elapsed:.1f} "
        f"operations={operations} ops_per_s={operations / elapsed:.0f} "
        f"mix={dict(load.counts)} reads_checked={len(load.reads)} "
        f"finds_checked={len(load.finds)} scans_checked={len(load.scans)} "
        f"errors={errors} violations={len(violations)}"
    )
    assert preload_errors == 0
    assert load.reads and load.finds and load.scans
    assert not violations, "\n".join(violations[:30])
    assert not errors, errors


# -- the checker itself ---------------------------------------------------------------------


def _history() -> History:
    history = History()
    history.begin_write("k", "a", 0.0).end = 1.0
    history.begin_write("k", "b", 2.0).end = 3.0
    history.begin_write("k", "lost", 4.0)  # never acknowledged
    history.begin_write("j", "x", 0.0).end = 1.0
    history.freeze()
    return history


@pytest.mark.parametrize(
    ("key", "value", "start", "end", "bad"),
    [
        ("k", "a", 1.5, 1.6, False),  # latest
        ("k", "a", 2.5, 2.6, False),  # b in flight: either
        ("k", "b", 2.5, 2.6, False),
        ("k", "a", 3.5, 3.6, True),  # stale: b was over before the read
        ("k", "b", 0.5, 1.5, True),  # from the future
        ("k", "lost", 9.0, 9.5, False),  # a write in doubt may land at any time
        ("k", "x", 1.5, 1.6, True),  # another key's value
        ("k", None, 1.5, 1.6, True),  # gone after an acknowledged write
    ],
)
def test_load_model_checker_reads(
    key: str, value: str | None, start: float, end: float, bad: bool
) -> None:
    assert (_history().check_read(key, value, start, end) is not None) is bad


@pytest.mark.parametrize(
    ("value", "keys", "start", "end", "bad"),
    [
        ("x", ["j"], 2.0, 2.1, False),
        ("x", [], 2.0, 2.1, True),  # j held x throughout: a complete find returns it
        ("b", [], 2.5, 2.6, False),  # b in flight: may not be visible yet
        ("a", ["k"], 3.5, 3.6, True),  # stale
        ("a", ["k", "j"], 1.5, 1.6, True),  # j never held a
    ],
)
def test_load_model_checker_finds(
    value: str, keys: list[str], start: float, end: float, bad: bool
) -> None:
    assert (_history().check_find(value, keys, start, end) is not None) is bad
