"""Targets: a loss function of a parameter pytree, its data, and the trained centre w*.

A target kind is a plug-in: one module here, one line in ``llc.registry.TARGETS`` and one config
class in ``llc.config`` (its ``[target.<kind>]`` section, which also says which shared sections,
``[data]`` and ``[training]``, the kind reads). The module provides

    build(cfg) -> base.Built            initial parameters and data (NumPy; x, y may be integer)
    template(cfg) -> pytree             parameter shapes (arrays or ShapeDtypeStructs), for loading
    loss(cfg) -> loss_fn                loss_fn(params, x, y): mean loss over a batch; the same
                                        object for the same model structure (compiled programs
                                        are cached by it)
    train_loss(cfg) -> loss_fn          optional: what training minimises when not loss(cfg) (a regularizer)
    metrics(cfg) -> metrics_fn          optional: (params, x, y) -> {"loss", "acc"?}, logged in training
    probes(cfg) -> (probe_fn, data)     optional: probe_fn(params, data, key) -> {name: scalar}, recorded
                                        with the metrics (``training.train``'s ``probes``)
    analytic_llc(cfg, n, beta, gamma)   optional: base.Analytic(value, formula, regime)

Kinds whose config reads ``[training]`` are trained from ``build``'s parameters (``training.train``);
checkpoints and a metrics log taken on the way are stored with the target.

Targets are built once and stored as content-addressed artifacts
(``<root>/targets/tgt_<hash>/``: meta.json, data.npz, params.npz, and checkpoints.npz /
training_log.csv when asked for; ``llc.store.targets`` writes and reads the files); a later run that needs the same target loads it instead of
retraining. For ``llc trajectory``::

    target = get_target(cfg, root)
    ck = load_checkpoints(target)        # Checkpoints(steps (K,), params [K pytrees], metrics {name: (K,)})
    ck.stacked()                         # the K parameter pytrees as one pytree with a leading K axis
    load_training_log(target)            # {"step", "train_loss", "test_loss", "train_acc", ...} or None
    target.x_test, target.y_test         # held-out data (modular), else None
"""

from __future__ import annotations

import dataclasses
import importlib
import platform
import time
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

import jax
import numpy as np

from llc import registry
from llc.config import RunConfig, target_section, trains
from llc.engine.targets.training import (Checkpoints, TrainingDiverged, cast_floats, describe,
                                         full_loss_and_grad_norm, make_optimizer, train)
from llc.store import cache
from llc.store import targets as stored

__all__ = ["Checkpoints", "PrecisionError", "Target", "TrainingDiverged", "analytic_llc", "build_target",
           "extend_target", "extended_id", "get_target", "load_checkpoints", "load_training_log", "loss_fn_for",
           "target_id", "untrained"]


class PrecisionError(RuntimeError):
    """The target's stored precision does not match the running JAX precision."""


@dataclasses.dataclass(frozen=True)
class Target:
    id: str
    kind: str
    loss_fn: Callable  # loss_fn(params, x, y) -> mean loss over the batch
    params: Any  # w*, a pytree of NumPy arrays
    x: Any
    y: Any
    L0: float
    meta: dict
    cached: bool = False
    x_test: Any = None  # held-out data, where the kind has them
    y_test: Any = None
    path: Path | None = None  # the stored artifact (None until saved)
    checkpoints: Checkpoints | None = None  # in memory right after training; else read from path
    log: dict | None = None
    opt_state: Any = None  # the optimizer's state after training, in memory right after it

    @property
    def n(self) -> int:
        return int(jax.tree.leaves(self.x)[0].shape[0])

    @property
    def d(self) -> int:
        return int(sum(np.size(leaf) for leaf in jax.tree.leaves(self.params)))


def target_module(kind: str) -> ModuleType:
    return importlib.import_module(registry.TARGETS[kind].module)


def loss_fn_for(cfg: RunConfig) -> Callable:
    return target_module(cfg.target.kind).loss(cfg)


def train_loss_fn_for(cfg: RunConfig) -> Callable:
    """What training minimises: the kind's ``train_loss`` (e.g. with a regularizer) where it has one."""
    make = getattr(target_module(cfg.target.kind), "train_loss", None)
    return make(cfg) if make else loss_fn_for(cfg)


