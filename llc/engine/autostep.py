"""The grid that ``step_size=auto`` tries, in units of the posterior's stiffness.

A Langevin-type step's discretisation bias in a direction of posterior curvature lam grows with
step * lam (SGLD on a Gaussian: the variance is inflated by 1/(1 - eps*lam/4)), and its mixing time
in the flattest direction (curvature >= gamma) shrinks with the step. So the grid is placed where
eps * lam_max runs from 0.03 (0.75% bias in the stiffest direction; smaller steps rarely mix in a
run's budget: on the quick preset 0.01 gave R-hat 1.2 in 6,000 steps) to 1 (25%, still stable below
4, and the point that shows the bias): the batched grid and llc.analysis.health's rule pick the
largest step whose lambda-hat has not moved.
lam_max is measured at w* (power iteration on Hessian-vector products), so the grid follows the
curvature: at a grokking transformer's initialisation and after it generalises the right step
differs by orders of magnitude. Where the chains go can be far stiffer than w* (a classifier whose
logits saturate has a loss flat at w* and a steep wall around it): when the grid's smallest step
diverges, the grid below it (LOWER_GRID_SHIFT times smaller) runs too and the rule sees all eight.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from llc.engine import curvature

FACTORS = (0.03, 0.1, 0.3, 1.0)  # eps * lam_max of the grid's points
# Where the grid's smallest step diverges, the grid just below it is run too (llc.pipeline.sampling).
LOWER_GRID_SHIFT = FACTORS[0] / FACTORS[-1]
METRIC_BATCHES = 16  # minibatch gradients averaged for a preconditioner's second moment at w*


@functools.lru_cache(maxsize=32)
def _stiffness_program(loss_fn):
    return jax.jit(lambda w, x, y, nbeta, gamma, key, metric: curvature.stiffness(
        loss_fn, w, (x, y), nbeta, gamma, key, metric=metric))


@functools.lru_cache(maxsize=32)
def _second_moment_program(loss_fn, batch_size: int):
    def second_moment(w, x, y, nbeta, key):
        n = jax.tree.leaves(x)[0].shape[0]

        def one(k):
            idx = jax.random.randint(k, (batch_size,), 0, n)
            g = jax.grad(lambda p: -nbeta * loss_fn(p, jax.tree.map(lambda a: a[idx], x),
                                                     jax.tree.map(lambda a: a[idx], y)))(w)
            return jax.tree.map(jnp.square, g)

        moments = jax.lax.map(one, jax.random.split(key, METRIC_BATCHES))
        return jax.tree.map(lambda a: jnp.mean(a, axis=0), moments)

    return jax.jit(second_moment)


def stiffness(post: Any, key, metric=None) -> float:
    """lam_max of ``post`` (an llc.engine.posterior.Posterior) at its w*, in the diagonal ``metric``;
    a restricted posterior's within the coordinates that move (its mask, a 0/1 metric)."""
    if post.mask is not None:
        metric = post.mask if metric is None else jax.tree.map(jnp.multiply, metric, post.mask)
    lam = _stiffness_program(post.loss_fn)(post.w_star, post.x, post.y, post.nbeta, post.gamma, key, metric)
    return float(lam)


def gradient_second_moment(post: Any, key, batch_size: int):
    """The minibatch gradient's second moment at w* (METRIC_BATCHES batches): what RMSProp/Adam SGLD's
    v settles near there, for its preconditioner (llc.engine.samplers.sgld.preconditioner, whose
    floor gamma stands for the localizer's force, at most gamma in second moment)."""
    return _second_moment_program(post.loss_fn, int(batch_size))(post.w_star, post.x, post.y, post.nbeta, key)


def checked(lam: float) -> float:
    """lam_max, or a one-line error when it cannot set a scale (a non-finite loss or curvature at w*)."""
    if not np.isfinite(lam) or lam <= 0:
        raise FloatingPointError(f"step_size=auto: the posterior's curvature at w* is {lam}, so no step-size scale "
                                 "follows from it; give a number (e.g. --set sgld.step_size=1e-4)")
    return lam


def momentum_steps(post: Any, key, alpha: float) -> tuple[tuple[float, ...], float]:
    """SGHMC's and SGNHT's grid: the position moves h*p with unit momentum variance, so h^2 plays the
    role of SGLD's eps where friction is light, h = sqrt(c / lam_max); and Euler's momentum decay
    (1 - alpha*h) needs alpha*h < 1, so h is also at most c / alpha (at the default alpha = 100 the
    grid's 0.1 point is the old default h = 1e-3). Returns (steps, lam_max)."""
    lam = checked(stiffness(post, key))
    return tuple(float(min(np.sqrt(c / lam), c / alpha)) for c in FACTORS), lam
