import jax
import jax.numpy as jnp
import numpy as np
import pytest

import llc
from conftest import tanh_net
from llc.config import ConfigError
from llc.pipeline.sampling import enable_x64
from llc.theory import quadratic_learning_coefficient

enable_x64()


def test_estimate_pure_loss_matches_quadratic_theory():
    d, n = 6, 1000
    x = np.zeros((n, 1))
    loss = lambda params, batch: 0.5 * jnp.sum(params["w"] ** 2)  # noqa: E731
    est = llc.estimate(loss, {"w": np.zeros(d)}, x, x, sampler="sgld",
                       sampler_config={"draws": 2000, "step_size": 1e-4, "dtype": "float64"},
                       posterior={"gamma": 50.0})
    exact = quadratic_learning_coefficient(d, n, est.beta, est.gamma)
    eps, precision = 1e-4, est.n * est.beta + est.gamma
    sgld_exact = exact / (1 - eps * precision / 4)  # Euler bias of SGLD on a Gaussian
    assert abs(est.llc_mean - sgld_exact) < 4 * est.llc_se
    assert est.llc_running.shape == (2000,)
    assert est.metrics["flags"] == []


def test_estimate_flags_an_impossible_answer():
    """A step far too large on a d = 4 quadratic reads above d/2: the estimate says so."""
    x = np.zeros((2048, 1))
    loss = lambda params, batch: 0.5 * jnp.sum(params["w"] ** 2)  # noqa: E731
    est = llc.estimate(loss, {"w": np.zeros(4)}, x, x, sampler="sgld",
                       sampler_config={"draws": 1000, "step_size": 0.0108, "dtype": "float64"})
    assert any(f.startswith("above_d_half") or "d/2" in f for f in est.metrics["flags"]), est.metrics["flags"]


def test_estimate_flax_module():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((256, 2))
    y = np.tanh(x[:, :1]) + 0.1 * rng.standard_normal((256, 1))
    model = tanh_net()
    params = model.init(jax.random.key(0), x)
    est = llc.estimate(model, params, x, y, sampler_config={"draws": 100, "chains": 2})
    assert est.metrics["chains"] == 2 and est.output.Ln.shape == (2, 100)
    assert np.isfinite(est.llc_mean)


def test_estimate_rejects_bad_options():
    x = np.zeros((10, 1))
    loss = lambda p, b: jnp.sum(p ** 2)  # noqa: E731
    with pytest.raises(ConfigError, match="sgld.step_size: must be > 0"):
        llc.estimate(loss, np.zeros(3), x, x, sampler_config={"step_size": -1.0})
    with pytest.raises(ConfigError, match="sampler: 'metropolis' is not allowed"):
        llc.estimate(loss, np.zeros(3), x, x, sampler="metropolis")
