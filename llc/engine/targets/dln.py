"""Deep linear network target ([target.dln]): identity activations, no biases, a teacher of chosen rank.

Its learning coefficient is known analytically (Aoyagi 2024; see ``llc.theory``), so it is the
ground truth for the samplers on a singular model.
"""

from __future__ import annotations

import numpy as np

from llc import theory
from llc.config import RunConfig
from llc.engine.targets.base import Analytic, Built
from llc.engine.targets.data import add_noise, sample_inputs
from llc.engine.targets.losses import make_loss, make_metrics
from llc.engine.targets.mlp import apply_fn, init_mlp


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


def build(cfg: RunConfig) -> Built:
    widths, rank = cfg.target.dln.widths, cfg.target.dln.rank
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
    return Built(teacher, x, y, info)


def template(cfg: RunConfig):
    return init_mlp(np.random.default_rng(0), cfg.target.dln.widths, bias=False)


def loss(cfg: RunConfig):
    return make_loss(apply_fn("identity"), "mse")


def metrics(cfg: RunConfig):
    return make_metrics(apply_fn("identity"), "mse", False)


def analytic_llc(cfg: RunConfig, n: int, beta: float, gamma: float) -> Analytic:
    value = theory.dln_learning_coefficient(cfg.target.dln.widths, cfg.target.dln.rank)
    return Analytic(value, "Aoyagi (2024), deep linear network of these widths and teacher rank",
                    "n -> infinity: the model's learning coefficient; at finite n, beta and gamma "
                    "lambda-hat is expected near it, not equal")
