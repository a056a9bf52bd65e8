"""Minibatch SGLD, with optional RMSProp / Adam diagonal preconditioning.

Step-size convention (as in devinterp and Lau et al.):
    w <- w + (eps/2) * G * grad log p_batch(w) + N(0, eps * G)
with G = 1 for plain SGLD, 1/(sqrt(v + gamma) + eps) for RMSProp/Adam (v the running second moment
of the gradient; ``preconditioner`` says why gamma). The preconditioned variants (pSGLD-style) are
heuristics: G adapts during sampling and the small Gamma-correction term is omitted. Plain and
RMSProp SGLD check their moves' Metropolis acceptance under the full-batch posterior (``mala_check``).

The update is written out rather than taken from ``blackjax.sgld``: BlackJAX ravels the position
and, under x64, promotes a float32 chain to float64 through its noise scale. Writing it per leaf
in the chain's dtype measured +16% steps/s on an H100 (benchmarks/sgld_variants.py), and plain
SGLD then carries no optimizer moments, a third of the state's memory.

The online LLC: every ``eval_every`` steps the full-batch L_n is evaluated and recorded.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from llc.config import SGLDConfig
from llc.engine import autostep, driver, prng


# Settings of the shared contract tests (tests/test_sampler_contract.py) on N(0, I_20), precision 1:
# eps = 0.02 biases the variance by eps/4 = 0.5% (Euler-Maruyama on a Gaussian), well inside the
# Monte Carlo error; 50 steps per draw keep draws nearly independent.
GAUSSIAN_TEST = {"chains": 4, "draws": 1500, "burnin": 20, "eval_every": 50, "step_size": 0.02, "batch_size": 32}

class SGLDState(NamedTuple):
    position: Any
    m: Any  # first-moment estimate (Adam); () otherwise
    v: Any  # second-moment estimate (RMSProp/Adam); () otherwise
    t: jax.Array  # steps taken


class SGLDParams(NamedTuple):
    """Runtime hyperparameters (arrays: changing them never recompiles)."""

    step_size: jax.Array
    noise_scale: jax.Array  # sqrt(step_size), computed once on the host in double precision
    beta1: jax.Array
    beta2: jax.Array
    eps: jax.Array


def update(precond: str, bias_correction: bool, state: SGLDState, params: SGLDParams, grad, key,
           gaussian=prng.normal_like, floor=0.0) -> SGLDState:
    """One Langevin move with drift (eps/2) G d and noise N(0, eps G); G = 1 without preconditioning,
    else ``preconditioner``'s. ``gaussian(key, like)`` draws the noise (a Problem's: zero where a
    restriction holds w at w*); ``floor``: the posterior's gamma (``preconditioner``)."""
    t = state.t + 1
    noise = gaussian(key, state.position)
    h = params.step_size
    if precond == "none":
        position = jax.tree.map(lambda p, g, z: p + (0.5 * h) * g + params.noise_scale * z,
                                state.position, grad, noise)
        return state._replace(position=position, t=t)
    b1, b2, eps = params.beta1, params.beta2, params.eps
    tf = t.astype(h.dtype)  # keeps a float32 chain in float32 under x64
    # Debiasing the zero-initialised second moment matters for RMSProp as much as for Adam: without
    # it the first steps divide by sqrt(v) ~ 0 and the chain is thrown far from w*.
    v = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, state.v, grad)
    if precond == "adam":
        m = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state.m, grad)
        drift = jax.tree.map(lambda m: m / (1 - b1**tf), m) if bias_correction else m
    else:
        m, drift = state.m, grad

    def move(p, d, g_diag, z):
        return p + 0.5 * h * g_diag * d + jnp.sqrt(h * g_diag) * z

    g_diag = preconditioner(debiased(v, t, params, bias_correction), eps, floor)
    position = jax.tree.map(move, state.position, drift, g_diag, noise)
    return SGLDState(position, m, v, t)


def debiased(v, t, params: SGLDParams, bias_correction: bool):
    """The second moment after ``t`` steps from zero, divided by 1 - beta2^t when ``bias_correction``."""
    tf = t.astype(params.step_size.dtype)  # keeps a float32 chain in float32 under x64
    return jax.tree.map(lambda a: a / (1 - params.beta2**tf), v) if bias_correction else v


def preconditioner(v_hat, eps, floor):
    """RMSProp/Adam SGLD's diagonal G = 1/(sqrt(v_hat + floor) + eps), with the floor gamma: a
    coordinate's gradient second moment settles near its curvature n*beta*h + gamma >= gamma, but
    starts at 0 where the loss does not move it at w* (a dead unit, a saturated softmax), and there
    G = 1/eps threw the first moves ~sqrt(eps/1e-8) away (and set ``auto``'s grid at 1e-10)."""
    return jax.tree.map(lambda a: 1.0 / (jnp.sqrt(a + floor) + eps), v_hat)


def minibatch_work(cfg, n: int) -> tuple[dict[str, float], dict[str, Any]]:
    """Work and info shared by the minibatch samplers (SGLD, SGHMC, SGNHT): one minibatch gradient
    per step, ``eval_every`` steps per recorded draw, one full-batch L_n per draw."""
    total = cfg.burnin + cfg.draws
    grads = total * cfg.eval_every * cfg.chains
    work = {"n_grad_evals": grads, "fde": grads * cfg.batch_size / n, "full_loss_evals": total * cfg.chains}
    info = {"step_size": cfg.step_size, "batch_size": cfg.batch_size, "eval_every": cfg.eval_every,
            "steps_per_chain": total * cfg.eval_every}
    return work, info


