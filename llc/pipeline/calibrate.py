"""``llc calibrate``: a grid of sampler settings on one target, run as one batched program, and a
documented rule that picks a setting.

The grid is the product of ``field=v1,v2,...`` axes (default: the step size times 0.1, 0.3, 1, 3,
10 and gamma times 0.5, 1, 2 around the base config). Points that share the compiled program's
static signature (everything but runtime values such as epsilon, gamma, beta0, seed) run as one
``vmap``ped program (``llc.pipeline.sampling``); each point gets the random stream it would
have alone.

Recommendation rule (``recommend``), for the line of the grid at the base config's other values
(gamma, beta0, ...): a point is *healthy* when it has no failure flag (for SGLD that includes
``step_bias``, its MALA check against a floor that depends on the dimension: llc.analysis.flags) and
R-hat < 1.01. The *anchor* is the healthy point with the smallest step
size (the least discretisation bias). Walking up the step sizes, a healthy point joins the plateau
when its lambda-hat agrees within 2 combined standard errors with every healthy point below it;
the first that does not ends the walk (its bias now shows). The recommended point is the largest
step size on the plateau that is at most a third of the plateau's top (the anchor if none is).

Why not the top itself: SGLD's bias grows about linearly with the step size, and the top's agreement
rules out only a bias of about 2 *combined* SE, which is dominated by the smaller steps' larger SE
(they mix slower: ESS ~ step size), so the top can sit several of its own SE off (with a factor-3
grid, up to ~6). Measured: on the quadratic d = 4 default grid the top, 3e-4, read 1.509 ± 0.023
against the exact 1.457 (2.2 SE; its discretisation bias is 2.8 %). A point a factor 3 below the
top carries at most a third of the top's bias, about one of its own SE in the worst case: the
top's agreement is the check that the recommended point is not yet biased. When only one point
is on the plateau, nothing checks its bias from above; the printed reason says so.

gamma and n*beta define which posterior is sampled (localisation and temperature), so the rule
does not choose them; the grid shows how lambda-hat depends on them.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from llc import registry
from llc.config import (AUTO, ConfigError, RunConfig, apply_overrides, canonical, get_field, sampler_class, target_section,
                        to_dict, to_toml, validate)
from llc.store import cache

STEP_FACTORS = (0.1, 0.3, 1.0, 3.0, 10.0)
GAMMA_FACTORS = (0.5, 1.0, 2.0)
from llc.analysis.health import AGREE_SE, BACKOFF, RHAT_MAX, healthy, step_choice
from llc.store.layout import CAL_DIR


@dataclasses.dataclass(frozen=True)
class Plan:
    base: RunConfig
    sampler: str
    axes: dict[str, tuple]  # dotted field -> values, in grid order
    points: tuple[dict[str, Any], ...]  # one mapping of the axes' fields per point
    cfgs: tuple[RunConfig, ...]
    restore: dict[str, Any] = dataclasses.field(default_factory=dict)  # undoes the sampler's CALIBRATION


def _step_field(sampler: str) -> str:
    return f"{sampler}.step_size"


def default_axes(base: RunConfig, sampler: str) -> dict[str, tuple]:
    axes: dict[str, tuple] = {}
    scfg = getattr(base, sampler)
    if getattr(scfg, "step_size", None) == AUTO:  # step_size=auto's grid, placed when the target exists
        axes[_step_field(sampler)] = (AUTO,)
    elif hasattr(scfg, "step_size"):
        axes[_step_field(sampler)] = tuple(float(f"{scfg.step_size * f:.6g}") for f in STEP_FACTORS)
    axes["posterior.gamma"] = tuple(float(f"{base.posterior.gamma * f:.6g}") for f in GAMMA_FACTORS)
    return axes


def parse_grid(items: list[str], flag: str = "--grid") -> dict[str, tuple]:
    """``dotted.field=v1,v2,...`` axes; an empty value or a field given twice is one ConfigError line."""
    axes: dict[str, tuple] = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip()
        parts = [v.strip() for v in values.split(",")]
        if not sep or not key or not any(parts):
            raise ConfigError(f"{flag} {item!r}: expected dotted.field=v1,v2,...")
        if not all(parts):
            raise ConfigError(f"{flag} {key}: an empty value in {values!r}; give every value, comma-separated")
        if canonical(key) in (canonical(k) for k in axes):
            raise ConfigError(f"{flag} {key}: given twice; give all its values in one {flag} {key}=v1,v2,...")
        axes[key] = tuple(parts)
    return axes


def _check_axes(axes: dict[str, tuple], sampler: str) -> None:
    """Before any work: axes that cannot vary within one calibration, each one ConfigError line."""
    cls = sampler_class(sampler)
    shaped = {f"{sampler}.{f}" for f in (cls.CHAINS_FIELD, cls.DRAWS_FIELD) if f} | {"theta_proj_dim"}
    for key in axes:
        name = canonical(key)
        section = name.split(".")[0]
        if name in shaped:
            raise ConfigError(f"--grid {key}: every point of a calibration records the same chains x draws x "
                              f"projections (one array); set it for all points with --set {key}=... instead")
        if section in registry.SAMPLERS and section != sampler:
            raise ConfigError(f"--grid {key}: this calibration runs {sampler}, which {section}.* does not change; "
                              f"grid {sampler}.* or posterior.* fields")


def plan(base: RunConfig, sampler: str = "sgld", grid: list[str] | None = None) -> Plan:
    """The grid's points as validated configs; every bad field or value is one ConfigError line."""
    if sampler not in registry.SAMPLERS:
        raise ConfigError(f"sampler: {sampler!r} is not allowed; choose one of {', '.join(registry.SAMPLERS)}")
    if not registry.sampler(sampler).batched:
        raise ConfigError(f"sampler: {sampler!r} is not a Markov chain; calibrate one of "
                          + ", ".join(registry.batched_names()))
    base = validate(dataclasses.replace(base, samplers=(sampler,), save_plots=False))
    section = getattr(base, sampler)
    restore = {k: getattr(section, k) for k in section.CALIBRATION}  # the recommended preset's values
    base = dataclasses.replace(base, **{sampler: dataclasses.replace(section, **section.CALIBRATION)})
    axes = parse_grid(grid) if grid else default_axes(base, sampler)
    _check_axes(axes, sampler)
    points, cfgs = [], []
    for values in itertools.product(*axes.values()):
        overrides = [f"{k}={v}" for k, v in zip(axes, values)]
        cfg = validate(apply_overrides(base, overrides))
        if target_section(cfg) != target_section(base):
            raise ConfigError(f"--grid: {', '.join(axes)}: a calibration varies sampler and posterior settings "
                              "on one target; target and data fields cannot be gridded")
        points.append({k: get_field(cfg, k) for k in axes})
        cfgs.append(cfg)
    typed = {k: tuple(dict.fromkeys(pt[k] for pt in points)) for k in axes}  # parsed values, grid order
    return Plan(base, sampler, typed, tuple(points), tuple(cfgs), restore)


