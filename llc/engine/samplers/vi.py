"""Variational LLC estimator: a mixture of factor analysers fitted to the local tempered posterior.

Target (the same one every sampler uses, see ``llc.engine.posterior``), with theta = w - w*:
    log p(theta) = -n*beta*L_n(w* + theta) - gamma/2 ||theta||^2      (+ const)
q is a mixture of M factor analysers in whitened coordinates (``llc.engine.samplers.vi_family``); with
``factor_form = "precision"`` the low-rank part sits in the precision instead of the covariance,
which suits localized NN posteriors (broad except along a few stiff directions) far better: on
the quick MLP and two DLNs, lambda-hat goes from 2-3x the HMC value (seed defaults: covariance
form, M = 8, r = 2, lr 0.01) to 15-30% above it (precision form, M = 1, r of 16-24 >= the number
of stiff Hessian directions, lr 0.001 with cosine decay, 4 draws per step, 10k steps).

Objective. The ELBO E_q[log p - log q] (reported shifted by the constant n*beta*L0), estimated from
``mc_samples`` draws per step, each with its own minibatch. Gradients:
  * continuous parameters (means, diagonal scales, factors): sticking-the-landing (STL) pathwise
    gradients: the draw is reparameterised and log q is evaluated with stopped parameters, so the
    estimator's variance vanishes where q = p;
  * mixture logits alpha: Rao-Blackwellised score gradient (f - b)(r_j - pi_j)/T with f the
    per-draw ELBO integrand, r_j the responsibilities and b a bias-corrected running-mean baseline.
Optional terms on the weights only: a symmetric Dirichlet(a0) log-prior (MAP on pi) and an entropy
bonus lambda*H(pi). (The bonus is on H(pi), not H(q): a bonus on H(q) would temper the target and
bias lambda-hat upwards.) Optax Adam with optional cosine / linear-decay schedule with warm-up and
global-norm clipping. The whole optimisation is lax.scan, in chunks of trace records.

Whitening pre-pass (``whitening_mode`` rmsprop / adam): ``whitening_steps`` minibatch gradients of
n*beta*L_b at probe points theta ~ N(0, sigma0^2 I), sigma0 = init_scale/sqrt(n*beta + gamma),
accumulated in EMAs with ``whitening_decay`` (bias-corrected). rmsprop uses the second moment v,
adam the centred second moment v - m^2 (the mean gradient at w* is not curvature). The diagonal
curvature proxy h = sqrt(v)/sigma0 sets the coordinate scale c = 1/sqrt(h + gamma), clipped to
[1e-3, 1e3] x sigma0; without whitening c = sigma0 everywhere. q starts with std c per coordinate.

Estimate. lambda_hat = n*beta*(E_q[L_n] - L0) from ``eval_samples`` draws per chain: ``Ln`` holds the
full-batch L_n at the draws (chains, eval_samples), so the common diagnostics compute the plain
Monte Carlo estimate; ``info`` carries the HVP control-variate estimate (``llc_cv``, its Monte
Carlo error ``llc_cv_mc_se``, per-draw std ``llc_cv_std``, ``ess_like``; no SE against the LLC, see
``llc_cv_se_reason``), see ``llc.engine.samplers.vi_eval``.

Work. ``n_grad_evals`` = minibatch gradients (optimisation, all chains, plus the pre-pass) + full-batch
gradients of the control variate (one at w* per chain, each HVP counted as 2). ``fde`` counts
minibatch gradients as batch/n. ``full_loss_evals`` = chains * eval_samples.

Trace. Every ``eval_every`` steps: window means of the per-step ELBO estimate and its parts, the
running lambda-hat from the minibatch losses, gradient norm; and q's weights (entropy/min/max and
all of pi), closed-form E_q||theta||^2, factor column norms, diagonal scale spread (u units),
cumulative FGE. ``info["trace"]``: "step" (points,), "pi" (chains, points, M), every other key
(chains, points), as nested lists.

Compiled programs (the pre-pass, q's initialisation, the optimisation chunk, the evaluation) take
every value as an argument: w* and the data, and where they enter, nβ, γ, L0, the learning rate and
sigma0. Only shapes and structural options are baked in, so runs that differ in those values (a
sweep over γ, β0 or the learning rate, another seed or w*) reuse the executables
(``driver.compile_cached``, keyed by ``_program_key``).

TensorBoard: with ``tensorboard=true`` the run writes the trace as scalars under
``<run>/tensorboard/vi`` (``llc.store.artifacts.write_tensorboard``; needs tensorboardX).
"""

