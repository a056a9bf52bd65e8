"""Measurement helpers for ``benchmarks/run.py``: the practical limits and the samplers, timed alike.

The "limit" programs below do the least work a sampler step could do: a jitted
``value_and_grad`` of the posterior's log density, chains batched with ``vmap``, inside one
``lax.scan`` so that Python dispatch does not count. The carry is moved by ``lr * grad`` with ``lr``
a run-time argument (0.0), so XLA cannot hoist or constant-fold the gradient out of the loop.

Every timing excludes compilation (programs are compiled ahead of time and run once before the
timed calls); compile time is reported separately.
"""

from __future__ import annotations

import contextlib
import os
import resource
import statistics
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from llc.engine.posterior import Posterior, sq_distance
from llc.engine import driver as base

# --------------------------------------------------------------------------- timing


def posterior_data(post: Posterior):
    """The posterior's arrays, passed to a benchmark program as arguments (not baked constants)."""
    return (post.w_star, post.x, post.y)


def with_data(post: Posterior, data) -> Posterior:
    w_star, x, y = data
    return post._replace(w_star=w_star, x=x, y=y)


def replicate(tree, chains: int):
    """``tree`` with a leading chain axis: every chain starts at the same point."""
    return jax.tree.map(lambda a: jnp.broadcast_to(a, (chains, *jnp.shape(a))), tree)


def logdensity_fn(post: Posterior) -> Callable:
    """Full-batch log density w -> log p(w) of the localized, tempered posterior."""

    def logdensity(w):
        return -post.nbeta * post.loss_fn(w, post.x, post.y) - 0.5 * post.gamma * sq_distance(w, post.w_star)

    return logdensity


def compile_program(fn: Callable, *args) -> tuple[Any, float]:
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    return compiled, time.perf_counter() - t0


def time_compiled(compiled, args: tuple, repeats: int) -> dict[str, float]:
    """Run once untimed (first-call effects), then ``repeats`` timed calls; min and median seconds."""
    base.block(compiled(*args))
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        base.block(compiled(*args))
        times.append(time.perf_counter() - t0)
    return {"min_s": min(times), "median_s": statistics.median(times), "repeats": len(times)}


def memory_stats(compiled) -> dict[str, float | None]:
    """Bytes the compiled program allocates (arguments + outputs - aliased + temporaries)."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - not every backend implements it
        return {"program_bytes": None, "temp_bytes": None, "argument_bytes": None}
    if m is None:
        return {"program_bytes": None, "temp_bytes": None, "argument_bytes": None}
    total = m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes
    return {"program_bytes": float(total), "temp_bytes": float(m.temp_size_in_bytes),
            "argument_bytes": float(m.argument_size_in_bytes)}


def flops_of(compiled) -> float | None:
    try:
        cost = compiled.cost_analysis()
    except Exception:  # noqa: BLE001
        return None
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    if not cost or "flops" not in cost:
        return None
    return float(cost["flops"])


def device_peak_bytes() -> float | None:
    """The device allocator's peak bytes in use since the process started (GPU); None on CPU."""
    stats = jax.devices()[0].memory_stats()
    if not stats or "peak_bytes_in_use" not in stats:
        return None
    return float(stats["peak_bytes_in_use"])


def host_maxrss_bytes() -> float:
    """Peak resident memory of this process so far (monotone: attribute with care)."""
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024.0


def cpu_threads() -> int:
    return len(os.sched_getaffinity(0))


@contextlib.contextmanager
def capture_compiles():
    """Record every program the driver (or VI) compiles (memory, flops); in-process cache hits
    (0 s, the same executable) are recorded too.

    Samplers keep their compiled programs to themselves; wrapping the driver's compile helper is
    the one place to see them without changing sampler code.
    """
    records: list[dict[str, Any]] = []
    originals = {"compile_cached": base.compile_cached}

    def wrap(original):
        def wrapped(*args, **kwargs):
            compiled, seconds = original(*args, **kwargs)
            records.append({"compile_s": seconds, **memory_stats(compiled)})
            return compiled, seconds
        return wrapped

    for name, original in originals.items():
        setattr(base, name, wrap(original))
    try:
        yield records
    finally:
        for name, original in originals.items():
            setattr(base, name, original)


