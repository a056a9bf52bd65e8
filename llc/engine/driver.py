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

On several local devices the same programs take their arguments on a device mesh
(llc.engine.devices): settings x chains split over the devices, each chain's stream unchanged.
"""

from __future__ import annotations

import functools
import threading
import time
from typing import Any, Callable, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from llc.engine import devices
from llc.engine.posterior import Posterior, Problem, cast, frozen_leaves, ones_mask, problem_arrays


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


def require_step(cfg: Any) -> None:
    """A sampler's ``make`` needs a numeric step size: ``auto`` is resolved on the one road
    (llc.pipeline.sampling), which tries a grid of them."""
    if cfg.step_size == "auto":
        raise ValueError(f"{type(cfg).__name__}.step_size is 'auto', which llc.pipeline.sampling resolves (a grid "
                         "of steps); pass a number to build the sampler directly")


class Algorithm(NamedTuple):
    """A sampler as the driver sees it; built by a sampler module's ``make(cfg)``.

    ``params`` is a pytree of runtime hyperparameters (arrays, shared by the chains);
    ``static`` the hashable structural options that shape the compiled program: the config's
    ``SamplerKind.signature()``, every field not marked runtime.
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
    # (infos of a draw's steps stacked, prev=position before the draw's last step or None, state,
    #  problem, params, draw=global draw index) -> per-draw stats dict
    record: Callable | None = None
    record_prev: bool = False  # carry the position before each step (for ``record``'s prev)
    # Host-side: (stats, warm_record, tuned params as NumPy, posterior) -> (work counts, info, problems)
    summarize: Callable | None = None


# --------------------------------------------------------------------------- keys and chunks

@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
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


def block(tree) -> Any:
    return jax.tree.map(lambda a: a.block_until_ready() if hasattr(a, "block_until_ready") else a, tree)


# --------------------------------------------------------------------------- compilation

class _Compiled:
    """One compiled program of ``_COMPILED``; ``ready`` is set once ``executable`` (or ``error``) is."""

    def __init__(self) -> None:
        self.ready = threading.Event()
        self.executable: Any = None
        self.error: BaseException | None = None
        self.seconds = 0.0
        self.reported = False  # the first run that uses it reports its compile time, later ones 0.0


_COMPILED: dict[Any, _Compiled] = {}
_COMPILED_LOCK = threading.Lock()


def signature(args) -> tuple:
    """Tree structure, shapes and dtypes of ``args``: what a compiled program is specialised to."""
    leaves, treedef = jax.tree.flatten(args)
    return (treedef, tuple((np.shape(a), jnp.result_type(a).name, getattr(a, "weak_type", False)) for a in leaves))


def compile_cached(key: tuple, fn: Callable, *args, report: bool = True,
                   shardings: tuple[Any, Any] | None = None) -> tuple[Callable, float]:
    """``jax.jit(fn)`` compiled for ``args`` (arrays or ``jax.ShapeDtypeStruct``s); reused for any
    later call with the same ``key`` and argument shapes/dtypes, also while another thread is
    still compiling it (``precompile``). Returns (executable, compile seconds): the seconds go to
    the first caller with ``report=True``, later ones get 0.0. ``shardings``: (in, out) shardings
    on a device mesh (llc.engine.devices; the key must then name the mesh)."""
    full_key = (key, signature(args))
    with _COMPILED_LOCK:
        entry = _COMPILED.get(full_key)
        owner = entry is None
        if owner:
            entry = _COMPILED[full_key] = _Compiled()
    if owner:
        t0 = time.perf_counter()
        try:
            jitted = jax.jit(fn) if shardings is None else jax.jit(fn, in_shardings=shardings[0],
                                                                     out_shardings=shardings[1])
            entry.executable = jitted.lower(*args).compile()
        except BaseException as exc:
            with _COMPILED_LOCK:
                del _COMPILED[full_key]  # a later caller tries again
            entry.error = exc
            raise
        finally:
            entry.seconds = time.perf_counter() - t0
            entry.ready.set()
    else:
        entry.ready.wait()
        if entry.error is not None:
            return compile_cached(key, fn, *args, report=report, shardings=shardings)
    with _COMPILED_LOCK:
        seconds = entry.seconds if report and not entry.reported else 0.0
        entry.reported |= report
    return entry.executable, seconds


