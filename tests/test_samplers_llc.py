"""Estimators against analytic learning coefficients on singular models, and against each other.

* Deep linear networks (slow): HMC and MCLMC lambda-hat within 10% of Aoyagi's value for four
  architectures of different depths, widths and teacher ranks; SGLD's error is printed.
* A ReLU teacher-student MLP of ~1000 parameters (slow): HMC and adjusted MCLMC agree within
  their combined standard errors; unadjusted MCLMC sits 1.5-2% lower (its integration bias, the
  same as on a Gaussian) and is compared with that allowance; SGLD's difference is printed and
  bounded loosely (see there).

Run with ``pytest -m slow tests/test_samplers_llc.py -s`` to see the measured table.

Posterior regime for the DLNs (found by experiment, see the notes on each constant): n = 10^4,
beta = 10 (n*beta = 10^5), gamma = 100. Much smaller n*beta leaves lambda-hat below the
asymptotic value (n*beta = 10^4: -5%); n*beta = 10^6 makes the posterior so anisotropic (quartic
directions of width (n*beta)^(-1/4) beside quadratic ones of width (n*beta)^(-1/2)) that no sampler
mixes in a test's budget; gamma = 1 lets chains drift along the unbounded singular set into
regions of higher curvature (divergences, chain-to-chain spread), gamma = 1000 truncates the
posterior (-9%). ERM is full-batch gradient descent from the teacher, so w* is a critical point to
~1e-5 in gradient norm (Adam's default leaves ~3e-2, which n*beta turns into a large force).
"""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest

from llc import theory
from llc.config import build_config
from llc.analysis.diagnostics import llc_metrics
from llc.engine.posterior import make_posterior
from llc.pipeline.sampling import sample_one
from llc.engine.targets import get_target

jax.config.update("jax_enable_x64", True)

DLN_POSTERIOR = ["data.n_data=10000", "posterior.beta_mode=fixed", "posterior.beta0=10", "posterior.gamma=100",
                 "training.optimizer=sgd", "training.learning_rate=0.1", "training.steps=10000"]
DLN_SAMPLERS = ["hmc.draws=4000", "mclmc.draws=4000", "mclmc.eval_every=4",
                # SGLD's step must shrink with n*beta (1e-4 is tuned for n*beta ~ 150): this keeps
                # eps * n*beta at the quick preset's value. Its minibatch noise still biases it.
                "sgld.step_size=1.5e-7", "sgld.eval_every=100", "sgld.draws=500", "sgld.burnin=100"]
DLN_CASES = [  # (widths, rank): depth 3, 4, 3, 2 weight layers; widths 3..10; ranks 1..3
    ((6, 5, 4, 6), 2),
    ((5, 4, 3, 4, 5), 1),
    ((10, 8, 6, 10), 3),
    ((8, 4, 8), 1),
]
DLN_BOUND = 0.10


def compressed(post):
    """The same posterior with the data replaced by n-independent sufficient statistics.

    A DLN's squared loss depends on the data only through X'X, X'Y and Y'Y. With R from the QR
    factorisation of [X Y] (m = in + out rows), the rows sqrt(m/n) * R reproduce the mean loss
    exactly (up to rounding), so full-batch gradients cost O(m) instead of O(n); n, beta, gamma and
    hence n*beta are unchanged. (Only for full-batch samplers: SGLD minibatches need the raw data.)
    """
    x, y = np.asarray(post.x), np.asarray(post.y)
    m = x.shape[1] + y.shape[1]
    r = np.linalg.qr(np.concatenate([x, y], axis=1), mode="r") * math.sqrt(m / post.n)
    small = post._replace(x=r[:, :x.shape[1]], y=r[:, x.shape[1]:])
    return small._replace(L0=float(jax.jit(small.loss_fn)(small.w_star, small.x, small.y)))


def _report(name, m, exact=None):
    line = f"  {name:15s} llc={m['llc_mean']:8.3f} +- {m['llc_se']:.3f}  ess={m['ess']:7.0f}  rhat={m['rhat']:.3f}"
    if exact is not None:
        line += f"  exact={exact:.2f}  rel_err={m['llc_mean'] / exact - 1:+.1%}"
    print(line)


