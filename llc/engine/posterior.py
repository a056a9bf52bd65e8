"""The tempered, localized posterior every estimator samples.

    log p(w) = -n*beta*L_n(w) - (gamma/2) * ||w - w*||^2
    lambda_hat = n*beta * (E_w[L_n(w)] - L_n(w*))
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from llc.config import PosteriorConfig


class Posterior(NamedTuple):
    loss_fn: Callable  # loss_fn(params, x, y): mean loss over a batch
    w_star: Any  # pytree
    x: Any
    y: Any
    n: int
    beta: float
    gamma: float
    L0: float

    @property
    def nbeta(self) -> float:
        return self.n * self.beta

    @property
    def dim(self) -> int:
        return int(sum(np.size(leaf) for leaf in jax.tree.leaves(self.w_star)))


def resolve_beta_gamma(cfg: PosteriorConfig, n: int, d: int) -> tuple[float, float]:
    beta = cfg.beta0 / math.log(n) if cfg.beta_mode == "inv_log_n" else cfg.beta0
    gamma = d / cfg.prior_radius**2 if cfg.prior_radius is not None else cfg.gamma
    return float(beta), float(gamma)


def make_posterior(loss_fn: Callable, w_star, x, y, cfg: PosteriorConfig, L0: float | None = None) -> Posterior:
    n = int(np.shape(x)[0])
    d = int(sum(np.size(leaf) for leaf in jax.tree.leaves(w_star)))
    beta, gamma = resolve_beta_gamma(cfg, n, d)
    if L0 is None:
        L0 = float(jax.jit(loss_fn)(w_star, x, y))
    return Posterior(loss_fn, w_star, x, y, n, beta, gamma, float(L0))


def cast(post: Posterior, dtype: str) -> Posterior:
    """The same posterior with parameters and data in ``dtype`` (float32 for SGLD, float64 for HMC)."""
    conv = lambda tree: jax.tree.map(lambda a: jnp.asarray(a, dtype=dtype), tree)  # noqa: E731
    return post._replace(w_star=conv(post.w_star), x=conv(post.x), y=conv(post.y))


def sq_distance(params, center) -> jax.Array:
    return sum(jnp.sum((a - b) ** 2) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(center)))


def full_loss(post: Posterior) -> Callable:
    """w -> L_n(w) on the full data."""
    return lambda w: post.loss_fn(w, post.x, post.y)


def logdensity_fn(post: Posterior) -> Callable:
    """Full-batch log density, for HMC and MCLMC."""

    def logdensity(w):
        return -post.nbeta * post.loss_fn(w, post.x, post.y) - 0.5 * post.gamma * sq_distance(w, post.w_star)

    return logdensity


def minibatch_logdensity_grad(post: Posterior) -> Callable:
    """(w, (xb, yb)) -> unbiased estimate of grad log p(w) from a minibatch, for SGLD."""

    def logdensity(w, batch):
        xb, yb = batch
        return -post.nbeta * post.loss_fn(w, xb, yb) - 0.5 * post.gamma * sq_distance(w, post.w_star)

    return jax.grad(logdensity)
