"""The engine stands alone: no web framework is imported by it, directly or indirectly."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import filekv.engine

WEB = ("fastapi", "starlette", "httpx", "uvicorn")
FORBIDDEN = (*WEB, "filekv.service")
ENGINE_DIR = Path(filekv.engine.__file__).parent


def test_boundaries_importing_engine_loads_no_web_framework() -> None:
    code = (
        "import sys, filekv.engine\n"
        "from filekv.engine import Store\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {WEB!r}"
        " or m.startswith('filekv.service'))\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"importing filekv.engine loaded: {result.stdout.strip()}"


def _imported_modules(source: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(source.read_text(), filename=str(source))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_boundaries_engine_modules_import_no_web_framework() -> None:
    sources = sorted(ENGINE_DIR.glob("*.py"))
    assert sources
    offenders = {
        f"{source.name}: {name}"
        for source in sources
        for name in _imported_modules(source)
        if any(name == bad or name.startswith(bad + ".") for bad in FORBIDDEN)
    }
    assert not offenders, sorted(offenders)


def test_boundaries_engine_does_not_print() -> None:
    offenders = []
    for source in sorted(ENGINE_DIR.glob("*.py")):
        for node in ast.walk(ast.parse(source.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "print"
            ):
                offenders.append(f"{source.name}:{node.lineno}")
    assert not offenders, offenders
