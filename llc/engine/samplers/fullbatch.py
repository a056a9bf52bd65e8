"""Machinery shared by the full-batch gradient samplers (HMC/NUTS, MCLMC, adjusted MCLMC).

These samplers run on a flat parameter vector: the posterior's pytree is raveled once, so
BlackJAX's tuners see one array (their diagonal preconditioners are flat vectors anyway) and the
theta projection is a single matrix product. The posterior's arrays reach the compiled programs
as arguments (``base.posterior_data``), never as baked-in constants.

Failure handling, identical for every sampler here: a chain is marked failed by setting its L_n
trace to NaN, which ``llc.analysis.diagnostics.diverged_chains`` then excludes from lambda-hat; the reason
goes to ``info["failure_reasons"]``. A chain fails when its tuned hyper-parameters are not finite
or not positive, when a recorded state is not finite, when it never moved during sampling
(BlackJAX rejects or reverts non-finite proposals, so a blown-up chain shows up as a frozen one
rather than as NaNs), or, for the MCLMC family, when the tuner collapsed its step size to a
negligible fraction of the posterior's width (it shrinks the step at every non-finite state).
"""

from __future__ import annotations

import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from llc.engine.posterior import Posterior, cast, logdensity_fn, sq_distance
from llc.engine.samplers import base


class FlatProblem(NamedTuple):
    """The posterior as functions of a flat vector, built inside a compiled program."""

    logdensity: Callable  # x -> log p(x)
    x_star: jax.Array  # flat w*
    matrix: jax.Array  # theta projection matrix (dim, proj_dim)

    def project(self, x):
        return (x - self.x_star) @ self.matrix


def setup(post: Posterior, dtype: str, proj_dim: int):
    """Cast the posterior, and return (post, data, unravel, make_problem).

    ``make_problem(data)`` is called inside a traced function with the data argument.
    """
    post = cast(post, dtype)
    _, unravel = ravel_pytree(post.w_star)
    proj = base.projection_matrix(post.dim, proj_dim, seed=0, dtype=dtype)
    data = (base.posterior_data(post), proj)

    def make_problem(data) -> FlatProblem:
        arrays, matrix = data
        p = base.with_data(post, arrays)
        x_star = ravel_pytree(p.w_star)[0]
        logp = logdensity_fn(p)
        return FlatProblem(lambda x: logp(unravel(x)), x_star, matrix)

    return post, data, unravel, make_problem


def loss_from_logdensity(post: Posterior, problem: FlatProblem, x, logdensity):
    """L_n recovered from a stored log density, without another forward pass.

    log p = -n*beta*L_n - gamma/2 ||x - x*||^2. HMC and both MCLMCs keep the log density of their
    current state, so every recorded draw gets L_n for free instead of spending a forward pass.
    """
    prior = 0.5 * post.gamma * sq_distance(x, problem.x_star)
    return -(logdensity + prior) / post.nbeta


def finalize(name: str, Ln, Ln_warmup, theta, stats: dict[str, Any], work: dict[str, float],
             info: dict[str, Any], param_problems: dict[str, np.ndarray]) -> base.SamplerOutput:
    """Convert to NumPy, mark failed chains (NaN L_n) and record why in ``info``.

    ``param_problems`` maps a reason to a per-chain mask of chains whose tuned parameters are
    unusable; non-finite and frozen chains are detected here from the draws.
    """
    Ln = np.array(Ln, dtype=np.float64)
    theta = np.array(theta, dtype=np.float64)
    Ln_warmup = np.array(Ln_warmup, dtype=np.float64)
    nonfinite = ~(np.isfinite(Ln).all(axis=1) & np.isfinite(theta.reshape(theta.shape[0], -1)).all(axis=1))
    # A chain whose projection never changes did not move: everything was rejected or reverted.
    frozen = (theta.shape[1] > 1) & np.all(theta == theta[:, :1], axis=(1, 2))
    problems = {reason: np.asarray(mask, dtype=bool) for reason, mask in param_problems.items()}
    problems.update({"non-finite state": nonfinite, "frozen chain": frozen})
    failed = np.zeros(Ln.shape[0], dtype=bool)
    for mask in problems.values():
        failed |= mask
    Ln[failed] = np.nan
    reasons = {str(int(i)): ", ".join(r for r, mask in problems.items() if mask[i]) for i in np.flatnonzero(failed)}
    info = dict(info)
    info["failed_chains"] = int(failed.sum())
    if reasons:
        info["failure_reasons"] = reasons
    stats = {k: np.asarray(v) for k, v in stats.items()}
    return base.SamplerOutput(name=name, Ln=Ln, Ln_warmup=Ln_warmup, theta_proj=theta, stats=stats,
                              work={k: float(v) for k, v in work.items()}, info=info)


