"""Curvature functions against exact references on small models."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from llc.engine import curvature
from llc.engine.targets.losses import cross_entropy, mse
from llc.engine.targets.mlp import apply_mlp, init_mlp
from llc.pipeline.sampling import enable_x64

enable_x64()


def _problem(loss="mse"):
    rng = np.random.default_rng(0)
    params = init_mlp(rng, [3, 6, 4], bias=True)
    x = rng.standard_normal((40, 3))
    y = rng.integers(0, 4, 40).astype(np.int32) if loss == "cross_entropy" else rng.standard_normal((40, 4))
    fn = {"mse": mse, "cross_entropy": cross_entropy}[loss]
    return (lambda p, xb, yb: fn(apply_mlp(p, xb, "tanh"), yb)), jax.tree.map(jnp.asarray, params), (x, y)


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_hutchinson_trace_within_three_se_of_the_exact_trace(loss):
    loss_fn, params, (x, y) = _problem(loss)
    flat, unravel = ravel_pytree(params)
    exact = jnp.trace(jax.hessian(lambda w: loss_fn(unravel(w), x, y))(flat))
    est, se = jax.jit(lambda p: curvature.hessian_trace(loss_fn, p, (x, y), jax.random.key(1), probes=400, batch=100))(params)
    assert se > 0 and abs(est - exact) < 3 * se, (float(est), float(exact), float(se))
    assert se < 0.2 * abs(exact)  # the test can fail: the SE is small compared with the trace


def test_fisher_trace_is_the_mean_squared_per_example_gradient_norm():
    loss_fn, params, (x, y) = _problem("cross_entropy")
    grad = jax.jit(jax.grad(loss_fn))
    per_example = [float(sum(jnp.sum(g ** 2) for g in jax.tree.leaves(grad(params, x[i:i + 1], y[i:i + 1]))))
                   for i in range(len(x))]
    assert float(curvature.fisher_trace(loss_fn, params, (x, y))) == pytest.approx(np.mean(per_example), rel=1e-10)
    assert float(curvature.fisher_trace(loss_fn, params, (x, y), batch=7)) == pytest.approx(np.mean(per_example), rel=1e-10)


def test_norms_and_vmap_over_checkpoints():
    loss_fn, params, data = _problem()
    flat = ravel_pytree(params)[0]
    assert float(curvature.weight_norm(params)) == pytest.approx(float(np.linalg.norm(flat)), rel=1e-12)
    g = ravel_pytree(jax.grad(loss_fn)(params, *data))[0]
    assert float(curvature.grad_norm(loss_fn, params, data)) == pytest.approx(float(np.linalg.norm(g)), rel=1e-12)
    stacked = jax.tree.map(lambda a: jnp.stack([a, 2 * a]), params)  # two "checkpoints"
    norms = jax.vmap(lambda p: curvature.grad_norm(loss_fn, p, data))(stacked)
    doubled = jax.tree.map(lambda a: 2 * a, params)
    np.testing.assert_allclose(norms, [curvature.grad_norm(loss_fn, params, data),
                                       curvature.grad_norm(loss_fn, doubled, data)], rtol=1e-12)
