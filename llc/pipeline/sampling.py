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

A job whose step size is ``auto`` becomes one batch member per point of its sampler's grid
(``auto_steps``: llc.engine.autostep.FACTORS in units of the posterior's stiffness at w*, measured
when the posterior exists); ``sample`` applies llc.analysis.health's rule to the points' metrics
and returns the chosen point's output, the run it would be alone with that step size, carrying the
choice, its reason and the grid's numbers in its ``info`` (``choose_step``) and the whole grid's work.
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
from llc.config import AUTO

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
    """What every sampling entry point does first: a CPU's cores as devices (before JAX starts),
    float64 available, compiled programs persisted."""
    from llc.engine import devices

    devices.spread_host_cores()
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
    None for a sampler that runs its own loop, which always has a single member. ``grid`` gives,
    per member, its point on an ``auto`` job's step-size grid (None: the job's own step size); a
    job appears once per point."""

    sampler: str
    members: tuple[int, ...]
    algorithms: tuple[Any, ...] | None
    grid: tuple[int | None, ...] | None = None


def is_auto(job: Job) -> bool:
    return getattr(job.config, "step_size", None) == AUTO


def plan(jobs: Sequence[Job], *, cap: Callable[[list[int]], int] | None = None) -> list[Batch]:
    """The batches that run ``jobs``: samplers in order of first appearance; a driver-run
    sampler's jobs grouped by compiled program and split in parts of at most ``cap(group)``
    (memory; default: no limit). Imports each sampler's module once."""
    from llc.engine import autostep, driver
    from llc.engine.samplers import load
    from llc.pipeline.resources import split_batch

    batches: list[Batch] = []
    for name in dict.fromkeys(job.sampler for job in jobs):
        spec, module = registry.sampler(name), load(name)
        members = [i for i, job in enumerate(jobs) if job.sampler == name]
        if not spec.batched:
            batches += [Batch(name, (i,), None) for i in members]
            continue
        # (job, grid point) entries; a placeholder step for auto points, set when the posterior exists.
        entries = [(i, g) for i in members
                   for g in (range(len(autostep.FACTORS)) if is_auto(jobs[i]) else (None,))]
        algorithms = {e: module.make(_with_step(jobs[e[0]].config, 1.0) if e[1] is not None else jobs[e[0]].config)
                      for e in entries}
        groups: dict[tuple, list[tuple[int, int | None]]] = {}
        for e in entries:
            groups.setdefault((driver.batch_signature(algorithms[e]), jobs[e[0]].proj_dim), []).append(e)
        for group in groups.values():
            cap_n = cap([i for i, _ in group]) if cap else len(group)
            for part in split_batch(group, cap_n):
                batches.append(Batch(name, tuple(i for i, _ in part), tuple(algorithms[e] for e in part),
                                     tuple(g for _, g in part) if any(g is not None for _, g in part) else None))
    return batches


# --------------------------------------------------------------------------- running

def compile_threads(beside_compiles: bool = False) -> int:
    """Threads that compile sampler programs ahead of use (``LLC_COMPILE_THREADS`` overrides).

    On an accelerator, one per program up to the host's cores: the host is otherwise idle.
    On the CPU backend none where the same cores train the target and sample; one (given a second
    core) where the caller's own work meanwhile is itself compiling (``beside_compiles``:
    ``llc.estimate``'s checks, L0 and step-size curvature), as XLA compiles a program on one core.
    """
    import jax

    if "LLC_COMPILE_THREADS" in os.environ:
        return max(0, int(os.environ["LLC_COMPILE_THREADS"]))
    cores = os.cpu_count() or 2
    if jax.default_backend() == "cpu":
        return int(beside_compiles and cores > 1)
    return max(1, cores - 1)


def precompile_in_background(batches: list[Batch], jobs: Sequence[Job],
                             shaped_posts: Callable[[], dict[int, Any]], *,
                             beside_compiles: bool = False) -> ThreadPoolExecutor | None:
    """Compile every driver program of ``batches`` on threads while the caller trains (or loads)
    the target: cold, compilation is most of a small run's time on a GPU, and XLA compiles
    without holding the GIL. ``shaped_posts()`` (called on a thread) gives each job a posterior of
    the right shapes (an untrained w* will do). ``sample`` then finds each program compiled or
    waits for its compile; one that fails here compiles again there and raises. Returns the pool
    (shut it down when sampling ends), or None when no thread is spared (``compile_threads``)."""
    from llc.engine import driver

    driven = [b for b in batches if b.algorithms is not None]
    threads = min(compile_threads(beside_compiles), 2 * len(driven))  # warm-up and sampling programs
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