def calibration_id(p: Plan) -> str:
    return "cal_" + cache.stable_hash({"runs": [cache.run_id(c) for c in p.cfgs], "axes": list(p.axes)})


# --------------------------------------------------------------------------- running

def resolve_auto(p: Plan, post: Any) -> Plan:
    """The plan with a step-size value ``auto`` replaced by step_size=auto's grid on ``post`` (the
    base config's posterior): what a run with step_size=auto would try, one row each."""
    from llc.pipeline import sampling

    step = _step_field(p.sampler)
    if AUTO not in p.axes.get(step, ()):
        return p
    job = sampling.Job(p.sampler, getattr(p.base, p.sampler), sampling.sampler_key(p.base.seed, p.sampler))
    steps, _ = sampling.auto_grid(job, post)
    values = sorted({v for v in p.axes[step] if v != AUTO} | {float(f"{v:.6g}") for v in steps})
    grid = [f"{k}={','.join(str(v) for v in (values if k == step else vs))}" for k, vs in p.axes.items()]
    return dataclasses.replace(plan(p.base, p.sampler, grid), restore=p.restore)


def run_points(p: Plan, root: Path, *, progress: Callable[[int, int, str], None] | None = None,
               log: Callable[[str], None] = lambda msg: None) -> dict[str, Any]:
    """Build (or load) the target, run every point (batched), return per-point results and traces
    (and ``plan``: ``p`` with an ``auto`` step value resolved)."""
    from llc.pipeline import sampling

    sampling.prepare()
    from llc.engine import devices
    from llc.engine.targets import analytic_llc, get_target, posterior_for
    from llc.pipeline.resources import batch_cap

    if AUTO in p.axes.get(_step_field(p.sampler), ()):
        target = get_target(p.base, root)
        p = resolve_auto(p, posterior_for(target, p.base))
        log(f"step_size=auto: grid {', '.join(f'{v:g}' for v in p.axes[_step_field(p.sampler)])}")
    jobs = [sampling.Job(p.sampler, getattr(c, p.sampler), sampling.sampler_key(c.seed, p.sampler),
                         p.base.theta_proj_dim) for c in p.cfgs]
    batches = sampling.plan(jobs, cap=lambda group: batch_cap([p.cfgs[i] for i in group]))
    sampling.import_store_in_background()  # ArviZ & co. load while the points compile and sample
    target = get_target(p.base, root)
    log(f"target {target.id} ({'loaded from cache' if target.cached else 'built'}): n={target.n} d={target.d}")
    posts = [posterior_for(target, c) for c in p.cfgs]

    def report(index, batch, done, total, phase):
        if progress:
            progress(done, total, f"{phase} (batch {index + 1}/{len(batches)}, {len(batch.members)} points)")

    t0 = time.perf_counter()
    outputs = sampling.sample(batches, jobs, posts, progress=report)
    # ``wall`` also holds compilation and the first calls' dispatch: on a cold XLA cache most of it.
    wall = time.perf_counter() - t0
    sampling_s = sum(o.work["sampling_s"] for o in outputs)  # the same measure as a sweep's sampling_s column
    rows = []
    for point, cfg, post, out in zip(p.points, p.cfgs, posts, outputs):
        analytic = analytic_llc(cfg, post.n, post.beta, post.gamma)
        m = sampling.evaluate(out, post, analytic=analytic, kind=cfg.target.kind)
        rows.append({**point, "nbeta": post.nbeta, "gamma": post.gamma, "llc_mean": m["llc_mean"],
                     "llc_se": m["llc_se"], "rhat": m["rhat"], "ess": m["ess"],
                     "mala_acceptance": sampling.mean_mala(out),
                     "analytic_llc": analytic["value"] if analytic else None, "run_id": cache.run_id(cfg),
                     "flags": m["flags"]})
    compile_s = sum(o.info.get("batch_compile_s", o.work["compile_s"]) for o in
                    (outputs[b.members[0]] for b in batches))
    return {"plan": p, "target": target, "rows": rows, "outputs": outputs, "posts": posts, "wall_s": wall,
            "sampling_s": sampling_s, "compile_s": compile_s, "batches": len(batches),
            "devices": devices.requested().devices}


