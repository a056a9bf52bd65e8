"""Stored targets: ``<root>/targets/tgt_<hash>/`` with meta.json, data.npz, params.npz and, when
asked for, checkpoints.npz and training_log.csv; one line per stored target in ``_catalog.jsonl``.

NumPy only: parameters come and go as lists of leaves (the pytree's ``jax.tree.leaves`` order);
``llc.engine.targets`` flattens what it stores and rebuilds the pytrees from its templates.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from llc.store import cache
from llc.store.layout import TARGETS_DIR

META_FILE = "meta.json"
DATA_FILE = "data.npz"
PARAMS_FILE = "params.npz"
CHECKPOINTS_FILE = "checkpoints.npz"
LOG_FILE = "training_log.csv"
OPTIMIZER_FILE = "optimizer.npz"  # the optimizer state after training: a target is extended from it
RESUME_DIR = ".resume"  # <root>/targets/.resume/<id>.npz: a training's state while it runs
CATALOG_FILE = "_catalog.jsonl"


def target_path(root: Path, target_id: str) -> Path:
    return Path(root) / TARGETS_DIR / target_id


def _leaves_npz(leaves: Sequence[Any]) -> dict[str, np.ndarray]:
    return {f"leaf_{i:04d}": np.asarray(leaf) for i, leaf in enumerate(leaves)}


def save(root: Path, target_id: str, meta: dict[str, Any], data: dict[str, Any], params: Sequence[Any],
         checkpoints: tuple[np.ndarray, Sequence[Any], dict[str, np.ndarray]] | None,
         log: dict[str, Any] | None, catalog: dict[str, Any], optimizer: Sequence[Any] | None = None) -> Path:
    """Write a target's directory atomically, then append its ``catalog`` line.

    ``data``: {"x", "y"[, "x_test", "y_test"]}; ``params``: the leaves of w*; ``checkpoints``:
    (steps, leaves of the parameters stacked over checkpoints, {metric: per-checkpoint values});
    ``optimizer``: the leaves of the optimizer state after training."""
    final = target_path(root, target_id)
    with cache.atomic_dir(final) as tmp:
        np.savez(tmp / DATA_FILE, **data)
        np.savez(tmp / PARAMS_FILE, **_leaves_npz(params))
        if checkpoints is not None:
            steps, stacked, metrics = checkpoints
            np.savez(tmp / CHECKPOINTS_FILE, steps=steps, **_leaves_npz(stacked),
                     **{f"metric_{k}": v for k, v in metrics.items()})
        if optimizer is not None:
            np.savez(tmp / OPTIMIZER_FILE, **_leaves_npz(optimizer))
        if log is not None:
            with (tmp / LOG_FILE).open("w", newline="") as fh:
                writer = csv.writer(fh)
                writer.writerow(list(log))
                writer.writerows(zip(*(np.asarray(v).tolist() for v in log.values())))
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
        cache.seal(tmp, {"id": target_id})  # last: every file with its checksum, marks it complete
    catalogue(root, catalog)
    return final


def catalogue(root: Path, entry: dict[str, Any]) -> None:
    """Append a stored target's catalog line unless the catalog has it: a save killed between its
    rename and this append is catalogued when the target is next loaded. The lock lives in
    ``targets/.locks/`` with the targets' own, where ``llc clean`` finds a killed holder's."""
    directory = Path(root) / TARGETS_DIR
    path = directory / CATALOG_FILE
    lock = cache.lock_path(directory, CATALOG_FILE)
    lock.parent.mkdir(parents=True, exist_ok=True)
    with cache.file_lock(lock):
        listed = set()
        if path.is_file():
            for line in path.read_text().splitlines():
                try:
                    listed.add(json.loads(line).get("id"))
                except (ValueError, AttributeError):
                    continue  # a line cut short by a killed writer
        if entry["id"] not in listed:
            with path.open("a") as fh:
                fh.write(json.dumps(entry) + "\n")


def read_meta(path: Path) -> dict[str, Any]:
    return json.loads((Path(path) / META_FILE).read_text())


def read_params(path: Path) -> list[np.ndarray]:
    """The leaves of w*, in stored order."""
    with np.load(Path(path) / PARAMS_FILE) as fh:
        return [fh[f"leaf_{i:04d}"] for i in range(len(fh.files))]


def read_optimizer(path: Path) -> list[np.ndarray] | None:
    """The leaves of the optimizer state after training, or None (a target stored without it)."""
    file = Path(path) / OPTIMIZER_FILE
    if not file.is_file():
        return None
    with np.load(file) as fh:
        return [fh[f"leaf_{i:04d}"] for i in range(len(fh.files))]


def resume_path(root: Path, target_id: str) -> Path:
    """Where a target's training keeps its state while it runs (removed once the target is saved)."""
    return Path(root) / TARGETS_DIR / RESUME_DIR / f"{target_id}.npz"


def read_data(path: Path) -> dict[str, np.ndarray]:
    with np.load(Path(path) / DATA_FILE) as fh:
        return {k: fh[k] for k in fh.files}


def read_checkpoints(path: Path, num_leaves: int) -> tuple[np.ndarray, list[np.ndarray], dict[str, np.ndarray]] | None:
    """(steps, stacked parameter leaves, {metric: per-checkpoint values}), or None without checkpoints."""
    file = Path(path) / CHECKPOINTS_FILE
    if not file.is_file():
        return None
    with np.load(file) as fh:
        steps = fh["steps"]
        stacked = [fh[f"leaf_{i:04d}"] for i in range(num_leaves)]
        metrics = {k.removeprefix("metric_"): fh[k] for k in fh.files if k.startswith("metric_")}
    return steps, stacked, metrics


def read_training_log(path: Path) -> dict[str, np.ndarray] | None:
    """The training log's columns ({"step", "train_loss", ...}), or None when none was logged."""
    file = Path(path) / LOG_FILE
    if not file.is_file():
        return None
    with file.open(newline="") as fh:
        rows = list(csv.reader(fh))
    columns = list(zip(*rows[1:])) if len(rows) > 1 else [()] * len(rows[0])
    return {name: np.asarray(col, dtype=np.int64 if name == "step" else float)
            for name, col in zip(rows[0], columns)}
