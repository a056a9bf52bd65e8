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


import blackjax
import jax
import jax.numpy as jnp
import numpy as np
from blackjax.adaptation.mclmc_adaptation import MCLMCAdaptationState
from blackjax.mcmc import adjusted_mclmc_dynamic

from llc.config import MCLMCAdjustedConfig
from llc.engine.posterior import Posterior
from llc.engine.samplers import base, fullbatch

# Tuner fractions of ``warmup``: (dual-averaging pass, moment-collection window); the tuner then
# runs a second dual-averaging pass as long as the first, so the total is ``warmup``.
TUNE_FRACTIONS = (1 / 3, 1 / 3)


def run(post: Posterior, cfg: MCLMCAdjustedConfig, key: jax.Array, *, proj_dim: int = 4,
        progress: base.ProgressFn = base.no_progress) -> base.SamplerOutput:
    post, data, _, make_problem = fullbatch.setup(post, cfg.dtype, proj_dim)
    name = "mclmc_adjusted"
    dtype = jnp.dtype(cfg.dtype)
    wide = jnp.result_type(float)  # the tuners' own float type (float64 under x64)
    integrator = fullbatch.isokinetic_integrator(cfg.integrator)
    dyn_kernel = fullbatch.dtype_preserving(adjusted_mclmc_dynamic.build_kernel(
        integrator=integrator,
        integration_steps_fn=adjusted_mclmc_dynamic.make_random_trajectory_length_fn(True)))

    def kernel(rng_key, state, logdensity_fn, step_size, inverse_mass_matrix, integration_steps_params):
        # The signature the tuner calls; L_proposal_factor=inf: no momentum noise within a trajectory.
        return dyn_kernel(rng_key, state, logdensity_fn, step_size, L_proposal_factor=jnp.inf,
                          inverse_mass_matrix=inverse_mass_matrix,
                          integration_steps_params=integration_steps_params)

    n_adapt = 1 if cfg.adaptation == "shared" else cfg.chains
    k_warm, k_sample = jax.random.split(key)
    warm_keys = base.chain_keys(k_warm, n_adapt)
    f1, f2 = TUNE_FRACTIONS

    # ------------------------------------------------------------------ tuning
    def warmup(keys, data):
        problem = make_problem(data)

        def one_chain(k):
            k_init, k_tune, k_scale = jax.random.split(k, 3)
            state = adjusted_mclmc_dynamic.init(problem.x_star, problem.logdensity, k_init)
            dim = problem.x_star.shape[0]
            # BlackJAX's starting step size (sqrt(d)/5) rescaled to the posterior's narrowest
            # width: from the unit-scale default, dual averaging shrinks the step by orders of
            # magnitude while L stays pinned, and trajectories grow to thousands of steps.
            scale = fullbatch.stiffest_scale(problem.logdensity, problem.x_star, k_scale).astype(wide)
            eps0 = 0.2 * jnp.sqrt(jnp.asarray(dim, wide)) * scale
            L0 = cfg.target_num_integration_steps * eps0
            start = MCLMCAdaptationState(L0, eps0, jnp.ones(problem.x_star.shape, wide))
            if cfg.warmup == 0:
                return state, L0, eps0, start.inverse_mass_matrix, jnp.zeros((), jnp.int32), scale
            state, params, n_steps = blackjax.adjusted_mclmc_find_L_and_step_size(
                mclmc_kernel=kernel, logdensity_fn=problem.logdensity, num_steps=cfg.warmup, state=state,
                rng_key=k_tune, target=cfg.target_accept, frac_tune1=f1, frac_tune2=f2, frac_tune3=0.0,
                diagonal_preconditioning=cfg.diagonal_preconditioning,
                target_num_integration_steps=cfg.target_num_integration_steps, params=start)
            imm = jnp.broadcast_to(jnp.asarray(params.inverse_mass_matrix), problem.x_star.shape)
            return state, params.L, params.step_size, imm, jnp.asarray(n_steps, jnp.int32), scale

        states, L, step_size, imm, n_steps, scale = jax.vmap(one_chain)(keys)
        return fullbatch.cast_floats(states, dtype), L.astype(dtype), step_size.astype(dtype), imm.astype(dtype), n_steps, scale

    (states, L, step_size, imm, warm_steps, scale), warm_compile_s, warmup_s = fullbatch.run_warmup(
        warmup, warm_keys, data, cfg.warmup, progress)
    per_step = fullbatch.grads_per_isokinetic_step(cfg.integrator)
    warm_grads = float(np.sum(np.asarray(warm_steps, np.float64)) * per_step + n_adapt)

    if cfg.adaptation == "shared":
        states, L, step_size, imm, scale = fullbatch.from_first_chain((states, L, step_size, imm, scale), cfg.chains)

    # ------------------------------------------------------------------ sampling
    size = base.chunk_size(cfg.draws)

    def chunk(carry, keys, chunk_index, data):
        states, L, eps, imm = carry
        problem = make_problem(data)

        def one_chain(state, L, eps, imm, draw_keys):
            def one_draw(state, k):
                new, info = kernel(k, state, problem.logdensity, eps, imm, (L / eps,))
                Ln = fullbatch.loss_from_logdensity(post, problem, new.position, new.logdensity)
                theta = problem.project(new.position)
                stats = {
                    "acceptance_rate": info.acceptance_rate.astype(dtype),
                    "diverging": info.is_divergent,
                    "num_integration_steps": jnp.asarray(info.num_integration_steps, jnp.int32),
                }
                return new, (Ln, theta, stats)

            return jax.lax.scan(one_draw, state, draw_keys)

        draw_keys = base.chunk_draw_keys(keys, chunk_index, size)
        new_states, out = jax.vmap(one_chain)(states, L, eps, imm, draw_keys)
        return (new_states, L, eps, imm), out

    keys = base.chain_keys(k_sample, cfg.chains)
    carry = (states, L, step_size, imm)
    compiled, compile_s = base.compile_timed(chunk, carry, keys, jnp.asarray(0, jnp.int32), data)
    _, (Ln, theta, stats), wall = base.run_chunks(compiled, carry, keys, cfg.draws, size, data, progress, name)

    sample_grads = float(np.sum(stats["num_integration_steps"], dtype=np.float64) * per_step)
    grads = warm_grads + sample_grads
    work = fullbatch.work_record(grads, warmup_s, wall, warm_compile_s + compile_s)
    problems, tuned = fullbatch.isokinetic_tuning(L, step_size, imm, scale)
    info = {
        "adaptation": cfg.adaptation,
        "integrator": cfg.integrator,
        **tuned,
        "target_accept": cfg.target_accept,
        "mean_accept": float(np.nanmean(stats["acceptance_rate"])),
        "mean_integration_steps": float(np.mean(stats["num_integration_steps"])),
        "divergences": int(np.sum(stats["diverging"])),
        "warmup_steps": cfg.warmup,
        "grad_evals_warmup": warm_grads,
        "compile_s_warmup": warm_compile_s,
    }
    Ln_warm = np.zeros((cfg.chains, 0))
    return fullbatch.finalize(name, Ln, Ln_warm, theta, stats, work, info, problems)
