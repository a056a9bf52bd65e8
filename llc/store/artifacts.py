"""Reading and writing run artifacts: one ArviZ NetCDF per sampler (the JSON records: ``jsonfiles``).

NetCDF layout (per sampler, ``<sampler>.nc``; format 2):
  posterior:           Ln (chain, draw), llc (chain, draw), llc_running (chain, draw),
                       theta_proj (chain, draw, proj)
  warmup_posterior:    Ln (chain, draw) of burn-in / adaptation draws, when there are any
  sample_stats:        per-draw sampler statistics (acceptance_rate, energy, energy_change, ...)
  sampler_info:        the sampler's per-chain values (step_size_per_chain, L_per_chain, ...) with a
                       ``chain`` dimension, ``failure_reason`` (chain,) ("" for a healthy chain), and
                       a few non-chain arrays with their own dimension (VI: ranks (component,))
  optimisation_trace:  VI only: every traced series (chain, step), mixture weights pi
                       (chain, step, component); ``step`` is the optimisation step
  attrs:               llc_format, sampler, n, beta, gamma, nbeta, L0, dim, target_id, run_id, ...;
                       work_* (work counts); info_* (scalar sampler info); flags (the failure flags
                       of the result, one per line, "" when clean). Plain numbers and strings only.

Format 1 (before) kept per-chain values and the VI trace as JSON text in attributes; such files
are refused with a message to re-run. This module never imports JAX, so saved runs can be
analysed on any machine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import arviz as az
import numpy as np
import xarray as xr

from llc.store.jsonfiles import ArtifactError


NC_FORMAT_VERSION = 2
INFO_GROUP = "sampler_info"
TRACE_GROUP = "optimisation_trace"
FAILURE_VAR = "failure_reason"
FLAGS_ATTR = "flags"
# Info arrays whose axes are not (chain, ...): their dimension names. Any other array whose first
# axis has one entry per chain gets ("chain", "<name>_dim_1", ...).
# step_size=auto's grid (llc.pipeline.sampling.choose_step): one value per grid point.
AUTO_GRID_DIMS = {f"auto_step_{k}": ("auto_point",) for k in ("grid", "llc", "se", "rhat", "mala", "healthy")}
INFO_DIMS = {"ranks": ("component",), "mixture_weights": ("chain", "component"), **AUTO_GRID_DIMS}
TRACE_DIMS = {"pi": ("chain", "step", "component")}


def _scalar(key: str, value: Any) -> int | float | str:
    """A NetCDF attribute value: plain number or string (booleans as 0/1)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float, str)):
        return value
    raise TypeError(f"attribute {key!r}: expected a number or a string, got {type(value).__name__}")


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (bool, int, float, str, np.generic))


def _array(key: str, value: Any) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype == object:  # e.g. None among floats: store NaN (metrics.json shows null either way)
        try:
            arr = np.asarray([np.nan if v is None else v for v in np.ravel(arr)], dtype=np.float64).reshape(arr.shape)
        except (TypeError, ValueError):
            raise TypeError(f"info {key!r}: not an array of numbers or strings") from None
    return arr


def _info_dims(key: str, arr: np.ndarray, chains: int) -> tuple[str, ...]:
    if key in INFO_DIMS and len(INFO_DIMS[key]) == arr.ndim:
        return INFO_DIMS[key]
    if arr.ndim and arr.shape[0] == chains:
        return ("chain", *(f"{key}_dim_{i}" for i in range(1, arr.ndim)))
    return tuple(f"{key}_dim_{i}" for i in range(arr.ndim))


def info_datasets(info: dict[str, Any], chains: int) -> tuple[dict[str, Any], xr.Dataset, xr.Dataset | None]:
    """Split a sampler's ``info`` into scalar attributes, the ``sampler_info`` group and the
    ``optimisation_trace`` group (None without a trace).

    ``failure_reasons`` ({chain index as str: reason}) becomes the per-chain string variable
    ``failure_reason``; ``trace`` ({"step": (points,), series: (chains, points[, M])}) its own group.
    Empty arrays carry nothing and are left out.
    """
    scalars: dict[str, Any] = {}
    variables: dict[str, tuple] = {}
    reasons = [""] * chains
    trace = None
    for key, value in info.items():
        if value is None:
            continue
        if key == "failure_reasons":
            for chain, reason in dict(value).items():
                reasons[int(chain)] = str(reason)
        elif key == "trace":
            trace = trace_dataset(value, chains)
        elif isinstance(value, dict):
            raise TypeError(f"info {key!r}: nested dicts are not stored (give it its own variables)")
        elif _is_scalar(value):
            scalars[key] = _scalar(key, value)
        else:
            arr = _array(key, value)
            if arr.size:
                variables[key] = (_info_dims(key, arr, chains), arr)
    variables[FAILURE_VAR] = (("chain",), np.asarray(reasons, dtype=str))
    group = xr.Dataset(variables, coords={"chain": np.arange(chains)})
    return scalars, group, trace


