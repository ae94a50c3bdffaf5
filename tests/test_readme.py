"""The README's shell examples, run as written against a real server on a fresh store (issue 15).

Every ``sh`` block of the README's "The HTTP API" section is taken from README.md itself and run,
in order, in one ``bash`` (so ``$B``, ``$ALICE``, ``$BOB`` and ``$ROOT`` carry over), with ``$B``
pointed at the test's server. As the README asks, the commands run in the directory that holds
the server's ``./data`` (where its ``filekv user add --admin`` step adds the admin), with the
venv's ``filekv`` on the ``PATH``. The README's own convention says what each command prints:

- the ``# `` lines right under a command (no blank line between) are its output, one line each;
  a line starting ``#  `` (two spaces) continues the line above (a long line, wrapped);
- after two or more spaces, the rest of such a line is a remark, not output;
- ``...`` stands for what differs from run to run (a token, the time left on a lease);
- a command with no such lines prints nothing;
- ``curl -i`` prints more headers than the README shows: there, the lines shown must come in
  that order among the printed ones (header names in lower case, as the server sends them).

So a change to the server that the README does not follow, or an example that no longer runs
pasted into a shell, fails here.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pytest
from support.server import FILEKV, Server

README: Final = Path(__file__).resolve().parent.parent / "README.md"
SECTION: Final = "## The HTTP API"
README_URL: Final = "http://127.0.0.1:8000"
_MARK: Final = "\x1e filekv readme step "
_REMARK: Final = re.compile(r"\s{2,}")


@dataclass
class Step:
    """One command of the README, with the output the README shows for it."""

    line: int  # in README.md, for the failure message
    command: str
    expected: list[str]

    @property
    def shows_headers(self) -> bool:
        return re.search(r"\bcurl\b.*\s-i\b", self.command) is not None


def _sh_blocks(text: str) -> list[tuple[int, list[str]]]:
    """The ``sh`` blocks between ``SECTION`` and the next ``## `` heading: (first line, lines)."""
    lines = text.splitlines()
    start = lines.index(SECTION)
    blocks: list[tuple[int, list[str]]] = []
    block: list[str] | None = None
    for number, line in enumerate(lines[start + 1 :], start + 2):
        if block is None and line.startswith("## "):
            break
        if block is None and line.strip() == "```sh":
            block, first = [], number + 1
        elif block is not None and line.strip() == "```":
            blocks.append((first, block))
            block = None
        elif block is not None:
            block.append(line)
    return blocks


def steps(text: str) -> list[Step]:
    found: list[Step] = []
    for first, lines in _sh_blocks(text):
        current: Step | None = None
        continued = False
        for number, line in enumerate(lines, first):
            stripped = line.strip()
            if continued:  # the rest of a command split with a backslash
                assert current is not None
                current.command += "\n" + line
                continued = line.endswith("\\")
            elif not stripped:
                current = None  # a blank line ends what a command prints
            elif stripped.startswith("#"):
                if current is None:
                    continue  # a remark about what follows
                shown = stripped[1:]
                if shown.startswith("  ") and current.expected:
                    current.expected[-1] += _REMARK.split(shown.strip())[0]
                else:
                    current.expected.append(_REMARK.split(shown.strip())[0])
            else:
                current = Step(number, line, [])
                found.append(current)
                continued = line.endswith("\\")
    return found


def _matches(shown: str, printed: str) -> bool:
    pattern = ".*?".join(re.escape(part) for part in shown.split("..."))
    return re.fullmatch(pattern, printed) is not None


def _printed_lines(step: Step, output: str) -> list[str]:
    lines = output.replace("\r\n", "\n").split("\n")
    if not step.shows_headers:
        return [line for line in lines if line] if output else []
    head, _, body = output.replace("\r\n", "\n").partition("\n\n")
    status, *headers = head.split("\n")
    named = [f"{name.lower()}:{value}" for name, _, value in (h.partition(":") for h in headers)]
    return [status, *named, *body.split("\n")]


