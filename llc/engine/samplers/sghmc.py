"""Stochastic-gradient HMC (Chen et al. 2014), minibatched like SGLD.

Underdamped Langevin dynamics with friction alpha, solved by BlackJAX's Euler step
(``blackjax.sgmcmc.diffusions.sghmc``, temperature 1, no gradient-noise correction beta):

    w <- w + h p
    p <- (1 - alpha h) p + h * grad log p_batch(w) + sqrt(2 alpha h) * N(0, I)

whose stationary law is the localized posterior times N(0, I) momenta. The momentum is carried
across steps (not resampled): alpha is the only source of mixing, and alpha*h the damping per
step. BlackJAX's top-level ``sghmc`` kernel integrates a whole trajectory on one minibatch and
resamples momentum each call, so only its solver is used here. Online L_n every ``eval_every``
steps, like SGLD.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import numpy as np
from blackjax.sgmcmc import diffusions

from llc.config import SGHMCConfig
from llc.engine import autostep, driver, prng
from llc.engine.samplers.sgld import minibatch_work


# Settings of the shared contract tests (tests/test_sampler_contract.py) on N(0, I_20): time step
# 0.02 at unit precision (Euler bias O(h), ~1% in the variance); friction 1 and one draw per unit
# of time keep draws nearly independent.
GAUSSIAN_TEST = {"chains": 4, "draws": 1500, "burnin": 20, "eval_every": 50, "step_size": 0.02, "friction": 1.0,
                 "batch_size": 32}

class SGHMCState(NamedTuple):
    position: Any
    momentum: Any


class SGHMCParams(NamedTuple):
    step_size: jax.Array
    friction: jax.Array


def like(tree, reference):
    """``tree`` in ``reference``'s dtypes: BlackJAX's solvers promote float32 chains to float64 under x64."""
    return jax.tree.map(lambda a, r: a.astype(r.dtype), tree, reference)


def auto_steps(post, cfg: SGHMCConfig, key) -> tuple[tuple[float, ...], float]:
    """``step_size=auto``'s grid: llc.engine.autostep.momentum_steps with alpha = ``friction``."""
    return autostep.momentum_steps(post, key, cfg.friction)


def make(cfg: SGHMCConfig) -> driver.Algorithm:
    driver.require_step(cfg)
    params = SGHMCParams(np.asarray(cfg.step_size, cfg.dtype), np.asarray(cfg.friction, cfg.dtype))

    def init(key, position, problem, params):
        del problem, params
        return SGHMCState(position, prng.normal_like(key, position))

    def step(key, state, problem, params):
        k_batch, k_noise = jax.random.split(key)
        grad = problem.minibatch_logdensity_grad(state.position, k_batch, cfg.batch_size)
        solver = diffusions.sghmc(alpha=params.friction)
        position, momentum = solver(k_noise, state.position, state.momentum, grad, params.step_size)
        return SGHMCState(like(position, state.position), like(momentum, state.momentum)), {}

    def summarize(stats, warm, params, post):
        del stats, warm, params
        work, info = minibatch_work(cfg, post.n)
        return work, {**info, "friction": cfg.friction}, {}

    return driver.Algorithm(
        name="sghmc", init=init, step=step, params=params, static=cfg.signature(),
        chains=cfg.chains, draws=cfg.draws, burnin=cfg.burnin, steps_per_draw=cfg.eval_every,
        dtype=cfg.dtype, summarize=summarize)