def bad_parameters(step_size, inv_mass, L=None) -> np.ndarray:
    """Per chain: a step size, L or inverse mass matrix entry that is non-finite or not positive."""
    ok = np.isfinite(step_size) & (step_size > 0) & np.isfinite(inv_mass).all(axis=1) & (inv_mass > 0).all(axis=1)
    if L is not None:
        ok &= np.isfinite(L) & (L > 0)
    return ~ok


# An isokinetic step moving the typical coordinate by less than this fraction of the posterior's
# narrowest width means the tuner collapsed (it shrinks the step geometrically each time it meets
# a non-finite state); healthy chains sit near 0.1-1.
COLLAPSE_RATIO = 1e-4


def step_scale_ratio(step_size, inv_mass, scale) -> np.ndarray:
    """Per chain: typical per-coordinate move of one isokinetic step / ``stiffest_scale``.

    The isokinetic velocity has unit norm in preconditioned coordinates, so a step of size eps
    moves coordinate i by about eps * sqrt(inv_mass_i / d).
    """
    dim = inv_mass.shape[1]
    with np.errstate(invalid="ignore", divide="ignore"):
        return step_size * np.sqrt(np.median(np.abs(inv_mass), axis=1) / dim) / scale


def collapsed_isokinetic(step_size, inv_mass, scale) -> np.ndarray:
    """Per chain: the tuned isokinetic step is negligible against ``stiffest_scale`` (see above)."""
    ratio = step_scale_ratio(step_size, inv_mass, scale)
    return ~(ratio >= COLLAPSE_RATIO)  # NaN counts as collapsed


def summary(values) -> dict[str, float]:
    """Mean/min/max over the finite entries (NaN when there are none), as plain floats."""
    a = np.asarray(values, dtype=np.float64).ravel()
    a = a[np.isfinite(a)]
    if a.size == 0:
        return {"mean": float("nan"), "min": float("nan"), "max": float("nan")}
    return {"mean": float(a.mean()), "min": float(a.min()), "max": float(a.max())}


def cast_floats(tree, dtype):
    """Floating leaves to the sampler's dtype (BlackJAX's adaptation returns float64 under x64)."""
    return jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)


def run_warmup(warmup: Callable, keys, data, steps: int, progress: base.ProgressFn):
    """Compile and run a warm-up program ``warmup(keys, data)``; returns (outputs, compile_s, wall_s)."""
    progress(0, steps, "warmup")
    compiled, compile_s = base.compile_timed(warmup, keys, data)
    t0 = time.perf_counter()
    out = base.block(compiled(keys, data))
    wall_s = time.perf_counter() - t0
    progress(steps, steps, "warmup")
    return out, compile_s, wall_s


def from_first_chain(trees: tuple, chains: int) -> tuple:
    """Shared adaptation: every chain starts from chain 0's tuned state and parameters."""
    return tuple(base.replicate(jax.tree.map(lambda a: a[0], t), chains) for t in trees)


def work_record(grads: float, warmup_s: float, sampling_s: float, compile_s: float) -> dict[str, float]:
    """Work of a full-batch sampler: every gradient is full batch, so fde = gradient count; wall_s
    covers the same work (warm-up + sampling), compilation apart."""
    return {"n_grad_evals": grads, "fde": grads, "wall_s": warmup_s + sampling_s, "sampling_s": sampling_s,
            "compile_s": compile_s, "warmup_s": warmup_s}


