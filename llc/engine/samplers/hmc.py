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

import blackjax
import jax
import jax.numpy as jnp
import numpy as np

from llc.config import HMCConfig
from llc.engine.posterior import Posterior
from llc.engine.samplers import base, fullbatch


def _kernel_args(cfg: HMCConfig) -> dict:
    if cfg.nuts:
        return {"max_num_doublings": cfg.max_tree_depth}
    return {"num_integration_steps": cfg.num_integration_steps}


def _algorithm(cfg: HMCConfig):
    """``blackjax.hmc`` or ``blackjax.nuts`` with a kernel that keeps the chain's dtype."""
    module = blackjax.nuts if cfg.nuts else blackjax.hmc

    def build_kernel(integrator=blackjax.mcmc.integrators.velocity_verlet):
        return fullbatch.dtype_preserving(module.build_kernel(integrator))

    return SimpleNamespace(init=module.init, build_kernel=build_kernel)


def run(post: Posterior, cfg: HMCConfig, key: jax.Array, *, proj_dim: int = 4,
        progress: base.ProgressFn = base.no_progress) -> base.SamplerOutput:
    post, data, _, make_problem = fullbatch.setup(post, cfg.dtype, proj_dim)
    name = "hmc"
    algorithm = _algorithm(cfg)
    extra = _kernel_args(cfg)
    dtype = jnp.dtype(cfg.dtype)
    n_adapt = 1 if cfg.adaptation == "shared" else cfg.chains
    k_warm, k_sample = jax.random.split(key)
    warm_keys = base.chain_keys(k_warm, n_adapt)

    # ------------------------------------------------------------------ warm-up
    def warmup(keys, data):
        problem = make_problem(data)

        def info_fn(state, info, adaptation_state):
            # Keep only scalars per step (the default keeps every state: memory grows with d).
            del adaptation_state
            Ln = fullbatch.loss_from_logdensity(post, problem, state.position, state.logdensity)
            return Ln, jnp.asarray(info.num_integration_steps, jnp.int32)

        adaptation = blackjax.window_adaptation(
            algorithm, problem.logdensity, is_mass_matrix_diagonal=True,
            initial_step_size=cfg.step_size, target_acceptance_rate=cfg.target_accept,
            adaptation_info_fn=info_fn, **extra)

        def one_chain(k):
            if cfg.warmup == 0:
                state = algorithm.init(problem.x_star, problem.logdensity)
                trace = (jnp.zeros((0,), dtype), jnp.zeros((0,), jnp.int32))
                return state, jnp.asarray(cfg.step_size, dtype), jnp.ones_like(problem.x_star), trace
            (state, params), trace = adaptation.run(k, problem.x_star, num_steps=cfg.warmup)
            return state, params["step_size"], params["inverse_mass_matrix"], trace

        states, step_size, inv_mass, trace = jax.vmap(one_chain)(keys)
        # Keep the carry in the sampler's dtype (the step-size adaptation works in float64 under x64).
        states = fullbatch.cast_floats(states, dtype)
        return states, step_size.astype(dtype), inv_mass.astype(dtype), trace

    (states, step_size, inv_mass, (Ln_warm, warm_steps)), warm_compile_s, warmup_s = fullbatch.run_warmup(
        warmup, warm_keys, data, cfg.warmup, progress)
    warm_grads = float(np.sum(np.asarray(warm_steps, dtype=np.float64))) + n_adapt  # + initial gradient

    if cfg.adaptation == "shared":
        states, step_size, inv_mass = fullbatch.from_first_chain((states, step_size, inv_mass), cfg.chains)
        # Only chain 0 ran the adaptation; the other chains have no warm-up trace.
        Ln_warm = np.concatenate(
            [np.asarray(Ln_warm), np.full((cfg.chains - 1, cfg.warmup), np.nan)], axis=0)

    # ------------------------------------------------------------------ sampling
    size = base.chunk_size(cfg.draws)
    kernel = algorithm.build_kernel()

    def chunk(carry, keys, chunk_index, data):
        states, eps, imm = carry
        problem = make_problem(data)

        def one_chain(state, eps, imm, draw_keys):
            def one_draw(state, k):
                k_jitter, k_kernel = jax.random.split(k)
                # Step-size jitter breaks the resonances of a fixed trajectory length (on a
                # Gaussian, T near a multiple of the half period makes L_n draws correlated).
                u = jax.random.uniform(k_jitter, (), dtype, -1.0, 1.0)
                jitter = 0.0 if cfg.nuts else cfg.step_size_jitter
                step = eps * (1.0 + jitter * u)
                new, info = kernel(k_kernel, state, problem.logdensity, step, imm, **extra)
                if cfg.nuts:
                    energy = info.energy  # energy of the sampled trajectory point
                    depth = info.num_trajectory_expansions
                else:
                    # BlackJAX reports the proposal's energy; a rejected transition keeps the
                    # initial point, whose energy is that of the freshly drawn momentum.
                    h0 = -state.logdensity + 0.5 * jnp.sum(imm * info.momentum**2)
                    energy = jnp.where(info.is_accepted, info.energy, h0)
                    depth = None
                Ln = fullbatch.loss_from_logdensity(post, problem, new.position, new.logdensity)
                theta = problem.project(new.position)
                stats = {
                    "acceptance_rate": info.acceptance_rate.astype(dtype),
                    "energy": energy.astype(dtype),
                    "diverging": info.is_divergent,
                    "num_integration_steps": jnp.asarray(info.num_integration_steps, jnp.int32),
                    "step_size": step,
                }
                if depth is not None:
                    stats["tree_depth"] = jnp.asarray(depth, jnp.int32)
                return new, (Ln, theta, stats)

            return jax.lax.scan(one_draw, state, draw_keys)

        draw_keys = base.chunk_draw_keys(keys, chunk_index, size)
        new_states, out = jax.vmap(one_chain)(states, eps, imm, draw_keys)
        return (new_states, eps, imm), out

    keys = base.chain_keys(k_sample, cfg.chains)
    carry = (states, step_size, inv_mass)
    compiled, compile_s = base.compile_timed(chunk, carry, keys, jnp.asarray(0, jnp.int32), data)
    _, (Ln, theta, stats), wall = base.run_chunks(compiled, carry, keys, cfg.draws, size, data, progress, name)

    sample_grads = float(np.sum(stats["num_integration_steps"], dtype=np.float64))
    grads = warm_grads + sample_grads
    work = fullbatch.work_record(grads, warmup_s, wall, warm_compile_s + compile_s)
    eps_np = np.asarray(step_size, dtype=np.float64)
    imm_np = np.asarray(inv_mass, dtype=np.float64)
    problems = {"non-finite or non-positive tuned parameters": fullbatch.bad_parameters(eps_np, imm_np)}
    imm_summary = fullbatch.summary(imm_np)
    info = {
        "algorithm": "nuts" if cfg.nuts else "hmc",
        "adaptation": cfg.adaptation,
        "step_size": fullbatch.summary(eps_np)["mean"],
        "step_size_per_chain": [float(v) for v in eps_np],
        "inv_mass_mean": imm_summary["mean"],
        "inv_mass_min": imm_summary["min"],
        "inv_mass_max": imm_summary["max"],
        "target_accept": cfg.target_accept,
        "mean_accept": float(np.nanmean(stats["acceptance_rate"])),
        "divergences": int(np.sum(stats["diverging"])),
        "warmup_steps": cfg.warmup,
        "grad_evals_warmup": warm_grads,
        "compile_s_warmup": warm_compile_s,
    }
    if not cfg.nuts:
        info["num_integration_steps"] = cfg.num_integration_steps
    else:
        info["max_tree_depth"] = cfg.max_tree_depth
        info["mean_tree_depth"] = float(np.mean(stats["tree_depth"]))
    Ln_warm = np.asarray(Ln_warm, dtype=np.float64).reshape(cfg.chains, cfg.warmup)
    return fullbatch.finalize(name, Ln, Ln_warm, theta, stats, work, info, problems)
