"""Reference samplers that agree (issue 20, item 3): HMC, adjusted MCLMC and unadjusted MCLMC at
their default settings give the same lambda-hat within Monte Carlo error.

Unadjusted MCLMC has no accept/reject step, so its step size biases it. At BlackJAX's energy-error
target (desired_energy_var 5e-4) it read 1.2-1.4% low on the quadratic below (z = -5.2 and -6.3)
and 6.5% low on the tanh MLP (10 combined SE from HMC); the default is now 5e-6
(``MCLMCConfig.desired_energy_var``; measurements in benchmarks/reference_agreement.py). Every
tolerance here is 3 standard errors; each test also asserts that its SE is small enough to have
caught the old bias, so a pass is not owed to noise.
"""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest

from llc import theory
from llc.analysis.diagnostics import llc_metrics
from llc.config import MCLMCConfig, build_config
from llc.engine.posterior import make_posterior
from llc.engine.targets import get_target
from llc.pipeline.sampling import sample_one

jax.config.update("jax_enable_x64", True)

Z = 3.0  # standard errors (the ``disagree`` flag's threshold)


def _posterior(overrides, root):
    cfg = build_config(overrides=overrides)
    target = get_target(cfg, root)
    return cfg, make_posterior(target.loss_fn, target.params, target.x, target.y, cfg.posterior, L0=target.L0)


def test_mclmc_default_on_anisotropic_quadratic_within_monte_carlo_error(tmp_path):
    # Curvatures over four decades: the diagonal preconditioner and the step size must suit the
    # stiffest direction, the trajectory the flattest. The exact lambda holds at any n*beta, gamma.
    d = 100
    eigenvalues = [float(f"{h:.4g}") for h in np.logspace(-2, 2, d)]
    _, post = _posterior(["target.kind=quadratic", f"target.quadratic.dim={d}", "data.n_data=1000",
                          "target.quadratic.eigenvalues=" + ",".join(map(str, eigenvalues))], tmp_path)
    exact = theory.quadratic_learning_coefficient(d, post.n, post.beta, post.gamma, eigenvalues)
    out = sample_one("mclmc", post, MCLMCConfig(draws=2000), jax.random.key(2))
    m = llc_metrics(out.Ln, post.L0, post.nbeta, out.theta_proj)
    z = (m["llc_mean"] - exact) / m["llc_se"]
    print(f"mclmc: {m['llc_mean']:.4f} +- {m['llc_se']:.4f}, exact {exact:.4f} ({z:+.1f} SE), ess {m['ess']:.0f}")
    assert m["diverged_chains"] == 0, out.info
    # The old default's bias (-1.2% here) must stand out by more than Z SE, else this proves nothing.
    assert Z * m["llc_se"] < 0.012 * exact, f"SE {m['llc_se']:.4f} too large to resolve a 1.2% bias"
    assert abs(z) <= Z, f"lambda-hat {m['llc_mean']:.4f} is {z:+.1f} SE from the exact {exact:.4f}"


@pytest.mark.slow
def test_hmc_mclmc_adjusted_mclmc_agree_on_tanh_mlp(tmp_path):
    # A tanh teacher-student MLP of 4,951 parameters at each sampler's defaults. n = 1,024 rather
    # than issue 20's 4,096: a gradient costs 1.8 ms instead of 8.8 ms on 2 CPU cores, and HMC's
    # 51,000 gradients alone take ~3 minutes here; the bias it checks is larger at this n (-6.5%
    # for the old MCLMC default against -3.6% at n = 4,096 on an H200).
    cfg, post = _posterior(["target.kind=mlp", "target.mlp.activation=tanh", "target.mlp.target_params=5000",
                            "data.n_data=1024", "seed=0"], tmp_path)
    assert 4500 <= post.dim <= 5500
    results = {}
    for name in ("hmc", "mclmc_adjusted", "mclmc"):
        out = sample_one(name, post, getattr(cfg, name), jax.random.key(4))
        m = llc_metrics(out.Ln, post.L0, post.nbeta, out.theta_proj)
        print(f"{name}: {m['llc_mean']:.3f} +- {m['llc_se']:.3f} ess {m['ess']:.0f} rhat {m['rhat']:.3f}")
        assert m["diverged_chains"] == 0, (name, out.info)
        results[name] = m
    names = list(results)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            diff = results[a]["llc_mean"] - results[b]["llc_mean"]
            se = math.hypot(results[a]["llc_se"], results[b]["llc_se"])
            print(f"  {a} - {b}: {diff:+.3f} ({diff / se:+.1f} combined SE)")
            # The old MCLMC default read 6.5% low here: a test whose SEs could not see that is void.
            assert Z * se < 0.065 * results[a]["llc_mean"], f"{a}, {b}: SE {se:.3f} too large"
            assert abs(diff) <= Z * se, f"{a} vs {b}: differ by {diff:+.3f} = {diff / se:+.1f} combined SE"
