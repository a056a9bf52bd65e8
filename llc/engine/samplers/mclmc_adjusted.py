"""Metropolis-adjusted MCLMC (BlackJAX's ``adjusted_mclmc_dynamic``) with its own tuner.

Each transition integrates the isokinetic dynamics for a random number of steps (uniform with
mean ``L / step_size``) and accepts or rejects the endpoint, so unlike unadjusted MCLMC its
draws are unbiased at any step size. Tuning: ``blackjax.adjusted_mclmc_find_L_and_step_size``
(dual averaging of the step size towards ``target_accept``, a diagonal preconditioner from the
position moments, L tied to ``target_num_integration_steps * step_size`` as BlackJAX
recommends); ``warmup`` transitions in total (two passes of a third each, plus a third that
feeds the moment estimates). The tuner starts from BlackJAX's default step size rescaled to the
posterior's narrowest width at w* (``fullbatch.stiffest_scale``): from the unit-scale default,
on a DLN posterior its warm-up took 7 million gradient evaluations. Per chain (vmapped) or once
on chain 0 (``adaptation="shared"``).

Per-draw statistics: ``acceptance_rate``, ``diverging``, ``num_integration_steps``. BlackJAX's
info carries the proposal's log density but not its kinetic energy change, so no
``energy_change`` is recorded. The tuner returns only its final state: ``Ln_warmup`` is empty.
"""

from __future__ import annotations

from typing import NamedTuple

import blackjax
import jax
import jax.numpy as jnp
import numpy as np
from blackjax.adaptation.mclmc_adaptation import MCLMCAdaptationState
from blackjax.mcmc import adjusted_mclmc_dynamic

from llc.config import MCLMCAdjustedConfig
from llc.engine import driver
from llc.engine.samplers import fullbatch

# Tuner fractions of ``warmup``: (dual-averaging pass, moment-collection window); the tuner then
# runs a second dual-averaging pass as long as the first, so the total is ``warmup``.
TUNE_FRACTIONS = (1 / 3, 1 / 3)


# Settings of the shared contract tests (tests/test_sampler_contract.py) on N(0, I_20).
GAUSSIAN_TEST = {"chains": 4, "draws": 1500, "warmup": 1000}
# Known defect: a run batched with others (even identical ones) tunes a step size ~1% off the one
# it tunes alone, so its draws differ; the contract test expects this failure until it is fixed.
BATCHED_EQUALS_ALONE = False

class AdjustedMCLMCParams(NamedTuple):
    L: jax.Array
    step_size: jax.Array
    inverse_mass: jax.Array
    target_accept: jax.Array
    scale: jax.Array


def make(cfg: MCLMCAdjustedConfig) -> driver.Algorithm:
    dtype = jnp.dtype(cfg.dtype)
    wide = jnp.result_type(float)  # the tuners' own float type (float64 under x64)
    dyn_kernel = fullbatch.dtype_preserving(adjusted_mclmc_dynamic.build_kernel(
        integrator=fullbatch.isokinetic_integrator(cfg.integrator),
        integration_steps_fn=adjusted_mclmc_dynamic.make_random_trajectory_length_fn(True)))

    def kernel(rng_key, state, logdensity_fn, step_size, inverse_mass_matrix, integration_steps_params):
        # The signature the tuner calls; L_proposal_factor=inf: no momentum noise within a trajectory.
        return dyn_kernel(rng_key, state, logdensity_fn, step_size, L_proposal_factor=jnp.inf,
                          inverse_mass_matrix=inverse_mass_matrix,
                          integration_steps_params=integration_steps_params)

    one = np.ones((), dtype)
    params = AdjustedMCLMCParams(one, one, one, np.asarray(cfg.target_accept, wide), one)
    f1, f2 = TUNE_FRACTIONS

    def warmup(key, position, problem, params):
        k_init, k_tune, k_scale = jax.random.split(key, 3)
        state = adjusted_mclmc_dynamic.init(position, problem.logdensity, k_init)
        dim = position.shape[0]
        # BlackJAX's starting step size (sqrt(d)/5) rescaled to the posterior's narrowest width:
        # from the unit-scale default, dual averaging shrinks the step by orders of magnitude
        # while L stays pinned, and trajectories grow to thousands of steps.
        scale = fullbatch.stiffest_scale(problem.logdensity, position, k_scale).astype(wide)
        eps0 = 0.2 * jnp.sqrt(jnp.asarray(dim, wide)) * scale
        L0 = cfg.target_num_integration_steps * eps0
        start = MCLMCAdaptationState(L0, eps0, jnp.ones(position.shape, wide))
        if cfg.warmup == 0:
            L, eps, imm, n_steps = L0, eps0, start.inverse_mass_matrix, jnp.zeros((), jnp.int32)
        else:
            state, tuned, n_steps = blackjax.adjusted_mclmc_find_L_and_step_size(
                mclmc_kernel=kernel, logdensity_fn=problem.logdensity, num_steps=cfg.warmup, state=state,
                rng_key=k_tune, target=params.target_accept, frac_tune1=f1, frac_tune2=f2, frac_tune3=0.0,
                diagonal_preconditioning=cfg.diagonal_preconditioning,
                target_num_integration_steps=cfg.target_num_integration_steps, params=start)
            L, eps = tuned.L, tuned.step_size
            imm = jnp.broadcast_to(jnp.asarray(tuned.inverse_mass_matrix), position.shape)
        tuned_params = params._replace(L=L.astype(dtype), step_size=eps.astype(dtype),
                                       inverse_mass=imm.astype(dtype), scale=scale.astype(dtype))
        return fullbatch.cast_floats(state, dtype), tuned_params, {"steps": jnp.asarray(n_steps, jnp.int32)}

    def step(key, state, problem, params):
        new, info = kernel(key, state, problem.logdensity, params.step_size, params.inverse_mass,
                           (params.L / params.step_size,))
        return new, {"acceptance_rate": info.acceptance_rate.astype(dtype), "diverging": info.is_divergent,
                     "num_integration_steps": jnp.asarray(info.num_integration_steps, jnp.int32)}

    def summarize(stats, warm, params, post):
        del post
        n_tune = 1 if cfg.adaptation == "shared" else cfg.chains
        per_step = fullbatch.grads_per_isokinetic_step(cfg.integrator)
        warm_grads = float(np.sum(np.asarray(warm["steps"], np.float64)) * per_step + n_tune)
        grads = warm_grads + float(np.sum(stats["num_integration_steps"], dtype=np.float64) * per_step)
        problems, tuned = fullbatch.isokinetic_tuning(params.L, params.step_size, params.inverse_mass, params.scale)
        info = {
            "adaptation": cfg.adaptation, "integrator": cfg.integrator, **tuned,
            "target_accept": cfg.target_accept, "mean_accept": float(np.nanmean(stats["acceptance_rate"])),
            "mean_integration_steps": float(np.mean(stats["num_integration_steps"])),
            "divergences": int(np.sum(stats["diverging"])), "warmup_steps": cfg.warmup,
            "grad_evals_warmup": warm_grads,
        }
        return {"n_grad_evals": grads, "fde": grads}, info, problems

    return driver.Algorithm(
        name="mclmc_adjusted", init=None, step=step, params=params,
        static=cfg.signature(),
        chains=cfg.chains, draws=cfg.draws, flat=True, dtype=cfg.dtype, warmup=warmup,
        warmup_chains=1 if cfg.adaptation == "shared" else cfg.chains,
        loss_of=lambda state, problem: problem.loss_from_logdensity(state.position, state.logdensity),
        record=lambda infos, **_: jax.tree.map(lambda a: a[-1], infos), summarize=summarize)
