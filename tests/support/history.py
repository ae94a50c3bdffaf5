"""Replaying the crash writers' logs (``support.crash_client``) into what may be on disk afterwards.

For a key written by one client only, the log's order is the key's order, so after a SIGKILL the
key must hold exactly the value of its last acknowledged write, or the value of the one write in
doubt (the request whose answer died with the server) if that came later. A transaction commit in
doubt may have been applied or not, but never in part. Shared keys only get structural checks:
their value was written by someone (acknowledged or in doubt), never a refused or rolled-back one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Value = str | None  # None: absent


@dataclass
class ClientReplay:
    """What one client's log of one round allows to be visible."""

    allowed: dict[str, set[Value]] = field(default_factory=dict)  # own keys
    shared_allowed: set[str] = field(default_factory=set)
    rolled_back: set[str] = field(default_factory=set)
    doubtful_commits: list[dict[str, Value]] = field(default_factory=list)
    acknowledged: int = 0
    refused: int = 0
    in_doubt: int = 0
    commits: int = 0
    anomalies: list[str] = field(default_factory=list)


def replay(log_path: Path) -> ClientReplay:
    result = ClientReplay()
    if not log_path.exists():
        return result
    records = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    intents: dict[int, dict[str, Any]] = {}
    open_seqs: list[int] = []
    for record in records:
        if "i" in record:
            if open_seqs:
                result.anomalies.append(f"intent {record['i']} sent while {open_seqs} unanswered")
            intents[record["i"]] = record
            open_seqs.append(record["i"])
        elif "ack" in record:
            open_seqs.remove(record["ack"])
            result.acknowledged += 1
            _apply(result, intents[record["ack"]], certain=True)
        elif "fail" in record:
            open_seqs.remove(record["fail"])
            result.refused += 1
        elif "rolled_back" in record:
            result.rolled_back.update(record["rolled_back"])
        elif "anomaly" in record:
            result.anomalies.append(record["anomaly"])
    for seq in open_seqs:
        result.in_doubt += 1
        intent = intents[seq]
        _apply(result, intent, certain=False)
        if "tx" in intent:
            result.doubtful_commits.append(intent["w"])
    return result


def _writes(intent: dict[str, Any]) -> dict[str, Value]:
    if "tx" in intent:
        writes: dict[str, Value] = intent["w"]
        return writes
    if "shared" in intent:
        return {}
    return {intent["k"]: intent["v"]}


def _apply(result: ClientReplay, intent: dict[str, Any], *, certain: bool) -> None:
    if "shared" in intent:
        result.shared_allowed.add(intent["v"])
        return
    if "tx" in intent and certain:
        result.commits += 1
    for key, value in _writes(intent).items():
        if certain:
            result.allowed[key] = {value}
        else:
            result.allowed.setdefault(key, {None}).add(value)


def check_own_keys(replays: list[ClientReplay], actual: dict[str, str]) -> list[str]:
    """Violations of the exact per-key rule and of all-or-nothing commits."""
    violations: list[str] = []
    allowed: dict[str, set[Value]] = {}
    rolled_back: set[str] = set()
    for client in replays:
        allowed.update(client.allowed)
        rolled_back |= client.rolled_back
        violations.extend(f"client anomaly: {text}" for text in client.anomalies)
    for key in sorted(set(allowed) | set(actual)):
        seen = actual.get(key)
        if seen not in allowed.get(key, {None}):
            why = "rolled back" if seen in rolled_back else "never acknowledged or superseded"
            violations.append(f"{key}: holds {seen!r} ({why}); allowed {allowed.get(key)}")
    for client in replays:
        for writes in client.doubtful_commits:
            present = [key for key, value in writes.items() if value is not None]
            applied = [key for key in present if actual.get(key) == writes[key]]
            if applied and len(applied) != len(present):
                violations.append(f"partial transaction: {applied} of {present}")
    return violations


def check_shared_keys(
    allowed: set[str], rolled_back: set[str], actual: dict[str, str]
) -> list[str]:
    violations = []
    for key, value in sorted(actual.items()):
        if value not in allowed:
            why = "rolled back" if value in rolled_back else "never written by anyone"
            violations.append(f"{key}: holds {value!r} ({why})")
    return violations