# --------------------------------------------------------------------------- the rule

def recommend(p: Plan, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Apply the module docstring's rule; returns the chosen row index (or None) and why."""
    step = _step_field(p.sampler)
    others = [k for k in p.axes if k != step]
    base_vals = {k: get_field(p.base, k) for k in others}
    line = [i for i, r in enumerate(rows) if all(r[k] == base_vals[k] for k in others)]
    if not line:  # the base values are not on the grid: use the first line
        first = {k: rows[0][k] for k in others}
        line = [i for i, r in enumerate(rows) if all(r[k] == first[k] for k in others)]
    if step not in p.axes:  # nothing to choose: say whether the base setting's point is healthy
        i = line[0]
        r = rows[i]
        state = "healthy" if healthy(r) else (
            "not healthy: " + ("; ".join(r["flags"]) or f"R-hat {r['rhat']:.3f}" +
                               (f", MALA acceptance {r['mala_acceptance']:.3f}" if r.get("mala_acceptance") else "")))
        where = ", ".join(f"{k}={r[k]:g}" if isinstance(r[k], float) else f"{k}={r[k]}" for k in others)
        return {"index": i if healthy(r) else None, "line": line,
                "why": f"no step-size axis on the grid; the base setting's point ({where}) is {state}"}
    line.sort(key=lambda i: rows[i][step])
    chosen, plateau, good = step_choice(rows, line, step)
    if chosen is None:
        return {"index": None, "line": line, "why": (f"no point on the line {base_vals or ''} is healthy: every one has a flag "
                                                     f"or R-hat >= {RHAT_MAX}")}
    anchor, top = rows[plateau[0]], rows[plateau[-1]]
    below = [i for i in plateau if rows[i][step] * BACKOFF <= top[step] * (1 + 1e-9)]
    c = rows[chosen]
    health = (f"healthy (no flag, R-hat {c['rhat']:.3f} < {RHAT_MAX}"
              + (f", MALA acceptance {c['mala_acceptance']:.3f}" if c.get("mala_acceptance") is not None else "") + ")")
    def lam(r: dict[str, Any]) -> str:
        return f"lambda-hat {r['llc_mean']:.4g} ± {r['llc_se']:.2g}"

    why = f"{step}={c[step]:g}: {health}, {lam(c)}. "
    if len(plateau) == 1:
        nxt = [i for i in good if rows[i][step] > c[step]]
        why += "It is the smallest healthy step size"
        if good[0] != line[0]:
            why += " (the smaller ones are not healthy: not mixed in this many draws, or flagged)"
        why += (f"; the next healthy one, {rows[nxt[0]][step]:g}, disagrees by more than {AGREE_SE:g} combined SE "
                f"({lam(rows[nxt[0]])})" if nxt else "; no larger step size is healthy")
        why += ", so nothing larger is recommended and its own bias is not checked against a smaller step"
    else:
        why += (f"The plateau (healthy step sizes agreeing within {AGREE_SE:g} combined SE with every smaller healthy "
                f"one) runs from {anchor[step]:g} ({lam(anchor)}) to {top[step]:g} ({lam(top)}). ")
        why += (f"Recommended: its largest step size at most 1/{BACKOFF:g} of the top; the bias grows about "
                "linearly with the step, so here it is at most a third of the top's, which the top's agreement bounds"
                if below else
                f"No plateau point is a factor {BACKOFF:g} below the top (a fine grid), so the smallest, whose bias "
                "the top's agreement bounds least tightly")
    if base_vals:
        why += "; on the line " + ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                                            for k, v in base_vals.items()) + " of the base config"
    return {"index": chosen, "line": line, "why": why}


