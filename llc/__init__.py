"""llc: Local Learning Coefficient estimation (SGLD, HMC, MCLMC, VI) with caching and backends.

Importing ``llc`` does not import JAX; the JAX-backed entry points are loaded on first use.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["estimate", "trajectory", "calibrate", "run_experiment", "build_config", "RunConfig"]


def __getattr__(name: str) -> Any:
    if name == "estimate":
        from llc.api import estimate

        return estimate
    if name == "trajectory":
        from llc.api import trajectory

        return trajectory
    if name == "calibrate":
        from llc.pipeline.calibrate import calibrate_config

        return calibrate_config
    if name == "run_experiment":
        from llc.pipeline.experiment import run_experiment

        return run_experiment
    if name in ("build_config", "RunConfig"):
        from llc import config

        return getattr(config, name)
    raise AttributeError(f"module 'llc' has no attribute {name!r}")
