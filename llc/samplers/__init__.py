"""Estimators behind one interface (see ``llc.samplers.base``), looked up by name."""

from __future__ import annotations

import importlib
from typing import Callable

# name -> module defining ``run(post, cfg, key, *, proj_dim, progress)``
_MODULES = {
    "sgld": "llc.samplers.sgld",
    "hmc": "llc.samplers.hmc",
    "mclmc": "llc.samplers.mclmc",
    "mclmc_adjusted": "llc.samplers.mclmc_adjusted",
    "vi": "llc.samplers.vi",
}


def get_runner(name: str) -> Callable:
    if name not in _MODULES:
        raise KeyError(f"unknown sampler {name!r}; choose from {', '.join(_MODULES)}")
    try:
        module = importlib.import_module(_MODULES[name])
    except ModuleNotFoundError as exc:
        if exc.name == _MODULES[name]:
            raise NotImplementedError(f"sampler {name!r} is not available in this version of llc") from None
        raise
    return module.run