def run_chunks(compiled: Callable, state, key, total_draws: int, size: int, data,
               progress: ProgressFn, phase: str, axis: int = 1) -> tuple[Any, Any, float]:
    """Call ``compiled(state, key, chunk_index, data) -> (state, outputs)`` until total_draws are done.

    Outputs are concatenated along the draw axis (``axis``: 1 after chains, 2 after settings and
    chains). Returns the final state,
    the concatenated outputs (as NumPy) and the wall time of the calls.
    """
    pieces = []
    wall = 0.0
    progress(0, total_draws, phase)
    for i in range(total_draws // size):
        t0 = time.perf_counter()
        state, out = compiled(state, key, np.int32(i), data)
        out = block(out)
        wall += time.perf_counter() - t0
        pieces.append(jax.tree.map(np.asarray, out))
        progress((i + 1) * size, total_draws, phase)
    stacked = jax.tree.map(lambda *xs: np.concatenate(xs, axis=axis), *pieces)
    return state, stacked, wall


# --------------------------------------------------------------------------- the driver

def on_shapes_if(abstract: bool, fn: Callable, *args):
    """``fn(*args)``, or its output shapes (``jax.eval_shape``) when ``abstract``."""
    return jax.eval_shape(fn, *args) if abstract else fn(*args)


def _program_key(alg: Algorithm, post: Posterior, proj_dim: int, inp: _Inputs, what: str, *extra) -> tuple:
    # The loss is compared by equality: one object per model (a target's ``make_loss``) or equal
    # wrappers of one user model (``llc.api``); a new closure per run would compile every run anew.
    return (what, alg.name, alg.static, alg.chains, alg.steps_per_draw, alg.flat, alg.dtype,
            post.loss_fn, post.n, proj_dim, jax.config.jax_enable_x64, None if inp.lay is None else inp.lay.key,
            inp.frozen, *extra)


def run(alg: Algorithm, post: Posterior, key: jax.Array, *, proj_dim: int = 4,
        progress: ProgressFn = no_progress) -> SamplerOutput:
    """Warm up (if the algorithm tunes), then sample ``alg.burnin + alg.draws`` recorded draws."""
    return run_batch([alg], [post], [key], proj_dim=proj_dim, progress=progress)[0]


def batch_signature(alg: Algorithm) -> tuple:
    """What runs must share to execute as one program (everything but runtime values)."""
    return (alg.name, alg.static, alg.chains, alg.draws, alg.burnin, alg.steps_per_draw, alg.flat, alg.dtype,
            alg.warmup is not None, alg.warmup_chains)


def unravel_function(tree) -> Callable:
    """``ravel_pytree(tree)[1]`` (flat vector -> pytree), from the shapes alone: ravelling the
    arrays eagerly would compile a program per leaf shape."""
    found = []
    jax.eval_shape(lambda t: found.append(ravel_pytree(t)[1]), tree)
    return found[0]


def _stack(trees: list, sharding=None):
    """Stack on the host and copy to the device(s) once (eager ``jnp.stack`` compiles per shape)."""
    return jax.device_put(jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *trees), sharding)


def _batch_keys(keys: list, warm_chains: int | None, chains: int, abstract: bool = False) -> tuple[jax.Array, jax.Array]:
    """(warm-up or init keys, sampling keys), each (settings, chains), from each run's key.
    ``warm_chains`` None: the sampler has no warm-up. ``abstract``: their shapes alone."""
    data = np.stack([np.asarray(jax.random.key_data(k)) for k in keys])  # no device work
    return on_shapes_if(abstract, lambda d: _split_batch_keys(d, warm_chains, chains), data)


def _put(tree, sharding, abstract: bool):
    """``jax.device_put(tree, sharding)``; shapes (``abstract``) stay as they are (the program's
    shardings place them)."""
    return tree if abstract else jax.device_put(tree, sharding)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _split_batch_keys(data, warm_chains: int | None, chains: int) -> tuple[jax.Array, jax.Array]:
    # vmapped over the runs: one small program whatever their number (eagerly, a few programs per
    # shape; unrolled over a list, a GPU compile of many seconds for 16 runs).
    def one(k):
        if warm_chains is None:
            return chain_keys(jax.random.fold_in(k, 0x1A17), chains), chain_keys(k, chains)
        first, second = jax.random.split(k)
        return chain_keys(first, warm_chains), chain_keys(second, chains)

    return jax.vmap(one)(jax.random.wrap_key_data(data))


def _check_batch(algs: list[Algorithm], posts: list[Posterior]) -> None:
    sig = batch_signature(algs[0])
    first = posts[0]
    for a, p in zip(algs, posts):
        if batch_signature(a) != sig:
            raise ValueError(f"runs of one batch must share the sampler's static settings: {batch_signature(a)} != {sig}")
        same_data = p.x is first.x or (np.shape(p.x) == np.shape(first.x) and bool(np.array_equal(p.x, first.x))
                                        and bool(np.array_equal(p.y, first.y)))
        if p.loss_fn != first.loss_fn or p.n != first.n or not same_data:
            raise ValueError("runs of one batch must share the target's loss and data")


