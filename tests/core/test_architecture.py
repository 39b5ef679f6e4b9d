"""The import rules of docs/architecture.md, checked on the source: layers, the plugins'
public surface of the core, and no import cycle inside the core.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = {
    "daemon": "dutybridge",
    "plugins": "dutybridge_plugins",
    "sandbox": "dutybridge_sandbox",
    "demo": "dutybridge_demo",
}

#: The core modules a plugin may import (docs/architecture.md, "What a plugin may import").
PUBLIC = {
    "dutybridge",
    "dutybridge.checks",
    "dutybridge.commands",
    "dutybridge.config",
    "dutybridge.context",
    "dutybridge.events",
    "dutybridge.http",
    "dutybridge.pagerduty",
    "dutybridge.scheduler",
    "dutybridge.servicenow",
    "dutybridge.store.base",
    "dutybridge.web",
}
#: Lazy imports the CLI makes to hand a command to another package (and nothing else does).
CLI_HANDS_OFF = {("dutybridge.cli", "dutybridge_sandbox.runner"), ("dutybridge.cli", "dutybridge_demo.story")}


def module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = [PACKAGES[rel.parts[0]], *rel.parts[1:]]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules(root: str) -> dict[str, Path]:
    return {module_name(p): p for p in sorted((REPO / root).rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports(name: str, path: Path) -> list[tuple[str, bool]]:
    """(imported module, imported at run time) for every import in the file: False only
    under ``if TYPE_CHECKING``; a function's import runs when the function does."""
    is_package = path.name == "__init__.py"
    out: list[tuple[str, bool]] = []

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for sub in child.body:
                    visit_stmt(sub, False)
                for sub in child.orelse:
                    visit_stmt(sub, top)
                continue
            visit_stmt(child, top)

    def visit_stmt(child: ast.AST, top: bool) -> None:
        if isinstance(child, ast.Import):
            out.extend((alias.name, top) for alias in child.names)
        elif isinstance(child, ast.ImportFrom):
            if child.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (child.level - 1)]
                target = ".".join(base + ([child.module] if child.module else []))
            else:
                target = child.module or ""
            out.append((target, top))
            for alias in child.names:  # `from . import probes` imports a module
                out.append((f"{target}.{alias.name}", top))
        else:
            visit(child, top)

    visit(ast.parse(path.read_text()), True)
    return out


def first_party(target: str, known: set[str]) -> str | None:
    """The module of ours ``target`` names (a ``from x import name`` may name a function)."""
    while target and target not in known:
        target = target.rpartition(".")[0]
    return target or None


ALL = {**modules("daemon"), **modules("plugins"), **modules("sandbox"), **modules("demo")}


def edges(root: str, *, runtime_only: bool) -> list[tuple[str, str]]:
    known = set(ALL)
    out = []
    for name, path in modules(root).items():
        for target, top in imports(name, path):
            if runtime_only and not top:
                continue
            mod = first_party(target, known)
            if mod is not None and mod != name:
                out.append((name, mod))
    return out


def test_the_core_imports_no_plugin_sandbox_or_demo():
    bad = [
        (a, b)
        for a, b in edges("daemon", runtime_only=False)
        if not b.startswith("dutybridge.") and b != "dutybridge" and (a, b) not in CLI_HANDS_OFF
    ]
    assert bad == []


def test_the_sandbox_imports_neither_the_core_nor_the_plugins():
    bad = [(a, b) for a, b in edges("sandbox", runtime_only=False) if not b.startswith("dutybridge_sandbox")]
    assert bad == []


def test_plugins_import_only_the_cores_public_modules():
    bad = [
        (a, b)
        for a, b in edges("plugins", runtime_only=False)
        if (b.startswith("dutybridge.") or b == "dutybridge") and b not in PUBLIC
    ]
    assert bad == [], "plugins reach into core internals"
    crossing = [
        (a, b)
        for a, b in edges("plugins", runtime_only=False)
        if b.startswith("dutybridge_plugins.") and a.split(".")[1] != b.split(".")[1]
    ]
    assert crossing == [], "a plugin imports another plugin: talk through hooks instead"


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each import cycle found by a depth-first walk (a submodule importing its own
    package is how Python loads packages, not a cycle)."""
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def walk(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if node.startswith(nxt + "."):
                continue
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif state.get(nxt) is None:
                walk(nxt, stack + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            walk(node, [node])
    return cycles


def test_the_cycle_finder_finds_a_cycle_and_ignores_parent_packages():
    graph = {"a.http": {"a.plugins"}, "a.plugins": {"a.hookspecs", "a"}, "a.hookspecs": {"a.http"}}
    assert find_cycles(graph) == [["a.hookspecs", "a.http", "a.plugins", "a.hookspecs"]]


@pytest.mark.parametrize("root", ["daemon", "plugins", "demo"])
def test_no_import_cycle_at_run_time(root):
    """Type-only imports aside, no module imports (at load or in a function) a module
    that imports it back, directly or through others."""
    graph: dict[str, set[str]] = {}
    for a, b in edges(root, runtime_only=True):
        graph.setdefault(a, set()).add(b)
    assert find_cycles(graph) == []


def test_the_architecture_page_names_every_public_module():
    text = (REPO / "docs" / "architecture.md").read_text()
    section = text.split("## What a plugin may import", 1)[1].split("\n## ", 1)[0]
    named = {m for m in PUBLIC if f"`{m}`" in section}
    assert named == PUBLIC
