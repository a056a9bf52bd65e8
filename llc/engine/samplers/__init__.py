"""Estimators behind one interface, looked up by name in ``llc.registry``.

A sampler module exposes ``make(cfg) -> llc.engine.driver.Algorithm`` (run by the one driver);
VI, an optimiser rather than a Markov chain, exposes its own ``run``.
"""

from __future__ import annotations

import importlib
from typing import Callable

from llc import registry


def get_runner(name: str) -> Callable:
    """``run(post, cfg, key, *, proj_dim, progress) -> SamplerOutput`` for the named sampler."""
    spec = registry.sampler(name)
    module = importlib.import_module(spec.module)
    if spec.batched:
        from llc.engine.driver import sampler_runner

        return sampler_runner(module)
    return module.run
