"""LLC metrics from L_n traces, computed with ArviZ (no JAX: usable by ``llc analyze`` anywhere)."""

from __future__ import annotations

import math
from typing import Any

import arviz as az
import numpy as np


def llc_draws(Ln: np.ndarray, L0: float, nbeta: float) -> np.ndarray:
    """Per-draw LLC contributions nbeta * (L_n(w_t) - L0), shape (chains, draws)."""
    return nbeta * (np.asarray(Ln, dtype=np.float64) - L0)


def running_llc(llc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Running mean per chain (chains, draws) and pooled over chains (draws,).

    The pooled running value at draw t is the mean over chains of each chain's running mean,
    which equals the mean of all chains' first t draws (chains have equal lengths).
    """
    llc = np.asarray(llc, dtype=np.float64)
    counts = np.arange(1, llc.shape[1] + 1)
    per_chain = np.cumsum(llc, axis=1) / counts
    pooled = per_chain.mean(axis=0) if llc.shape[0] else np.full(llc.shape[1], np.nan)
    return per_chain, pooled


def diverged_chains(*arrays: np.ndarray) -> np.ndarray:
    """Boolean mask (chains,): a chain diverged if any of its values is NaN or infinite."""
    bad = None
    for arr in arrays:
        arr = np.asarray(arr, dtype=np.float64)
        mask = ~np.isfinite(arr.reshape(arr.shape[0], -1)).all(axis=1)
        bad = mask if bad is None else bad | mask
    return bad


def _finite_or_none(x: float) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def ess_rhat(x: np.ndarray) -> dict[str, float | None]:
    """Bulk/tail ESS, R-hat and MCSE of the mean of a (chains, draws) array via ArviZ."""
    x = np.asarray(x, dtype=np.float64)
    if x.shape[0] == 0 or x.shape[1] < 4:
        return {"ess_bulk": None, "ess_tail": None, "rhat": None, "mcse": None}
    out = {
        "ess_bulk": _finite_or_none(az.ess(x, method="bulk")),
        "ess_tail": _finite_or_none(az.ess(x, method="tail")),
        "rhat": _finite_or_none(az.rhat(x)) if x.shape[0] > 1 else None,
        "mcse": _finite_or_none(az.mcse(x, method="mean")),
    }
    return out


def llc_metrics(Ln: np.ndarray, L0: float, nbeta: float, theta_proj: np.ndarray | None = None) -> dict[str, Any]:
    """lambda-hat and its uncertainty from kept draws, excluding diverged chains."""
    Ln = np.asarray(Ln, dtype=np.float64)
    arrays = [Ln] if theta_proj is None else [Ln, theta_proj]
    bad = diverged_chains(*arrays)
    good = llc_draws(Ln[~bad], L0, nbeta)
    chains, draws = Ln.shape
    metrics: dict[str, Any] = {
        "chains": int(chains),
        "draws": int(draws),
        "diverged_chains": int(bad.sum()),
        "diverged_chain_ids": [int(i) for i in np.flatnonzero(bad)],
    }
    if good.size == 0:
        metrics.update({"llc_mean": None, "llc_se": None, "llc_std": None, "ess": None, "ess_bulk": None,
                        "ess_tail": None, "rhat": None, "mcse": None, "llc_per_chain": [None] * chains})
        return metrics
    diag = ess_rhat(good)
    ess = diag["ess_bulk"]
    std = float(good.std(ddof=1)) if good.size > 1 else 0.0
    per_chain: list[float | None] = [None] * chains
    for i, value in zip(np.flatnonzero(~bad), good.mean(axis=1)):
        per_chain[int(i)] = float(value)
    metrics.update({
        "llc_mean": float(good.mean()),
        # SE of the mean from the effective sample size: sd / sqrt(ESS).
        "llc_se": std / math.sqrt(ess) if ess else None,
        "llc_std": std,
        "ess": ess,
        **diag,
        "llc_per_chain": per_chain,
        "L0": float(L0),
        "nbeta": float(nbeta),
    })
    return metrics
