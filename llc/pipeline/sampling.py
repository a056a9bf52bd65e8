"""The one road from sampler configs to draws, metrics and flags.

Runs and sweeps (``experiment``), ``llc calibrate``, ``llc trajectory`` and the Python API all
sample through this module and re-implement none of its steps::

    prepare()                                   # x64 and the persistent compilation cache
    jobs = [Job(sampler, config_section, sampler_key(seed, sampler), proj_dim), ...]
    batches = plan(jobs, cap=...)               # jobs that share a compiled program, parts that fit
    outputs = sample(batches, jobs, posts)      # one vmapped program per batch (llc.engine.driver)
    metrics = evaluate(outputs[i], posts[i])    # lambda-hat, SE, ESS, R-hat and failure flags

A batch holds jobs of one driver-run sampler whose Algorithms share ``driver.batch_signature`` and
θ-projection size: they differ only in runtime values (step size, gamma, n*beta, seed, w*) and
execute as one program, each with the random stream it would have alone. A sampler that runs its
own loop (VI) gets a batch of one job. A run saved to disk takes its metrics from what its NetCDF
holds instead (``llc.analysis.diagnostics.sampler_metrics``), so ``llc analyze`` reproduces them.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

from llc import registry

# ArviZ, xarray, pandas and the store (seconds of imports) are needed only once draws exist: a cold
# run imports them on a thread while it trains and compiles (``import_store_in_background``).
STORE_MODULES = ("llc.store.artifacts", "llc.analysis.diagnostics", "llc.store.records")


# --------------------------------------------------------------------------- process set-up

def enable_x64() -> None:
    import jax

    jax.config.update("jax_enable_x64", True)


def enable_compilation_cache() -> None:
    """Persist compiled XLA programs across processes: sweeps, backends and repeated runs of
    similar configs otherwise spend most of their time recompiling identical samplers.
    ``LLC_JAX_CACHE`` sets the directory; ``LLC_JAX_CACHE=off`` disables it."""
    import jax

    where = os.environ.get("LLC_JAX_CACHE", str(Path.home() / ".cache" / "llc" / "xla"))
    if where.lower() in ("off", "0", "none", ""):
        return
    if jax.config.jax_compilation_cache_dir is None:
        jax.config.update("jax_compilation_cache_dir", where)
        # Every program: with hyperparameters as arguments, a sweep's runs share executables, and
        # even sub-second compiles add up over its points.
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def prepare() -> None:
    """What every sampling entry point does first: float64 available, compiled programs persisted."""
    enable_x64()
    enable_compilation_cache()


def import_store_in_background() -> None:
    """Import ``STORE_MODULES`` on a thread (after the JAX side's imports: the two share modules)."""
    def load() -> None:
        for module in STORE_MODULES:
            importlib.import_module(module)

    threading.Thread(target=load, name="llc-import-store", daemon=True).start()


def sampler_key(seed: int, name: str):
    """Each sampler's own random stream, stable whatever other samplers are selected."""
    return _fold_in_stream()(seed, registry.sampler(name).stream)


@functools.cache
def _fold_in_stream():
    import jax

    # One compiled program for every seed and sampler (eager calls compile two per call).
    return jax.jit(lambda seed, stream: jax.random.fold_in(jax.random.key(seed), stream))


# --------------------------------------------------------------------------- planning

@dataclasses.dataclass(frozen=True)
class Job:
    """One sampler run, before its posterior exists: the sampler's name, its config section, its
    random key and the size of the θ projection it records."""

    sampler: str
    config: Any
    key: Any
    proj_dim: int = 4


class Batch(NamedTuple):
    """Jobs (indices into the job list) that execute together; ``algorithms`` (one per member) is
    None for a sampler that runs its own loop, which always has a single member."""

    sampler: str
    members: tuple[int, ...]
    algorithms: tuple[Any, ...] | None


def plan(jobs: Sequence[Job], *, cap: Callable[[list[int]], int] | None = None) -> list[Batch]:
    """The batches that run ``jobs``: samplers in order of first appearance; a driver-run
    sampler's jobs grouped by compiled program and split in parts of at most ``cap(group)``
    (memory; default: no limit). Imports each sampler's module once."""
    from llc.engine import driver
    from llc.engine.samplers import load
    from llc.pipeline.resources import split_batch

    batches: list[Batch] = []
    for name in dict.fromkeys(job.sampler for job in jobs):
        spec, module = registry.sampler(name), load(name)
        members = [i for i, job in enumerate(jobs) if job.sampler == name]
        if not spec.batched:
            batches += [Batch(name, (i,), None) for i in members]
            continue
        algorithms = {i: module.make(jobs[i].config) for i in members}
        groups: dict[tuple, list[int]] = {}
        for i in members:
            groups.setdefault((driver.batch_signature(algorithms[i]), jobs[i].proj_dim), []).append(i)
        for group in groups.values():
            for part in split_batch(group, cap(group) if cap else len(group)):
                batches.append(Batch(name, tuple(part), tuple(algorithms[i] for i in part)))
    return batches


# --------------------------------------------------------------------------- running

def compile_threads() -> int:
    """Threads that compile sampler programs ahead of use (``LLC_COMPILE_THREADS`` overrides).

    On an accelerator, one per program up to the host's cores: the host is otherwise idle.
    None on the CPU backend, where the same cores train the target and sample.
    """
    import jax

    if "LLC_COMPILE_THREADS" in os.environ:
        return max(0, int(os.environ["LLC_COMPILE_THREADS"]))
    return 0 if jax.default_backend() == "cpu" else max(1, (os.cpu_count() or 2) - 1)


def precompile_in_background(batches: list[Batch], jobs: Sequence[Job],
                             shaped_posts: Callable[[], dict[int, Any]]) -> ThreadPoolExecutor | None:
    """Compile every driver program of ``batches`` on threads while the caller trains (or loads)
    the target: cold, compilation is most of a small run's time on a GPU, and XLA compiles
    without holding the GIL. ``shaped_posts()`` (called on a thread) gives each job a posterior of
    the right shapes (an untrained w* will do). ``sample`` then finds each program compiled or
    waits for its compile; one that fails here compiles again there and raises. Returns the pool
    (shut it down when sampling ends), or None when no thread is spared (CPU)."""
    from llc.engine import driver

    driven = [b for b in batches if b.algorithms is not None]
    threads = min(compile_threads(), 2 * len(driven))  # warm-up and sampling programs
    if threads == 0 or not driven:
        return None
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="llc-compile")

    def start() -> None:
        posts = shaped_posts()
        # Tuners first: their programs compile longest.
        for batch in sorted(driven, key=lambda b: b.algorithms[0].warmup is None):
            programs = ("warmup", "sample") if batch.algorithms[0].warmup is not None else ("sample",)
            for program in programs:
                pool.submit(driver.precompile, list(batch.algorithms), [posts[i] for i in batch.members],
                            proj_dim=jobs[batch.members[0]].proj_dim, programs=(program,))

    pool.submit(start)
    return pool


