"""Estimators on the quadratic LLC, a target with an exact answer (every sampler's standard
Gaussian moments are in tests/test_sampler_contract.py).

The quadratic LLC bounds (3% for HMC and both MCLMCs, 5% for SGLD) are the specification's; the
draws are chosen so that the standard error is several times smaller than the bound, and the test
asserts that too (a bound met only thanks to noise is not a pass).

Unadjusted MCLMC is biased by its integration error: variances came out about 2% low at BlackJAX's
``desired_energy_var`` 5e-4 (lambda-hat -1.7% to -2% on the 100-d quadratic; -0.3% at the default 5e-6). The contract's
per-direction Gaussian checks cannot resolve that (the MCSE of each variance is ~2%); the quadratic
test bounds it at the specification's 3%.

The default suite runs the d = 100 quadratic; d = 4 and the configuration variants (NUTS, shared
adaptation, float32, Omelyan) are marked slow.
"""

from __future__ import annotations

import jax
import pytest

from llc import theory
from llc.config import HMCConfig, MCLMCAdjustedConfig, MCLMCConfig, SGHMCConfig, SGLDConfig, SGNHTConfig, build_config
from llc.analysis.diagnostics import llc_metrics
from llc.engine.posterior import make_posterior
from llc.pipeline.sampling import sample_one

jax.config.update("jax_enable_x64", True)


# --------------------------------------------------------------------------- quadratic LLC

def quad_config(name: str, d: int):
    """Sampler settings for the quadratic test: enough draws for a standard error of ~1/4 of the bound.

    The relative spread of lambda-hat draws is sqrt(2/d), so d = 4 needs ~20x the ESS of d = 100.
    HMC's ESS per draw for L_n is at most ~1/3 on a Gaussian (momentum refreshment cannot change
    the energy level much), hence its extra draws.
    """
    small = d < 10
    return {
        "hmc": HMCConfig(chains=4, draws=5000 if small else 1000, warmup=300),
        "mclmc": MCLMCConfig(chains=4, draws=3000 if small else 1000, warmup=1000),
        "mclmc_adjusted": MCLMCAdjustedConfig(chains=4, draws=3000 if small else 1000, warmup=1000),
        # The default step size (1e-4) with more steps per draw: at n*beta + gamma ~ 245, one draw
        # every 50 steps has an autocorrelation time of about one draw.
        "sgld": SGLDConfig(chains=4, draws=2500 if small else 500, burnin=40, eval_every=50),
    }[name]


QUAD_BOUNDS = {"hmc": 0.03, "mclmc": 0.03, "mclmc_adjusted": 0.03, "sgld": 0.05}


def quadratic_posterior(d: int, tmp_path):
    cfg = build_config(overrides=["target.kind=quadratic", f"target.quadratic.dim={d}", "data.n_data=1000"])
    from llc.engine.targets import get_target

    target = get_target(cfg, tmp_path)
    post = make_posterior(target.loss_fn, target.params, target.x, target.y, cfg.posterior, L0=target.L0)
    return post, theory.quadratic_learning_coefficient(d, post.n, post.beta, post.gamma)


def check_quadratic(name, cfg, d, tmp_path):
    post, exact = quadratic_posterior(d, tmp_path)
    out = sample_one(name, post, cfg, jax.random.key(2))
    m = llc_metrics(out.Ln, post.L0, post.nbeta, out.theta_proj)
    assert m["diverged_chains"] == 0, out.info
    rel_err = m["llc_mean"] / exact - 1.0
    rel_se = m["llc_se"] / exact
    print(f"{name} d={d}: llc={m['llc_mean']:.4f} +- {m['llc_se']:.4f} exact={exact:.4f} "
          f"rel_err={rel_err:+.2%} rel_se={rel_se:.2%} ess={m['ess']:.0f}")
    bound = QUAD_BOUNDS[name]
    assert rel_se < bound / 3, f"standard error {rel_se:.2%} too large to test a {bound:.0%} bound"
    assert abs(rel_err) < bound, f"{name} d={d}: lambda-hat off by {rel_err:+.2%} (SE {rel_se:.2%})"


# d = 100 runs in the default suite; d = 4 (and the sampler variants) are marked slow only to keep
# the default suite's compile time down: each sampler run costs 5-15 s of XLA compilation here.
@pytest.mark.parametrize("name", list(QUAD_BOUNDS))
def test_quadratic_llc_d100(name, tmp_path):
    check_quadratic(name, quad_config(name, 100), 100, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(QUAD_BOUNDS))
def test_quadratic_llc_d4(name, tmp_path):
    check_quadratic(name, quad_config(name, 4), 4, tmp_path)


VARIANTS = {  # the configurable alternatives: NUTS, shared adaptation, float32, another integrator
    "hmc-nuts": ("hmc", {"nuts": True}),
    "hmc-shared": ("hmc", {"adaptation": "shared"}),
    "hmc-float32": ("hmc", {"dtype": "float32"}),
    "mclmc-shared": ("mclmc", {"adaptation": "shared"}),
    "mclmc-float32": ("mclmc", {"dtype": "float32"}),
    # Nearly unbiased here (-0.05% vs -2% for the default McLachlan) but it mixes badly: the
    # draws are 8x more (see MCLMCConfig.integrator).
    "mclmc-omelyan": ("mclmc", {"integrator": "isokinetic_omelyan", "draws": 8000}),
    "mclmc_adjusted-shared": ("mclmc_adjusted", {"adaptation": "shared"}),
}


@pytest.mark.slow
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_quadratic_llc_variants(variant, tmp_path):
    import dataclasses

    name, changes = VARIANTS[variant]
    cfg = dataclasses.replace(quad_config(name, 100), **changes)
    check_quadratic(name, cfg, 100, tmp_path)


# --------------------------------------------------------------------------- SG-MCMC with momentum

def sg_momentum_config(name: str, d: int):
    """Default step size and friction; enough draws for an SE of a few percent."""
    draws = 8000 if d < 10 else 1000
    return {"sghmc": SGHMCConfig(chains=4, draws=draws, eval_every=10),
            "sgnht": SGNHTConfig(chains=4, draws=draws, eval_every=10)}[name]


def check_within_3se(name, d, tmp_path):
    post, exact = quadratic_posterior(d, tmp_path)
    out = sample_one(name, post, sg_momentum_config(name, d), jax.random.key(2))
    m = llc_metrics(out.Ln, post.L0, post.nbeta, out.theta_proj)
    print(f"{name} d={d}: llc={m['llc_mean']:.4f} +- {m['llc_se']:.4f} exact={exact:.4f}")
    assert m["diverged_chains"] == 0, out.info
    assert m["llc_se"] < 0.05 * exact, "too few draws to test anything"
    assert abs(m["llc_mean"] - exact) < 3 * m["llc_se"], (m["llc_mean"], m["llc_se"], exact)


@pytest.mark.parametrize("name", ["sghmc", "sgnht"])
def test_sg_momentum_quadratic_d100_within_3se(name, tmp_path):
    check_within_3se(name, 100, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["sghmc", "sgnht"])
def test_sg_momentum_quadratic_d4_within_3se(name, tmp_path):
    check_within_3se(name, 4, tmp_path)
