"""LLC metrics from L_n traces, computed with ArviZ (no JAX: usable by ``llc analyze`` anywhere)."""

from __future__ import annotations

import math
from typing import Any

import arviz as az
import numpy as np

from llc import registry
from llc.analysis import flags
from llc.analysis.health import apply_extrapolation
from llc.store.artifacts import llc_draws, nc_attrs, running_llc, sampler_info  # noqa: F401  (re-exported)


def diverged_chains(*arrays: np.ndarray) -> np.ndarray:
    """Boolean mask (chains,): a chain diverged if any of its values is NaN or infinite."""
    bad = None
    for arr in arrays:
        arr = np.asarray(arr, dtype=np.float64)
        mask = ~np.isfinite(arr.reshape(arr.shape[0], -1)).all(axis=1)
        bad = mask if bad is None else bad | mask
    return bad


def _finite_or_none(x) -> float | None:
    # ArviZ returns 0-d or 1-element arrays; NumPy >= 2.5 refuses float() on the latter.
    x = float(np.asarray(x).reshape(()))
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


def llc_metrics(Ln: np.ndarray, L0: float, nbeta: float, theta_proj: np.ndarray | None = None,
                independent: bool = False) -> dict[str, Any]:
    """lambda-hat and its uncertainty from kept draws, excluding diverged chains.

    ``independent``: the draws are i.i.d. (VI), so no ESS may exceed their number; ArviZ's
    autocorrelation estimate can put it above (negative lag correlations are noise here), which
    would make the SE too small.
    """
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
    if independent:
        for key in ("ess_bulk", "ess_tail"):
            if diag[key] is not None:
                diag[key] = min(diag[key], float(good.size))
        if diag["mcse"] is not None and diag["ess_bulk"]:
            diag["mcse"] = max(diag["mcse"], float(good.std(ddof=1)) / math.sqrt(diag["ess_bulk"]))
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


# --------------------------------------------------------------------------- per-sampler metrics
#
# Everything below works on what a sampler NetCDF holds (see llc/artifacts.py), so that ``llc run``
# and ``llc analyze`` compute the metrics with the same function from the same numbers.

ACCEPTANCE_STATS = ("acceptance_rate",)
ENERGY_CHANGE_STAT = "energy_change"
DIVERGING_STAT = "diverging"
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def _q_name(q: float) -> str:
    return "median" if q == 0.5 else f"q{round(q * 100):02d}"


def acceptance_metrics(acc: np.ndarray) -> dict[str, Any]:
    """Mean/min/max/quantiles of per-draw acceptance rates (chains, draws), plus per-chain means."""
    acc = np.asarray(acc, dtype=np.float64)
    finite = acc[np.isfinite(acc)]
    if finite.size == 0:
        return {"acceptance_mean": None}
    out: dict[str, Any] = {
        "acceptance_mean": float(finite.mean()),
        "acceptance_min": float(finite.min()),
        "acceptance_max": float(finite.max()),
    }
    for q, v in zip(QUANTILES, np.quantile(finite, QUANTILES)):
        out[f"acceptance_{_q_name(q)}"] = float(v)
    with np.errstate(invalid="ignore"):
        per_chain = [np.nanmean(row) if np.isfinite(row).any() else np.nan for row in acc.reshape(acc.shape[0], -1)]
    out["acceptance_per_chain"] = [_finite_or_none(v) for v in per_chain]
    return out


def energy_change_metrics(de: np.ndarray, dim: int | None = None) -> dict[str, Any]:
    """Statistics of the per-draw energy change of an (unadjusted) MCLMC-type sampler.

    ``var_per_dim`` = Var[dE]/d is the quantity MCLMC's step-size tuner targets (small values,
    around 5e-4, mean the discretisation bias is small).
    """
    de = np.asarray(de, dtype=np.float64)
    finite = de[np.isfinite(de)]
    if finite.size == 0:
        return {"energy_change_mean": None}
    out = {
        "energy_change_mean": float(finite.mean()),
        "energy_change_std": float(finite.std(ddof=1)) if finite.size > 1 else 0.0,
        "energy_change_abs_mean": float(np.abs(finite).mean()),
        "energy_change_abs_max": float(np.abs(finite).max()),
        "energy_change_max": float(finite.max()),
        "energy_change_min": float(finite.min()),
        "energy_change_nonfinite": int(de.size - finite.size),
    }
    if dim:
        out["energy_change_var_per_dim"] = float(finite.var()) / float(dim)
    return out


