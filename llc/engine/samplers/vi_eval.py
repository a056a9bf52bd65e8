"""Evaluation of a fitted q for ``llc.engine.samplers.vi``: full-batch L_n at q-draws and the HVP control variate.

lambda_hat = n*beta * (E_q[L_n] - L0). Plain Monte Carlo averages L_n over ``eval_samples`` draws.
The control variate is the second-order Taylor polynomial of L_n at w*,

    c(theta) = g . theta + 1/2 theta^T H theta,     g = grad L_n(w*),  H = Hess L_n(w*),

evaluated per draw with one Hessian-vector product (HVP). Its mean under the mixture is known in
closed form (H enters only through HVPs and its diagonal):

    E_q[c] = sum_m pi_m [ g . mu_m + 1/2 mu_m^T H mu_m +/- 1/2 tr(F_m K_m^T H K_m) ] + 1/2 tr(W H),
    W = diag(sum_m pi_m (c * s_m)^2),

with mu_m, K_m the component means and factor columns in theta units, and F_m = I, sign + for the
covariance form, F_m = C_m^{-1}, sign - for the precision form (see ``vi_family``). tr(W H) uses the exact
Hessian diagonal (d HVPs with basis vectors) when d <= ``cv_exact_max_dim``, otherwise a Hutchinson
estimate with Rademacher probes, whose variance is carried into the reported standard error.
The corrected per-draw values are L_i - b (c_i - E_q[c]), b = Cov(L, c) / Var(c) estimated from the
draws; the identity E[L - b(c - E c)] = E[L] holds for any symmetric H (indefinite included), so
the CV only changes the variance. On an exactly quadratic loss L - c is constant and the corrected
estimate is E_q[L_n] to rounding.

Its uncertainty. The corrected mean estimates E_q[L_n], not E_posterior[L_n]: its Monte Carlo
error (``llc_cv_mc_se``) can be ~1e-7 while q's misfit moves the estimate by percents, which
draws from q cannot reveal. So no standard error of llc_cv against the LLC is reported
(``llc_cv_se`` is None, ``llc_cv_se_reason`` says why); the plain estimate's SE (from the draws'
ESS) carries the same caveat.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from llc.engine.samplers import vi_family as fam_mod

MAP_BATCH = 16  # draws (or HVP directions) evaluated together on the full data
MAX_REDUCTION = 1e12  # cap on the reported variance reduction of the control variate
CV_SE_REASON = ("not reported: the control variate removes only the Monte Carlo noise of E_q[L_n] "
                "(llc_cv_mc_se); the error of q against the posterior, usually larger, is not "
                "estimable from draws of q")


def _hvp_terms(g, hv, v):
    """(g . v, v^T H v, H v) for one direction."""
    return jnp.dot(g, v), jnp.dot(v, hv), hv


def hvp_fn(loss_flat: Callable) -> Callable:
    """v -> H v at theta = 0 (i.e. at w*), forward-over-reverse."""
    grad = jax.grad(loss_flat)

    def hvp(zero, v):
        return jax.jvp(grad, (zero,), (v,))[1]

    return hvp


def evaluate_chain(fam: fam_mod.Family, params, c: jax.Array, key: jax.Array, loss_flat: Callable,
                   matrix: jax.Array, *, draws: int, eval_dtype, control_variate: bool,
                   exact_diag: bool, probes: int) -> dict[str, jax.Array]:
    """Draws of one fitted q and everything lambda-hat needs, for one chain (vmap over chains).

    ``params`` and ``c`` are in the optimisation dtype; draws are made there and cast to
    ``eval_dtype`` (float64 when JAX x64 is on), where L_n and all HVPs are computed.
    """
    k_draw, k_probe = jax.random.split(key)
    normals, gumbel = fam_mod.draw_noise(fam, k_draw, (draws,), params["rho"].dtype)
    u, comp = jax.vmap(lambda z, g: fam_mod.sample_u(fam, params, z, g))(normals, gumbel)
    theta = (c[None, :] * u).astype(eval_dtype)
    Ln = jax.lax.map(loss_flat, theta, batch_size=math.gcd(draws, MAP_BATCH))
    out = {"Ln": Ln, "component": comp, "theta_proj": theta @ matrix}
    if not control_variate:
        return out

    # Every direction that needs an HVP goes through one batched map (one compiled HVP body):
    # the draws, the component means, the factor columns, then basis vectors or probes.
    zero = jnp.zeros((fam.d,), dtype=eval_dtype)
    g = jax.grad(loss_flat)(zero)
    hvp = hvp_fn(loss_flat)
    pi = jnp.exp(fam_mod.log_weights(fam, params)).astype(eval_dtype)
    cc = c.astype(eval_dtype)
    s = fam_mod.scales(params).astype(eval_dtype)
    w = jnp.sum(pi[:, None] * (cc[None, :] * s) ** 2, axis=0)  # diagonal of W, (d,)
    blocks = [theta]
    if fam.learn_means:
        blocks.append((c[None, :] * fam_mod.means(fam, params)).astype(eval_dtype))
    if fam.R > 0:
        K = fam_mod.theta_factor_columns(fam, params, c).astype(eval_dtype)  # (M, d, R)
        blocks.append(jnp.moveaxis(K, 2, 1).reshape(fam.M * fam.R, fam.d))
    if exact_diag:
        blocks.append(jnp.eye(fam.d, dtype=eval_dtype))
    else:
        signs = jax.random.rademacher(k_probe, (probes, fam.d), dtype=eval_dtype)
        blocks.append(signs * jnp.sqrt(w)[None, :])
    # Zero rows pad the count to a multiple of MAP_BATCH: lax.map then compiles one body, not two.
    pad = -sum(b.shape[0] for b in blocks) % MAP_BATCH
    blocks.append(jnp.zeros((pad, fam.d), dtype=eval_dtype))
    directions = jnp.concatenate(blocks, axis=0)
    lin, curv, hv = jax.lax.map(lambda v: _hvp_terms(g, hvp(zero, v), v), directions, batch_size=MAP_BATCH)
    sizes = np.cumsum([b.shape[0] for b in blocks])[:-1]
    lin, curv, hv = jnp.split(lin, sizes), jnp.split(curv, sizes), jnp.split(hv, sizes)
    cv = lin[0] + 0.5 * curv[0]
    expected = jnp.zeros((), dtype=eval_dtype)
    i = 1
    if fam.learn_means:
        expected = expected + jnp.sum(pi * (lin[i] + 0.5 * curv[i]))
        i += 1
    if fam.R > 0:
        HK = hv[i].reshape(fam.M, fam.R, fam.d)
        KtHK = jnp.einsum("mid,mjd->mij", jnp.moveaxis(K, 2, 1), HK)  # (M, R, R)
        if fam.precision:
            grams = fam_mod.low_rank_grams(fam, params).astype(eval_dtype)
            low_rank = -jnp.einsum("mii->m", jnp.linalg.solve(grams, KtHK))
        else:
            low_rank = jnp.einsum("mii->m", KtHK)
        expected = expected + 0.5 * jnp.sum(pi * low_rank)
        i += 1
    if exact_diag:
        trace_wh = jnp.dot(w, curv[i])  # curv[i] = diag(H)
        trace_var = jnp.zeros((), dtype=eval_dtype)
    else:
        trace_wh = jnp.mean(curv[i])
        trace_var = jnp.var(curv[i], ddof=1) / probes if probes > 1 else jnp.zeros((), dtype=eval_dtype)
    out.update({"cv": cv, "cv_mean": expected + 0.5 * trace_wh, "cv_mean_var": 0.25 * trace_var})
    return out


def hvp_count(fam: fam_mod.Family, draws: int, exact_diag: bool, probes: int) -> int:
    """Full-batch HVPs one chain's control variate costs (plus one full gradient at w*)."""
    n = draws + fam.M * fam.R + (fam.M if fam.learn_means else 0) + (fam.d if exact_diag else probes)
    return n + (-n % MAP_BATCH)  # the zero-padding rows are computed too


