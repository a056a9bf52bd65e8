"""Estimators behind one interface, looked up by name in ``llc.registry``.

A sampler module exposes ``make(cfg) -> llc.engine.driver.Algorithm`` (a Markov chain the one
driver runs, batched); VI, an optimiser rather than a Markov chain, exposes its own ``run``.
``load`` is the one place a sampler's module is imported by name; ``llc.pipeline.sampling`` is
the one road from sampler configs to draws.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from llc import registry


def load(name: str) -> ModuleType:
    """The engine module of the named sampler (KeyError naming the choices for an unknown name)."""
    return importlib.import_module(registry.sampler(name).module)
