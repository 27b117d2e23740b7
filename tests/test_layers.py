"""The shape of the code: layers import only downwards, no module imports itself in a circle,
and no room grows past about 300 lines without saying why at its top.

Imports are read from the source (ast), lazy ones inside functions included; imports under
`if TYPE_CHECKING:` are not, since they never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = {"kernel": "llmos.kernel", "drivers": "llmos.drivers", "services": "llmos.services",
            "userland": "llmos.userland", "specs": "llmos.specs"}
# What each layer may import of llmos besides itself: the kernel and the drivers meet only in specs/.
MAY_IMPORT = {
    "llmos.specs": set(),
    "llmos.kernel": {"llmos.specs"},
    "llmos.drivers": {"llmos.specs"},
    "llmos.userland": {"llmos.specs"},
    "llmos.services": {"llmos.specs", "llmos.userland"},
}
# The `llmos` command hosts the commands that service plugins register (as simonw/llm does), so
# it alone of userland may load llmos.services; it does so lazily, when a plugin command is used.
EXCEPTIONS = {"llmos.userland.cli.plugins": {"llmos.services"}}
ROOM_LINES = 300
LONG_ROOM_MARK = "Why this room is long:"


def modules() -> dict[str, Path]:
    out = {}
    for folder, package in PACKAGES.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            parts = list(path.relative_to(REPO / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join([package] + parts)] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The llmos modules `name` imports when it runs (lazy imports included, TYPE_CHECKING ones not)."""
    is_package = path.name == "__init__.py"
    base = name.split(".") if is_package else name.split(".")[:-1]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                target = ".".join(base[:len(base) - node.level + 1] + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{a.name}" for a in node.names)   # `from pkg import module`
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    return {m for m in found if m in known and m != name}


def layer_of(module: str) -> str:
    return ".".join(module.split(".")[:2])


GRAPH = {name: imports_of(name, path, modules()) for name, path in modules().items()}


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_a_module_imports_only_its_own_layer_and_the_layers_below(module):
    layer = layer_of(module)
    allowed = MAY_IMPORT[layer] | EXCEPTIONS.get(module, set())
    wrong = sorted(m for m in GRAPH[module] if layer_of(m) != layer and layer_of(m) not in allowed)
    assert not wrong, f"{module} imports {wrong}; {layer} may import only {sorted(MAY_IMPORT[layer])}"


def test_no_module_imports_itself_through_a_circle():
    done: set[str] = set()
    path: list[str] = []

    def walk(node: str) -> None:
        if node in path:
            cycle = path[path.index(node):] + [node]
            pytest.fail("import circle: " + " -> ".join(cycle))
        if node in done:
            return
        path.append(node)
        for nxt in sorted(GRAPH[node]):
            walk(nxt)
        path.pop()
        done.add(node)

    for module in sorted(GRAPH):
        walk(module)


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_a_room_over_300_lines_says_why_at_its_top(module):
    text = modules()[module].read_text()
    lines = text.count("\n")
    head = (ast.get_docstring(ast.parse(text)) or "")
    assert lines <= ROOM_LINES or LONG_ROOM_MARK in head, \
        f"{module} has {lines} lines: split it, or say '{LONG_ROOM_MARK} ...' in its docstring"


def test_the_walker_sees_a_circle_and_a_lazy_import(tmp_path):
    """The checks above can fail: a lazy import inside a function is an edge, a TYPE_CHECKING one is not."""
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from llmos.kernel import b\n"
                 "def f():\n    from llmos.kernel import b\n")
    b.write_text("import llmos.kernel.a\n")
    known = {"llmos.kernel.a": a, "llmos.kernel.b": b}
    assert imports_of("llmos.kernel.a", a, known) == {"llmos.kernel.b"}
    assert imports_of("llmos.kernel.b", b, known) == {"llmos.kernel.a"}
    a.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from llmos.kernel import b\n")
    assert imports_of("llmos.kernel.a", a, known) == set()
