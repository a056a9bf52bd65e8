"""Deep linear network target: identity activations, no biases, a teacher of chosen rank.

Its learning coefficient is known analytically (Aoyagi 2024; see ``llc.theory``), so it is the
ground truth for the samplers on a singular model.
"""

from __future__ import annotations

import numpy as np

from llc.config import RunConfig
from llc.engine.targets.data import add_noise, sample_inputs
from llc.engine.targets.mlp import init_mlp, mse_loss_fn

loss_fn = mse_loss_fn("identity")


def teacher_params(rng: np.random.Generator, widths, rank: int) -> list[dict]:
    """Random factor matrices whose product has rank exactly ``rank`` (generically).

    The first factor is projected to rank ``rank`` through its SVD; the other factors are random
    Gaussian matrices (full rank generically), so the product's rank is ``rank``.
    """
    layers = init_mlp(rng, widths, bias=False)
    w0 = layers[0]["W"]
    u, s, vt = np.linalg.svd(w0, full_matrices=False)
    s[rank:] = 0.0
    layers[0]["W"] = (u * s) @ vt
    return layers


def build(cfg: RunConfig):
    widths, rank = cfg.target.dln_widths, cfg.target.dln_rank
    rng = np.random.default_rng([cfg.target.seed, 1])
    teacher = teacher_params(rng, widths, rank)
    matrix = teacher[0]["W"]
    for layer in teacher[1:]:
        matrix = matrix @ layer["W"]
    x = sample_inputs(rng, cfg.data, cfg.data.n_data, widths[0])
    y = add_noise(rng, cfg.data, x, x @ matrix)
    info = {"widths": list(widths), "rank": rank,
            "teacher_singular_values": np.linalg.svd(matrix, compute_uv=False).tolist()}
    # ERM starts from the teacher: the true parameter is a point of the singular set whose LLC
    # Aoyagi's formula gives; training then only moves it to the empirical minimum nearby.
    return teacher, x, y, info


def template(cfg: RunConfig):
    return init_mlp(np.random.default_rng(0), cfg.target.dln_widths, bias=False)
