"""The engine stands alone (no web framework, settings, pydantic or print); no import cycle."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import filekv.engine

WEB = ("fastapi", "starlette", "httpx", "uvicorn")
# The server's settings depend on the engine (they build its StoreOptions), never the other way.
OUTSIDE = ("pydantic", "pydantic_settings")
FORBIDDEN = (*WEB, *OUTSIDE, "filekv.service", "filekv.settings", "filekv.cli")
ENGINE_DIR = Path(filekv.engine.__file__).parent


def test_boundaries_importing_engine_loads_no_web_framework() -> None:
    code = (
        "import sys, filekv.engine\n"
        "from filekv.engine import Store\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {(*WEB, *OUTSIDE)!r}"
        " or m.startswith(('filekv.service', 'filekv.settings', 'filekv.cli')))\n"
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


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _engine_imports(source: Path) -> set[str]:
    """Engine modules that ``source`` imports at run time, at any depth (functions too).

    Imports under ``if TYPE_CHECKING:`` are left out: they never run, so they cannot make an
    import cycle (they only name types for mypy).
    """
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:
                if node.module:
                    found.add(node.module.split(".")[0])
                else:  # from . import x
                    found.update(alias.name for alias in node.names)
            elif node.level == 0 and node.module and node.module.startswith("filekv.engine."):
                found.add(node.module.split(".")[2])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("filekv.engine."):
                    found.add(alias.name.split(".")[2])
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(source.read_text(), filename=str(source)))
    return found


def _engine_import_graph() -> dict[str, set[str]]:
    modules = {source.stem: source for source in ENGINE_DIR.glob("*.py")}
    return {
        name: {target for target in _engine_imports(source) if target in modules} - {name}
        for name, source in modules.items()
        if name != "__init__"  # the package re-exports everything: it is the graph's root
    }


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    visiting: list[str] = []
    done: set[str] = set()

    def walk(node: str) -> list[str] | None:
        if node in visiting:
            return [*visiting[visiting.index(node) :], node]
        if node in done:
            return None
        visiting.append(node)
        for target in sorted(graph.get(node, ())):
            cycle = walk(target)
            if cycle is not None:
                return cycle
        visiting.pop()
        done.add(node)
        return None

    for node in sorted(graph):
        cycle = walk(node)
        if cycle is not None:
            return cycle
    return None


def test_boundaries_engine_modules_import_no_cycle() -> None:
    graph = _engine_import_graph()
    assert {"store", "recovery", "compaction", "transaction", "segments"} <= set(graph)
    cycle = _find_cycle(graph)
    assert cycle is None, " -> ".join(cycle or ())


def test_boundaries_cycle_finder_sees_a_cycle() -> None:
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


@pytest.mark.parametrize("module", ["recovery", "compaction", "transaction", "writer", "segments"])
def test_boundaries_engine_parts_do_not_import_the_store(module: str) -> None:
    """The Store composes the other parts; none of them may reach back into it."""
    assert "store" not in _engine_imports(ENGINE_DIR / f"{module}.py")


@pytest.mark.parametrize("source", sorted(ENGINE_DIR.glob("*.py")), ids=lambda p: p.name)
def test_boundaries_engine_module_says_what_it_owns_and_stays_small(source: Path) -> None:
    text = source.read_text()
    docstring = ast.get_docstring(ast.parse(text)) or ""
    assert "owns" in docstring.lower(), f"{source.name}: the docstring does not say what it owns"
    assert text.count("\n") <= 450, f"{source.name} has {text.count(chr(10))} lines: split it"


def test_boundaries_engine_names_load_on_first_use_from_their_module() -> None:
    """``filekv.engine`` imports its modules lazily: every exported name still resolves, to the
    object its module defines, and importing the package alone loads no store code."""
    import importlib

    defined_in = filekv.engine._DEFINED_IN
    assert sorted(defined_in) == sorted(filekv.engine.__all__)
    for name, module in defined_in.items():
        defining = importlib.import_module(f"filekv.engine.{module}")
        assert getattr(filekv.engine, name) is getattr(defining, name)
    with pytest.raises(AttributeError, match="no attribute 'Nothing'"):
        filekv.engine.Nothing  # noqa: B018 - the lookup is the test
    code = "import sys, filekv.engine\nprint('filekv.engine.store' in sys.modules)\n"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.stdout.strip() == "False", result.stderr