from __future__ import annotations

import hashlib
import math
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from llc.config import VIConfig
from llc.engine.posterior import Posterior, cast
from llc.engine import driver
from llc.engine.samplers import vi_eval
from llc.engine.samplers import vi_family as fam_mod

COLLAPSE_THRESHOLD = 0.99  # a mixture (M > 1) with a weight above this is flagged as collapsed
BASELINE_DECAY = 0.9  # running mean of the ELBO integrand used as the score-gradient baseline
SCALE_CLIP = 1e3  # whitened coordinate scales stay within [1/SCALE_CLIP, SCALE_CLIP] * sigma0


# Settings of the shared contract tests (tests/test_sampler_contract.py) on N(0, I_20): one
# component contains the posterior; its draws are independent. float64 as the evaluation under
# x64, so that the draws are projected on the directions of the test's cfg.dtype.
GAUSSIAN_TEST = {"components": 1, "rank": 0, "steps": 500, "eval_every": 50, "eval_samples": 2000, "batch_size": 32,
                 "whitening_steps": 50, "dtype": "float64"}

class VIState(NamedTuple):
    params: dict[str, jax.Array]
    opt_state: Any
    baseline: jax.Array  # EMA of the ELBO integrand (not bias-corrected)
    t: jax.Array  # steps taken


# --------------------------------------------------------------------------- checks and setup

def _check(cfg: VIConfig, n: int) -> tuple[int, ...]:
    cfg.check(None, n)
    return tuple(cfg.r_per_component) if cfg.r_per_component is not None else (cfg.rank,) * cfg.components


def unit_schedule(cfg: VIConfig):
    """The configured learning-rate schedule divided by the learning rate (peak 1): the rate itself
    is a runtime argument of the programs and multiplies it there."""
    steps = cfg.steps
    warmup = int(round(cfg.lr_warmup_frac * steps))
    if cfg.lr_schedule is None:
        return optax.constant_schedule(1.0)
    if cfg.lr_schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, 1.0, warmup, steps, end_value=0.0)
    pieces = [optax.linear_schedule(0.0, 1.0, warmup), optax.linear_schedule(1.0, 0.0, steps - warmup)]
    return optax.join_schedules(pieces, [warmup])


def learning_rate_schedule(cfg: VIConfig):
    unit = unit_schedule(cfg)
    return lambda count: cfg.learning_rate * unit(count)


def make_optimizer(cfg: VIConfig, lr=None) -> optax.GradientTransformation:
    """Adam (after optional clipping) at ``lr`` (``cfg.learning_rate`` by default, a traced array in
    the optimisation program) times ``unit_schedule``. Its state does not depend on ``lr``: the
    initialisation program builds it with the default, the optimisation program updates it with
    the runtime value."""
    parts = [optax.clip_by_global_norm(cfg.clip_global_norm)] if cfg.clip_global_norm is not None else []
    lr = cfg.learning_rate if lr is None else lr
    return optax.chain(*parts, optax.scale_by_adam(), optax.scale_by_schedule(unit_schedule(cfg)), optax.scale(-lr))


def flat_loss(post: Posterior):
    """(theta, w0, x, y) -> loss at w0 + theta, with theta and w0 flat; plus w*'s flat vector
    (ravelled on the host: an eager ravel compiles a program per leaf shape)."""
    unravel = driver.unravel_function(post.w_star)
    w_flat = jax.device_put(np.concatenate([np.ravel(np.asarray(a)) for a in jax.tree.leaves(post.w_star)]))
    if post.mask is not None:  # a restriction: the loss sees only the selected coordinates move
        m_flat = np.concatenate([np.ravel(np.asarray(a)) for a in jax.tree.leaves(post.mask)]).astype(w_flat.dtype)

        def loss(theta, w0, x, y):
            return post.loss_fn(unravel(w0 + m_flat * theta), x, y)
    else:
        def loss(theta, w0, x, y):
            return post.loss_fn(unravel(w0 + theta), x, y)

    return loss, w_flat


def hyperparameters(post: Posterior, cfg: VIConfig, dtype) -> dict[str, np.ndarray]:
    """The runtime values of the programs, computed on the host in double precision, then cast."""
    values = {"nbeta": post.nbeta, "gamma": post.gamma, "L0": post.L0, "learning_rate": cfg.learning_rate,
              "sigma0": cfg.init_scale / math.sqrt(post.nbeta + post.gamma)}
    return {k: np.asarray(v, dtype) for k, v in values.items()}


