#!/usr/bin/env python
"""Performance benchmarks of llc's samplers: against the hardware limit, against devinterp, and at scale.

    python benchmarks/run.py [--size tiny|quick|full] [--out results.json]
                             [--sections overhead,devinterp,efficiency,scaling,goals]
                             [--device-kind cpu|gpu] [--artifacts DIR]

Every figure is measured in this one process, side by side; the script prints Rich tables and
writes one JSON file. Sections (see benchmarks/README.md for what each measures and why):

  overhead    SGLD steps/s vs raw minibatch value_and_grad/s (chains vmapped, in one lax.scan),
              HMC / MCLMC gradient evaluations/s vs raw full-batch value_and_grad/s; compile times.
  devinterp   devinterp's SGLD LLC estimate on the identical network, data and settings (CPU).
  efficiency  ESS/s and ESS/FDE of lambda-hat for SGLD, HMC, MCLMC on the same target.
  scaling     SGLD steps/s and memory as parameters, data and chains grow.
  goals       the GPU goals: 1M-parameter MLP, 8 chains x 10,000 SGLD steps; HMC at 100k parameters.

Samplers left out of ``--samplers`` are reported as "not available".
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
ALL_SECTIONS = ("overhead", "devinterp", "efficiency", "scaling", "goals")
DEFAULT_SECTIONS = {"cpu": ("overhead", "devinterp", "efficiency", "scaling"),
                    "gpu": ("overhead", "efficiency", "scaling", "goals")}

# The benchmark target: llc/presets/full.toml's teacher-student ReLU MLP (~10k parameters, n = 2048),
# SGLD with batch 256 and 4 chains. Sampler lengths shrink with --size.
MAIN_TARGET = {"data": {"n_data": 2048}, "model": {"in_dim": 32, "depth": 2, "target_params": 10_000},
               "training": {"steps": 5000}}
TINY_TARGET = {"data": {"n_data": 256}, "model": {"in_dim": 4, "depth": 1, "target_params": 100},
               "training": {"steps": 300}}

# SGLD at a fixed step: throughput is measured on one chain program (step_size=auto runs a grid of them).
SIZES: dict[str, dict[str, Any]] = {
    "tiny": {
        "target": TINY_TARGET,
        "sgld": {"batch_size": 32, "chains": 2, "draws": 60, "burnin": 10, "eval_every": 5, "step_size": 1e-4},
        "hmc": {"chains": 2, "warmup": 30, "draws": 30, "num_integration_steps": 4},
        "mclmc": {"chains": 2, "warmup": 60, "draws": 60},
        "repeats": 1, "limit_steps": 300, "fullbatch_steps": 50,
        "scaling": {"params": [100, 1000], "data": [256], "chains": {"cpu": [1, 2], "gpu": [1, 2]},
                    "seconds": 0.2, "min_draws": 20, "max_draws": 40},
        "goals": {"sgld_params": 1000, "sgld_chains": 2, "sgld_steps": 200, "hmc_params": 1000,
                  "hmc": {"chains": 2, "warmup": 30, "draws": 30}},
    },
    "quick": {
        "target": MAIN_TARGET,
        "sgld": {"batch_size": 256, "chains": 4, "draws": 500, "burnin": 50, "eval_every": 10, "step_size": 1e-4},
        # Full-batch samplers cost n/batch = 8 minibatch gradients per step (in float64): kept short on CPU.
        "hmc": {"chains": 4, "warmup": 100, "draws": 100, "num_integration_steps": 16},
        "mclmc": {"chains": 4, "warmup": 1000, "draws": 500},  # a shorter tuning left chains unconverged
        "repeats": 3, "limit_steps": 1000, "fullbatch_steps": 100,
        "scaling": {"params": {"cpu": [1_000, 10_000, 100_000], "gpu": [1_000, 10_000, 100_000, 1_000_000]},
                    "data": [512, 2048, 8192], "chains": {"cpu": [1, 4, 8], "gpu": [1, 4, 16, 64]},
                    "seconds": 2.0, "min_draws": 20, "max_draws": 400},
        "goals": {"sgld_params": 1_000_000, "sgld_chains": 8, "sgld_steps": 10_000, "hmc_params": 100_000,
                  "hmc": {"chains": 4, "warmup": 500, "draws": 500}},
    },
    "full": {
        "target": MAIN_TARGET,
        "sgld": {"batch_size": 256, "chains": 4, "draws": 2000, "burnin": 200, "eval_every": 10, "step_size": 1e-4},
        "hmc": {"chains": 4, "warmup": 500, "draws": 1000},
        "mclmc": {"chains": 4, "warmup": 2000, "draws": 4000},
        "repeats": 3, "limit_steps": 5000, "fullbatch_steps": 500,
        "scaling": {"params": [1_000, 10_000, 100_000, 1_000_000],
                    "data": [512, 2048, 8192, 32768], "chains": {"cpu": [1, 4, 16], "gpu": [1, 4, 16, 64]},
                    "seconds": 4.0, "min_draws": 20, "max_draws": 1000},
        "goals": {"sgld_params": 1_000_000, "sgld_chains": 8, "sgld_steps": 10_000, "hmc_params": 100_000,
                  "hmc": {"chains": 4, "warmup": 500, "draws": 1000}},
    },
}

# Rough sustained rates used only to choose how many steps a scaling point runs (not reported).
ASSUMED_FLOPS = {"cpu": 2e10, "gpu": 2e13}
SCALING_TRAIN = {"steps": 100, "batch_size": 256}  # w* quality does not matter for throughput


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=tuple(SIZES), default="quick")
    p.add_argument("--out", type=Path, default=None, help="JSON output path (default benchmarks/results/<kind>_<size>.json)")
    p.add_argument("--sections", default=None, help=f"comma-separated subset of {','.join(ALL_SECTIONS)}")
    p.add_argument("--device-kind", choices=("cpu", "gpu"), default=None,
                   help="cpu forces JAX onto the CPU; gpu requires a GPU backend (default: what JAX finds)")
    p.add_argument("--artifacts", type=Path, default=None, help="targets cache root (default: a temp dir)")
    p.add_argument("--samplers", default="sgld,hmc,mclmc",
                   help="samplers the overhead/efficiency sections run (sgld is always run)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.sections:
        wanted = tuple(s.strip() for s in args.sections.split(",") if s.strip())
        bad = [s for s in wanted if s not in ALL_SECTIONS]
        if bad:
            p.error(f"--sections: unknown {','.join(bad)}; choose from {','.join(ALL_SECTIONS)}")
        args.sections = wanted
    args.samplers = tuple(x.strip() for x in args.samplers.split(",") if x.strip())
    return args


# --------------------------------------------------------------------------- the benchmark context


class Bench:
    """Shared state: one artifacts root, targets and sampler runs reused across sections."""

    def __init__(self, args, console):
        import jax

        self.args = args
        self.size = SIZES[args.size]
        self.kind = args.device_kind
        self.console = console
        self.jax = jax
        self.root = args.artifacts
        self._targets: dict[str, Any] = {}
        self._runs: dict[str, Any] = {}

    def log(self, msg: str) -> None:
        self.console.log(msg)

    # ----------------------------------------------------------------- configs and targets

    def config(self, target: dict[str, Any], samplers: dict[str, dict[str, Any]] | None = None):
        from llc.config import build_config

        mapping = {**target, "seed": self.args.seed, "target": {"seed": self.args.seed}, "save_plots": False}
        for name, section in (samplers or {}).items():
            mapping[name] = section
        return build_config(mapping=mapping)

    def main_config(self):
        return self.config(self.size["target"], {s: self.size[s] for s in ("sgld", "hmc", "mclmc")})

    def posterior(self, cfg):
        from llc.engine.posterior import make_posterior
        from llc.engine.targets import get_target, target_id

        tid = target_id(cfg)
        if tid not in self._targets:
            t0 = time.perf_counter()
            target = get_target(cfg, self.root)
            post = make_posterior(target.loss_fn, target.params, target.x, target.y, cfg.posterior, L0=target.L0)
            self._targets[tid] = (target, post)
            self.log(f"target {tid}: d={target.d} n={target.n} L0={target.L0:.4g} "
                     f"({'cached' if target.cached else 'built'} in {time.perf_counter() - t0:.1f}s)")
        return self._targets[tid]

    def target_summary(self, cfg) -> dict[str, Any]:
        target, post = self.posterior(cfg)
        return {"id": target.id, "d": target.d, "n": target.n, "L0": target.L0, "nbeta": post.nbeta,
                "gamma": post.gamma, "sizes": target.meta.get("info", {}).get("sizes")}

    # ----------------------------------------------------------------- samplers

    def runner(self, name: str) -> Callable | None:
        from llc.pipeline.sampling import sample_one

        if name != "sgld" and name not in self.args.samplers:
            return None

        return lambda post, cfg, key, **kw: sample_one(name, post, cfg, key, **kw)

    def run_sampler(self, name: str, cfg, *, memo: bool = True):
        """Run sampler ``name`` with ``cfg``'s section; the first run per (target, name) is reused."""
        import jax

        from llc.pipeline.sampling import sampler_key
        from llc.engine.targets import target_id

        runner = self.runner(name)
        if runner is None:
            return None
        key = f"{target_id(cfg)}:{name}:{getattr(cfg, name)!r}"
        if memo and key in self._runs:
            return self._runs[key]
        _, post = self.posterior(cfg)
        out = runner(post, getattr(cfg, name), sampler_key(cfg.seed, name), proj_dim=cfg.theta_proj_dim)
        jax.effects_barrier()
        self.log(f"{name}: wall {out.work['wall_s']:.2f}s compile {out.work['compile_s']:.2f}s "
                 f"warmup {out.work.get('warmup_s', 0.0):.2f}s")
        if memo:
            self._runs.setdefault(key, out)
        return out