def cv_estimate(Ln: np.ndarray, cv: np.ndarray, cv_mean: float, cv_mean_var: float, L0: float,
                nbeta: float) -> dict[str, Any]:
    """Control-variate lambda-hat for one chain from its draws (NumPy, float64)."""
    Ln = np.asarray(Ln, dtype=np.float64)
    cv = np.asarray(cv, dtype=np.float64)
    N = Ln.size
    var_c = float(np.var(cv, ddof=1)) if N > 1 else 0.0
    var_L = float(np.var(Ln, ddof=1)) if N > 1 else 0.0
    # Regression coefficient of L on c; b = 1 is the Taylor choice when it cannot be estimated.
    b = float(np.cov(Ln, cv, ddof=1)[0, 1] / var_c) if N > 2 and var_c > 0 else 1.0
    if not math.isfinite(b):
        b = 1.0
    corrected = Ln - b * (cv - cv_mean)
    var_y = float(np.var(corrected, ddof=1)) if N > 1 else 0.0
    # Floor on the residual variance: an exactly quadratic loss leaves only rounding noise, and a
    # variance reduction beyond MAX_REDUCTION says nothing more (it keeps ess_like finite).
    var_y_eff = max(var_y, var_L / MAX_REDUCTION, np.finfo(np.float64).tiny)
    se_mean = math.sqrt(var_y_eff / N + b * b * cv_mean_var)
    reduction = var_L / var_y_eff if var_L > 0 else 1.0
    return {
        "llc_cv": nbeta * (float(np.mean(corrected)) - L0),
        "llc_cv_mc_se": nbeta * se_mean,  # Monte Carlo error of the E_q[L_n] estimate only
        "llc_cv_se": None,
        "llc_cv_se_reason": CV_SE_REASON,
        "llc_cv_std": nbeta * math.sqrt(var_y),
        "cv_coef": b,
        "cv_variance_reduction": reduction,
        # Plain draws the corrected estimate is worth (mean-squared-error sense).
        "ess_like": var_L / (se_mean ** 2) if se_mean > 0 and var_L > 0 else float(N),
        "llc_mc": nbeta * (float(np.mean(Ln)) - L0),
        "llc_mc_se": nbeta * math.sqrt(var_L / N),
        "cv_mean": float(cv_mean),
    }
