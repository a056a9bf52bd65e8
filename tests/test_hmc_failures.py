"""Failure handling of the full-batch samplers (HMC, MCLMC, adjusted MCLMC).

A chain whose state or tuned parameters become non-finite, or that stops moving, must come back
with NaN L_n (so ``diagnostics.diverged_chains`` excludes it from lambda-hat) and must never
crash the run.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llc.config import ConfigError, HMCConfig, MCLMCConfig, PosteriorConfig, build_config
from llc.analysis.diagnostics import llc_metrics
from llc.engine.posterior import make_posterior
from llc.engine import driver
from llc.engine.samplers import fullbatch
from llc.pipeline.sampling import sample_one

jax.config.update("jax_enable_x64", True)


def _posterior(loss, d=6):
    n = 100
    cfg = PosteriorConfig(beta_mode="fixed", beta0=0.5 / n, gamma=0.5)  # N(0, I) for the quadratic
    return make_posterior(loss, {"theta": np.zeros(d)}, np.zeros((n, 1)), np.zeros((n, 1)), cfg, L0=0.0)


def test_finalize_marks_failed_chains():
    rng = np.random.default_rng(0)
    Ln = rng.random((4, 10))
    theta = rng.standard_normal((4, 10, 2))
    theta[1, 5, 0] = np.nan  # chain 1: a non-finite state
    theta[2] = theta[2, :1]  # chain 2: never moved
    bad_params = fullbatch.bad_parameters(np.array([0.1, 0.2, 0.3, np.nan]), np.ones((4, 2)))  # chain 3
    out = driver.finalize("hmc", Ln, np.zeros((4, 0)), theta, {"x": np.zeros((4, 10))}, {"wall_s": 1},
                             {}, {"bad parameters": bad_params})
    assert np.isfinite(out.Ln[0]).all() and np.array_equal(out.Ln[0], Ln[0])
    assert np.isnan(out.Ln[1:]).all()
    assert out.info["failed_chains"] == 3
    assert set(out.info["failure_reasons"]) == {"1", "2", "3"}
    assert "frozen" in out.info["failure_reasons"]["2"]
    m = llc_metrics(out.Ln, 0.0, 1.0, out.theta_proj)
    assert m["diverged_chains"] == 3 and m["diverged_chain_ids"] == [1, 2, 3]
    assert m["llc_mean"] == pytest.approx(Ln[0].mean())


def test_collapsed_isokinetic_step_is_detected():
    inv_mass = np.full((3, 100), 0.01)
    # per-coordinate move eps * sqrt(0.01 / 100) = eps / 100, against a narrowest width of 0.01
    collapsed = fullbatch.collapsed_isokinetic(np.array([1.0, 1e-5, np.nan]), inv_mass, np.full(3, 0.01))
    assert collapsed.tolist() == [False, True, True]
    assert fullbatch.bad_parameters(np.ones(2), np.array([[1.0, -1e-15], [1.0, 1.0]])).tolist() == [True, False]


def test_all_nan_loss_returns_all_chains_diverged():
    post = _posterior(lambda p, x, y: jnp.nan * jnp.sum(p["theta"]))
    out = sample_one("hmc", post, HMCConfig(chains=2, draws=10, warmup=30), jax.random.key(0))
    assert out.Ln.shape == (2, 10)
    m = llc_metrics(out.Ln, post.L0, post.nbeta, out.theta_proj)
    assert m["diverged_chains"] == 2
    assert m["llc_mean"] is None


def test_mclmc_survives_a_region_where_the_loss_is_nan():
    # Standard Gaussian cut at theta_0 = 1: about a sixth of the mass lies where the loss is NaN.
    # BlackJAX reverts the steps that land there; its tuner shrinks the step size at each one,
    # which here drives it to ~0 (chains freeze). The run must finish and flag those chains.
    def loss(p, x, y):
        th = p["theta"]
        return 0.5 * jnp.sum(th**2) + jnp.where(th[0] > 1.0, jnp.nan, 0.0)

    post = _posterior(loss)
    out = sample_one("mclmc", post, MCLMCConfig(chains=2, draws=200, warmup=300, energy_check_steps=30), jax.random.key(0))
    assert out.Ln.shape == (2, 200)
    assert out.stats["nan_steps"].sum() > 0  # counted per draw, never propagated into the state
    assert np.isfinite(out.theta_proj).all()
    failed = np.isnan(out.Ln).any(axis=1)
    assert failed.sum() == out.info["failed_chains"] > 0
    assert all(("collapsed" in r or "frozen" in r) for r in out.info["failure_reasons"].values())
    assert np.isfinite(out.Ln[~failed]).all()
    m = llc_metrics(out.Ln, post.L0, post.nbeta, out.theta_proj)
    assert m["diverged_chains"] == failed.sum()


def test_config_fields_are_validated():
    with pytest.raises(ConfigError, match="hmc.step_size_jitter"):
        build_config(overrides=["hmc.step_size_jitter=1.5"])
    with pytest.raises(ConfigError, match="mclmc.energy_check_steps"):
        build_config(overrides=["mclmc.energy_check_steps=-1"])
    with pytest.raises(ConfigError, match="mclmc_adjusted.target_num_integration_steps"):
        build_config(overrides=["mclmc_adjusted.target_num_integration_steps=1.0"])
