"""Analytic check target: L_n(theta) = 0.5 * ||theta||^2, minimised at w* = 0."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from llc.config import RunConfig


def loss_fn(params, x, y):
    del x, y  # the loss does not depend on data; n only enters through n*beta
    return 0.5 * jnp.sum(params["theta"] ** 2)


def build(cfg: RunConfig):
    n, d = cfg.data.n_data, cfg.target.quad_dim
    params = {"theta": np.zeros(d)}
    # Dummy one-column data keep minibatching uniform across targets.
    x = np.zeros((n, 1))
    y = np.zeros((n, 1))
    return params, x, y, {"dim": d}


def template(cfg: RunConfig):
    return {"theta": np.zeros(cfg.target.quad_dim)}
