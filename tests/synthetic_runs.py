"""Synthetic sampler outputs and run directories for the diagnostics / plots / analyze tests (no JAX)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from llc.store.records import metrics_document
from llc.store import cache
from llc.store.artifacts import save_netcdf, set_flags, to_inference_data
from llc.store.jsonfiles import write_json
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
               llc: np.ndarray | None = None, theta: np.ndarray | None = None):
    """An llc InferenceData whose lambda-hat draws are 3 + AR(1) noise (so lambda-hat is about 3),
    or the given ``llc`` draws (chains, draws); ``theta``: its projections (chains, draws, k), by
    default N(0, 0.1^2)."""
    if llc is None:
        llc = 3.0 + ar1(rng, chains, draws, rho, sigma=1.0)
    chains, draws = llc.shape
    Ln = L0 + llc / NBETA
    Ln_warm = L0 + (3.0 + rng.standard_normal((chains, warmup)) * 2) / NBETA
    if theta is None:
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


GROK_STEPS = (0, 1, 3, 10, 30, 100, 200, 300, 500, 800, 1000, 1500, 2000, 3000, 4000)


def write_trajectory(out_dir: Path, *, seed: int = 0, weight_decay: float = 1.0, steps: tuple[int, ...] = GROK_STEPS,
                     chains: int = 4, draws: int = 100, flagged: tuple[int, ...] = (), config: bool = True) -> Path:
    """A trajectory directory as ``llc trajectory`` writes it (its own assembler writes summary.json,
    trajectory.csv, trajectory.nc and trajectory.png), for a run that memorises, then groks at a step
    that shrinks with the weight decay; λ̂ rises while it memorises and falls when it generalises.
    ``flagged``: indices of checkpoints given a failure flag."""
    import json

    from llc.pipeline import trajectory as T

    out_dir = Path(out_dir)
    (out_dir / "points").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    grok = 1500.0 / weight_decay
    nbeta = 120.0
    for i, step in enumerate(steps):
        s = float(step)
        train_acc = 0.024 + 0.976 * sig((np.log(s + 1) - np.log(200)) / 0.35)
        test_acc = 0.02 + 0.98 * sig((s - grok) / (0.15 * grok))
        llc = 1.0 + 20 * train_acc * (1 - 0.75 * test_acc) + 0.3 * rng.standard_normal()
        L0 = 3.7 * np.exp(-s / 150) + 0.01
        offsets = rng.standard_normal(chains) * (0.05 + 0.4 * train_acc)
        llc_draws = llc + offsets[:, None] + ar1(rng, chains, draws, 0.5, sigma=0.2 + 0.8 * train_acc)
        rhat = 1.002 + (0.03 if i % 6 == 5 else 0.004) * rng.random()
        row = {"step": int(step), "llc_mean": float(llc_draws.mean()), "llc_se": float(0.03 + 0.05 * llc),
               "rhat": float(rhat), "ess": float(40 + 200 * rng.random()), "L0": float(L0), "nbeta": nbeta,
               "gamma": 100.0, "grad_norm": float(0.04 * np.exp(-s / 1000) + 0.002),
               "hessian_trace": float(2.7 + 50 * train_acc * (1 - 0.6 * test_acc)),
               "hessian_trace_se": float(0.05 + 0.2 * train_acc), "fisher_trace": float(2.5 + 12 * train_acc * (1 - test_acc)),
               "weight_norm": float(13 + 55 * train_acc - 25 * test_acc * min(weight_decay, 1.0)),
               "train_loss": float(L0), "test_loss": float(3.7 + 5 * train_acc * (1 - test_acc) - 3.6 * test_acc),
               "train_acc": float(train_acc), "test_acc": float(test_acc),
               "flags": [f"lambda-hat {llc:.3g} above d/2 (synthetic)"] if i in flagged else []}
        Ln = L0 + llc_draws / nbeta
        T._atomic_write(T._point_file(out_dir, step), lambda p, r=row, ln=Ln: T._save_npz(
            p, row=json.dumps(r), Ln=ln, theta=rng.standard_normal((chains, draws, 4))))
    summary = T._assemble(out_dir, list(steps), "sgld", wall_s=12.5, compile_s=4.0, computed=len(steps),
                          target={"id": f"tgt_synth{seed}", "kind": "modular", "n": 840, "d": 15913})
    if config:
        summary["config"] = {"seed": seed, "target": {"kind": "modular", "modular": {"p": 41}},
                             "training": {"weight_decay": weight_decay, "steps": max(steps)},
                             "sgld": {"step_size": 3e-4, "draws": draws, "chains": chains}}
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    return out_dir


def write_calibration(out_dir: Path, *, seed: int = 0, recommend: bool = True, reference: str = "analytic",
                      step_axis: bool = True, chains: int = 4, draws: int = 200,
                      steps: tuple[float, ...] = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3),
                      gammas: tuple[float, ...] = (50.0, 100.0, 200.0)) -> Path:
    """A calibration directory as ``llc calibrate`` writes it (summary.json, calibration.csv,
    calibration.nc): SGLD step size x gamma on a d = 4 quadratic, biased upwards at large steps, R-hat
    too high at the smallest. ``recommend=False``: no point is healthy; ``reference="hmc"``: an HMC
    reference line instead of analytic values; ``step_axis=False``: a beta0 x gamma grid."""
    import csv
    import json

    import xarray as xr

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    xf = "sgld.step_size" if step_axis else "posterior.beta0"
    xs = list(steps) if step_axis else [0.3, 1.0, 3.0]
    gammas = list(gammas)
    nbeta = 268.6
    rows, llc = [], []
    for x in xs:
        for g in gammas:
            exact = 2 * nbeta / (nbeta + g)
            bias = 300 * x if step_axis else 0.0
            draws_ = exact + bias + ar1(rng, chains, draws, 0.6, sigma=0.3)
            if x == xs[0]:
                draws_ += rng.standard_normal(chains)[:, None] * 0.3  # chains disagree
            se = float(draws_.std() / np.sqrt(chains * draws / 4))
            rhat = 1.05 if x == xs[0] or not recommend else 1.003
            flags = ["lambda-hat far from the analytic value"] if step_axis and x == xs[-1] else []
            row = {xf: x, "posterior.gamma": g, "nbeta": nbeta, "gamma": g, "llc_mean": float(draws_.mean()),
                   "llc_se": se, "rhat": rhat, "ess": float(chains * draws / 4), "mala_acceptance": 0.999 - 50 * x if step_axis else 0.99,
                   "analytic_llc": exact if reference == "analytic" else None, "run_id": f"run{len(rows):02d}"}
            row["healthy"] = not flags and rhat < 1.01
            row["flags"] = "; ".join(flags)
            rows.append(row)
            llc.append(draws_)
    chosen = next((i for i, r in enumerate(rows) if r["healthy"] and r["posterior.gamma"] == 100.0
                   and r[xf] == xs[-2 if step_axis else -1]), None) if recommend else None
    for i, r in enumerate(rows):
        r["recommended"] = i == chosen
    why = (f"{xf}={rows[chosen][xf]:g}: the largest step size that is healthy (synthetic)" if chosen is not None
           else "no point on the line {'posterior.gamma': 100.0} is healthy: every one has a flag, R-hat >= 1.01")
    ref = ({"kind": "hmc", "llc_mean": 1.46, "llc_se": 0.02} if reference == "hmc" else
           {"kind": "analytic", "llc_mean": rows[chosen or 1]["analytic_llc"], "llc_se": 0.0})
    summary = {"calibration_id": out_dir.name, "cached": False, "sampler": "sgld",
               "axes": {xf: xs, "posterior.gamma": gammas},
               "target": {"id": "tgt_synthetic", "kind": "quadratic", "n": 2048, "d": 4}, "points": len(rows),
               "batches": 1, "wall_s": 0.7, "compile_s": 0.3, "reference": ref,
               "recommended": {"index": chosen, "why": why,
                               "setting": {xf: rows[chosen][xf], "posterior.gamma": 100.0} if chosen is not None else None},
               "rows": rows, "artifacts": str(out_dir)}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    with (out_dir / "calibration.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    ds = xr.Dataset({"llc": (("point", "chain", "draw"), np.stack(llc))},
                    coords={xf.replace(".", "__"): ("point", [r[xf] for r in rows])}, attrs={"sampler": "sgld"})
    ds.to_netcdf(out_dir / "calibration.nc", engine="h5netcdf")
    (out_dir / "manifest.json").write_text(json.dumps({"calibration_id": out_dir.name, "created": 1.7e9}))
    return out_dir