def mala_acceptance(problem, params: SGLDParams, w, w_new, metric=None) -> jax.Array:
    """Metropolis-adjusted Langevin acceptance probability of the move w -> w_new.

    The proposal is N(w + (eps/2) G grad log p(w), eps G), G = I for plain SGLD or the diagonal
    ``metric`` (a pytree like w) RMSProp used for the move; with full-batch log p,
    log a = log p(w') - log p(w) + log q(w | w') - log q(w' | w) (G's log-determinant cancels: the
    same G both ways). A well-sized step accepts most moves (devinterp's diagnostic, where ~0.9 or
    more is healthy); an accurate chain needs it high. In G's whitened coordinates a preconditioned
    move is plain SGLD's, so llc.analysis.health's acceptance floor applies to both.
    """
    eps = params.step_size
    # Both ends in one batched evaluation: one pass of twice the width instead of two passes
    # (half the kernel launches inside the conditional on a GPU; the same arithmetic).
    pair = jax.tree.map(lambda a, b: jnp.stack([a, b]), w, w_new)
    lps, grads = jax.vmap(jax.value_and_grad(problem.logdensity))(pair)
    lp, lp_new = lps[0], lps[1]
    g, g_new = (jax.tree.map(lambda a, i=i: a[i], grads) for i in (0, 1))

    g_diag = jax.tree.map(jnp.ones_like, w) if metric is None else metric

    def log_q(to, frm, grad):  # log N(to; frm + eps/2 G grad, eps G) up to a constant
        sq = sum(jnp.sum((a - b - 0.5 * eps * m * c) ** 2 / m) for a, b, c, m in
                 zip(jax.tree.leaves(to), jax.tree.leaves(frm), jax.tree.leaves(grad), jax.tree.leaves(g_diag)))
        return -sq / (2.0 * eps)

    log_a = lp_new - lp + log_q(w, w_new, g_new) - log_q(w_new, w, g)
    return jnp.where(jnp.isfinite(log_a), jnp.exp(jnp.minimum(log_a, 0.0)), 0.0)


def auto_steps(post, cfg: SGLDConfig, key) -> tuple[tuple[float, ...], float]:
    """``step_size=auto``'s grid (llc.engine.autostep): eps = c / lam_max, with lam_max measured in the
    preconditioner's metric for RMSProp/Adam (their move is eps*G*grad). Returns (steps, lam_max)."""
    metric = None if cfg.precond == "none" else preconditioner(
        autostep.gradient_second_moment(post, key, cfg.batch_size), cfg.eps, post.gamma)
    lam = autostep.checked(autostep.stiffness(post, key, metric))
    return tuple(c / lam for c in autostep.FACTORS), lam


def make(cfg: SGLDConfig) -> driver.Algorithm:
    driver.require_step(cfg)
    dtype = cfg.dtype
    params = SGLDParams(*(np.asarray(v, dtype) for v in (
        cfg.step_size, float(np.sqrt(cfg.step_size)), cfg.beta1, cfg.beta2, cfg.eps)))

    def init(key, position, problem, params):
        del key, problem, params
        zeros = jax.tree.map(jnp.zeros_like, position)
        return SGLDState(position, zeros if cfg.precond == "adam" else (),
                         zeros if cfg.precond != "none" else (), jnp.zeros((), jnp.int32))

    def step(key, state, problem, params):
        k_batch, k_noise = jax.random.split(key)
        grad = problem.minibatch_logdensity_grad(state.position, k_batch, cfg.batch_size)
        return update(cfg.precond, cfg.bias_correction, state, params, grad, k_noise, problem.gaussian,
                      problem.gamma), {}

    def record(infos, prev, state, problem, params, draw):
        del infos
        nan = jnp.full((), jnp.nan, params.step_size.dtype)

        def checked():  # the state's v was updated before its last move: that move's G
            metric = None if cfg.precond == "none" else preconditioner(
                debiased(state.v, state.t, params, cfg.bias_correction), params.eps, problem.gamma)
            return mala_acceptance(problem, params, prev, state.position, metric).astype(nan.dtype)

        acc = jax.lax.cond(draw % cfg.mala_every == 0, checked, lambda: nan)
        return {"mala_acceptance": acc}

    def summarize(stats, warm, params, post):
        del warm, params
        work, info = minibatch_work(cfg, post.n)
        info["precond"] = cfg.precond
        if mala:
            checks = -(-(cfg.burnin + cfg.draws) // cfg.mala_every) * cfg.chains
            work["n_grad_evals"] += 2 * checks  # full-batch gradients of the check
            work["fde"] += 2 * checks
            kept = np.asarray(stats["mala_acceptance"][:, cfg.burnin:], np.float64)
            kept = kept[np.isfinite(kept)]
            info["mean_mala_acceptance"] = float(kept.mean()) if kept.size else float("nan")
            info["mala_checks"] = int(kept.size)  # checks are mala_every draws apart: nearly independent
            info["mala_sd"] = float(kept.std()) if kept.size else float("nan")
        return work, info, {}

    # Adam's drift is a running mean of past gradients, not a Langevin proposal's: no check there.
    mala = cfg.mala_check and cfg.precond != "adam"
    return driver.Algorithm(
        name="sgld", init=init, step=step, params=params,
        static=cfg.signature(),
        record=record if mala else None, record_prev=mala,
        chains=cfg.chains, draws=cfg.draws, burnin=cfg.burnin, steps_per_draw=cfg.eval_every,
        dtype=dtype, summarize=summarize)
