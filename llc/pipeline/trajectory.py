"""``llc trajectory``: lambda-hat at every training checkpoint, with curvature beside it.

Every checkpoint is a run with w* = that checkpoint's parameters: all share the loss, the data and
the compiled program, so they execute in batches of ``max_batch`` checkpoints as one ``vmap``ped
program (``llc.pipeline.sampling``), each with the random stream of the trajectory's seed.
Each checkpoint's result is written to ``points/`` as soon as its batch finishes (atomically), so
an interrupted trajectory resumes with only the missing checkpoints; a trajectory with other
sampler settings is another directory and never retrains the target (checkpoints live in the
target artifact).

Per checkpoint: lambda-hat ± SE, R-hat, ESS, failure flags, and curvature at w*: full-batch
gradient norm, Hessian trace (Hutchinson, with its SE), empirical Fisher trace, weight norm; plus
the train/test loss and accuracy logged during training when known; for modular targets also what
training recorded with them (``llc.engine.targets.probes``: input-space sensitivity, representation
and per-layer weight norms, Adam's dynamics).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import zipfile
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from llc import registry
from llc.store import cache

from llc.store.layout import TRAJ_DIR
CSV_COLUMNS = ("step", "llc_mean", "llc_se", "rhat", "ess", "step_size", "train_loss", "test_loss", "train_acc",
               "test_acc", "grad_norm", "hessian_trace", "hessian_trace_se", "fisher_trace", "weight_norm", "L0", "flags",
               "step_size_rule")
# Recorded in training where the target kind has probes (modular: llc.engine.targets.probes), with
# one wnorm_<layer> column per layer; written only when some checkpoint has them.
PROBE_COLUMNS = ("spectral_smoothness", "jacobian_norm", "jacobian_norm_se", "input_hessian_trace",
                 "input_hessian_trace_se", "representation_norm", "effective_lr_mean", "effective_lr_max",
                 "adam_ratio_mean", "adam_ratio_max", "update_decay_ratio")
ROUTING_COLUMNS = ("routing_entropy", "head_utilisation")  # routed networks only
WNORM_PREFIX = "wnorm_"
TEXT_COLUMNS = ("flags", "step_size_rule")  # strings in trajectory.nc; every other column but step is a float
HUTCHINSON_PROBES = 64


@dataclasses.dataclass(frozen=True)
class Checkpointed:
    """What a trajectory needs: a loss, checkpoints (pytrees) with their steps, the training data
    the posterior is built on, and optional per-checkpoint training metrics."""

    loss_fn: Callable  # loss_fn(params, x, y): mean loss over a batch
    steps: np.ndarray
    params: Sequence[Any]
    x: Any
    y: Any
    metrics: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    # Named with its owner (pid, host) as the store's atomic files are: a writer killed mid-write
    # leaves a file that the next trajectory (``cache.remove_stale_files``) and ``llc clean`` remove.
    tmp = path.with_name(f".{path.name}.tmp-{cache.owner_tag()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _save_npz(path: Path, **arrays) -> None:
    with path.open("wb") as fh:  # a file object: np.savez would append ".npz" to a temporary name
        np.savez(fh, **arrays)


def _point_file(out_dir: Path, step: int, group: int | None = None) -> Path:
    """A checkpoint's saved result; with a restriction family, one per (checkpoint, group)."""
    suffix = "" if group is None else f"_group_{group:03d}"
    return out_dir / "points" / f"step_{int(step):08d}{suffix}.npz"