BatchProgress = Callable[[int, Batch, int, int, str], None]  # (batch index, batch, done, total, phase)


def sample_batch(index: int, batch: Batch, jobs: Sequence[Job], posts: Sequence[Any], *,
                 progress: BatchProgress | None = None) -> list[Any]:
    """The SamplerOutputs of one batch's members, in member order."""
    from llc.engine import driver
    from llc.engine.samplers import load

    kwargs = {"progress": functools.partial(progress, index, batch)} if progress else {}
    first = jobs[batch.members[0]]
    if batch.algorithms is None:
        return [load(batch.sampler).run(posts[batch.members[0]], first.config, first.key, proj_dim=first.proj_dim,
                                        **kwargs)]
    return driver.run_batch(list(batch.algorithms), [posts[i] for i in batch.members],
                            [jobs[i].key for i in batch.members], proj_dim=first.proj_dim, **kwargs)


def sample(batches: list[Batch], jobs: Sequence[Job], posts: Sequence[Any], *,
           progress: BatchProgress | None = None) -> list[Any]:
    """Run every batch in order; the SamplerOutput of each job, in job order. ``posts[i]`` is job
    i's posterior (the members of a batch share the loss and data)."""
    outputs: list[Any] = [None] * len(jobs)
    for index, batch in enumerate(batches):
        for i, out in zip(batch.members, sample_batch(index, batch, jobs, posts, progress=progress)):
            outputs[i] = out
    return outputs


def sample_one(sampler: str, post: Any, config: Any, key: Any, *, proj_dim: int = 4,
               progress: Callable[[int, int, str], None] | None = None) -> Any:
    """One sampler run on one posterior (the road with a single job)."""
    jobs = [Job(sampler, config, key, proj_dim)]
    report = (lambda index, batch, done, total, phase: progress(done, total, phase)) if progress else None
    return sample(plan(jobs), jobs, [post], progress=report)[0]


# --------------------------------------------------------------------------- metrics and flags

def evaluate(out: Any, post: Any, *, analytic: dict[str, Any] | None = None, kind: str | None = None) -> dict[str, Any]:
    """lambda-hat ± SE, ESS, R-hat and the failure flags of ``llc run`` (llc.analysis.flags) for one
    sampler output in memory; ``analytic`` (llc.engine.targets.analytic_llc) and the target
    ``kind`` enable the flags that compare with them."""
    from llc.analysis.diagnostics import llc_draws, llc_metrics
    from llc.analysis.flags import sampler_flags

    independent = registry.sampler(out.name).independent_draws
    metrics = llc_metrics(out.Ln, post.L0, post.nbeta, out.theta_proj, independent=independent)
    kept = [i for i, v in enumerate(metrics["llc_per_chain"]) if v is not None]
    attrs = {"dim": post.dim, "nbeta": post.nbeta, "gamma": post.gamma, "target_kind": kind,
             **({f"analytic_{k}" if k != "value" else "analytic_llc": v for k, v in analytic.items()} if analytic else {})}
    metrics["flags"] = sampler_flags(llc_draws(out.Ln[kept], post.L0, post.nbeta), metrics, attrs, out.info,
                                     out.name, None if out.theta_proj is None else out.theta_proj[kept])
    return metrics
