"""The house has floors: core/ at the bottom, drivers/ on it, agent/ on top, simulator/
beside (it pretends to be the world and may use every floor). An import may only point
down. Every import is checked, also those inside functions."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# package -> the packages of ours it must never import
FORBIDDEN = {
    "core": {"agent", "drivers", "simulator"},
    "drivers": {"agent", "simulator"},
    "agent": {"simulator"},
}


def imported_packages(path: Path) -> set[tuple[str, int]]:
    """(top-level package, line) of every import in a module, at any depth."""
    found: set[tuple[str, int]] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update((alias.name.split(".")[0], node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add((node.module.split(".")[0], node.lineno))
    return found


def violations(package: str) -> list[str]:
    out = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for top, line in sorted(imported_packages(path)):
            if top in FORBIDDEN[package]:
                out.append(f"{path.relative_to(ROOT)}:{line} imports {top}")
    return out


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_only_point_down(package: str) -> None:
    assert violations(package) == []


def test_the_running_agent_never_imports_the_technicians_tools() -> None:
    """agent/cli/ sits on top of agent/: the tools may use the agent, never the reverse
    (what runs unattended for years must not carry the CLI, its renderers or sqlite-utils)."""
    found = []
    for path in sorted((ROOT / "agent").rglob("*.py")):
        if (ROOT / "agent" / "cli") in path.parents:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            if any(n == "agent.cli" or n.startswith("agent.cli.") for n in names):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert found == []


def test_the_checker_sees_an_import_inside_a_function(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from agent.config import load_config\n    import simulator\n")
    assert imported_packages(module) == {("agent", 2), ("simulator", 3)}
