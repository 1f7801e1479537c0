"""The import structure: ``bow_gym`` never imports ``agents`` (it builds agents by name from string
entry points), and ``agents`` imports ``bow_gym`` only, without a cycle among its own modules.

The graph is read from the source with ``ast`` (every ``import`` statement, also those inside
functions, which run later but still tie the modules together), so the check needs no imports
and sees what a lazy import would hide at run time.
"""

from __future__ import annotations

import ast
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def import_graph(root: Path, packages: tuple[str, ...]) -> dict[str, set[str]]:
    """Module -> the modules of ``packages`` it imports, from the source files under ``root``.

    ``from pkg import name`` counts as importing ``pkg.name`` when that is a module, else
    ``pkg``; an import of anything inside a module counts as importing that module.
    """
    files = {module_name(p, root): p for pkg in packages for p in (root / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in files}

    def internal(name: str) -> str | None:
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    for mod, path in files.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base
                           for a in node.names]
            for target in targets:
                dep = internal(target)
                if dep is not None and dep != mod:
                    graph[mod].add(dep)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def violations(root: Path) -> tuple[dict[str, set[str]], list[list[str]]]:
    """``bow_gym`` modules that import ``agents`` (and what they import), and the import cycles
    among ``agents``' modules."""
    graph = import_graph(root, ("bow_gym", "agents"))
    upward = {m: {d for d in deps if d.split(".")[0] == "agents"}
              for m, deps in graph.items() if m.split(".")[0] == "bow_gym"}
    inside = {m: {d for d in deps if d.split(".")[0] == "agents"}
              for m, deps in graph.items() if m.split(".")[0] == "agents"}
    return {m: d for m, d in upward.items() if d}, cycles(inside)


def test_bow_gym_never_imports_agents_and_agents_has_no_cycle():
    upward, agent_cycles = violations(PROJECT)
    assert upward == {}, f"bow_gym modules import agents: {upward}"
    assert agent_cycles == [], f"import cycles inside agents: {agent_cycles}"


def test_the_check_finds_planted_violations(tmp_path):
    def write(rel: str, text: str) -> None:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)

    write("bow_gym/__init__.py", "")
    write("bow_gym/loop.py", "def f():\n    from agents.policy import Policy\n")  # lazy: counts
    write("agents/__init__.py", "from agents import policy\n")
    write("agents/policy.py", "import bow_gym.loop\n\n\ndef g():\n    from .reference import R\n")
    write("agents/reference.py", "from agents.policy import Policy\n")
    write("agents/unet.py", "import agents.reference\n")  # depends on the cycle, not in it
    upward, agent_cycles = violations(tmp_path)
    assert upward == {"bow_gym.loop": {"agents.policy"}}
    assert agent_cycles == [["agents.policy", "agents.reference"]]


def test_the_graph_sees_the_real_imports():
    graph = import_graph(PROJECT, ("bow_gym", "agents"))
    assert "agents.belief" in graph["agents.reinforce"]  # from agents.belief import (...)
    assert "agents.reinforce" in graph["agents"]  # the lazy import in agents.__getattr__
    assert "bow_gym.policy" in graph["bow_gym.rounds"]
