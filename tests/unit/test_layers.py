"""The layers of docs/internals.md, checked from the imports (read with ast, nothing imported).

A module may import its own component (the first name under qinfer/) or a component in a
lower row; components of one row do not import each other. Lazy imports inside functions
count: they are dependencies all the same. And no import cycle runs between modules.
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "qinfer"

# Top first.
LAYERS: list[set[str]] = [
    {"cli"},
    {"demo", "gateway"},
    {"fleet"},
    {"testing"},
    {"client", "worker", "callbacks", "llm"},
    {"queue"},
    {"engine"},
    {"executor"},
    {"models"},
    {"layers"},
    {"ops"},
    {"kernels", "distributed"},
    {"contracts"},
    {"batch_types"},
    {"schema"},
    {"signing", "ssrf"},
    {"metrics", "embedded_redis", "config", "sampling_params"},
    {"errors"},
]
RANK = {component: rank for rank, row in enumerate(LAYERS) for component in row}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) for every qinfer module the file imports, relative imports resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]   # may be modules
    return [(line, name) for line, name in found if name == "qinfer" or name.startswith("qinfer.")]


def component(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def source_files() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def upward_imports() -> list[str]:
    problems = []
    for path in source_files():
        here = component(module_name(path))
        if here not in RANK:
            continue              # the package facade (qinfer/__init__.py) re-exports from any layer
        for line, target in imported_modules(path):
            there = component(target)
            if there == here or there == "":
                continue
            if there not in RANK:
                problems.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {target}: "
                                f"component {there!r} has no row in LAYERS")
            elif RANK[there] <= RANK[here]:
                problems.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {target}: "
                                f"{there!r} is not below {here!r}")
    return problems


def import_cycles() -> list[list[str]]:
    graph = {module_name(p): {t for _, t in imported_modules(p)} for p in source_files()}
    cycles, state = [], {}          # state: 1 = on the current path, 2 = done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph.get(node, ())):
            if target not in graph or target == node:
                continue
            if state.get(target) == 1:
                cycles.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target, path + [target])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    return cycles


def test_every_component_has_a_layer():
    components = {component(module_name(p)) for p in source_files()} - {""}
    assert components <= set(RANK), f"add to LAYERS: {sorted(components - set(RANK))}"


def test_no_import_runs_up_the_layers():
    assert upward_imports() == []


def test_no_import_cycles():
    assert import_cycles() == []


def test_the_check_sees_an_upward_import(tmp_path, monkeypatch):
    """The checker itself: an engine module importing the worker is reported."""
    fake = tmp_path / "qinfer"
    (fake / "engine").mkdir(parents=True)
    (fake / "worker").mkdir()
    (fake / "engine" / "bad.py").write_text("def f():\n    from qinfer.worker import loop\n")
    (fake / "worker" / "loop.py").write_text("from qinfer.engine import bad\n")
    monkeypatch.setattr(__import__(__name__, fromlist=["PACKAGE"]), "PACKAGE", fake)
    assert [p.split(" imports ")[1] for p in upward_imports()] == [
        "qinfer.worker: 'worker' is not below 'engine'", "qinfer.worker.loop: 'worker' is not below 'engine'"]
    assert import_cycles() == [["qinfer.engine.bad", "qinfer.worker.loop", "qinfer.engine.bad"]]
