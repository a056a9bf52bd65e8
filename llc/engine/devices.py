"""Several local devices: one batched driver program spread over a ``jax.sharding.Mesh``.

The driver's programs are ``vmap``ped over settings x chains (grid points, checkpoints,
restriction groups, seeds; each setting's chains inside). On a host with several devices the
same program runs with its arguments placed on a mesh of axes ``("settings", "chains", "data")``:
per-setting arrays (w*, n*beta, gamma, masks, hyperparameters) split along ``settings``, per-chain
arrays (states, keys, draws) along ``settings`` and ``chains``, and the data either copied to every
device or, with ``data`` shards, split by rows. XLA's SPMD partitioner then compiles the program
for every device. A chain computes what it computes on one device, with the same random stream (its
key is the one it has alone), so results equal the one-device run's up to rounding: XLA may order a
reduction differently for another per-device batch shape (as it does on one device for another
batch size), and a long adaptation (HMC's window adaptation) can amplify that (tests/test_devices.py).

Why a mesh and not ``pmap``: the compiled program stays the one ``jax.jit`` program of the
one-device road (ahead-of-time compiled, cached, persisted), only its argument shardings change;
``pmap`` would need a second road with its own reshaping and a leading device axis everywhere.

How the batch axis is split: among the factorisations settings x chains of the devices (after
the data shards) whose chain factor divides the chains, the one with the fewest settings x chains
per device (a plain run of one setting spreads its chains; 16 grid points of 3 chains their
settings), ties to more chain shards (no padding). When the settings do not divide their devices the batch
is padded by repeating its last setting, whose outputs are dropped.

Data shards (``LLC_DATA_SHARDS``): for a model whose full-batch activations do not fit one device,
the rows of x and y are split over the ``data`` axis; the full-batch loss and its gradient become
sums of per-device partial sums that XLA reduces across devices (all-reduce). Parameters, chain
states and w* are not split (no tensor or FSDP parallelism), and a minibatch's rows are gathered
from whichever device holds them.

How many: ``LLC_DEVICES`` (``--devices N``), every local device by default; ``LLC_DATA_SHARDS``
(``--data-shards K``), 1 by default. A single device is the unsharded program, unchanged.
JAX is imported by the functions that need it: ``use`` with nothing asked for must not load it (a
cached run imports no JAX).
"""

from __future__ import annotations

import math
import os
import sys
from typing import TYPE_CHECKING, Any, NamedTuple

from llc.config import ConfigError

if TYPE_CHECKING:
    from jax.sharding import NamedSharding

HOST_DEVICES_MAX = 8  # CPU devices llc asks XLA for at most (one per core it may run on)
DEVICES_ENV = "LLC_DEVICES"
DATA_ENV = "LLC_DATA_SHARDS"
AXES = ("settings", "chains", "data")


class Spread(NamedTuple):
    """What was asked for: local devices to use, and how many of them split the data's rows."""

    devices: int = 1
    data: int = 1

    @property
    def batch(self) -> int:
        """Devices along the batch (settings x chains)."""
        return self.devices // self.data


class Layout(NamedTuple):
    """One program's mesh: shards along settings, chains and data (their product is the devices)."""

    mesh: Any  # jax.sharding.Mesh
    settings: int
    chains: int
    data: int

    @property
    def key(self) -> tuple[int, int, int]:
        """What enters a compiled program's cache key."""
        return self.settings, self.chains, self.data


def _setting(value: str | int | None, name: str, default: int, most: int, what: str) -> int:
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if not 1 <= number <= most or str(number) != str(value).strip():
        raise ConfigError(f"{name}: {value!r} is not allowed; choose an integer from 1 to {most} ({what})")
    return number


def spread_host_cores() -> None:
    """On a host without an accelerator, have XLA show each CPU core this process may run on as a
    device (at most ``HOST_DEVICES_MAX``), so a batch's settings and chains are spread over the cores:
    one CPU device runs much of a batched program on one thread (the per-layer grok-tiny trajectory
    took 17 min 17 s as one device on 2 cores, 11 min 07 s as two, with the same λ̂).

    XLA reads the count when JAX starts its backends, so this is done first by the CLI and by every
    sampling entry point, and does nothing once they have started, where ``XLA_FLAGS`` already sets
    the count, or where an accelerator plugin is installed or ``JAX_PLATFORMS`` names another
    platform. ``--devices 1`` (``LLC_DEVICES=1``) still samples on one of them."""
    flags = os.environ.get("XLA_FLAGS", "")
    platforms = os.environ.get("JAX_PLATFORMS", "")
    if "xla_force_host_platform_device_count" in flags or (platforms and platforms != "cpu"):
        return
    if "jax" in sys.modules:  # checked first: every later call in a process (llc.estimate's) ends here
        from jax._src import xla_bridge

        if xla_bridge.backends_are_initialized():
            return
    if not platforms and _accelerator_plugin():
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    count = min(cores, HOST_DEVICES_MAX)
    if count > 1:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={count}".strip()