def _with_step(config: Any, step: float) -> Any:
    return dataclasses.replace(config, step_size=float(step))


def auto_grid(job: Job, post: Any) -> tuple[tuple[float, ...], float]:
    """The step sizes an ``auto`` job tries on ``post`` and the stiffness they are scaled by."""
    import jax

    from llc.engine.samplers import load

    # Its own stream (the power iteration's start), apart from the chains'.
    return load(job.sampler).auto_steps(post, job.config, jax.random.fold_in(job.key, 0xA7))


def sample_batch(index: int, batch: Batch, jobs: Sequence[Job], posts: Sequence[Any], *,
                 progress: BatchProgress | None = None, grids: dict[int, tuple] | None = None) -> list[Any]:
    """The SamplerOutputs of one batch's members, in member order. ``grids`` caches each auto job's
    ``auto_grid`` (computed here when missing)."""
    from llc.engine import driver
    from llc.engine.samplers import load

    kwargs = {"progress": functools.partial(progress, index, batch)} if progress else {}
    first = jobs[batch.members[0]]
    if batch.algorithms is None:
        return [load(batch.sampler).run(posts[batch.members[0]], first.config, first.key, proj_dim=first.proj_dim,
                                        **kwargs)]
    algorithms = list(batch.algorithms)
    if batch.grid is not None:
        grids = {} if grids is None else grids
        module = load(batch.sampler)
        for m, (i, g) in enumerate(zip(batch.members, batch.grid)):
            if g is not None:
                if i not in grids:
                    grids[i] = auto_grid(jobs[i], posts[i])
                algorithms[m] = module.make(_with_step(jobs[i].config, grids[i][0][g]))
    return driver.run_batch(algorithms, [posts[i] for i in batch.members],
                            [jobs[i].key for i in batch.members], proj_dim=first.proj_dim, **kwargs)


def sample(batches: list[Batch], jobs: Sequence[Job], posts: Sequence[Any], *,
           progress: BatchProgress | None = None) -> list[Any]:
    """Run every batch in order; the SamplerOutput of each job, in job order. ``posts[i]`` is job
    i's posterior (the members of a batch share the loss and data). An ``auto`` job's output is its
    chosen grid point's (``choose_step``)."""
    outputs: list[Any] = [None] * len(jobs)
    points: dict[int, dict[int, Any]] = {}
    grids: dict[int, tuple] = {}
    for index, batch in enumerate(batches):
        outs = sample_batch(index, batch, jobs, posts, progress=progress, grids=grids)
        for m, (i, out) in enumerate(zip(batch.members, outs)):
            g = batch.grid[m] if batch.grid is not None else None
            if g is None:
                outputs[i] = out
            else:
                points.setdefault(i, {})[g] = out
    _lower_diverged_grids(points, grids, jobs, posts, len(batches), progress)
    for i, by_point in points.items():
        steps, lam = grids[i]
        outputs[i] = choose_step([by_point[g] for g in range(len(steps))], posts[i], steps, lam)
    return outputs


def _smallest_step_diverged(out: Any) -> bool:
    from llc.analysis.diagnostics import diverged_chains

    arrays = [out.Ln] + ([out.theta_proj] if out.theta_proj is not None else [])
    return bool(diverged_chains(*arrays).any())


