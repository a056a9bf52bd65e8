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
import jax.numpy as jnp
from blackjax.sgmcmc import diffusions

from llc.config import SGHMCConfig
from llc.engine import driver


class SGHMCState(NamedTuple):
    position: Any
    momentum: Any


class SGHMCParams(NamedTuple):
    step_size: jax.Array
    friction: jax.Array


def gaussian_like(key, tree):
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(treedef, [jax.random.normal(k, p.shape, p.dtype) for k, p in zip(keys, leaves)])


def like(tree, reference):
    """``tree`` in ``reference``'s dtypes: BlackJAX's solvers promote float32 chains to float64 under x64."""
    return jax.tree.map(lambda a, r: a.astype(r.dtype), tree, reference)


def make(cfg: SGHMCConfig) -> driver.Algorithm:
    params = SGHMCParams(jnp.asarray(cfg.step_size, cfg.dtype), jnp.asarray(cfg.friction, cfg.dtype))

    def init(key, position, problem, params):
        del problem, params
        return SGHMCState(position, gaussian_like(key, position))

    def step(key, state, problem, params):
        k_batch, k_noise = jax.random.split(key)
        grad = problem.minibatch_logdensity_grad(state.position, k_batch, cfg.batch_size)
        solver = diffusions.sghmc(alpha=params.friction)
        position, momentum = solver(k_noise, state.position, state.momentum, grad, params.step_size)
        return SGHMCState(like(position, state.position), like(momentum, state.momentum)), {}

    def summarize(stats, warm, params, post):
        del stats, warm, params
        total = cfg.burnin + cfg.draws
        grads = total * cfg.eval_every * cfg.chains
        work = {"n_grad_evals": grads, "fde": grads * cfg.batch_size / post.n, "full_loss_evals": total * cfg.chains}
        info = {"step_size": cfg.step_size, "friction": cfg.friction, "batch_size": cfg.batch_size,
                "eval_every": cfg.eval_every, "steps_per_chain": total * cfg.eval_every}
        return work, info, {}

    return driver.Algorithm(
        name="sghmc", init=init, step=step, params=params, static=(cfg.batch_size,),
        chains=cfg.chains, draws=cfg.draws, burnin=cfg.burnin, steps_per_draw=cfg.eval_every,
        dtype=cfg.dtype, summarize=summarize)