@pytest.mark.slow
@pytest.mark.parametrize("widths,rank", DLN_CASES, ids=lambda v: str(v).replace(" ", ""))
def test_dln_llc_matches_aoyagi(widths, rank, tmp_path):
    widths_arg = ",".join(str(w) for w in widths)
    cfg = build_config(overrides=["target.kind=dln", f"target.dln.widths={widths_arg}", f"target.dln.rank={rank}",
                                  *DLN_POSTERIOR, *DLN_SAMPLERS])
    target = get_target(cfg, tmp_path)
    assert target.meta["erm"]["grad_norm"] < 1e-3, target.meta["erm"]  # w* must be a critical point
    post = make_posterior(target.loss_fn, target.params, target.x, target.y, cfg.posterior, L0=target.L0)
    exact = theory.dln_learning_coefficient(widths, rank)
    print(f"\nDLN widths={widths} rank={rank} d={post.dim} n*beta={post.nbeta:.0f} gamma={post.gamma}: "
          f"Aoyagi lambda={exact}")
    small = compressed(post)
    errors = {}
    for name in ("hmc", "mclmc", "sgld"):
        p = post if name == "sgld" else small
        out = sample_one(name, p, getattr(cfg, name), jax.random.key(3))
        m = llc_metrics(out.Ln, p.L0, p.nbeta, out.theta_proj)
        _report(name, m, exact)
        errors[name] = (m["llc_mean"] / exact - 1.0, m["llc_se"] / exact, m["diverged_chains"])
    for name in ("hmc", "mclmc"):
        rel_err, rel_se, diverged = errors[name]
        assert diverged == 0
        assert rel_se < DLN_BOUND / 4, f"{name}: SE {rel_se:.1%} too large to test a {DLN_BOUND:.0%} bound"
        assert abs(rel_err) < DLN_BOUND, f"{name}: lambda-hat off by {rel_err:+.1%} (SE {rel_se:.1%})"


# --------------------------------------------------------------------------- ReLU teacher-student

RELU_OVERRIDES = ["hmc.draws=1500", "mclmc.draws=2000", "mclmc.eval_every=4", "mclmc_adjusted.draws=3000",
                  "sgld.draws=2000"]
AGREE_Z = 3.0  # |difference| < AGREE_Z * combined SE (+ a stated bias allowance, below)
# Unadjusted MCLMC is biased by its integration error: at BlackJAX's desired_energy_var (5e-4) -2% in
# E[L_n] on a 100-d Gaussian and -1.5% to -2% against HMC and adjusted MCLMC on this MLP in every seed
# we ran. The default is now 5e-6 (within 1 SE on a tanh MLP: tests/test_reference_agreement.py);
# this allowance, on top of the Monte Carlo error, stays until this ReLU MLP is measured again.
MCLMC_BIAS_ALLOWANCE = 0.025
SGLD_BOUND = 0.10


@pytest.mark.slow
def test_relu_teacher_student_samplers_agree(tmp_path):
    cfg = build_config("quick", RELU_OVERRIDES)  # ReLU MLP 16 -> 23 -> 23 -> 1: 967 parameters
    target = get_target(cfg, tmp_path)
    post = make_posterior(target.loss_fn, target.params, target.x, target.y, cfg.posterior, L0=target.L0)
    assert 800 <= post.dim <= 1200
    print(f"\nReLU teacher-student d={post.dim} n={post.n} n*beta={post.nbeta:.1f} gamma={post.gamma}")
    results = {}
    for name in ("hmc", "mclmc", "mclmc_adjusted", "sgld"):
        out = sample_one(name, post, getattr(cfg, name), jax.random.key(4))
        m = llc_metrics(out.Ln, post.L0, post.nbeta, out.theta_proj)
        _report(name, m)
        assert m["diverged_chains"] == 0, (name, out.info)
        results[name] = m
    ref = results["hmc"]["llc_mean"]
    pairs = [("hmc", "mclmc_adjusted", 0.0), ("hmc", "mclmc", MCLMC_BIAS_ALLOWANCE),
             ("mclmc_adjusted", "mclmc", MCLMC_BIAS_ALLOWANCE)]
    for a, b, allowance in pairs:
        diff = results[a]["llc_mean"] - results[b]["llc_mean"]
        se = math.hypot(results[a]["llc_se"], results[b]["llc_se"])
        print(f"  {a} - {b}: {diff:+.3f} = {diff / ref:+.1%} ({diff / se:+.1f} combined SE)")
        assert abs(diff) < AGREE_Z * se + allowance * ref, f"{a} vs {b}: differ by {diff:+.3f} = {diff / se:+.1f} SE"
    # SGLD is not asserted to agree: its minibatch gradient noise and finite step size bias it
    # (by a few percent here at the default step size); the bound only catches breakage.
    rel = results["sgld"]["llc_mean"] / ref - 1.0
    se = math.hypot(results["sgld"]["llc_se"], results["hmc"]["llc_se"]) / ref
    print(f"  sgld - hmc: {rel:+.1%} of hmc (combined SE {se:.1%})")
    assert abs(rel) < SGLD_BOUND
