"""cluster/ is plain asyncio + redis-py: it must not import Django (or rooms/ or chatsite/)."""

from __future__ import annotations

import ast
from pathlib import Path

CLUSTER = Path(__file__).resolve().parents[2] / "cluster"
FORBIDDEN = ("django", "channels", "daphne", "rooms", "chatsite")


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_cluster_imports_nothing_of_django() -> None:
    offenders = {
        f"{path.name}: {name}"
        for path in CLUSTER.glob("*.py")
        for name in imported_modules(path)
        if name.split(".")[0] in FORBIDDEN
    }
    assert not offenders, offenders
    assert len(list(CLUSTER.glob("*.py"))) > 10
