"""Unadjusted microcanonical Langevin Monte Carlo (MCLMC) on BlackJAX.

Tuning follows BlackJAX's three-phase MCLMC tuner (``mclmc_find_L_and_step_size``): the step size
from the energy-error variance ``desired_energy_var`` per dimension, an optional diagonal
preconditioner from the phase-2 moments (then a third of phase 2 again to re-tune the step size),
and the momentum decoherence length ``L`` from the autocorrelation of phase 3. ``warmup`` is the
tuner's budget, a third per phase. Two additions, both found necessary on LLC posteriors:

* the tuner starts from BlackJAX's default L and step size rescaled to the posterior's narrowest
  width at w* (``fullbatch.stiffest_scale``) instead of unit scale;
* an energy check (``energy_check_steps`` after the tuner) shrinks the step size of chains whose
  realized mean squared energy error exceeds the target: the tuner's robust average ignores the
  heavy tail of energy errors on ReLU losses, and such chains overestimated lambda-hat by up to
  50% in our runs on the quick preset's MLP.

The phases and the check run as one ``lax.scan`` over a single copy of the BlackJAX kernel, with
BlackJAX's own step-size predictor formula, divergence handler (``handle_nans``), streaming
moments and ESS. Calling BlackJAX's tuner instead put five copies of the kernel into the
program (one per phase, the re-tuning and the check): a 32 s compile on an H100, more than half
of a quick run.

Per chain (vmapped) or once on chain 0 (``adaptation="shared"``, all chains then start from
chain 0's tuned state with their own random streams).

Sampling: ``eval_every`` integrator steps per kept draw. MCLMC has no accept/reject step, so its
draws are biased by the integration error: -1.7% in lambda-hat on a 100-d quadratic and -6.5% on a
tanh MLP at BlackJAX's ``desired_energy_var`` (5e-4), within 1 SE of exact or adjusted answers at
the default 5e-6 (``MCLMCConfig``). Per-draw statistics: ``energy_change`` and ``kinetic_change`` of the
draw's last step, and ``nan_steps`` (steps BlackJAX reverted because they produced a non-finite
state).

The tuner returns only its final state, so ``Ln_warmup`` is empty (chains, 0).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import blackjax
import jax
import jax.numpy as jnp
import numpy as np
from blackjax.adaptation.mclmc_adaptation import MCLMCAdaptationState, handle_nans
from blackjax.diagnostics import effective_sample_size
from blackjax.util import incremental_value_update

from llc.config import MCLMCConfig
from llc.engine import driver
from llc.engine.samplers import fullbatch

# Tuner phase fractions of ``warmup`` (step size; step size + preconditioner; L).
TUNE_FRACTIONS = (1 / 3, 1 / 3, 1 / 3)
# The energy check after the tuner runs ``energy_check_steps`` steps in this many rounds.
ENERGY_CHECK_ROUNDS = 3


# Settings of the shared contract tests (tests/test_sampler_contract.py) on N(0, I_20).
GAUSSIAN_TEST = {"chains": 4, "draws": 2000, "warmup": 1000}

class MCLMCParams(NamedTuple):
    """Runtime hyperparameters; the tuner fills L, step_size and inverse_mass per chain."""

    L: jax.Array
    step_size: jax.Array
    inverse_mass: jax.Array
    desired_energy_var: jax.Array
    scale: jax.Array  # the posterior's narrowest width at w* (fullbatch.stiffest_scale)


# BlackJAX's tuner constants (its defaults): the step-size estimate's effective memory, how far
# an energy error may stray before it is down-weighted, and L = L_FACTOR * eps * autocorrelation time.
NUM_EFFECTIVE_SAMPLES = 150
TRUST_IN_ESTIMATE = 1.5
L_FACTOR = 0.4


class TuningSchedule(NamedTuple):
    """Where each phase of the single-scan tuner ends (integrator steps, cumulative)."""

    n1: int
    n2: int
    n3: int
    end_phase2: int
    end_retune: int
    end_phase3: int
    per_round: int
    total: int

    @classmethod
    def of(cls, cfg: MCLMCConfig) -> "TuningSchedule":
        f1, f2, f3 = TUNE_FRACTIONS
        n1, n2, n3 = round(cfg.warmup * f1), round(cfg.warmup * f2), round(cfg.warmup * f3)
        n3 = n3 if n3 >= 2 else 0  # the autocorrelation needs at least two draws
        retune = round(n2 / 3) if cfg.diagonal_preconditioning and n2 > 1 else 0
        per_round = cfg.energy_check_steps // ENERGY_CHECK_ROUNDS
        end2 = n1 + n2
        end3 = end2 + retune + n3
        return cls(n1, n2, n3, end2, end2 + retune, end3, per_round, end3 + per_round * ENERGY_CHECK_ROUNDS)


def _adapt_step_size(eps, adapt, energy_change, dim: int, desired):
    """BlackJAX's predictor: a robust running estimate of the step size whose energy-error
    variance per dimension is ``desired`` (Var dE ~ eps^6)."""
    decay = (NUM_EFFECTIVE_SAMPLES - 1.0) / (NUM_EFFECTIVE_SAMPLES + 1.0)
    time, x_average, eps_max = adapt
    xi = jnp.square(energy_change) / (dim * desired) + 1e-8
    weight = jnp.exp(-0.5 * jnp.square(jnp.log(xi) / (6.0 * TRUST_IN_ESTIMATE)))
    x_average = decay * x_average + weight * (xi / jnp.power(eps, 6.0))
    time = decay * time + weight
    eps = jnp.minimum(jnp.power(x_average / time, -1.0 / 6.0), eps_max)
    return eps, (time, x_average, eps_max)


def _after_phase2(c, dim: int, diagonal_preconditioning: bool, fresh_adaptation, wide):
    """L from the variances of the step-size-weighted moments or, with the diagonal
    preconditioner, those variances as inverse mass and L = sqrt(d); the step-size estimate
    then restarts for the re-tuning steps."""
    mean, mean_sq = c["moments"][1]
    variances = mean_sq - jnp.square(mean)
    if diagonal_preconditioning:
        return {**c, "imm": variances, "L": jnp.sqrt(jnp.asarray(dim, wide)), "adapt": fresh_adaptation}
    return {**c, "L": jnp.sqrt(jnp.sum(variances))}


def _after_phase3(c, n3: int, wide):
    """L = L_FACTOR * eps * mean autocorrelation time of phase 3's positions (dimensions
    without a finite ESS carry no information; L stays if none has one)."""
    ess = effective_sample_size(c["samples"][None].astype(wide))
    tau = n3 / ess
    finite = jnp.isfinite(tau)
    L = jnp.where(jnp.any(finite), L_FACTOR * c["eps"] * jnp.mean(tau, where=finite), c["L"])
    return {**c, "L": L}


def _after_round(c, t, sched: TuningSchedule, dim: int, desired):
    """Energy check: eps <- eps * min(1, (desired / realized)^(1/6)) with the plain mean of
    dE^2/d over the round (the tuner's robust average ignores ReLU kinks' heavy tail)."""
    realized = c["dE2"] / (sched.per_round * dim)
    ratio = desired / jnp.maximum(realized, 1e-300)
    factor = jnp.where(jnp.isfinite(ratio), jnp.minimum(1.0, ratio ** (1.0 / 6.0)), 1.0)
    i = (t - sched.end_phase3) // sched.per_round
    realized_all, factors = c["check"]
    return {**c, "eps": c["eps"] * factor, "dE2": jnp.zeros_like(c["dE2"]),
            "check": (realized_all.at[i].set(realized), factors.at[i].set(factor))}


def _tune(cfg: MCLMCConfig, kernel, wide, dtype, problem, state, start, desired, key):
    """BlackJAX's three tuning phases and the energy check as one ``lax.scan`` over one copy of
    the kernel (see ``TuningSchedule``): one kernel in the compiled program instead of five,
    which is most of its compile time, on a GPU most of a quick run's wall time."""
    dim = problem.position0.shape[0]
    sched = TuningSchedule.of(cfg)
    zero = jnp.zeros((), wide)
    fresh_adaptation = (zero, zero, jnp.asarray(jnp.inf, wide))  # (time, x_average, step_size_max)
    carry = {
        "state": state, "L": start.L, "eps": start.step_size, "imm": start.inverse_mass_matrix,
        "adapt": fresh_adaptation,
        "moments": (zero, jnp.zeros((2, dim), wide)),  # streaming (weight, [E x, E x^2])
        "samples": jnp.zeros((max(sched.n3, 1), dim), state.position.dtype),
        "dE2": zero, "check": (jnp.full((ENERGY_CHECK_ROUNDS,), jnp.nan, wide),
                               jnp.ones((ENERGY_CHECK_ROUNDS,), wide)),
    }
    after_phase2 = functools.partial(_after_phase2, dim=dim, diagonal_preconditioning=cfg.diagonal_preconditioning,
                                     fresh_adaptation=fresh_adaptation, wide=wide)

    def body(c, xs):
        k, t = xs
        k_step, k_nan = jax.random.split(k)
        new, info = kernel(k_step, c["state"], problem.logdensity, c["imm"], c["L"], c["eps"])
        # Divergences while tuning: revert the step and cap the step size (BlackJAX's handler).
        tuning = t < sched.end_retune
        success, reverted, eps_max, dE = handle_nans(c["state"], new, c["eps"], c["adapt"][2],
                                                     info.energy_change, info.nonans, k_nan)
        eps, adapt = _adapt_step_size(c["eps"], (*c["adapt"][:2], eps_max), dE.astype(wide), dim, desired)
        pick = functools.partial(jax.tree.map, lambda a, b: jnp.where(tuning, a, b))
        c = {**c, "state": pick(reverted, new), "eps": pick(eps, c["eps"]), "adapt": pick(adapt, c["adapt"])}
        x = c["state"].position.astype(wide)
        in_phase2 = (t >= sched.n1) & (t < sched.end_phase2)
        c["moments"] = incremental_value_update(jnp.stack([x, jnp.square(x)]), c["moments"],
                                                weight=(in_phase2 & success) * c["eps"])
        # The phase ends are real branches: ``t`` is not batched over chains, so under vmap
        # each runs once, not at every step.
        if sched.n2 > 1:
            c = jax.lax.cond(t == sched.end_phase2 - 1, after_phase2, lambda c: c, c)
        if sched.n3:
            row = jnp.clip(t - sched.end_retune, 0, sched.n3 - 1)
            keep = (t >= sched.end_retune) & (t < sched.end_phase3)
            old = jax.lax.dynamic_index_in_dim(c["samples"], row, keepdims=False)
            c["samples"] = jax.lax.dynamic_update_index_in_dim(
                c["samples"], jnp.where(keep, c["state"].position, old), row, 0)
            c = jax.lax.cond(t == sched.end_phase3 - 1, functools.partial(_after_phase3, n3=sched.n3, wide=wide),
                             lambda c: c, c)
        if sched.per_round:
            checking = t >= sched.end_phase3
            c["dE2"] = c["dE2"] + jnp.where(checking, jnp.square(info.energy_change.astype(wide)), 0.0)
            round_end = checking & ((t - sched.end_phase3) % sched.per_round == sched.per_round - 1)
            c = jax.lax.cond(round_end, functools.partial(_after_round, t=t, sched=sched, dim=dim, desired=desired),
                             lambda c: c, c)
        return c, None

    steps = jnp.arange(sched.total, dtype=jnp.int32)
    c, _ = jax.lax.scan(body, carry, (jax.random.split(key, sched.total), steps))
    check = c["check"] if sched.per_round else (jnp.full((0,), jnp.nan, dtype), jnp.ones((0,), dtype))
    return c["state"], (c["L"], c["eps"], c["imm"]), check


