"""Which posterior (n*beta, gamma) and SGLD variant give local, converged chains on a grokking
preset? A few of its checkpoints, each posterior in turn through ``llc.pipeline.trajectory.compute``
(SGLD ``auto``); prints a row per (posterior, checkpoint) and writes them as CSV.

    python benchmarks/grok_posteriors.py --preset grok --steps 0,56,138,531,1538,9231,14615,30000 \
        --posteriors 1:100,3:100,10:100 [--precond rmsprop] [--draws 300] [--batch-size 256] [--out F.csv]

A posterior is beta0:gamma (n*beta = beta0 * n / ln n). ``--budget`` seconds: no posterior is started
after them. Produced results/grok_posterior_explore_h100.csv (H100; see benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="grok")
    ap.add_argument("--steps", default="0,56,138,531,1538,9231,14615,30000", help="checkpoints (nearest taken)")
    ap.add_argument("--posteriors", default="1:100,3:100,10:100", help="beta0:gamma, comma-separated")
    ap.add_argument("--precond", default="none", choices=("none", "rmsprop"))
    ap.add_argument("--draws", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--budget", type=float, default=float("inf"))
    ap.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    from llc.config import build_config
    from llc.engine.targets import get_target, load_checkpoints, posterior_data
    from llc.pipeline import trajectory as tr

    t0 = time.time()
    cfg = build_config(args.preset)
    target = get_target(cfg, args.artifacts, log=print)
    ck = load_checkpoints(target)
    steps = np.asarray(ck.steps)
    idx = [int(np.argmin(abs(steps - int(s)))) for s in args.steps.split(",")]
    x, y = posterior_data(target, cfg)
    data = tr.Checkpointed(target.loss_fn, steps[idx], [ck.params[i] for i in idx], x, y,
                           {k: np.asarray(v)[idx] for k, v in ck.metrics.items()})
    print(f"target ready in {time.time() - t0:.0f} s; checkpoints {steps[idx].tolist()}", flush=True)
    rows = []
    for spec in args.posteriors.split(","):
        if time.time() - t0 > args.budget:
            print("budget spent; stopping", flush=True)
            break
        beta0, gamma = (float(v) for v in spec.split(":"))
        pcfg = dataclasses.replace(cfg.posterior, beta0=beta0, gamma=gamma)
        scfg = dataclasses.replace(cfg.sgld, draws=args.draws, precond=args.precond,
                                   **({"batch_size": args.batch_size} if args.batch_size else {}))
        where = (args.artifacts / "grok_posteriors" /
                 f"{target.id}_{args.precond}_b{beta0:g}_g{gamma:g}_d{args.draws}_bs{scfg.batch_size}")
        t = time.time()
        tr.compute(data, where, sampler="sgld", sampler_cfg=scfg, posterior_cfg=pcfg, seed=cfg.seed)
        print(f"== beta0 {beta0:g} (n*beta {target.n * beta0 / np.log(target.n):.0f}), gamma {gamma:g}: "
              f"{time.time() - t:.0f} s", flush=True)
        for path in sorted((where / "points").glob("*.npz")):
            z = np.load(path)
            r = json.loads(str(z["row"]))
            Ln = np.asarray(z["Ln"])
            above = float(np.nanmean(Ln[:, Ln.shape[1] // 5:]) - r["L0"])  # the chains' loss, burn-in aside
            kinds = sorted({f.split(":")[0] for f in r["flags"]}) or ["clean"]
            rows.append({"beta0": beta0, "gamma": gamma, "precond": args.precond, "batch_size": scfg.batch_size,
                         "draws": args.draws, "step": r["step"], "step_size": r["step_size"],
                         "llc_mean": r["llc_mean"], "llc_se": r["llc_se"], "rhat": r["rhat"], "ess": r["ess"],
                         "mean_loss_above_L0": above, "L0": r["L0"], "flags": " ".join(kinds)})
            print(f"step {r['step']:>6} eps {r['step_size']:.2e} llc {r['llc_mean']:.4g} ± {r['llc_se']:.2g} "
                  f"R-hat {r['rhat']} ESS {r['ess']} E[L]-L0 {above:.3g} | {' '.join(kinds)}", flush=True)
    if args.out and rows:
        with args.out.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    main()
