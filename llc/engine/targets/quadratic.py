"""Analytic check target ([target.quadratic]): L_n(theta) = 0.5 * sum_i h_i theta_i^2, minimised at w* = 0.

With every h_i = 1 (the default) the posterior is isotropic; ``eigenvalues`` spreads the curvature
over orders of magnitude (and flat directions, h_i = 0), where a sampler's step size must suit the
stiffest direction while mixing along the flattest: the estimate stays exact at finite n*beta, gamma.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np

from llc import theory
from llc.config import RunConfig
from llc.engine.targets.base import Analytic, Built


def loss_fn(params, x, y):
    del x, y  # the loss does not depend on data; n only enters through n*beta
    return 0.5 * jnp.sum(params["theta"] ** 2)


@functools.cache
def _curved_loss(eigenvalues: tuple[float, ...]):
    """One loss object per spectrum: compiled programs are cached by the loss function's identity."""
    h = np.asarray(eigenvalues, np.float64)

    def curved_loss_fn(params, x, y):
        del x, y
        theta = params["theta"]
        return 0.5 * jnp.sum(jnp.asarray(h, theta.dtype) * theta ** 2)  # in the chain's dtype

    return curved_loss_fn


def build(cfg: RunConfig) -> Built:
    n, q = cfg.data.n_data, cfg.target.quadratic
    info = {"dim": q.dim, **({"eigenvalues": list(q.eigenvalues)} if q.eigenvalues is not None else {})}
    # Dummy one-column data keep minibatching uniform across targets.
    return Built({"theta": np.zeros(q.dim)}, np.zeros((n, 1)), np.zeros((n, 1)), info)


def template(cfg: RunConfig):
    return {"theta": np.zeros(cfg.target.quadratic.dim)}


def loss(cfg: RunConfig):
    eigenvalues = cfg.target.quadratic.eigenvalues
    return loss_fn if eigenvalues is None else _curved_loss(tuple(float(h) for h in eigenvalues))


def analytic_llc(cfg: RunConfig, n: int, beta: float, gamma: float) -> Analytic:
    q = cfg.target.quadratic
    value = theory.quadratic_learning_coefficient(q.dim, n, beta, gamma, q.eigenvalues)
    formula = ("(d/2) * n*beta / (n*beta + gamma)" if q.eigenvalues is None else
               "sum_i (1/2) * n*beta*h_i / (n*beta*h_i + gamma)")
    return Analytic(value, formula, "exact for the localized tempered posterior (Gaussian), at any n, beta, gamma")