def _program_key(cfg: VIConfig, post: Posterior, what: str, *extra) -> tuple:
    """What a VI program bakes in: the structural options (not the runtime fields), the loss, n and
    the parameter tree (``unravel``); shapes and dtypes of the arguments are added by the cache."""
    # A restriction's mask is a constant of VI's programs (VI runs one job at a time): part of the key.
    mask = None if post.mask is None else hashlib.sha256(b"".join(
        np.asarray(m).tobytes() for m in jax.tree.leaves(post.mask))).hexdigest()
    return ("vi", what, cfg.signature(), post.loss_fn, post.n, driver.signature(post.w_star), jax.config.jax_enable_x64,
            mask, *extra)


# --------------------------------------------------------------------------- whitening pre-pass

def whitening_scale(post: Posterior, cfg: VIConfig, key: jax.Array, hyper: dict) -> tuple[jax.Array, float, float]:
    """Coordinate scale c (d,) in the optimisation dtype; returns (c, wall_s, compile_s)."""
    dtype = jnp.dtype(cfg.dtype)
    d = post.size
    if cfg.whitening_mode == "none":
        return jnp.full((d,), hyper["sigma0"], dtype=dtype), 0.0, 0.0
    loss, w_flat = flat_loss(post)
    n, b, rho = post.n, cfg.batch_size, cfg.whitening_decay

    def prepass(key, data, hyper):
        w0, x, y = data
        nbeta, sigma0 = hyper["nbeta"], hyper["sigma0"]

        def step(carry, xs):
            m, v = carry
            z, idx = xs
            g = nbeta * jax.grad(loss)(sigma0 * z, w0, x[idx], y[idx])
            return (rho * m + (1 - rho) * g, rho * v + (1 - rho) * g * g), None

        k_theta, k_idx = jax.random.split(key)
        zs = jax.random.normal(k_theta, (cfg.whitening_steps, d), dtype=dtype)
        idx = jax.random.randint(k_idx, (cfg.whitening_steps, b), 0, n)
        zeros = jnp.zeros((d,), dtype=dtype)
        (m, v), _ = jax.lax.scan(step, (zeros, zeros), (zs, idx))
        correction = 1.0 - rho ** cfg.whitening_steps
        m, v = m / correction, v / correction
        second = jnp.maximum(v - m * m, 0.0) if cfg.whitening_mode == "adam" else v
        h = jnp.sqrt(second) / sigma0
        c = 1.0 / jnp.sqrt(h + hyper["gamma"] + 1e-30)
        return jnp.clip(c, sigma0 / SCALE_CLIP, sigma0 * SCALE_CLIP)

    data = (w_flat, post.x, post.y)
    compiled, compile_s = driver.compile_cached(_program_key(cfg, post, "whitening"), prepass, key, data, hyper)
    t0 = time.perf_counter()
    c = compiled(key, data, hyper).block_until_ready()
    return c, time.perf_counter() - t0, compile_s


# --------------------------------------------------------------------------- optimisation

