"""One run: target -> posterior -> each estimator -> metrics and artifacts, written atomically.

``run_experiment`` is the worker function every backend executes; its return value (the
"result record") is what ``llc run --json`` prints and what sweeps collect, so its keys are stable.
"""

from __future__ import annotations

import os
import platform
import socket
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

from llc.store import cache
from llc.store.artifacts import read_json, save_netcdf, to_inference_data, write_json, write_tensorboard
from llc import registry
from llc.config import RunConfig, to_dict
from llc.posthoc.analyze import DEFAULT_TARGET_SE as TARGET_SE
from llc.posthoc.analyze import metrics_document, write_run_records
from llc.analysis.diagnostics import sampler_metrics

DEFAULT_ROOT = Path(os.environ.get("LLC_ARTIFACTS", "artifacts"))
RESULT_FILE = "result.json"
SUMMARY_KEYS = ("llc_mean", "llc_se", "ess", "rhat", "wall_s", "compile_s", "fde", "diverged_chains")


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


def analytic_llc(cfg: RunConfig, n: int, beta: float, gamma: float) -> dict[str, Any] | None:
    """The exact value where theory gives one (quadratic: with the localizer; DLN: Aoyagi)."""
    from llc import theory

    if cfg.target.kind == "quadratic":
        return {"value": theory.quadratic_learning_coefficient(cfg.target.quad_dim, n, beta, gamma),
                "formula": "(d/2) * n*beta / (n*beta + gamma)"}
    if cfg.target.kind == "dln":
        return {"value": theory.dln_learning_coefficient(cfg.target.dln_widths, cfg.target.dln_rank),
                "formula": "Aoyagi (2024) deep linear network"}
    return None


def sampler_key(seed: int, name: str):
    import jax

    # Each sampler gets its own stream, stable whatever other samplers are selected.
    return jax.random.fold_in(jax.random.key(seed), registry.sampler(name).stream)


def summarize(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: metrics.get(k) for k in SUMMARY_KEYS}


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("llc", "jax", "jaxlib", "blackjax", "arviz", "numpy", "optax", "flax"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def load_cached(run_dir: Path) -> dict[str, Any]:
    result = read_json(run_dir / RESULT_FILE)
    result["cached"] = True
    result["artifacts"] = str(run_dir)
    return result


def run_experiment(cfg: RunConfig, root: Path | str = DEFAULT_ROOT, *, skip: bool = True,
                   progress: Callable[[str, int, int, str], None] | None = None,
                   log: Callable[[str], None] = lambda msg: None) -> dict[str, Any]:
    """Run (or fetch from the cache) one experiment; returns the result record.

    ``progress(sampler, done, total, phase)`` is called between chunks of draws.
    """
    root = Path(root)
    rid = cache.run_id(cfg)
    run_dir = root / rid
    if skip and cache.is_complete(run_dir):
        log(f"run {rid} found in cache: {run_dir}")
        return load_cached(run_dir)

    enable_x64()
    enable_compilation_cache()
    import jax

    from llc.engine.posterior import make_posterior
    from llc.engine.samplers import get_runner
    from llc.engine.targets import get_target

    t_start = time.time()
    target = get_target(cfg, root)
    log(f"target {target.id} ({'loaded from cache' if target.cached else 'built'}): "
        f"kind={target.kind} n={target.n} d={target.d} L0={target.L0:.6g}")
    post = make_posterior(target.loss_fn, target.params, target.x, target.y, cfg.posterior, L0=target.L0)
    analytic = analytic_llc(cfg, post.n, post.beta, post.gamma)

    attrs_common = {"n": post.n, "beta": post.beta, "gamma": post.gamma, "dim": post.dim,
                    "target_id": target.id, "target_kind": target.kind, "run_id": rid,
                    "analytic_llc": analytic["value"] if analytic else None,
                    "analytic_formula": analytic["formula"] if analytic else None}
    outputs = {}
    idatas = {}
    metrics: dict[str, Any] = {}
    for name in cfg.samplers:
        runner = get_runner(name)
        scfg = getattr(cfg, name)
        report = (lambda done, total, phase, _n=name: progress(_n, done, total, phase)) if progress else None
        kwargs = {"proj_dim": cfg.theta_proj_dim}
        if report is not None:
            kwargs["progress"] = report
        out = runner(post, scfg, sampler_key(cfg.seed, name), **kwargs)
        attrs = dict(attrs_common)
        attrs.update({f"work_{k}": v for k, v in out.work.items()})
        attrs.update({f"info_{k}": v for k, v in out.info.items()})
        idata = to_inference_data(name, out.Ln, out.Ln_warmup, out.theta_proj, out.stats,
                                  L0=post.L0, nbeta=post.nbeta, attrs=attrs)
        # Metrics from exactly what the NetCDF will hold, so `llc analyze` reproduces them.
        m = sampler_metrics(idata, TARGET_SE)
        outputs[name] = out
        idatas[name] = idata
        metrics[name] = m
        if m["diverged_chains"]:
            log(f"{name}: {m['diverged_chains']} of {m['chains']} chains diverged (NaN/inf); excluded from lambda-hat")

    result = {
        "run_id": rid,
        "artifacts": str(run_dir),
        "cached": False,
        "target": {"id": target.id, "kind": target.kind, "n": target.n, "d": target.d, "L0": target.L0,
                   "cached": target.cached, "analytic_llc": analytic["value"] if analytic else None},
        "posterior": {"n": post.n, "beta": post.beta, "gamma": post.gamma, "nbeta": post.nbeta},
        "samplers": {name: summarize(m) for name, m in metrics.items()},
    }
    manifest = {
        "run_id": rid,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": socket.gethostname(),
        "jax_backend": jax.default_backend(),
        "code_fingerprint": cache.code_fingerprint(),
        "versions": _versions(),
        "target_id": target.id,
        "timings": {name: {k: metrics[name][k] for k in ("wall_s", "compile_s", "warmup_s")} for name in metrics},
        "total_seconds": time.time() - t_start,
    }

    with cache.atomic_dir(run_dir) as tmp:
        for name, idata in idatas.items():
            save_netcdf(idata, tmp / f"{name}.nc")
        if "vi" in outputs and cfg.vi.tensorboard:
            write_tensorboard(outputs["vi"].info["trace"], tmp / "tensorboard" / "vi")
        write_json(tmp / "config.json", to_dict(cfg))
        metrics_doc = metrics_document(idatas, metrics, TARGET_SE)
        write_json(tmp / "metrics.json", metrics_doc)
        write_json(tmp / RESULT_FILE, result)
        if cfg.save_plots:
            _save_figures(tmp, idatas, metrics, log)
        write_run_records(tmp, manifest, to_dict(cfg), metrics_doc)  # manifest.txt, README_snippet.md, gallery.md
        write_json(tmp / cache.COMPLETE_MARKER, manifest)  # last: marks the run complete
    log(f"run {rid} saved to {run_dir}")
    return result


def _save_figures(run_dir: Path, idatas: dict[str, Any], metrics: dict[str, Any],
                  log: Callable[[str], None]) -> None:
    from llc.posthoc import plots

    plots.make_figures(idatas, metrics, run_dir, plots.PLOT_KEYS, log=log)
