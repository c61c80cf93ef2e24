"""The packages' boundaries (ARCHITECTURE.md): layers imports neither tasks nor zoo; tasks
imports neither layers nor zoo; zoo reaches layers through its public names only; and no
module of the three imports itself in a circle, counting the imports made inside functions."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("layers", "tasks", "zoo")


def modules() -> dict[str, Path]:
    """Module name -> file, for every module of the three packages."""
    return {(pk if f.stem == "__init__" else f"{pk}.{f.stem}"): f
            for pk in PACKAGES for f in sorted((ROOT / pk).glob("*.py"))}


def imported(name: str, path: Path) -> set[str]:
    """Every module ``path`` imports, at the top or inside a function, as absolute names (an
    imported name counts as a module too, so ``from . import ess`` gives ``zoo.ess``)."""
    package = name if path.stem == "__init__" else name.rsplit(".", 1)[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = f"{package}.{base}" if base else package
            out |= {base} | {f"{base}.{a.name}" for a in node.names}
    return out


@pytest.mark.parametrize("package,forbidden", [("layers", ("tasks", "zoo", "lightning", "hydra")),
                                               ("tasks", ("layers", "zoo", "lightning", "hydra"))])
def test_package_imports_stand_alone(package, forbidden):
    code = (f"import sys, {package}; "
            f"bad = [m for m in {forbidden!r} if m in sys.modules]; "
            "assert not bad, bad")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("package,forbidden", [("layers", ("tasks", "zoo")),
                                               ("tasks", ("layers", "zoo"))])
def test_no_module_imports_a_forbidden_package(package, forbidden):
    """Every module, not only what ``import <package>`` loads (``layers.ess``, the kernels)."""
    bad = [(name, m) for name, path in modules().items() if name.split(".")[0] == package
           for m in imported(name, path) if m.split(".")[0] in forbidden]
    assert not bad, bad


def test_zoo_imports_no_private_layers_module():
    bad = [(name, m) for name, path in modules().items() if name.startswith("zoo")
           for m in imported(name, path)
           if m.startswith("layers.") and m.split(".")[1].startswith("_")]
    assert not bad, bad


def test_no_import_circle():
    mods = modules()
    graph = {name: {m for m in imported(name, path) if m in mods and m != name}
             for name, path in mods.items()}
    state: dict[str, str] = {}  # "open" while on the path, "done" after

    def visit(name: str, path: list[str]) -> None:
        state[name] = "open"
        for nxt in sorted(graph[name]):
            if state.get(nxt) == "open":
                pytest.fail("import circle: " + " -> ".join(path[path.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
