"""Full-batch HMC (or NUTS) on BlackJAX, tuned by Stan-style window adaptation.

Warm-up: ``blackjax.window_adaptation`` adapts the step size (dual averaging towards
``target_accept``) and a diagonal inverse mass matrix over ``warmup`` transitions, per chain
(vmapped) or once on chain 0 (``adaptation="shared"``; every chain then starts from chain 0's
adapted state with its own random stream). Sampling: one HMC transition per kept draw, in chunks
of one compiled ``vmap``-over-chains ``lax.scan``.

Per-draw statistics follow ArviZ's names: ``acceptance_rate``, ``energy`` (the Hamiltonian of
the state kept by the transition, what ``az.plot_energy`` and BFMI want), ``diverging``,
``step_size``, ``num_integration_steps`` (and ``tree_depth`` for NUTS).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import NamedTuple

import blackjax
import jax
import jax.numpy as jnp
import numpy as np

from llc.config import HMCConfig
from llc.engine import driver
from llc.engine.samplers import fullbatch


# Settings of the shared contract tests (tests/test_sampler_contract.py) on N(0, I_20): an ESS
# of a few thousand per direction in a few seconds.
GAUSSIAN_TEST = {"chains": 4, "draws": 1000, "warmup": 300}

class HMCParams(NamedTuple):
    """Runtime hyperparameters; window adaptation replaces step_size and inverse_mass per chain."""

    step_size: jax.Array
    inverse_mass: jax.Array  # diagonal, (d,) after adaptation; a scalar 1 before
    target_accept: jax.Array
    jitter: jax.Array  # sampling step size drawn uniformly in eps * (1 +- jitter)


def _algorithm(nuts: bool):
    """``blackjax.hmc`` or ``blackjax.nuts`` with a kernel that keeps the chain's dtype."""
    module = blackjax.nuts if nuts else blackjax.hmc

    def build_kernel(integrator=blackjax.mcmc.integrators.velocity_verlet):
        return fullbatch.dtype_preserving(module.build_kernel(integrator))

    return SimpleNamespace(init=module.init, build_kernel=build_kernel)


