"""Reading and writing run artifacts: one ArviZ NetCDF per sampler, plus JSON records.

NetCDF layout (per sampler, ``<sampler>.nc``):
  posterior:         Ln (chain, draw), llc (chain, draw), llc_running (chain, draw),
                     theta_proj (chain, draw, proj)
  warmup_posterior:  Ln (chain, draw) of burn-in / adaptation draws, when there are any
  sample_stats:      per-draw sampler statistics (acceptance_rate, energy, energy_change, ...)
  attrs:             sampler, n, beta, gamma, nbeta, L0, dim, target_id, run_id, work_*, info_*

This module never imports JAX, so saved runs can be analysed on any machine.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import arviz as az
import numpy as np


NC_FORMAT_VERSION = 1


class ArtifactError(RuntimeError):
    """A run directory or NetCDF file that cannot be used; the message names the file."""


def _attr_value(value: Any) -> Any:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    # Lists, dicts, arrays (e.g. a per-step trace in ``info``): stored as JSON text.
    return json.dumps(value, default=_json_default)


def llc_draws(Ln: np.ndarray, L0: float, nbeta: float) -> np.ndarray:
    """Per-draw LLC contributions nbeta * (L_n(w_t) - L0), shape (chains, draws)."""
    return nbeta * (np.asarray(Ln, dtype=np.float64) - L0)


def running_llc(llc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Running mean per chain (chains, draws) and pooled over chains (draws,).

    The pooled running value at draw t is the mean over chains of each chain's running mean,
    which equals the mean of all chains' first t draws (chains have equal lengths).
    """
    llc = np.asarray(llc, dtype=np.float64)
    counts = np.arange(1, llc.shape[1] + 1)
    per_chain = np.cumsum(llc, axis=1) / counts
    pooled = per_chain.mean(axis=0) if llc.shape[0] else np.full(llc.shape[1], np.nan)
    return per_chain, pooled



def to_inference_data(sampler: str, Ln: np.ndarray, Ln_warmup: np.ndarray | None, theta_proj: np.ndarray,
                      stats: dict[str, np.ndarray], *, L0: float, nbeta: float,
                      attrs: dict[str, Any]) -> az.InferenceData:
    llc = llc_draws(Ln, L0, nbeta)
    per_chain, _ = running_llc(llc)
    posterior = {"Ln": Ln, "llc": llc, "llc_running": per_chain, "theta_proj": theta_proj}
    kwargs: dict[str, Any] = {}
    if Ln_warmup is not None and np.size(Ln_warmup) > 0:
        kwargs["warmup_posterior"] = {"Ln": Ln_warmup}
        kwargs["save_warmup"] = True
    all_attrs = {"llc_format": NC_FORMAT_VERSION, "sampler": sampler, "L0": float(L0), "nbeta": float(nbeta)}
    all_attrs.update({k: _attr_value(v) for k, v in attrs.items() if v is not None})
    return az.from_dict(
        posterior=posterior,
        sample_stats={k: np.asarray(v) for k, v in stats.items()} or None,
        dims={"theta_proj": ["proj"]},
        attrs=all_attrs,
        **kwargs,
    )


def save_netcdf(idata: az.InferenceData, path: Path) -> Path:
    idata.to_netcdf(str(path))
    return path


def load_netcdf(path: Path) -> az.InferenceData:
    """Open a sampler NetCDF written by llc, with a clear error for missing/truncated/foreign files."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: no such NetCDF file")
    try:
        # Eager: read every value now (and close the file), so a damaged file fails here, not
        # half-way through a plot.
        with az.rc_context({"data.load": "eager"}):
            idata = az.from_netcdf(str(path))
    except Exception as exc:  # netCDF4/h5py raise a zoo of types for corrupt files
        raise ArtifactError(f"{path}: not a readable NetCDF file ({type(exc).__name__}: {exc})") from None
    if "posterior" not in idata.groups() or "Ln" not in idata.posterior:
        raise ArtifactError(f"{path}: not an llc sampler file (no posterior group with an Ln variable)")
    if "llc_format" not in nc_attrs(idata):
        raise ArtifactError(f"{path}: not written by llc (missing llc_format attribute)")
    return idata


def _attr_python(value: Any) -> Any:
    """NetCDF attribute -> plain Python (numpy scalars unwrapped; JSON lists/dicts decoded)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def nc_attrs(idata: az.InferenceData) -> dict[str, Any]:
    """The llc attributes of a sampler file as plain Python values.

    ArviZ keeps ``from_dict(attrs=...)`` on the InferenceData itself (``idata.attrs``); older files
    may carry them on the posterior group, so both are read.
    """
    raw = dict(idata.posterior.attrs)
    raw.update(getattr(idata, "attrs", None) or {})
    return {k: _attr_python(v) for k, v in raw.items()}


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _clean(obj: Any) -> Any:
    """Replace NaN/inf by None so that the JSON stays standard (and round-trips)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def dumps(obj: Any, indent: int | None = 2) -> str:
    return json.dumps(_clean(json.loads(json.dumps(obj, default=_json_default))), indent=indent)


def write_json(path: Path, obj: Any) -> Path:
    Path(path).write_text(dumps(obj) + "\n")
    return Path(path)


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ArtifactError(f"{path}: missing") from None
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{path}: invalid JSON ({exc})") from None


def write_tensorboard(trace: dict[str, Any], logdir: Path) -> Path:
    """Write an optimisation trace (``step`` plus (chains, points[, k]) series) as TensorBoard scalars.

    Tags are ``<series>/chain<i>`` (and ``<series>/chain<i>/<j>`` for vector series such as the
    mixture weights), at the trace's optimisation steps.
    """
    from tensorboardX import SummaryWriter

    steps = [int(s) for s in trace["step"]]
    with SummaryWriter(logdir=str(logdir)) as writer:
        for name, values in trace.items():
            if name == "step":
                continue
            arr = np.asarray(values, dtype=np.float64)
            if arr.ndim == 1:
                arr = arr[None]
            for chain, series in enumerate(arr):
                for i, step in enumerate(steps):
                    point = np.atleast_1d(series[i])
                    if point.size == 1:
                        writer.add_scalar(f"{name}/chain{chain}", float(point[0]), step)
                    else:
                        for j, v in enumerate(point):
                            writer.add_scalar(f"{name}/chain{chain}/{j}", float(v), step)
    return Path(logdir)
