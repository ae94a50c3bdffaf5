"""Crash consistency through HTTP: SIGKILL a busy ``filekv serve`` and check what clients were told.

Three writer *processes* (``support/crash_client.py``) run puts, deletes, CAS (``If-Match`` /
``If-None-Match: *``) and nested transactions against one server with ``fsync=always``; each logs
every request before sending it and every answer after. At a random moment the server gets SIGKILL,
is restarted on the same data directory, and the data is compared with the logs
(``support.history``): every acknowledged write present or superseded by a later acknowledged one,
nothing of a rolled-back or never-committed transaction visible, no transaction in part. Earlier
rounds' keys are checked again after the last restart.

10 rounds in ``make test``, 300 with ``FILEKV_SOAK=1``. Run ``pytest -s`` to see the figures.
"""

from __future__ import annotations

import json
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from support import SOAK
from support.history import ClientReplay, check_own_keys, check_shared_keys, replay
from support.server import Server, read_all

ROUNDS = 300 if SOAK else 10
WRITERS = 3
CLIENT_SCRIPT = Path(__file__).parent.parent / "support" / "crash_client.py"
WAIT = 90.0  # bound on any one wait for a writer; never reached on a healthy run


class Writer:
    """A long-lived writer process, one round per command line; its stdout read by a thread."""

    def __init__(self, client_id: int, stderr_path: Path) -> None:
        self.client_id = client_id
        with stderr_path.open("ab") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, str(CLIENT_SCRIPT), str(client_id)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                bufsize=1,
            )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.strip())
        self.lines.put("eof")

    def send(self, command: dict[str, object]) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()

    def wait_for(self, word: str, timeout: float) -> str | None:
        """The next line starting with ``word`` (skipping others), or None at the deadline."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                return None
            if line == "eof":
                raise RuntimeError(f"writer {self.client_id} exited {self.process.poll()}")
            if line.startswith(word):
                return line
        return None

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.mark.timeout(3600 if SOAK else 900)
def test_crash_http_sigkill_loses_no_acknowledged_write(tmp_path: Path) -> None:
    rng = random.Random()
    seed = rng.randrange(1 << 30)
    rng.seed(seed)
    server = Server(tmp_path / "data", tmp_path / "server.log", log_level="warning")
    writers = [Writer(cid, tmp_path / f"writer{cid}.stderr") for cid in range(WRITERS)]
    violations: list[str] = []
    verified: dict[str, str] = {}  # every key of every finished round -> value checked
    shared_allowed: set[str] = set()
    rolled_back: set[str] = set()
    totals = dict.fromkeys(
        ["acknowledged", "refused", "in_doubt", "commits", "doubtful_commits", "keys"], 0
    )
    try:
        server.start()
        for round_no in range(ROUNDS):
            logs = [tmp_path / f"r{round_no}-c{w.client_id}.jsonl" for w in writers]
            for writer, log in zip(writers, logs, strict=True):
                writer.send(
                    {
                        "url": server.url,
                        "round": round_no,
                        "log": str(log),
                        "seed": rng.randrange(1 << 30),
                        "max_ops": 20_000,
                        "max_seconds": 60,
                    }
                )
            for writer in writers:
                writer.wait_for("ready", WAIT)
            time.sleep(rng.uniform(0.0, 0.6))
            server.stop(signal.SIGKILL)
            for writer in writers:
                assert writer.wait_for("done", WAIT) is not None, "a writer did not finish"
            server.start()
            replays: list[ClientReplay] = [replay(log) for log in logs]
            with server.client() as http:
                state = http.get("/transactions").json()
                if state["active"]:
                    violations.append(f"round {round_no}: a transaction survived the restart")
                actual = read_all(http, f"r{round_no}/")
                shared = read_all(http, "shared/")
            for client in replays:
                shared_allowed |= client.shared_allowed
                rolled_back |= client.rolled_back
                for name in ("acknowledged", "refused", "in_doubt", "commits"):
                    totals[name] += getattr(client, name)
                totals["doubtful_commits"] += len(client.doubtful_commits)
            found = check_own_keys(replays, actual)
            found += check_shared_keys(shared_allowed, rolled_back, shared)
            violations.extend(f"round {round_no}: {text}" for text in found)
            totals["keys"] += len(set(actual) | {k for c in replays for k in c.allowed})
            verified.update(actual)
        # Many restarts later, a clean one: every round's checked state is still all there.
        server.stop(signal.SIGTERM)
        server.start()
        with server.client() as http:
            final = read_all(http, "r")
        for key in sorted(set(final) | set(verified)):
            if final.get(key) != verified.get(key):
                violations.append(
                    f"after all rounds: {key} {verified.get(key)!r} -> {final.get(key)!r}"
                )
    finally:
        for writer in writers:
            writer.close()
        server.kill()
    print(
        f"\ncrash_http: seed={seed} rounds={ROUNDS} writers={WRITERS} "
        f"operations_checked={totals['acknowledged'] + totals['refused'] + totals['in_doubt']} "
        f"acknowledged={totals['acknowledged']} refused_4xx={totals['refused']} "
        f"in_doubt={totals['in_doubt']} commits_acknowledged={totals['commits']} "
        f"commits_in_doubt={totals['doubtful_commits']} "
        f"keys_checked={totals['keys']} final_keys={len(verified)} violations={len(violations)}"
    )
    assert totals["acknowledged"] > 0
    assert not violations, "\n".join(violations[:30])


# -- the checker itself: each bad outcome below must be caught ------------------------------

_LOG = [
    {"i": 1, "k": "r0/c0/k0", "v": "p:1", "m": "PUT", "h": {}},
    {"ack": 1, "st": 201},
    {"i": 2, "k": "r0/c0/k1", "v": "p:2", "m": "PUT", "h": {}},
    {"ack": 2, "st": 201},
    {"i": 3, "k": "r0/c0/k1", "v": None, "m": "DELETE", "h": {}},
    {"ack": 3, "st": 204},
    {"i": 4, "k": "r0/c0/k2", "v": "cas:4", "m": "PUT", "h": {"If-Match": '"9"'}},
    {"fail": 4, "st": 412},
    {"rolled_back": ["t:5:rb2:1"]},
    {"i": 6, "tx": "t:6", "w": {"r0/c0/k3": "t:6:L1:1", "r0/c0/k4": "t:6:L1:2"}},
]
_GOOD = {"r0/c0/k0": "p:1"}


def _checked(actual: dict[str, str], tmp_path: Path) -> list[str]:
    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps(record) + "\n" for record in _LOG))
    return check_own_keys([replay(log)], actual)


@pytest.mark.parametrize(
    ("actual", "bad"),
    [
        (_GOOD, False),
        ({**_GOOD, "r0/c0/k3": "t:6:L1:1", "r0/c0/k4": "t:6:L1:2"}, False),  # commit in doubt: all
        ({}, True),  # an acknowledged write lost
        ({**_GOOD, "r0/c0/k1": "p:2"}, True),  # an acknowledged delete undone
        ({**_GOOD, "r0/c0/k2": "cas:4"}, True),  # a refused CAS applied
        ({**_GOOD, "r0/c0/k5": "t:5:rb2:1"}, True),  # a rolled-back level visible
        ({**_GOOD, "r0/c0/k3": "t:6:L1:1"}, True),  # half a transaction
    ],
)
def test_crash_http_checker_catches_violations(
    actual: dict[str, str], bad: bool, tmp_path: Path
) -> None:
    assert bool(_checked(actual, tmp_path)) is bad
