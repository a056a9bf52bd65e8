"""The one table of samplers and targets (no JAX, no other llc import).

Everything that lists samplers or targets derives from here: the config's choices, the CLI's help,
the API, the analysis order, plot labels and colours, sweep columns. A sampler's random stream is
its explicit ``stream`` id (``fold_in(key(seed), stream)``), so adding or reordering entries never
changes another sampler's draws: never reuse or renumber a stream id.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SamplerSpec:
    name: str
    module: str  # engine module: State, init, step (+ warmup, finalize) or, for VI, run
    config: str  # class name in llc.config; also the name of the RunConfig section (= name)
    label: str  # for tables and plots
    color: str  # matplotlib colour, stable across figures
    stream: int  # random-stream id: fold_in(key(seed), stream); never change an existing one
    minibatch: bool  # uses minibatch gradients (calibration grids over epsilon make sense)
    independent_draws: bool = False  # draws are i.i.d. (VI's draws from q): ESS is at most their number
    # A Markov chain run by the driver (module exposes ``make``): runs that differ in runtime values
    # share one vmapped program. VI, an optimiser, exposes its own ``run`` and runs one run at a time.
    batched: bool = True
    # Asymptotically exact and tuned without user input: the yardstick other samplers are compared
    # with (``llc calibrate --reference``, the figures ``llc promote`` picks).
    reference: bool = False


@dataclass(frozen=True)
class TargetSpec:
    name: str
    module: str  # engine module: build, template, loss, optional metrics and analytic_llc
    config: str  # class name of its config subsection in llc.config ([target.<name>])
    label: str


SAMPLERS: dict[str, SamplerSpec] = {s.name: s for s in (
    SamplerSpec("sgld", "llc.engine.samplers.sgld", "SGLDConfig", "SGLD", "#1f77b4", 0, True),
    SamplerSpec("hmc", "llc.engine.samplers.hmc", "HMCConfig", "HMC", "#ff7f0e", 1, False, reference=True),
    SamplerSpec("mclmc", "llc.engine.samplers.mclmc", "MCLMCConfig", "MCLMC", "#2ca02c", 2, False),
    # Metropolis-adjusted, so exact at any step size: agrees with HMC within 2 SE on the quick preset
    # (seeds 0-2) and a 4,951-parameter tanh MLP (tests/test_reference_agreement.py).
    SamplerSpec("mclmc_adjusted", "llc.engine.samplers.mclmc_adjusted", "MCLMCAdjustedConfig",
                "adjusted MCLMC", "#d62728", 3, False, reference=True),
    SamplerSpec("vi", "llc.engine.samplers.vi", "VIConfig", "VI", "#9467bd", 4, True, independent_draws=True,
                batched=False),
    SamplerSpec("sgnht", "llc.engine.samplers.sgnht", "SGNHTConfig", "SGNHT", "#8c564b", 5, True),
    SamplerSpec("sghmc", "llc.engine.samplers.sghmc", "SGHMCConfig", "SGHMC", "#e377c2", 6, True),
)}

TARGETS: dict[str, TargetSpec] = {t.name: t for t in (
    TargetSpec("mlp", "llc.engine.targets.mlp", "MLPTargetConfig", "teacher-student MLP"),
    TargetSpec("quadratic", "llc.engine.targets.quadratic", "QuadraticTargetConfig", "quadratic"),
    TargetSpec("dln", "llc.engine.targets.dln", "DLNTargetConfig", "deep linear network"),
    TargetSpec("modular", "llc.engine.targets.modular", "ModularTargetConfig", "modular arithmetic"),
)}

SAMPLER_NAMES: tuple[str, ...] = tuple(SAMPLERS)
TARGET_NAMES: tuple[str, ...] = tuple(TARGETS)


def sampler(name: str) -> SamplerSpec:
    try:
        return SAMPLERS[name]
    except KeyError:
        raise KeyError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}") from None


def batched_names() -> tuple[str, ...]:
    """The samplers the driver runs (Markov chains), in registry order."""
    return tuple(n for n, s in SAMPLERS.items() if s.batched)


def reference_names() -> tuple[str, ...]:
    """The samplers that can serve as reference, in registry order."""
    return tuple(n for n, s in SAMPLERS.items() if s.reference)


def label(name: str) -> str:
    spec = SAMPLERS.get(name)
    return spec.label if spec else name


def color(name: str) -> str | None:
    spec = SAMPLERS.get(name)
    return spec.color if spec else None


def order_key(name: str) -> tuple[int, str]:
    """Sort key putting samplers in registry order, unknown names last."""
    names = list(SAMPLERS)
    return (names.index(name) if name in SAMPLERS else len(names), name)
