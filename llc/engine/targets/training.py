"""ERM training with Optax: finds w*, the centre of the localized posterior."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from llc.config import TrainingConfig


def train_erm(loss_fn: Callable, params, x, y, cfg: TrainingConfig, seed: int):
    """Minimise loss_fn(params, x, y) in one jitted lax.scan; returns (params, final loss, grad norm)."""
    opt = optax.adam(cfg.learning_rate) if cfg.optimizer == "adam" else optax.sgd(cfg.learning_rate)
    n = x.shape[0]
    batch = cfg.batch_size

    def step(carry, key):
        p, state = carry
        if batch is None or batch >= n:
            xb, yb = x, y
        else:
            idx = jax.random.randint(key, (batch,), 0, n)
            xb, yb = x[idx], y[idx]
        grads = jax.grad(loss_fn)(p, xb, yb)
        updates, state = opt.update(grads, state, p)
        return (optax.apply_updates(p, updates), state), None

    @jax.jit
    def run(p):
        keys = jax.random.split(jax.random.key(seed), cfg.steps)
        (p, _), _ = jax.lax.scan(step, (p, opt.init(p)), keys)
        loss, grads = jax.value_and_grad(loss_fn)(p, x, y)
        return p, loss, optax.global_norm(grads)

    params, loss, grad_norm = run(params)
    return params, float(loss), float(grad_norm)


def full_loss_and_grad_norm(loss_fn: Callable, params, x, y) -> tuple[float, float]:
    loss, grads = jax.jit(jax.value_and_grad(loss_fn))(params, x, y)
    return float(loss), float(optax.global_norm(grads))


def cast_tree(tree, dtype):
    return jax.tree.map(lambda a: jnp.asarray(a, dtype=dtype), tree)