def build_step(fam: fam_mod.Family, cfg: VIConfig, loss):
    """One optimisation step for one chain: (state, noise, data, hyper) -> (state, per-step outputs)."""
    a0, lam = cfg.alpha_dirichlet_prior, cfg.entropy_bonus

    def per_draw(params, normals, gumbel, idx, baseline, w0, x, y, c, sum_log_c, hyper):
        nbeta, gamma, L0 = hyper["nbeta"], hyper["gamma"], hyper["L0"]
        u, _ = fam_mod.sample_u(fam, params, normals, gumbel)
        theta = c * u
        Lb = loss(theta, w0, x[idx], y[idx])
        sq = jnp.sum(theta * theta)
        logp = -nbeta * (Lb - L0) - 0.5 * gamma * sq
        # STL: log q with stopped parameters; the draw u still carries the pathwise gradient.
        logq_u, resp = fam_mod.log_q_u(fam, jax.lax.stop_gradient(params), u)
        logq = logq_u - sum_log_c
        f = logp - logq
        # Rao-Blackwellised score term for alpha: d/d alpha_j = (f - b)(r_j - pi_j)/T.
        logw = fam_mod.log_weights(fam, params)
        score = (jax.lax.stop_gradient(f) - baseline) * jnp.sum(jax.lax.stop_gradient(resp) * logw)
        return f + score, (f, logp, logq, Lb, sq)

    def objective(params, normals, gumbel, idx, baseline, w0, x, y, c, sum_log_c, hyper):
        terms, aux = jax.vmap(per_draw, in_axes=(None, 0, 0, 0, None, None, None, None, None, None, None))(
            params, normals, gumbel, idx, baseline, w0, x, y, c, sum_log_c, hyper)
        logw = fam_mod.log_weights(fam, params)
        extra = jnp.zeros((), dtype=logw.dtype)
        if a0 is not None:
            extra = extra + (a0 - 1.0) * jnp.sum(logw)
        if lam > 0:
            extra = extra - lam * jnp.sum(jnp.exp(logw) * logw)
        return -(jnp.mean(terms) + extra), (aux, extra)

    def step(state: VIState, noise, data, hyper):
        """``noise``: this step's (normals (S, d+R), gumbel (S, M), minibatch indices (S, b))."""
        opt = make_optimizer(cfg, hyper["learning_rate"])
        w0, x, y, c = data
        normals, gumbel, idx = noise
        sum_log_c = jnp.sum(jnp.log(c))
        tf = state.t.astype(state.baseline.dtype)
        corr = 1.0 - BASELINE_DECAY ** tf
        baseline = jnp.where(state.t > 0, state.baseline / jnp.where(corr > 0, corr, 1.0), 0.0)
        grads, ((f, logp, logq, Lb, sq), extra) = jax.grad(objective, has_aux=True)(
            state.params, normals, gumbel, idx, baseline, w0, x, y, c, sum_log_c, hyper)
        gnorm = optax.global_norm(grads)
        updates, opt_state = opt.update(grads, state.opt_state, state.params)
        params = fam_mod.project_columns(fam, optax.apply_updates(state.params, updates))
        new_baseline = (BASELINE_DECAY * state.baseline
                        + (1 - BASELINE_DECAY) * jnp.mean(f).astype(state.baseline.dtype))
        out = {"elbo": jnp.mean(f), "elbo_like": jnp.mean(logp), "entropy": -jnp.mean(logq),
               "objective_extra": extra, "llc": hyper["nbeta"] * (jnp.mean(Lb) - hyper["L0"]), "radius2_draw": jnp.mean(sq),
               "grad_norm": gnorm}
        return VIState(params, opt_state, new_baseline, state.t + 1), out

    return step


def _init_state(fam: fam_mod.Family, opt, key, dtype) -> VIState:
    params = fam_mod.init_params(fam, key, dtype)
    return VIState(params, opt.init(params), jnp.zeros((), dtype=dtype), jnp.zeros((), jnp.int32))


# --------------------------------------------------------------------------- run

def optimise(post: Posterior, cfg: VIConfig, fam: fam_mod.Family, c: jax.Array, hyper: dict, k_init: jax.Array,
             k_steps: jax.Array, progress: driver.ProgressFn) -> tuple[VIState, dict[str, np.ndarray], float, float]:
    """Fit q on every chain (initial q from ``k_init``, the steps' noise from ``k_steps``), in chunks
    of trace records; returns (states, trace, wall_s, compile_s)."""
    dtype = jnp.dtype(cfg.dtype)
    loss, w_flat = flat_loss(post)
    step = build_step(fam, cfg, loss)
    points = cfg.steps // cfg.eval_every
    size = driver.chunk_size(points)
    data = (w_flat, post.x, post.y, c, hyper)

    def chunk(states, keys, chunk_index, data):
        w0, x, y, cc, hyper = data

        def one_point(state, point_key):
            # The noise of all eval_every steps at once (few PRNG call sites: faster compiles).
            k_noise, k_idx = jax.random.split(point_key)
            normals, gumbel = fam_mod.draw_noise(fam, k_noise, (cfg.eval_every, cfg.mc_samples), dtype)
            idx = jax.random.randint(k_idx, (cfg.eval_every, cfg.mc_samples, cfg.batch_size), 0, post.n)
            state, outs = jax.lax.scan(lambda s, xs: step(s, xs, (w0, x, y, cc), hyper), state, (normals, gumbel, idx))
            rec = {k: jnp.mean(v) for k, v in outs.items()}
            rec.update(fam_mod.summary(fam, state.params, cc))
            rec["pi"] = jnp.exp(fam_mod.log_weights(fam, state.params))
            return state, rec

        point_keys = driver.chunk_draw_keys(keys, chunk_index, size)
        return jax.vmap(lambda s, k: jax.lax.scan(one_point, s, k))(states, point_keys)

    opt = make_optimizer(cfg)
    init_keys = driver.chain_keys(k_init, cfg.chains)
    # Not counted in compile_s (as the driver's init): a tiny program whose persistent-cache load
    # would dominate a warm process's figure.
    init, _ = driver.compile_cached(_program_key(cfg, post, "init"),
                                    jax.vmap(lambda k: _init_state(fam, opt, k, dtype)), init_keys)
    states = init(init_keys)
    keys = driver.chain_keys(k_steps, cfg.chains)
    compiled, opt_compile = driver.compile_cached(_program_key(cfg, post, "optimise"), chunk,
                                                  states, keys, np.int32(0), data)
    states, trace, wall = driver.run_chunks(compiled, states, keys, points, size, data, progress, "vi")
    return states, trace, wall, opt_compile


