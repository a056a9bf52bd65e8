"""llc: Local Learning Coefficient estimation (SGLD, HMC, MCLMC, VI) with caching and backends.

Importing ``llc`` does not import JAX; the JAX-backed entry points are loaded on first use.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# Public name -> (module, attribute), imported on first access (module ``__getattr__``).
_LAZY = {
    "estimate": ("llc.api", "estimate"),
    "trajectory": ("llc.api", "trajectory"),
    "Estimate": ("llc.api", "Estimate"),
    "Trajectory": ("llc.api", "Trajectory"),
    "DivergedWarning": ("llc.api", "DivergedWarning"),
    "NotAMinimumWarning": ("llc.api", "NotAMinimumWarning"),
    "calibrate": ("llc.pipeline.calibrate", "calibrate_config"),
    "run_experiment": ("llc.pipeline.experiment", "run_experiment"),
    "build_config": ("llc.config", "build_config"),
    "RunConfig": ("llc.config", "RunConfig"),
    "ConfigError": ("llc.config", "ConfigError"),
}
__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'llc' has no attribute {name!r}")


def __dir__() -> list[str]:
    # The lazy names are not module globals yet: list them for dir() and tab completion.
    return sorted(__all__ + ["__version__"])
