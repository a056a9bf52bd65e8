"""How often the ``step_bias`` flag (SGLD's mean MALA acceptance < 0.9) fires, and how biased
lambda-hat is, across step sizes on quadratic targets whose lambda is exact at finite n*beta.

    python benchmarks/step_flag_rates.py [--reps 16] [--out results/step_flag_rates.json]

Each case runs ``reps`` seeds of plain SGLD (4 chains x 1,000 draws x 10 steps, full batch, so the
only bias is the step's) at eps = c / lam_max for c in FACTORS, lam_max the posterior's stiffness
(n*beta * max h + gamma), all as one batched program on the one road. Per c it prints the fraction
of runs flagged ``step_bias``, the mean MALA acceptance and lambda-hat's mean relative bias and z
(bias / its SE over the replicates' spread). A false positive is a flag where the bias is below the
run's own SE; a miss is a bias of several SE with no flag.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

HERE = Path(__file__).resolve().parent
FACTORS = (0.01, 0.03, 0.1, 0.3, 1.0, 2.0)
CASES = {
    "isotropic d=4": {"target.quadratic.dim": 4},
    "spread d=15 (h 0..22)": {"target.quadratic.dim": 15,
                              "target.quadratic.eigenvalues": ",".join(f"{v:.4g}" for v in np.geomspace(1e-3, 22, 14))
                              + ",0"},
    "isotropic d=100": {"target.quadratic.dim": 100},
}


def run_case(name: str, overrides: dict[str, object], reps: int, root: Path) -> list[dict]:
    from llc.analysis.flags import codes_in
    from llc.config import build_config
    from llc.engine.posterior import make_posterior
    from llc.engine.targets import analytic_llc, get_target
    from llc.pipeline import sampling

    sets = ["target.kind=quadratic", "data.n_data=1000", "samplers=sgld", "sgld.chains=4", "sgld.draws=1000",
            "sgld.eval_every=10", "sgld.burnin=100", "sgld.batch_size=1000", "sgld.dtype=float64",
            "sgld.step_size=1e-4", *(f"{k}={v}" for k, v in overrides.items())]
    cfg = build_config(None, sets)
    target = get_target(cfg, root)
    post = make_posterior(target.loss_fn, target.params, target.x, target.y, cfg.posterior, L0=target.L0)
    h = np.ones(cfg.target.quadratic.dim) if cfg.target.quadratic.eigenvalues is None else \
        np.asarray(cfg.target.quadratic.eigenvalues)
    lam_max = post.nbeta * h.max() + post.gamma
    exact = analytic_llc(cfg, post.n, post.beta, post.gamma)["value"]
    jobs, meta = [], []
    for c in FACTORS:
        for seed in range(reps):
            section = dataclasses.replace(cfg.sgld, step_size=c / lam_max)
            jobs.append(sampling.Job("sgld", section, sampling.sampler_key(seed, "sgld"), cfg.theta_proj_dim))
            meta.append(c)
    t0 = time.perf_counter()
    outs = sampling.sample(sampling.plan(jobs), jobs, [post] * len(jobs))
    rows = []
    for c in FACTORS:
        ms = [(sampling.evaluate(o, post), o) for o, mc in zip(outs, meta) if mc == c]
        lam = np.array([m["llc_mean"] for m, _ in ms], float)
        se = np.array([m["llc_se"] for m, _ in ms], float)
        flagged = [("step_bias" in codes_in("; ".join(m["flags"]))) for m, _ in ms]
        acc = [float(np.nanmean(o.stats["mala_acceptance"])) for _, o in ms]
        bias = float(np.nanmean(lam) - exact)
        rows.append({"case": name, "c": c, "step_size": c / lam_max, "exact": exact, "llc_mean": float(np.nanmean(lam)),
                     "rel_bias": bias / exact, "bias_in_run_se": bias / float(np.nanmean(se)),
                     "z_mean": bias / (float(np.nanstd(lam, ddof=1)) / np.sqrt(len(lam))),
                     "mala_mean": float(np.mean(acc)), "mala_min": float(np.min(acc)),
                     "flagged": float(np.mean(flagged)), "reps": reps})
    print(f"{name}: {len(jobs)} runs in {time.perf_counter() - t0:.0f} s (lam_max {lam_max:.4g}, exact {exact:.4g})")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=16)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "step_flag_rates.json")
    args = ap.parse_args()
    import tempfile

    from llc.pipeline import sampling

    sampling.prepare()
    rows = []
    with tempfile.TemporaryDirectory() as root:
        for name, overrides in CASES.items():
            rows += run_case(name, overrides, args.reps, Path(root))
    print(f"{'case':24} {'c':>5} {'MALA':>6} {'min':>6} {'flagged':>8} {'rel bias':>9} {'bias/SE':>8} {'z':>7}")
    for r in rows:
        print(f"{r['case']:24} {r['c']:5g} {r['mala_mean']:6.3f} {r['mala_min']:6.3f} {r['flagged']:8.0%} "
              f"{r['rel_bias']:+9.2%} {r['bias_in_run_se']:+8.2f} {r['z_mean']:+7.1f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"reps": args.reps, "factors": FACTORS, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
