"""The package's import graph: no cycles between clapkit modules, and no training or web stack pulled in.

Every ``import`` / ``from … import`` of a clapkit module counts, at module level or inside a function (an import
moved into a function to dodge a cycle is still a cycle), and so do imports under ``if TYPE_CHECKING:``. A name
imported from a package that is not one of its submodules (``from clapkit.lalm import AudioLanguageModel``) is an
edge to the package, whose ``__init__`` re-exports it.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import clapkit

PACKAGE = Path(clapkit.__file__).parent
FORBIDDEN = ("lightning", "pytorch_lightning", "fastapi", "uvicorn", "starlette")


def _modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name, for its ``__init__.py``)."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = ("clapkit", *path.relative_to(PACKAGE).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imported(node: ast.AST, name: str, is_package: bool) -> list[str]:
    """The dotted names an import statement asks for (``from a import b`` gives ``a.b``; ``a`` is added later)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    base = node.module or ""
    if node.level:  # relative: resolved against the importing module's package
        anchor = name.split(".") if is_package else name.split(".")[:-1]
        anchor = anchor[: len(anchor) - node.level + 1]
        base = ".".join([*anchor, base] if base else anchor)
    return [f"{base}.{alias.name}" for alias in node.names]


def _target(dotted: str, modules: dict[str, Path]) -> str | None:
    """The clapkit module an imported dotted name lands in: itself if a module, else its nearest parent module."""
    parts = dotted.split(".")
    while parts:
        if ".".join(parts) in modules:
            return ".".join(parts)
        parts.pop()
    return None


def import_graph() -> dict[str, set[str]]:
    """Module → the clapkit modules it imports anywhere in its source."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            for dotted in _imported(node, name, is_package):
                target = _target(dotted, modules)
                if target is not None and target != name:
                    edges.add(target)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path ``[a, b, …, a]``, or ``None`` (depth-first search with colours)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_graph_builder_sees_function_level_and_package_imports():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    tree = ast.parse("def f():\n    from clapkit.lalm import AudioLanguageModel\n")
    found = [d for n in ast.walk(tree) for d in _imported(n, "clapkit.x", False)]
    assert found == ["clapkit.lalm.AudioLanguageModel"]
    assert _target(found[0], _modules()) == "clapkit.lalm"  # a re-export: an edge to the package


def test_no_import_cycles_between_clapkit_modules():
    graph = import_graph()
    assert "clapkit.factory" in graph and graph["clapkit.checkpoint"] <= {"clapkit.io"}  # the leaf stays a leaf
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " → ".join(cycle)


def _stacks_loaded(code: str) -> list[str]:
    """Run ``code`` in a fresh interpreter; the forbidden top-level packages it left in ``sys.modules``."""
    code += f"\nimport json, sys\nprint(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PACKAGE.parent)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_clapkit_imports_no_training_or_web_stack():
    """``import clapkit``, then every one of its modules, in a fresh interpreter: no Lightning, no web framework."""
    assert _stacks_loaded("import clapkit") == []
    names = [n for n in sorted(_modules()) if not n.endswith(".__main__")]  # __main__ runs the CLI
    assert _stacks_loaded(f"import importlib\nfor name in {names!r}:\n    importlib.import_module(name)") == []


#: What each room of the house may import besides the library and third-party packages (docs/architecture.md).
ALLOWED_APPS = {
    "clapkit": set(),
    "train": set(),
    "retrieval": set(),
    "demo": {"train"},  # the demo trains with the training apps' LightningModules
}
APPS = ("train", "retrieval", "demo", "benchmarks")


def _first_party_imports(room: str) -> dict[str, set[str]]:
    """File → the top-level first-party rooms (``train``, ``demo`` …) it imports, anywhere in its source."""
    out = {}
    for path in sorted((PACKAGE.parent / room).rglob("*.py")):
        names = {d.split(".")[0] for n in ast.walk(ast.parse(path.read_text())) for d in _imported(n, "", False)}
        out[str(path.relative_to(PACKAGE.parent))] = (names & set(APPS)) - {room}
    return out


def test_rooms_import_only_what_the_house_allows():
    """The library imports no app; the apps import the library, and only the demo imports another app (train)."""
    for room, allowed in ALLOWED_APPS.items():
        wrong = {f: sorted(rooms - allowed) for f, rooms in _first_party_imports(room).items() if rooms - allowed}
        assert not wrong, f"{room}/ imports rooms it may not: {wrong}"
