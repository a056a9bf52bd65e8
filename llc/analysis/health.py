"""The calibration rule and its thresholds (``llc.pipeline.calibrate``'s module docstring argues them),
shared by ``llc calibrate``, ``step_size=auto`` (llc.pipeline.sampling) and the report pages that
draw and explain it (no JAX).
"""

import math
from typing import Any, Sequence

# healthy: R-hat below this. Stricter than the unconverged flag's llc.analysis.flags.UNCONVERGED_RHAT
# (1.05): a flag must be rare on correct runs of few effective draws, where R-hat's own noise exceeds
# 0.01; the rule only passes over such a point for a better-mixed one.
RHAT_MAX = 1.01
# A step may inflate lambda-hat by this fraction before ``step_bias`` flags it (the ``analytic``
# flag's 5 %): SGLD's Euler-Maruyama law inflates the variance along curvature lam by
# 1/(1 - eps*lam/4), so this is eps*lam = 4 * 0.05 = 0.2 in the stiffest directions.
STEP_BIAS_REL = 0.05
AGREE_SE = 2.0  # a point joins the plateau while its lambda-hat agrees within this many combined SE
BACKOFF = 3.0  # the recommended step is at most the plateau's top / BACKOFF (see the module docstring)


def isotropic_mala_acceptance(dim: int, h: float) -> float:
    """Mean MALA acceptance of SGLD moves with eps*lam = h on an isotropic Gaussian posterior of
    dimension ``dim``, the chain at its own (Euler-Maruyama) stationary law.

    Per coordinate the log acceptance is a quadratic form in (x, z) ~ N(0, diag(v, 1)), v =
    1/(1 - h/4), with mean exactly 0 (that law is the chain's); over ``dim`` coordinates it is close
    to N(0, dim * s2), s2 = 2 tr((A S)^2), whence E[min(1, e^Z)] = 1/2 + exp(s^2/2) Phi(-s) with
    s^2 = dim * s2. Checked against simulation (d = 4 ... 16,000, h = 0.01 ... 1): within 0.01. In high
    dimension it falls far below the devinterp rule's 0.9 at a harmless step (d = 16,000, h = 0.1,
    2.5 % bias: 0.76), and in low dimension it stays above it at a harmful one (d = 4, h = 1: 0.83)."""
    from scipy.special import erfcx

    a, v = 1.0 - h / 2.0, 4.0 / (4.0 - h)
    xx = 0.5 - a * a / 2.0 - (1.0 - a * a) ** 2 / (2.0 * h)
    zz = 0.5 - h / 2.0 - a * a / 2.0
    xz = (-a * math.sqrt(h) + (1.0 - a * a) * a / math.sqrt(h)) / 2.0
    # M = A S with S = diag(v, 1); tr(M^2) for a 2x2 matrix
    m11, m12, m21, m22 = xx * v, xz, xz * v, zz
    s2 = 2.0 * (m11 * m11 + 2.0 * m12 * m21 + m22 * m22)
    s = math.sqrt(max(dim, 1) * s2)
    return 0.5 + 0.5 * float(erfcx(s / math.sqrt(2.0)))


def mala_floor(dim: int) -> float:
    """The mean MALA acceptance below which ``step_bias`` fires: the isotropic posterior's at the step
    that inflates lambda-hat by STEP_BIAS_REL. Where the curvature is spread, the acceptance is set
    by the few stiff directions and this dimension-based floor is lenient."""
    return isotropic_mala_acceptance(dim, 4.0 * STEP_BIAS_REL)


def healthy(row: dict[str, Any]) -> bool:
    """No flag (``step_bias`` included: the MALA check) and R-hat below RHAT_MAX."""
    return bool(not row["flags"] and row["rhat"] is not None and row["rhat"] < RHAT_MAX)


def step_choice(rows: Sequence[dict[str, Any]], order: Sequence[int], step: str) -> tuple[int | None, list[int], list[int]]:
    """The rule on one line of a grid: ``order`` lists the rows' indices by increasing ``rows[i][step]``.

    Returns (chosen index or None, the plateau's indices, the healthy indices). The plateau starts at
    the smallest healthy step and takes each larger healthy one while its lambda-hat agrees within
    AGREE_SE combined SE with every plateau point below it; the chosen point is the plateau's largest
    step at most 1/BACKOFF of its top (its first point when none is)."""
    good = [i for i in order if healthy(rows[i])]
    if not good:
        return None, [], []
    plateau = [good[0]]
    for i in good[1:]:
        r = rows[i]
        if not all(abs(r["llc_mean"] - rows[j]["llc_mean"]) <= AGREE_SE * math.hypot(r["llc_se"], rows[j]["llc_se"])
                   for j in plateau):
            break
        plateau.append(i)
    top = rows[plateau[-1]][step]
    below = [i for i in plateau if rows[i][step] * BACKOFF <= top * (1 + 1e-9)]
    return (below[-1] if below else plateau[0]), plateau, good


def extrapolate_to_zero_step(low: dict[str, Any], high: dict[str, Any], step: str = "step_size") -> tuple[float, float]:
    """lambda-hat at step -> 0 from two grid points (Richardson): SGLD's bias, from its Euler-Maruyama law
    and its minibatch noise alike, grows linearly in the step to first order, so
    lambda(0) = (r*lambda(eps) - lambda(r*eps)) / (r - 1). The SE treats the two estimates as independent;
    the grid's points share their chains' random streams, so their errors correlate positively and
    this overstates it."""
    r = high[step] / low[step]
    value = (r * low["llc_mean"] - high["llc_mean"]) / (r - 1.0)
    se = math.hypot(r * low["llc_se"], high["llc_se"]) / (r - 1.0)
    return float(value), float(se)


def apply_extrapolation(metrics: dict[str, Any], info: dict[str, Any] | None) -> dict[str, Any]:
    """Where step_size=auto extrapolated lambda-hat to a zero step (its info says so), that value and its
    SE become ``llc_mean`` / ``llc_se``; the chosen step's own stay as ``llc_mean_at_step`` / ``llc_se_at_step``.
    Called wherever metrics are computed (in memory and from a saved NetCDF), so both agree."""
    info = info or {}
    value, se = info.get("llc_extrapolated"), info.get("llc_extrapolated_se")
    if not info.get("auto_step_extrapolated") or value is None or se is None or metrics.get("llc_mean") is None:
        return metrics
    if not (math.isfinite(float(value)) and math.isfinite(float(se))):
        return metrics
    metrics["llc_mean_at_step"], metrics["llc_se_at_step"] = metrics["llc_mean"], metrics["llc_se"]
    metrics["llc_mean"], metrics["llc_se"] = float(value), float(se)
    return metrics