# --------------------------------------------------------------------------- sections


def _unavailable(name: str) -> str:
    import importlib.util

    if importlib.util.find_spec(f"llc.engine.samplers.{name}") is None:
        return f"llc.engine.samplers.{name} is not in this version of llc"
    return "not selected (--samplers)"


def section_overhead(b: Bench) -> dict[str, Any]:
    """Sampler throughput against the raw gradient throughput of the same posterior."""
    from benchlib import (fullbatch_limit, grad_flops, lean_step_limit, minibatch_limit, sampling_grads,
                          sgld_step_limit)

    from llc.engine.posterior import cast

    cfg = b.main_config()
    target, post = b.posterior(cfg)
    s = cfg.sgld
    repeats = b.size["repeats"]
    total_steps = (s.burnin + s.draws) * s.eval_every
    limit_steps = min(total_steps, b.size["limit_steps"])
    post_sgld = cast(post, s.dtype)
    out: dict[str, Any] = {"target": b.target_summary(cfg), "repeats": repeats}

    flops = grad_flops(post_sgld, s.batch_size)
    raw = minibatch_limit(post_sgld, s.chains, s.batch_size, limit_steps, random_batches=False, repeats=repeats)
    gather = minibatch_limit(post_sgld, s.chains, s.batch_size, limit_steps, random_batches=True, repeats=repeats)
    lean = lean_step_limit(post_sgld, s.step_size, s.chains, s.batch_size, limit_steps, repeats=repeats)
    step = sgld_step_limit(post_sgld, s, s.chains, limit_steps, repeats=repeats)
    runs = []
    for r in range(repeats):
        o = b.run_sampler("sgld", cfg, memo=(r == 0))
        runs.append({"wall_s": o.work["wall_s"], "compile_s": o.work["compile_s"],
                     "grads": o.work["n_grad_evals"], "full_loss_evals": o.work.get("full_loss_evals")})
    best = min(runs, key=lambda r: r["wall_s"])
    sgld_rate = best["grads"] / best["wall_s"]
    # The share of SGLD's work that is the full-batch L_n evaluation every eval_every steps:
    # forward only (~1/3 of a value_and_grad per sample) on n samples, against eval_every minibatch
    # gradients of batch_size samples.
    eval_share = (post.n / 3.0) / (s.eval_every * s.batch_size + post.n / 3.0)
    out["minibatch"] = {
        "dtype": s.dtype, "chains": s.chains, "batch_size": s.batch_size, "eval_every": s.eval_every,
        "flops_per_grad": flops,
        "raw_grads_per_s": raw["grads_per_s"],
        "raw_gflops": (raw["grads_per_s"] * flops / 1e9) if flops else None,
        "gather_grads_per_s": gather["grads_per_s"],
        "lean_step_grads_per_s": lean["grads_per_s"],
        "sgld_step_grads_per_s": step["grads_per_s"],
        "sgld_steps_per_s": sgld_rate,
        "sgld_runs": runs,
        "sgld_compile_s": best["compile_s"],
        "raw_compile_s": raw["compile_s"],
        "limit_steps_per_chain": limit_steps,
        "sgld_steps_per_chain": total_steps,
        "overhead": raw["grads_per_s"] / sgld_rate,
        "overhead_gather": raw["grads_per_s"] / gather["grads_per_s"],
        "overhead_lean_step": raw["grads_per_s"] / lean["grads_per_s"],
        # llc's own cost above the least an SGLD step must do (gradient + Gaussian noise):
        "overhead_vs_lean_step": lean["grads_per_s"] / sgld_rate,
        "overhead_step": raw["grads_per_s"] / step["grads_per_s"],
        "overhead_eval_and_chunks": step["grads_per_s"] / sgld_rate,
        "eval_share_estimate": eval_share,
        "details": {"raw": raw, "gather": gather, "lean_step": lean, "step": step},
    }

    fb: dict[str, Any] = {}
    for name in ("hmc", "mclmc"):
        scfg = getattr(cfg, name)
        if b.runner(name) is None:
            fb[name] = {"available": False, "reason": _unavailable(name)}
            continue
        post_fb = cast(post, scfg.dtype)
        limit_key = f"raw_{scfg.dtype}"
        if limit_key not in fb:
            fb[limit_key] = fullbatch_limit(post_fb, scfg.chains, b.size["fullbatch_steps"], repeats)
        raw_fb = fb[limit_key]
        o = b.run_sampler(name, cfg)
        grads, secs, exact = sampling_grads(name, o)
        rate = grads / secs
        fb[name] = {"available": True, "dtype": scfg.dtype, "chains": scfg.chains, "grads_per_s": rate,
                    "raw_grads_per_s": raw_fb["grads_per_s"], "overhead": raw_fb["grads_per_s"] / rate,
                    "sampling_grads": grads, "sampling_s": secs, "split_exact": exact,
                    "warmup_s": o.work.get("warmup_s"), "compile_s": o.work["compile_s"],
                    "info": {k: v for k, v in o.info.items() if isinstance(v, (int, float, str, bool))}}
    out["full_batch"] = fb
    return out


