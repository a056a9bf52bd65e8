"""Diagnostics of a network recorded along training (grokking study): input-space sensitivity,
representation and per-layer weight norms, and the dynamics of Adam/AdamW.

Input-space metrics are functions of the network as a map from a *continuous* input u to logits.
Modular arithmetic has integer inputs, so u is what the first layer reads: the concatenated one-hot
codes of (a, b) for the MLPs (2p numbers), the token embeddings of [a, op, b, =] for the
transformers (4 x d_model numbers, before the positional embeddings). Derivatives are taken with
respect to that u at the actual inputs (one-hot vectors, embedding rows).

- ``spectral_smoothness(grid)``: logits on the full p x p grid of (a, b), their 2-d DFT over (a, b)
  with the constant (DC) term removed; the power-weighted mean of the normalised frequency
  |k| = sqrt(f(k1)^2 + f(k2)^2) / sqrt(2), f(k) = min(k, p - k) / floor(p / 2), so 0 <= s <= 1:
  near 0 when the power sits at low frequencies (a smooth function of a and b), near 1 when at the
  highest. Lower is smoother.
- ``jacobian_sq_norm``: the mean over inputs of ||d logits / du||_F^2, estimated with Gaussian
  projections v (E ||J v||^2 = ||J||_F^2, one forward-mode product per probe); the Jacobian norm
  reported is the square root of that mean (RMS over inputs).
- ``input_hessian_trace``: the mean over inputs of tr(d^2 loss / du^2) of the per-example loss,
  by Hutchinson's estimator with Rademacher v (E v'Hv = tr H; forward-over-reverse products).
- ``representation_norm``: the mean over inputs of the L2 norm of the hidden state the unembedding
  reads (last hidden layer of the MLP, last position's residual stream of the transformer).
- ``layer_weight_norms``: the L2 norm of every top-level parameter group (one per layer/module).
- ``adam_metrics``: from the Adam state (bias-corrected moments m, v, step count t) at a step.

The Monte Carlo estimators return (estimate, standard error); their SE is over the per-input
estimates (independent probes per input), so it covers both probe noise and the input sample.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax


def spectral_smoothness(grid: jax.Array) -> jax.Array:
    """``grid``: (p, p, c) outputs at (a, b) = (row, column). See the module docstring."""
    p = grid.shape[0]
    centred = grid - grid.mean(axis=(0, 1), keepdims=True)
    power = jnp.sum(jnp.abs(jnp.fft.fft2(centred, axes=(0, 1))) ** 2, axis=-1)
    k = jnp.arange(p)
    f = jnp.minimum(k, p - k) / max(p // 2, 1)
    radius = jnp.sqrt(f[:, None] ** 2 + f[None, :] ** 2) / jnp.sqrt(2.0)
    total = power.sum()
    # A constant function has no power off DC (only round-off): call it perfectly smooth, not 0/0.
    flat = total <= jnp.finfo(power.dtype).eps * p * p * jnp.sum(grid ** 2)
    return jnp.where(flat, 0.0, jnp.sum(radius * power) / jnp.where(flat, 1.0, total))


def _mean_se(values: jax.Array) -> tuple[jax.Array, jax.Array]:
    n = values.shape[0]
    return values.mean(), values.std(ddof=1) / jnp.sqrt(n) if n > 1 else jnp.zeros((), values.dtype)


def jacobian_sq_norm(f: Callable[[Any, jax.Array], jax.Array], xs: Any, us: jax.Array, key: jax.Array,
                     probes: int) -> tuple[jax.Array, jax.Array]:
    """Mean over inputs of ||d f(x, u) / du||_F^2 at u = us[i], with its SE.

    ``f(x, u)``: one example's outputs (vector) given its integer input x and continuous input u."""
    keys = jax.random.split(key, us.shape[0])

    def one(x, u, k):
        vs = jax.random.normal(k, (probes, *u.shape), u.dtype)
        jv = jax.vmap(lambda v: jax.jvp(lambda w: f(x, w), (u,), (v,))[1])(vs)
        return jnp.mean(jnp.sum(jv.reshape(probes, -1) ** 2, axis=-1))

    return _mean_se(jax.vmap(one)(xs, us, keys))