# --------------------------------------------------------------------------- limit programs


def _logp_parts(post: Posterior):
    loss_fn, nbeta, gamma = post.loss_fn, post.nbeta, post.gamma

    def logp(w, xb, yb, w_star):
        return -nbeta * loss_fn(w, xb, yb) - 0.5 * gamma * sq_distance(w, w_star)

    return logp


def grad_flops(post: Posterior, batch: int) -> float | None:
    """XLA's count of floating-point operations of one value_and_grad on ``batch`` samples."""
    vg = jax.value_and_grad(_logp_parts(post))
    xb, yb = post.x[:batch], post.y[:batch]
    try:
        compiled = jax.jit(vg).lower(post.w_star, xb, yb, post.w_star).compile()
    except Exception:  # noqa: BLE001
        return None
    return flops_of(compiled)


def minibatch_limit(post: Posterior, chains: int, batch: int, steps: int, *, random_batches: bool,
                    repeats: int) -> dict[str, Any]:
    """Minibatch gradients per second (chains x steps in one scan).

    ``random_batches=False``: each chain reads a contiguous slice (no gather, no RNG): the pure
    gradient. ``True``: each chain draws ``batch`` indices with replacement and gathers them, as
    SGLD does.
    """
    vg = jax.value_and_grad(_logp_parts(post))
    n = int(post.x.shape[0])

    def program(ws, key, lr, x, y, w_star):
        def body(ws, t):
            def one(w, c):
                if random_batches:
                    k = jax.random.fold_in(jax.random.fold_in(key, t), c)
                    idx = jax.random.randint(k, (batch,), 0, n)
                    xb, yb = x[idx], y[idx]
                else:
                    start = ((t * chains + c) * batch) % (n - batch + 1)
                    xb = jax.lax.dynamic_slice_in_dim(x, start, batch)
                    yb = jax.lax.dynamic_slice_in_dim(y, start, batch)
                v, g = vg(w, xb, yb, w_star)
                return jax.tree.map(lambda a, b: a + lr * b, w, g), v

            return jax.vmap(one)(ws, jnp.arange(chains))

        return jax.lax.scan(body, ws, jnp.arange(steps))

    dtype = jax.tree.leaves(post.w_star)[0].dtype
    args = (replicate(post.w_star, chains), jax.random.key(0), jnp.asarray(0.0, dtype),
            post.x, post.y, post.w_star)
    compiled, compile_s = compile_program(program, *args)
    t = time_compiled(compiled, args, repeats)
    grads = chains * steps
    return {"grads_per_s": grads / t["min_s"], "grads": grads, "compile_s": compile_s, **t,
            **memory_stats(compiled)}


def sgld_step_limit(post: Posterior, scfg, chains: int, steps: int, repeats: int) -> dict[str, Any]:
    """llc's own SGLD step (``sgld.make(cfg).step``) in one scan: no L_n evaluation, no chunking."""
    from llc.engine.posterior import Problem, problem_arrays
    from llc.engine.samplers import sgld

    alg = sgld.make(scfg)

    def program(keys, arrays, params):
        problem = Problem(post.loss_fn, arrays, post.n, None)

        def one_chain(key):
            state = alg.init(key, problem.position0, problem, params)
            state, _ = jax.lax.scan(lambda s, k: alg.step(k, s, problem, params), state, jax.random.split(key, steps))
            return state

        return jax.vmap(one_chain)(keys)

    args = (base.chain_keys(jax.random.key(1), chains), problem_arrays(post), alg.params)
    compiled, compile_s = compile_program(program, *args)
    t = time_compiled(compiled, args, repeats)
    grads = chains * steps
    return {"grads_per_s": grads / t["min_s"], "grads": grads, "compile_s": compile_s, **t,
            **memory_stats(compiled)}


