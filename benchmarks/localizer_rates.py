"""How often the ``localizer`` flag fires, on exact draws of quadratic posteriors (no JAX).

    python benchmarks/localizer_rates.py [--reps 400] [--seed 0] [--out results/localizer_rates.json]

The localized tempered posterior of L(w) = sum_i h_i w_i^2 / 2 is Gaussian, w_i ~ N(0, 1 / (n*beta
h_i + gamma)); with s_i = n*beta h_i / (n*beta h_i + gamma) (the share of direction i's precision
that is the loss's), lambda = sum_i s_i / 2, Var[n*beta L] / lambda = sum_i s_i^2 / sum_i s_i, which
is 1 - d ln lambda / d ln n*beta = 1 - d ln lambda / d ln (1/gamma), and gamma * E[theta_k^2] =
|P_k|^2 (1 - mean_i s_i) for a projection column P_k. Each case draws 4 chains x 1,000 draws of every
coordinate as a stationary AR(1) (rho 0: i.i.d.; rho 0.9: the squares' ESS about 10x smaller),
projects them on 4 random N(0, 1/d) directions (a new matrix per replicate) and judges them with
``flags.localizer`` (lambda-hat's SE as ``metrics.json``'s: sd / sqrt(bulk ESS)).

Cases, d = 50, n*beta = 100, gamma = 100 unless stated:
  * ``equal s``: every s_i = s, so Var/lambda-hat = s; the threshold is ``LOCALIZER_VAR_MAX`` = 0.1:
    s >= 0.1 should not be flagged (false positives), s well below should (detections);
  * ``spread``: n*beta h / gamma log-spaced over 1e-3..1e3 (the loss dominates half the directions);
  * ``e2e``: d = 6, every h = 1e-5 (the end-to-end check of the README, with this script's P);
  * ``frozen``: every s_i = 0.001 but the chains reach only 1/10 of the localizer's width (a
    sampler that barely moves): not flagged, since then lambda-hat is the sampler's, not gamma's.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import arviz as az
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from llc.analysis import flags  # noqa: E402

HERE = Path(__file__).resolve().parent
CHAINS, DRAWS, PROJ = 4, 1000, 4


def draws(rng: np.random.Generator, reps: int, var: np.ndarray, rho: float) -> np.ndarray:
    """(reps, chains, draws, d) stationary AR(1) Gaussian draws with per-coordinate variance ``var``."""
    sd = np.sqrt(var)
    w = np.empty((reps, CHAINS, DRAWS, var.size))
    w[:, :, 0] = rng.standard_normal((reps, CHAINS, var.size)) * sd
    for t in range(1, DRAWS):
        w[:, :, t] = rho * w[:, :, t - 1] + np.sqrt(1 - rho**2) * rng.standard_normal((reps, CHAINS, var.size)) * sd
    return w


def rate(rng: np.random.Generator, reps: int, h: np.ndarray, nbeta: float, gamma: float, rho: float,
         shrink: float = 1.0) -> float:
    var = 1.0 / (nbeta * h + gamma)
    w = draws(rng, reps, var, rho) * shrink
    llc = nbeta * 0.5 * (w**2 * h).sum(axis=-1)  # (reps, chains, draws)
    fired = 0
    for i in range(reps):
        x = llc[i]
        se = float(x.std(ddof=1)) / np.sqrt(float(az.ess(x, method="bulk")))
        theta = w[i] @ (rng.standard_normal((h.size, PROJ)) / np.sqrt(h.size))
        fired += flags.localizer(x, se, theta, gamma, nbeta) is not None
    return fired / reps


def cases() -> list[tuple[str, np.ndarray, float]]:
    d, nbeta, gamma = 50, 100.0, 100.0
    out = []
    for s in (0.2, 0.12, 0.11, 0.105, 0.1, 0.095, 0.09, 0.08, 0.05, 0.02, 0.001):
        out.append((f"equal s = {s:g}", np.full(d, gamma * s / (nbeta * (1 - s))), 1.0))
    out.append(("spread 1e-3..1e3", np.logspace(-3, 3, d) * gamma / nbeta, 1.0))
    out.append(("e2e d=6 h=1e-5", np.full(6, 1e-5), 1.0))
    out.append(("frozen (s = 0.001, 1/10 width)", np.full(d, gamma * 0.001 / (nbeta * 0.999)), 0.1))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "localizer_rates.json")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    rng = np.random.default_rng(args.seed)
    nbeta, gamma = 100.0, 100.0
    rows, t0 = [], time.time()
    for name, h, shrink in cases():
        s = nbeta * h / (nbeta * h + gamma)
        for rho in (0.0, 0.9):
            r = rate(rng, args.reps, h, nbeta, gamma, rho, shrink)
            rows.append({"case": name, "rho": rho, "var_ratio": float((s**2).sum() / s.sum()),
                         "spread": float(shrink**2 * (1 - s.mean())), "lambda": float(s.sum() / 2), "flagged": r})
            print(f"{name:32s} rho {rho:3.1f}  Var/λ {rows[-1]['var_ratio']:.4f}  γE[θ²] {rows[-1]['spread']:.3f}  "
                  f"λ {rows[-1]['lambda']:.4g}  flagged {r:6.1%}", flush=True)
    print(f"{time.time() - t0:.0f} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"reps": args.reps, "seed": args.seed, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
