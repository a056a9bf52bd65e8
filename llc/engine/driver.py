"""The one sampling loop: every MCMC sampler is a plug-in (an ``Algorithm``) run by ``run``.

A sampler module supplies pure functions of a ``State`` NamedTuple (BlackJAX style):

    init(key, position, problem, params) -> state
    step(key, state, problem, params) -> (state, info)        # one transition of one chain
    warmup(key, position, problem, params) -> (state, params, record)   # optional tuning

and the driver owns everything around them: chains batched with ``vmap``, draws in a chunked
``lax.scan`` with progress between chunks, ahead-of-time compilation (timed, and cached by the
program's static signature), recording of L_n, the theta projection and per-draw statistics,
divergence marking and work accounting.

Hyperparameters are runtime arrays. The compiled programs take the posterior's arrays (w*, data,
n*beta, gamma) and the sampler's ``params`` (step size, friction, tuned values, ...) as
arguments; only shapes, dtypes and the structural options in ``Algorithm.static`` enter the
program. A second run with the same shapes but another epsilon, gamma, beta0, seed or w* reuses
the executable from ``_COMPILED`` in-process, and XLA's persistent cache across processes.
"""

from __future__ import annotations

import time
from typing import Any, Callable, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from llc.engine.posterior import Posterior, Problem, cast, problem_arrays


class ProgressFn(Protocol):
    def __call__(self, done: int, total: int, phase: str) -> None: ...


def no_progress(done: int, total: int, phase: str) -> None:
    del done, total, phase


class SamplerOutput(NamedTuple):
    name: str
    Ln: np.ndarray  # (chains, draws): full-batch L_n at each kept draw
    Ln_warmup: np.ndarray  # (chains, warmup_draws): draws discarded as burn-in (may be empty)
    theta_proj: np.ndarray  # (chains, draws, proj_dim): random projection of w - w*
    stats: dict[str, np.ndarray]  # per-draw sampler statistics, each (chains, draws)
    # Totals over all chains: n_grad_evals and fde count warm-up and sampling gradients (not the
    # forward passes that record L_n); wall_s is the time of that same work (warm-up + sampling,
    # compilation excluded, reported as compile_s); warmup_s and sampling_s split it.
    work: dict[str, float]
    info: dict[str, Any]  # tuned hyperparameters (scalars or per-chain arrays) and similar


class Algorithm(NamedTuple):
    """A sampler as the driver sees it; built by a sampler module's ``make(cfg)``.

    ``params`` is a pytree of runtime hyperparameters (arrays, shared by the chains);
    ``static`` the hashable structural options that shape the compiled program.
    """

    name: str
    init: Callable  # (key, position, problem, params) -> state
    step: Callable  # (key, state, problem, params) -> (state, info)
    params: Any
    static: tuple
    chains: int
    draws: int
    burnin: int = 0  # recorded draws discarded (kept as warm-up draws)
    steps_per_draw: int = 1
    flat: bool = False  # positions are one flat vector (BlackJAX's full-batch kernels)
    dtype: str = "float32"
    # Optional pieces:
    warmup: Callable | None = None  # (key, position, problem, params) -> (state, params, record)
    warmup_chains: int | None = None  # chains that tune (1: shared adaptation); default: all
    loss_of: Callable | None = None  # (state, problem) -> L_n without a forward pass
    record: Callable | None = None  # (infos of a draw's steps, stacked) -> per-draw stats dict
    # Host-side: (stats, warm_record, tuned params as NumPy, posterior) -> (work counts, info, problems)
    summarize: Callable | None = None


# --------------------------------------------------------------------------- keys and chunks

def projection_matrix(dim: int, k: int, seed: int, dtype) -> jax.Array:
    """Fixed random Gaussian directions (scaled by 1/sqrt(dim)) for the theta projection."""
    key = jax.random.fold_in(jax.random.key(seed), 0x7E7A)
    return jax.random.normal(key, (dim, k), dtype=dtype) / np.sqrt(dim)


def chunk_size(total: int, target_chunks: int = 20) -> int:
    """Largest divisor of ``total`` giving at least ``target_chunks`` chunks (1 if ``total`` is small).

    Equal chunks keep a single compiled program for every call.
    """
    best = 1
    for size in range(1, total + 1):
        if total % size == 0 and total // size >= min(target_chunks, total):
            best = size
    return best


def chain_keys(key: jax.Array, chains: int) -> jax.Array:
    return jax.random.split(key, chains)


def chunk_draw_keys(keys: jax.Array, chunk_index, size: int) -> jax.Array:
    """Per-chain, per-draw keys for one chunk: independent of how the draws are chunked in time."""
    return jax.vmap(lambda k: jax.random.split(jax.random.fold_in(k, chunk_index), size))(keys)


def replicate(tree, chains: int):
    return jax.tree.map(lambda a: jnp.broadcast_to(a, (chains, *jnp.shape(a))), tree)


