"""A writer process for ``test_crash_http``: drives one client's workload, logging what it saw.

Run by path as ``python tests/support/crash_client.py <client-id>``; it reads one JSON command
per line on stdin (``{"url", "round", "log", "seed", "max_ops", "max_seconds"}``), answers
``ready`` once its first write of the round is acknowledged and ``done <ops>`` when the round ends
for it: on the first transport error (the server was killed), or after ``max_ops``/``max_seconds``
(bounds only).

The log (JSON lines, appended and flushed per line) is what the checker trusts:
``{"i": seq, ...}`` is an *intent* written before the request is sent; ``{"ack": seq, "st": s}``
follows a 2xx, ``{"fail": seq, "st": s}`` a definite refusal (4xx: nothing done). An intent with
neither is *in doubt* (the answer was lost with the server) and is always this client's last.

Key spaces make "later" exact: ``r<round>/c<client>/k<n>`` is written by this client only, one
request at a time, so the log's order is the key's order. ``shared/s<n>`` is written by every
client; only structural invariants hold there. Values are unique (they carry the round, client
and sequence number), so a value names the one write that produced it.
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path
from typing import IO, Any

import httpx

if not __package__:  # run by path: sys.path[0] is tests/support/, the package is in tests/
    sys.path[0] = str(Path(__file__).resolve().parent.parent)
from support.planted import planted_text
from support.server import PASSWORD, http_client

# Every value ends in text made of valid encoded records: a torn value must not steer recovery.
PLANTED = planted_text()

OWN_KEYS = 8
SHARED_KEYS = 4
ABSENT = None


class ServerGone(Exception):
    """A transport error: the server died (or hung); this client's round is over."""


