"""Machinery shared by the full-batch gradient samplers (HMC/NUTS, MCLMC, adjusted MCLMC).

These samplers run on a flat parameter vector: the posterior's pytree is raveled once, so
BlackJAX's tuners see one array (their diagonal preconditioners are flat vectors anyway) and the
theta projection is a single matrix product (``Algorithm.flat``).

Checks of tuned parameters (feeding ``llc.engine.driver.finalize``, which marks failed chains):
a step size, L or inverse mass that is non-finite or not positive, and, for the MCLMC family, a
step size the tuner collapsed to a negligible fraction of the posterior's width (it shrinks the
step at every non-finite state).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np


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