def precompile(algs: list[Algorithm], posts: list[Posterior], *, proj_dim: int = 4,
               programs: tuple[str, ...] = ("warmup", "sample")) -> None:
    """Compile the programs ``run_batch`` will need for these runs, without running anything:
    the warm-up program (if the sampler tunes) and/or the sampling program (and its init).

    Only shapes matter, so ``posts`` may hold any values of the right shapes (an untrained w*).
    Meant for a background thread (XLA compiles without holding the GIL): while the target
    trains or another sampler compiles, ``run_batch`` then finds the executables ready (or waits
    for the compile in flight) and reports their compile time as its own.
    """
    run_batch(algs, posts, [jax.random.key(0)] * len(algs), proj_dim=proj_dim, compile_only=programs)


class _Inputs(NamedTuple):
    """A batch's arguments: per-setting values stacked over settings, the data shared by all, the
    sampler's runtime parameters (stacked), the θ projection, and how a setting's Problem is built;
    placed on the batch's mesh (``lay``, None on one device)."""

    per: dict[str, Any]
    shared: dict[str, Any]
    hyper: Any
    matrix: jax.Array
    problem_for: Callable[[dict, dict], Problem]
    lay: devices.Layout | None
    frozen: tuple[bool, ...] | None  # leaves every setting holds at w* (static: part of the program's key)

    def start_shardings(self, chains: int) -> tuple | None:
        """(in, out) shardings of a start program ``(keys, per, params, shared) -> states...`` of
        ``chains`` chains per setting; None on one device."""
        if self.lay is None:
            return None
        each, setting = devices.per_chain(self.lay, chains), devices.per_setting(self.lay)
        return (each, setting, setting, devices.rows(self.lay)), each

    def chunk_shardings(self, chains: int) -> tuple | None:
        """(in, out) shardings of the sampling program ``(carry, keys, chunk_index, (per, shared,
        matrix)) -> (carry, draws)``; None on one device."""
        if self.lay is None:
            return None
        each, once = devices.per_chain(self.lay, chains), devices.replicated(self.lay)
        return (each, each, once, (devices.per_setting(self.lay), devices.rows(self.lay), once)), each


def _inputs(algs: list[Algorithm], posts: list[Posterior], proj_dim: int, lay: devices.Layout | None,
            abstract: bool = False) -> _Inputs:
    """``abstract``: the θ projection as its shape (the batch is only compiled)."""
    alg, post = algs[0], posts[0]
    unravel = unravel_function(post.w_star)
    if any(p.mask is not None for p in posts):  # restrictions are runtime arrays: one shape for all
        posts = [p if p.mask is not None else p._replace(mask=ones_mask(p)) for p in posts]
    frozen = None if alg.flat else frozen_leaves(posts)
    arrays = [problem_arrays(p) for p in posts]
    per_keys = ("w_star", "nbeta", "gamma", "mask") if "mask" in arrays[0] else ("w_star", "nbeta", "gamma")

    def problem_for(shared, per_setting) -> Problem:
        return Problem.build(post.loss_fn, {**shared, **per_setting}, post.n, unravel if alg.flat else None, frozen)

    shared = {"x": arrays[0]["x"], "y": arrays[0]["y"]}  # the data: one copy, not vmapped
    matrix = on_shapes_if(abstract, lambda: projection_matrix(post.size, proj_dim, seed=0, dtype=alg.dtype))
    if lay is not None:
        shared, matrix = jax.device_put(shared, devices.rows(lay)), _put(matrix, devices.replicated(lay), abstract)
    return _Inputs(per=_stack([{k: a[k] for k in per_keys} for a in arrays], devices.per_setting(lay)),
                   shared=shared, hyper=_stack([a.params for a in algs], devices.per_setting(lay)),
                   matrix=matrix, problem_for=problem_for, lay=lay, frozen=frozen)


def _every_chain(inp: _Inputs, start: Callable) -> Callable:
    """``start(key, position0, problem, params)`` (a sampler's init or warm-up) lifted to
    ``(keys, per, params, shared)``: every chain (keys) of every setting (per, params)."""

    def every_chain(keys, per, params, shared):
        def one_setting(keys, per, params):
            problem = inp.problem_for(shared, per)
            return jax.vmap(lambda k: start(k, problem.position0, problem, params))(keys)
        return jax.vmap(one_setting)(keys, per, params)

    return every_chain