def evaluate(post: Posterior, cfg: VIConfig, fam: fam_mod.Family, params, c: jax.Array, key: jax.Array,
             proj_dim: int) -> tuple[dict[str, np.ndarray], float, float]:
    """Draws of each fitted q: full-batch L_n, θ projections and the control variate, in the
    evaluation dtype (float64 under x64); returns (per-chain arrays, wall_s, compile_s)."""
    eval_dtype = "float64" if jax.config.jax_enable_x64 else "float32"
    post = cast(post, eval_dtype)
    loss, w_flat = flat_loss(post)
    exact_diag = post.size <= cfg.cv_exact_max_dim
    matrix = driver.projection_matrix(post.size, proj_dim, seed=0, dtype=eval_dtype)

    def chains(params, c, keys, eval_data):
        w0, x, y, mat = eval_data
        loss_at = lambda theta: loss(theta, w0, x, y)  # noqa: E731
        return jax.vmap(lambda p, k: vi_eval.evaluate_chain(
            fam, p, c, k, loss_at, mat, draws=cfg.eval_samples, eval_dtype=eval_dtype,
            control_variate=cfg.control_variate, exact_diag=exact_diag, probes=cfg.cv_probes))(params, keys)

    eval_data = (w_flat, post.x, post.y, matrix)
    keys = driver.chain_keys(key, cfg.chains)
    compiled, compile_s = driver.compile_cached(_program_key(cfg, post, "evaluate", proj_dim, eval_dtype),
                                                chains, params, c, keys, eval_data)
    t0 = time.perf_counter()
    ev = jax.tree.map(np.asarray, driver.block(compiled(params, c, keys, eval_data)))
    return ev, time.perf_counter() - t0, compile_s


def run(post: Posterior, cfg: VIConfig, key: jax.Array, *, proj_dim: int = 4,
        progress: driver.ProgressFn = driver.no_progress) -> driver.SamplerOutput:
    """Whitening pre-pass, optimisation of q per chain, evaluation; work and info as the samplers'."""
    ranks = _check(cfg, post.n)
    post_opt = cast(post, cfg.dtype)
    fam = fam_mod.make_family(cfg.components, post.size, ranks, cfg.alpha_temperature, cfg.learn_means,
                              cfg.dtype, cfg.factor_form)
    k_white, k_init, k_steps, k_eval = jax.random.split(key, 4)
    hyper = hyperparameters(post, cfg, jnp.dtype(cfg.dtype))
    # The pre-pass is shared by all chains: it fixes coordinates, not q.
    c, white_wall, white_compile = whitening_scale(post_opt, cfg, k_white, hyper)
    states, trace, opt_wall, opt_compile = optimise(post_opt, cfg, fam, c, hyper, k_init, k_steps, progress)
    ev, eval_wall, eval_compile = evaluate(post, cfg, fam, states.params, c, k_eval, proj_dim)

    exact_diag = post.size <= cfg.cv_exact_max_dim
    white_grads = cfg.whitening_steps if cfg.whitening_mode != "none" else 0
    opt_grads = cfg.chains * cfg.steps * cfg.mc_samples
    hvps = cfg.chains * vi_eval.hvp_count(fam, cfg.eval_samples, exact_diag, cfg.cv_probes) \
        if cfg.control_variate else 0
    full_grads = (cfg.chains if cfg.control_variate else 0) + 2 * hvps
    minibatch_grads = opt_grads + white_grads
    work = {
        "n_grad_evals": float(minibatch_grads + full_grads),
        "fde": minibatch_grads * cfg.batch_size / post.n + full_grads,
        "full_loss_evals": float(cfg.chains * cfg.eval_samples),
        "wall_s": white_wall + opt_wall + eval_wall,
        "compile_s": white_compile + opt_compile + eval_compile,
        "warmup_s": white_wall,
    }
    info = _info(cfg, post, fam, trace, ev, work, white_grads, hvps, exact_diag,
                 walls={"whitening_s": white_wall, "optimisation_s": opt_wall, "evaluation_s": eval_wall})
    stats = {"component": ev["component"].astype(np.int64)}
    if cfg.control_variate:
        stats["cv_quadratic"] = np.asarray(ev["cv"], dtype=np.float64)
    return driver.SamplerOutput(name="vi", Ln=np.asarray(ev["Ln"], dtype=np.float64),
                                Ln_warmup=np.zeros((cfg.chains, 0)),
                                theta_proj=np.asarray(ev["theta_proj"], dtype=np.float64),
                                stats=stats, work=work, info=info)


