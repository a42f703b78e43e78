"""The import graph of src/metadino is a DAG that follows the README's layer picture.

Every import counts, also those inside functions: a lazy upward import is still an upward dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import metadino

SRC = Path(metadino.__file__).resolve().parent

# Module prefix -> rank, as drawn in the README: a module may import from lower ranks and from modules under its own
# prefix, never upwards and never sideways into another prefix of the same rank. The longest matching prefix gives
# a module's rank.
LAYERS: dict[str, int] = {
    "metadino.errors": 0,
    "metadino": 1, "metadino.precision": 1, "metadino.device": 1, "metadino.files": 1, "metadino.ranks": 1,
    "metadino.foundations": 1, "metadino.configs": 1,
    "metadino.config": 2, "metadino.data": 2, "metadino.losses": 2,
    "metadino.models": 3,
    "metadino.guidance": 4,
    "metadino.train": 5, "metadino.eval": 5,
    "metadino.export": 6, "metadino.embed": 6,
    "metadino.audit": 7, "metadino.demo": 7,
    "metadino.foundations.build": 8, "metadino.importers": 8, "metadino.compass": 8,
    "metadino.cli": 9,
    "metadino.__main__": 10,
}


def _module_name(path: Path) -> str:
    parts = ("metadino", *path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, module: str) -> set[str]:
    found = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "metadino")
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            if name.split(".")[0] == "metadino":
                found.add(name)
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in SRC.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        # `from metadino.x import y` may name a module y inside package x: count the most specific existing one.
        graph[name] = {dep for dep in _imports(path, name) if dep != name}
    return graph


def _layer(module: str) -> tuple[str, int]:
    prefix = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return prefix, LAYERS[prefix]


def test_every_module_has_a_layer():
    """A new top-level module must be placed in the picture (not fall back to the package's own rank)."""
    unplaced = [m for m in _graph() if m != "metadino" and _layer(m)[0] == "metadino"]
    assert not unplaced, f"add these to LAYERS and to the README's layer picture: {unplaced}"


def test_no_import_goes_upward_or_sideways():
    bad = []
    for module, deps in _graph().items():
        prefix, rank = _layer(module)
        for dep in deps:
            dep_prefix, dep_rank = _layer(dep)
            if dep_rank > rank or (dep_rank == rank and dep_prefix != prefix):
                bad.append(f"{module} (layer {rank}) imports {dep} (layer {dep_rank})")
    assert not bad, "\n".join(sorted(bad))


def test_the_module_graph_has_no_cycle():
    graph = _graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if dep not in graph:
                continue
            if state.get(dep) == 1:
                cycles.append(" -> ".join(stack[stack.index(dep):] + [dep]) if dep in stack else f"{node} -> {dep}")
            elif dep not in state:
                visit(dep, stack + [dep])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "\n".join(cycles)


def test_the_checker_sees_an_upward_import(tmp_path, monkeypatch):
    """The checker itself: a data module importing train is reported."""
    fake = tmp_path / "metadino"
    (fake / "data").mkdir(parents=True)
    (fake / "train").mkdir()
    (fake / "__init__.py").write_text("")
    (fake / "data" / "__init__.py").write_text("")
    (fake / "train" / "__init__.py").write_text("")
    (fake / "data" / "x.py").write_text("def f():\n    from metadino.train.loop import train\n")
    (fake / "train" / "loop.py").write_text("from metadino.data.x import f\n")
    monkeypatch.setitem(globals(), "SRC", fake)
    graph = _graph()
    assert graph["metadino.data.x"] == {"metadino.train.loop"}
    try:
        test_no_import_goes_upward_or_sideways()
    except AssertionError as e:
        assert "metadino.data.x (layer 2) imports metadino.train.loop (layer 5)" in str(e)
    else:
        raise AssertionError("the upward import went unnoticed")
    try:
        test_the_module_graph_has_no_cycle()
    except AssertionError as e:
        assert "metadino.data.x -> metadino.train.loop -> metadino.data.x" in str(e)
    else:
        raise AssertionError("the cycle went unnoticed")