def _start(alg: Algorithm, post: Posterior, inp: _Inputs, keys: list, *, proj_dim: int, progress: ProgressFn,
           compile_only: tuple[str, ...]):
    """Every chain's starting state and parameters: tuned by the sampler's warm-up (a program of
    its own), else its ``init`` with the configured parameters. Returns (states, params, the
    warm-up's record, the sampling keys, warm-up wall s, warm-up compile s); on shapes alone with
    ``compile_only``."""
    chains, S, lay = alg.chains, len(keys), inp.lay
    chain_sharding = devices.per_chain(lay, chains)
    if alg.warmup is None:
        init_keys, sample_keys = _batch_keys(keys, None, chains, abstract=bool(compile_only))

        init = _every_chain(inp, alg.init)
        args = (_put(init_keys, chain_sharding, bool(compile_only)), inp.per, inp.hyper, inp.shared)
        if not compile_only or "sample" in compile_only:
            init_c, _ = compile_cached(_program_key(alg, post, proj_dim, inp, "init"), init, *args,
                                       shardings=inp.start_shardings(chains))
        states = jax.eval_shape(init, *args) if compile_only else init_c(*args)
        params = jax.device_put(jax.tree.map(
            lambda a: np.broadcast_to(np.asarray(a)[:, None], (S, chains, *a.shape[1:])), inp.hyper), chain_sharding)
        return states, params, None, sample_keys, 0.0, 0.0

    n_tune = alg.warmup_chains or chains
    warm_keys, sample_keys = _batch_keys(keys, n_tune, chains, abstract=bool(compile_only))

    warm = _every_chain(inp, alg.warmup)
    args = (_put(warm_keys, devices.per_chain(lay, n_tune), bool(compile_only)), inp.per, inp.hyper, inp.shared)
    warm_compile = warm_wall = 0.0
    if not compile_only or "warmup" in compile_only:
        compiled, warm_compile = compile_cached(
            _program_key(alg, post, proj_dim, inp, "warmup", n_tune), warm, *args, report=not compile_only,
            shardings=inp.start_shardings(n_tune))
    if compile_only:
        states, params, record = jax.eval_shape(warm, *args)
    else:
        progress(0, 1, "warmup")
        t0 = time.perf_counter()
        states, params, record = block(compiled(*args))
        warm_wall = time.perf_counter() - t0
        progress(1, 1, "warmup")
    if n_tune != chains:  # shared adaptation: every chain starts from chain 0's tuned state
        states, params = on_shapes_if(bool(compile_only), lambda *t: tuple(
            jax.tree.map(lambda a: jnp.repeat(a[:, :1], chains, axis=1), x) for x in t), states, params)
        if lay is not None and not compile_only:  # the sampling program's placement
            states, params = jax.device_put((states, params), chain_sharding)
    return states, params, record, sample_keys, warm_wall, warm_compile


def _sampling_chunk(alg: Algorithm, problem_for: Callable, size: int) -> Callable:
    """The sampling program: ``size`` recorded draws (each ``alg.steps_per_draw`` steps) of every
    chain of every setting, with L_n, the θ projection and the sampler's per-draw statistics."""
    spd = alg.steps_per_draw

    def chunk(carry, keys, chunk_index, data):
        states, params = carry
        per, shared, matrix = data

        def one_setting(states, params, keys, per):
            problem = problem_for(shared, per)

            def one_chain(state, params, draw_keys):
                def one_step(carry, k):
                    state, _ = carry
                    new, info = alg.step(k, state, problem, params)
                    return (new, state.position if alg.record_prev else None), info

                def one_draw(state, xs):
                    k, draw = xs
                    if spd == 1:  # the draw's key is the step's key
                        (state, prev), info = one_step((state, None), k)
                        infos = jax.tree.map(lambda a: a[None], info)
                    else:
                        (state, prev), infos = jax.lax.scan(
                            one_step, (state, state.position if alg.record_prev else None), jax.random.split(k, spd))
                    Ln = alg.loss_of(state, problem) if alg.loss_of else problem.loss(state.position)
                    theta = problem.project(state.position, matrix)
                    stats = alg.record(infos, prev=prev, state=state, problem=problem, params=params, draw=draw) \
                        if alg.record else {}
                    return state, (Ln, theta, stats)

                return jax.lax.scan(one_draw, state, (draw_keys, draws))

            draw_keys = chunk_draw_keys(keys, chunk_index, size)
            # The global draw index, not batched over settings or chains (so a ``lax.cond`` on it in
            # ``record`` stays a real branch under vmap).
            draws = chunk_index * size + jnp.arange(size, dtype=jnp.int32)
            return jax.vmap(one_chain)(states, params, draw_keys)

        new_states, out = jax.vmap(one_setting)(states, params, keys, per)
        return (new_states, params), out

    return chunk