class Round:
    def __init__(self, client_id: int, command: dict[str, Any]) -> None:
        self.cid = client_id
        self.round = command["round"]
        self.rng = random.Random(command["seed"])
        self.max_ops = command["max_ops"]
        self.deadline = time.monotonic() + command["max_seconds"]
        self.log: IO[str] = open(command["log"], "a", encoding="utf-8")  # noqa: SIM115
        self.http = http_client(command["url"], timeout=30)
        self.auth: dict[str, str] = {}
        self.seq = 0
        self.ops = 0
        self.ready_sent = False
        # This client's exact model of its own keys: value (None = absent) and revision if known.
        self.model: dict[str, str | None] = {}
        self.revision: dict[str, int | None] = {}

    # -- plumbing --------------------------------------------------------------------------

    def write(self, record: dict[str, Any]) -> None:
        self.log.write(json.dumps(record) + "\n")
        self.log.flush()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ServerGone(type(exc).__name__) from None

    def anomaly(self, text: str) -> None:
        self.write({"anomaly": text})

    def key(self, n: int) -> str:
        return f"r{self.round}/c{self.cid}/k{n}"

    def value(self, kind: str) -> str:
        return f"{kind}:r{self.round}:c{self.cid}:{self.seq}|{PLANTED}"

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def outcome(self, seq: int, answer: httpx.Response) -> bool:
        """Log the answer to intent ``seq``; True when acknowledged."""
        if 200 <= answer.status_code < 300:
            self.write({"ack": seq, "st": answer.status_code})
            if not self.ready_sent:
                self.ready_sent = True
                print("ready", flush=True)
            return True
        if 400 <= answer.status_code < 500:
            self.write({"fail": seq, "st": answer.status_code})
            return False
        # A 5xx leaves the outcome unknown; stop here so that it stays this client's last intent.
        self.anomaly(f"status {answer.status_code} for seq {seq}: {answer.text[:200]}")
        raise ServerGone(f"status {answer.status_code}")

    def locked_pause(self) -> None:
        # Another client holds the transaction: a short pause, not the whole Retry-After.
        time.sleep(self.rng.uniform(0.002, 0.02))

    # -- the workload ----------------------------------------------------------------------

    def run(self) -> int:
        try:
            self.auth = self.log_in()
            while self.ops < self.max_ops and time.monotonic() < self.deadline:
                self.ops += 1
                self.step()
        except ServerGone as exc:
            self.write({"gone": str(exc)})
        finally:
            self.http.close()
            self.log.close()
        return self.ops

    def log_in(self) -> dict[str, str]:
        name = f"writer{self.cid}"
        self.request("POST", "/auth/register", json={"username": name, "password": PASSWORD})
        answer = self.request("POST", "/auth/token", data={"username": name, "password": PASSWORD})
        if answer.status_code != 200:
            raise ServerGone(f"login {answer.status_code}")
        return {"Authorization": f"Bearer {answer.json()['access_token']}"}

    def step(self) -> None:
        roll = self.rng.random()
        n = self.rng.randrange(OWN_KEYS)
        if roll < 0.30:
            self.put(self.key(n))
        elif roll < 0.40:
            self.delete(self.key(n))
        elif roll < 0.55:
            self.cas_put(self.key(n))
        elif roll < 0.62:
            self.create(self.key(n))
        elif roll < 0.66:
            self.cas_delete(self.key(n))
        elif roll < 0.72:
            self.check_read(self.key(n))
        elif roll < 0.78:
            self.shared_write()
        else:
            self.transaction()

    def single(
        self, method: str, key: str, value: str | None, headers: dict[str, str] | None = None
    ) -> httpx.Response | None:
        """One write of an own key, logged; None when it was refused by the lock."""
        seq = self.next_seq()
        self.write({"i": seq, "k": key, "v": value, "m": method, "h": headers or {}})
        if method == "PUT":
            answer = self.request("PUT", f"/keys/{key}", json={"value": value}, headers=headers)
        else:
            answer = self.request("DELETE", f"/keys/{key}", headers=headers)
        if self.outcome(seq, answer):
            self.model[key] = value
            self.revision[key] = answer.json()["revision"] if method == "PUT" else None
            if method == "PUT" and answer.json().get("staged"):
                self.anomaly(f"{key}: a write outside any transaction answered staged")
        elif answer.status_code == 423:
            self.locked_pause()
            return None
        return answer

    def put(self, key: str) -> None:
        self.single("PUT", key, self.value("p"))

    def delete(self, key: str) -> None:
        answer = self.single("DELETE", key, ABSENT)
        if answer is not None and answer.status_code == 404 and self.model.get(key) is not None:
            self.anomaly(f"{key}: delete said 404 but the key holds {self.model[key]!r}")

    def current_revision(self, key: str) -> int | None:
        """The key's revision (reading it if this client does not know it); None if absent."""
        if key in self.revision and self.revision[key] is not None:
            return self.revision[key]
        answer = self.request("GET", f"/keys/{key}")
        if answer.status_code == 404:
            return None
        revision: int = answer.json()["revision"]
        self.revision[key] = revision
        return revision

    def cas_put(self, key: str) -> None:
        revision = self.current_revision(key)
        if revision is None:
            return self.create(key)
        stale = self.rng.random() < 0.2
        tag = revision + 1000 if stale else revision
        answer = self.single("PUT", key, self.value("cas"), {"If-Match": f'"{tag}"'})
        if answer is None:
            return None
        if stale and answer.status_code != 412:
            self.anomaly(f"{key}: If-Match a wrong revision answered {answer.status_code}")
        if not stale and answer.status_code != 200:
            self.anomaly(f"{key}: If-Match the current revision answered {answer.status_code}")
        return None

    def create(self, key: str) -> None:
        exists = self.model.get(key) is not None
        answer = self.single("PUT", key, self.value("new"), {"If-None-Match": "*"})
        if answer is None:
            return
        expected = 412 if exists else 201
        if answer.status_code != expected:
            self.anomaly(f"{key}: If-None-Match * answered {answer.status_code}, not {expected}")

    def cas_delete(self, key: str) -> None:
        revision = self.current_revision(key)
        if revision is None:
            return
        answer = self.single("DELETE", key, ABSENT, {"If-Match": f'"{revision}"'})
        if answer is not None and answer.status_code != 204:
            self.anomaly(f"{key}: delete If-Match current answered {answer.status_code}")

    def check_read(self, key: str) -> None:
        """Live check: this client is the key's only writer, so a read must match its model."""
        answer = self.request("GET", f"/keys/{key}")
        seen = answer.json()["value"] if answer.status_code == 200 else None
        if answer.status_code not in (200, 404) or seen != self.model.get(key):
            self.anomaly(
                f"{key}: read {answer.status_code} {seen!r}, wrote {self.model.get(key)!r}"
            )

    def shared_write(self) -> None:
        key = f"shared/s{self.rng.randrange(SHARED_KEYS)}"
        seq = self.next_seq()
        value = self.value("s")
        self.write({"i": seq, "shared": key, "v": value})
        answer = self.request("PUT", f"/keys/{key}", json={"value": value})
        if not self.outcome(seq, answer) and answer.status_code == 423:
            self.locked_pause()

    def transaction(self) -> None:
        """Begin, stage at nested levels (some rolled back), then commit or roll back whole.

        ``levels`` mirrors the server's staged view: one dict per level of key -> value/None.
        Values of a rolled-back level are logged as such: they must never be visible.
        """
        tag = f"t:r{self.round}:c{self.cid}:{self.next_seq()}"
        answer = self.request("POST", "/transactions", headers=self.auth)
        if answer.status_code == 423:
            self.locked_pause()
            return
        if answer.status_code != 201 or answer.json()["depth"] != 1:
            self.anomaly(f"begin answered {answer.status_code} {answer.text[:200]}")
            return
        levels: list[dict[str, str | None]] = [{}]
        dropped: list[str] = []
        count = 0
        for _ in range(self.rng.randint(1, 3)):  # nested levels after the first
            for _ in range(self.rng.randint(1, 3)):
                count += 1
                key = self.key(self.rng.randrange(OWN_KEYS))
                staged: str | None
                if self.rng.random() < 0.15:
                    staged = None
                    answer = self.request("DELETE", f"/keys/{key}", headers=self.auth)
                    ok = answer.status_code in (204, 404)
                else:
                    staged = f"{tag}:L{len(levels)}:{count}"
                    answer = self.request(
                        "PUT", f"/keys/{key}", json={"value": staged}, headers=self.auth
                    )
                    ok = answer.status_code in (200, 201) and answer.json()["staged"] is True
                    ok = ok and answer.json()["revision"] is None
                if not ok:
                    self.anomaly(f"staged write {key}: {answer.status_code} {answer.text[:200]}")
                    self.abandon()
                    return
                levels[-1][key] = staged
            if self.rng.random() < 0.7:
                answer = self.request("POST", "/transactions", headers=self.auth)
                if answer.status_code != 201 or answer.json()["depth"] != len(levels) + 1:
                    self.anomaly(f"nested begin: {answer.status_code} {answer.text[:200]}")
                    self.abandon()
                    return
                levels.append({})
                if self.rng.random() < 0.4:
                    # Stage something in this level, then roll it back: none of it may survive.
                    key = self.key(self.rng.randrange(OWN_KEYS))
                    value = f"{tag}:rb{len(levels)}:{count}"
                    self.request("PUT", f"/keys/{key}", json={"value": value}, headers=self.auth)
                    answer = self.request("POST", "/transactions/rollback", headers=self.auth)
                    if answer.status_code != 200 or answer.json()["depth"] != len(levels) - 1:
                        self.anomaly(f"rollback: {answer.status_code} {answer.text[:200]}")
                        self.abandon()
                        return
                    levels.pop()
                    dropped.append(value)
                    self.write({"rolled_back": [value]})
        writes: dict[str, str | None] = {}
        for level in levels:
            writes.update(level)
        if self.rng.random() < 0.15:
            staged_values = [v for v in writes.values() if v is not None]
            self.write({"rolled_back": staged_values})
            self.abandon()
            return
        seq = self.next_seq()
        self.write({"i": seq, "tx": tag, "w": writes})
        answer = self.request("POST", "/transactions/commit", headers=self.auth)
        if self.outcome(seq, answer):
            if answer.json() != {"depth": 0, "applied": answer.json()["applied"]}:
                self.anomaly(f"commit answered {answer.text[:200]}")
            for key, value in writes.items():
                self.model[key] = value
                self.revision[key] = None  # learnt by a read when needed
        else:
            self.anomaly(f"commit refused: {answer.status_code} {answer.text[:200]}")

    def abandon(self) -> None:
        """Roll back every level (bounded): nothing of this transaction may ever be visible."""
        for _ in range(10):
            answer = self.request("POST", "/transactions/rollback", headers=self.auth)
            if answer.status_code != 200 or answer.json()["depth"] == 0:
                return


def main() -> None:
    client_id = int(sys.argv[1])
    for line in sys.stdin:
        command = json.loads(line)
        ops = Round(client_id, command).run()
        print(f"done {ops}", flush=True)


if __name__ == "__main__":
    main()
