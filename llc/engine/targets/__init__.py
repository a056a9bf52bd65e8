"""Targets: a loss function of a parameter pytree, its data, and the trained centre w*.

Targets are built once and stored as content-addressed artifacts
(``<root>/targets/tgt_<hash>/{meta.json,data.npz,params.npz}``); a later run that needs the same
target loads it instead of retraining.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np

from llc.store import cache
from llc.config import RunConfig, target_section
from llc.engine.targets import dln, mlp, quadratic
from llc.engine.targets.training import cast_tree, full_loss_and_grad_norm, train_erm

_BUILDERS = {"mlp": mlp, "dln": dln, "quadratic": quadratic}


class PrecisionError(RuntimeError):
    """The target's stored precision does not match the running JAX precision."""


@dataclasses.dataclass(frozen=True)
class Target:
    id: str
    kind: str
    loss_fn: Callable  # loss_fn(params, x, y) -> mean loss over the batch
    params: Any  # w*, a pytree of NumPy arrays
    x: np.ndarray
    y: np.ndarray
    L0: float
    meta: dict
    cached: bool = False

    @property
    def n(self) -> int:
        return int(self.x.shape[0])

    @property
    def d(self) -> int:
        return int(sum(np.size(leaf) for leaf in jax.tree.leaves(self.params)))


def loss_fn_for(cfg: RunConfig) -> Callable:
    kind = cfg.target.kind
    if kind == "mlp":
        return mlp.mse_loss_fn(cfg.model.activation)
    return _BUILDERS[kind].loss_fn


def target_id(cfg: RunConfig) -> str:
    # Only the code that builds targets enters their fingerprint: sampler edits keep targets valid.
    return "tgt_" + cache.stable_hash({"target": target_section(cfg), "code": cache.code_fingerprint("engine/targets"),
                                       "libs": cache.library_versions()})


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("jax", "jaxlib", "numpy", "optax", "blackjax"):
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


def build_target(cfg: RunConfig) -> Target:
    """Generate data and train w* (no caching)."""
    dtype = cfg.target.dtype
    _require_precision(dtype, "target.dtype")
    builder = _BUILDERS[cfg.target.kind]
    params, x, y, info = builder.build(cfg)
    loss_fn = loss_fn_for(cfg)
    params, x, y = cast_tree(params, dtype), cast_tree(x, dtype), cast_tree(y, dtype)
    t0 = time.perf_counter()
    erm: dict[str, Any] = {}
    if cfg.target.kind != "quadratic" and cfg.training.steps > 0:
        params, loss, gnorm = train_erm(loss_fn, params, x, y, cfg.training, seed=cfg.target.seed)
        erm = {"final_loss": loss, "grad_norm": gnorm}
    L0, grad_norm = full_loss_and_grad_norm(loss_fn, params, x, y)
    erm.update({"L0": L0, "grad_norm": grad_norm, "train_seconds": time.perf_counter() - t0})
    to_np = lambda tree: jax.tree.map(np.asarray, tree)  # noqa: E731
    params_np = to_np(params)
    meta = {
        "id": target_id(cfg),
        "kind": cfg.target.kind,
        "config": target_section(cfg),
        "dtype": dtype,
        "x64": bool(jax.config.jax_enable_x64),
        "n": int(x.shape[0]),
        "d": int(sum(np.size(a) for a in jax.tree.leaves(params_np))),
        "L0": L0,
        "erm": erm,
        "info": info,
        "versions": _versions(),
        "code_fingerprint": cache.code_fingerprint("engine/targets"),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    return Target(meta["id"], cfg.target.kind, loss_fn, params_np, np.asarray(x), np.asarray(y), L0, meta)


def save_target(target: Target, root: Path) -> Path:
    final = Path(root) / "targets" / target.id
    with cache.atomic_dir(final) as tmp:
        np.savez(tmp / "data.npz", x=target.x, y=target.y)
        leaves = jax.tree.leaves(target.params)
        np.savez(tmp / "params.npz", **{f"leaf_{i:04d}": leaf for i, leaf in enumerate(leaves)})
        (tmp / "meta.json").write_text(json.dumps(target.meta, indent=2))
        # manifest.json marks completeness for the shared atomic-dir convention
        (tmp / cache.COMPLETE_MARKER).write_text(json.dumps({"id": target.id}))
    catalog = Path(root) / "targets" / "_catalog.jsonl"
    with catalog.open("a") as fh:
        fh.write(json.dumps({"id": target.id, "kind": target.kind, "n": target.n, "d": target.d,
                             "L0": target.L0, "created": target.meta["created"]}) + "\n")
    return final


def load_target(cfg: RunConfig, path: Path) -> Target:
    meta = json.loads((path / "meta.json").read_text())
    _require_precision(meta["dtype"], f"target {meta['id']}")
    if meta["dtype"] != cfg.target.dtype:
        raise PrecisionError(f"target {meta['id']} was built in {meta['dtype']}, run asks for {cfg.target.dtype}")
    template = _BUILDERS[cfg.target.kind].template(cfg)
    t_leaves, treedef = jax.tree.flatten(template)
    with np.load(path / "params.npz") as fh:
        leaves = [fh[f"leaf_{i:04d}"] for i in range(len(fh.files))]
    if [np.shape(a) for a in t_leaves] != [a.shape for a in leaves]:
        raise ValueError(f"target {meta['id']}: stored parameter shapes do not match the model config")
    with np.load(path / "data.npz") as fh:
        x, y = fh["x"], fh["y"]
    params = jax.tree.unflatten(treedef, leaves)
    return Target(meta["id"], meta["kind"], loss_fn_for(cfg), params, x, y, float(meta["L0"]), meta, cached=True)


def get_target(cfg: RunConfig, root: Path) -> Target:
    """Load the target for ``cfg`` from ``root/targets`` if built before, else build and store it."""
    path = Path(root) / "targets" / target_id(cfg)
    if cache.is_complete(path):
        return load_target(cfg, path)
    target = build_target(cfg)
    save_target(target, root)
    return target