def section_devinterp(b: Bench) -> dict[str, Any]:
    import devinterp_compare

    ok, reason = devinterp_compare.available()
    if not ok:
        return {"available": False, "reason": reason}
    if b.jax.default_backend() != "cpu":
        return {"available": False, "reason": "the devinterp comparison runs on the CPU (--device-kind cpu)"}
    from benchlib import cpu_threads

    from llc.analysis.diagnostics import llc_metrics

    cfg = b.main_config()
    target, post = b.posterior(cfg)
    o = b.run_sampler("sgld", cfg)
    m = llc_metrics(o.Ln, post.L0, post.nbeta, o.theta_proj)
    s = cfg.sgld
    steps_total = s.chains * (s.burnin + s.draws) * s.eval_every
    ours = {"wall_s": o.work["wall_s"], "compile_s": o.work["compile_s"], "steps_total": steps_total,
            "steps_per_s": steps_total / o.work["wall_s"], "llc_mean": m["llc_mean"], "llc_se": m["llc_se"],
            "ess": m["ess"], "xla_threads": cpu_threads()}
    b.log("devinterp: sampling (this is the slow part)")
    res = devinterp_compare.run(target, post, s, threads=cpu_threads(), seed=b.args.seed, ours=ours)
    res["available"] = True
    return res