def input_hessian_trace(g: Callable[[Any, jax.Array, Any], jax.Array], xs: Any, us: jax.Array, ys: Any,
                        key: jax.Array, probes: int) -> tuple[jax.Array, jax.Array]:
    """Mean over inputs of tr(d^2 g(x, u, y) / du^2) at u = us[i] (Hutchinson), with its SE.

    ``g(x, u, y)``: one example's scalar loss."""
    keys = jax.random.split(key, us.shape[0])

    def one(x, u, y, k):
        vs = jax.random.rademacher(k, (probes, *u.shape), u.dtype)
        grad = jax.grad(lambda w: g(x, w, y))
        hv = jax.vmap(lambda v: jax.jvp(grad, (u,), (v,))[1])(vs)
        return jnp.mean(jnp.sum((vs * hv).reshape(probes, -1), axis=-1))

    return _mean_se(jax.vmap(one)(xs, us, ys, keys))


def layer_weight_norms(params: Any) -> dict[str, jax.Array]:
    """``wnorm_<name>``: the L2 norm of each top-level group of ``params`` (a layer or module)."""
    return {f"wnorm_{name}": optax.global_norm(sub) for name, sub in params.items()}


# --------------------------------------------------------------------------- Adam dynamics

ADAM_KEYS = ("effective_lr_mean", "effective_lr_max", "adam_ratio_mean", "adam_ratio_max", "update_decay_ratio")


def adam_state(opt_state: Any) -> optax.ScaleByAdamState | None:
    """The ScaleByAdamState inside an optax state (chains, masks), or None (e.g. SGD)."""
    found = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda s: isinstance(s, optax.ScaleByAdamState))
             if isinstance(s, optax.ScaleByAdamState)]
    return found[0] if found else None


def adam_metrics(state: optax.ScaleByAdamState, params: Any, lr: jax.Array, b1: float, b2: float, eps: float,
                 weight_decay: float, decay_mask: Any) -> dict[str, jax.Array]:
    """Adam's per-coordinate dynamics after t = ``state.count`` steps (NaN at t = 0):

    with m = mu / (1 - b1^t), v = nu / (1 - b2^t) (bias-corrected, as Adam's update uses them),
    - effective learning rate lr / (sqrt(v) + eps): mean and max over every coordinate;
    - Adam ratio |m| / (sqrt(v) + eps), the update's size per coordinate (1: the gradient's sign
      is consistent; near 0: noise or oscillation): mean and max;
    - update-to-decay ratio ||m / (sqrt(v) + eps)|| / (weight_decay ||w||) over the weight-decayed
      coordinates at the current parameters w: AdamW's two pulls (lr cancels); near 1 where they
      balance. NaN without weight decay.
    """
    t = state.count.astype(jnp.result_type(float))
    dtype = jax.tree.leaves(params)[0].dtype
    m = jax.tree.map(lambda a: a / (1 - b1 ** t), state.mu)
    v = jax.tree.map(lambda a: a / (1 - b2 ** t), state.nu)
    denom = jax.tree.map(lambda a: jnp.sqrt(a) + eps, v)
    flat = lambda tree: jnp.concatenate([jnp.ravel(a) for a in jax.tree.leaves(tree)])  # noqa: E731
    eff = lr / flat(denom)
    step = jax.tree.map(lambda a, d: a / d, m, denom)
    ratio = jnp.abs(flat(step))
    mask = jax.tree.map(lambda keep, a: jnp.full(a.shape, keep, bool), decay_mask, params)
    sel = lambda tree: jax.tree.map(lambda a, k: jnp.where(k, a, 0.0), tree, mask)  # noqa: E731
    decay = weight_decay * optax.global_norm(sel(params))
    udr = optax.global_norm(sel(step)) / decay if weight_decay > 0 else jnp.nan
    out = {"effective_lr_mean": eff.mean(), "effective_lr_max": eff.max(), "adam_ratio_mean": ratio.mean(),
           "adam_ratio_max": ratio.max(), "update_decay_ratio": udr}
    return {k: jnp.where(t > 0, jnp.asarray(val, dtype), jnp.nan).astype(dtype) for k, val in out.items()}


