"""Failure flags: results that are wrong although nothing is NaN and R-hat looks fine (no JAX).

A flag is one line, ``"<code>: <what and why>"``, whose advice depends on the kind of sampler
(``sampler_kind``, from the registry's attributes): VI, an optimiser, is advised on optimisation
steps, learning rate, components and rank, never on step size or burn-in; minibatch samplers also
on the batch. A sampler's ``flags`` list (metrics.json, the ``--json`` record, the NetCDF ``flags``
attribute, the sweep CSV) is empty only for a clean result.

Per sampler, from its kept draws of lambda-hat (diverged chains excluded):

- ``diverged``: chains failed (non-finite state, frozen, unusable tuned parameters).
- ``unconverged``: ArviZ's rank-normalised split R-hat > 1.05 (chains disagree), or bulk or tail
  ESS < 100 (too few effective draws to trust the SE). For i.i.d. draws (VI) the ESS part is
  skipped (their SE needs no estimated ESS) and R-hat compares independent fits; one chain has no
  R-hat (ArviZ needs two chains), its trends are ``drift``'s. Vehtari et al. (2021) recommend
  R-hat < 1.01 with ESS > 100 per chain, but with fewer effective draws R-hat's own noise exceeds
  0.01. On correct runs (``python benchmarks/flag_rates.py``: stationary AR(1) and chi-square-type
  chains, 1/4/8 chains, 150-2,000 draws, rho 0-0.99, 400 replicates per case; ``--rhat-max`` for
  other thresholds) an R-hat threshold of 1.01 flagged up to 95 % of runs with a true ESS of
  300-410 (8 chains), 1.03 up to 9 %, 1.05 at most 0.25 %. With 1.05 and 100, the fraction flagged by true ESS: below 67, 93-100 % (runs too
  short to trust, which should be flagged); 67-100, 62-96 %; 100-150, 12-84 %; 150-200, 2-44 %;
  200-300, 0.2-22 % (a grey zone: the ESS is itself estimated); >= 300, at most 0.25 %.
  Chains that disagree while each mixes well move R-hat little (R-hat^2 - 1 ~ variance of the
  chain means / variance of the draws, so the offset it sees, in SE, grows with the ESS per
  chain): with 1,000 draws and ESS 333 per chain, one chain shifted by 10 of its SE was flagged in
  15 % (4 chains) and 0 % (8 chains) of runs, by 15 SE in 100 % and 3.5 %, by 20 SE in 100 %
  (``outlier_chain`` finds 10 SE in 91-96 %); chain means spread evenly over +-7.5 SE in 92 % and
  4 %, over +-10 SE in >= 99.5 % (over +-5 SE: flagged by nothing); a linear trend of 1.5 marginal
  sd over the run in 100 % (``drift`` finds 0.5 sd in 83-100 %).
- ``above_d_half``: lambda-hat more than 3 SE above d/2. The learning coefficient never exceeds
  d/2 (a regular model's value), and the localizer only lowers the estimate.
- ``negative``: lambda-hat more than 3 SE below 0: w* is not a local minimum of L_n.
- ``excess_variance``: Var[n*beta (L_n - L0)] > 3 lambda-hat. At a tempered posterior
  d/d(beta) E_beta[n L_n] = -Var_beta[n L_n] and E_beta[n L_n] ~ n L0 + lambda/beta give
  Var[n*beta L_n] ~ lambda (a Gamma(lambda, 1) law: variance = mean); the localizer only lowers it.
  Correct runs measured 0.33-0.40 (quick MLP: SGLD, HMC, MCLMC), 0.70-0.78 (quadratic d = 4),
  0.77-0.83 (DLN); a too-large SGLD step, whose rare huge excursions dominate the mean, gave
  147-163 (issue 11's two reproductions).
- ``drift``: L_n trends over the kept draws. The last third of every chain against its first
  third, two ways: (a) z = (mean_last - mean_first) / SE with each third's SE from ArviZ's
  multi-chain ESS of the mean, used when both thirds have ESS >= 10 per chain, flagged at |z| > 4;
  (b) with >= 3 chains, a t-test on the per-chain differences (needs no ESS, so it still works
  when a strong trend makes the ESS tiny), flagged at two-sided p < 0.001. On stationary AR(1) and
  chi-square-type chains (4 and 8 chains, rho 0 to 0.99, 150 to 2,000 draws, 400 replicates per
  case) the two together fired in at most 0.5 % of runs; a trend of one marginal sd over the run
  was found in > 98 % of runs with ESS >= 50 per chain.
- ``outlier_chain``: with >= 3 chains, a chain whose mean is more than 5 scales from the mean of
  the others, the scale being sqrt(SE_c^2 + max(variance of the others' means, their mean SE^2))
  (so chains that all disagree are R-hat's business, not an outlier). Skipped when the median
  per-chain ESS is below 10. Same simulations: at most 0.5 % false positives with ESS >= 1 per
  chain; a chain shifted by 10 SE found in 80-100 % of runs.
- ``analytic``: for targets with an analytic value, |lambda-hat - lambda| > 3 SE and > 5 % of
  lambda. The message quotes the regime the value assumes (the file's ``analytic_regime``, from the
  target): exact for the quadratic, so any gap is the sampler's bias; n -> infinity for deep linear
  networks, where finite n*beta with the localizer reads low.

- ``localizer``: the localizer, not the loss, sets lambda-hat, and the chains spread as far as it
  alone allows. Two statistics of the kept draws: (a) Var/lambda-hat, since at a tempered posterior
  d E[n*beta (L_n - L0)] / d(n*beta) = E[L_n - L0] - n*beta Var[L_n] gives
  d ln lambda-hat / d ln n*beta = 1 - Var[n*beta (L_n - L0)] / lambda-hat exactly: Var/lambda-hat
  ~ 1 where lambda-hat is a learning coefficient (independent of beta; see ``excess_variance``),
  ~ 0 where it grows in proportion to n*beta. For a quadratic loss (1/2) sum h_i w_i^2, with s_i =
  n*beta h_i / (n*beta h_i + gamma), lambda = sum s_i / 2, Var/lambda = sum s_i^2 / sum s_i, and
  lambda depends on n*beta / gamma only, so 1 - Var/lambda is also -d ln lambda / d ln gamma; in
  the limit n*beta h << gamma, lambda-hat ~ n*beta tr(H) / (2 gamma). (b) r = gamma * E[theta_k^2]
  over kept draws, chains and projections: with P's entries N(0, 1/d), E[theta_k^2] ~ E|w - w*|^2 / d,
  which is 1/gamma under the localizer alone (r = 1 - mean s_i for the quadratic); r alone cannot
  tell (singular networks have r ~ 1 - 2 lambda / d ~ 1 whatever their lambda: the quick MLP too),
  but it tells a posterior the localizer sets from a sampler that barely moves (also a small
  lambda-hat with a small variance, but r << 1). Flagged when Var/lambda-hat + 3 SE < 0.1
  (lambda-hat grows at least as (n*beta)^0.9: halving gamma would nearly double it) and r - 3 SE >
  0.25, with lambda-hat > 3 SE. The SEs: Var's from ArviZ's ESS of the squared deviations (delta
  method, ignoring their positive correlation with the mean: conservative); r's the mean over
  projections of each one's SE from the ESS of gamma theta_k^2 (at least the SE of their mean, however
  they correlate). r's bound is loose because with few projections |P_k|^2 varies (d = 6, 4
  projections: E[r] = 0.56 under the localizer alone). Exact Gaussian draws of quadratic posteriors
  (``python benchmarks/localizer_rates.py``: d = 50, every s_i = s, 4 chains x 1,000 draws, i.i.d. or
  AR(1) rho 0.9, 4 projections, 400 replicates per case): s >= 0.1, none flagged (at most 1.0 % at
  s = 0.1, rho 0.9); s = 0.095, 5-18 %; 0.09, 22-93 %; 0.08, 90-100 %; s <= 0.05 and d = 6 with
  every n*beta h = 1e-5 gamma, 100 %; a spread spectrum (n*beta h / gamma 1e-3..1e3, Var/lambda 0.86) and
  chains reaching 1/10 of the localizer's width, 0 %. The quick preset's MLP has Var/lambda-hat
  0.33-0.40: not flagged.

- ``step_bias``: SGLD's mean MALA acceptance (every plain or RMSProp SGLD run checks its moves under
  the full-batch posterior, ``sgld.mala_check``; RMSProp's in the metric G of each checked move, where
  it is plain SGLD in G's whitened coordinates), plus 2 SE, below ``llc.analysis.health.mala_floor(d)``:
  what an isotropic Gaussian posterior of the run's dimension accepts at the step that inflates
  lambda-hat by STEP_BIAS_REL = 5 %. devinterp's fixed 0.9 ignores the dimension: the acceptance
  falls with d at a fixed per-direction bias (d = 16,000: 0.76 at a 2.5 % bias), so 0.9 would forbid
  every step that mixes in a network's budget there, and pass a 25 % bias at d = 4 (0.83 needed).
  Where curvature is spread over orders of magnitude the few stiff directions set the acceptance and
  the floor is lenient; ``step_size=auto``'s grid then catches a bias by comparing steps.
  Measured (``python benchmarks/step_flag_rates.py``: plain full-batch SGLD, 4 chains x 1,000 draws,
  16 seeds per step, eps = c / lam_max): on isotropic quadratics (d = 4, 100) no run with a bias of
  at most 2.7 % (c <= 0.1) was flagged and every run with 8 % or more (c >= 0.3) was; on the spread
  spectrum (d = 15, h from 1e-3 to 22) none at 2.6 % (c = 0.3), all at 10.7 % (c = 1). A bias below
  5 % but above the SE (d = 100, c = 0.1: +2.5 %, 7 SE) is not this flag's: it is the grid's.
- ``auto_step``: ``step_size=auto`` found no healthy point on its grid (llc.pipeline.sampling's
  ``choose_step``): λ̂ is from the best-mixed point, and the message lists why each point failed.

Across samplers of one run (``add_cross_sampler_flags``):

- ``disagree``: two samplers' lambda-hat more than 3 combined SE apart, sqrt(SE_a^2 + SE_b^2);
  both are flagged, each naming the other (which one is wrong is not known from the numbers).
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np

from llc import registry
# How a flag reads in a table is the stored records' business (README_snippet.md shows them too).
from llc.store.records import flag_code

Z_SE = 3.0  # SEs for above_d_half, negative, analytic, disagree
VARIANCE_RATIO_MAX = 3.0
DRIFT_Z = 4.0
DRIFT_T_P = 1e-3
DRIFT_MIN_ESS_PER_CHAIN = 10.0
OUTLIER_Z = 5.0
OUTLIER_MIN_ESS = 10.0
ANALYTIC_REL = 0.05
MIN_DRAWS = 30  # fewer kept draws: no drift / outlier / variance test
# unconverged: rank-normalised split R-hat above this, or bulk / tail ESS below that (the module
# docstring gives the false-positive rates that chose them; the calibration rule's stricter
# R-hat < 1.01, llc.analysis.health, only ranks grid points).
UNCONVERGED_RHAT = 1.05
UNCONVERGED_ESS = 100.0
# localizer: Var/lambda-hat (= 1 - d ln lambda-hat / d ln n*beta) below this by 3 SE, and
# gamma * E[theta_k^2] (1: the localizer alone) above that by 3 SE (the module docstring).
LOCALIZER_VAR_MAX = 0.1
LOCALIZER_SPREAD_MIN = 0.25
FLAG_CODES = ("diverged", "unconverged", "above_d_half", "negative", "excess_variance", "drift", "outlier_chain",
              "analytic", "localizer", "step_bias", "auto_step", "disagree")


def _g(x: float) -> str:
    return f"{x:.4g}"


def codes_in(text: str) -> list[str]:
    """The codes of flags joined into one text (a CSV cell: "; "-joined, messages may hold "; ")."""
    return re.findall(rf"(?:^|; )({'|'.join(FLAG_CODES)}):", text or "")


def split_flags(text: str | None) -> list[str]:
    """The flags joined into one text, as a list: split only where "; " starts a flag code, since
    messages themselves may hold "; " (``localizer``'s does)."""
    return [f for f in re.split(rf"; (?=(?:{'|'.join(FLAG_CODES)}):)", text or "") if f]


def sampler_kind(sampler: str | None) -> str:
    """What a flag's advice is about, from the registry's attributes: "independent" (an optimiser's
    i.i.d. draws of q: VI), "minibatch" (stochastic-gradient chains) or "full_batch" (full-batch
    chains; also an unknown sampler)."""
    spec = registry.SAMPLERS.get(str(sampler))
    if spec and spec.independent_draws:
        return "independent"
    return "minibatch" if spec and spec.minibatch else "full_batch"


# Advice where it differs by sampler kind: an independent-draws sampler (VI) is an optimiser,
# without step size, warm-up or burn-in.
ADVICE = {
    "disagree": {"full_batch": "chains disagree (longer warm-up or a smaller step)",
                 "minibatch": "chains disagree (longer warm-up or a smaller step)",
                 "independent": "the independent fits disagree (more optimisation steps or a lower learning rate)"},
    "not_sampling": {"full_batch": "the sampler is not sampling the tempered posterior (step size too large?)",
                     "minibatch": "the sampler is not sampling the tempered posterior (step size too large, or "
                                  "the batch too small?)",
                     "independent": "q does not fit the tempered posterior (more optimisation steps, a lower learning "
                           "rate, fewer components or a lower rank?)"},
    "excursions": {"full_batch": "rare huge excursions dominate λ̂ (step size too large?)",
                   "minibatch": "rare huge excursions dominate λ̂ (step size too large, or the batch too small?)",
                   "independent": "a few draws of q far from w* dominate λ̂ (a stray component: fewer components, a "
                         "lower rank, more optimisation steps or a lower learning rate?)"},
    "drift": {"full_batch": "not stationary yet (more burn-in?)",
              "minibatch": "not stationary yet (more burn-in, or a smaller step?)",
              "independent": "the draws of a fitted q are i.i.d., so a trend is not burn-in (rerun with another seed)"},
    "outlier": {"full_batch": "stuck apart from the others (longer warm-up?)",
                "minibatch": "stuck apart from the others (longer warm-up or a smaller step?)",
                "independent": "one fit converged elsewhere (more optimisation steps or a lower learning rate?)"},
}


# --------------------------------------------------------------------------- single checks

def diverged(n_diverged: int, chains: int, reasons: dict[str, str] | None = None) -> str | None:
    if not n_diverged:
        return None
    why = "; ".join(f"chain {c}: {r}" for c, r in sorted((reasons or {}).items(), key=lambda kv: int(kv[0])))
    return f"diverged: {n_diverged} of {chains} chains failed{f' ({why})' if why else ''}; excluded from λ̂"


def unconverged(rhat: float | None, ess_bulk: float | None, ess_tail: float | None,
                kind: str = "full_batch") -> str | None:
    """R-hat or bulk / tail ESS beyond their thresholds (see the module docstring); None: not judged.
    ``kind``: ``sampler_kind``'s, for the advice."""
    found, advice = [], []
    if rhat is not None and rhat > UNCONVERGED_RHAT:
        found.append(f"R̂ = {rhat:.3f} > {UNCONVERGED_RHAT:g}")
        advice.append(ADVICE["disagree"][kind])
    low = [f"{name} ESS = {ess:.0f}" for name, ess in (("bulk", ess_bulk), ("tail", ess_tail))
           if ess is not None and ess < UNCONVERGED_ESS]
    if low:
        found.append(f"{' and '.join(low)} < {UNCONVERGED_ESS:g}")
        advice.append("too few effective draws to trust the SE (run more draws)")
    if not found:
        return None
    return f"unconverged: {', '.join(found)}: {' and '.join(advice)}"


def step_bias(info: dict[str, Any], dim: int | None) -> str | None:
    """SGLD's mean MALA acceptance, 2 SE up, below llc.analysis.health.mala_floor(d) (the module docstring)."""
    from llc.analysis.health import STEP_BIAS_REL, mala_floor

    acc, checks = info.get("mean_mala_acceptance"), info.get("mala_checks") or 0
    if acc is None or not math.isfinite(acc) or not dim or not checks:
        return None
    floor = mala_floor(int(dim))
    sd = info.get("mala_sd")
    se = (sd if sd is not None and math.isfinite(sd) else 0.5) / math.sqrt(checks)
    if acc + 2.0 * se >= floor:
        return None
    return (f"step_bias: mean MALA acceptance {acc:.3f} < {floor:.3f}, what a d = {dim} Gaussian posterior accepts at "
            f"a step that inflates λ̂ by {STEP_BIAS_REL:.0%}: the step size ({_g(info['step_size'])}) biases λ̂; use "
            "step_size=auto or a smaller step")


def auto_step(info: dict[str, Any]) -> str | None:
    """``step_size=auto`` found no healthy grid point (the rule's text says why)."""
    if info.get("auto_step_chosen_healthy", 1):
        return None
    return "auto_step: " + str(info.get("step_size_rule", "")).split("=auto: ", 1)[-1]


def above_half_dim(mean: float, se: float, dim: int | None, kind: str = "full_batch") -> str | None:
    if dim is None or mean - Z_SE * se <= dim / 2:
        return None
    return (f"above_d_half: λ̂ = {_g(mean)} ± {_g(se)} exceeds d/2 = {_g(dim / 2)}, impossible for a learning "
            f"coefficient: {ADVICE['not_sampling'][kind]}")


def negative(mean: float, se: float) -> str | None:
    if mean + Z_SE * se >= 0:
        return None
    return f"negative: λ̂ = {_g(mean)} ± {_g(se)} < 0: w* is not a local minimum of L_n (or L0 is wrong)"


def excess_variance(llc: np.ndarray, se: float, kind: str = "full_batch") -> str | None:
    """Var of the lambda-hat draws against lambda-hat (see the module docstring)."""
    llc = np.asarray(llc, dtype=np.float64)
    mean = float(llc.mean())
    if llc.shape[1] < MIN_DRAWS or mean - Z_SE * se <= 0:
        return None
    ratio = float(llc.var(ddof=1)) / mean
    if ratio <= VARIANCE_RATIO_MAX:
        return None
    return (f"excess_variance: Var of the λ̂ draws is {ratio:.3g}× λ̂ (≲ 1× at a tempered posterior): "
            f"{ADVICE['excursions'][kind]}")


def drift(llc: np.ndarray, kind: str = "full_batch") -> str | None:
    """First vs last third of every chain (see the module docstring for the two tests)."""
    import arviz as az  # here, not at import: the CLI's tables use this module's helpers
    from scipy import stats as st

    x = np.asarray(llc, dtype=np.float64)
    chains, draws = x.shape
    third = draws // 3
    if draws < MIN_DRAWS:
        return None
    first, last = x[:, :third], x[:, -third:]
    diff = float(last.mean() - first.mean())
    found = []
    ess_first, ess_last = float(az.ess(first, method="mean")), float(az.ess(last, method="mean"))
    if min(ess_first, ess_last) >= DRIFT_MIN_ESS_PER_CHAIN * chains:
        se = math.sqrt(first.var(ddof=1) / ess_first + last.var(ddof=1) / ess_last)
        z = diff / se if se > 0 else 0.0
        if abs(z) > DRIFT_Z:
            found.append(f"z = {z:.1f}")
    if chains >= 3:
        d = last.mean(axis=1) - first.mean(axis=1)
        sd = float(d.std(ddof=1))
        t = float(d.mean()) / (sd / math.sqrt(chains)) if sd > 0 else 0.0
        if abs(t) > st.t.ppf(1 - DRIFT_T_P / 2, chains - 1):
            found.append(f"all {chains} chains move the same way, t = {t:.1f}")
    if not found:
        return None
    return (f"drift: λ̂ moves from {_g(float(first.mean()))} (first third of the kept draws) to "
            f"{_g(float(last.mean()))} (last third); {', '.join(found)}: {ADVICE['drift'][kind]}")


def _chain_se(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import arviz as az

    ess = np.array([float(az.ess(row[None], method="mean")) for row in x])
    return x.std(axis=1, ddof=1) / np.sqrt(ess), ess


def outlier_chains(llc: np.ndarray, chain_ids: list[int] | None = None, kind: str = "full_batch") -> str | None:
    """Chains far outside the spread of the others (see the module docstring)."""
    x = np.asarray(llc, dtype=np.float64)
    chains, draws = x.shape
    if chains < 3 or draws < MIN_DRAWS:
        return None
    ids = chain_ids if chain_ids is not None else list(range(chains))
    means = x.mean(axis=1)
    se, ess = _chain_se(x)
    if np.median(ess) < OUTLIER_MIN_ESS:
        return None
    found = []
    for c in range(chains):
        others = np.delete(np.arange(chains), c)
        spread2 = max(float(means[others].var(ddof=1)), float(np.mean(se[others] ** 2)))
        z = (means[c] - means[others].mean()) / math.sqrt(se[c] ** 2 + spread2)
        if abs(z) > OUTLIER_Z:
            found.append(f"chain {ids[c]} at {_g(float(means[c]))} ({abs(z):.1f} scales from the others' "
                         f"{_g(float(means[others].mean()))})")
    return f"outlier_chain: {'; '.join(found)}: {ADVICE['outlier'][kind]}" if found else None


def far_from_analytic(mean: float, se: float, attrs: dict[str, Any]) -> str | None:
    value = attrs.get("analytic_llc")
    if value is None:
        return None
    gap = mean - float(value)
    if abs(gap) <= Z_SE * se or abs(gap) <= ANALYTIC_REL * abs(float(value)):
        return None
    regime = attrs.get("analytic_regime") or "regime not recorded"
    where = f" at nβ = {_g(float(attrs['nbeta']))}, γ = {_g(float(attrs['gamma']))}" \
        if attrs.get("nbeta") is not None and attrs.get("gamma") is not None else ""
    ratio = abs(gap) / abs(float(value)) if value else math.inf
    off = f"{ratio:.0%} {'above' if gap > 0 else 'below'}" if ratio < 1 else f"{mean / float(value):.3g}×"
    return (f"analytic: λ̂ = {_g(mean)} ± {_g(se)}{where} is {off} the analytic λ = {_g(float(value))} "
            f"({abs(gap) / se:.1f} SE); the analytic value ({attrs.get('analytic_formula') or '?'}) is for: {regime}")


def _se_of_mean(x: np.ndarray, independent: bool) -> float:
    """SE of the mean of (chains, draws) values from ArviZ's ESS (at most their number if i.i.d.)."""
    import arviz as az

    ess = float(az.ess(x, method="mean"))
    if independent:
        ess = min(ess, float(x.size))
    return float(x.std(ddof=1)) / math.sqrt(ess) if ess > 0 else math.nan


def localizer(llc: np.ndarray, se: float, theta: np.ndarray | None, gamma: float | None,
              nbeta: float | None = None, independent: bool = False) -> str | None:
    """The localizer, not the loss, sets lambda-hat (see the module docstring): Var/lambda-hat
    (= 1 - d ln lambda-hat / d ln n*beta) below LOCALIZER_VAR_MAX and the chains' spread
    gamma * E[theta_k^2] above LOCALIZER_SPREAD_MIN, each by 3 SE. ``theta``: the kept draws'
    projections (chains, draws, k)."""
    x = np.asarray(llc, dtype=np.float64)
    if theta is None or not gamma or x.shape[1] < MIN_DRAWS:
        return None
    mean = float(x.mean())
    if not mean - Z_SE * se > 0:
        return None
    dev2 = (x - mean) ** 2
    ratio = float(x.var(ddof=1)) / mean
    # Delta method, the two errors taken as independent (they correlate positively: conservative).
    ratio_se = math.hypot(_se_of_mean(dev2, independent) / mean, ratio * se / mean)
    if not ratio + Z_SE * ratio_se < LOCALIZER_VAR_MAX:
        return None
    spread = float(gamma) * np.asarray(theta, dtype=np.float64) ** 2
    r = float(spread.mean())
    # The SE of a mean over projections is at most the mean of their SEs, however they correlate.
    r_se = float(np.mean([_se_of_mean(spread[..., k], independent) for k in range(spread.shape[-1])]))
    if not r - Z_SE * r_se > LOCALIZER_SPREAD_MIN:
        return None
    ratio_nbg = f" = {_g(float(nbeta) / float(gamma))}" if nbeta else ""
    return (f"localizer: the chains spread as far as the localizer alone allows (γ·E[θ²] = {r:.2f} of 1) and λ̂ "
            f"= {_g(mean)} grows as (nβ)^{1 - ratio:.2f} (Var/λ̂ = {ratio:.2g}; a learning coefficient does not "
            f"grow with nβ): λ̂ measures nβ/γ{ratio_nbg}, not the loss (≈ nβ·tr(H)/(2γ), ∝ 1/γ); lower "
            f"posterior.gamma (now {_g(float(gamma))}) or raise n·β (posterior.beta0)")


# --------------------------------------------------------------------------- per sampler / per run

def sampler_flags(llc: np.ndarray, metrics: dict[str, Any], attrs: dict[str, Any],
                  info: dict[str, Any] | None = None, sampler: str | None = None,
                  theta: np.ndarray | None = None) -> list[str]:
    """Every per-sampler flag, from the kept lambda-hat draws of the non-diverged chains
    (``llc``, (chains, draws)) and their theta projections (``theta``, (chains, draws, k)), the
    sampler's metrics (llc_mean, llc_se, diverged_chains, chains, llc_per_chain, rhat, ess_bulk,
    ess_tail) and the file's attributes (dim, analytic_llc, target_kind, nbeta, gamma).
    ``sampler``: its name, whose registry entry decides the advice (``sampler_kind``) and whether
    the draws are i.i.d. (VI): then their ESS is their number and their SE needs no ESS threshold;
    R-hat then compares independent fits (chains)."""
    kind = sampler_kind(sampler)
    independent = kind == "independent"
    bulk, tail = (None, None) if independent else (metrics.get("ess_bulk"), metrics.get("ess_tail"))
    out = [diverged(metrics.get("diverged_chains", 0), metrics.get("chains", 0),
                    (info or {}).get("failure_reasons")),
           unconverged(metrics.get("rhat"), bulk, tail, kind), step_bias(info or {}, attrs.get("dim")),
           auto_step(info or {})]
    mean, se = metrics.get("llc_mean"), metrics.get("llc_se")
    if mean is not None:
        se = se if se is not None and math.isfinite(se) else 0.0
        ids = [i for i, v in enumerate(metrics.get("llc_per_chain") or []) if v is not None] or None
        out += [above_half_dim(mean, se, attrs.get("dim"), kind), negative(mean, se), excess_variance(llc, se, kind),
                drift(llc, kind), outlier_chains(llc, ids, kind), far_from_analytic(mean, se, attrs),
                localizer(llc, se, theta, attrs.get("gamma"), attrs.get("nbeta"), independent)]
    return [f for f in out if f]


def cross_sampler_flags(metrics: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    """``disagree`` flags: samplers whose lambda-hat differ by more than 3 combined SE."""
    usable = {n: m for n, m in metrics.items() if m.get("llc_mean") is not None and m.get("llc_se") is not None}
    found: dict[str, list[str]] = {n: [] for n in metrics}
    names = list(usable)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            ma, mb = usable[a], usable[b]
            se = math.hypot(ma["llc_se"], mb["llc_se"])
            z = abs(ma["llc_mean"] - mb["llc_mean"]) / se if se > 0 else math.inf
            if z > Z_SE:
                found[a].append(f"{b} {_g(mb['llc_mean'])} ± {_g(mb['llc_se'])} ({z:.1f} SE)")
                found[b].append(f"{a} {_g(ma['llc_mean'])} ± {_g(ma['llc_se'])} ({z:.1f} SE)")
    return {n: [f"disagree: λ̂ = {_g(metrics[n]['llc_mean'])} ± {_g(metrics[n]['llc_se'])} but "
                f"{', '.join(parts)}, more than {Z_SE:g} combined SE apart"] if parts else []
            for n, parts in found.items()}


def add_cross_sampler_flags(metrics: dict[str, dict[str, Any]]) -> None:
    """Append the ``disagree`` flags to each sampler's ``flags`` (in place; calling again replaces them)."""
    cross = cross_sampler_flags(metrics)
    for name, m in metrics.items():
        m["flags"] = [f for f in m.get("flags", []) if flag_code(f) != "disagree"] + cross[name]