def run_batch(algs: list[Algorithm], posts: list[Posterior], keys: list, *, proj_dim: int = 4,
              progress: ProgressFn = no_progress, compile_only: tuple[str, ...] = ()) -> list[SamplerOutput]:
    """Several runs differing only in runtime values (epsilon, gamma, n*beta, seed, w*) as one
    program, ``vmap``ped over settings x chains; each run's random stream is the one it has alone.

    The program is split over the local devices ``devices.requested()`` gives (every one unless
    ``LLC_DEVICES`` says otherwise; llc.engine.devices); the settings are padded to a multiple of
    their shards with copies of the last run, whose outputs are dropped.

    Work is shared: each run reports ``1/len(algs)`` of the batch's wall and compile time, and the
    batch totals in ``info`` (``batch_size``, ``batch_wall_s``, ``batch_compile_s``).
    ``compile_only``: compile only these programs ("warmup", "sample"), traced on shapes, and
    return ``[]`` (see ``precompile``).
    """
    _check_batch(algs, posts)
    alg, S = algs[0], len(algs)
    posts = [cast(p, alg.dtype) for p in posts]
    lay = devices.layout(S, alg.chains, posts[0].n, devices.requested())
    pad = devices.padded(S, lay) - S
    # Compiling only, the keys and the θ projection are shapes: their small programs compile where
    # they run, not ahead of the sampling program on the compiling thread.
    inp = _inputs(algs + algs[-1:] * pad, posts + posts[-1:] * pad, proj_dim, lay, abstract=bool(compile_only))
    states, params, warm_record, sample_keys, warm_wall, warm_compile = _start(
        alg, posts[0], inp, list(keys) + list(keys)[-1:] * pad, proj_dim=proj_dim, progress=progress,
        compile_only=compile_only)

    total = alg.burnin + alg.draws
    size = chunk_size(total)
    chunk = _sampling_chunk(alg, inp.problem_for, size)
    sample_keys = _put(sample_keys, devices.per_chain(lay, alg.chains), bool(compile_only))
    carry, data = (states, params), (inp.per, inp.shared, inp.matrix)
    shardings = inp.chunk_shardings(alg.chains)
    key = _program_key(alg, posts[0], proj_dim, inp, "sample", size, total)
    if compile_only:
        if "sample" in compile_only:
            compile_cached(key, chunk, carry, sample_keys, np.int32(0), data, report=False, shardings=shardings)
        return []
    compiled, compile_s = compile_cached(key, chunk, carry, sample_keys, np.int32(0), data, shardings=shardings)
    _, (Ln, theta, stats), wall = run_chunks(compiled, carry, sample_keys, total, size, data, progress, alg.name,
                                             axis=2)

    batch = {"batch_size": S, "batch_wall_s": warm_wall + wall, "batch_compile_s": warm_compile + compile_s}
    host = jax.tree.map(np.asarray, (Ln, theta, stats, params, warm_record))  # slicing device arrays compiles
    return [_output(algs[s], posts[s], jax.tree.map(lambda a: a[s], host), batch, warm_wall, wall,
                    warm_compile + compile_s)
            for s in range(S)]


def _output(alg: Algorithm, post: Posterior, arrays, batch: dict, warm_wall: float, wall: float,
            compile_s: float) -> SamplerOutput:
    """One run's SamplerOutput from its slice of a batch."""
    Ln, theta, stats, params, warm = arrays
    S = batch["batch_size"]
    chains, total, burn = alg.chains, alg.burnin + alg.draws, alg.burnin
    work, info, problems = alg.summarize(stats, warm, params, post) if alg.summarize else ({}, {}, {})
    work = {"n_grad_evals": float(work.get("n_grad_evals", 0.0)), "fde": float(work.get("fde", 0.0)),
            **{k: float(v) for k, v in work.items() if k not in ("n_grad_evals", "fde")},
            "wall_s": (warm_wall + wall) / S, "sampling_s": wall * alg.draws / total / S,
            "warmup_s": (warm_wall + wall * burn / total) / S, "compile_s": compile_s / S}
    if S > 1:
        info.update(batch)
    kept = {k: np.asarray(v)[:, burn:] for k, v in stats.items()}
    Ln_warmup = np.asarray(Ln)[:, :burn]
    if isinstance(warm, dict) and "Ln" in warm:  # L_n along the warm-up, where the tuner records it
        Ln_warmup = np.asarray(warm["Ln"], np.float64).reshape(len(warm["Ln"]), -1)
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
