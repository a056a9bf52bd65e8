"""How often the ``unconverged`` flag fires on correct runs, and on defective ones (no JAX).

    python benchmarks/flag_rates.py [--reps 400] [--seed 0] [--rhat-max X] [--out results/flag_rates.json]

Correct runs: stationary AR(1) chains (x_t = rho x_{t-1} + e_t, started in the stationary law) and
chi-square-type chains (the sum of 6 squared AR(1)s over 2: mean 3, variance 3, as lambda-hat draws
at a tempered posterior), for 1, 4 and 8 chains, 150 to 2,000 draws and rho 0 to 0.99. Their true
ESS (of the mean) is chains * draws * (1 - r) / (1 + r) with r = rho (AR(1)) or rho^2 (squares).
Each case reports the fraction flagged and the part of it due to R-hat alone; the summary gives,
per band of true ESS, the smallest and largest fraction flagged over the cases in it: false
positives where the true ESS is well above ``UNCONVERGED_ESS``, detections where it is below
(runs too short to trust the SE, which should be flagged).

Defective runs (4 and 8 chains, AR(1), rho 0.5, 1,000 draws, true ESS 333 per chain), with the
fraction flagged ``unconverged`` and the fraction with any of ``unconverged``, ``drift``, ``outlier_chain``:
  * ``offset``: one chain's mean shifted by k of its own SE (a chain stuck in another mode);
  * ``spread``: the chain means spread evenly over +-k/2 chain SE (chains that disagree);
  * ``trend``: every chain drifts linearly by k marginal sd over the run (not yet stationary).

``--rhat-max`` measures another R-hat threshold in place of ``flags.UNCONVERGED_RHAT``.
R-hat and ESS are computed as ``llc.analysis.diagnostics.ess_rhat`` does for ``metrics.json``
(ArviZ's rank-normalised split R-hat, bulk and tail ESS) and judged by ``flags.unconverged``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from llc.analysis import flags  # noqa: E402
from llc.analysis.diagnostics import ess_rhat  # noqa: E402

HERE = Path(__file__).resolve().parent
CHAINS = (1, 4, 8)
DRAWS = (150, 200, 500, 1000, 2000)
RHOS = (0.0, 0.5, 0.8, 0.9, 0.95, 0.99)
SQUARES = 6  # chi-square-type chains: sum of this many squared AR(1)s, over 2


def ar1(rng: np.random.Generator, shape: tuple[int, ...], rho: float) -> np.ndarray:
    """Stationary AR(1) along the last axis, unit marginal variance; vectorised over the others."""
    e = rng.standard_normal(shape) * np.sqrt(1 - rho**2)
    x = np.empty(shape)
    x[..., 0] = rng.standard_normal(shape[:-1])
    for t in range(1, shape[-1]):
        x[..., t] = rho * x[..., t - 1] + e[..., t]
    return x


def chains_of(kind: str, rng: np.random.Generator, reps: int, chains: int, draws: int, rho: float) -> np.ndarray:
    if kind == "ar1":
        return ar1(rng, (reps, chains, draws), rho)
    return sum(ar1(rng, (reps, chains, draws), rho) ** 2 for _ in range(SQUARES)) / 2


def true_ess(kind: str, chains: int, draws: int, rho: float) -> float:
    r = rho if kind == "ar1" else rho**2
    return chains * draws * (1 - r) / (1 + r)


def judge(x: np.ndarray, others: bool = False) -> np.ndarray:
    """Fractions of the replicates of a (reps, chains, draws) array flagged ``unconverged``, flagged
    by its R-hat part, and (``others``) flagged ``unconverged``, ``drift`` or ``outlier_chain``."""
    out = []
    for rep in x:
        d = ess_rhat(rep)
        fl = flags.unconverged(d["rhat"], d["ess_bulk"], d["ess_tail"]) is not None
        row = [fl, d["rhat"] is not None and d["rhat"] > flags.UNCONVERGED_RHAT]
        if others:
            row.append(fl or flags.drift(rep) is not None or flags.outlier_chains(rep) is not None)
        out.append(row)
    return np.array(out).mean(axis=0)


def correct_runs(rng: np.random.Generator, reps: int) -> list[dict]:
    rows = []
    for kind in ("ar1", "chisq"):
        for chains in CHAINS:
            for draws in DRAWS:
                for rho in RHOS:
                    flagged, by_rhat = judge(chains_of(kind, rng, reps, chains, draws, rho))
                    rows.append({"kind": kind, "chains": chains, "draws": draws, "rho": rho,
                                 "true_ess": true_ess(kind, chains, draws, rho),
                                 "flagged": float(flagged), "by_rhat": float(by_rhat)})
                    print(f"{kind:5s} chains {chains} draws {draws:5d} rho {rho:4.2f} true ESS "
                          f"{rows[-1]['true_ess']:8.0f}: flagged {flagged:6.1%} (R-hat {by_rhat:6.1%})", flush=True)
    return rows


def defective_runs(rng: np.random.Generator, reps: int, draws: int = 1000, rho: float = 0.5) -> list[dict]:
    rows = []
    se_chain = np.sqrt((1 + rho) / ((1 - rho) * draws))  # SE of one chain's mean, unit marginal sd
    for chains in (4, 8):
        for defect, ks in (("offset", (5, 10, 15, 20)), ("spread", (5, 10, 15, 20)),
                           ("trend", (0.5, 1.0, 1.5, 2.0))):
            for k in ks:
                x = ar1(rng, (reps, chains, draws), rho)
                if defect == "offset":
                    x[:, 0] += k * se_chain
                elif defect == "spread":
                    x += (np.linspace(-0.5, 0.5, chains) * k * se_chain)[None, :, None]
                else:
                    x += np.linspace(0.0, k, draws)
                flagged, by_rhat, any_flag = judge(x, others=True)
                rows.append({"defect": defect, "chains": chains, "k": k, "flagged": float(flagged),
                             "by_rhat": float(by_rhat), "with_drift_outlier": float(any_flag)})
                print(f"{defect:6s} chains {chains} k {k:5.2f}: flagged {flagged:6.1%} (R-hat {by_rhat:6.1%}); "
                      f"with drift / outlier_chain {any_flag:6.1%}", flush=True)
    return rows


def summary(correct: list[dict]) -> list[dict]:
    """Per band of true ESS (in units of UNCONVERGED_ESS): the cases' smallest and largest flagged fraction."""
    edges = (0.0, 2 / 3, 1.0, 1.5, 2.0, 3.0, np.inf)
    out = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        band = [r for r in correct if lo <= r["true_ess"] / flags.UNCONVERGED_ESS < hi]
        low, high = min(band, key=lambda r: r["flagged"]), max(band, key=lambda r: r["flagged"])
        out.append({"true_ess_from": lo * flags.UNCONVERGED_ESS, "true_ess_to": hi * flags.UNCONVERGED_ESS,
                    "cases": len(band), "min_flagged": low["flagged"], "max_flagged": high["flagged"],
                    "max_case": {k: high[k] for k in ("kind", "chains", "draws", "rho")}})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rhat-max", type=float, default=flags.UNCONVERGED_RHAT)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "flag_rates.json")
    args = ap.parse_args()
    flags.UNCONVERGED_RHAT = args.rhat_max  # read by flags.unconverged at each call
    warnings.filterwarnings("ignore")  # ArviZ's shape warnings on one chain: R-hat is None there anyway
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    correct = correct_runs(rng, args.reps)
    defective = defective_runs(rng, args.reps)
    result = {"rhat_max": flags.UNCONVERGED_RHAT, "ess_min": flags.UNCONVERGED_ESS, "reps": args.reps,
              "seed": args.seed, "summary": summary(correct), "correct": correct, "defective": defective,
              "seconds": time.perf_counter() - t0}
    for row in result["summary"]:
        print(f"true ESS {row['true_ess_from']:.0f} to {row['true_ess_to']:.0f} ({row['cases']} cases): flagged "
              f"{row['min_flagged']:.1%} to {row['max_flagged']:.1%} (the most: {row['max_case']})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
