"""The import structure of relnas, read from the source: no import cycles among its modules
(imports inside functions included) and nothing in relnas/utils importing a feature package."""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Optional, Set

PACKAGE = Path(__file__).resolve().parents[2] / "relnas"


def module_files(root: Path = PACKAGE) -> Dict[str, Path]:
    """``relnas.x.y`` -> its file (a package's name -> its ``__init__.py``)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _owner(name: str, modules: Dict[str, Path]) -> Optional[str]:
    """The module of ``name`` (``relnas.a.b.func`` -> ``relnas.a.b``), None outside relnas."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph(root: Path = PACKAGE) -> Dict[str, Set[str]]:
    """Module -> the relnas modules it imports anywhere in its file (module level, inside
    functions, under ``if TYPE_CHECKING``); ``from . import x`` and ``from pkg import submodule``
    resolved to the module imported."""
    modules = module_files(root)
    graph: Dict[str, Set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps: Set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                targets = [f"{source}.{a.name}" if f"{source}.{a.name}" in modules else source for a in node.names]
            else:
                continue
            deps.update(m for m in (_owner(t, modules) for t in targets if t.split(".")[0] == root.name)
                        if m is not None and m != name)
        graph[name] = deps
    return graph


def find_cycle(graph: Dict[str, Set[str]]) -> Optional[List[str]]:
    """One import cycle as the path ``[a, b, ..., a]``, or None."""
    state: Dict[str, int] = {}  # 1: on the current path, 2: done
    path: List[str] = []

    def visit(node: str) -> Optional[List[str]]:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep]
            if dep not in state:
                found = visit(dep)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


#: what relnas/utils may import: itself and the error classes
UTILS_MAY_IMPORT = ("relnas.utils", "relnas.errors")


def test_relnas_has_no_import_cycles_counting_imports_inside_functions():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_nothing_in_relnas_utils_imports_a_feature_package():
    graph = import_graph()
    bad = sorted(f"{m} imports {d}" for m, deps in graph.items()
                 if m == "relnas.utils" or m.startswith("relnas.utils.")
                 for d in deps if not any(d == ok or d.startswith(ok + ".") for ok in UTILS_MAY_IMPORT))
    assert not bad, "; ".join(bad)


def test_the_graph_sees_imports_inside_functions_and_relative_imports(tmp_path):
    """The reader of the source finds an import cycle hidden in a function and one made of
    relative imports, and names the package a ``from relnas import x`` pulls in."""
    pkg = tmp_path / "relnas"
    (pkg / "utils").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "utils" / "__init__.py").write_text("")
    (pkg / "errors.py").write_text("")
    (pkg / "a.py").write_text("import os\n\n\ndef f():\n    from relnas.b import g\n    return g\n")
    (pkg / "b.py").write_text("from relnas import a\n")
    (pkg / "utils" / "c.py").write_text("from . import d\nfrom relnas.errors import X\n")
    (pkg / "utils" / "d.py").write_text("from .c import y\n")
    graph = import_graph(pkg)
    assert graph["relnas.a"] == {"relnas.b"} and graph["relnas.b"] == {"relnas.a"}
    assert graph["relnas.utils.c"] == {"relnas.utils.d", "relnas.errors"}
    assert find_cycle(graph) in (["relnas.a", "relnas.b", "relnas.a"], ["relnas.utils.c", "relnas.utils.d", "relnas.utils.c"])
    assert find_cycle({"x": {"y"}, "y": {"z"}, "z": set()}) is None
