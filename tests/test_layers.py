"""The package layers, enforced: imports point one way and no package imports in a cycle.

Order, from the edge down (a module may import its own package and any lower layer):

    services.service                          entry point (flows/ and its CLI sit above services/)
    services.wiring                           builds what services.service defines
    services.edge                             HTTP app, OIP v2 codec and routes, admin
    services.request                          predictor, schema, assembly, catalog, tokenizer
    services.rollout                          routing, rollout state, feedback, statistics
    services.runner | services.state          model runner | Redis-backed state (siblings)
    services.registry                         registry and artifact stores
    services.settings, services.errors        base
    monitoring.metrics                        base (prometheus only)

Function-level imports count: hiding one inside a function does not make it point down.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENTRY = 8
RANK = {
    "services.service": ENTRY,
    "services.wiring": ENTRY - 1,  # builds what services.service defines
    "services.edge": 6,
    "services.request": 5,
    "services.rollout": 4,
    "services.runner": 3,
    "services.state": 3,
    "services.registry": 2,
    "services.settings": 1,
    "services.errors": 1,
    "services": 1,  # the package root: __version__
    "monitoring.metrics": 1,
}


def _unit(module: str) -> str | None:
    """The layer unit a dotted module belongs to (its package, or itself at the top)."""
    for name in sorted(RANK, key=len, reverse=True):
        if module == name or module.startswith(name + "."):
            return name
    return None


def _modules(top: str) -> dict[str, Path]:
    out = {}
    for path in sorted((ROOT / top).rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(path: Path) -> set[str]:
    """Every servekit module ``path`` imports, at any depth (TYPE_CHECKING included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    tops = ("services", "flows", "monitoring", "benchmarks", "tests")
    return {m for m in found if m.split(".")[0] in tops}


def _runtime_imports(path: Path) -> set[str]:
    """Like ``_imports``, without the imports under ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            node.body = [ast.Pass()]
    tmp = ast.unparse(tree)
    found: set[str] = set()
    for node in ast.walk(ast.parse(tmp)):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


SERVICES = _modules("services")


@pytest.mark.parametrize("module", sorted(SERVICES))
def test_services_import_only_downwards(module: str) -> None:
    unit = _unit(module)
    assert unit is not None, f"{module} belongs to no layer: add its package to RANK"
    for target in sorted(_imports(SERVICES[module])):
        top = target.split(".")[0]
        entry = RANK[unit] >= ENTRY - 1  # the entry points and the wiring
        # Entry points wire the observers (monitoring) in.
        allowed = ("services", "monitoring")
        assert top in allowed, f"{module} imports {target} (above services/)"
        if top == "monitoring" and not entry:
            assert target.startswith("monitoring.metrics"), f"{module} imports {target}"
        if top != "services":
            continue
        t_unit = _unit(target)
        if t_unit is None or t_unit == unit:
            continue
        assert RANK[t_unit] < RANK[unit], (
            f"{module} ({unit}, layer {RANK[unit]}) imports {target} "
            f"({t_unit}, layer {RANK[t_unit]}): imports must point down"
        )


def test_monitoring_metrics_is_a_base_module() -> None:
    path = ROOT / "monitoring" / "metrics.py"
    assert not {m for m in _imports(path) if m.split(".")[0] != "monitoring"}


def test_benchmarks_and_flows_do_not_import_tests() -> None:
    for top in ("benchmarks", "flows", "monitoring", "services"):
        for module, path in _modules(top).items():
            bad = {m for m in _imports(path) if m.split(".")[0] in ("tests", "benchmarks")}
            if top == "benchmarks":
                bad = {m for m in bad if m.split(".")[0] == "tests"}
            assert not bad, f"{module} imports {sorted(bad)}"


def test_no_import_cycles_between_modules() -> None:
    """Runtime imports (function level included) between servekit modules form no cycle."""
    modules = {**SERVICES, **_modules("flows"), **_modules("monitoring")}
    graph: dict[str, set[str]] = defaultdict(set)
    for module, path in modules.items():
        for target in _runtime_imports(path):
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != module and not module.startswith(target + "."):
                graph[module].add(target)
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt) :] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for module in sorted(modules):
        if module not in state:
            visit(module)


@pytest.mark.parametrize("top", ["services", "flows", "monitoring", "benchmarks"])
def test_modules_stay_small(top: str) -> None:
    """No module over 400 lines and no function over 60: each unit names one idea."""
    for module, path in _modules(top).items():
        source = path.read_text()
        assert len(source.splitlines()) <= 400, f"{module}: {len(source.splitlines())} lines"
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                assert length <= 60, f"{module}.{node.name}: {length} lines"