def section_efficiency(b: Bench) -> dict[str, Any]:
    from llc.analysis.diagnostics import llc_metrics

    cfg = b.main_config()
    target, post = b.posterior(cfg)
    rows: dict[str, Any] = {"target": b.target_summary(cfg)}
    for name in ("sgld", "hmc", "mclmc"):
        o = b.run_sampler(name, cfg)
        if o is None:
            rows[name] = {"available": False, "reason": _unavailable(name)}
            continue
        m = llc_metrics(o.Ln, post.L0, post.nbeta, o.theta_proj)
        w = o.work
        # SGLD's burn-in runs in the same chunks as its draws (so it counts as sampling time, as
        # before); the full-batch samplers' tuning is reported apart, as warm-up.
        sampling_s = w["wall_s"] if name == "sgld" else w["sampling_s"]
        tuning_s = w["wall_s"] - sampling_s
        ess = m["ess"]
        rows[name] = {
            "available": True, "llc_mean": m["llc_mean"], "llc_se": m["llc_se"], "ess": ess, "rhat": m["rhat"],
            "diverged_chains": m["diverged_chains"], "chains": m["chains"], "draws": m["draws"],
            "wall_s": sampling_s, "warmup_s": tuning_s, "compile_s": w["compile_s"], "fde": w["fde"],
            "n_grad_evals": w["n_grad_evals"],
            "ess_per_s": (ess / sampling_s) if ess else None,
            "ess_per_s_end_to_end": (ess / (sampling_s + tuning_s + w["compile_s"])) if ess else None,
            "ess_per_fde": (ess / w["fde"]) if ess else None,
        }
    return rows