def _warmup(cfg: MCLMCConfig, kernel, wide, dtype, key, position, problem, params):
    """BlackJAX's init, then the tuner from a start scaled to the posterior (or that start itself
    with ``warmup = 0``); returns the state, the tuned params and the energy check's record."""
    k_init, k_tune, k_scale = jax.random.split(key, 3)
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
        state, (L, eps, imm), check = _tune(cfg, kernel, wide, dtype, problem, state, start,
                                            params.desired_energy_var, k_tune)
    tuned_params = params._replace(L=L.astype(dtype), step_size=eps.astype(dtype), inverse_mass=imm.astype(dtype),
                                   scale=scale.astype(dtype))
    return fullbatch.cast_floats(state, dtype), tuned_params, {"check": check}


def _energy_check_summary(cfg: MCLMCConfig, warm) -> tuple[np.ndarray, np.ndarray]:
    """Per chain: the energy-error variance (per dimension) the check measured in its first round,
    i.e. with the tuner's step size, and the check's total step-size factor."""
    check = warm.get("check") if warm else None
    if check is None or not np.size(check[0]):
        return np.zeros(0), np.zeros(0)
    realized = np.asarray(check[0], np.float64)[:, 0]
    shrink = np.prod(np.asarray(check[1], np.float64), axis=1)
    if realized.shape[0] != cfg.chains:
        realized, shrink = np.repeat(realized, cfg.chains), np.repeat(shrink, cfg.chains)
    return realized, shrink


