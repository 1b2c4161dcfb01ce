"""The layout docs/architecture.md describes: which package may import which, and no
import cycle among gateway/, protocol/ and db/."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("gateway", "protocol", "db")

# A package (prefix of module names) and the prefixes it must not import.
FORBIDDEN = {
    "protocol": ("gateway", "db"),
    "db": ("gateway",),
    "gateway.core": (
        "gateway.native",
        "gateway.supabase",
        "gateway.rpc",
        "gateway.presence",
        "gateway.edge",
        "gateway.app",
        "gateway.settings",
        "protocol.frames",
        "protocol.phoenix",
        "protocol.codec",
    ),
    "gateway.presence": (
        "gateway.native",
        "gateway.supabase",
        "gateway.rpc",
        "gateway.edge",
        "gateway.app",
    ),
    "gateway.edge": ("gateway.native", "gateway.supabase", "gateway.rpc", "gateway.app"),
    "gateway.rpc": ("gateway.native", "gateway.supabase", "gateway.edge", "gateway.app"),
    "gateway.native": ("gateway.supabase", "gateway.app"),
    "gateway.supabase": ("gateway.native", "gateway.rpc", "gateway.app"),
    "gateway.metrics": ("gateway.",),
    "gateway.settings": ("gateway.",),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every module of ours `path` imports, type-checking-only imports included."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name.split(".")[0] in PACKAGES}


def graph() -> dict[str, set[str]]:
    modules = {
        module_name(path): path for package in PACKAGES for path in (ROOT / package).rglob("*.py")
    }
    return {
        name: {target for target in imports_of(path) if target in modules and target != name}
        for name, path in modules.items()
    }


def within(name: str, prefix: str) -> bool:
    return name == prefix.rstrip(".") or name.startswith(
        prefix if prefix.endswith(".") else prefix + "."
    )


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_each_package_imports_only_what_the_architecture_allows(package: str) -> None:
    broken = sorted(
        f"{module} imports {target}"
        for module, targets in graph().items()
        if within(module, package)
        for target in targets
        for forbidden in FORBIDDEN[package]
        if within(target, forbidden)
    )
    assert broken == [], broken


def test_no_import_cycle() -> None:
    edges = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(edges[node]):
            if state.get(target) == 1:
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, [*path, target])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert cycles == [], cycles