def _info(cfg: VIConfig, post: Posterior, fam: fam_mod.Family, trace: dict[str, np.ndarray],
          ev: dict[str, np.ndarray], work: dict[str, float], white_grads: int, hvps: int,
          exact_diag: bool, walls: dict[str, float]) -> dict[str, Any]:
    points = cfg.steps // cfg.eval_every
    steps = (np.arange(points) + 1) * cfg.eval_every
    fge_per_step = cfg.mc_samples * cfg.batch_size / post.n
    schedule = learning_rate_schedule(cfg)
    tr: dict[str, Any] = {"step": steps.tolist()}
    for name, values in trace.items():
        tr[name] = np.asarray(values, dtype=np.float64).tolist()
    tr["cumulative_fge"] = np.broadcast_to(white_grads * cfg.batch_size / post.n + steps * fge_per_step,
                                           (cfg.chains, points)).tolist()
    tr["learning_rate"] = np.broadcast_to(np.asarray([float(schedule(s - 1)) for s in steps]),
                                          (cfg.chains, points)).tolist()

    pi_final = np.asarray(trace["pi"])[:, -1, :]  # (chains, M)
    collapsed = bool(fam.M > 1 and np.any(pi_final.max(axis=1) > COLLAPSE_THRESHOLD))
    info: dict[str, Any] = {
        "components": fam.M,
        "ranks": [int(r) for r in fam.mask.sum(axis=1)],
        "steps": cfg.steps,
        "learning_rate": cfg.learning_rate,
        "batch_size": cfg.batch_size,
        "eval_samples": cfg.eval_samples,
        "whitening_mode": cfg.whitening_mode,
        "whitening_grads": white_grads,
        "mixture_weights": pi_final.tolist(),
        "mixture_collapsed": collapsed,
        "collapsed_chains": int(np.sum(pi_final.max(axis=1) > COLLAPSE_THRESHOLD)) if fam.M > 1 else 0,
        "final_elbo": [float(x) for x in np.asarray(trace["elbo"])[:, -1]],
        "nonfinite_trace": bool(not np.all(np.isfinite(np.asarray(trace["elbo"])))),
        **walls,
    }
    if cfg.control_variate:
        per_chain = [vi_eval.cv_estimate(ev["Ln"][i], ev["cv"][i], float(ev["cv_mean"][i]),
                                         float(ev["cv_mean_var"][i]), post.L0, post.nbeta)
                     for i in range(cfg.chains)]
        k = len(per_chain)
        se = math.sqrt(sum(p["llc_cv_mc_se"] ** 2 for p in per_chain)) / k  # Monte Carlo part only
        info.update({
            "llc_cv": float(np.mean([p["llc_cv"] for p in per_chain])),
            "llc_cv_mc_se": se,
            "llc_cv_se": None,
            "llc_cv_se_reason": vi_eval.CV_SE_REASON,
            "llc_cv_std": float(np.sqrt(np.mean([p["llc_cv_std"] ** 2 for p in per_chain]))),
            "llc_cv_per_chain": [p["llc_cv"] for p in per_chain],
            "ess_like": float(sum(p["ess_like"] for p in per_chain)),
            "cv_variance_reduction": float(np.mean([p["cv_variance_reduction"] for p in per_chain])),
            "cv_coef": [p["cv_coef"] for p in per_chain],
            "cv_hessian_diag": "exact" if exact_diag else f"hutchinson({cfg.cv_probes})",
            "cv_hvps": hvps,
            # Work-normalised variance: squared standard error times work spent.
            "wnv_fde": se * se * work["fde"],
            "wnv_wall": se * se * work["wall_s"],
        })
    info["trace"] = tr
    return info