def _accelerator_plugin() -> bool:
    """Whether a JAX accelerator plugin is installed (CUDA, ROCm, Metal under ``jax_plugins``; libtpu),
    found from the module path alone (scanning every distribution's metadata took 66 ms a command)."""
    import importlib.util
    import pkgutil

    if importlib.util.find_spec("libtpu") is not None:
        return True
    spec = importlib.util.find_spec("jax_plugins")
    locations = spec.submodule_search_locations if spec is not None else None
    return bool(locations) and any(m.name.startswith(("xla_cuda", "xla_rocm", "metal"))
                                   for m in pkgutil.iter_modules(locations))


def requested(devices: str | int | None = None, data: str | int | None = None) -> Spread:
    """The spread asked for by ``devices`` / ``data`` (default: ``LLC_DEVICES`` / ``LLC_DATA_SHARDS``),
    checked against this host's devices: ConfigError naming the setting when it cannot be used."""
    import jax

    local = jax.local_devices()
    from_env = devices is None
    n = _setting(os.environ.get(DEVICES_ENV) if from_env else devices,
                 f"{DEVICES_ENV}" if from_env else "--devices", len(local), len(local),
                 f"the local {local[0].platform} devices")
    from_env = data is None
    name = DATA_ENV if from_env else "--data-shards"
    k = _setting(os.environ.get(DATA_ENV) if from_env else data, name, 1, n, "a divisor of the devices used")
    if n % k:
        choices = ", ".join(str(d) for d in _divisors(n))
        raise ConfigError(f"{name}: {k} is not allowed with {n} devices; choose one of {choices} (a divisor of {n})")
    return Spread(n, k)


def use(devices: int | None, data: int | None, n: int | None = None) -> None:
    """Make ``devices`` / ``data`` (``--devices`` / ``--data-shards``; None keeps the environment's)
    this process's choice, and its worker processes' (through the environment), after checking them
    against this host's devices and the data's ``n`` rows: ConfigError before any work."""
    if devices is None and data is None and not {DEVICES_ENV, DATA_ENV} & os.environ.keys():
        return  # every device, unsplit data: always possible
    spread = requested(devices, data)
    if n is not None:
        check_rows(n, spread)
    os.environ[DEVICES_ENV], os.environ[DATA_ENV] = str(spread.devices), str(spread.data)


def check_rows(n: int, spread: Spread) -> None:
    """ConfigError when the data's ``n`` rows cannot be split evenly over the data shards."""
    if n % spread.data:
        choices = ", ".join(str(d) for d in _divisors(spread.devices) if n % d == 0)
        raise ConfigError(f"{DATA_ENV}: {spread.data} data shards do not divide the n = {n} data points; "
                          f"choose one of {choices}")


def _divisors(m: int) -> list[int]:
    return [d for d in range(1, m + 1) if m % d == 0]


def chain_shards(settings: int, chains: int, spread: Spread) -> int:
    """Devices along the chains for a batch of ``settings`` x ``chains`` (the rest split the settings)."""
    m = spread.batch
    options = [c for c in _divisors(m) if chains % c == 0]
    return min(options, key=lambda c: (math.ceil(settings / (m // c)) * (chains // c), -c))


def layout(settings: int, chains: int, n: int, spread: Spread) -> Layout | None:
    """The mesh of one batched program, or None on a single device (the unsharded program)."""
    if spread.devices == 1:
        return None
    import jax
    import numpy as np

    check_rows(n, spread)
    c = chain_shards(settings, chains, spread)
    s = spread.batch // c
    grid = np.array(jax.local_devices()[:spread.devices]).reshape(s, c, spread.data)
    return Layout(jax.sharding.Mesh(grid, AXES), s, c, spread.data)


def padded(settings: int, lay: Layout | None) -> int:
    """Settings after padding to a multiple of the settings shards."""
    return settings if lay is None else math.ceil(settings / lay.settings) * lay.settings


def _named(lay: Layout | None, *axes: str | None) -> NamedSharding | None:
    from jax.sharding import NamedSharding, PartitionSpec

    return None if lay is None else NamedSharding(lay.mesh, PartitionSpec(*axes))


def per_setting(lay: Layout | None) -> NamedSharding | None:
    """Arrays stacked over settings: split along ``settings``."""
    return _named(lay, "settings")


def per_chain(lay: Layout | None, chains: int) -> NamedSharding | None:
    """Arrays of (settings, chains, ...): split along both, or along settings alone when the chain
    shards do not divide ``chains`` (a shared warm-up's single tuning chain)."""
    if lay is None:
        return None
    return _named(lay, "settings", "chains" if chains % lay.chains == 0 else None)


def rows(lay: Layout | None) -> NamedSharding | None:
    """The data (every leaf's first axis is the example): split along ``data``, else on every device."""
    return _named(lay, "data" if lay is not None and lay.data > 1 else None)


def replicated(lay: Layout | None) -> NamedSharding | None:
    return _named(lay)