def _load_point(path: Path, log: Callable[[str], None] = lambda msg: None) -> dict[str, Any] | None:
    """A saved checkpoint result, or None when missing or damaged (then it is recomputed). A point's
    npz is a zip whose members carry CRC-32s: a truncated or bit-flipped file fails to read."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as fh:
            row = json.loads(str(fh["row"]))
            return {"row": row, "Ln": fh["Ln"], "theta": fh["theta"]}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        log(f"trajectory: {path.name} is damaged ({type(exc).__name__}: {exc}); recomputing that checkpoint")
        return None


def _curvature(loss_fn: Callable, params_list: list, x, y, seed: int) -> list[dict[str, float]]:
    import jax

    from llc.engine import curvature as C

    data = (x, y)
    grad_norm = jax.jit(lambda p: C.grad_norm(loss_fn, p, data))
    htrace = jax.jit(lambda p, k: C.hessian_trace(loss_fn, p, data, k, probes=HUTCHINSON_PROBES))
    fisher = jax.jit(lambda p: C.fisher_trace(loss_fn, p, data, batch=min(256, int(np.shape(x)[0]))))
    wnorm = jax.jit(C.weight_norm)
    out = []
    for p in params_list:
        tr, se = htrace(p, jax.random.fold_in(jax.random.key(seed), 0xC0))
        out.append({"grad_norm": float(grad_norm(p)), "hessian_trace": float(tr), "hessian_trace_se": float(se),
                    "fisher_trace": float(fisher(p)), "weight_norm": float(wnorm(p))})
    return out


def compute(data: Checkpointed, out_dir: Path | str, *, sampler: str = "sgld", sampler_cfg: Any = None,
            posterior_cfg: Any = None, seed: int = 0, proj_dim: int = 4, max_batch: int = 16,
            target: dict[str, Any] | None = None,
            progress: Callable[[int, int, str], None] | None = None,
            log: Callable[[str], None] = lambda msg: None) -> dict[str, Any]:
    """Lambda-hat and curvature at every checkpoint of ``data``; writes ``out_dir`` and returns its summary.

    Checkpoints already in ``out_dir/points`` are not recomputed.
    """
    from llc import config as C
    from llc.engine.posterior import make_posterior
    from llc.pipeline import sampling

    sampling.prepare()
    out_dir = Path(out_dir)
    (out_dir / "points").mkdir(parents=True, exist_ok=True)
    spec = registry.sampler(sampler)
    if not spec.batched:
        raise C.ConfigError(f"sampler: {sampler!r} has no Markov chain to batch over checkpoints; choose one of "
                            + ", ".join(registry.batched_names()))
    scfg = sampler_cfg if sampler_cfg is not None else C.sampler_class(sampler)()
    pcfg = posterior_cfg if posterior_cfg is not None else C.PosteriorConfig()
    steps = [int(s) for s in data.steps]
    # A restriction family (per-layer, per-head) is one unit per (checkpoint, group); all units
    # share the compiled program (masks are runtime arrays) and run in the same batches.
    from llc.engine import restrict as restriction

    groups = restriction.resolve(data.params[0], tuple(pcfg.restrict))
    labels = [restriction.label(g) if g else "" for g in groups]
    family = len(groups) > 1
    units = [(i, g) for i in range(len(steps)) for g in range(len(groups))]

    def point(u) -> Path:
        i, g = units[u]
        return _point_file(out_dir, steps[i], g if family else None)

    for where in (out_dir, out_dir / "points"):
        cache.remove_stale_files(where)  # half-written files of a trajectory killed earlier
    todo = [u for u in range(len(units)) if _load_point(point(u), log) is None]
    what = "units (checkpoint x group)" if family else "checkpoints"
    if len(todo) < len(units):
        log(f"trajectory: {len(units) - len(todo)} of {len(units)} {what} already done; computing {len(todo)}")
    if family:
        log(f"trajectory: {len(groups)} restricted groups ({pcfg.restrict[0]}): {', '.join(labels)}")
    job = sampling.Job(sampler, scfg, sampling.sampler_key(seed, sampler), proj_dim)  # every unit's
    t0 = time.perf_counter()
    compile_s = 0.0
    L0s: dict[int, float] = {}
    if todo:
        i, g = units[todo[0]]
        first = make_posterior(data.loss_fn, data.params[i], data.x, data.y, pcfg, restrict=groups[g])
        L0s[i] = first.L0
        fit = _units_that_fit(first, scfg, sampling.is_auto(job))
        if fit is not None and fit < min(max_batch, len(todo)):
            log(f"trajectory: {fit} {what} per batched program fit in memory (max_batch {max_batch})")
            max_batch = fit
    # A family's groups each in batches of their own: a batch's program then skips the gradients and
    # noise of the leaves its every unit holds at w* (a per-layer family's other layers).
    parts = [p for p in ([u for u in todo if units[u][1] == g] for g in range(len(groups))) if p]
    batches = []
    for part in parts:
        # Equal batches of at most max_batch: padding the last to a full one wastes as little as it can.
        size = -(-len(part) // -(-len(part) // max_batch))
        batches += [(part[k:k + size], size) for k in range(0, len(part), size)]
    start, curv = 0, {}
    for idx, size in batches:
        # The last batch is padded with its last unit: one compiled program for every batch of a group.
        padded = idx + [idx[-1]] * (size - len(idx))
        posts = []
        for u in padded:
            i, g = units[u]
            post = make_posterior(data.loss_fn, data.params[i], data.x, data.y, pcfg, L0=L0s.get(i),
                                  restrict=groups[g])
            L0s[i] = post.L0
            posts.append(post)
        jobs = [job] * len(padded)

        def report(index, batch, done, total, phase, _n=len(idx), _b=start):
            if progress:
                progress(_b, len(todo), f"{phase}: {what} {_b + 1}-{_b + _n} of {len(todo)}, draw {done}/{total}")

        outs = sampling.sample(sampling.plan(jobs), jobs, posts, progress=report)
        compile_s += outs[0].info.get("batch_compile_s", outs[0].work["compile_s"])
        checkpoints = [i for i in dict.fromkeys(units[u][0] for u in idx) if i not in curv]  # once per checkpoint
        if checkpoints:
            curv.update(zip(checkpoints, _curvature(data.loss_fn, [data.params[i] for i in checkpoints], data.x,
                                                    data.y, seed)))
        for u, post, out in zip(idx, posts, outs):
            i, g = units[u]
            m = sampling.evaluate(out, post)
            row = {"step": steps[i], **({"group": labels[g], "dim": post.dim} if family or groups[g] else {}),
                   "llc_mean": m["llc_mean"], "llc_se": m["llc_se"], "rhat": m["rhat"],
                   "ess": m["ess"], "step_size": out.info.get("step_size"),
                   "step_size_rule": out.info.get("step_size_rule", ""), "L0": post.L0, "nbeta": post.nbeta,
                   "gamma": post.gamma, **curv[i],
                   **{k: float(np.asarray(v)[i]) for k, v in data.metrics.items()}, "flags": m["flags"]}
            _atomic_write(point(u), lambda p, r=row, o=out: _save_npz(
                p, row=json.dumps(r, default=float), Ln=o.Ln, theta=o.theta_proj))
        log(f"trajectory: {what} {start + 1}-{start + len(idx)} of {len(todo)} done")
        start += len(idx)
        if progress:
            progress(start, len(todo), what)
    from llc.engine import devices

    return _assemble(out_dir, steps, sampler, wall_s=time.perf_counter() - t0, compile_s=compile_s,
                     computed=len(todo), target=target or {}, groups=labels if family else None,
                     devices=devices.requested().devices)


def _units_that_fit(post: Any, scfg: Any, auto: bool) -> int | None:
    """Units (checkpoint x group) whose chains fit in memory at once (None: unknown). A unit's chains,
    a step grid's points each when ``auto``, hold their state and take full-batch gradients together
    (SGLD's MALA check: at two positions per chain; HMC and MCLMC: at one); XLA measures that
    program's activations on this backend."""
    import jax

    from llc.engine import autostep
    from llc.engine.posterior import cast
    from llc.pipeline import resources

    chains = scfg.chains * (len(autostep.FACTORS) if auto else 1)
    post = cast(post, scfg.dtype)
    spec = lambda a, *lead: jax.ShapeDtypeStruct((*lead, *np.shape(a)), a.dtype)  # noqa: E731
    stacked = jax.tree.map(lambda a: spec(a, 2 * chains), post.w_star)
    gradients = jax.vmap(jax.value_and_grad(post.loss_fn), in_axes=(0, None, None))
    activations = resources.measured_bytes(gradients, stacked, jax.tree.map(spec, post.x),
                                           jax.tree.map(spec, post.y))
    state = chains * post.size * np.dtype(scfg.dtype).itemsize * resources.STATE_COPIES
    return resources.fitting(activations + state)


def _columns(rows: list[dict[str, Any]]) -> tuple[str, ...]:
    """CSV_COLUMNS, then the probe and per-layer columns that some row has."""
    present = {k for r in rows for k in r}
    return (CSV_COLUMNS + tuple(c for c in PROBE_COLUMNS + ROUTING_COLUMNS if c in present)
            + tuple(sorted(k for k in present if k.startswith(WNORM_PREFIX))))


def _assemble(out_dir: Path, steps: list[int], sampler: str, *, wall_s: float, compile_s: float,
              computed: int, target: dict[str, Any], groups: list[str] | None = None,
              devices: int = 1) -> dict[str, Any]:
    """trajectory.csv, trajectory.nc, trajectory.png and summary.json from the saved points; with a
    restriction family (``groups``), a row per (checkpoint, group) and a ``group`` dimension;
    ``devices``: the local devices its batches were spread over."""
    import pandas as pd
    import xarray as xr

    G = len(groups) if groups else 1
    points = [_load_point(_point_file(out_dir, s, g if groups else None)) for s in steps for g in range(G)]
    rows = [p["row"] for p in points]
    columns = _columns(rows)
    if "group" in rows[0]:  # a restriction: which group, and its dimension, after the step
        columns = columns[:1] + ("group", "dim") + columns[1:]
    table = pd.DataFrame([{c: (("; ".join(r["flags"])) if c == "flags" else r.get(c)) for c in columns}
                          for r in rows])
    _atomic_write(out_dir / "trajectory.csv", lambda p: table.to_csv(p, index=False))

    def grid(values, dtype=None):  # per-point values as (step, group, ...), or (step, ...) without groups
        arr = np.asarray(values, dtype) if dtype else np.stack(values)
        return arr.reshape(len(steps), G, *arr.shape[1:]) if groups else arr

    dims = ("step", "group") if groups else ("step",)
    per_row = {c: (dims, grid([np.nan if r.get(c) is None else r[c] for r in rows], np.float64))
               for c in columns if c not in ("step", "group") and c not in TEXT_COLUMNS}
    ds = xr.Dataset(
        {"Ln": ((*dims, "chain", "draw"), grid([p["Ln"] for p in points])),
         "llc": ((*dims, "chain", "draw"), grid([r["nbeta"] * (p["Ln"] - r["L0"]) for p, r in zip(points, rows)])),
         "theta_proj": ((*dims, "chain", "draw", "proj"), grid([p["theta"] for p in points])),
         **per_row,
         "flags": (dims, grid(["; ".join(r["flags"]) for r in rows], str)),
         "step_size_rule": (dims, grid([r.get("step_size_rule") or "" for r in rows], str))},
        coords={"step": np.asarray(steps, np.int64), **({"group": np.asarray(groups, dtype=str)} if groups else {})},
        attrs={"sampler": sampler})
    _atomic_write(out_dir / "trajectory.nc", lambda p: ds.to_netcdf(p, engine="h5netcdf"))
    summary = {"sampler": sampler, "target": target, "checkpoints": len(steps), "computed": computed, "wall_s": wall_s,
               "compile_s": compile_s, "devices": devices, "artifacts": str(out_dir), **({"groups": groups} if groups else {}),
               "rows": table.replace({np.nan: None}).to_dict("records")}
    from llc.posthoc.trajectory_plot import draw

    draw(out_dir / "trajectory.png", summary)
    _atomic_write(out_dir / "summary.json", lambda p: p.write_text(json.dumps(summary, indent=2, default=float)))
    return summary


# --------------------------------------------------------------------------- from a config (llc trajectory)

def trajectory_id(cfg: Any, sampler: str, target: str | None = None) -> str:
    """``target``: the id of the target sampled, when not the config's own (an extended one)."""
    from llc.engine.targets import target_id

    section = json.loads(cache_key_config(cfg, sampler))
    return "traj_" + cache.stable_hash({"target": target or target_id(cfg), "cfg": section,
                                        "code": cache.code_fingerprint()})


def cache_key_config(cfg: Any, sampler: str) -> str:
    from llc.config import to_dict

    d = to_dict(cfg)
    return json.dumps({"seed": d["seed"], "posterior": d["posterior"], sampler: d[sampler],
                       "theta_proj_dim": d["theta_proj_dim"]}, sort_keys=True)


def check_checkpoints(cfg: Any) -> None:
    """A trajectory needs a target trained with checkpoints: say so in one ConfigError line before
    any training (else the target trains first and then has nothing to sample)."""
    from llc import config as C

    if "training" not in C.active_target(cfg).SHARED:
        trained = [t.name for t in registry.TARGETS.values() if "training" in getattr(C, t.config).SHARED]
        raise C.ConfigError(f"target.kind: {cfg.target.kind} targets are not trained, so they have no checkpoints; "
                            f"a trajectory needs one of {', '.join(trained)}")
    t = cfg.training
    if not C.trains(cfg) or t.checkpoints_log + t.checkpoints_linear == 0:
        raise C.ConfigError(f"training.checkpoints_linear: a trajectory needs checkpoints and this config takes none "
                            f"(training.steps = {t.steps}, checkpoints_log = {t.checkpoints_log}, checkpoints_linear = "
                            f"{t.checkpoints_linear}); e.g. --set training.checkpoints_linear=20 (a new target is trained)")


def run_trajectory(cfg: Any, root: Path | str, *, sampler: str | None = None, max_batch: int = 16,
                   progress: Callable[[int, int, str], None] | None = None,
                   log: Callable[[str], None] = lambda msg: None, extend: int = 0) -> dict[str, Any]:
    """Train (or load) the config's target with its checkpoints, then ``compute`` its trajectory.
    ``extend``: first train that target this many more steps (``extend_target``: a new target
    recording its parent) and take the trajectory of the extended one."""
    from llc.pipeline import sampling

    check_checkpoints(cfg)
    sampling.prepare()
    from llc.engine.targets import extend_target, get_target, load_checkpoints, posterior_data

    sampler = sampler or cfg.samplers[0]
    root = Path(root)
    target = get_target(cfg, root, log=log)
    log(f"target {target.id} ({'loaded from cache' if target.cached else 'trained'}): n={target.n} d={target.d}")
    if extend:
        target = extend_target(cfg, target, extend, root, log=log)
        log(f"target {target.id} ({target.meta['parent']} + {extend} steps, "
            f"{'loaded from cache' if target.cached else 'trained'})")
    ck = load_checkpoints(target)
    x, y = posterior_data(target, cfg)  # data refinement (posterior.data, data_filter)
    data = Checkpointed(target.loss_fn, np.asarray(ck.steps), ck.params, x, y, dict(ck.metrics))
    out_dir = root / TRAJ_DIR / trajectory_id(cfg, sampler, target.id)
    summary = compute(data, out_dir, sampler=sampler, sampler_cfg=getattr(cfg, sampler), posterior_cfg=cfg.posterior,
                      seed=cfg.seed, proj_dim=cfg.theta_proj_dim, max_batch=max_batch, progress=progress, log=log,
                      target={"id": target.id, "kind": target.kind, "n": target.n, "d": target.d,
                              **({"parent": target.meta["parent"]} if target.meta.get("parent") else {})})
    from llc.config import to_dict

    summary["config"] = to_dict(cfg)
    _atomic_write(out_dir / "summary.json", lambda p: p.write_text(json.dumps(summary, indent=2, default=float)))
    return summary


def run_trajectory_sweep(cfg: Any, axes: dict[str, tuple], root: Path | str, *, sampler: str | None = None,
                         max_batch: int = 16, log: Callable[[str], None] = lambda msg: None,
                         progress: Callable[[int, int, str], None] | None = None, extend: int = 0) -> dict[str, Any]:
    """One trajectory per combination of ``axes`` (e.g. training.weight_decay, target.modular.train_frac,
    target.seed: each trains its own target), then their lambda-hat curves overlaid:
    ``<root>/trajectories/overlay_<hash>/`` with overlay.csv (every checkpoint row with the axis
    columns), overlay.png and summary.json (the members)."""
    import itertools

    import pandas as pd

    from llc.config import apply_overrides, get_field, validate

    root = Path(root)
    members = []
    for values in itertools.product(*axes.values()):
        point = dict(zip(axes, values))
        member_cfg = validate(apply_overrides(cfg, [f"{k}={v}" for k, v in point.items()]))
        log("trajectory " + ", ".join(f"{k}={v}" for k, v in point.items()))
        summary = run_trajectory(member_cfg, root, sampler=sampler, max_batch=max_batch, log=log, progress=progress,
                                 extend=extend)
        members.append({"setting": {k: get_field(member_cfg, k) for k in axes}, "summary": summary})
    out_dir = root / TRAJ_DIR / ("overlay_" + cache.stable_hash([m["summary"]["artifacts"] for m in members]))
    out_dir.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame([{**m["setting"], **row} for m in members for row in m["summary"]["rows"]])
    _atomic_write(out_dir / "overlay.csv", lambda p: table.to_csv(p, index=False))
    overlay = {"axes": {k: list(v) for k, v in axes.items()}, "artifacts": str(out_dir),
               "members": [{"setting": m["setting"], "artifacts": m["summary"]["artifacts"]} for m in members]}
    from llc.posthoc.trajectory_plot import draw_overlay

    draw_overlay(out_dir / "overlay.png", [(m["setting"], m["summary"]) for m in members])
    _atomic_write(out_dir / "summary.json", lambda p: p.write_text(json.dumps(overlay, indent=2, default=float)))
    return overlay
