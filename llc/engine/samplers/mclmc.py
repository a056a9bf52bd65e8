"""Unadjusted microcanonical Langevin Monte Carlo (MCLMC) on BlackJAX.

Tuning: ``blackjax.mclmc_find_L_and_step_size``, the official three-phase tuner (step size from
the energy-error variance ``desired_energy_var`` per dimension, an optional diagonal
preconditioner from the phase-2 moments, then the momentum decoherence length ``L`` from the
autocorrelation of phase 3). ``warmup`` is the tuner's budget: its three phases get a third each
(plus a third of phase 2 again to re-tune the step size after preconditioning). Two additions
around it, both found necessary on LLC posteriors:

* the tuner starts from BlackJAX's default L and step size rescaled to the posterior's narrowest
  width at w* (``fullbatch.stiffest_scale``) instead of unit scale;
* an energy check (``energy_check_steps`` after the tuner) shrinks the step size of chains whose
  realized mean squared energy error exceeds the target: the tuner's robust average ignores the
  heavy tail of energy errors on ReLU losses, and such chains overestimated lambda-hat by up to
  50% in our runs on the quick preset's MLP.

Per chain (vmapped) or once on chain 0 (``adaptation="shared"``, all chains then start from
chain 0's tuned state with their own random streams).

Sampling: ``eval_every`` integrator steps per kept draw. MCLMC has no accept/reject step, so its
draws are biased by the integration error (about -2% in E[L_n] on a Gaussian at the default
``desired_energy_var``). Per-draw statistics: ``energy_change`` and ``kinetic_change`` of the
draw's last step, and ``nan_steps`` (steps BlackJAX reverted because they produced a non-finite
state).

The tuner returns only its final state, so ``Ln_warmup`` is empty (chains, 0).
"""

from __future__ import annotations

from typing import NamedTuple

import blackjax
import jax
import jax.numpy as jnp
import numpy as np
from blackjax.adaptation.mclmc_adaptation import MCLMCAdaptationState

from llc.config import MCLMCConfig
from llc.engine import driver
from llc.engine.samplers import fullbatch

# Tuner phase fractions of ``warmup`` (step size; step size + preconditioner; L).
TUNE_FRACTIONS = (1 / 3, 1 / 3, 1 / 3)
# The energy check after the tuner runs ``energy_check_steps`` steps in this many rounds.
ENERGY_CHECK_ROUNDS = 3


class MCLMCParams(NamedTuple):
    """Runtime hyperparameters; the tuner fills L, step_size and inverse_mass per chain."""

    L: jax.Array
    step_size: jax.Array
    inverse_mass: jax.Array
    desired_energy_var: jax.Array
    scale: jax.Array  # the posterior's narrowest width at w* (fullbatch.stiffest_scale)


def tuning_steps(warmup: int, diagonal_preconditioning: bool) -> int:
    """Integrator steps the BlackJAX tuner takes for a given ``warmup``, with its own rounding
    (counted from its code: its returned count rounds the re-tuning phase differently)."""
    f1, f2, f3 = TUNE_FRACTIONS
    n1, n2, n3 = round(warmup * f1), round(warmup * f2), round(warmup * f3)
    extra = round(n2 / 3) if diagonal_preconditioning and n2 > 1 else 0
    return n1 + n2 + extra + (n3 if n3 >= 2 else 0)