# --------------------------------------------------------------------------- outputs

def _write_netcdf(path: Path, p: Plan, result: dict[str, Any]) -> None:
    import xarray as xr

    outs = result["outputs"]
    data = {"Ln": (("point", "chain", "draw"), np.stack([o.Ln for o in outs])),
            "llc": (("point", "chain", "draw"),
                    np.stack([post.nbeta * (o.Ln - post.L0) for o, post in zip(outs, result["posts"])]))}
    data["flags"] = (("point",), np.array(["\n".join(r["flags"]) for r in result["rows"]], dtype=str))  # one per line
    for stat in outs[0].stats:
        data[stat] = (("point", "chain", "draw"), np.stack([np.asarray(o.stats[stat], np.float64) for o in outs]))
    coords = {k.replace(".", "__"): ("point", [r[k] for r in result["rows"]]) for k in p.axes}
    ds = xr.Dataset(data, coords=coords,
                    attrs={"sampler": p.sampler, "target_id": result["target"].id, "axes": ",".join(p.axes)})
    ds.to_netcdf(path, engine="h5netcdf")


def _csv_rows(p: Plan, rows: list[dict[str, Any]], chosen: int | None) -> list[dict[str, Any]]:
    out = []
    for i, r in enumerate(rows):
        out.append({**{k: r[k] for k in p.axes}, "nbeta": r["nbeta"], "gamma": r["gamma"],
                    "llc_mean": r["llc_mean"], "llc_se": r["llc_se"], "rhat": r["rhat"], "ess": r["ess"],
                    "mala_acceptance": r["mala_acceptance"], "analytic_llc": r["analytic_llc"],
                    "healthy": healthy(r), "recommended": i == chosen, "flags": "; ".join(r["flags"]),
                    "run_id": r["run_id"]})
    return out


def calibrate(p: Plan, root: Path | str, *, reference: str = "none", skip: bool = True,
              progress: Callable[[int, int, str], None] | None = None,
              log: Callable[[str], None] = lambda msg: None) -> dict[str, Any]:
    """Run the grid, pick a setting, write ``<root>/calibrations/<id>/`` and return its summary.

    Cached like a run: verified against its manifest before reuse, computed under its key's lock."""
    root = Path(root)
    cid = calibration_id(p)
    out_dir = root / CAL_DIR / cid
    if skip and cache.is_complete(out_dir):
        return _cached(out_dir)
    cache.remove_stale(out_dir.parent, log)  # a calibration killed mid-write left its temporary directory
    with cache.key_lock(out_dir, "calibration", log):  # the same calibration asked twice computes once
        # Finished by a process we waited for; a damaged one is moved to .broken/, said so, and recomputed.
        if skip and cache.usable(out_dir, "calibration", log):
            return _cached(out_dir)
        return _compute(p, root, out_dir, reference=reference, progress=progress, log=log)


