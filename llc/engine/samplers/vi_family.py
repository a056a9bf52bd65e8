"""The variational family of ``llc.engine.samplers.vi``: a mixture of factor analysers around w*.

Coordinates. theta = w - w* (flattened, length d) is written as theta = c * u with c a fixed
positive vector (the coordinate scale from the whitening pre-pass, or one scalar value when
whitening is off). The family lives in u-space, where the posterior is roughly isotropic with unit
scale, so learning rates and the float32 guards below mean the same thing on every target.

Component m (m = 1..M) in u-space, with S_m = diag(s_m) and C_m = I_r + A_m^T A_m (>= I, so its
Cholesky factor never fails):

  form "covariance" (the seed's factor analyser; low rank adds variance):
    Sigma_m = S_m (I + A_m A_m^T) S_m,          u = mu_m + s_m * (eps + A_m z)
    Sigma_m^{-1} = S_m^{-1} (I - A_m C_m^{-1} A_m^T) S_m^{-1},   log|Sigma_m| = 2 sum log s_m + log|C_m|
  form "precision" (low rank adds precision, i.e. removes variance):
    Sigma_m^{-1} = S_m^{-1} (I + A_m A_m^T) S_m^{-1},   log|Sigma_m| = 2 sum log s_m - log|C_m|
    u = mu_m + s_m * (I + A_m A_m^T)^{-1} (eps + A_m z)   (covariance (I + A A^T)^{-1}; the inverse
    applied by Woodbury, (I + A A^T)^{-1} w = w - A C^{-1} A^T w)

eps ~ N(0, I_d), z ~ N(0, I_r). The low-rank factor is measured in units of the component's own
diagonal scale ("algebraic whitening"). Why two forms: a localized NN posterior is broad in most
directions (held by gamma only) and narrow in a few stiff ones, so its covariance is
"diagonal minus low rank", which the covariance form cannot express with a small r: it must shrink
the diagonal in every coordinate a stiff direction touches, and lambda-hat comes out too large.
The precision form matches "gamma I + n beta H" with H of low rank exactly.
Mixture weights pi = softmax(alpha / T). Per-component ranks are a column mask on A (padded to the
largest rank), so masked columns are exactly zero and get zero gradient.

Float32 guards (seed 003): s is softplus(rho) clipped to [S_MIN, S_MAX]; a small ridge is added to
C_m in float32; factor columns are projected back to norm <= MAX_COL_NORM after every update.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

S_MIN, S_MAX = 1e-4, 1e2  # bounds on the diagonal scale (u units)
MAX_COL_NORM = 10.0  # bound on the norm of a factor column (u units)
RIDGE_F32 = 1e-5  # added to C_m = I + A^T A in float32
A_INIT = 0.1  # initial factor column norm: small and random, so that components differ
RHO_ONE = math.log(math.e - 1.0)  # softplus(RHO_ONE) = 1


class Family(NamedTuple):
    """Static description: sizes and the rank mask."""

    M: int
    d: int
    R: int  # padded rank (largest per-component rank)
    mask: np.ndarray  # (M, R) 1.0 where a column is in use
    temperature: float
    learn_means: bool
    ridge: float
    precision: bool  # factor form: True = "precision", False = "covariance"


def make_family(M: int, d: int, ranks: tuple[int, ...], temperature: float, learn_means: bool,
                dtype: str, form: str = "covariance") -> Family:
    R = max(ranks) if ranks else 0
    mask = (np.arange(R)[None, :] < np.asarray(ranks)[:, None]).astype(np.float64)
    ridge = RIDGE_F32 if dtype == "float32" else 0.0
    return Family(M, d, R, mask, float(temperature), bool(learn_means), ridge, form == "precision")


def init_params(fam: Family, key: jax.Array, dtype) -> dict[str, jax.Array]:
    """q starts with every component at w*, unit diagonal scale (u units) and small random factors."""
    params = {
        "rho": jnp.full((fam.M, fam.d), RHO_ONE, dtype=dtype),
        "A": A_INIT / math.sqrt(fam.d) * jax.random.normal(key, (fam.M, fam.d, fam.R), dtype=dtype)
        * jnp.asarray(fam.mask[:, None, :], dtype=dtype),
        "alpha": jnp.zeros((fam.M,), dtype=dtype),
    }
    if fam.learn_means:
        params["mu"] = jnp.zeros((fam.M, fam.d), dtype=dtype)
    return params


def scales(params) -> jax.Array:
    return jnp.clip(jax.nn.softplus(params["rho"]), S_MIN, S_MAX)


def factors(fam: Family, params) -> jax.Array:
    return params["A"] * jnp.asarray(fam.mask[:, None, :], dtype=params["A"].dtype)


def means(fam: Family, params) -> jax.Array:
    if fam.learn_means:
        return params["mu"]
    return jnp.zeros((fam.M, fam.d), dtype=params["rho"].dtype)


def log_weights(fam: Family, params) -> jax.Array:
    return jax.nn.log_softmax(params["alpha"] / fam.temperature)


def noise_width(fam: Family) -> int:
    """Standard normals one draw of q consumes: eps (d) then z (R)."""
    return fam.d + fam.R


def draw_noise(fam: Family, key: jax.Array, shape: tuple[int, ...], dtype) -> tuple[jax.Array, jax.Array]:
    """Normals (*shape, d + R) and Gumbel variates (*shape, M) for ``shape`` draws of q.

    All randomness of a block of draws comes from two generator calls: every PRNG call site is
    compiled separately, and they dominate compile time on CPU.
    """
    k_norm, k_gumbel = jax.random.split(key)
    normals = jax.random.normal(k_norm, (*shape, noise_width(fam)), dtype=dtype)
    gumbel = jax.random.gumbel(k_gumbel, (*shape, fam.M), dtype=dtype)
    return normals, gumbel


def sample_u(fam: Family, params, normals: jax.Array, gumbel: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One draw u ~ q from its noise, and the component index (Gumbel-max on the log weights).

    Differentiable in the continuous parameters (the reparameterisation path)."""
    logw = jax.lax.stop_gradient(log_weights(fam, params))
    m = jnp.argmax(logw + gumbel)
    eps = normals[: fam.d]
    s = scales(params)[m]
    direction = eps
    if fam.R > 0:
        A = factors(fam, params)[m]
        direction = eps + A @ normals[fam.d:]
        if fam.precision:
            chol = jnp.linalg.cholesky(_gram(fam, A))
            direction = direction - A @ jax.scipy.linalg.cho_solve((chol, True), A.T @ direction)
    return means(fam, params)[m] + s * direction, m


