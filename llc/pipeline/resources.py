"""Checks of the machine before a run starts: which JAX backend runs it, and whether it fits in memory.

The memory estimate is deliberately coarse (an upper-side guess from the config alone, before
any target is built): it exists to turn a request that cannot fit (``--chains 100000000``,
``--draws 1000000000``) into one line with the numbers, instead of minutes of work followed by
RESOURCE_EXHAUSTED or the kernel's OOM killer. Runs near the limit are let through.
"""

from __future__ import annotations

import math
import os
from typing import Any

from llc.config import ConfigError, RunConfig, sampler_class, target_n

# Copies of a chain's parameter vector alive at once: position, momentum, gradient, mass matrix,
# proposal, optimiser moments, plus vmap/scan temporaries.
STATE_COPIES = 8
# Floats recorded per kept draw besides the theta projection: L_n, llc, running llc, statistics.
RECORD_SLOTS = 12
# Copies of the recorded draws on the host: chunks, their concatenation, InferenceData, NetCDF.
RECORD_COPIES = 3
# A forward and backward pass keeps about this many activation arrays per layer.
ACTIVATION_COPIES = 3
# Share of the free memory a batch of runs (one program) may plan to use: the estimate is coarse.
BATCH_MEMORY_FRACTION = 0.5


def _shapes(cfg: RunConfig) -> list[tuple[int, ...]]:
    """Shapes of w*'s leaves, from the target kind's template (no data, no training)."""
    import jax
    import numpy as np

    from llc.engine.targets import target_module

    return [tuple(np.shape(leaf)) for leaf in jax.tree.leaves(target_module(cfg.target.kind).template(cfg))]


def n_params(cfg: RunConfig) -> int:
    """Parameter count d of the target."""
    return int(sum(math.prod(s) for s in _shapes(cfg)))


def _layer_widths(cfg: RunConfig) -> tuple[int, int]:
    """(activations one data point keeps in a forward pass, floats of one data point), roughly:
    the fan-outs of the weight matrices, and the first fan-in plus the last fan-out."""
    mats = [s for s in _shapes(cfg) if len(s) >= 2]
    if not mats:
        return 0, 2
    t = cfg.target
    tokens = 4 if t.kind == "modular" and t.modular.model == "transformer" else 1  # [a, op, b, =]
    return tokens * sum(s[-1] for s in mats), mats[0][-2] + mats[-1][-1]


def _gb(x: float) -> str:
    return f"{x / 1e9:.1f} GB" if x >= 1e8 else f"{x / 1e6:.0f} MB"


def sampler_item(sc: Any) -> int:
    """Bytes of one float in a sampler section's chains."""
    return 8 if sc.dtype == "float64" else 4


def chain_bytes(sc: Any, d: int, proj_dim: int) -> tuple[int, int, str]:
    """(bytes of the chains' state on the device, bytes of their recorded draws on the host, what
    multiplies the parameters) of one sampler section on d parameters."""
    extra, kept, per = sc.footprint()
    state = sc.chains * d * sampler_item(sc) * (extra + STATE_COPIES)
    records = sc.chains * kept * (proj_dim + RECORD_SLOTS) * 8 * RECORD_COPIES
    return state, records, f"{sc.chains} chains × {per}{d} parameters"


