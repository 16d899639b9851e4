"""The dependency direction of DESIGN §1, enforced as an allow-list: each layer names what it may import.

``handlers → engine, adapters, api``; ``engine → api`` only, and of the standard library only what computes
(no clock, no I/O); ``model_server`` may import ``modelwarden.artifacts`` and nothing else of the operator.
Relative imports are resolved to their absolute names first, so ``from ..adapters import kube`` counts.
A layer that is not listed here fails the test: a new package must say what it may use.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCE_ROOTS = (ROOT / "operator", ROOT)  # where `modelwarden` and `model_server` are importable from
FIRST_PARTY = ("modelwarden", "model_server")


@dataclass(frozen=True)
class Layer:
    path: Path
    # first-party packages (prefixes) it may import
    first_party: tuple[str, ...]
    # other modules (top-level names) it may import; None: any
    other: frozenset[str] | None = None


PURE_STDLIB = frozenset({
    "__future__", "bisect", "calendar", "collections", "dataclasses", "datetime", "decimal", "enum", "functools",
    "hashlib", "itertools", "json", "math", "operator", "re", "statistics", "typing",
})
PKG = ROOT / "operator" / "modelwarden"
LAYERS = [
    Layer(PKG / "api", ("modelwarden.api",),
          PURE_STDLIB | {"pathlib", "sys", "types", "pydantic", "pydantic_core", "yaml"}),
    # Signing (issue 19) is OpenSSF model-signing over the directory, with `cryptography` reading the keys.
    Layer(PKG / "artifacts", ("modelwarden.artifacts",),
          PURE_STDLIB | {"base64", "os", "pathlib", "stat", "tempfile", "pydantic", "cryptography", "model_signing"}),
    # No kopf, no kubernetes, no HTTP, no clock, no threads: time is an argument.
    Layer(PKG / "engine", ("modelwarden.api", "modelwarden.engine"), PURE_STDLIB),
    Layer(PKG / "adapters", ("modelwarden.api", "modelwarden.engine", "modelwarden.artifacts",
                             "modelwarden.adapters")),
    Layer(PKG / "handlers", ("modelwarden.api", "modelwarden.engine", "modelwarden.adapters",
                             "modelwarden.handlers")),
    Layer(PKG / "training", ("modelwarden.artifacts", "modelwarden.training")),
    # The evidence bundle is written from what the CLI read and is verified offline: no cluster client, no
    # engine or operator in it, only the standard library besides the artifact and API formats.
    Layer(PKG / "evidence", ("modelwarden.api", "modelwarden.artifacts", "modelwarden.training",
                             "modelwarden.evidence"), frozenset(sys.stdlib_module_names)),
    Layer(PKG / "cli", ("modelwarden", "modelwarden.api", "modelwarden.engine", "modelwarden.artifacts",
                        "modelwarden.training", "modelwarden.evidence", "modelwarden.cli")),
    # Its own third-party stack; kopf and the operator's other layers are not in it.
    Layer(ROOT / "model_server", ("model_server", "modelwarden.artifacts"),
          frozenset(sys.stdlib_module_names) | {
              "cryptography", "httpx", "joblib", "jwt", "kubernetes", "numpy", "onnxruntime", "orjson",
              "prometheus_client", "psycopg", "pydantic", "scipy", "skl2onnx", "sklearn", "skops", "threadpoolctl",
              "httptools", "uvloop"}),
]
# Reading the clock is a side effect; the engine takes `now` as an argument.
CLOCK_CALLS = {"now", "utcnow", "today", "time", "monotonic", "perf_counter"}


def _module(path: Path) -> str:
    for source_root in SOURCE_ROOTS:
        if path.is_relative_to(source_root):
            parts = list(path.relative_to(source_root).with_suffix("").parts)
            return ".".join(parts)
    raise AssertionError(f"{path} is outside the source roots")


def imports(path: Path, module: str) -> Iterator[tuple[int, str]]:
    """Every module ``path`` (the module ``module``) imports, relative imports made absolute."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    package = package.removesuffix(".__init__")
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            yield node.lineno, base
            for alias in node.names:
                yield node.lineno, f"{base}.{alias.name}"


def _allowed(layer: Layer, name: str) -> bool:
    if name.split(".")[0] in FIRST_PARTY:
        # A parent package of an allowed one is fine (`from modelwarden import api` yields `modelwarden` too);
        # what is imported from it is checked by its own name.
        return any(name == p or name.startswith(p + ".") or p.startswith(name + ".") for p in layer.first_party)
    return layer.other is None or name.split(".")[0] in layer.other


def violations(layer: Layer, modules: list[tuple[Path, str]] | None = None) -> list[str]:
    """``modules``: (file, module name) pairs; by default every file of the layer."""
    found = []
    for path, module in modules or [(p, _module(p)) for p in sorted(layer.path.rglob("*.py"))]:
        for lineno, name in imports(path, module):
            if not _allowed(layer, name):
                found.append(f"{path.name}:{lineno} imports {name}")
    return found


@pytest.mark.parametrize("layer", LAYERS, ids=lambda layer: str(layer.path.relative_to(ROOT)))
def test_layer_imports_only_what_it_may(layer: Layer) -> None:
    assert layer.path.is_dir(), f"{layer.path} is part of the layout (DESIGN §1)"
    assert violations(layer) == []


def test_every_package_is_a_listed_layer() -> None:
    listed = {layer.path for layer in LAYERS}
    packages = {p for p in PKG.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert packages - listed == set(), "say what the new package may import"


def test_engine_never_reads_the_clock() -> None:
    found = []
    for path in sorted((PKG / "engine").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in CLOCK_CALLS):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} calls .{node.func.attr}()")
    assert found == []


def test_the_checker_catches_absolute_and_relative_violations(tmp_path: Path) -> None:
    """The rules above are only worth something if they can fail."""
    engine = next(layer for layer in LAYERS if layer.path == PKG / "engine")
    server = next(layer for layer in LAYERS if layer.path == ROOT / "model_server")
    bad_engine, bad_server = tmp_path / "bad.py", tmp_path / "also_bad.py"
    bad_engine.write_text("import kubernetes.client\nfrom time import monotonic\nfrom ..adapters import kube\n"
                          "from . import rollout\nfrom .actions import Event\n")
    bad_server.write_text("from modelwarden.engine import rollout\nfrom modelwarden.artifacts import hashing\n"
                          "import kopf\n")
    assert violations(engine, [(bad_engine, "modelwarden.engine.bad")]) == [
        "bad.py:1 imports kubernetes.client", "bad.py:2 imports time", "bad.py:2 imports time.monotonic",
        "bad.py:3 imports modelwarden.adapters", "bad.py:3 imports modelwarden.adapters.kube",
    ]
    assert violations(server, [(bad_server, "model_server.also_bad")]) == [
        "also_bad.py:1 imports modelwarden.engine", "also_bad.py:1 imports modelwarden.engine.rollout",
        "also_bad.py:3 imports kopf",
    ]


def test_stdlib_names_in_the_engine_allow_list_are_stdlib() -> None:
    assert set(sys.stdlib_module_names) | {"__future__"} >= PURE_STDLIB
