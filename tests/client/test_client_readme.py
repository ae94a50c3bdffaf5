"""The README's "Python client" example, run as written against a real server on a fresh store.

The ``python`` block of that section is taken from README.md and run in a new interpreter with
``FILEKV_URL`` pointed at the test's server. Each ``print(...)  # shown`` line of the block names
what it prints: the printed lines must be exactly those, in order.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Final

from support.server import Server

README: Final = Path(__file__).resolve().parents[2] / "README.md"
SECTION: Final = "## Python client"


def _python_block() -> tuple[str, list[str]]:
    text = README.read_text()
    section = text[text.index(SECTION + "\n") :]
    section = section[: section.index("\n## ", len(SECTION))]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match, f"no python block under {SECTION!r}"
    code = match.group(1)
    shown = [
        printed.group(1)
        for line in code.splitlines()
        if (printed := re.match(r"\s*print\(.*\)  # (.*)$", line))
    ]
    return code, shown


def test_client_readme_example_runs_as_shown(tmp_path: Path) -> None:
    code, shown = _python_block()
    assert len(shown) >= 10
    server = Server(tmp_path / "data", tmp_path / "server.log")
    server.start()
    try:
        result = subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "FILEKV_URL": server.url},
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        server.stop()
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == shown