def _scaling_draws(b: Bench, d: int, n: int, chains: int, batch: int, eval_every: int) -> int:
    sc = b.size["scaling"]
    flops_per_draw = chains * (eval_every * 6.0 * batch * d + 2.0 * n * d)
    draws = sc["seconds"] * ASSUMED_FLOPS[b.kind] / flops_per_draw
    draws = int(min(max(draws, sc["min_draws"]), sc["max_draws"]))
    return max(sc["min_draws"], (draws // 20) * 20)


def _scaling_point(b: Bench, d: int, n: int, chains: int) -> dict[str, Any]:
    """One (parameters, data, chains) point; a point shared by two sweeps is measured once."""
    memo = b.__dict__.setdefault("_scaling_memo", {})
    if (d, n, chains) not in memo:
        memo[(d, n, chains)] = _measure_scaling_point(b, d, n, chains)
    return memo[(d, n, chains)]


def _measure_scaling_point(b: Bench, d: int, n: int, chains: int) -> dict[str, Any]:
    import numpy as np
    from benchlib import capture_compiles, device_peak_bytes, host_maxrss_bytes, minibatch_limit

    from llc.engine.posterior import cast

    base = b.size["target"]["model"]
    batch = min(256, n // 2) if b.args.size != "tiny" else 32
    eval_every = 10
    step = 1e-4 if d <= 20_000 else 1e-5  # large nets need a smaller step to stay finite
    target_cfg = {"data": {"n_data": n}, "model": {**base, "target_params": d},
                  "training": {**SCALING_TRAIN, "batch_size": min(SCALING_TRAIN["batch_size"], n)}}
    probe = b.config(target_cfg)
    target, post = b.posterior(probe)
    draws = _scaling_draws(b, target.d, n, chains, batch, eval_every)
    sgld_cfg = {"batch_size": batch, "chains": chains, "draws": draws, "burnin": 0, "eval_every": eval_every,
                "step_size": step}
    cfg = b.config(target_cfg, {"sgld": sgld_cfg})
    with capture_compiles() as programs:
        o = b.run_sampler("sgld", cfg, memo=False)
    steps = draws * eval_every
    sgld_rate = o.work["n_grad_evals"] / o.work["wall_s"]
    raw = minibatch_limit(cast(post, cfg.sgld.dtype), chains, batch, steps, random_batches=False, repeats=1)
    diverged = int((~np.isfinite(o.Ln).all(axis=1)).sum())
    return {
        "d": target.d, "n": n, "chains": chains, "batch_size": batch, "steps_per_chain": steps,
        "step_size": step, "sgld_steps_per_s": sgld_rate, "sgld_steps_per_s_per_chain": sgld_rate / chains,
        "raw_grads_per_s": raw["grads_per_s"], "overhead": raw["grads_per_s"] / sgld_rate,
        "sgld_wall_s": o.work["wall_s"], "sgld_compile_s": o.work["compile_s"],
        "sgld_program_bytes": max((p["program_bytes"] or 0.0) for p in programs) if programs else None,
        "raw_program_bytes": raw["program_bytes"],
        "device_peak_bytes": device_peak_bytes(), "host_maxrss_bytes": host_maxrss_bytes(),
        "diverged_chains": diverged,
    }


def section_scaling(b: Bench) -> dict[str, Any]:
    sc = b.size["scaling"]
    pick = lambda v: v[b.kind] if isinstance(v, dict) else v  # noqa: E731
    main_n = b.size["target"]["data"]["n_data"]
    main_d = b.size["target"]["model"]["target_params"]
    main_chains = b.size["sgld"]["chains"]
    out: dict[str, Any] = {"params": [], "data": [], "chains": [],
                           "note": "memory: sgld_program_bytes from XLA memory_analysis of the sampling chunk; "
                                   "device_peak_bytes is the allocator peak since process start (monotone)"}
    # Increasing sizes, so that the monotone process-wide peaks stay attributable.
    for d in sorted(pick(sc["params"])):
        out["params"].append(_scaling_point(b, d, main_n, main_chains))
        b.log(f"scaling d={d}: {out['params'][-1]['sgld_steps_per_s']:.0f} steps/s")
    for n in sorted(pick(sc["data"])):
        out["data"].append(_scaling_point(b, main_d, n, main_chains))
        b.log(f"scaling n={n}: {out['data'][-1]['sgld_steps_per_s']:.0f} steps/s")
    for c in sorted(pick(sc["chains"])):
        d = 100_000 if (b.kind == "gpu" and b.args.size != "tiny") else main_d
        out["chains"].append(_scaling_point(b, d, main_n, c))
        b.log(f"scaling chains={c}: {out['chains'][-1]['sgld_steps_per_s']:.0f} steps/s")
    return out


def section_goals(b: Bench) -> dict[str, Any]:
    """The two GPU goals, run as stated: SGLD on a 1M-parameter MLP; HMC at 100k parameters."""
    from benchlib import capture_compiles, device_peak_bytes

    from llc.analysis.diagnostics import llc_metrics

    g = b.size["goals"]
    base = b.size["target"]["model"]
    n = b.size["target"]["data"]["n_data"]
    out: dict[str, Any] = {}

    steps = g["sgld_steps"]
    sgld_cfg = {"batch_size": min(256, n), "chains": g["sgld_chains"], "draws": steps // 10, "burnin": 0,
                "eval_every": 10, "step_size": 1e-5}
    target_cfg = {"data": {"n_data": n}, "model": {**base, "target_params": g["sgld_params"]},
                  "training": {"steps": 500, "batch_size": min(256, n)}}
    cfg = b.config(target_cfg, {"sgld": sgld_cfg})
    target, post = b.posterior(cfg)
    with capture_compiles() as programs:
        o = b.run_sampler("sgld", cfg, memo=False)
    m = llc_metrics(o.Ln, post.L0, post.nbeta, o.theta_proj)
    out["sgld"] = {"d": target.d, "n": n, "chains": g["sgld_chains"], "steps_per_chain": steps,
                   "wall_s": o.work["wall_s"], "compile_s": o.work["compile_s"],
                   "steps_per_s": o.work["n_grad_evals"] / o.work["wall_s"],
                   "llc_mean": m["llc_mean"], "ess": m["ess"], "diverged_chains": m["diverged_chains"],
                   "program_bytes": max((p["program_bytes"] or 0.0) for p in programs) if programs else None,
                   "device_peak_bytes": device_peak_bytes()}
    b.log(f"goal sgld: d={target.d} {g['sgld_chains']}x{steps} steps in {o.work['wall_s']:.1f}s")

    if b.runner("hmc") is None:
        out["hmc"] = {"available": False, "reason": _unavailable("hmc")}
        return out
    target_cfg = {"data": {"n_data": n}, "model": {**base, "target_params": g["hmc_params"]},
                  "training": {"steps": 2000}}
    cfg = b.config(target_cfg, {"hmc": g["hmc"]})
    target, post = b.posterior(cfg)
    t0 = time.perf_counter()
    o = b.run_sampler("hmc", cfg, memo=False)
    total = time.perf_counter() - t0
    m = llc_metrics(o.Ln, post.L0, post.nbeta, o.theta_proj)
    out["hmc"] = {"available": True, "d": target.d, "n": n, **g["hmc"], "total_s": total,
                  "wall_s": o.work["wall_s"], "warmup_s": o.work.get("warmup_s"), "compile_s": o.work["compile_s"],
                  "n_grad_evals": o.work["n_grad_evals"], "llc_mean": m["llc_mean"], "llc_se": m["llc_se"],
                  "ess": m["ess"], "rhat": m["rhat"], "diverged_chains": m["diverged_chains"],
                  "step_size": o.info.get("step_size"), "mean_accept": o.info.get("mean_accept"),
                  "device_peak_bytes": device_peak_bytes()}
    b.log(f"goal hmc: d={target.d} total {total:.1f}s ess {m['ess']}")
    return out


SECTION_FNS = {"overhead": section_overhead, "devinterp": section_devinterp, "efficiency": section_efficiency,
               "scaling": section_scaling, "goals": section_goals}


# --------------------------------------------------------------------------- goals and report


def goal_summary(results: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    goals = []
    ov = results.get("overhead", {})
    if "minibatch" in ov:
        v = ov["minibatch"]["overhead"]
        goals.append({"goal": f"SGLD overhead vs raw minibatch value_and_grad ({kind})", "target": "<= 1.3x",
                      "measured": f"{v:.2f}x", "met": v <= 1.3})
        if "overhead_vs_lean_step" in ov["minibatch"]:
            v = ov["minibatch"]["overhead_vs_lean_step"]
            goals.append({"goal": f"(context, not a goal) SGLD run vs minimal SGLD step incl. noise ({kind})",
                          "target": "-", "measured": f"{v:.2f}x", "met": None})
    di = results.get("devinterp", {})
    if di.get("available") and di.get("speedup_wall"):
        v = di["speedup_wall"]
        goals.append({"goal": "SGLD throughput vs devinterp, same CPU/chains/draws", "target": ">= 10x",
                      "measured": f"{v:.1f}x (incl. compile {di['speedup_wall_incl_compile']:.1f}x)",
                      "met": v >= 10})
        if "agree_within_3se" in di:
            goals.append({"goal": "lambda-hat agrees with devinterp", "target": "|diff| <= 3 SE",
                          "measured": f"z = {di['llc_diff_z']:.2f}", "met": bool(di["agree_within_3se"])})
    go = results.get("goals", {})
    if "sgld" in go:
        s = go["sgld"]
        goals.append({"goal": f"SGLD {s['chains']} chains x {s['steps_per_chain']} steps, d={s['d']} ({kind})",
                      "target": "< 60 s sampling", "measured": f"{s['wall_s']:.1f} s",
                      "met": s["wall_s"] < 60 and s["d"] >= 900_000 and s["steps_per_chain"] >= 10_000})
    if go.get("hmc", {}).get("available"):
        h = go["hmc"]
        ess = h["ess"] or 0.0
        goals.append({"goal": f"HMC d={h['d']} usable ESS ({kind})", "target": "ESS >= 100 in < 600 s",
                      "measured": f"ESS {ess:.0f} in {h['total_s']:.0f} s",
                      "met": ess >= 100 and h["total_s"] < 600 and h["d"] >= 90_000})
    return goals


def _fmt(v: Any, spec: str = ".3g") -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (int, float)):
        if isinstance(v, float) and not math.isfinite(v):
            return "nan"
        return format(v, spec)
    return str(v)


def _mb(v: Any) -> str:
    return "-" if v is None else f"{v / 2**20:.1f}"


def print_report(console, results: dict[str, Any], meta: dict[str, Any]) -> None:
    from rich.table import Table

    failed = {name: r for name, r in results.items() if r.get("error")}
    results = {name: r for name, r in results.items() if name not in failed}

    kind = meta["device_kind"]
    ov = results.get("overhead")
    if ov and "minibatch" in ov:
        mb = ov["minibatch"]
        t = Table(title=f"Overhead vs the limit ({kind}; d={ov['target']['d']}, n={ov['target']['n']}, "
                        f"{mb['chains']} chains, batch {mb['batch_size']})")
        for col in ("program", "grads/s", "ratio to raw", "compile s"):
            t.add_column(col, justify="right" if col != "program" else "left")
        t.add_row("raw value_and_grad (contiguous batch)", _fmt(mb["raw_grads_per_s"], ",.0f"), "1.00",
                  _fmt(mb["raw_compile_s"], ".2f"))
        t.add_row("+ random minibatch gather", _fmt(mb["gather_grads_per_s"], ",.0f"),
                  _fmt(mb["overhead_gather"], ".2f"), "")
        t.add_row("minimal SGLD step (+ Gaussian noise, update)", _fmt(mb["lean_step_grads_per_s"], ",.0f"),
                  _fmt(mb["overhead_lean_step"], ".2f"), "")
        t.add_row("llc SGLD step (no L_n eval)", _fmt(mb["sgld_step_grads_per_s"], ",.0f"),
                  _fmt(mb["overhead_step"], ".2f"), "")
        t.add_row(f"llc.engine.samplers.sgld.run (L_n every {mb['eval_every']})", _fmt(mb["sgld_steps_per_s"], ",.0f"),
                  _fmt(mb["overhead"], ".2f"), _fmt(mb["sgld_compile_s"], ".2f"))
        for name in ("hmc", "mclmc"):
            fb = ov["full_batch"].get(name, {})
            if not fb.get("available"):
                t.add_row(f"{name}: not available", "", "", "")
                continue
            t.add_row(f"raw full-batch value_and_grad ({fb['dtype']})", _fmt(fb["raw_grads_per_s"], ",.0f"), "1.00", "")
            t.add_row(f"llc.engine.samplers.{name}.run (sampling phase)", _fmt(fb["grads_per_s"], ",.0f"),
                      _fmt(fb["overhead"], ".2f"), _fmt(fb["compile_s"], ".2f"))
        console.print(t)
        if mb.get("raw_gflops"):
            console.print(f"raw minibatch gradient: {mb['flops_per_grad']:.3g} flop each (XLA cost analysis), "
                          f"{mb['raw_gflops']:.1f} GFLOP/s achieved")

    di = results.get("devinterp")
    if di is not None:
        if not di.get("available"):
            console.print(f"devinterp: not available ({di.get('reason', di.get('error'))})")
        else:
            t = Table(title=f"llc vs devinterp {di['devinterp_version']} (CPU, {di['torch_threads']} threads)")
            for col in ("", "chain-steps", "wall s", "steps/s", "lambda-hat", "SE", "ESS"):
                t.add_column(col, justify="right")
            o = di["ours"]
            t.add_row("llc SGLD", _fmt(o["steps_total"], ",d"), f"{o['wall_s']:.2f} (+{o['compile_s']:.2f} compile)",
                      _fmt(o["steps_per_s"], ",.0f"), _fmt(o["llc_mean"], ".3f"), _fmt(o["llc_se"], ".3f"),
                      _fmt(o["ess"], ".0f"))
            t.add_row("devinterp SGLD", _fmt(di["steps_total"], ",d"), f"{di['wall_s']:.2f}",
                      _fmt(di["steps_per_s"], ",.0f"), _fmt(di["llc_mean"], ".3f"), _fmt(di["llc_se"], ".3f"),
                      _fmt(di["ess"], ".0f"))
            console.print(t)
            console.print(f"speed-up {di['speedup_wall']:.1f}x (sampling), {di['speedup_wall_incl_compile']:.1f}x "
                          f"(incl. compile); devinterp's own llc_mean (burn-in included) "
                          f"{di['llc_devinterp_llc_mean']:.3f}; lambda-hat diff z = {_fmt(di.get('llc_diff_z'), '.2f')}; "
                          f"loss at w* torch {di['equivalence_check']['loss_torch']:.6g} vs jax "
                          f"{di['equivalence_check']['loss_jax']:.6g}, grad rel diff "
                          f"{di['equivalence_check']['grad_rel_diff']:.1e}")

    ef = results.get("efficiency")
    if ef:
        t = Table(title=f"Efficiency of lambda-hat ({kind}; d={ef['target']['d']})")
        for col in ("sampler", "lambda-hat", "SE", "ESS", "R-hat", "sampling s", "warm-up s", "compile s",
                    "ESS/s", "ESS/s end-to-end", "ESS/FDE"):
            t.add_column(col, justify="right")
        for name in ("sgld", "hmc", "mclmc"):
            r = ef.get(name, {})
            if not r.get("available"):
                t.add_row(name, "not available", *[""] * 9)
                continue
            t.add_row(name, _fmt(r["llc_mean"], ".3f"), _fmt(r["llc_se"], ".3f"), _fmt(r["ess"], ".0f"),
                      _fmt(r["rhat"], ".3f"), _fmt(r["wall_s"], ".2f"), _fmt(r["warmup_s"], ".2f"),
                      _fmt(r["compile_s"], ".2f"), _fmt(r["ess_per_s"], ".1f"), _fmt(r["ess_per_s_end_to_end"], ".1f"),
                      _fmt(r["ess_per_fde"], ".3g"))
        console.print(t)

    sc = results.get("scaling")
    if sc:
        t = Table(title=f"SGLD scaling ({kind})")
        for col in ("sweep", "d", "n", "chains", "steps/chain", "SGLD steps/s", "raw grads/s", "overhead",
                    "program MiB", "device peak MiB", "maxrss MiB", "compile s"):
            t.add_column(col, justify="right")
        for sweep in ("params", "data", "chains"):
            for r in sc.get(sweep, []):
                t.add_row(sweep, _fmt(r["d"], ",d"), _fmt(r["n"], ",d"), str(r["chains"]), _fmt(r["steps_per_chain"], ",d"),
                          _fmt(r["sgld_steps_per_s"], ",.0f"), _fmt(r["raw_grads_per_s"], ",.0f"),
                          _fmt(r["overhead"], ".2f"), _mb(r["sgld_program_bytes"]), _mb(r["device_peak_bytes"]),
                          _mb(r["host_maxrss_bytes"]), _fmt(r["sgld_compile_s"], ".2f"))
        console.print(t)

    go = results.get("goals")
    if go and "sgld" in go:
        s = go["sgld"]
        console.print(f"goal run SGLD: d={s['d']:,} {s['chains']} chains x {s['steps_per_chain']:,} steps: "
                      f"{s['wall_s']:.1f}s sampling (+{s['compile_s']:.1f}s compile), {s['steps_per_s']:,.0f} steps/s")
        h = go.get("hmc", {})
        if h.get("available"):
            console.print(f"goal run HMC: d={h['d']:,} {h['chains']} chains, {h['warmup']} warm-up + {h['draws']} draws: "
                          f"total {h['total_s']:.1f}s (warm-up {h['warmup_s']:.1f}s, sampling {h['wall_s']:.1f}s, "
                          f"compile {h['compile_s']:.1f}s), ESS {_fmt(h['ess'], '.0f')}, lambda-hat "
                          f"{_fmt(h['llc_mean'], '.2f')} +- {_fmt(h['llc_se'], '.2f')}, accept {_fmt(h['mean_accept'], '.2f')}")

    for name, r in failed.items():
        console.print(f"[red]section {name} failed:[/] {r['error']}")

    goals = meta.get("goals") or []
    if goals:
        t = Table(title="Goals")
        for col in ("goal", "target", "measured", "met"):
            t.add_column(col)
        for g in goals:
            met = "-" if g["met"] is None else ("[green]yes[/]" if g["met"] else "[red]no[/]")
            t.add_row(g["goal"], g["target"], g["measured"], met)
        console.print(t)


def machine_meta(kind: str) -> dict[str, Any]:
    import jax

    from benchlib import cpu_threads

    dev = jax.devices()[0]
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                             timeout=5).stdout.strip() or None
    except Exception:  # noqa: BLE001
        rev = None
    versions = {}
    from importlib import metadata

    for pkg in ("jax", "jaxlib", "blackjax", "numpy", "arviz", "torch", "devinterp"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {"device_kind": kind, "backend": jax.default_backend(), "device": str(dev),
            "device_kind_name": getattr(dev, "device_kind", None), "cpu_threads": cpu_threads(),
            "platform": platform.platform(), "python": platform.python_version(), "versions": versions,
            "git_rev": rev, "x64": bool(jax.config.jax_enable_x64)}


def write_results(path: Path, meta: dict[str, Any], results: dict[str, Any]) -> None:
    from benchlib import to_jsonable

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(to_jsonable({"meta": meta, "results": results}), indent=2))
    tmp.replace(path)


def _tolerate_size1_arrays() -> None:
    """NumPy >= 2.5 refuses float() of a 1-element 1-d array, which ArviZ's mcse can return;
    llc.analysis.diagnostics._finite_or_none calls float() on it (a DeprecationWarning up to NumPy 2.4).
    Patched here, in this process only, so that the GPU machine's NumPy can run the benchmarks."""
    import numpy as np

    import llc.analysis.diagnostics as diag

    original = diag._finite_or_none

    def tolerant(x):
        arr = np.asarray(x)
        return original(arr.reshape(()) if arr.size == 1 else x)

    diag._finite_or_none = tolerant


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TQDM_DISABLE", "1")  # devinterp's progress bars; tqdm reads this at import
    if args.device_kind == "cpu":
        os.environ["JAX_PLATFORMS"] = "cpu"  # before JAX is imported
    sys.path[:0] = [str(HERE), str(REPO)]  # benchlib, and llc itself where it is not installed
    from rich.console import Console

    console = Console(stderr=True)
    import jax

    jax.config.update("jax_enable_x64", True)  # as llc.pipeline.experiment does: targets float64, SGLD float32
    _tolerate_size1_arrays()
    backend = jax.default_backend()
    found = "gpu" if backend in ("gpu", "cuda", "rocm") else "cpu"
    if args.device_kind is None:
        args.device_kind = found
    elif args.device_kind == "gpu" and found != "gpu":
        console.print(f"[red]error:[/] --device-kind gpu but JAX's backend is {backend}")
        return 2
    sections = args.sections or DEFAULT_SECTIONS[args.device_kind]
    out_path = args.out or HERE / "results" / f"{args.device_kind}_{args.size}.json"
    tmp = None
    if args.artifacts is None:
        tmp = tempfile.TemporaryDirectory(prefix="llc-bench-")
        args.artifacts = Path(tmp.name)

    meta = machine_meta(args.device_kind)
    meta.update({"size": args.size, "sections": list(sections), "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
                 "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "loadavg_start": list(os.getloadavg())})
    console.log(f"llc benchmarks: size={args.size} sections={','.join(sections)} backend={backend} "
                f"device={meta['device']} load={meta['loadavg_start']}")
    b = Bench(args, console)
    results: dict[str, Any] = {}
    t_all = time.perf_counter()
    for name in sections:
        t0 = time.perf_counter()
        console.log(f"section {name} ...")
        try:
            results[name] = SECTION_FNS[name](b)
        except Exception as exc:  # noqa: BLE001 - one failing section must not lose the others
            results[name] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
            console.print_exception()
        results[name]["section_s"] = time.perf_counter() - t0
        # Written after every section, so that a run cut short keeps what it measured.
        meta["total_s"] = time.perf_counter() - t_all
        meta["loadavg_end"] = list(os.getloadavg())
        meta["goals"] = goal_summary(results, args.device_kind)
        write_results(out_path, meta, results)
    report = Console() if sys.stdout.isatty() else Console(width=200)
    print_report(report, results, meta)
    console.log(f"wrote {out_path} ({meta['total_s']:.1f}s; load {meta['loadavg_start']} -> {meta['loadavg_end']})")
    if tmp is not None:
        tmp.cleanup()
    failed = [n for n, r in results.items() if r.get("error")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