def divergence_metrics(diverging: np.ndarray) -> dict[str, Any]:
    """HMC divergent transitions: total and per chain (``diverging`` is a per-draw flag)."""
    d = np.asarray(diverging)
    d = np.where(np.isfinite(d.astype(np.float64)), d, 0).astype(bool).reshape(d.shape[0], -1)
    return {"divergent_transitions": int(d.sum()), "divergent_per_chain": [int(v) for v in d.sum(axis=1)]}


def bfmi_metrics(energy: np.ndarray) -> dict[str, Any]:
    """Bayesian fraction of missing information per chain (ArviZ); < 0.3 flags poor momentum resampling."""
    energy = np.asarray(energy, dtype=np.float64)
    if energy.ndim != 2 or energy.shape[1] < 3 or not np.isfinite(energy).all():
        return {}
    values = np.atleast_1d(az.bfmi(energy))
    return {"bfmi_min": _finite_or_none(values.min()), "bfmi_per_chain": [_finite_or_none(v) for v in values]}


def efficiency_metrics(se: float | None, ess: float | None, wall_s: float | None, fde: float | None,
                       target_se: float = 1.0) -> dict[str, Any]:
    """Work-normalised variance and projected cost to reach SE(lambda-hat) = target_se.

    Var(lambda-hat) = SE^2. WNV = Var x cost: it does not depend on the run length (the variance
    of a mean falls as 1/cost), so samplers can be compared whatever their budgets. The cost of
    reaching ``target_se`` is then cost x (SE / target_se)^2 = WNV / target_se^2.
    """
    if target_se is None or not target_se > 0:
        raise ValueError(f"target_se: must be > 0, got {target_se}")

    def ok(x: float | None) -> bool:
        return x is not None and math.isfinite(x)

    var = se * se if ok(se) else None
    out: dict[str, Any] = {"target_se": float(target_se), "llc_var": var}
    for cost_name, cost, wnv_key, to_key, per_key in (
            ("wall_s", wall_s, "wnv_time", "time_to_se1", "ess_per_sec"),
            ("fde", fde, "wnv_fde", "fde_to_se1", "ess_per_fde")):
        usable = ok(cost) and cost > 0
        out[wnv_key] = var * cost if usable and var is not None else None
        out[to_key] = cost * (se / target_se) ** 2 if usable and var is not None else None
        out[per_key] = ess / cost if usable and ok(ess) else None
    return out


def _stat(idata: az.InferenceData, name: str) -> np.ndarray | None:
    """A per-draw sample_stats variable as a (chain, draw) array, or None if the file has none."""
    if "sample_stats" not in idata.groups() or name not in idata.sample_stats:
        return None
    var = idata.sample_stats[name]
    if tuple(var.dims[:2]) != ("chain", "draw") or var.ndim != 2:
        return None
    return var.values


def stat_names(idata: az.InferenceData) -> list[str]:
    if "sample_stats" not in idata.groups():
        return []
    return [str(k) for k in idata.sample_stats.data_vars]