def _summarize(cfg: MCLMCConfig, stats, warm, params, post):
    n_tune = 1 if cfg.adaptation == "shared" else cfg.chains
    per_step = fullbatch.grads_per_isokinetic_step(cfg.integrator)
    warm_steps = TuningSchedule.of(cfg).total if cfg.warmup else 0  # the energy check included
    warm_grads = float(n_tune * (warm_steps * per_step + 1))  # + the initial gradient
    grads = warm_grads + float(cfg.chains * cfg.draws * cfg.eval_every * per_step)
    problems, tuned = fullbatch.isokinetic_tuning(params.L, params.step_size, params.inverse_mass, params.scale)
    realized, shrink = _energy_check_summary(cfg, warm)
    energy_change = np.asarray(stats["energy_change"], np.float64)
    info = {
        "adaptation": cfg.adaptation, "integrator": cfg.integrator, **tuned,
        "desired_energy_var": cfg.desired_energy_var,
        # The tuner's target: Var[energy change] / d; compare with desired_energy_var.
        "energy_var_per_dim": float(np.nanmean(energy_change**2) / post.size),
        "nan_steps": int(np.sum(stats["nan_steps"])), "eval_every": cfg.eval_every,
        "warmup_steps": warm_steps, "grad_evals_warmup": warm_grads,
        "energy_check_shrink_per_chain": [float(v) for v in shrink],
        "energy_check_realized_per_chain": [float(v) for v in realized],
    }
    return {"n_grad_evals": grads, "fde": grads}, info, problems


