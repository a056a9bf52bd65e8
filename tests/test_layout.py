"""The package's layers: no import cycle, and every import (function-level ones included) goes down the layer order."""

import ast
import importlib
from pathlib import Path

import llc
from llc import config, registry

PKG = Path(llc.__file__).resolve().parent


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> llc modules it imports (anywhere in the file, function-level imports included)."""
    files = {_module_name(p): p for p in PKG.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        is_pkg = path.name == "__init__.py"
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = name.split(".") if is_pkg else name.split(".")[:-1]
                    parts = parts[: len(parts) - (node.level - 1)]
                    base = ".".join(parts + ([base] if base else []))
                # ``from pkg import mod`` depends on pkg.mod; ``from mod import name`` on mod.
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            for t in targets:
                while t and t not in files:
                    t = t.rpartition(".")[0]
                if t and t != name and t.startswith("llc"):
                    deps.add(t)
        graph[name] = deps
    return graph


def _cycle(graph):
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (found := visit(m)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_no_import_cycles():
    cycle = _cycle(import_graph())
    assert cycle is None, " -> ".join(cycle)


# The layers, lowest first: a module imports only from its own layer or those below.
LAYERS = (
    ("llc.registry", "llc.config", "llc.theory"),  # foundation
    ("llc.store",),  # files: atomic writes, cache, NetCDF, records, stored targets (no JAX)
    ("llc.analysis",),  # metrics, diagnostics, flags, health thresholds (no JAX)
    ("llc.engine",),  # JAX: targets, training, posterior, driver, samplers
    ("llc.bridges",),  # other frameworks' models as JAX loss functions (torch imported lazily)
    ("llc.posthoc",),  # figures and reports drawn from stored artifacts (no JAX)
    ("llc.pipeline",),  # experiment, calibrate, trajectory, sweep, backends (may draw what it just wrote)
    ("llc.api", "llc.cli", "llc.console", "llc.__main__", "llc"),  # entry points
)
NO_JAX = ("llc.store", "llc.analysis", "llc.posthoc")


def _within(name: str, prefix: str) -> bool:
    return name == prefix or (prefix != "llc" and name.startswith(prefix + "."))


def layer(name: str) -> int:
    found = [i for i, prefixes in enumerate(LAYERS) for p in prefixes if _within(name, p)]
    assert found, f"{name} is in no layer of tests/test_layout.py::LAYERS"
    return found[0]


def test_layers():
    graph = import_graph()
    bad = [f"{name} (layer {layer(name)}) imports {dep} (layer {layer(dep)})"
           for name, deps in sorted(graph.items()) for dep in sorted(deps) if layer(dep) > layer(name)]
    assert not bad, "imports against the layer order:\n" + "\n".join(bad)
    jax = [f"{name} imports {dep}" for name, deps in sorted(graph.items()) if name.startswith(NO_JAX)
           for dep in sorted(deps) if dep.startswith("llc.engine")]
    assert not jax, "the JAX engine imported by a layer without JAX:\n" + "\n".join(jax)


def test_registry_is_the_one_list():
    assert config.SAMPLERS == tuple(registry.SAMPLERS)
    streams = [s.stream for s in registry.SAMPLERS.values()]
    assert len(set(streams)) == len(streams)
    # Stream ids of the first release: changing one would change that sampler's draws.
    assert {n: registry.SAMPLERS[n].stream for n in ("sgld", "hmc", "mclmc", "mclmc_adjusted", "vi")} == \
        {"sgld": 0, "hmc": 1, "mclmc": 2, "mclmc_adjusted": 3, "vi": 4}
    for spec in registry.SAMPLERS.values():
        assert hasattr(config, spec.config) and hasattr(config.RunConfig(), spec.name)
        # ``batched`` says what the module is: a driver plug-in (``make``) or its own loop (``run``).
        module = importlib.import_module(spec.module)
        assert hasattr(module, "make") == spec.batched, spec.name
        assert spec.batched or hasattr(module, "run"), spec.name