def check(step: Step, output: str) -> str | None:
    """Why ``output`` is not what the README shows for ``step``; None when it is."""
    printed = _printed_lines(step, output)
    if not step.shows_headers:
        if len(printed) == len(step.expected) and all(
            _matches(shown, line) for shown, line in zip(step.expected, printed, strict=True)
        ):
            return None
    else:
        rest = iter(printed)
        if all(any(_matches(shown, line) for line in rest) for shown in step.expected):
            return None
    return (
        f"README.md line {step.line}: {step.command.strip()}\n"
        f"  the README shows: {step.expected}\n  it printed:       {printed}"
    )


def _run(steps_: list[Step], url: str, cwd: Path) -> list[str]:
    script = ["set -u"]
    for index, step in enumerate(steps_):
        script.append(f"printf '\\n{_MARK}%d\\n' {index}")
        script.append(step.command.replace(README_URL, url))
    done = subprocess.run(
        ["bash", "-c", "\n".join(script)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    parts = done.stdout.split(f"\n{_MARK}")
    outputs = [part.partition("\n")[2] for part in parts[1:]]
    assert len(outputs) == len(steps_), f"the script stopped early: {done.stderr[-2000:]}"
    return outputs


def test_readme_steps_are_found() -> None:
    found = steps(README.read_text())
    assert len(found) >= 30
    assert found[0].command == f"B={README_URL}"
    assert any("$BOB" in step.command for step in found)


def test_readme_examples_print_what_the_readme_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if shutil.which("curl") is None:
        pytest.fail("curl is missing (make test installs it with apt-get)")
    monkeypatch.setenv("PATH", f"{Path(FILEKV).parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("FILEKV_DATA_DIR", raising=False)
    server = Server(tmp_path / "data", tmp_path / "server.log")  # ./data of the commands' cwd
    server.start()
    try:
        found = steps(README.read_text())
        outputs = _run(found, server.url, tmp_path)
    finally:
        server.stop()
    problems = [
        problem
        for step, output in zip(found, outputs, strict=True)
        if (problem := check(step, output)) is not None
    ]
    assert problems == [], "\n".join(problems)


SAMPLE: Final = """## The HTTP API

```sh
B=http://127.0.0.1:8000

# a remark about what follows (a blank line above it: not output)
curl $B/x -d 'a' \\
     -d 'b'
# {"a":1,
#  "b":2}                      a remark after the output
curl -i $B/y
# HTTP/1.1 200 OK
# etag: "1"
# {"token":"..."}
```

## Next
```sh
not run
```
"""


def test_readme_steps_follow_the_convention() -> None:
    found = steps(SAMPLE)
    assert [step.command for step in found] == [
        "B=http://127.0.0.1:8000",
        "curl $B/x -d 'a' \\\n     -d 'b'",
        "curl -i $B/y",
    ]
    assert [step.expected for step in found] == [
        [],
        ['{"a":1,"b":2}'],
        ["HTTP/1.1 200 OK", 'etag: "1"', '{"token":"..."}'],
    ]


@pytest.mark.parametrize(
    ("index", "output", "agrees"),
    [
        (0, "", True),
        (0, "something", False),  # shown as printing nothing
        (1, '{"a":1,"b":2}', True),
        (1, '{"a":1,"b":3}', False),
        (2, 'HTTP/1.1 200 OK\r\nETag: "1"\r\ndate: x\r\n\r\n{"token":"abc"}', True),
        (2, 'HTTP/1.1 200 OK\r\ndate: x\r\n\r\n{"token":"abc"}', False),  # no ETag
        (2, 'HTTP/1.1 404 Not Found\r\nETag: "1"\r\n\r\n{"token":"abc"}', False),
    ],
)
def test_readme_check_compares_what_is_printed(index: int, output: str, agrees: bool) -> None:
    assert (check(steps(SAMPLE)[index], output) is None) is agrees
