"""One run: target -> posterior -> each estimator -> metrics and artifacts, written atomically.

``run_experiment`` is the worker function every backend executes; its return value (the
"result record") is what ``llc run --json`` prints and what sweeps collect, so its keys are stable.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import socket
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

from llc.analysis.flags import add_cross_sampler_flags
from llc.config import RunConfig, figure_mode, target_n, to_dict
from llc.pipeline import sampling
from llc.store import cache

DEFAULT_ROOT = Path(os.environ.get("LLC_ARTIFACTS", "artifacts"))
RESULT_FILE = "result.json"
# Records rewritten in a complete run directory once its figures are drawn (llc.posthoc.figures);
# they are llc.store.records' GALLERY_FILE, SNIPPET_FILE and FIGURE_RECORD (tests/test_run.py checks).
REWRITTEN_RECORDS = ("gallery.md", "README_snippet.md", "figures.json")
SUMMARY_KEYS = ("llc_mean", "llc_se", "ess", "rhat", "wall_s", "compile_s", "fde", "diverged_chains", "flags")


def summarize(metrics: dict[str, Any]) -> dict[str, Any]:
    """A sampler's entry of the result record (``--json``, the sweep CSV): SUMMARY_KEYS, and the step
    size it used with, for step_size=auto, the rule's reason (llc.pipeline.sampling.choose_step)."""
    out = {k: metrics.get(k) for k in SUMMARY_KEYS}
    info = metrics.get("info") or {}
    out.update({k: info[k] for k in ("step_size", "step_size_rule") if isinstance(info.get(k), (int, float, str))})
    return out


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("llc", "jax", "jaxlib", "blackjax", "arviz", "numpy", "optax", "flax"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def restriction_groups(cfg: RunConfig) -> list[tuple[str, ...]]:
    """The groups ``posterior.restrict`` stands for (a family's, else its one group; ``[()]`` for none),
    checked against the target's parameter paths from its template: before any training."""
    if not cfg.posterior.restrict:
        return [()]
    from llc.engine.restrict import resolve
    from llc.engine.targets import target_module

    return resolve(target_module(cfg.target.kind).template(cfg), tuple(cfg.posterior.restrict))


def check_restriction(cfg: RunConfig, *, family_ok: bool = True, what: str = "") -> None:
    """ConfigError (one line) for a restriction that selects nothing, or a family where one group is needed."""
    groups = restriction_groups(cfg)
    if not family_ok and len(groups) > 1:
        from llc.config import ConfigError

        raise ConfigError(f"posterior.restrict: {what} takes one restriction, not the family "
                          f"{cfg.posterior.restrict[0]} ({len(groups)} groups); give a group's patterns, e.g. "
                          f"--restrict {groups[0][0]}")


def expand_restriction(cfg: RunConfig) -> list[RunConfig]:
    """One config per group of a restriction family (each its own run, batched with the others as
    they differ only in a runtime mask); ``[cfg]`` when ``posterior.restrict`` is no family."""
    import dataclasses

    groups = restriction_groups(cfg)
    if len(groups) == 1:
        return [cfg]
    return [dataclasses.replace(cfg, posterior=dataclasses.replace(cfg.posterior, restrict=g)) for g in groups]


def load_cached(run_dir: Path) -> dict[str, Any]:
    from llc.store.jsonfiles import read_json

    result = read_json(run_dir / RESULT_FILE)
    result["cached"] = True
    result["artifacts"] = str(run_dir)
    return result


def run_experiment(cfg: RunConfig, root: Path | str = DEFAULT_ROOT, *, skip: bool = True,
                   progress: Callable[[str, int, int, str], None] | None = None,
                   log: Callable[[str], None] = lambda msg: None) -> dict[str, Any]:
    """Run (or fetch from the cache) one experiment; returns the result record.

    ``progress(sampler, done, total, phase)`` is called between chunks of draws. The run's key is
    locked while it computes: a second process asking for the same run waits, then reads the
    cache. A cached run is used only if every file its manifest lists is intact.
    """
    return run_experiments([cfg], root, skip=skip, progress=progress, log=log)[0]


def run_experiments(cfgs: list[RunConfig], root: Path | str = DEFAULT_ROOT, *, skip: bool = True,
                    progress: Callable[[str, int, int, str], None] | None = None,
                    log: Callable[[str], None] = lambda msg: None) -> list[dict[str, Any]]:
    """Several runs on one target: each sampler's runs that share a compiled program (they differ
    only in runtime values: epsilon, gamma, beta0, seed) execute as one batched program
    (``llc.engine.driver.run_batch``); every run keeps its run_id, directory and record, and
    gets the numbers it would get alone. Returns the records in the order of ``cfgs``.
    """
    root = cache.check_root(Path(root))
    records: list[dict[str, Any] | None] = [None] * len(cfgs)
    rids = [cache.run_id(cfg) for cfg in cfgs]

    def cached(i: int, usable: Callable[[Path], bool]) -> bool:
        if skip and usable(root / rids[i]):
            log(f"run {rids[i]} found in cache: {root / rids[i]}")
            records[i] = load_cached(root / rids[i])
            _figure_step(root / rids[i], cfgs[i], log)  # figures asked for now and not drawn for it before
            return True
        return False

    todo = [i for i in range(len(cfgs)) if not cached(i, cache.is_complete)]
    if not todo:
        return records  # type: ignore[return-value]
    # Before taking our own locks: a leftover of one of these very runs (killed earlier) is judged
    # by its lock, which nobody holds now.
    for where in cache.cache_dirs(root):
        cache.remove_stale(where, log)
    with contextlib.ExitStack() as locks:
        for rid in sorted({rids[i] for i in todo}):  # one order for every process: no deadlock
            locks.enter_context(cache.key_lock(root / rid, "run", log))
        # Finished by a process we waited for; a damaged entry is moved aside and recomputed.
        todo = [i for i in todo if not cached(i, lambda d: cache.usable(d, "run", log))]
        if todo:
            _compute(cfgs, todo, records, root, progress, log)
    return records  # type: ignore[return-value]


class TargetError(RuntimeError):
    """A target that cannot be sampled (non-finite L0 or w*); one line."""


def _compute(cfgs: list[RunConfig], todo: list[int], records: list[dict[str, Any] | None], root: Path,
             progress: Callable[[str, int, int, str], None] | None, log: Callable[[str], None]) -> None:
    sampling.prepare()
    from llc.engine import devices
    from llc.engine.posterior import make_posterior
    from llc.engine.targets import get_target, posterior_for, target_id, untrained
    from llc.pipeline.resources import backend_line, batch_cap, check_memory

    # One job per (run, sampler), runs in order: batches come out sampler by sampler, as run alone.
    runs = [(i, name) for i in todo for name in cfgs[i].samplers]
    jobs = [sampling.Job(name, getattr(cfgs[i], name), sampling.sampler_key(cfgs[i].seed, name),
                         cfgs[i].theta_proj_dim) for i, name in runs]
    # Plan first: it imports the samplers, the JAX side before the store's modules.
    batches = sampling.plan(jobs, cap=lambda group: batch_cap([cfgs[runs[j][0]] for j in group]))
    sampling.import_store_in_background()

    if len({target_id(cfgs[i]) for i in todo}) > 1:
        raise ValueError("run_experiments: the runs of one batch must share their target")
    check_memory([cfgs[i] for i in todo])  # before the header: a refused run is one line
    spread = devices.requested()
    for i in todo:
        devices.check_rows(target_n(cfgs[i]), spread)
    first = cfgs[todo[0]]
    what = f"run {cache.run_id(first)}" if len(todo) == 1 else f"{len(todo)} runs"
    log(f"{what}: {', '.join(first.samplers)} on {first.target.kind}; {backend_line()}")
    t_start = time.time()
    train_progress = (lambda done, total: progress("target", done, total, "training")) if progress else None

    def shaped_posts() -> dict[int, Any]:  # the untrained target's shapes, for compiling ahead
        loss_fn, params, x, y = untrained(first)
        return {j: make_posterior(loss_fn, params, x, y, cfgs[i].posterior, L0=0.0) for j, (i, _) in enumerate(runs)}

    compiling = sampling.precompile_in_background(batches, jobs, shaped_posts)
    try:
        target = get_target(first, root, progress=train_progress, log=log)
        log(f"target {target.id} ({'loaded from cache' if target.cached else 'built'}): "
            f"kind={target.kind} n={target.n} d={target.d} L0={target.L0:.6g}")
        _require_finite(target, first)
        posts = {i: posterior_for(target, cfgs[i]) for i in todo}
        report = (lambda index, batch, done, total, phase: progress(batch.sampler, done, total, phase)) \
            if progress else None
        outs = sampling.sample(batches, jobs, [posts[i] for i, _ in runs], progress=report)
    finally:
        if compiling is not None:
            compiling.shutdown(wait=False, cancel_futures=True)
    outputs: dict[int, dict[str, Any]] = {i: {} for i in todo}
    for (i, name), out in zip(runs, outs):
        outputs[i][name] = out
    for i in todo:
        records[i] = _save_run(cfgs[i], root, target, posts[i], outputs[i], t_start, log, spread)


def _require_finite(target: Any, cfg: RunConfig) -> None:
    """Sampling around a non-finite L0 or w* only produces NaN chains: stop before it starts."""
    import jax
    import numpy as np

    bad_leaf = any(not np.all(np.isfinite(np.asarray(a))) for a in jax.tree.leaves(target.params))
    if math.isfinite(target.L0) and not bad_leaf:
        return
    what = f"L0 = {target.L0}" if not math.isfinite(target.L0) else "w* has non-finite entries"
    t = cfg.training
    raise TargetError(f"target {target.id}: {what}, nothing to sample around (training: optimizer={t.optimizer}, "
                      f"learning_rate={t.learning_rate:g}, steps={t.steps}); lower training.learning_rate "
                      f"or use training.optimizer=adam")


def _save_run(cfg: RunConfig, root: Path, target: Any, post: Any, outputs: dict[str, Any], t_start: float,
              log: Callable[[str], None], spread: Any) -> dict[str, Any]:
    """Metrics, records and artifacts of one run, written atomically; returns its result record.
    ``spread``: the devices it sampled on (llc.engine.devices.Spread)."""
    import jax

    from llc.analysis.diagnostics import sampler_metrics
    from llc.store.records import DEFAULT_TARGET_SE as TARGET_SE
    from llc.store.records import FIGURE_RECORD, metrics_document, write_run_records
    from llc.store.artifacts import optimisation_trace, save_netcdf, set_flags, to_inference_data, write_tensorboard
    from llc.store.jsonfiles import write_json

    from llc.engine.targets import analytic_llc

    rid = cache.run_id(cfg)
    run_dir = root / rid
    analytic = analytic_llc(cfg, post.n, post.beta, post.gamma)

    pc = cfg.posterior
    restricted = {"restrict": ", ".join(pc.restrict), "n_params": post.size} if pc.restrict else {}
    if pc.data != "train" or pc.data_filter is not None:  # data refinement: what the loss is on
        restricted.update(posterior_data=pc.data, posterior_data_filter=pc.data_filter or "")
    attrs_common = {"n": post.n, "beta": post.beta, "gamma": post.gamma, "dim": post.dim, **restricted,
                    "target_id": target.id, "target_kind": target.kind, "run_id": rid,
                    "analytic_llc": analytic["value"] if analytic else None,
                    "analytic_formula": analytic["formula"] if analytic else None,
                    "analytic_regime": analytic["regime"] if analytic else None}
    idatas = {}
    metrics: dict[str, Any] = {}
    for name, out in outputs.items():
        idata = to_inference_data(name, out.Ln, out.Ln_warmup, out.theta_proj, out.stats,
                                  L0=post.L0, nbeta=post.nbeta, attrs=attrs_common, work=out.work, info=out.info)
        # Metrics from exactly what the NetCDF will hold, so `llc analyze` reproduces them.
        m = sampler_metrics(idata, TARGET_SE)
        idatas[name] = idata
        metrics[name] = m
        if m["diverged_chains"]:
            log(f"{name}: {m['diverged_chains']} of {m['chains']} chains diverged (NaN/inf); excluded from lambda-hat")

    add_cross_sampler_flags(metrics)
    for name, idata in idatas.items():
        set_flags(idata, metrics[name]["flags"])
    result = {
        "run_id": rid,
        "artifacts": str(run_dir),
        "cached": False,
        "devices": spread.devices,
        "target": {"id": target.id, "kind": target.kind, "n": target.n, "d": target.d, "L0": target.L0,
                   "cached": target.cached, "analytic_llc": analytic["value"] if analytic else None},
        "posterior": {"n": post.n, "beta": post.beta, "gamma": post.gamma, "nbeta": post.nbeta,
                      **({"restrict": list(cfg.posterior.restrict), "dim": post.dim} if cfg.posterior.restrict else {}),
                      **({"data": pc.data, "data_filter": pc.data_filter}
                         if pc.data != "train" or pc.data_filter is not None else {})},
        "samplers": {name: summarize(m) for name, m in metrics.items()},
    }
    manifest = {
        "run_id": rid,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": socket.gethostname(),
        "jax_backend": jax.default_backend(),
        "devices": spread.devices,
        "data_shards": spread.data,
        "code_fingerprint": cache.code_fingerprint(),
        "versions": _versions(),
        "target_id": target.id,
        "timings": {name: {k: metrics[name][k] for k in ("wall_s", "compile_s", "warmup_s")} for name in metrics},
        "total_seconds": time.time() - t_start,
    }

    with cache.atomic_dir(run_dir) as tmp:
        for name, idata in idatas.items():
            save_netcdf(idata, tmp / f"{name}.nc")
        for name in (n for n in outputs if getattr(getattr(cfg, n), "tensorboard", False)):  # an optimiser's trace
            write_tensorboard(optimisation_trace(idatas[name]), tmp / "tensorboard" / name)
        write_json(tmp / "config.json", to_dict(cfg))
        metrics_doc = metrics_document(idatas, metrics, TARGET_SE)
        write_json(tmp / "metrics.json", metrics_doc)
        write_json(tmp / RESULT_FILE, result)
        write_run_records(tmp, manifest, to_dict(cfg), metrics_doc)  # manifest.txt, README_snippet.md, gallery.md
        # No figure drawn yet, said explicitly: a figure step killed after its first PNGs then
        # still draws the rest on the next request (without it, PNGs would count as all drawn).
        write_json(tmp / FIGURE_RECORD, {"keys": [], "files": [], "errors": [], "seconds": 0.0})
        # Last: every file with its checksum, marks the run complete. The figure step rewrites the
        # records that list figures in the complete directory, so the cache does not pin those.
        cache.seal(tmp, manifest, exclude=REWRITTEN_RECORDS)
    log(f"run {rid} saved to {run_dir}")
    _figure_step(run_dir, cfg, log)
    return result


def _figure_step(run_dir: Path, cfg: RunConfig, log: Callable[[str], None]) -> None:
    """Figures come after the run is complete, from its saved files: queued on a background pool
    when the caller opened one (``llc run``, ``llc sweep``), else drawn here (llc.posthoc.figures)."""
    cache.remove_stale_files(run_dir)  # half-written PNGs of a figure step killed earlier
    mode = figure_mode(cfg.figures, save_plots=cfg.save_plots)
    if mode == "none":
        return  # without importing the post-hoc layer (matplotlib)
    from llc.posthoc import figures

    keys = figures.plot_keys(mode)
    try:
        figures.after_save(run_dir, keys, log=log)
    except Exception as exc:  # noqa: BLE001 - the run is saved; a figure problem must not fail it
        log(f"figures not drawn ({type(exc).__name__}: {exc}); `llc analyze {run_dir}` draws them")
