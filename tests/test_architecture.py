"""No import circles inside ``s4g_train`` or ``s4g_engine``; no test module imports another test module (what
tests share lives in ``tests/conftest.py`` and ``tests/helpers/``).

Every import statement counts — at module level and inside functions (a lazy import that points back is still
a circle in the design, it only hides from the interpreter) — except those under ``if TYPE_CHECKING:``.
``from pkg import name`` is an edge to the submodule ``pkg.name`` when that is a module, else to ``pkg``
itself (its ``__init__``); names that are neither a Python module nor defined in the package's
``__init__`` are compiled extensions (``s4g_engine._core``): leaves.
"""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("s4g_train", "s4g_engine")


def modules(root: Path, packages: tuple[str, ...]) -> dict[str, Path]:
    out = {}
    for pkg in packages:
        for p in sorted((root / pkg).rglob("*.py")):
            parts = list(p.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = p
    return out


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(x) for stmt in node.body for x in ast.walk(stmt)}
    return skip


def _owner(name: str, mods: dict[str, Path]) -> str | None:
    """The longest prefix of ``name`` that is one of our modules."""
    while name and name not in mods:
        name = name.rpartition(".")[0]
    return name or None


def import_graph(mods: dict[str, Path]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skip = _type_checking_nodes(tree)
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            targets: list[str | None] = []
            if isinstance(node, ast.Import):
                targets = [_owner(a.name, mods) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                for a in node.names:
                    full = f"{base}.{a.name}"
                    if full in mods:
                        targets.append(full)
                    elif base in mods and mods[base].name == "__init__.py" and not _defines(mods[base], a.name):
                        targets.append(None)  # a compiled extension module of the package: a leaf
                    else:
                        targets.append(_owner(base, mods))
            graph[mod] |= {t for t in targets if t is not None and t != mod}
    return graph


def _defines(init: Path, name: str) -> bool:
    """Whether a package ``__init__`` binds ``name`` itself (def, class, assignment, import)."""
    tree = ast.parse(init.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name == name:
            return True
        if isinstance(node, (ast.Import, ast.ImportFrom)) and any((a.asname or a.name) == name for a in node.names):
            return True
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store) and node.id == name:
            return True
    return False


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def _path(graph: dict[str, set[str]], comp: list[str]) -> str:
    """One concrete circle inside a component, for the failure message."""
    members, start = set(comp), comp[0]
    prev: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & members):
                if w == start:
                    chain = [v]
                    while chain[-1] != start:
                        chain.append(prev[chain[-1]])
                    return " -> ".join([start] + chain[::-1][1:] + [start])
                if w not in prev:
                    prev[w] = v
                    nxt.append(w)
        frontier = nxt
    return " ↔ ".join(comp)


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_circles(package: str) -> None:
    mods = modules(ROOT, (package,))
    assert len(mods) > 5, f"found only {sorted(mods)} under {ROOT / package}"
    graph = import_graph(mods)
    assert sum(len(v) for v in graph.values()) > 5, "the import graph is empty: the walker is broken"
    circles = cycles(graph)
    assert not circles, "import circles:\n" + "\n".join(_path(graph, c) for c in circles)


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)


def test_the_checker_finds_circles(tmp_path: Path) -> None:
    """The walker sees lazy, relative and from-package imports; TYPE_CHECKING and compiled leaves are no edge."""
    _write(tmp_path, {
        "pkg/__init__.py": "from pkg.a import f\nfrom pkg import _ext\n",
        "pkg/a.py": "def f():\n    from pkg.b import g  # lazy\n    return g\n",
        "pkg/b.py": "from . import c\n",
        "pkg/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import d\nimport pkg.a\n",
        "pkg/d.py": "from pkg import c\n",
        "pkg/e.py": "from pkg import f\n",  # a name bound in __init__: an edge to the package
    })
    mods = modules(tmp_path, ("pkg",))
    graph = import_graph(mods)
    assert graph["pkg"] == {"pkg.a"}  # _ext is a compiled leaf
    assert graph["pkg.c"] == {"pkg.a"} and graph["pkg.e"] == {"pkg"}
    assert cycles(graph) == [["pkg.a", "pkg.b", "pkg.c"]]
    assert _path(graph, ["pkg.a", "pkg.b", "pkg.c"]) == "pkg.a -> pkg.b -> pkg.c -> pkg.a"


def imported_names(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, module) of every import in ``tree``, at any depth, and in string constants that parse as Python
    code importing something (scripts handed to a subprocess)."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            found += [(node.lineno, node.module)] if node.module else []
            if node.level:  # ``from . import test_x``
                found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            callee = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if callee in ("importorskip", "import_module") and isinstance(node.args[0].value, str):
                found.append((node.lineno, node.args[0].value))  # pytest.importorskip("m"), importlib's too
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and "import" in node.value:
            try:
                inner = ast.parse(textwrap.dedent(node.value))
            except SyntaxError:
                continue
            found += [(node.lineno + line - 1, name) for line, name in imported_names(inner)]
    return found


def imports_of_test_modules(tests: Path) -> list[str]:
    """``file:line imports module`` for every import of a ``test_*`` module by any Python file under ``tests``."""
    bad = []
    for p in sorted(tests.rglob("*.py")):
        for line, name in imported_names(ast.parse(p.read_text(encoding="utf-8"))):
            if name.split(".")[0].startswith("test_"):
                bad.append(f"{p.relative_to(tests)}:{line} imports {name}")
    return bad


def test_no_test_module_imports_another() -> None:
    tests = ROOT / "tests"
    assert len(list(tests.glob("test_*.py"))) > 20, f"found few test modules under {tests}"
    bad = imports_of_test_modules(tests)
    assert not bad, ("test modules import other test modules; move what they share to tests/helpers/ "
                     "(functions, constants) or tests/conftest.py (fixtures):\n" + "\n".join(bad))


def test_the_checker_finds_test_module_imports(tmp_path: Path) -> None:
    """Module-level, lazy, aliased, relative, importorskip and subprocess-script imports are found; helpers are not
    flagged."""
    b = "test_b"  # f-strings, so that this file's own string constants import no test module
    _write(tmp_path, {
        "test_a.py": f"import {b}\nfrom helpers.layouts import make_cvusa\n",
        "test_c.py": f"def f():\n    from {b} import x as y\n",
        "test_d.py": f"from . import {b}\nimport os.path as test_e\nfrom pkg import test_f\n",
        "helpers/run.py": f'SCRIPT = """\nimport sys\nfrom {b} import x\n"""\nTEXT = "not code: import it"\n',
        "test_b.py": "import helpers.training\n",
        "test_g.py": f"import pytest\nx = pytest.importorskip('{b}')\ny = pytest.importorskip('helpers.gallery')\n",
    })
    assert imports_of_test_modules(tmp_path) == [
        "helpers/run.py:3 imports test_b", "test_a.py:1 imports test_b", "test_c.py:2 imports test_b",
        "test_d.py:1 imports test_b", "test_g.py:2 imports test_b"]