def trace_dataset(trace: dict[str, Any], chains: int) -> xr.Dataset:
    """An optimisation trace as a Dataset with (chain, step[, component]) dimensions."""
    step = np.asarray(trace["step"])
    variables = {}
    for key, values in trace.items():
        if key == "step":
            continue
        arr = np.asarray(values, dtype=np.float64)
        if arr.ndim == 1:  # one series shared by the chains
            arr = np.broadcast_to(arr, (chains, arr.size))
        dims = TRACE_DIMS.get(key) if key in TRACE_DIMS and len(TRACE_DIMS[key]) == arr.ndim else None
        variables[key] = (dims or ("chain", "step", *(f"{key}_dim_{i}" for i in range(2, arr.ndim))), arr)
    return xr.Dataset(variables, coords={"chain": np.arange(chains), "step": step})


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
                      stats: dict[str, np.ndarray], *, L0: float, nbeta: float, attrs: dict[str, Any],
                      work: dict[str, float] | None = None, info: dict[str, Any] | None = None) -> az.InferenceData:
    """One sampler's run as InferenceData in the layout of the module docstring.

    ``attrs`` are the run's constants (numbers or strings; None is left out), ``work`` the work
    counts (attributes ``work_<key>``), ``info`` the sampler's info dict as the engine returns it.
    """
    llc = llc_draws(Ln, L0, nbeta)
    per_chain, _ = running_llc(llc)
    posterior = {"Ln": Ln, "llc": llc, "llc_running": per_chain, "theta_proj": theta_proj}
    kwargs: dict[str, Any] = {}
    if Ln_warmup is not None and np.size(Ln_warmup) > 0:
        kwargs["warmup_posterior"] = {"Ln": Ln_warmup}
        kwargs["save_warmup"] = True
    scalars, info_group, trace = info_datasets(info or {}, np.shape(Ln)[0])
    all_attrs = {"llc_format": NC_FORMAT_VERSION, "sampler": sampler, "L0": float(L0), "nbeta": float(nbeta)}
    all_attrs.update({k: _scalar(k, v) for k, v in attrs.items() if v is not None})
    all_attrs.update({f"work_{k}": float(v) for k, v in (work or {}).items()})
    all_attrs.update({f"info_{k}": v for k, v in scalars.items()})
    all_attrs[FLAGS_ATTR] = ""
    idata = az.from_dict(
        posterior=posterior,
        sample_stats={k: np.asarray(v) for k, v in stats.items()} or None,
        dims={"theta_proj": ["proj"]},
        attrs=all_attrs,
        **kwargs,
    )
    idata.add_groups({INFO_GROUP: info_group, **({TRACE_GROUP: trace} if trace is not None else {})})
    return idata


def set_flags(idata: az.InferenceData, flags: list[str]) -> None:
    """Record the result's failure flags in the file (attribute ``flags``, one per line)."""
    if any("\n" in f for f in flags):
        raise ValueError("a flag must be one line")
    idata.attrs[FLAGS_ATTR] = "\n".join(flags)


def stored_flags(idata: az.InferenceData) -> list[str]:
    text = nc_attrs(idata).get(FLAGS_ATTR) or ""
    return text.split("\n") if text else []


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
    fmt = nc_attrs(idata).get("llc_format")
    if fmt is None:
        raise ArtifactError(f"{path}: not written by llc (missing llc_format attribute)")
    if fmt != NC_FORMAT_VERSION:
        raise ArtifactError(f"{path}: written in llc NetCDF format {fmt}, this llc reads format {NC_FORMAT_VERSION} "
                            "(per-chain info as variables); re-run it (llc run ... --no-skip)")
    return idata


def nc_attrs(idata: az.InferenceData) -> dict[str, Any]:
    """The llc attributes of a sampler file as plain Python values (numbers and strings).

    ArviZ keeps ``from_dict(attrs=...)`` on the InferenceData itself (``idata.attrs``); the
    posterior group's own attributes (ArviZ's created_at, ...) are read too.
    """
    raw = dict(idata.posterior.attrs)
    raw.update(getattr(idata, "attrs", None) or {})
    return {k: v.item() if isinstance(v, np.generic) else v for k, v in raw.items()}


def sampler_info(idata: az.InferenceData) -> dict[str, Any]:
    """The sampler's info as the engine returned it, without the trace: scalars (``info_*``
    attributes), per-chain and other arrays as lists, ``failure_reasons`` {chain: reason} when a
    chain failed."""
    info = {k[len("info_"):]: v for k, v in nc_attrs(idata).items() if k.startswith("info_")}
    group = idata[INFO_GROUP] if INFO_GROUP in idata.groups() else None
    if group is None:
        return info
    for key, var in group.data_vars.items():
        if key == FAILURE_VAR:
            reasons = {str(i): str(r) for i, r in enumerate(var.values.tolist()) if r}
            if reasons:
                info["failure_reasons"] = reasons
        else:
            info[str(key)] = var.values.tolist()
    return info


def optimisation_trace(idata: az.InferenceData) -> dict[str, np.ndarray] | None:
    """{"step": (points,), series: (chains, points[, M])} of a VI run; None for other samplers."""
    if TRACE_GROUP not in idata.groups():
        return None
    group = idata[TRACE_GROUP]
    out = {"step": np.asarray(group["step"].values)}
    out.update({str(k): np.asarray(v.values) for k, v in group.data_vars.items()})
    return out


def write_tensorboard(trace: dict[str, Any], logdir: Path) -> Path:
    """Write an optimisation trace (``optimisation_trace(idata)``: ``step`` plus (chains, points[, k])
    series) as TensorBoard scalars.

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
