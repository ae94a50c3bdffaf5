"""Reading a server's log: its lines are JSON objects (``log_format=json``, the default).

``records(text)`` parses every JSON line of a log (the harness's own ``--- start`` lines and
anything else that is not JSON are skipped); ``access_lines`` keeps the access log's.
"""

from __future__ import annotations

import json
from typing import Any


def records(text: str) -> list[dict[str, Any]]:
    """Every line of ``text`` that is a JSON object, parsed, in order."""
    found: list[dict[str, Any]] = []
    for line in text.splitlines():
        if not line.startswith("{"):
            continue
        try:
            parsed = json.loads(line)
        except ValueError:
            continue
        if isinstance(parsed, dict):
            found.append(parsed)
    return found


def access_lines(text: str) -> list[dict[str, Any]]:
    """The access log's lines (logger ``filekv.access``) of ``text``."""
    return [record for record in records(text) if record.get("logger") == "filekv.access"]