def lean_sgld_step(post: Posterior, step_size: float, batch: int) -> Callable:
    """(w, key) -> (w', minibatch loss at w): the least a plain SGLD step must do.

    A random minibatch, one value_and_grad, Gaussian noise drawn per leaf in the position's dtype,
    and w + (eps/2) grad log p + sqrt(eps) z. No state besides w, no raveling, no dtype promotion.
    """
    nbeta, gamma, loss_fn = post.nbeta, post.gamma, post.loss_fn
    n = int(post.x.shape[0])

    def logp(w, xb, yb):
        lb = loss_fn(w, xb, yb)
        return -nbeta * lb - 0.5 * gamma * sq_distance(w, post.w_star), lb

    vg = jax.value_and_grad(logp, has_aux=True)

    def step(w, key):
        kb, kn = jax.random.split(key)
        idx = jax.random.randint(kb, (batch,), 0, n)
        (_, lb), g = vg(w, post.x[idx], post.y[idx])
        leaves, treedef = jax.tree.flatten(w)
        keys = jax.random.split(kn, len(leaves))
        z = jax.tree.unflatten(treedef, [jax.random.normal(k, a.shape, a.dtype) for k, a in zip(keys, leaves)])
        w = jax.tree.map(lambda a, ga, za: a + (0.5 * step_size) * ga + jnp.sqrt(jnp.asarray(step_size, a.dtype)) * za,
                         w, g, z)
        return w, lb

    return step


def lean_step_limit(post: Posterior, step_size: float, chains: int, batch: int, steps: int,
                    repeats: int) -> dict[str, Any]:
    """Throughput of ``lean_sgld_step`` in one scan (chains vmapped): SGLD's practical floor."""

    def program(ws, keys, data):
        step = lean_sgld_step(with_data(post, data), step_size, batch)

        def one_chain(w, key):
            w, _ = jax.lax.scan(lambda w, k: (step(w, k)[0], None), w, jax.random.split(key, steps))
            return w

        return jax.vmap(one_chain)(ws, keys)

    args = (replicate(post.w_star, chains), base.chain_keys(jax.random.key(4), chains), posterior_data(post))
    compiled, compile_s = compile_program(program, *args)
    t = time_compiled(compiled, args, repeats)
    grads = chains * steps
    return {"grads_per_s": grads / t["min_s"], "grads": grads, "compile_s": compile_s, **t,
            **memory_stats(compiled)}


def fullbatch_limit(post: Posterior, chains: int, steps: int, repeats: int) -> dict[str, Any]:
    """Full-batch gradients of the log density per second (what HMC/MCLMC integrators call)."""

    def program(ws, lr, data):
        logp = logdensity_fn(with_data(post, data))
        vg = jax.value_and_grad(logp)

        def body(ws, _):
            vals, gs = jax.vmap(vg)(ws)
            return jax.tree.map(lambda a, b: a + lr * b, ws, gs), vals

        return jax.lax.scan(body, ws, None, length=steps)

    dtype = jax.tree.leaves(post.w_star)[0].dtype
    args = (replicate(post.w_star, chains), jnp.asarray(0.0, dtype), posterior_data(post))
    compiled, compile_s = compile_program(program, *args)
    t = time_compiled(compiled, args, repeats)
    grads = chains * steps
    return {"grads_per_s": grads / t["min_s"], "grads": grads, "compile_s": compile_s, **t,
            **memory_stats(compiled)}


# --------------------------------------------------------------------------- sampler figures


def sampling_grads(name: str, out) -> tuple[float, float, bool]:
    """(gradient evaluations, seconds) of the sampling phase, and whether the split is exact.

    SGLD samples its burn-in in the same compiled chunks, so its whole wall_s counts. Full-batch
    samplers tune first; ``info['grad_evals_warmup']`` and ``work['sampling_s']`` isolate the
    sampling phase.
    """
    work, info = out.work, out.info
    if name == "sgld":
        return work["n_grad_evals"], work["wall_s"], True
    warm = info.get("grad_evals_warmup")
    if warm is not None:
        return work["n_grad_evals"] - float(warm), work["sampling_s"], True
    return work["n_grad_evals"], work["wall_s"], False


def to_jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return v if np.isfinite(v) else None
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    return obj