def _cached(out_dir: Path) -> dict[str, Any]:
    """A finished calibration's summary, naming where its files are now (its summary.json names where
    they were written: an artifacts root may have been copied or moved since)."""
    from llc.store.jsonfiles import moved

    summary = json.loads((out_dir / "summary.json").read_text())
    summary["cached"] = True
    return moved(summary, summary["artifacts"], str(out_dir))


def _compute(p: Plan, root: Path, out_dir: Path, *, reference: str, progress: Callable[[int, int, str], None] | None,
             log: Callable[[str], None]) -> dict[str, Any]:
    """Run the grid, apply the rule and write the calibration directory atomically; its summary."""
    import pandas as pd

    cid = out_dir.name
    result = run_points(p, root, progress=progress, log=log)
    p = result["plan"]
    rows = result["rows"]
    rec = recommend(p, rows)
    ref = None
    if reference in registry.reference_names():
        from llc.pipeline.experiment import run_experiment

        rcfg = validate(dataclasses.replace(p.base, samplers=(reference,)))
        rres = run_experiment(rcfg, root, log=log)["samplers"][reference]
        ref = {"kind": reference, "llc_mean": rres["llc_mean"], "llc_se": rres["llc_se"]}
    elif rows[0]["analytic_llc"] is not None:  # the analytic value of the base line (it depends on gamma, n*beta)
        at = rec["index"] if rec["index"] is not None else rec["line"][0]
        ref = {"kind": "analytic", "llc_mean": rows[at]["analytic_llc"], "llc_se": 0.0}
    chosen_cfg = p.cfgs[rec["index"]] if rec["index"] is not None else None
    summary = {
        "calibration_id": cid, "cached": False, "sampler": p.sampler, "axes": {k: list(v) for k, v in p.axes.items()},
        "target": {"id": result["target"].id, "kind": result["target"].kind, "n": result["target"].n,
                   "d": result["target"].d},
        "points": len(rows), "batches": result["batches"], "devices": result["devices"], "wall_s": result["wall_s"],
        "sampling_s": result["sampling_s"], "compile_s": result["compile_s"], "reference": ref,
        "recommended": {"index": rec["index"], "why": rec["why"],
                        "setting": {k: rows[rec["index"]][k] for k in p.axes} if rec["index"] is not None else None},
        "rows": _csv_rows(p, rows, rec["index"]),
        "artifacts": str(out_dir),
    }
    with cache.atomic_dir(out_dir) as tmp:
        pd.DataFrame(summary["rows"]).to_csv(tmp / "calibration.csv", index=False)
        _write_netcdf(tmp / "calibration.nc", p, result)
        if chosen_cfg is not None:
            preset = dataclasses.replace(chosen_cfg, samplers=p.base.samplers, save_plots=True)
            preset = dataclasses.replace(preset, **{p.sampler: dataclasses.replace(getattr(preset, p.sampler),
                                                                                   **p.restore)})
            header = f"# Recommended by llc calibrate {cid}: {rec['why']}\n"
            (tmp / "recommended.toml").write_text(header + to_toml(to_dict(preset)))
            summary["preset"] = str(out_dir / "recommended.toml")
        from llc.posthoc.calibration_plot import draw

        draw(tmp / "calibration.png", summary, _step_field(p.sampler))
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
        cache.seal(tmp, {"calibration_id": cid, "created": time.time()})  # last: every file + checksum
    return summary


def calibrate_config(preset: str | None = None, overrides: list[str] | tuple = (), *, sampler: str = "sgld",
                     grid: list[str] | None = None, root: Path | str = "artifacts", reference: str = "none",
                     skip: bool = True) -> dict[str, Any]:
    """``llc.calibrate``: the Python face of ``llc calibrate`` (a preset and ``dotted=value`` overrides
    name the target and the base setting; ``grid`` as ``--grid``); returns the summary."""
    from llc.config import build_config

    return calibrate(plan(build_config(preset, list(overrides)), sampler, grid), root, reference=reference, skip=skip)
