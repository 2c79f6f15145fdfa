"""The type stubs of the compiled modules are complete and match the built binaries.

For ``s4g_engine._core`` and ``s4g_synth._render``: every public attribute of the module has an entry in its
``.pyi`` (and the stub names nothing the module lacks, and has no ``__getattr__`` catch-all), and each
function's parameters (names, keyword-only marker, defaults) equal the signature pybind11 records in the
function's docstring.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

MODULES = ["s4g_engine._core", "s4g_synth._render"]


def _stub_functions(module_name: str) -> dict[str, ast.FunctionDef]:
    pkg, name = module_name.rsplit(".", 1)
    spec = importlib.util.find_spec(pkg)
    assert spec is not None and spec.submodule_search_locations, f"package {pkg} not found"
    paths = [Path(p) / f"{name}.pyi" for p in spec.submodule_search_locations]
    stub = next((p for p in paths if p.is_file()), None)
    assert stub is not None, f"no stub {name}.pyi in {paths}"
    tree = ast.parse(stub.read_text(encoding="utf-8"))
    return {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}


def _split_top(text: str, sep: str = ",") -> list[str]:
    """Split at ``sep`` outside brackets and quotes."""
    parts, depth, quote, cur = [], 0, "", []
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append("".join(cur).strip())
            cur = []
            continue
        cur.append(ch)
    if "".join(cur).strip():
        parts.append("".join(cur).strip())
    return parts


def _binary_params(func) -> list[tuple[str, bool, object]]:
    """[(name, keyword_only, default or Ellipsis)] from pybind11's ``name(a: T, *, b: T = 1) -> R`` line."""
    first = (func.__doc__ or "").splitlines()[0]
    assert first.startswith(func.__name__ + "("), f"{func.__name__}: unexpected docstring {first!r}"
    inner = first[len(func.__name__) + 1: first.rindex(") -> ")]
    out, kw_only = [], False
    for part in _split_top(inner):
        if part == "*":
            kw_only = True
            continue
        name = part.split(":", 1)[0].strip()
        halves = _split_top(part, "=")
        default = ast.literal_eval(halves[1].strip()) if len(halves) == 2 else ...
        out.append((name, kw_only, default))
    return out


def _stub_params(fn: ast.FunctionDef) -> list[tuple[str, bool, object]]:
    a = fn.args
    pos = a.posonlyargs + a.args
    pos_defaults = [...] * (len(pos) - len(a.defaults)) + [ast.literal_eval(d) for d in a.defaults]
    kw_defaults = [... if d is None else ast.literal_eval(d) for d in a.kw_defaults]
    return ([(p.arg, False, d) for p, d in zip(pos, pos_defaults)]
            + [(p.arg, True, d) for p, d in zip(a.kwonlyargs, kw_defaults)])


def _norm(value: object) -> object:
    return tuple(value) if isinstance(value, (list, tuple)) else value


@pytest.mark.parametrize("module_name", MODULES)
def test_stub_lists_every_public_attribute(module_name):
    module = importlib.import_module(module_name)
    stub = _stub_functions(module_name)
    public = {n for n in dir(module) if not n.startswith("_")}
    assert "__getattr__" not in stub, f"{module_name}.pyi hides names behind __getattr__"
    assert public - set(stub) == set(), f"missing from {module_name}.pyi: {sorted(public - set(stub))}"
    assert set(stub) - public == set(), f"in {module_name}.pyi but not in the module: {sorted(set(stub) - public)}"


@pytest.mark.parametrize("module_name", MODULES)
def test_stub_signatures_match_the_binary(module_name):
    module = importlib.import_module(module_name)
    for name, fn in _stub_functions(module_name).items():
        got = [(n, k, _norm(d)) for n, k, d in _stub_params(fn)]
        want = [(n, k, _norm(d)) for n, k, d in _binary_params(getattr(module, name))]
        assert got == want, f"{module_name}.{name}: stub {got} != binary {want}"


def test_renderer_is_not_in_the_production_core():
    from s4g_engine import _core

    assert not [n for n in dir(_core) if n.startswith("render")], "the synthetic renderer belongs to s4g_synth._render"