def _gram(fam: Family, A: jax.Array) -> jax.Array:
    """C = (1 + ridge) I + A^T A for one component (A: (d, R))."""
    return (1.0 + fam.ridge) * jnp.eye(fam.R, dtype=A.dtype) + A.T @ A


def component_logpdfs(fam: Family, params, u: jax.Array) -> jax.Array:
    """log N(u; mu_m, Sigma_m) for every component m, shape (M,), via Woodbury in O(M d r^2)."""
    s = scales(params)
    v = (u[None, :] - means(fam, params)) / s  # (M, d)
    quad = jnp.sum(v * v, axis=1)
    logdet = 2.0 * jnp.sum(jnp.log(s), axis=1)
    if fam.R > 0:
        A = factors(fam, params)
        chol = jnp.linalg.cholesky(low_rank_grams(fam, params))
        Av = jnp.einsum("mdi,md->mi", A, v)
        logdet_c = 2.0 * jnp.sum(jnp.log(jnp.diagonal(chol, axis1=1, axis2=2)), axis=1)
        if fam.precision:
            quad = quad + jnp.sum(Av * Av, axis=1)
            logdet = logdet - logdet_c
        else:
            w = jax.scipy.linalg.solve_triangular(chol, Av[..., None], lower=True)[..., 0]
            quad = quad - jnp.sum(w * w, axis=1)
            logdet = logdet + logdet_c
    return -0.5 * (quad + logdet + fam.d * math.log(2.0 * math.pi))


