"""The tree's structure, read from the code (the imports), not from a picture of it.

Imports point one way: ``ascan`` (models, CLI) -> ``ascan_kernels`` ops -> registry /
capabilities / _common / _checks / backends / _ext. Nothing in ``ascan_kernels`` imports
``ascan``; nothing but the tools themselves imports ``ascan_kernels.tools``; no module
imports another inside a function to dodge an import cycle (function-level imports are for
optional third-party packages only); there is no import cycle; no ``noqa: E402``.
"""
from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("ascan", "ascan_kernels")
# The lowest layer of ascan_kernels: these never import the ops.
FOUNDATION = ("ascan_kernels.registry", "ascan_kernels.capabilities", "ascan_kernels._common",
              "ascan_kernels._checks", "ascan_kernels._ext", "ascan_kernels._version", "ascan_kernels.backends")


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _resolve(module: str, is_pkg: bool, node: ast.ImportFrom) -> list[str]:
    if node.level == 0:
        base = node.module or ""
    else:
        parts = module.split(".")
        parts = parts if is_pkg else parts[:-1]
        parts = parts[: len(parts) - (node.level - 1)]
        base = ".".join(parts + ([node.module] if node.module else []))
    # "from pkg import sub" may name a submodule: count both
    return [base] + [f"{base}.{a.name}" for a in node.names]


def _imports() -> dict[str, list[tuple[str, bool, int]]]:
    """module -> [(imported module, at function level?, line)] for the two packages."""
    out: dict[str, list[tuple[str, bool, int]]] = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            name = _module_name(path)
            tree = ast.parse(path.read_text())
            nested = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                      for n in ast.walk(f)}
            found = []
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    found += [(a.name, id(node) in nested, node.lineno) for a in node.names]
                elif isinstance(node, ast.ImportFrom):
                    found += [(m, id(node) in nested, node.lineno)
                              for m in _resolve(name, path.name == "__init__.py", node)]
            out[name] = found
    return out


IMPORTS = _imports()
MODULES = set(IMPORTS)


def _first_party(target: str) -> str | None:
    """The first-party module ``target`` names (itself or its nearest parent), or None."""
    while target:
        if target in MODULES:
            return target
        target = target.rpartition(".")[0]
    return None


def test_ascan_kernels_never_imports_ascan():
    bad = [(m, t, line) for m, ts in IMPORTS.items() if m.startswith("ascan_kernels")
           for t, _, line in ts if t == "ascan" or t.startswith("ascan.")]
    bad = [b for b in bad if not b[0].startswith("ascan_kernels.tools")]  # tools may trace models
    assert not bad, bad


def test_only_tools_import_tools():
    bad = [(m, t, line) for m, ts in IMPORTS.items() if not m.startswith("ascan_kernels.tools")
           for t, _, line in ts if t.startswith("ascan_kernels.tools")]
    assert not bad, bad


@pytest.mark.parametrize("layer", FOUNDATION)
def test_foundation_never_imports_the_ops(layer):
    bad = [(m, t, line) for m, ts in IMPORTS.items() if m == layer or m.startswith(layer + ".")
           for t, _, line in ts if t.startswith("ascan_kernels.ops")]
    assert not bad, bad


def test_models_use_the_public_kernel_api():
    """``ascan`` reaches kernels through ``import ascan_kernels as K`` (and its version)."""
    allowed = {"ascan_kernels", "ascan_kernels._version"}
    bad = [(m, t, line) for m, ts in IMPORTS.items() if m.startswith("ascan.") or m == "ascan"
           for t, _, line in ts if t.startswith("ascan_kernels") and t not in allowed
           and not t.startswith("ascan_kernels._version.")]
    assert not bad, bad


# ascan_kernels/_build_info.py is written by setup.py and absent in an unbuilt tree: it is
# read when asked, inside a try.
GENERATED = {"ascan_kernels._build_info"}


def test_no_function_level_imports_of_our_own_modules():
    bad = [(m, t, line) for m, ts in IMPORTS.items() for t, nested, line in ts
           if nested and _first_party(t) is not None and _first_party(t) != m and _first_party(t) not in GENERATED]
    assert not bad, bad


def test_no_import_cycles():
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for m, ts in IMPORTS.items():
        for t, _, _ in ts:
            dep = _first_party(t)
            if dep is not None and dep != m and not m.startswith(dep + "."):  # a package's own __init__
                graph[m].add(dep)
    # A submodule imports its package (__init__) implicitly; __init__s importing their own
    # submodules is the normal direction, not a cycle.
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for d in sorted(graph[n]):
            if n.startswith(d + ".") or d.startswith(n + "."):
                continue
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in state and (cycle := visit(d)):
                return cycle
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (cycle := visit(n)):
            pytest.fail(f"import cycle: {' -> '.join(cycle)}")


def test_no_import_order_tricks():
    bad = [str(p.relative_to(ROOT)) for pkg in PACKAGES + ("build_backend",) for p in (ROOT / pkg).rglob("*.py")
           if "noqa: E402" in p.read_text()] + (["setup.py"] if "noqa: E402" in (ROOT / "setup.py").read_text()
                                                else [])
    assert not bad, bad
