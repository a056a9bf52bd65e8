"""Synthetic sampler outputs and run directories for the diagnostics / plots / analyze tests (no JAX)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from llc.posthoc.analyze import metrics_document
from llc.store import cache
from llc.store.artifacts import save_netcdf, set_flags, to_inference_data, write_json
from llc.analysis.diagnostics import sampler_metrics
from llc.analysis.flags import add_cross_sampler_flags


def ar1(rng: np.random.Generator, chains: int, draws: int, rho: float, sigma: float = 1.0) -> np.ndarray:
    """Stationary AR(1) chains x_t = rho x_{t-1} + e_t, with marginal sd ``sigma``.

    The mean of N draws of one chain has variance sigma^2 (1 + rho) / ((1 - rho) N), hence
    ESS = N (1 - rho) / (1 + rho).
    """
    e = rng.standard_normal((chains, draws)) * sigma * np.sqrt(1 - rho**2)
    x = np.empty((chains, draws))
    x[:, 0] = rng.standard_normal(chains) * sigma  # start in the stationary law
    for t in range(1, draws):
        x[:, t] = rho * x[:, t - 1] + e[:, t]
    return x


ATTRS = {"n": 1000, "beta": 0.1, "gamma": 50.0, "dim": 6, "target_id": "tgt_synthetic", "target_kind": "quadratic",
         "run_id": "synthetic01", "analytic_llc": 3.0, "analytic_formula": "test"}
L0 = 0.5
NBETA = 100.0


def make_idata(sampler: str, rng: np.random.Generator, chains: int = 4, draws: int = 200, rho: float = 0.3,
               stats: dict[str, np.ndarray] | None = None, work: dict[str, float] | None = None,
               warmup: int = 20, extra_attrs: dict | None = None, info: dict | None = None,
               llc: np.ndarray | None = None):
    """An llc InferenceData whose lambda-hat draws are 3 + AR(1) noise (so lambda-hat is about 3),
    or the given ``llc`` draws (chains, draws)."""
    if llc is None:
        llc = 3.0 + ar1(rng, chains, draws, rho, sigma=1.0)
    chains, draws = llc.shape
    Ln = L0 + llc / NBETA
    Ln_warm = L0 + (3.0 + rng.standard_normal((chains, warmup)) * 2) / NBETA
    theta = rng.standard_normal((chains, draws, 4)) * 0.1
    work = work or {"n_grad_evals": 4000.0, "fde": 1000.0, "wall_s": 2.0, "compile_s": 1.0, "warmup_s": 0.5}
    attrs = dict(ATTRS)
    attrs.update(extra_attrs or {})
    if info is None:
        info = {"step_size": 0.01, "note": "synthetic", "step_size_per_chain": [0.01 * (i + 1) for i in range(chains)]}
    return to_inference_data(sampler, Ln, Ln_warm, theta, stats or {}, L0=L0, nbeta=NBETA, attrs=attrs,
                             work=work, info=info)


def hmc_stats(rng: np.random.Generator, chains: int, draws: int) -> dict[str, np.ndarray]:
    return {
        "acceptance_rate": rng.beta(8, 2, (chains, draws)),
        "energy": 10 + rng.standard_normal((chains, draws)) * 2,
        "diverging": rng.random((chains, draws)) < 0.01,
        "step_size": np.full((chains, draws), 0.05),
        "num_integration_steps": np.full((chains, draws), 16, dtype=np.int32),
    }


def mclmc_stats(rng: np.random.Generator, chains: int, draws: int) -> dict[str, np.ndarray]:
    return {"energy_change": rng.standard_normal((chains, draws)) * 0.05}


def synthetic_idatas(seed: int = 0, chains: int = 4, draws: int = 200) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "sgld": make_idata("sgld", rng, chains, draws, rho=0.6),
        "hmc": make_idata("hmc", rng, chains, draws, rho=0.1, stats=hmc_stats(rng, chains, draws)),
        "mclmc": make_idata("mclmc", rng, chains, draws, rho=0.4, stats=mclmc_stats(rng, chains, draws)),
    }


def write_run(run_dir: Path, idatas: dict, *, created: str = "2025-01-01T00:00:00+0000") -> Path:
    """A run directory laid out as ``llc run`` writes it (NetCDFs, config, metrics, manifest)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    metrics = {name: sampler_metrics(idata) for name, idata in idatas.items()}
    add_cross_sampler_flags(metrics)
    for name, idata in idatas.items():
        set_flags(idata, metrics[name]["flags"])
        save_netcdf(idata, run_dir / f"{name}.nc")
    write_json(run_dir / "config.json", {"samplers": list(idatas)})
    write_json(run_dir / "metrics.json", metrics_document(idatas, metrics))
    cache.seal(run_dir, {"run_id": run_dir.name, "created": created})  # last, as llc run does
    return run_dir


def write_sweep(base: Path, n_runs: int = 41, *, seed: int = 0, draws: int = 200, failed: tuple[int, ...] = (7,)) -> Path:
    """``base/artifacts/<run>`` run directories and ``base/llc_sweep_results.csv`` laid out as ``llc sweep``
    writes them: two samplers per run (SGLD, HMC), one row per run and sampler, failed runs without a
    directory. Returns the CSV path."""
    import csv

    base = Path(base)
    root = base / "artifacts"
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_runs):
        rid = f"sweep{i:03d}run"
        config = {"grid": "size", "target": "mlp", "seed": i // 6, "n_data": 1024,
                  "widths": (8, 16, 32, 64, 128, 256)[i % 6]}
        if i in failed:
            rows += [{**config, "sampler": s, "run_id": rid, "status": "failed", "error": "RuntimeError: boom"}
                     for s in ("sgld", "hmc")]
            continue
        idatas = {"sgld": make_idata("sgld", rng, 4, draws, rho=0.5),
                  "hmc": make_idata("hmc", rng, 4, draws, rho=0.1, stats=hmc_stats(rng, 4, draws))}
        write_run(root / rid, idatas, created=f"2025-01-{1 + i % 28:02d}T{i % 24:02d}:00:00+0000")
        for name, idata in idatas.items():
            m = sampler_metrics(idata)
            rows.append({**config, "n_params": config["widths"] * 20, "sampler": name, "llc_mean": m["llc_mean"],
                         "llc_se": m["llc_se"], "ess": m["ess"], "rhat": m["rhat"], "wall_s": m["wall_s"],
                         "fde": m["fde"], "diverged_chains": 0, "ess_per_sec": m["ess_per_sec"],
                         "ess_per_fde": m["ess_per_fde"], "wnv_time": m["wnv_time"], "run_id": rid,
                         "status": "cached" if i % 5 == 0 else "done", "error": "", "artifacts": str(root / rid)})
    columns = list(dict.fromkeys(k for row in rows for k in row))
    path = base / "llc_sweep_results.csv"
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)
    return path