def estimate(cfg: RunConfig, spread: Any = None) -> dict[str, Any]:
    """Bytes the run needs: {"device": peak of one sampler's chains on each device, "host": recorded
    draws of all samplers plus data, "total", "worst": (sampler, description) of the largest part}.
    ``spread`` (llc.engine.devices.Spread; default one device): a run alone splits its chains over
    the devices, and its data (activations too) over the data shards."""
    from llc.engine.devices import Spread, chain_shards

    spread = spread or Spread()
    d = n_params(cfg)
    n = target_n(cfg)
    widths, point = _layer_widths(cfg)
    data = n * point * 8
    device_peak, host, worst, worst_bytes = 0, 2 * data, ("", ""), -1
    for name in cfg.samplers:
        sc = getattr(cfg, name)
        chains = sc.chains
        state, records, what = chain_bytes(sc, d, cfg.theta_proj_dim)
        # L_n of every draw is a full-batch forward pass of each chain.
        activations = chains * n * widths * sampler_item(sc) * ACTIVATION_COPIES
        shards = chain_shards(1, chains, spread)
        device_peak = max(device_peak, (state + activations // spread.data) // shards + 2 * data // spread.data)
        host += records
        for part, size, desc in (("state", state + activations, what),
                                 ("draws", records, f"{chains} chains × {sc.footprint()[1]} draws")):
            if size > worst_bytes:
                worst, worst_bytes = (name, desc), size
    return {"device": device_peak, "host": host, "total": device_peak + host, "worst": worst, "params": d}


def available_host_memory() -> int | None:
    """MemAvailable from /proc/meminfo (Linux), else free physical pages; None if unknown."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def available_device_memory() -> int | None:
    """Memory of the first accelerator (bytes_limit), None on CPU or when the runtime does not say."""
    import jax

    dev = jax.devices()[0]
    if dev.platform == "cpu":
        return None
    try:
        stats = dev.memory_stats() or {}
    except Exception:  # noqa: BLE001 - not every runtime implements memory_stats
        return None
    limit = stats.get("bytes_limit")
    return int(limit) - int(stats.get("bytes_in_use", 0)) if limit else None


def check_memory(cfgs: RunConfig | list[RunConfig], host_available: int | None = None,
                 device_available: int | None = -1) -> dict:
    """ConfigError (one line with the estimate) when a run cannot fit: alone on the device (batches
    are split to fit, ``batch_cap``), and with every run's recorded draws on the host. Returns
    the estimate."""
    from llc.engine.devices import requested

    spread = requested()
    ests = [estimate(c, spread) for c in (cfgs if isinstance(cfgs, list) else [cfgs])]
    est = max(ests, key=lambda e: e["total"])
    est = {**est, "host": sum(e["host"] for e in ests)}
    est["total"] = est["device"] + est["host"]
    host_available = available_host_memory() if host_available is None else host_available
    if device_available == -1:
        device_available = available_device_memory()
    sampler, what = est["worst"]
    cls = sampler_class(sampler)
    fields = ", ".join(f"{sampler}.{f}" for f in (cls.CHAINS_FIELD, cls.DRAWS_FIELD) if f)
    hint = f"largest part: {sampler} with {what}; lower --chains / --draws (or {fields})"
    if device_available is not None and est["device"] > device_available:
        each = f" on each of {spread.devices} devices" if spread.devices > 1 else ""
        raise ConfigError(f"memory: this run needs about {_gb(est['device'])} of accelerator memory{each}, "
                          f"{_gb(device_available)} is free; {hint}")
    need_host = est["host"] + (0 if device_available is not None else est["device"] * spread.devices)
    if host_available is not None and need_host > host_available:
        raise ConfigError(f"memory: this run needs about {_gb(need_host)}, {_gb(host_available)} is available; {hint}")
    return est


def check_sampler_memory(sc: Any, d: int, data_bytes: int, proj_dim: int, prefix: str,
                         host_available: int | None = None, device_available: int | None = -1) -> None:
    """``check_memory`` for one sampler section on a user's model (``llc.estimate``): its chains'
    state and recorded draws (no activations: the model's shape is unknown). ConfigError naming
    ``<prefix>chains`` when they cannot fit."""
    state, records, what = chain_bytes(sc, d, proj_dim)
    device = state + 2 * data_bytes
    host_available = available_host_memory() if host_available is None else host_available
    if device_available == -1:
        device_available = available_device_memory()
    where, need, free = "", records + (0 if device_available is not None else device), host_available
    if device_available is not None and device > device_available:
        where, need, free = " of accelerator memory", device, device_available
    if free is not None and need > free:
        raise ConfigError(f"{prefix}chains: {what} need about {_gb(need)}{where}, {_gb(free)} is available; "
                          "lower chains (or draws)")


def fitting(per_item: int, device_available: int | None = -1, host_available: int | None = None) -> int | None:
    """How many items of ``per_item`` bytes fit at once in ``BATCH_MEMORY_FRACTION`` of the
    accelerator's free memory (the host's on the CPU backend), on each of the devices a batched
    program spreads over (llc.engine.devices); at least 1; None when unknown."""
    from llc.engine.devices import requested

    if device_available == -1:
        device_available = available_device_memory()
    available = device_available if device_available is not None else (
        available_host_memory() if host_available is None else host_available)
    if not available or per_item <= 0:
        return None
    sharing = 1 if device_available is None else requested().devices  # CPU devices share the host's memory
    return max(1, int(BATCH_MEMORY_FRACTION * available * sharing // per_item))


def batch_cap(cfgs: list[RunConfig], device_available: int | None = -1, host_available: int | None = None) -> int:
    """How many of these runs fit in memory at once as one batched program (``fitting`` the largest
    run's estimate); at least 1 (a run that cannot fit alone is ``check_memory``'s to refuse)."""
    fit = fitting(max(estimate(c)["device"] for c in cfgs), device_available, host_available)
    return len(cfgs) if fit is None else min(len(cfgs), fit)


def measured_bytes(fn: Any, *args: Any) -> int:
    """Device bytes XLA plans for the temporaries and outputs of ``jax.jit(fn)(*args)`` on this
    backend (``args`` may be ``jax.ShapeDtypeStruct``s): a user model's activations, which no config
    describes. The CPU backend fuses more, so it reports less than an accelerator would."""
    import jax

    stats = jax.jit(fn).lower(*args).compile().memory_analysis()
    if stats is None:
        return 0
    return int(stats.output_size_in_bytes + stats.temp_size_in_bytes)


def split_batch(members: list[int], cap: int) -> list[list[int]]:
    """``members`` in consecutive parts of at most ``cap``, as equal as possible (one compiled shape
    for all but at most one part)."""
    parts = -(-len(members) // max(1, cap))
    size = -(-len(members) // parts)
    return [members[i:i + size] for i in range(0, len(members), size)]


def backend_line() -> str:
    """``JAX 0.x backend gpu (2 × NVIDIA H100), x64 on, 2 devices used``: the run header."""
    import jax

    from llc.engine.devices import requested

    devices = jax.devices()
    kinds = sorted({d.device_kind for d in devices})
    spread = requested()
    return (f"JAX {jax.__version__} backend {jax.default_backend()} ({len(devices)} × {', '.join(kinds)}), "
            f"x64 {'on' if jax.config.jax_enable_x64 else 'off'}, {spread.devices} "
            f"device{'s' if spread.devices > 1 else ''} used" + (f" (data in {spread.data} shards)" if spread.data > 1 else ""))