def make(cfg: MCLMCConfig) -> driver.Algorithm:
    dtype = jnp.dtype(cfg.dtype)
    wide = jnp.result_type(float)  # the tuners' own float type (float64 under x64)
    kernel = fullbatch.dtype_preserving(blackjax.mcmc.mclmc.build_kernel(
        integrator=fullbatch.isokinetic_integrator(cfg.integrator)))
    one = np.ones((), dtype)
    params = MCLMCParams(one, one, one, np.asarray(cfg.desired_energy_var, wide), one)

    def step(key, state, problem, params):
        return kernel(key, state, problem.logdensity, params.inverse_mass, params.L, params.step_size)

    def record(infos, **_):
        return {"energy_change": infos.energy_change[-1].astype(dtype),
                "kinetic_change": infos.kinetic_change[-1].astype(dtype),
                "nan_steps": jnp.sum(~infos.nonans).astype(jnp.int32)}

    return driver.Algorithm(
        name="mclmc", init=None, step=step, params=params, static=cfg.signature(),
        chains=cfg.chains, draws=cfg.draws, steps_per_draw=cfg.eval_every, flat=True, dtype=cfg.dtype,
        warmup=functools.partial(_warmup, cfg, kernel, wide, dtype),
        warmup_chains=1 if cfg.adaptation == "shared" else cfg.chains,
        loss_of=lambda state, problem: problem.loss_from_logdensity(state.position, state.logdensity),
        record=record, summarize=functools.partial(_summarize, cfg))
