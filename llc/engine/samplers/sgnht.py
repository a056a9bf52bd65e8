"""Stochastic-gradient Nose-Hoover thermostat (Ding et al. 2014), minibatched like SGLD.

SGHMC whose friction xi is a thermostat variable, solved by BlackJAX's Euler step
(``blackjax.sgmcmc.diffusions.sgnht``, temperature 1):

    w  <- w + h p
    p  <- (1 - xi h) p + h * grad log p_batch(w) + sqrt(2 alpha h) * N(0, I)
    xi <- xi + h (p.p / d - 1)

xi rises while the kinetic energy per coordinate is above 1 (e.g. from minibatch gradient noise)
and falls below it, absorbing unknown gradient noise that plain SGHMC would need estimated.
alpha (``diffusion``) sets the injected noise and xi's starting value. Online L_n every
``eval_every`` steps, like SGLD; the thermostat is recorded per draw as ``xi``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import numpy as np
from blackjax.sgmcmc import diffusions

from llc.config import SGNHTConfig
from llc.engine import autostep, driver, prng
from llc.engine.samplers.sghmc import like
from llc.engine.samplers.sgld import minibatch_work


# Settings of the shared contract tests (tests/test_sampler_contract.py) on N(0, I_20), as SGHMC's.
GAUSSIAN_TEST = {"chains": 4, "draws": 1500, "burnin": 20, "eval_every": 50, "step_size": 0.02, "diffusion": 1.0,
                 "batch_size": 32}

class SGNHTState(NamedTuple):
    position: Any
    momentum: Any
    xi: jax.Array  # thermostat: the adaptive friction


class SGNHTParams(NamedTuple):
    step_size: jax.Array
    diffusion: jax.Array


def auto_steps(post, cfg: SGNHTConfig, key) -> tuple[tuple[float, ...], float]:
    """``step_size=auto``'s grid: llc.engine.autostep.momentum_steps with alpha = ``diffusion``."""
    return autostep.momentum_steps(post, key, cfg.diffusion)


def make(cfg: SGNHTConfig) -> driver.Algorithm:
    driver.require_step(cfg)
    params = SGNHTParams(np.asarray(cfg.step_size, cfg.dtype), np.asarray(cfg.diffusion, cfg.dtype))

    def init(key, position, problem, params):
        del problem
        return SGNHTState(position, prng.normal_like(key, position), params.diffusion)

    def step(key, state, problem, params):
        k_batch, k_noise = jax.random.split(key)
        grad = problem.minibatch_logdensity_grad(state.position, k_batch, cfg.batch_size)
        solver = diffusions.sgnht(alpha=params.diffusion)
        position, momentum, xi = solver(k_noise, state.position, state.momentum, state.xi, grad, params.step_size)
        xi = xi.astype(state.xi.dtype)
        return SGNHTState(like(position, state.position), like(momentum, state.momentum), xi), {"xi": xi}

    def summarize(stats, warm, params, post):
        del warm, params
        work, info = minibatch_work(cfg, post.n)
        return work, {**info, "diffusion": cfg.diffusion, "xi_final_per_chain": [float(v) for v in stats["xi"][:, -1]]}, {}

    return driver.Algorithm(
        name="sgnht", init=init, step=step, params=params, static=cfg.signature(),
        chains=cfg.chains, draws=cfg.draws, burnin=cfg.burnin, steps_per_draw=cfg.eval_every,
        dtype=cfg.dtype, record=lambda infos, **_: {"xi": infos["xi"][-1]}, summarize=summarize)