def log_q_u(fam: Family, params, u: jax.Array) -> tuple[jax.Array, jax.Array]:
    """log q(u) and the responsibilities r_m(u) = pi_m q_m(u) / q(u)."""
    joint = log_weights(fam, params) + component_logpdfs(fam, params, u)
    logq = jax.scipy.special.logsumexp(joint)
    return logq, jnp.exp(joint - logq)


def project_columns(fam: Family, params) -> dict[str, Any]:
    """Keep every factor column at norm <= MAX_COL_NORM (a float32 guard on C = I + A^T A)."""
    if fam.R == 0:
        return params
    A = params["A"]
    norms = jnp.sqrt(jnp.sum(A * A, axis=1, keepdims=True))
    factor = jnp.minimum(1.0, MAX_COL_NORM / jnp.maximum(norms, 1e-30))
    return {**params, "A": A * factor}


# --------------------------------------------------------------------------- moments (theta-space)

def theta_factor_columns(fam: Family, params, c: jax.Array) -> jax.Array:
    """K_m = c * s_m * A_m in theta units, shape (M, d, R)."""
    return (c[None, :] * scales(params))[..., None] * factors(fam, params)


def low_rank_grams(fam: Family, params) -> jax.Array:
    """C_m for every component, (M, R, R)."""
    return jax.vmap(lambda A: _gram(fam, A))(factors(fam, params))


def radius2(fam: Family, params, c: jax.Array) -> jax.Array:
    """E_q ||theta||^2 in closed form: sum_m pi_m (||c mu_m||^2 + tr Sigma_m^theta)."""
    pi = jnp.exp(log_weights(fam, params))
    s = scales(params)
    trace = jnp.sum((c[None, :] * s) ** 2, axis=1)
    if fam.R > 0:
        K = theta_factor_columns(fam, params, c)
        KtK = jnp.einsum("mdi,mdj->mij", K, K)
        if fam.precision:  # tr(S (I - A C^{-1} A^T) S) in theta units
            trace = trace - jnp.einsum("mii->m", jnp.linalg.solve(low_rank_grams(fam, params), KtK))
        else:
            trace = trace + jnp.einsum("mii->m", KtK)
    mean_sq = jnp.sum((c[None, :] * means(fam, params)) ** 2, axis=1)
    return jnp.sum(pi * (trace + mean_sq))


def summary(fam: Family, params, c: jax.Array) -> dict[str, jax.Array]:
    """Scalars describing q for the trace: weights, factor norms, diagonal-scale spread."""
    logw = log_weights(fam, params)
    pi = jnp.exp(logw)
    s = scales(params)
    out = {
        "pi_entropy": -jnp.sum(pi * logw),
        "pi_min": jnp.min(pi),
        "pi_max": jnp.max(pi),
        "radius2": radius2(fam, params, c),
        "D_sqrt_min": jnp.min(s),
        "D_sqrt_max": jnp.max(s),
        "D_sqrt_med": jnp.median(s),
        "mean_offset_max": jnp.max(jnp.sqrt(jnp.sum(means(fam, params) ** 2, axis=1))),
    }
    if fam.R > 0:
        norms = jnp.sqrt(jnp.sum(factors(fam, params) ** 2, axis=1))  # (M, R)
        used = jnp.asarray(fam.mask, dtype=norms.dtype)
        out["A_col_norm_max"] = jnp.max(norms)
        out["A_col_norm_mean"] = jnp.sum(norms * used) / jnp.maximum(jnp.sum(used), 1.0)
    else:
        zero = jnp.zeros((), dtype=s.dtype)
        out["A_col_norm_max"] = zero
        out["A_col_norm_mean"] = zero
    return out
