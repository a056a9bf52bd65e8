"""The one interface every estimator implements, and the machinery they share.

An estimator is a function ``run(post, cfg, key, *, proj_dim, progress) -> SamplerOutput``.
It returns L_n traces (chains x draws), a random projection of theta per draw, per-draw sampler
statistics and work counts; ``llc.estimator`` turns that into lambda-hat, metrics and artifacts,
identically for every sampler.

Sampling runs in chunks of draws: one jitted ``lax.scan`` over the draws of a chunk (chains
batched with ``vmap``), compiled once and called repeatedly so that a progress bar can advance
between chunks. No Python code runs per sampler step.
"""

from __future__ import annotations

import time
from typing import Any, Callable, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from llc.engine.posterior import Posterior


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
    info: dict[str, Any]  # tuned hyper-parameters and similar scalars


def projection_matrix(dim: int, k: int, seed: int, dtype) -> jax.Array:
    """Fixed random Gaussian directions (scaled by 1/sqrt(dim)) for the theta projection."""
    key = jax.random.fold_in(jax.random.key(seed), 0x7E7A)
    return jax.random.normal(key, (dim, k), dtype=dtype) / np.sqrt(dim)


def project(params, w_star, matrix) -> jax.Array:
    flat, _ = ravel_pytree(jax.tree.map(lambda a, b: a - b, params, w_star))
    return flat @ matrix


def chunk_size(total: int, target_chunks: int = 20) -> int:
    """Largest divisor of ``total`` giving at least ``target_chunks`` chunks (1 if ``total`` is small).

    Equal chunks keep a single compiled program for every call.
    """
    best = 1
    for size in range(1, total + 1):
        if total % size == 0 and total // size >= min(target_chunks, total):
            best = size
    return best


def compile_timed(fn: Callable, *args) -> tuple[Callable, float]:
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    return compiled, time.perf_counter() - t0


def block(tree) -> Any:
    return jax.tree.map(lambda a: a.block_until_ready() if hasattr(a, "block_until_ready") else a, tree)


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


def chain_keys(key: jax.Array, chains: int) -> jax.Array:
    return jax.random.split(key, chains)


def chunk_draw_keys(keys: jax.Array, chunk_index, size: int) -> jax.Array:
    """Per-chain, per-draw keys for one chunk: independent of how the draws are chunked in time."""
    return jax.vmap(lambda k: jax.random.split(jax.random.fold_in(k, chunk_index), size))(keys)


def replicate(tree, chains: int):
    return jax.tree.map(lambda a: jnp.broadcast_to(a, (chains, *jnp.shape(a))), tree)


def posterior_data(post: Posterior):
    """The arrays a compiled sampler takes as arguments (not baked in as constants)."""
    return (post.w_star, post.x, post.y)


def with_data(post: Posterior, data) -> Posterior:
    w_star, x, y = data
    return post._replace(w_star=w_star, x=x, y=y)