def metrics_fn_for(cfg: RunConfig) -> Callable | None:
    make = getattr(target_module(cfg.target.kind), "metrics", None)
    return make(cfg) if make else None


def probes_for(cfg: RunConfig) -> tuple[Callable, Any] | None:
    """The kind's (probe_fn, probe_data) recorded during training (``training.train``), or None."""
    make = getattr(target_module(cfg.target.kind), "probes", None)
    if make is None:
        return None
    fn, data = make(cfg)
    return fn, cast_floats(data, cfg.target.dtype)


def analytic_llc(cfg: RunConfig, n: int, beta: float, gamma: float) -> dict[str, Any] | None:
    """{"value", "formula", "regime"} where the kind knows its learning coefficient, else None."""
    fn = getattr(target_module(cfg.target.kind), "analytic_llc", None)
    result = fn(cfg, n, beta, gamma) if fn else None
    return result.as_dict() if result is not None else None


def target_id(cfg: RunConfig) -> str:
    # Only the code that builds targets enters their fingerprint: sampler edits keep targets valid.
    return "tgt_" + cache.stable_hash({"target": target_section(cfg), "code": cache.code_fingerprint("engine/targets"),
                                       "libs": cache.library_versions()})


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("jax", "jaxlib", "numpy", "optax", "blackjax", "flax"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def _require_precision(dtype: str, where: str) -> None:
    if dtype == "float64" and not jax.config.jax_enable_x64:
        raise PrecisionError(
            f"{where} is float64 but JAX x64 is disabled; enable it with "
            f"jax.config.update('jax_enable_x64', True) or set target.dtype=float32")


def _all_finite(tree) -> bool:
    return all(np.isfinite(a).all() for a in jax.tree.leaves(tree) if np.issubdtype(np.asarray(a).dtype, np.floating))


def build_target(cfg: RunConfig, progress: Callable[[int, int], None] | None = None, resume: Path | None = None,
                 log: Callable[[str], None] = lambda msg: None) -> Target:
    """Generate data and train w* (no caching). Raises TrainingDiverged rather than return a target
    whose w* or L0 is not finite. ``resume``: the training's resume file (``training.train``)."""
    dtype = cfg.target.dtype
    _require_precision(dtype, "target.dtype")
    built = target_module(cfg.target.kind).build(cfg)
    loss_fn = loss_fn_for(cfg)
    params, x, y = (cast_floats(t, dtype) for t in (built.params, built.x, built.y))
    test = None if built.x_test is None else (cast_floats(built.x_test, dtype), cast_floats(built.y_test, dtype))
    t0 = time.perf_counter()
    trained = None
    if trains(cfg):
        probes = probes_for(cfg)  # the kinds with probes (modular) also record Adam's dynamics
        trained = train(train_loss_fn_for(cfg), params, x, y, cfg.training, seed=cfg.target.seed,
                        metrics_fn=metrics_fn_for(cfg), test=test, progress=progress, probes=probes,
                        adam_dynamics=probes is not None, resume=resume, log=log)
        params = trained.params
    L0, grad_norm = full_loss_and_grad_norm(loss_fn, params, x, y)
    bad = [name for name, ok in (("L0", np.isfinite(L0)), ("w*", _all_finite(params))) if not ok]
    if bad:
        raise TrainingDiverged(f"target {target_id(cfg)}: {' and '.join(bad)} not finite (L0 = {L0}) after "
                               f"training ({describe(cfg.training)}); not saved")
    checkpoints = trained.checkpoints if trained else None
    meta = {
        "id": target_id(cfg),
        "kind": cfg.target.kind,
        "config": target_section(cfg),
        "dtype": dtype,
        "x64": bool(jax.config.jax_enable_x64),
        "n": int(jax.tree.leaves(x)[0].shape[0]),
        "n_test": None if test is None else int(jax.tree.leaves(test[0])[0].shape[0]),
        "d": int(sum(np.size(a) for a in jax.tree.leaves(params))),
        "L0": L0,
        "erm": {"L0": L0, "grad_norm": grad_norm, "steps": cfg.training.steps if trained else 0,
                "train_seconds": time.perf_counter() - t0},
        "checkpoints": None if checkpoints is None else {
            "steps": checkpoints.steps.tolist(),
            "final": {k: float(v[-1]) for k, v in checkpoints.metrics.items()}},
        "info": built.info,
        "versions": _versions(),
        "code_fingerprint": cache.code_fingerprint("engine/targets"),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    return Target(meta["id"], cfg.target.kind, loss_fn, params, x, y, L0, meta,
                  x_test=None if test is None else test[0], y_test=None if test is None else test[1],
                  checkpoints=checkpoints, log=trained.log if trained else None,
                  opt_state=trained.opt_state if trained else None)


def posterior_data(target: "Target", cfg: RunConfig) -> tuple[Any, Any]:
    """(x, y) the posterior's loss is on (data refinement, ``posterior.data`` / ``data_filter``): the
    training set by default, the held-out set or both, then the examples the filter keeps. A refined
    config is a modular target's (``llc.config.validate`` refuses any other kind)."""
    from llc.config import ConfigError, parse_data_filter

    pc = cfg.posterior
    if pc.data == "train" and pc.data_filter is None:
        return target.x, target.y
    parts = {"train": [(target.x, target.y)], "test": [(target.x_test, target.y_test)],
             "all": [(target.x, target.y), (target.x_test, target.y_test)]}[pc.data]
    x = np.concatenate([np.asarray(p[0]) for p in parts])
    y = np.concatenate([np.asarray(p[1]) for p in parts])
    if pc.data_filter is not None:
        a, b = x[:, 0], x[:, 1] if x.shape[1] == 2 else x[:, 2]  # (a, b) pairs or [a, op, b, =] tokens
        keep = np.asarray(eval(parse_data_filter(pc.data_filter), {"__builtins__": {}}, {"a": a, "b": b, "y": y}))
        keep = np.broadcast_to(keep, (len(x),)).astype(bool)
        if keep.sum() < 2:
            raise ConfigError(f"posterior.data_filter: {pc.data_filter!r} keeps {int(keep.sum())} of {len(x)} "
                              f"examples of posterior.data={pc.data}; it needs at least 2")
        x, y = x[keep], y[keep]
    return x, y


def posterior_for(target: "Target", cfg: RunConfig):
    """The posterior of ``cfg`` around the target's w*, on ``posterior_data``: L0 is the target's own
    on its training set, else computed on the refined data."""
    from llc.engine.posterior import make_posterior

    x, y = posterior_data(target, cfg)
    return make_posterior(target.loss_fn, target.params, x, y, cfg.posterior, L0=target.L0 if x is target.x else None)


def untrained(cfg: RunConfig) -> tuple[Callable, Any, Any, Any]:
    """(loss_fn, initial parameters, x, y) as ``build_target`` starts from: the trained target's
    shapes and dtypes, for compiling the samplers while it trains."""
    built = target_module(cfg.target.kind).build(cfg)
    params, x, y = (cast_floats(t, cfg.target.dtype) for t in (built.params, built.x, built.y))
    return loss_fn_for(cfg), params, x, y


def save_target(target: Target, root: Path) -> Path:
    data = {"x": target.x, "y": target.y}
    if target.x_test is not None:
        data.update(x_test=target.x_test, y_test=target.y_test)
    ck = target.checkpoints
    checkpoints = None if ck is None else (ck.steps, jax.tree.leaves(ck.stacked()), ck.metrics)
    optimizer = None if target.opt_state is None else jax.tree.leaves(target.opt_state)
    return stored.save(root, target.id, target.meta, data, jax.tree.leaves(target.params), checkpoints,
                       target.log, _catalog_entry(target), optimizer=optimizer)


def _catalog_entry(target: Target) -> dict[str, Any]:
    return {"id": target.id, "kind": target.kind, "n": target.n, "d": target.d, "L0": target.L0,
            "created": target.meta["created"]}


def _shape(leaf) -> tuple[int, ...]:
    return tuple(leaf.shape) if hasattr(leaf, "shape") else np.shape(leaf)


def load_target(cfg: RunConfig, path: Path) -> Target:
    meta = stored.read_meta(path)
    _require_precision(meta["dtype"], f"target {meta['id']}")
    if meta["dtype"] != cfg.target.dtype:
        raise PrecisionError(f"target {meta['id']} was built in {meta['dtype']}, run asks for {cfg.target.dtype}")
    template = target_module(cfg.target.kind).template(cfg)
    t_leaves, treedef = jax.tree.flatten(template)
    leaves = stored.read_params(path)
    if [_shape(a) for a in t_leaves] != [a.shape for a in leaves]:
        raise ValueError(f"target {meta['id']}: stored parameter shapes do not match the model config")
    data = stored.read_data(path)
    params = jax.tree.unflatten(treedef, leaves)
    return Target(meta["id"], meta["kind"], loss_fn_for(cfg), params, data["x"], data["y"], float(meta["L0"]), meta,
                  cached=True, x_test=data.get("x_test"), y_test=data.get("y_test"), path=Path(path))


def get_target(cfg: RunConfig, root: Path, progress: Callable[[int, int], None] | None = None,
               log: Callable[[str], None] = lambda msg: None) -> Target:
    """Load the target for ``cfg`` from ``root/targets`` if built before and intact, else build and
    store it (under the target's lock: concurrent runs build it once).

    ``progress(steps_done, steps)`` is called during training."""
    path = stored.target_path(root, target_id(cfg))
    with cache.key_lock(path, "target", log):
        if cache.usable(path, "target", log):
            target = load_target(cfg, path)
            stored.catalogue(root, _catalog_entry(target))
            return target
        # A training killed on the way left its state here: it goes on from there.
        resume = stored.resume_path(root, target_id(cfg))
        target = build_target(cfg, progress=progress, resume=resume, log=log)
        target = dataclasses.replace(target, path=save_target(target, root))
        resume.unlink(missing_ok=True)
        return target


def load_checkpoints(target: Target) -> Checkpoints:
    """The checkpoints taken while training ``target``: steps, parameter pytrees, metrics per checkpoint.

    Raises ValueError when the target was trained without checkpoints."""
    if target.checkpoints is not None:
        return target.checkpoints
    treedef = jax.tree.structure(target.params)
    found = stored.read_checkpoints(target.path, treedef.num_leaves) if target.path is not None else None
    if found is None:
        raise ValueError(f"target {target.id} has no checkpoints; set training.checkpoints_log and/or "
                         "training.checkpoints_linear (a new target is trained)")
    steps, stacked, metrics = found
    params = [jax.tree.unflatten(treedef, [leaf[i] for leaf in stacked]) for i in range(len(steps))]
    return Checkpoints(steps, params, metrics)


def load_training_log(target: Target) -> dict[str, np.ndarray] | None:
    """The metrics logged every ``training.log_every`` steps, or None when none were logged."""
    if target.log is not None:
        return target.log
    return stored.read_training_log(target.path) if target.path is not None else None


# --------------------------------------------------------------------------- extending a trained target

def extended_id(parent_id: str, steps: int) -> str:
    """The id of ``parent_id`` trained ``steps`` more steps: its own content-addressed target."""
    return "tgt_" + cache.stable_hash({"parent": parent_id, "extend": int(steps),
                                       "code": cache.code_fingerprint("engine/targets"),
                                       "libs": cache.library_versions()})


def _merge(parent: dict[str, np.ndarray], child: dict[str, np.ndarray], parent_steps: np.ndarray,
           child_steps: np.ndarray, end: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Parent's records, then the child's after ``end`` (the child's first is the parent's last);
    a column one side lacks is NaN there."""
    keep = child_steps > end
    names = list(dict.fromkeys([*parent, *child]))
    nan = lambda n: np.full(n, np.nan)  # noqa: E731
    return (np.concatenate([parent_steps, child_steps[keep]]),
            {k: np.concatenate([np.asarray(parent.get(k, nan(len(parent_steps))), float),
                                np.asarray(child.get(k, nan(len(child_steps))), float)[keep]]) for k in names})


def extend_target(cfg: RunConfig, parent: Target, steps: int, root: Path,
                  progress: Callable[[int, int], None] | None = None,
                  log: Callable[[str], None] = lambda msg: None) -> Target:
    """``parent`` (the target of ``cfg``) trained ``steps`` more steps from its w* and optimizer state
    (the learning-rate schedule and Adam's moments go on), stored as its own target whose meta names
    its ``parent``. Checkpoints and log: the parent's, then the extension's (``training.checkpoints_*``
    and ``log_every`` applied to the ``steps`` new steps). Loaded if built before; resumable as any."""
    if steps <= 0:
        raise ValueError(f"--extend: must be > 0 steps, got {steps}")
    if not trains(cfg):
        raise ValueError(f"--extend: target {parent.id} is not trained (training.steps = 0), so it cannot go on")
    tid = extended_id(parent.id, steps)
    path = stored.target_path(root, tid)
    with cache.key_lock(path, "target", log):
        if cache.usable(path, "target", log):
            target = load_target(cfg, path)
            stored.catalogue(root, _catalog_entry(target))
            return target
        opt_state = parent.opt_state
        if opt_state is None:
            leaves = stored.read_optimizer(parent.path) if parent.path is not None else None
            if leaves is None:
                raise ValueError(f"--extend: target {parent.id} was stored without its optimizer state (trained by "
                                 "an older llc); remove it with llc clean and train it again to extend it")
            shape = jax.eval_shape(make_optimizer(cfg.training).init, parent.params)
            opt_state = jax.tree.unflatten(jax.tree.structure(shape), leaves)
        end = int(parent.meta["erm"]["steps"])
        probes = probes_for(cfg)
        test = None if parent.x_test is None else (parent.x_test, parent.y_test)
        resume = stored.resume_path(root, tid)
        t0 = time.perf_counter()
        trained = train(train_loss_fn_for(cfg), parent.params, parent.x, parent.y,
                        dataclasses.replace(cfg.training, steps=int(steps)), seed=cfg.target.seed,
                        metrics_fn=metrics_fn_for(cfg), test=test, progress=progress, probes=probes,
                        adam_dynamics=probes is not None, resume=resume, log=log, opt_state=opt_state, offset=end)
        L0, grad_norm = full_loss_and_grad_norm(parent.loss_fn, trained.params, parent.x, parent.y)
        if not (np.isfinite(L0) and _all_finite(trained.params)):
            raise TrainingDiverged(f"target {tid}: L0 = {L0} after extending {parent.id} by {steps} steps; not saved")
        checkpoints = None
        if trained.checkpoints is not None:
            pc, cc = load_checkpoints(parent), trained.checkpoints
            ck_steps, metrics = _merge(pc.metrics, cc.metrics, pc.steps, cc.steps, end)
            params = list(pc.params) + [p for s, p in zip(cc.steps, cc.params) if s > end]
            checkpoints = Checkpoints(ck_steps, params, metrics)
        log_table, parent_log = trained.log, load_training_log(parent)
        if log_table is not None and parent_log is not None:
            p_rest = {k: v for k, v in parent_log.items() if k != "step"}
            c_rest = {k: v for k, v in log_table.items() if k != "step"}
            log_steps, merged = _merge(p_rest, c_rest, parent_log["step"], log_table["step"], end)
            log_table = {"step": log_steps.astype(np.int64), **merged}
        meta = {**parent.meta, "id": tid, "L0": L0, "parent": parent.id,
                "extends": {"parent": parent.id, "from_step": end, "steps": int(steps)},
                "erm": {"L0": L0, "grad_norm": grad_norm, "steps": end + int(steps),
                        "train_seconds": time.perf_counter() - t0},
                "checkpoints": None if checkpoints is None else {
                    "steps": checkpoints.steps.tolist(),
                    "final": {k: float(v[-1]) for k, v in checkpoints.metrics.items()}},
                "versions": _versions(), "code_fingerprint": cache.code_fingerprint("engine/targets"),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        target = Target(tid, parent.kind, parent.loss_fn, trained.params, parent.x, parent.y, L0, meta,
                        x_test=parent.x_test, y_test=parent.y_test, checkpoints=checkpoints, log=log_table,
                        opt_state=trained.opt_state)
        target = dataclasses.replace(target, path=save_target(target, root))
        resume.unlink(missing_ok=True)
        log(f"target {tid}: {parent.id} trained {steps} more steps (to step {end + int(steps)})")
        return target
