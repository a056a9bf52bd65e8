"""Curvature and size of a loss at a point: pure JAX functions of (loss_fn, params, data).

``loss_fn(params, x, y)`` is a mean loss over the batch (a target's ``loss_fn``), ``data = (x, y)``
(x and y may be pytrees and integer), ``params`` any pytree. Every function is traceable: jit it,
or vmap it over a stack of checkpoints.

    grad_norm(loss_fn, params, data) -> ||grad L_n(w)||
    hessian_trace(loss_fn, params, data, key, probes=100, batch=None) -> (trace, se)
        Hutchinson's estimator tr(H) = E[v^T H v] with Rademacher probes v (entries +-1), Hessian-
        vector products by forward-over-reverse differentiation; se = std(v^T H v) / sqrt(probes).
        ``batch``: probes evaluated at once (memory), default all.
    fisher_trace(loss_fn, params, data, batch=None) -> (1/n) sum_i ||grad l_i(w)||^2
        The trace of the empirical Fisher (1/n) sum_i g_i g_i^T, with l_i the loss of example i
        alone; per-example gradients by vmap, ``batch`` examples at a time (default all).
    weight_norm(params) -> ||w||
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

LossFn = Callable[[Any, Any, Any], jax.Array]


def _sq_norm(tree) -> jax.Array:
    return sum(jnp.sum(jnp.square(leaf)) for leaf in jax.tree.leaves(tree))


def _vdot(a, b) -> jax.Array:
    return sum(jnp.sum(x * y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def weight_norm(params) -> jax.Array:
    """Euclidean norm of all parameters together."""
    return jnp.sqrt(_sq_norm(params))


def grad_norm(loss_fn: LossFn, params, data) -> jax.Array:
    """Norm of the full-batch gradient of the mean loss."""
    x, y = data
    return jnp.sqrt(_sq_norm(jax.grad(loss_fn)(params, x, y)))


def _rademacher(key, params):
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(treedef, [jax.random.rademacher(k, jnp.shape(leaf), dtype=jnp.result_type(leaf))
                                        for k, leaf in zip(keys, leaves)])


def hessian_trace(loss_fn: LossFn, params, data, key, probes: int = 100,
                  batch: int | None = None) -> tuple[jax.Array, jax.Array]:
    """Hutchinson estimate of the trace of the Hessian of the mean loss, and its standard error."""
    x, y = data
    grad = jax.grad(lambda w: loss_fn(w, x, y))

    def quad_form(k):
        v = _rademacher(k, params)
        hv = jax.jvp(grad, (params,), (v,))[1]
        return _vdot(v, hv)

    values = jax.lax.map(quad_form, jax.random.split(key, probes), batch_size=batch)
    return jnp.mean(values), jnp.std(values, ddof=1) / jnp.sqrt(probes)


def fisher_trace(loss_fn: LossFn, params, data, batch: int | None = None) -> jax.Array:
    """Trace of the empirical Fisher: the mean squared norm of the per-example gradients."""
    x, y = data

    def example_sq_norm(example):
        xi, yi = example
        one = lambda a: a[None]  # noqa: E731 - a batch of one
        return _sq_norm(jax.grad(loss_fn)(params, jax.tree.map(one, xi), jax.tree.map(one, yi)))

    return jnp.mean(jax.lax.map(example_sq_norm, (x, y), batch_size=batch))


def stiffness(loss_fn: LossFn, params, data, nbeta, gamma, key, *, metric=None, iters: int = 30) -> jax.Array:
    """The largest |eigenvalue| of the tempered posterior's curvature nbeta*H + gamma*I at ``params``
    (H the Hessian of the mean loss), in the diagonal ``metric`` M (a pytree like ``params``; None:
    the identity), i.e. of M^(1/2) (nbeta*H + gamma*I) M^(1/2), by ``iters`` steps of power
    iteration on Hessian-vector products. A Langevin step's discretisation error in a direction of
    curvature lam grows with step*lam, so 1/stiffness is the natural unit of a step size."""
    x, y = data
    grad = jax.grad(lambda w: loss_fn(w, x, y))
    root = jax.tree.map(jnp.ones_like, params) if metric is None else jax.tree.map(jnp.sqrt, metric)

    def apply(v):
        scaled = jax.tree.map(jnp.multiply, root, v)
        hv = jax.jvp(grad, (params,), (scaled,))[1]
        return jax.tree.map(lambda r, h, s: r * (nbeta * h + gamma * s), root, hv, scaled)

    def normalise(v):
        norm = jnp.sqrt(_sq_norm(v))
        return jax.tree.map(lambda a: a / norm, v)

    def body(_, carry):
        v, _lam = carry
        w = apply(v)
        return normalise(w), jnp.sqrt(_sq_norm(w))

    start = normalise(_rademacher(key, params))
    zero = jnp.zeros((), jnp.result_type(jax.tree.leaves(params)[0]))
    return jax.lax.fori_loop(0, iters, body, (start, zero))[1]