def block(tree) -> Any:
    return jax.tree.map(lambda a: a.block_until_ready() if hasattr(a, "block_until_ready") else a, tree)


# --------------------------------------------------------------------------- compilation

_COMPILED: dict[Any, Any] = {}


def _signature(args) -> tuple:
    leaves, treedef = jax.tree.flatten(args)
    return (treedef, tuple((np.shape(a), jnp.result_type(a).name, getattr(a, "weak_type", False)) for a in leaves))


def compile_cached(key: tuple, fn: Callable, *args) -> tuple[Callable, float]:
    """``jax.jit(fn)`` compiled for ``args``; reused for any later call with the same ``key`` and
    argument shapes/dtypes. Returns (executable, compile seconds: 0.0 on an in-process hit)."""
    full_key = (key, _signature(args))
    hit = _COMPILED.get(full_key)
    if hit is not None:
        return hit, 0.0
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    _COMPILED[full_key] = compiled
    return compiled, time.perf_counter() - t0


def compile_timed(fn: Callable, *args) -> tuple[Callable, float]:
    """Compile without the in-process cache (for programs that bake constants in, e.g. VI)."""
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    return compiled, time.perf_counter() - t0


def run_chunks(compiled: Callable, state, key, total_draws: int, size: int, data,
               progress: ProgressFn, phase: str) -> tuple[Any, Any, float]:
    """Call ``compiled(state, key, chunk_index, data) -> (state, outputs)`` until total_draws are done.

    Outputs are concatenated along the draw axis (axis 1, after chains). Returns the final state,
    the concatenated outputs (as NumPy) and the wall time of the calls.
    """
    pieces = []
    wall = 0.0
    progress(0, total_draws, phase)
    for i in range(total_draws // size):
        t0 = time.perf_counter()
        state, out = compiled(state, key, jnp.asarray(i, dtype=jnp.int32), data)
        out = block(out)
        wall += time.perf_counter() - t0
        pieces.append(jax.tree.map(np.asarray, out))
        progress((i + 1) * size, total_draws, phase)
    stacked = jax.tree.map(lambda *xs: np.concatenate(xs, axis=1), *pieces)
    return state, stacked, wall


# --------------------------------------------------------------------------- the driver

def _program_key(alg: Algorithm, post: Posterior, proj_dim: int, what: str, *extra) -> tuple:
    return (what, alg.name, alg.static, alg.chains, alg.steps_per_draw, alg.flat, alg.dtype,
            post.loss_fn, post.n, proj_dim, *extra)


def sampler_runner(module) -> Callable:
    """``run(post, cfg, key, *, proj_dim, progress)`` for a sampler module exposing ``make(cfg)``."""

    def run_module(post: Posterior, cfg, key: jax.Array, *, proj_dim: int = 4,
                   progress: ProgressFn = no_progress) -> SamplerOutput:
        return run(module.make(cfg), post, key, proj_dim=proj_dim, progress=progress)

    return run_module


def run(alg: Algorithm, post: Posterior, key: jax.Array, *, proj_dim: int = 4,
        progress: ProgressFn = no_progress) -> SamplerOutput:
    """Warm up (if the algorithm tunes), then sample ``alg.burnin + alg.draws`` recorded draws."""
    post = cast(post, alg.dtype)
    dim = post.dim
    unravel = ravel_pytree(post.w_star)[1]
    arrays = problem_arrays(post)
    matrix = projection_matrix(dim, proj_dim, seed=0, dtype=alg.dtype)

    def make_problem(arrays) -> Problem:
        return Problem.build(post.loss_fn, arrays, post.n, unravel if alg.flat else None)

    # ------------------------------------------------------------------ warm-up
    chains = alg.chains
    warm_record: Any = None
    warm_compile = warm_wall = 0.0
    if alg.warmup is not None:
        k_warm, k_sample = jax.random.split(key)
        n_tune = alg.warmup_chains or chains

        def warm(keys, arrays, params):
            problem = make_problem(arrays)
            return jax.vmap(lambda k: alg.warmup(k, problem.position0, problem, params))(keys)

        progress(0, 1, "warmup")
        compiled, warm_compile = compile_cached(_program_key(alg, post, proj_dim, "warmup", n_tune), warm,
                                                chain_keys(k_warm, n_tune), arrays, alg.params)
        t0 = time.perf_counter()
        states, params, warm_record = block(compiled(chain_keys(k_warm, n_tune), arrays, alg.params))
        warm_wall = time.perf_counter() - t0
        progress(1, 1, "warmup")
        if n_tune != chains:  # shared adaptation: every chain starts from chain 0's tuned state
            states, params = (replicate(jax.tree.map(lambda a: a[0], t), chains) for t in (states, params))
    else:
        k_sample = key
        k_init = jax.random.fold_in(key, 0x1A17)

        def init(keys, arrays, params):
            problem = make_problem(arrays)
            return jax.vmap(lambda k: alg.init(k, problem.position0, problem, params))(keys)

        init_c, _ = compile_cached(_program_key(alg, post, proj_dim, "init"), init,
                                   chain_keys(k_init, chains), arrays, alg.params)
        states = init_c(chain_keys(k_init, chains), arrays, alg.params)
        params = replicate(alg.params, chains)

    # ------------------------------------------------------------------ sampling
    total = alg.burnin + alg.draws
    size = chunk_size(total)
    spd = alg.steps_per_draw

    def chunk(carry, keys, chunk_index, data):
        states, params = carry
        arrays, matrix = data
        problem = make_problem(arrays)

        def one_chain(state, params, draw_keys):
            def one_step(state, k):
                return alg.step(k, state, problem, params)

            def one_draw(state, k):
                if spd == 1:  # the draw's key is the step's key
                    state, info = one_step(state, k)
                    infos = jax.tree.map(lambda a: a[None], info)
                else:
                    state, infos = jax.lax.scan(one_step, state, jax.random.split(k, spd))
                Ln = alg.loss_of(state, problem) if alg.loss_of else problem.loss(state.position)
                theta = problem.project(state.position, matrix)
                stats = alg.record(infos) if alg.record else {}
                return state, (Ln, theta, stats)

            return jax.lax.scan(one_draw, state, draw_keys)

        draw_keys = chunk_draw_keys(keys, chunk_index, size)
        new_states, out = jax.vmap(one_chain)(states, params, draw_keys)
        return (new_states, params), out

    keys = chain_keys(k_sample, chains)
    carry = (states, params)
    data = (arrays, matrix)
    compiled, compile_s = compile_cached(_program_key(alg, post, proj_dim, "sample", size, total), chunk,
                                         carry, keys, jnp.asarray(0, jnp.int32), data)
    _, (Ln, theta, stats), wall = run_chunks(compiled, carry, keys, total, size, data, progress, alg.name)

    params_np = jax.tree.map(np.asarray, params)
    warm_np = jax.tree.map(np.asarray, warm_record) if warm_record is not None else None
    work, info, problems = alg.summarize(stats, warm_np, params_np, post) if alg.summarize else ({}, {}, {})
    burn = alg.burnin
    work = {"n_grad_evals": float(work.get("n_grad_evals", 0.0)), "fde": float(work.get("fde", 0.0)),
            **{k: float(v) for k, v in work.items() if k not in ("n_grad_evals", "fde")},
            "wall_s": warm_wall + wall, "sampling_s": wall * alg.draws / total,
            "warmup_s": warm_wall + wall * burn / total, "compile_s": warm_compile + compile_s}
    if alg.warmup is not None:
        info["compile_s_warmup"] = warm_compile
    kept = {k: np.asarray(v)[:, burn:] for k, v in stats.items()}
    Ln_warmup = np.asarray(Ln)[:, :burn]
    if isinstance(warm_np, dict) and "Ln" in warm_np:  # L_n along the warm-up, where the tuner records it
        Ln_warmup = np.asarray(warm_np["Ln"], np.float64).reshape(len(warm_np["Ln"]), -1)
        if Ln_warmup.shape[0] != chains:  # shared adaptation: only chain 0 has a warm-up trace
            pad = np.full((chains - Ln_warmup.shape[0], Ln_warmup.shape[1]), np.nan)
            Ln_warmup = np.concatenate([Ln_warmup, pad], axis=0)
    return finalize(alg.name, np.asarray(Ln)[:, burn:], Ln_warmup, np.asarray(theta)[:, burn:],
                    kept, work, info, problems)


def finalize(name: str, Ln, Ln_warmup, theta, stats: dict[str, Any], work: dict[str, float],
             info: dict[str, Any], param_problems: dict[str, np.ndarray]) -> SamplerOutput:
    """Convert to NumPy, mark failed chains (NaN L_n) and record why in ``info``.

    ``param_problems`` maps a reason to a per-chain mask of chains whose tuned parameters are
    unusable; non-finite and frozen chains are detected here from the draws. BlackJAX rejects or
    reverts non-finite proposals, so a blown-up chain can show up as a frozen one rather than NaN.
    """
    Ln = np.array(Ln, dtype=np.float64)
    theta = np.array(theta, dtype=np.float64)
    Ln_warmup = np.array(Ln_warmup, dtype=np.float64)
    nonfinite = ~(np.isfinite(Ln).all(axis=1) & np.isfinite(theta.reshape(theta.shape[0], -1)).all(axis=1))
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
    return SamplerOutput(name=name, Ln=Ln, Ln_warmup=Ln_warmup, theta_proj=theta, stats=stats,
                         work={k: float(v) for k, v in work.items()}, info=info)