def make(cfg: MCLMCConfig) -> driver.Algorithm:
    dtype = jnp.dtype(cfg.dtype)
    wide = jnp.result_type(float)  # the tuners' own float type (float64 under x64)
    kernel = fullbatch.dtype_preserving(blackjax.mcmc.mclmc.build_kernel(
        integrator=fullbatch.isokinetic_integrator(cfg.integrator)))
    one = jnp.ones((), dtype)
    params = MCLMCParams(one, one, one, jnp.asarray(cfg.desired_energy_var, wide), one)
    f1, f2, f3 = TUNE_FRACTIONS

    def energy_check(problem, state, L, eps, imm, desired, key):
        """Shrink the step size until the realized energy-error variance meets the target.

        BlackJAX's tuner down-weights large energy errors (a robust average), which on non-smooth
        losses (ReLU kinks) leaves heavy-tailed errors far above ``desired_energy_var`` and biases
        L_n. Here the plain mean of dE^2/d over each round sets eps <- eps * min(1, (desired /
        realized)^(1/6)) (Var dE ~ eps^6 for these integrators), for ENERGY_CHECK_ROUNDS rounds.
        """
        dim = problem.position0.shape[0]
        per_round = cfg.energy_check_steps // ENERGY_CHECK_ROUNDS

        def one_round(carry, k):
            state, eps = carry

            def step(s, kk):
                s, info = kernel(kk, s, problem.logdensity, imm, L, eps)
                return s, info.energy_change

            state, de = jax.lax.scan(step, state, jax.random.split(k, per_round))
            realized = jnp.mean(de**2) / dim
            ratio = desired / jnp.maximum(realized, 1e-300)
            factor = jnp.where(jnp.isfinite(ratio), jnp.minimum(1.0, ratio ** (1.0 / 6.0)), 1.0)
            return (state, eps * factor), (realized, factor)

        if per_round == 0:
            return state, eps, (jnp.full((0,), jnp.nan, dtype), jnp.ones((0,), dtype))
        (state, eps), check = jax.lax.scan(one_round, (state, eps), jax.random.split(key, ENERGY_CHECK_ROUNDS))
        return state, eps, check

    def warmup(key, position, problem, params):
        k_init, k_tune, k_scale, k_check = jax.random.split(key, 4)
        state = blackjax.mcmc.mclmc.init(position, problem.logdensity, k_init)
        dim = position.shape[0]
        # BlackJAX's starting values (L = sqrt(d), eps = L/4) rescaled to the posterior's
        # narrowest width (see fullbatch.stiffest_scale).
        scale = fullbatch.stiffest_scale(problem.logdensity, position, k_scale).astype(wide)
        L0 = jnp.sqrt(jnp.asarray(dim, wide)) * scale
        start = MCLMCAdaptationState(L0, 0.25 * L0, jnp.ones(position.shape, wide))
        if cfg.warmup == 0:
            L, eps, imm, check = start.L, start.step_size, start.inverse_mass_matrix, None
        else:
            state, tuned, _ = blackjax.mclmc_find_L_and_step_size(
                mclmc_kernel=kernel, logdensity_fn=problem.logdensity, num_steps=cfg.warmup,
                state=state, rng_key=k_tune, frac_tune1=f1, frac_tune2=f2, frac_tune3=f3,
                desired_energy_var=params.desired_energy_var,
                diagonal_preconditioning=cfg.diagonal_preconditioning, params=start)
            L, imm = tuned.L, jnp.broadcast_to(jnp.asarray(tuned.inverse_mass_matrix), position.shape)
            state, eps, check = energy_check(problem, state, tuned.L, tuned.step_size, imm,
                                             params.desired_energy_var, k_check)
        tuned_params = params._replace(L=L.astype(dtype), step_size=eps.astype(dtype), inverse_mass=imm.astype(dtype),
                                       scale=scale.astype(dtype))
        return fullbatch.cast_floats(state, dtype), tuned_params, {"check": check}

    def step(key, state, problem, params):
        return kernel(key, state, problem.logdensity, params.inverse_mass, params.L, params.step_size)

    def record(infos, **_):
        return {"energy_change": infos.energy_change[-1].astype(dtype),
                "kinetic_change": infos.kinetic_change[-1].astype(dtype),
                "nan_steps": jnp.sum(~infos.nonans).astype(jnp.int32)}

    def summarize(stats, warm, params, post):
        n_tune = 1 if cfg.adaptation == "shared" else cfg.chains
        per_step = fullbatch.grads_per_isokinetic_step(cfg.integrator)
        warm_steps = 0
        if cfg.warmup:
            check_steps = (cfg.energy_check_steps // ENERGY_CHECK_ROUNDS) * ENERGY_CHECK_ROUNDS
            warm_steps = tuning_steps(cfg.warmup, cfg.diagonal_preconditioning) + check_steps
        warm_grads = float(n_tune * (warm_steps * per_step + 1))  # + the initial gradient
        grads = warm_grads + float(cfg.chains * cfg.draws * cfg.eval_every * per_step)
        problems, tuned = fullbatch.isokinetic_tuning(params.L, params.step_size, params.inverse_mass, params.scale)
        # Per chain: total step-size factor of the energy check, and the energy-error variance
        # (per dimension) it measured in its first round, i.e. with the tuner's step size.
        check = warm.get("check") if warm else None
        if check is not None and np.size(check[0]):
            realized = np.asarray(check[0], np.float64)[:, 0]
            shrink = np.prod(np.asarray(check[1], np.float64), axis=1)
            if realized.shape[0] != cfg.chains:
                realized, shrink = np.repeat(realized, cfg.chains), np.repeat(shrink, cfg.chains)
        else:
            realized, shrink = np.zeros(0), np.zeros(0)
        energy_change = np.asarray(stats["energy_change"], np.float64)
        info = {
            "adaptation": cfg.adaptation, "integrator": cfg.integrator, **tuned,
            "desired_energy_var": cfg.desired_energy_var,
            # The tuner's target: Var[energy change] / d; compare with desired_energy_var.
            "energy_var_per_dim": float(np.nanmean(energy_change**2) / post.dim),
            "nan_steps": int(np.sum(stats["nan_steps"])), "eval_every": cfg.eval_every,
            "warmup_steps": warm_steps, "grad_evals_warmup": warm_grads,
            "energy_check_shrink_per_chain": [float(v) for v in shrink],
            "energy_check_realized_per_chain": [float(v) for v in realized],
        }
        return {"n_grad_evals": grads, "fde": grads}, info, problems

    return driver.Algorithm(
        name="mclmc", init=None, step=step, params=params,
        static=(cfg.integrator, cfg.warmup, cfg.energy_check_steps, cfg.diagonal_preconditioning),
        chains=cfg.chains, draws=cfg.draws, steps_per_draw=cfg.eval_every, flat=True, dtype=cfg.dtype,
        warmup=warmup, warmup_chains=1 if cfg.adaptation == "shared" else cfg.chains,
        loss_of=lambda state, problem: problem.loss_from_logdensity(state.position, state.logdensity),
        record=record, summarize=summarize)
