"""The shape of the code: layers import only downwards, and no module imports itself in a circle.

Imports are read from the source (ast), lazy ones inside functions included. Two graphs: the one
that runs (imports under `if TYPE_CHECKING:` left out), which must have no circle at all, and the
whole one (type-only imports counted), whose circles are a debt listed in KNOWN_CIRCLES: a new one,
or a listed one that grew, fails; a listed one that shrank or went fails too, so the list is kept
exact and only ever shrinks. Room sizes are a guide, not a gate: `python tests/test_layers.py`
prints the largest modules (STYLE.md: rooms of about 300 lines).
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
ROOM_LINES = 300     # the size STYLE.md suggests; the report marks the modules past it


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


def imports_of(name: str, path: Path, known: dict[str, Path], type_only: bool = False) -> set[str]:
    """The llmos modules `name` imports: lazy imports included; `if TYPE_CHECKING:` ones only if type_only."""
    is_package = path.name == "__init__.py"
    base = name.split(".") if is_package else name.split(".")[:-1]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node) and not type_only:
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


def circles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The graph's circles as its strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[frozenset[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while not component or v not in component:
                component.add(stack.pop())
            if len(component) > 1:
                found.append(frozenset(component))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return found


MODULES = modules()
GRAPH = {name: imports_of(name, path, MODULES) for name, path in MODULES.items()}
TYPED_GRAPH = {name: imports_of(name, path, MODULES, type_only=True) for name, path in MODULES.items()}

# Circles that exist only through `if TYPE_CHECKING:` imports: nothing runs them, but a reader still
# meets a tangle. The kernel has none: its tables take their collaborators when kernel.py builds them,
# and only the syscalls (which boot.py hands in) name the Kernel. Each entry is the exact set of
# modules on one circle; keep the list exact.
KNOWN_CIRCLES = {
    frozenset({"llmos.userland.connection", "llmos.userland.stream"}),
    frozenset({"llmos.services.context", "llmos.services.host"}),
}


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_a_module_imports_only_its_own_layer_and_the_layers_below(module):
    """Type-only imports count: a layer that names a higher layer's types depends on it all the same."""
    layer = layer_of(module)
    allowed = MAY_IMPORT[layer] | EXCEPTIONS.get(module, set())
    wrong = sorted(m for m in TYPED_GRAPH[module] if layer_of(m) != layer and layer_of(m) not in allowed)
    assert not wrong, f"{module} imports {wrong}; {layer} may import only {sorted(MAY_IMPORT[layer])}"


def test_no_module_imports_itself_through_a_circle_when_it_runs():
    found = circles(GRAPH)
    assert not found, "import circles: " + "; ".join(" <-> ".join(sorted(c)) for c in found)


def test_type_only_imports_make_no_circle_but_the_listed_ones():
    found = set(circles(TYPED_GRAPH))
    new = [sorted(c) for c in found - KNOWN_CIRCLES]
    gone = [sorted(c) for c in KNOWN_CIRCLES - found]
    assert not new, f"import circles through TYPE_CHECKING imports, new or grown: {new}"
    assert not gone, f"listed circles that shrank or went (well done: update KNOWN_CIRCLES): {gone}"


def test_only_boot_and_the_syscalls_name_the_kernel():
    """The kernel's tables are handed their collaborators (kernel.py builds them) and never reach through the
    whole Kernel; the syscalls, the kernel's entry points, are the only code that sees all of it."""
    naming = sorted(m for m, deps in TYPED_GRAPH.items() if "llmos.kernel.kernel" in deps)
    others = [m for m in naming if m != "llmos.kernel.boot" and not m.startswith("llmos.kernel.syscalls.")]
    assert naming and not others, f"{others} import the Kernel; hand them what they use instead"


def largest_rooms(n: int = 15) -> list[tuple[int, str]]:
    """The n longest modules as (lines, module), longest first."""
    sizes = [(path.read_text().count("\n"), name) for name, path in MODULES.items()]
    return sorted(sizes, reverse=True)[:n]


def room_report(n: int = 15) -> str:
    rows = [f"{lines:6d}  {name}{'  (over ' + str(ROOM_LINES) + ')' if lines > ROOM_LINES else ''}"
            for lines, name in largest_rooms(n)]
    return "\n".join([f"the {n} largest modules (a guide: rooms of about {ROOM_LINES} lines)"] + rows)


def test_the_room_report_lists_the_longest_modules_first(capsys):
    """Printed for whoever runs this file alone (-n 0 -s, or python tests/test_layers.py); never a gate."""
    report = largest_rooms(len(MODULES))
    longest = max(MODULES, key=lambda m: MODULES[m].read_text().count("\n"))
    assert report[0][1] == longest and [lines for lines, _ in report] == sorted((l for l, _ in report), reverse=True)
    with capsys.disabled():
        print("\n" + room_report())


def test_the_walker_sees_a_circle_a_lazy_import_and_a_type_only_one(tmp_path):
    """The checks above can fail: a lazy import inside a function is an edge when it runs, a
    TYPE_CHECKING one only in the typed graph, and a circle through either is found."""
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from llmos.kernel import b\n"
                 "def f():\n    from llmos.kernel import b\n")
    b.write_text("import llmos.kernel.a\n")
    known = {"llmos.kernel.a": a, "llmos.kernel.b": b}
    assert imports_of("llmos.kernel.a", a, known) == {"llmos.kernel.b"}
    assert imports_of("llmos.kernel.b", b, known) == {"llmos.kernel.a"}
    a.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from llmos.kernel import b\n")
    assert imports_of("llmos.kernel.a", a, known) == set()
    assert imports_of("llmos.kernel.a", a, known, type_only=True) == {"llmos.kernel.b"}
    graph = {m: imports_of(m, p, known) for m, p in known.items()}
    typed = {m: imports_of(m, p, known, type_only=True) for m, p in known.items()}
    assert circles(graph) == [] and circles(typed) == [frozenset(known)]


if __name__ == "__main__":
    print(room_report(30))