def make(cfg: HMCConfig) -> driver.Algorithm:
    dtype = jnp.dtype(cfg.dtype)
    algorithm = _algorithm(cfg.nuts)
    kernel = algorithm.build_kernel()
    # The trajectory length shapes the integrator loop, so it is structural (static), as is NUTS's depth.
    extra = {"max_num_doublings": cfg.max_tree_depth} if cfg.nuts else {"num_integration_steps": cfg.num_integration_steps}
    params = HMCParams(np.asarray(cfg.step_size, dtype), np.ones((), dtype), np.asarray(cfg.target_accept, dtype),
                       np.asarray(0.0 if cfg.nuts else cfg.step_size_jitter, dtype))

    def warmup(key, position, problem, params):
        def info_fn(state, info, adaptation_state):
            # Keep only scalars per step (the default keeps every state: memory grows with d).
            del adaptation_state
            return (problem.loss_from_logdensity(state.position, state.logdensity),
                    jnp.asarray(info.num_integration_steps, jnp.int32))

        if cfg.warmup == 0:
            state = algorithm.init(position, problem.logdensity)
            trace = (jnp.zeros((0,), dtype), jnp.zeros((0,), jnp.int32))
            return state, params._replace(inverse_mass=jnp.ones_like(position)), {"Ln": trace[0], "steps": trace[1]}
        # BlackJAX's dual averaging runs in the default float type (float64 under x64): a float32
        # initial step size would give its branches different dtypes.
        wide = jnp.result_type(float)
        adaptation = blackjax.window_adaptation(
            algorithm, problem.logdensity, is_mass_matrix_diagonal=True,
            initial_step_size=params.step_size.astype(wide), target_acceptance_rate=params.target_accept.astype(wide),
            adaptation_info_fn=info_fn, **extra)
        (state, tuned), (Ln, steps) = adaptation.run(key, position, num_steps=cfg.warmup)
        # Keep the carry in the sampler's dtype (the step-size adaptation works in float64 under x64).
        state = fullbatch.cast_floats(state, dtype)
        tuned_params = params._replace(step_size=tuned["step_size"].astype(dtype),
                                       inverse_mass=tuned["inverse_mass_matrix"].astype(dtype))
        return state, tuned_params, {"Ln": Ln, "steps": steps}

    def step(key, state, problem, params):
        k_jitter, k_kernel = jax.random.split(key)
        # Step-size jitter breaks the resonances of a fixed trajectory length (on a Gaussian,
        # T near a multiple of the half period makes L_n draws correlated).
        u = jax.random.uniform(k_jitter, (), dtype, -1.0, 1.0)
        eps = params.step_size * (1.0 + params.jitter * u)
        imm = params.inverse_mass
        new, info = kernel(k_kernel, state, problem.logdensity, eps, imm, **extra)
        if cfg.nuts:
            energy = info.energy  # energy of the sampled trajectory point
        else:
            # BlackJAX reports the proposal's energy; a rejected transition keeps the initial
            # point, whose energy is that of the freshly drawn momentum.
            h0 = -state.logdensity + 0.5 * jnp.sum(imm * info.momentum**2)
            energy = jnp.where(info.is_accepted, info.energy, h0)
        stats = {"acceptance_rate": info.acceptance_rate.astype(dtype), "energy": energy.astype(dtype),
                 "diverging": info.is_divergent,
                 "num_integration_steps": jnp.asarray(info.num_integration_steps, jnp.int32), "step_size": eps}
        if cfg.nuts:
            stats["tree_depth"] = jnp.asarray(info.num_trajectory_expansions, jnp.int32)
        return new, stats

    def summarize(stats, warm, params, post):
        del post
        n_tune = 1 if cfg.adaptation == "shared" else cfg.chains
        warm_grads = float(np.sum(np.asarray(warm["steps"], np.float64))) + n_tune  # + initial gradient
        grads = warm_grads + float(np.sum(stats["num_integration_steps"], dtype=np.float64))
        eps, imm = np.asarray(params.step_size, np.float64), np.asarray(params.inverse_mass, np.float64)
        problems = {"non-finite or non-positive tuned parameters": fullbatch.bad_parameters(eps, imm)}
        imm_summary = fullbatch.summary(imm)
        info = {
            "algorithm": "nuts" if cfg.nuts else "hmc", "adaptation": cfg.adaptation,
            "step_size": fullbatch.summary(eps)["mean"], "step_size_per_chain": [float(v) for v in eps],
            "inv_mass_mean": imm_summary["mean"], "inv_mass_min": imm_summary["min"],
            "inv_mass_max": imm_summary["max"], "target_accept": cfg.target_accept,
            "mean_accept": float(np.nanmean(stats["acceptance_rate"])),
            "divergences": int(np.sum(stats["diverging"])), "warmup_steps": cfg.warmup,
            "grad_evals_warmup": warm_grads,
        }
        if cfg.nuts:
            info.update(max_tree_depth=cfg.max_tree_depth, mean_tree_depth=float(np.mean(stats["tree_depth"])))
        else:
            info["num_integration_steps"] = cfg.num_integration_steps
        return {"n_grad_evals": grads, "fde": grads}, info, problems

    return driver.Algorithm(
        name="hmc", init=None, step=step, params=params,
        static=cfg.signature(),
        chains=cfg.chains, draws=cfg.draws, flat=True, dtype=cfg.dtype, warmup=warmup,
        warmup_chains=1 if cfg.adaptation == "shared" else cfg.chains,
        loss_of=lambda state, problem: problem.loss_from_logdensity(state.position, state.logdensity),
        record=lambda infos, **_: jax.tree.map(lambda a: a[-1], infos), summarize=summarize)
