"""Losses of a model's output against the data, and the metrics logged while training.

A target's ``loss_fn(params, x, y)`` is ``LOSSES[name](apply(params, x), y)``: a mean over the
batch. Labels may be integers (class indices): cross-entropy takes them as they are, MSE compares
the output with their one-hot code.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import optax


def mse(pred: jax.Array, y: jax.Array) -> jax.Array:
    """Mean over samples of 0.5 * ||y - pred||^2 (Gaussian negative log-likelihood up to constants)."""
    if jnp.issubdtype(y.dtype, jnp.integer):
        y = jax.nn.one_hot(y, pred.shape[-1], dtype=pred.dtype)
    return 0.5 * jnp.mean(jnp.sum((y - pred) ** 2, axis=-1))


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy of integer labels (the categorical negative log-likelihood).

    The log-softmax is taken in float64 where JAX allows it: in float32 the loss of a confidently
    right example is a multiple of 1.2e-7 (often 0), its gradient is quantised, and full-batch AdamW
    on memorised data then shows loss spikes (seen on the grok preset; Nanda et al. 2023 cast to
    float64 for the same reason). The result is returned in the logits' dtype.
    """
    wide = logits.astype(jax.dtypes.canonicalize_dtype(jnp.float64))
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(wide, labels)).astype(logits.dtype)


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Fraction of argmax predictions equal to the labels (exactly 1.0 when all are right)."""
    correct = jnp.sum(jnp.argmax(logits, axis=-1) == labels)
    return (correct / labels.size).astype(logits.dtype)


LOSSES: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {"mse": mse, "cross_entropy": cross_entropy}


@functools.lru_cache(maxsize=None)
def make_loss(apply: Callable, name: str) -> Callable:
    """loss_fn(params, x, y) for a model ``apply(params, x)``.

    Cached, so equal (apply, name) give the same function object: the sampling driver caches
    compiled programs by it. ``apply`` must itself be one object per model structure.
    """
    per_batch = LOSSES[name]

    def loss_fn(params, x, y):
        return per_batch(apply(params, x), y)

    return loss_fn


@functools.lru_cache(maxsize=None)
def make_metrics(apply: Callable, name: str, classification: bool) -> Callable:
    """metrics(params, x, y) -> {"loss": ..., "acc": ...} (acc for classification targets only)."""
    per_batch = LOSSES[name]

    def metrics(params, x, y):
        out = apply(params, x)
        values = {"loss": per_batch(out, y)}
        if classification:
            values["acc"] = accuracy(out, y)
        return values

    return metrics