def _lower_diverged_grids(points: dict[int, dict[int, Any]], grids: dict[int, tuple], jobs: Sequence[Job],
                          posts: Sequence[Any], first_index: int, progress: BatchProgress | None) -> None:
    """An auto job whose smallest grid step diverged gets the grid below it too (LOWER_GRID_SHIFT
    times smaller, run as one more batched program), in place in ``points`` and ``grids``: the
    stiffness at w* sets the grid, and where the chains go can be far stiffer (a classifier whose
    loss is flat at w* because its logits saturate: the grok transformer after memorisation)."""
    from llc.engine.autostep import LOWER_GRID_SHIFT

    lower = [i for i, by_point in points.items() if _smallest_step_diverged(by_point[0])]
    if not lower:
        return
    sub_jobs = [jobs[i] for i in lower]
    sub_grids = {k: (tuple(s * LOWER_GRID_SHIFT for s in grids[i][0]), grids[i][1]) for k, i in enumerate(lower)}
    found: dict[int, dict[int, Any]] = {}
    for index, batch in enumerate(plan(sub_jobs)):
        outs = sample_batch(first_index + index, batch, sub_jobs, [posts[i] for i in lower], progress=progress,
                            grids=sub_grids)
        for k, g, out in zip(batch.members, batch.grid, outs):
            found.setdefault(k, {})[g] = out
    for k, i in enumerate(lower):
        low_steps, lam = sub_grids[k]
        n_low = len(low_steps)
        grids[i] = (low_steps + tuple(grids[i][0]), lam)
        points[i] = {**found[k], **{g + n_low: out for g, out in points[i].items()}}


def sample_one(sampler: str, post: Any, config: Any, key: Any, *, proj_dim: int = 4,
               progress: Callable[[int, int, str], None] | None = None) -> Any:
    """One sampler run on one posterior (the road with a single job)."""
    jobs = [Job(sampler, config, key, proj_dim)]
    report = (lambda index, batch, done, total, phase: progress(done, total, phase)) if progress else None
    return sample(plan(jobs), jobs, [post], progress=report)[0]


# --------------------------------------------------------------------------- step_size=auto

def mean_mala(out: Any) -> float | None:
    """The mean MALA acceptance an SGLD output recorded (None where it recorded none)."""
    import numpy as np

    acc = out.stats.get("mala_acceptance")
    if acc is None or not np.isfinite(acc).any():
        return None
    return float(np.nanmean(acc))


