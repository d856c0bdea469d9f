"""The import contracts of docs/architecture (DESIGN section 2): layers that only point down, no import cycle, and
decision logic that stays pure. Every import counts: at module level, inside a function, under TYPE_CHECKING."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from helpers import ROOT

PACKAGE = ROOT / "adaskip"
# Bottom to top: a module may import its own layer and those below, never one above.
LAYERS: list[tuple[str, ...]] = [
    ("errors", "redact", "console", "files"),  # shared helpers
    ("models", "data"),
    ("config",),  # typed params.yaml, a schema: imports the datasets' section, never timm
    ("build", "training", "evaluation"),  # build: params.yaml's model as a network
    ("select", "serving", "ablation", "export", "export_all", "profile", "recipes"),
    ("tracking",),  # the only MLflow adapter
    ("orchestration",),  # the only Ray layer
    ("stage", "cli", "ops"),  # ops: tools beside the library (the tracking server), imported by nothing in it
]
# Decision logic: choosing a sub-network under a budget, a study's statistics and plan.
PURE = ("select", "serving", "ablation.power", "ablation.plan", "ablation.stats")
NOT_IN_PURE = ("adaskip.config", "adaskip.tracking", "adaskip.orchestration", "adaskip.stage", "ray", "mlflow")


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Every module's imports: adaskip modules (``from .x import y`` counts ``x`` and, where ``y`` is a module,
    ``x.y``) and the top-level names of other packages."""
    out: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found |= {a.name if a.name.startswith("adaskip") else a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if not target.startswith("adaskip"):
                    found.add(target.split(".")[0])
                    continue
                found.add(target)
                found |= {f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in modules}
        out[name] = found
    return out


def _layer(module: str) -> int | None:
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else ""
    return next((i for i, layer in enumerate(LAYERS) if top in layer), None)


def upward(graph: dict[str, set[str]]) -> list[str]:
    """``a -> b`` for every import of a higher layer's module."""
    return sorted(
        f"{a} -> {b} (layer {_layer(a)} -> {_layer(b)})"
        for a, targets in graph.items()
        for b in targets
        if b.startswith("adaskip.") and _layer(a) is not None and (_layer(b) or 0) > _layer(a)
    )


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while (w := stack.pop()) != v:
                component.append(w)
            if component:
                found.append(sorted([v, *component]))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return imports(_modules())


def test_every_module_has_a_layer(graph):
    assert [m for m in graph if m != "adaskip" and _layer(m) is None] == []


def test_layers_only_point_down(graph):
    assert upward(graph) == []


def test_no_import_cycle(graph):
    assert cycles(graph) == []


def reached(graph: dict[str, set[str]], start: str) -> set[str]:
    """Everything importing ``start`` imports, directly or through other adaskip modules."""
    seen, todo = set(), [start]
    while todo:
        for t in graph.get(todo.pop(), ()):
            if t not in seen:
                seen.add(t)
                todo.append(t)
    return seen


def test_decision_logic_imports_no_config_tracking_or_ray(graph):
    """Not even through another module: importing one of them loads none of those."""
    bad = {m: sorted(t for t in reached(graph, m) if t.startswith(NOT_IN_PURE)) for m in graph}
    assert {m: t for m, t in bad.items() if m.removeprefix("adaskip.") in PURE and t} == {}


def test_the_checks_catch_what_they_are_for():
    """A made-up graph with an upward import and a cycle fails both checks."""
    made = {"adaskip.models.a": {"adaskip.tracking.b"}, "adaskip.tracking.b": {"adaskip.models.a"}}
    assert upward(made) == ["adaskip.models.a -> adaskip.tracking.b (layer 1 -> 5)"]
    assert cycles(made) == [["adaskip.models.a", "adaskip.tracking.b"]]
