"""Analytic check target ([target.quadratic]): L_n(theta) = 0.5 * ||theta||^2, minimised at w* = 0."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from llc import theory
from llc.config import RunConfig
from llc.engine.targets.base import Analytic, Built


def loss_fn(params, x, y):
    del x, y  # the loss does not depend on data; n only enters through n*beta
    return 0.5 * jnp.sum(params["theta"] ** 2)


def build(cfg: RunConfig) -> Built:
    n, d = cfg.data.n_data, cfg.target.quadratic.dim
    # Dummy one-column data keep minibatching uniform across targets.
    return Built({"theta": np.zeros(d)}, np.zeros((n, 1)), np.zeros((n, 1)), {"dim": d})


def template(cfg: RunConfig):
    return {"theta": np.zeros(cfg.target.quadratic.dim)}


def loss(cfg: RunConfig):
    return loss_fn


def analytic_llc(cfg: RunConfig, n: int, beta: float, gamma: float) -> Analytic:
    value = theory.quadratic_learning_coefficient(cfg.target.quadratic.dim, n, beta, gamma)
    return Analytic(value, "(d/2) * n*beta / (n*beta + gamma)",
                    "exact for the localized tempered posterior (Gaussian), at any n, beta, gamma")