def choose_step(outs: Sequence[Any], post: Any, steps: Sequence[float], lam: float) -> Any:
    """The output of the grid point llc.analysis.health's rule chooses among ``outs`` (one per step in
    ``steps``, increasing), with the choice and its reason in its info and the grid's work in its work.
    When no point is healthy, the best-mixed point without diverged chains (lowest R-hat) stands in
    and ``auto_step_chosen_healthy`` is 0, which llc.analysis.flags reports."""
    import math

    from llc.analysis.health import AGREE_SE, BACKOFF, RHAT_MAX, extrapolate_to_zero_step, step_choice
    from llc.engine.autostep import FACTORS

    rows = []
    for step, out in zip(steps, outs):
        m = evaluate(out, post)
        rows.append({"step_size": step, "llc_mean": m["llc_mean"], "llc_se": m["llc_se"], "rhat": m["rhat"],
                     "flags": m["flags"], "mala_acceptance": mean_mala(out), "diverged": m["diverged_chains"]})
    order = list(range(len(rows)))
    chosen, plateau, good = step_choice(rows, order, "step_size")
    name = outs[0].name
    extrapolated = None

    def lam_hat(r):
        return "nan" if r["llc_mean"] is None else f"{r['llc_mean']:.4g} ± {r['llc_se']:.2g}"

    lowered = len(steps) > len(FACTORS)  # _lower_diverged_grids added the grid below
    grid_text = (f"grid {steps[0]:.3g}..{steps[-1]:.3g} (eps*lam_max = {steps[0] * lam:.3g}..{steps[-1] * lam:.3g}, "
                 f"lam_max = {lam:.4g}"
                 + (f"; lowered below {FACTORS[0]:g}/lam_max after its smallest step diverged" if lowered else "")
                 + ")")
    if chosen is not None:
        c = rows[chosen]
        why = (f"{name}.step_size=auto chose {c['step_size']:.4g}: healthy (no flag, R-hat {c['rhat']:.4f} < {RHAT_MAX}"
               + (f", MALA acceptance {c['mala_acceptance']:.3f}" if c["mala_acceptance"] is not None else "")
               + f"), lambda-hat {lam_hat(c)}; ")
        if len(plateau) > 1:
            why += (f"the healthy steps agree within {AGREE_SE:g} combined SE from {rows[plateau[0]]['step_size']:.3g} to "
                    f"{rows[plateau[-1]]['step_size']:.3g} ({lam_hat(rows[plateau[-1]])}); the largest at most 1/{BACKOFF:g} "
                    "of that top is used")
        else:
            nxt = [i for i in good if i > chosen]
            why += "the smallest healthy step" + (" (smaller ones did not mix in these draws)" if chosen > 0 else "")
            if nxt:
                extrapolated = extrapolate_to_zero_step(c, rows[nxt[0]])
                why += (f"; the next healthy one disagrees ({lam_hat(rows[nxt[0]])}), so the step's bias shows: "
                        f"lambda-hat is extrapolated linearly to a zero step from the two (Richardson), "
                        f"{extrapolated[0]:.4g} ± {extrapolated[1]:.2g}")
            else:
                why += "; no larger one is healthy, so its bias is not checked against another step"
        why += f"; {grid_text}"
    else:
        usable = [i for i in order if not rows[i]["diverged"] and rows[i]["rhat"] is not None
                  and math.isfinite(rows[i]["rhat"])] or order
        chosen = min(usable, key=lambda i: rows[i]["rhat"] if rows[i]["rhat"] is not None else math.inf)
        c = rows[chosen]
        reasons = []
        for r in rows:
            bad = (r["flags"][0].split(":")[0] if r["flags"] else
                   "no R-hat" if r["rhat"] is None else f"R-hat {r['rhat']:.3f}")
            reasons.append(f"{r['step_size']:.3g}: {bad}")
        why = (f"{name}.step_size=auto: no step size on the {grid_text} is healthy ({', '.join(reasons)}); "
               f"lambda-hat is from the best-mixed one, {c['step_size']:.4g} (R-hat {_fmt(c['rhat'])}); more draws "
               f"({name}.draws) let a smaller step mix")
    out = outs[chosen]
    work = dict(out.work)
    for key in ("n_grad_evals", "fde", "full_loss_evals"):  # the grid's cost is the estimate's cost
        if key in work:
            work[key] = float(sum(o.work.get(key, 0.0) for o in outs))

    def column(key):
        return [math.nan if r[key] is None else float(r[key]) for r in rows]

    info = {**out.info, "step_size": float(steps[chosen]), "step_size_rule": why, "auto_step_stiffness": float(lam),
            "auto_step_chosen_healthy": int(chosen in good), "auto_step_grid": [float(v) for v in steps],
            "auto_step_llc": column("llc_mean"), "auto_step_se": column("llc_se"), "auto_step_rhat": column("rhat"),
            "auto_step_mala": column("mala_acceptance"), "auto_step_healthy": [int(i in good) for i in order],
            "auto_step_extrapolated": int(extrapolated is not None)}
    if extrapolated is not None:
        info["llc_extrapolated"], info["llc_extrapolated_se"] = extrapolated
    return out._replace(work=work, info=info)


def _fmt(value: float | None) -> str:
    return "none" if value is None else f"{value:.3f}"


# --------------------------------------------------------------------------- metrics and flags

def evaluate(out: Any, post: Any, *, analytic: dict[str, Any] | None = None, kind: str | None = None) -> dict[str, Any]:
    """lambda-hat ± SE, ESS, R-hat and the failure flags of ``llc run`` (llc.analysis.flags) for one
    sampler output in memory; ``analytic`` (llc.engine.targets.analytic_llc) and the target
    ``kind`` enable the flags that compare with them."""
    from llc.analysis.diagnostics import llc_draws, llc_metrics
    from llc.analysis.flags import sampler_flags

    from llc.analysis.health import apply_extrapolation

    independent = registry.sampler(out.name).independent_draws
    metrics = apply_extrapolation(llc_metrics(out.Ln, post.L0, post.nbeta, out.theta_proj, independent=independent),
                                  out.info)
    kept = [i for i, v in enumerate(metrics["llc_per_chain"]) if v is not None]
    attrs = {"dim": post.dim, "nbeta": post.nbeta, "gamma": post.gamma, "target_kind": kind,
             **({f"analytic_{k}" if k != "value" else "analytic_llc": v for k, v in analytic.items()} if analytic else {})}
    metrics["flags"] = sampler_flags(llc_draws(out.Ln[kept], post.L0, post.nbeta), metrics, attrs, out.info,
                                     out.name, None if out.theta_proj is None else out.theta_proj[kept])
    return metrics