def isokinetic_tuning(L, step_size, inv_mass, scale) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Failure checks and info entries for the tuned parameters of either MCLMC."""
    L_np, eps_np = np.asarray(L, np.float64), np.asarray(step_size, np.float64)
    imm_np, scale_np = np.asarray(inv_mass, np.float64), np.asarray(scale, np.float64)
    problems = {"non-finite or non-positive tuned parameters": bad_parameters(eps_np, imm_np, L_np),
                "step size collapsed": collapsed_isokinetic(eps_np, imm_np, scale_np)}
    imm_summary = summary(imm_np)
    info = {
        "L": summary(L_np)["mean"],
        "step_size": summary(eps_np)["mean"],
        "L_per_chain": [float(v) for v in L_np],
        "step_size_per_chain": [float(v) for v in eps_np],
        "inv_mass_mean": imm_summary["mean"],
        "inv_mass_min": imm_summary["min"],
        "inv_mass_max": imm_summary["max"],
        # Per chain: typical per-coordinate move of one step / the posterior's narrowest width at w*.
        "step_scale_ratio_per_chain": [float(v) for v in step_scale_ratio(eps_np, imm_np, scale_np)],
    }
    return problems, info


def grads_per_isokinetic_step(integrator_name: str) -> int:
    """Gradient evaluations of one step of an isokinetic splitting integrator.

    Each position update (an "a" coefficient) is followed by a gradient at the new position;
    the gradient at the start of a step is carried over from the previous one.
    """
    return {"isokinetic_leapfrog": 1, "isokinetic_velocity_verlet": 1, "isokinetic_mclachlan": 2,
            "isokinetic_yoshida": 3, "isokinetic_omelyan": 5}[integrator_name]


def isokinetic_integrator(integrator_name: str) -> Callable:
    from blackjax.mcmc import integrators

    # BlackJAX calls the leapfrog (velocity Verlet) isokinetic integrator
    # ``isokinetic_velocity_verlet``; the config keeps the more familiar name as an alias.
    attr = "isokinetic_velocity_verlet" if integrator_name == "isokinetic_leapfrog" else integrator_name
    return getattr(integrators, attr)


def stiffest_scale(logdensity: Callable, x0: jax.Array, key: jax.Array, iters: int = 20) -> jax.Array:
    """1/sqrt(largest eigenvalue of -Hessian(log p) at x0): the posterior's narrowest width.

    Power iteration with Hessian-vector products (``iters`` of them, ~2 gradients each). The
    MCLMC tuners start from BlackJAX's default step size sqrt(d)/4, made for unit-scale
    targets; a localized posterior is often 100x narrower, and a first step that large flings
    the chain far from w* (and makes the adjusted tuner's trajectories thousands of steps long
    while dual averaging shrinks the step). Starting from this scale avoids both.
    """
    grad = jax.grad(logdensity)

    def hvp(v):
        return -jax.jvp(grad, (x0,), (v,))[1]

    def body(v, _):
        w = hvp(v)
        return w / (jnp.linalg.norm(w) + 1e-300), None

    v0 = jax.random.normal(key, x0.shape, x0.dtype)
    v, _ = jax.lax.scan(body, v0 / jnp.linalg.norm(v0), None, length=iters)
    top = jnp.vdot(v, hvp(v))
    # Fall back to unit scale if the curvature is not positive (w* not a minimum) or not finite.
    ok = jnp.isfinite(top) & (top > 0)
    return jnp.where(ok, 1.0 / jnp.sqrt(jnp.where(ok, top, 1.0)), 1.0)


def dtype_preserving(kernel: Callable) -> Callable:
    """Wrap a BlackJAX kernel so float hyper-parameters are cast to the position's dtype.

    Under x64 the tuners keep step sizes (and moment estimates) in float64; a float32 chain would
    otherwise be promoted to float64 by its first step and break the scan carry. Conversely the
    scalar diagnostics (acceptance rate, energy changes) are reported in the tuners' float type,
    since BlackJAX's tuners mix them with their own float64 state.
    """

    def wrapped(rng_key, state, logdensity_fn, *args, **kwargs):
        dtype = jax.tree.leaves(state.position)[0].dtype

        def cast(v):
            if isinstance(v, (tuple, list)):
                return type(v)(cast(a) for a in v)
            if isinstance(v, float) or (hasattr(v, "dtype") and jnp.issubdtype(v.dtype, jnp.floating)):
                return jnp.asarray(v, dtype)
            return v

        new_state, info = kernel(rng_key, state, logdensity_fn, *(cast(a) for a in args),
                                 **{k: cast(v) for k, v in kwargs.items()})
        wide = jnp.result_type(float)
        info = jax.tree.map(
            lambda a: a.astype(wide) if hasattr(a, "dtype") and a.ndim == 0 and jnp.issubdtype(a.dtype, jnp.floating)
            else a, info)
        return new_state, info

    return wrapped
