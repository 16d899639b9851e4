"""The dependency direction of DESIGN §1, enforced: the engine stays pure, the server stays separate."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "operator" / "modelwarden"

# Top-level modules a layer must not import (prefix match on the dotted name).
FORBIDDEN: dict[Path, tuple[str, ...]] = {
    PKG / "engine": (
        "kopf", "kubernetes", "httpx", "requests", "aiohttp", "urllib", "urllib3", "http", "socket",
        "prometheus_api_client", "psycopg", "sqlite3", "time", "asyncio", "subprocess",
        "modelwarden.adapters", "modelwarden.handlers", "modelwarden.cli", "modelwarden.training",
    ),
    PKG / "api": ("kopf", "kubernetes", "modelwarden.engine", "modelwarden.adapters", "modelwarden.handlers"),
    PKG / "artifacts": ("kopf", "kubernetes", "modelwarden.engine", "modelwarden.adapters", "modelwarden.handlers"),
    # The bundle is written from what the CLI read and verified offline: no cluster client in it.
    PKG / "evidence": ("kopf", "kubernetes", "modelwarden.engine", "modelwarden.adapters", "modelwarden.handlers",
                       "modelwarden.cli"),
    ROOT / "model_server": (
        "modelwarden.api", "modelwarden.engine", "modelwarden.adapters", "modelwarden.handlers",
        "modelwarden.cli", "modelwarden.training", "kopf",
    ),
}
# Reading the clock is a side effect; the engine takes `now` as an argument.
CLOCK_CALLS = {"now", "utcnow", "today", "time", "monotonic", "perf_counter"}


def _imports(tree: ast.AST) -> Iterator[tuple[int, str]]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module
            for alias in node.names:
                yield node.lineno, f"{node.module}.{alias.name}"


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name


def _violations(layer: Path, forbidden: tuple[str, ...]) -> list[str]:
    found = []
    for path in sorted(layer.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for lineno, name in _imports(tree):
            if any(name == f or name.startswith(f + ".") for f in forbidden):
                found.append(f"{_shown(path)}:{lineno} imports {name}")
    return found


@pytest.mark.parametrize("layer", list(FORBIDDEN), ids=lambda p: str(p.relative_to(ROOT)))
def test_layer_imports_only_what_it_may(layer: Path) -> None:
    assert layer.is_dir(), f"{layer} is part of the layout (DESIGN §1)"
    assert _violations(layer, FORBIDDEN[layer]) == []


def test_engine_never_reads_the_clock() -> None:
    found = []
    for path in sorted((PKG / "engine").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in CLOCK_CALLS):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} calls .{node.func.attr}()")
    assert found == []


def test_the_checker_catches_a_violation(tmp_path: Path) -> None:
    """The rule above is only worth something if it can fail."""
    (tmp_path / "bad.py").write_text("import kubernetes.client\nfrom time import monotonic\n")
    assert _violations(tmp_path, FORBIDDEN[PKG / "engine"]) == [
        "bad.py:1 imports kubernetes.client", "bad.py:2 imports time", "bad.py:2 imports time.monotonic",
    ]