def sampler_metrics(idata: az.InferenceData, target_se: float = 1.0) -> dict[str, Any]:
    """Every metric of one sampler's run, from its InferenceData alone (kept draws + attributes).

    Used by ``llc run`` on the data it is about to save and by ``llc analyze`` on the saved file:
    the NetCDF round trip is exact (float64 values and attributes), so both give the same numbers.
    ``flags`` holds this sampler's failure flags (llc.analysis.flags); the cross-sampler ones are
    added by ``flags.add_cross_sampler_flags`` over a run's samplers.
    """

    attrs = nc_attrs(idata)
    post = idata.posterior
    Ln = post["Ln"].values
    theta = post["theta_proj"].values if "theta_proj" in post else None
    L0, nbeta = float(attrs["L0"]), float(attrs["nbeta"])
    spec = registry.SAMPLERS.get(str(attrs.get("sampler")))
    info = sampler_info(idata)
    m = apply_extrapolation(llc_metrics(Ln, L0, nbeta, theta, independent=bool(spec and spec.independent_draws)), info)
    m["sampler"] = attrs.get("sampler")
    work = {k[len("work_"):]: float(v) for k, v in attrs.items() if k.startswith("work_")}
    m.update(work)
    m.update(efficiency_metrics(m["llc_se"], m["ess"], work.get("wall_s"), work.get("fde"), target_se))

    for name in ACCEPTANCE_STATS:
        acc = _stat(idata, name)
        if acc is not None:
            m.update(acceptance_metrics(acc))
    de = _stat(idata, ENERGY_CHANGE_STAT)
    if de is not None:
        m.update(energy_change_metrics(de, attrs.get("dim")))
    div = _stat(idata, DIVERGING_STAT)
    if div is not None:
        m.update(divergence_metrics(div))
    energy = _stat(idata, "energy")
    if energy is not None:
        m.update(bfmi_metrics(energy))
    # Means of every numeric per-draw statistic (step size, integration steps, tree depth, ...).
    means = {}
    for name in stat_names(idata):
        arr = _stat(idata, name)
        if arr is not None and arr.dtype.kind in "fiub" and arr.size:
            vals = arr.astype(np.float64)
            vals = vals[np.isfinite(vals)]
            means[name] = float(vals.mean()) if vals.size else None
    m["stats_mean"] = means
    m["info"] = info
    kept = [i for i, v in enumerate(m["llc_per_chain"]) if v is not None]
    m["flags"] = flags.sampler_flags(llc_draws(Ln[kept], L0, nbeta), m, attrs, m["info"], m["sampler"],
                                     None if theta is None else theta[kept])
    return m


# --------------------------------------------------------------------------- evolution curves

def _evolution_points(draws: int, n_points: int, first: int) -> np.ndarray:
    first = min(max(first, 4), draws)
    return np.unique(np.linspace(first, draws, n_points).round().astype(int))


def ess_evolution(x: np.ndarray, n_points: int = 20) -> dict[str, np.ndarray]:
    """Bulk and tail ESS of the first k draws of every chain, at ``n_points`` values of k."""
    x = np.asarray(x, dtype=np.float64)
    ks = _evolution_points(x.shape[1], n_points, x.shape[1] // n_points)
    bulk = np.array([az.ess(x[:, :k], method="bulk") for k in ks], dtype=np.float64)
    tail = np.array([az.ess(x[:, :k], method="tail") for k in ks], dtype=np.float64)
    return {"draws": ks, "total_draws": ks * x.shape[0], "bulk": bulk, "tail": tail}


def rhat_evolution(x: np.ndarray, n_points: int = 20) -> dict[str, np.ndarray]:
    """Rank-normalised split R-hat of the first k draws of every chain, at ``n_points`` values of k."""
    x = np.asarray(x, dtype=np.float64)
    ks = _evolution_points(x.shape[1], n_points, max(x.shape[1] // n_points, 10))
    if x.shape[0] < 2:  # R-hat compares chains: undefined for one (ArviZ would warn at every k)
        return {"draws": ks, "rhat": np.full(ks.shape, np.nan)}
    rhat = np.array([az.rhat(x[:, :k]) for k in ks], dtype=np.float64)
    return {"draws": ks, "rhat": rhat}


def autocorrelation(x: np.ndarray, max_lag: int) -> np.ndarray:
    """Per-chain autocorrelation (chains, max_lag + 1) via ArviZ's FFT estimator."""
    x = np.asarray(x, dtype=np.float64)
    max_lag = min(max_lag, x.shape[1] - 1)
    return np.stack([az.autocorr(row)[: max_lag + 1] for row in x])
