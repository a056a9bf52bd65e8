"""Configuration: frozen dataclasses, presets, dotted overrides and validation.

Every field may carry constraints in its metadata (``choices``, ``gt``, ``ge``, ``le``); one
generic validator walks the tree so that a bad value is reported as a single line naming the
dotted field and what is allowed.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from llc import registry

# Shipped as package data (pyproject [tool.setuptools.package-data]) so any install finds them.
PRESETS_DIR = Path(__file__).resolve().parent / "presets"

ACTIVATIONS = ("relu", "tanh", "gelu", "identity")
X_DISTS = ("gauss_iso", "gauss_aniso", "mixture", "lowdim", "heavy_tail")
NOISES = ("gauss", "hetero", "student_t", "outliers")
TARGET_KINDS = registry.TARGET_NAMES
LOSSES = ("mse", "cross_entropy")
OPTIMIZERS = ("adam", "sgd", "adamw")
MODULAR_OPS = ("add", "subtract", "multiply")
MODULAR_MODELS = ("transformer", "mlp", "routed")
ROUTING_REGULARIZERS = ("none", "entropy", "sparsity", "gini")
DTYPES = ("float32", "float64")
FIGURE_MODES = ("auto", "none", "summary", "all")
SAMPLERS = registry.SAMPLER_NAMES
# A step size of "auto" is chosen per run (and per checkpoint) by a batched grid on the one road
# (llc.pipeline.sampling); the type of such fields is ``StepSize``.
AUTO = "auto"
StepSize = float | str


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message is one line naming the field."""


def _f(default: Any, **constraints: Any) -> Any:
    if isinstance(default, (list, dict)):
        raise TypeError("use tuples for sequence defaults")
    return field(default=default, metadata=constraints)


def _sub(cls: type) -> Any:
    return field(default_factory=cls)


@dataclass(frozen=True)
class DataConfig:
    """Synthetic regression data of the teacher-student kinds (mlp, dln); quadratic uses n_data only."""

    n_data: int = _f(2048, gt=1)
    x_dist: str = _f("gauss_iso", choices=X_DISTS)
    cond_number: float = _f(10.0, ge=1.0)  # gauss_aniso: ratio of largest to smallest std
    mixture_components: int = _f(4, gt=0)
    mixture_spread: float = _f(2.0, ge=0.0)
    lowdim_dim: int = _f(4, gt=0)  # lowdim: intrinsic dimension of the input manifold
    x_df: float = _f(3.0, gt=0.0)  # heavy_tail: Student-t degrees of freedom of the inputs
    noise: str = _f("gauss", choices=NOISES)
    noise_scale: float = _f(0.1, ge=0.0)
    noise_df: float = _f(4.0, gt=0.0)  # student_t noise degrees of freedom
    outlier_frac: float = _f(0.05, ge=0.0, le=1.0)
    outlier_scale: float = _f(5.0, ge=0.0)


@dataclass(frozen=True)
class TrainingConfig:
    """Training that finds w*, the centre of the local posterior (every kind but quadratic).

    With full batches (the default) a step is an epoch. Checkpoints (log-spaced plus evenly
    spaced steps, always with the last) are stored in the target artifact for ``llc trajectory``.
    """

    optimizer: str = _f("adam", choices=OPTIMIZERS)
    learning_rate: float = _f(3e-3, gt=0.0)
    steps: int = _f(2000, ge=0)
    batch_size: int | None = _f(None, gt=0)  # None: full batch
    beta1: float = _f(0.9, ge=0.0, lt=1.0)  # adam, adamw
    beta2: float = _f(0.999, ge=0.0, lt=1.0)  # adam, adamw
    # adamw only, decoupled (scaled by the learning rate as in PyTorch); never applied to
    # embeddings, biases or norm scales
    weight_decay: float = _f(0.0, ge=0.0)
    warmup_steps: int = _f(0, ge=0)  # linear learning-rate warm-up: step t uses lr * (t + 1) / warmup_steps
    clip_norm: float | None = _f(None, gt=0.0)  # global gradient-norm clipping; none: off
    checkpoints_log: int = _f(0, ge=0)  # log-spaced checkpoint steps in [1, steps]
    checkpoints_linear: int = _f(0, ge=0)  # evenly spaced checkpoint steps in [0, steps]
    log_every: int = _f(0, ge=0)  # train/test metrics every k steps (stored with the target); 0: off


class TargetKind:
    """What every [target.<kind>] section says about itself (class attributes, not fields).

    ``SHARED`` names the top-level sections the kind reads (None: all their fields), ``SEEDED``
    whether ``target.seed`` changes it; the run hash keeps exactly these, so editing a section a
    kind ignores never changes a run id.
    """

    SHARED: ClassVar[dict[str, tuple[str, ...] | None]] = {"data": None, "training": None}
    SEEDED: ClassVar[bool] = True

    def unused(self) -> tuple[str, ...]:
        """Sub-sections that the other fields make irrelevant (left out of the run hash)."""
        return ()

    def n(self, run: RunConfig) -> int:
        """Number of training examples (n of the posterior)."""
        return run.data.n_data

    def check(self, run: RunConfig) -> None:
        """Cross-field checks; raise ConfigError with one line."""


@dataclass(frozen=True)
class TeacherConfig:
    """The network that generates the targets (smaller than the student by default)."""

    depth: int = _f(1, gt=0)
    width: int = _f(16, gt=0)
    activation: str = _f("same", choices=("same", *ACTIVATIONS))
    weight_scale: float = _f(1.0, gt=0.0)


@dataclass(frozen=True)
class MLPTargetConfig(TargetKind):
    """Teacher-student MLP (the student is the network whose LLC is estimated).

    cross_entropy: the labels are the argmax of the (noisy) teacher outputs, out_dim classes.
    """

    in_dim: int = _f(32, gt=0)
    out_dim: int = _f(1, gt=0)
    depth: int = _f(2, gt=0)  # number of hidden layers
    widths: tuple[int, ...] | None = _f(None, item_gt=0)  # hidden widths; overrides depth/target_params
    target_params: int | None = _f(10_000, gt=0)  # size hidden widths to about this many parameters
    activation: str = _f("relu", choices=ACTIVATIONS)
    bias: bool = _f(True)
    loss: str = _f("mse", choices=LOSSES)
    teacher: TeacherConfig = _sub(TeacherConfig)

    def check(self, run: RunConfig) -> None:
        if self.widths is not None and len(self.widths) == 0:
            raise ConfigError("target.mlp.widths: give at least one hidden width or none")
        if self.widths is None and self.target_params is None:
            raise ConfigError("target.mlp.target_params: set it or target.mlp.widths to size the network")
        if self.loss == "cross_entropy" and self.out_dim < 2:
            raise ConfigError(f"target.mlp.out_dim: cross_entropy needs >= 2 classes, got {self.out_dim}")


@dataclass(frozen=True)
class QuadraticTargetConfig(TargetKind):
    """L_n(theta) = sum_i h_i theta_i^2 / 2 at w* = 0 (h_i = 1 unless ``eigenvalues`` says): lambda = half
    the number of nonzero h_i, and the localized estimate is exact at any n*beta, gamma; n from data.n_data."""

    SHARED: ClassVar[dict[str, tuple[str, ...] | None]] = {"data": ("n_data",)}
    SEEDED: ClassVar[bool] = False

    dim: int = _f(4, gt=0)
    # Hessian eigenvalues h_i, L_n = 0.5 * sum_i h_i theta_i^2 (dim entries, each >= 0; 0 = a flat
    # direction): curvature spread over orders of magnitude, still exact at finite n*beta and gamma.
    # None: every h_i = 1.
    eigenvalues: tuple[float, ...] | None = _f(None)

    def check(self, run: RunConfig) -> None:
        if self.eigenvalues is None:
            return
        if len(self.eigenvalues) != self.dim:
            raise ConfigError(f"target.quadratic.eigenvalues: needs target.quadratic.dim = {self.dim} entries, "
                              f"got {len(self.eigenvalues)}")
        if min(self.eigenvalues) < 0:
            raise ConfigError(f"target.quadratic.eigenvalues: every entry must be >= 0 (a Hessian eigenvalue at "
                              f"the minimum), got {min(self.eigenvalues)!r}")
        post = run.posterior
        if 0 in self.eigenvalues and post.gamma == 0 and post.prior_radius is None:
            raise ConfigError("posterior.gamma: a zero eigenvalue (flat direction) needs gamma > 0, else the "
                              "posterior is improper; got 0")


@dataclass(frozen=True)
class DLNTargetConfig(TargetKind):
    """Deep linear network (no biases) with a teacher of given rank: Aoyagi's lambda (n -> infinity)."""

    widths: tuple[int, ...] = _f((6, 5, 4, 6), min_len=2, item_gt=0)  # input, hidden..., output
    rank: int = _f(2, ge=0)

    def check(self, run: RunConfig) -> None:
        if self.rank > min(self.widths):
            raise ConfigError(f"target.dln.rank: must be <= the narrowest width {min(self.widths)} of "
                              f"target.dln.widths {self.widths}, got {self.rank}")


@dataclass(frozen=True)
class ModularMLPConfig:
    """MLP on the concatenated one-hot codes of (a, b)."""

    depth: int = _f(1, gt=0)  # hidden layers
    width: int = _f(128, gt=0)
    activation: str = _f("gelu", choices=ACTIVATIONS)


@dataclass(frozen=True)
class RoutedConfig:
    """MLP on the one-hot codes of (a, b) whose hidden layers route each input through ``heads``
    parallel heads (dense layers of ``width`` units) mixed by a learned softmax gate; the regularizer
    pushes the gate towards one head per input (in training only: the posterior's loss is the
    task's alone, as weight decay is not in it either)."""

    depth: int = _f(1, gt=0)  # routed hidden layers
    width: int = _f(128, gt=0)  # units of each head
    heads: int = _f(4, gt=1)
    activation: str = _f("gelu", choices=ACTIVATIONS)
    regularizer: str = _f("entropy", choices=ROUTING_REGULARIZERS)
    lambda_routing: float = _f(0.01, ge=0.0)


@dataclass(frozen=True)
class TransformerConfig:
    """Decoder-only transformer on [a, op, b, =]; defaults of Nanda et al. (2023): one layer."""

    # blocks (attention + MLP); the first keeps the one-layer model's parameter names. Added later,
    # so left out of the hash at its default: targets of one-layer configs keep their ids.
    n_layers: int = _f(1, gt=0, omit_default=True)
    d_model: int = _f(128, gt=0)
    heads: int = _f(4, gt=0)  # head dimension d_model / heads
    d_mlp: int = _f(512, gt=0)
    activation: str = _f("relu", choices=("relu", "gelu"))
    layer_norm: bool = _f(False)  # pre-norm LayerNorms before every attention and MLP, and the unembedding


@dataclass(frozen=True)
class ModularTargetConfig(TargetKind):
    """Modular arithmetic: label (a op b) mod p for all pairs (a, b); a train_frac of the p^2 pairs
    (chosen by split_seed) is the training set, the rest the test set. target.seed: initialisation."""

    SHARED: ClassVar[dict[str, tuple[str, ...] | None]] = {"training": None}

    p: int = _f(113, gt=1)
    op: str = _f("add", choices=MODULAR_OPS)
    train_frac: float = _f(0.3, gt=0.0, lt=1.0)
    split_seed: int = _f(0, ge=0)
    model: str = _f("transformer", choices=MODULAR_MODELS)
    loss: str = _f("cross_entropy", choices=LOSSES)  # mse: against the one-hot label
    mlp: ModularMLPConfig = _sub(ModularMLPConfig)
    transformer: TransformerConfig = _sub(TransformerConfig)
    routed: RoutedConfig = _sub(RoutedConfig)

    def unused(self) -> tuple[str, ...]:
        return tuple(m for m in MODULAR_MODELS if m != self.model)

    def n(self, run: RunConfig) -> int:
        return modular_train_size(self.p, self.train_frac)

    def check(self, run: RunConfig) -> None:
        n = self.n(run)
        if not 0 < n < self.p ** 2:
            raise ConfigError(f"target.modular.train_frac: leaves {n} of {self.p ** 2} pairs for training; "
                              "both the training and the test set need at least one pair")
        t = self.transformer
        if self.model == "transformer" and t.d_model % t.heads:
            raise ConfigError(f"target.modular.transformer.heads: must divide d_model = {t.d_model}, got {t.heads}")


def figure_mode(mode: str, *, save_plots: bool = True, default: str = "all") -> str:
    """The effective ``--figures`` mode (none, summary, all): ``save_plots=False`` wins; ``auto`` is
    the calling command's default. ValueError (one line) for any other mode."""
    if not save_plots:
        return "none"
    mode = default if mode == "auto" else mode
    modes = [m for m in FIGURE_MODES if m != "auto"]
    if mode not in modes:
        raise ValueError(f"--figures: {mode!r} is not allowed; choose one of {', '.join(modes)}")
    return mode


def modular_train_size(p: int, train_frac: float) -> int:
    return int(round(train_frac * p * p))


@dataclass(frozen=True)
class TargetConfig:
    kind: str = _f("mlp", choices=TARGET_KINDS)
    seed: int = _f(0, ge=0)
    dtype: str = _f("float64", choices=DTYPES)
    mlp: MLPTargetConfig = _sub(MLPTargetConfig)
    quadratic: QuadraticTargetConfig = _sub(QuadraticTargetConfig)
    dln: DLNTargetConfig = _sub(DLNTargetConfig)
    modular: ModularTargetConfig = _sub(ModularTargetConfig)


@dataclass(frozen=True)
class PosteriorConfig:
    beta_mode: str = _f("inv_log_n", choices=("inv_log_n", "fixed"), runtime=True)
    beta0: float = _f(1.0, gt=0.0, runtime=True)  # beta = beta0 / log n, or beta0 itself when fixed
    gamma: float = _f(100.0, ge=0.0, runtime=True)
    prior_radius: float | None = _f(None, gt=0.0, runtime=True)  # when set, gamma = d / radius**2
    # Weight restriction (llc.engine.restrict): the coordinates that move, the others held at w*;
    # empty: all. A runtime value: restrictions of one model share the compiled programs.
    restrict: tuple[str, ...] = _f((), runtime=True)
    # Data refinement: the examples the posterior's loss (so lambda-hat) is on; n is their number.
    # train (default), test or all (held-out data: modular targets), then optionally a filter over
    # a modular target's examples in a, b and y (e.g. "a <= b"; llc.engine.targets.posterior_data).
    data: str = _f("train", choices=("train", "test", "all"))
    data_filter: str | None = _f(None)


class SamplerKind:
    """What every sampler section says about itself (methods and class attributes, not fields).

    Fields marked ``runtime=True`` are arguments of the compiled programs; every other field is
    structural and enters ``signature()``, the compile-cache key of the sampler's programs.
    """

    # The field the CLI's --chains / --draws set in this section (None: the flag leaves it alone).
    CHAINS_FIELD: ClassVar[str | None] = "chains"
    DRAWS_FIELD: ClassVar[str | None] = "draws"
    # Overrides ``llc calibrate`` applies to every grid point and resets (to the base config's
    # values) in the preset it recommends.
    CALIBRATION: ClassVar[dict[str, Any]] = {}

    @classmethod
    def section(cls) -> str:
        """The sampler's name: its RunConfig section and registry entry."""
        return next(s.name for s in registry.SAMPLERS.values() if s.config == cls.__name__)

    def signature(self) -> tuple[tuple[str, Any], ...]:
        """(name, value) of every non-runtime field: what the compiled programs bake in."""
        return tuple((f.name, getattr(self, f.name)) for f in dataclasses.fields(self)
                     if not f.metadata.get("runtime"))

    def unused(self) -> tuple[str, ...]:
        """Fields that the other fields make irrelevant (left out of the run hash)."""
        return ()

    def check(self, run: RunConfig | None, n: int) -> None:
        """Cross-field checks against the target's n (``run`` is None from the Python API); raise
        ConfigError with one line."""

    def steps_per_chain(self) -> int:
        """Transitions of one chain's longest loop (an int32 counter)."""
        return self.draws

    def footprint(self) -> tuple[int, int, str]:
        """Memory-estimate inputs: (floats per parameter per chain held besides the driver's
        working copies, recorded draws per chain, what multiplies the parameters in a message)."""
        return 0, self.draws, ""


class MinibatchKind(SamplerKind):
    """A sampler of minibatch gradients; the SG-MCMC ones record L_n every ``eval_every`` steps
    after ``burnin`` recorded draws."""

    def check(self, run: RunConfig | None, n: int) -> None:
        if self.batch_size > n:
            raise ConfigError(f"{self.section()}.batch_size: must be <= the target's n = {n} training examples, "
                              f"got {self.batch_size}")

    def steps_per_chain(self) -> int:
        return (self.burnin + self.draws) * self.eval_every

    def footprint(self) -> tuple[int, int, str]:
        return 0, self.burnin + self.draws, ""


@dataclass(frozen=True)
class SGLDConfig(MinibatchKind):
    CALIBRATION: ClassVar[dict[str, Any]] = {"mala_check": True}  # record the MALA acceptance

    step_size: StepSize = _f(AUTO, gt=0.0, runtime=True)  # epsilon: drift eps/2 * grad, noise variance eps
    batch_size: int = _f(256, gt=0)
    chains: int = _f(4, gt=0)
    draws: int = _f(1000, gt=0)  # recorded full-batch evaluations of L_n per chain
    eval_every: int = _f(10, gt=0)  # SGLD steps between recorded evaluations
    burnin: int = _f(100, ge=0)  # evaluations discarded as burn-in (kept as warm-up draws)
    precond: str = _f("none", choices=("none", "rmsprop", "adam"))
    beta1: float = _f(0.9, ge=0.0, lt=1.0, runtime=True)
    beta2: float = _f(0.999, ge=0.0, lt=1.0, runtime=True)
    eps: float = _f(1e-8, gt=0.0, runtime=True)
    bias_correction: bool = _f(True)
    # Record the Metropolis (MALA) acceptance probability of a draw's last move under the
    # full-batch posterior, every ``mala_every`` draws: 2 full-batch gradients each time (other
    # draws record NaN). llc.analysis.flags' step_bias reads it.
    mala_check: bool = _f(True)
    mala_every: int = _f(10, gt=0)
    dtype: str = _f("float32", choices=DTYPES)

    def unused(self) -> tuple[str, ...]:
        if self.precond == "none":
            return ("beta1", "beta2", "eps", "bias_correction")  # preconditioner settings
        return ()


@dataclass(frozen=True)
class SGHMCConfig(MinibatchKind):
    """Stochastic-gradient HMC (Chen et al. 2014): underdamped Langevin with friction, minibatched."""

    step_size: StepSize = _f(AUTO, gt=0.0, runtime=True)  # h: time step of the Euler solver (BlackJAX diffusions.sghmc)
    friction: float = _f(100.0, gt=0.0, runtime=True)  # alpha: momentum friction; alpha*h is the damping per step
    batch_size: int = _f(256, gt=0)
    chains: int = _f(4, gt=0)
    draws: int = _f(1000, gt=0)
    eval_every: int = _f(10, gt=0)
    burnin: int = _f(100, ge=0)
    dtype: str = _f("float32", choices=DTYPES)


@dataclass(frozen=True)
class SGNHTConfig(MinibatchKind):
    """Stochastic-gradient Nose-Hoover thermostat (Ding et al. 2014), minibatched."""

    step_size: StepSize = _f(AUTO, gt=0.0, runtime=True)  # h, as for SGHMC
    diffusion: float = _f(100.0, gt=0.0, runtime=True)  # alpha: injected noise 2*alpha*h; also the thermostat's start
    batch_size: int = _f(256, gt=0)
    chains: int = _f(4, gt=0)
    draws: int = _f(1000, gt=0)
    eval_every: int = _f(10, gt=0)
    burnin: int = _f(100, ge=0)
    dtype: str = _f("float32", choices=DTYPES)


@dataclass(frozen=True)
class HMCConfig(SamplerKind):
    chains: int = _f(4, gt=0)
    draws: int = _f(500, gt=0)
    warmup: int = _f(300, ge=0)
    num_integration_steps: int = _f(16, gt=0)
    step_size: float = _f(1e-3, gt=0.0, runtime=True)  # initial value; window adaptation tunes it
    target_accept: float = _f(0.8, gt=0.0, lt=1.0, runtime=True)
    # Sampling draws each transition's step size uniformly in eps*(1 +- jitter): a fixed
    # trajectory length can resonate with the posterior's periods (HMC only, not NUTS).
    step_size_jitter: float = _f(0.2, ge=0.0, lt=1.0, runtime=True)
    nuts: bool = _f(False)
    max_tree_depth: int = _f(8, gt=0)
    adaptation: str = _f("per_chain", choices=("per_chain", "shared"))
    dtype: str = _f("float64", choices=DTYPES)


@dataclass(frozen=True)
class MCLMCConfig(SamplerKind):
    chains: int = _f(4, gt=0)
    draws: int = _f(1000, gt=0)
    eval_every: int = _f(2, gt=0)  # integrator steps between recorded draws
    warmup: int = _f(1000, ge=0)  # tuning steps for L and step size
    # BlackJAX's default. Unadjusted, so biased by its step size (desired_energy_var below).
    # Omelyan's tuned steps exceed the posterior's size in high dimensions and mix badly there
    # (ESS 66 instead of 4700 on the 100-d Gaussian), so it is not the default.
    integrator: str = _f("isokinetic_mclachlan", choices=(
        "isokinetic_leapfrog", "isokinetic_mclachlan", "isokinetic_omelyan"))
    # Energy-error variance per dimension the step size is tuned to. BlackJAX's 5e-4 left
    # lambda-hat 1.7% low on the 100-d quadratic (z = -9.9) and 6.5% low against HMC and adjusted
    # MCLMC on a tanh MLP of 4,951 parameters (10 combined SE); 5e-6 (a ~2x smaller step, the same
    # gradient count) gave -0.3% (z = -1.0) and -0.5% (0.6 SE): benchmarks/reference_agreement.py.
    desired_energy_var: float = _f(5e-6, gt=0.0, runtime=True)
    # Steps after BlackJAX's tuner that check the realized energy-error variance and shrink the
    # step size where it exceeds desired_energy_var (heavy-tailed errors on ReLU losses); 0: off.
    energy_check_steps: int = _f(300, ge=0)
    diagonal_preconditioning: bool = _f(True)
    adaptation: str = _f("per_chain", choices=("per_chain", "shared"))
    dtype: str = _f("float64", choices=DTYPES)

    def steps_per_chain(self) -> int:
        return self.draws * self.eval_every


@dataclass(frozen=True)
class MCLMCAdjustedConfig(SamplerKind):
    chains: int = _f(4, gt=0)
    draws: int = _f(500, gt=0)
    warmup: int = _f(1000, ge=0)
    target_accept: float = _f(0.9, gt=0.0, lt=1.0, runtime=True)
    # Mean integration steps per proposal (L = this * step_size); BlackJAX's recommended 2.0.
    target_num_integration_steps: float = _f(2.0, gt=1.1)
    integrator: str = _f("isokinetic_mclachlan", choices=(
        "isokinetic_leapfrog", "isokinetic_mclachlan", "isokinetic_omelyan"))
    diagonal_preconditioning: bool = _f(True)
    adaptation: str = _f("per_chain", choices=("per_chain", "shared"))
    dtype: str = _f("float64", choices=DTYPES)


@dataclass(frozen=True)
class VIConfig(MinibatchKind):
    """Mixture-of-factor-analysers variational estimator (llc.engine.samplers.vi; seed 003).

    Seed names: M = components, r = rank, lr = learning_rate. gamma is posterior.gamma.
    """

    DRAWS_FIELD: ClassVar[str | None] = None  # its draws are eval_samples draws of the fitted q

    components: int = _f(8, gt=0)  # M: mixture components
    rank: int = _f(2, ge=0)  # r: low-rank factor columns per component
    r_per_component: tuple[int, ...] | None = _f(None, item_gt=0)  # per-component ranks (length M)
    factor_form: str = _f("covariance", choices=("covariance", "precision"))  # low rank in Sigma or Sigma^-1
    steps: int = _f(5000, gt=0)  # optimisation steps (a multiple of eval_every)
    batch_size: int = _f(256, gt=0)
    learning_rate: float = _f(1e-2, gt=0.0, runtime=True)  # Adam
    lr_schedule: str | None = _f(None, choices=("cosine", "linear_decay"))
    lr_warmup_frac: float = _f(0.05, ge=0.0, lt=1.0)  # warm-up fraction, with a schedule
    clip_global_norm: float | None = _f(5.0, gt=0.0)  # none: no clipping
    eval_every: int = _f(50, gt=0)  # steps between trace records
    eval_samples: int = _f(64, gt=0)  # draws of q for lambda-hat
    chains: int = _f(1, gt=0)  # independent VI fits
    mc_samples: int = _f(1, gt=0)  # q-draws (each with its own minibatch) per step
    whitening_mode: str = _f("none", choices=("none", "rmsprop", "adam"))
    whitening_decay: float = _f(0.99, gt=0.0, lt=1.0)  # EMA decay of the pre-pass moments
    whitening_steps: int = _f(200, gt=0)  # minibatch gradients in the whitening pre-pass
    init_scale: float = _f(1.0, gt=0.0, runtime=True)  # initial q std, in units of 1/sqrt(n*beta + gamma)
    learn_means: bool = _f(True)  # per-component mean offsets from w* (start at 0)
    alpha_temperature: float = _f(1.0, gt=0.0)  # pi = softmax(alpha / T)
    alpha_dirichlet_prior: float | None = _f(None, gt=0.0)  # symmetric Dirichlet(a0) on pi
    entropy_bonus: float = _f(0.0, ge=0.0)  # lambda * H(pi) added to the objective
    control_variate: bool = _f(True)  # HVP quadratic control variate at evaluation
    cv_exact_max_dim: int = _f(2048, ge=0)  # exact Hessian diagonal up to this dim, else Hutchinson
    cv_probes: int = _f(64, gt=0)  # Hutchinson probes above cv_exact_max_dim
    tensorboard: bool = _f(False)  # also write the trace as TensorBoard scalars (<run>/tensorboard/vi)
    dtype: str = _f("float32", choices=DTYPES)

    def check(self, run: RunConfig | None, n: int) -> None:
        super().check(run, n)
        if self.tensorboard and importlib.util.find_spec("tensorboardX") is None:
            raise ConfigError("vi.tensorboard: needs the tensorboardX package; pip install 'llc[tensorboard]' "
                              "(the same scalars are always saved in vi.nc)")
        if self.steps % self.eval_every:
            raise ConfigError(f"vi.steps: must be a multiple of vi.eval_every ({self.eval_every}), got {self.steps}")
        if self.r_per_component is not None and len(self.r_per_component) != self.components:
            raise ConfigError(f"vi.r_per_component: needs vi.components = {self.components} entries, "
                              f"got {len(self.r_per_component)}")

    def steps_per_chain(self) -> int:
        return self.steps

    def footprint(self) -> tuple[int, int, str]:
        # Each component's mean, factor columns and diagonal, with their two Adam moments.
        return (self.components * (self.rank + 2) * 3, self.eval_samples,
                f"{self.components} components × rank {self.rank} × ")


@dataclass(frozen=True)
class RunConfig:
    seed: int = _f(0, ge=0, runtime=True)
    samplers: tuple[str, ...] = _f(("sgld", "hmc", "mclmc"), min_len=1, item_choices=SAMPLERS)
    theta_proj_dim: int = _f(4, gt=0)  # random projections of theta kept per draw
    save_plots: bool = _f(True)
    # Per-run PNGs, drawn after the run is saved: auto = all for `llc run`, summary for sweeps;
    # save_plots=false means none whatever this says.
    figures: str = _f("auto", choices=FIGURE_MODES)
    target: TargetConfig = _sub(TargetConfig)
    data: DataConfig = _sub(DataConfig)
    training: TrainingConfig = _sub(TrainingConfig)
    posterior: PosteriorConfig = _sub(PosteriorConfig)
    sgld: SGLDConfig = _sub(SGLDConfig)
    hmc: HMCConfig = _sub(HMCConfig)
    mclmc: MCLMCConfig = _sub(MCLMCConfig)
    mclmc_adjusted: MCLMCAdjustedConfig = _sub(MCLMCAdjustedConfig)
    vi: VIConfig = _sub(VIConfig)
    sgnht: SGNHTConfig = _sub(SGNHTConfig)
    sghmc: SGHMCConfig = _sub(SGHMCConfig)


# Fields that change how results are shown, not what is computed: left out of the run hash.
PRESENTATION_FIELDS = ("save_plots", "figures")


# --------------------------------------------------------------------------- typing helpers

def _resolved_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _is_step_size(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType) and set(typing.get_args(tp)) == {float, str}


def _type_name(tp: Any) -> str:
    if _is_step_size(tp):
        return f"a number or {AUTO}"
    inner, optional = _unwrap_optional(tp)
    if typing.get_origin(inner) is tuple:
        item = typing.get_args(inner)[0].__name__
        name = f"comma-separated list of {item}"
    else:
        name = getattr(inner, "__name__", str(inner))
    return f"{name} or none" if optional else name


def parse_value(text: str, tp: Any, path: str) -> Any:
    """Parse a command-line string into the field type ``tp``."""
    wanted = tp
    raw = text.strip()
    if _is_step_size(tp):
        if raw.lower() == AUTO:
            return AUTO
        tp = float
    inner, optional = _unwrap_optional(tp)
    if optional and raw.lower() in ("none", "null", ""):
        return None
    try:
        if inner is bool:
            low = raw.lower()
            if low in ("true", "1", "yes", "on"):
                return True
            if low in ("false", "0", "no", "off"):
                return False
            raise ValueError
        if inner is int:
            value = float(raw) if ("e" in raw.lower() and not raw.lower().startswith("0x")) else int(raw)
            if isinstance(value, float):
                if not value.is_integer():
                    raise ValueError
                value = int(value)
            return value
        if inner is float:
            return float(raw)
        if inner is str:
            return raw
        if typing.get_origin(inner) is tuple:
            item_tp = typing.get_args(inner)[0]
            parts = [p for p in _split_items(raw) if p.strip()]
            return tuple(parse_value(p, item_tp, path) for p in parts)
    except ValueError:
        pass
    raise ConfigError(f"{path}: cannot parse {text!r} as {_type_name(wanted)}")


def _split_items(raw: str) -> list[str]:
    """A list written as text: "a,b", "(a, b)" or "[a, b]"; commas inside brackets stay (posterior.restrict's
    index selections, e.g. attn/query/kernel[:,1])."""
    raw = raw.strip()
    if raw[:1] in "([" and raw[-1:] in ")]":
        raw = raw[1:-1]
    parts, depth, current = [], 0, ""
    for char in raw:
        depth += (char == "[") - (char == "]")
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    return parts + [current]


def _check_type(value: Any, tp: Any, path: str) -> Any:
    """Check (and gently coerce, e.g. int -> float, list -> tuple) a value from a file or dict."""
    if _is_step_size(tp):
        return parse_value(value, tp, path) if isinstance(value, str) else _check_type(value, float, path)
    inner, optional = _unwrap_optional(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{path}: must be {_type_name(tp)}, got none")
    if isinstance(value, str) and inner is not str:
        return parse_value(value, tp, path)
    if inner is bool:
        if isinstance(value, bool):
            return value
    elif inner is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif inner is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif inner is str:
        if isinstance(value, str):
            return value
    elif typing.get_origin(inner) is tuple and isinstance(value, (list, tuple)):
        item_tp = typing.get_args(inner)[0]
        return tuple(_check_type(v, item_tp, path) for v in value)
    raise ConfigError(f"{path}: must be {_type_name(tp)}, got {value!r}")


# --------------------------------------------------------------------------- validation

# Integers become JAX int32 scalars, loop lengths and array sizes; beyond this they overflow (or,
# past int64, fail with a TypeError deep inside JAX). Floats must be finite numbers.
INT_MAX = 2**31 - 1


def _check_number(value: Any, path: str) -> None:
    if isinstance(value, bool):
        return
    if isinstance(value, int) and not -INT_MAX <= value <= INT_MAX:
        raise ConfigError(f"{path}: must be within ±{INT_MAX} (int32), got {value}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{path}: must be a finite number, got {value}")


def _check_constraints(value: Any, meta: typing.Mapping[str, Any], path: str) -> None:
    if value is None or value == AUTO:
        return
    for item in value if isinstance(value, tuple) else (value,):
        _check_number(item, path)
    if "choices" in meta and value not in meta["choices"]:
        raise ConfigError(f"{path}: {value!r} is not allowed; choose one of {', '.join(meta['choices'])}")
    bounds = (("gt", lambda v, b: v > b, ">"), ("ge", lambda v, b: v >= b, ">="),
              ("lt", lambda v, b: v < b, "<"), ("le", lambda v, b: v <= b, "<="))
    for key, ok, sym in bounds:
        if key in meta and not ok(value, meta[key]):
            raise ConfigError(f"{path}: must be {sym} {meta[key]}, got {value!r}")
    if isinstance(value, tuple):
        if "min_len" in meta and len(value) < meta["min_len"]:
            raise ConfigError(f"{path}: needs at least {meta['min_len']} entries, got {len(value)}")
        for item in value:
            if "item_gt" in meta and not item > meta["item_gt"]:
                raise ConfigError(f"{path}: every entry must be > {meta['item_gt']}, got {item!r}")
            if "item_choices" in meta and item not in meta["item_choices"]:
                raise ConfigError(
                    f"{path}: {item!r} is not allowed; choose from {', '.join(meta['item_choices'])}")


def validate_tree(obj: Any, prefix: str = "") -> None:
    hints = _resolved_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        path = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            validate_tree(value, prefix=f"{path}.")
        else:
            _check_type(value, hints[f.name], path)
            _check_constraints(value, f.metadata, path)


def sampler_class(name: str) -> type[SamplerKind]:
    """The config class of a registered sampler (its [<name>] section)."""
    return globals()[registry.sampler(name).config]


def active_target(cfg: RunConfig) -> TargetKind:
    """The [target.<kind>] section of the selected kind."""
    return getattr(cfg.target, cfg.target.kind)


def trains(cfg: RunConfig) -> bool:
    """Whether the target's w* is found by training (its kind reads [training], for some steps)."""
    return "training" in active_target(cfg).SHARED and cfg.training.steps > 0


def target_n(cfg: RunConfig) -> int:
    """n, the number of training examples of the selected target."""
    return active_target(cfg).n(cfg)


def validate(cfg: RunConfig) -> RunConfig:
    """Raise ConfigError (one line, naming the field) for anything unusable; return cfg."""
    validate_tree(cfg)
    if len(set(cfg.samplers)) != len(cfg.samplers):
        raise ConfigError(f"samplers: duplicated entry in {','.join(cfg.samplers)}")
    active_target(cfg).check(cfg)
    check_restrict_syntax(cfg.posterior.restrict)
    if cfg.posterior.data_filter is not None:
        parse_data_filter(cfg.posterior.data_filter)
    if (cfg.posterior.data != "train" or cfg.posterior.data_filter is not None) and cfg.target.kind != "modular":
        which = "data_filter" if cfg.posterior.data == "train" else "data"
        raise ConfigError(f"posterior.{which}: data refinement needs a target with held-out data and named examples "
                          f"(modular); target.kind is {cfg.target.kind}")
    tr = cfg.training
    if tr.weight_decay and tr.optimizer != "adamw":
        raise ConfigError(f"training.weight_decay: only training.optimizer=adamw uses it (optimizer is "
                          f"{tr.optimizer}); set it to 0 or choose adamw")
    n = target_n(cfg)
    for name in cfg.samplers:
        section: SamplerKind = getattr(cfg, name)
        section.check(cfg, n)
        steps = section.steps_per_chain()
        if steps > INT_MAX:
            raise ConfigError(f"{name}.{section.DRAWS_FIELD or 'steps'}: {steps} steps per chain exceeds {INT_MAX} "
                              f"(int32); lower it")
    return cfg


# --------------------------------------------------------------------------- restrictions (syntax)
# The patterns of posterior.restrict; llc.engine.restrict applies them to a model's parameters.

RESTRICT_FAMILIES = ("per-layer", "per-head")
RESTRICT_FIELD = "posterior.restrict"
RESTRICT_INDEXED = re.compile(r"^(?P<glob>[^\[\]@]+)\[(?P<index>[^\[\]]*)\]$")
RESTRICT_HEAD = re.compile(r"^(?P<module>[^\[\]@]+)@head(?P<head>\d+)$")


def parse_restrict_index(text: str, pattern: str) -> tuple:
    """``"[:, 0]"``'s inside as a NumPy index: integers and slices."""
    parts: list[Any] = []
    for item in text.split(","):
        item = item.strip()
        try:
            if ":" in item:
                bounds = [int(b) if b.strip() else None for b in item.split(":")]
                if len(bounds) > 3:
                    raise ValueError
                parts.append(slice(*bounds))
            else:
                parts.append(int(item))
        except ValueError:
            raise ConfigError(f"{RESTRICT_FIELD}: cannot read the index {item!r} of {pattern!r}; use integers and "
                              "slices such as [:, 0] or [2:4]") from None
    return tuple(parts)


def check_restrict_syntax(patterns: tuple[str, ...]) -> None:
    """What can be checked without the parameters: a family stands alone, indices and heads are well formed."""
    families = [p for p in patterns if p in RESTRICT_FAMILIES]
    if families and len(patterns) > 1:
        raise ConfigError(f"{RESTRICT_FIELD}: {families[0]} is a family of restrictions and stands alone; "
                          f"got {', '.join(patterns)}")
    for pattern in patterns:
        if not pattern.strip():
            raise ConfigError(f"{RESTRICT_FIELD}: empty pattern; give a glob over parameter paths (e.g. attn/*), "
                              f"MODULE@headN or one of {', '.join(RESTRICT_FAMILIES)}")
        if "[" in pattern or "]" in pattern:
            found = RESTRICT_INDEXED.match(pattern)
            if found is None:
                raise ConfigError(f"{RESTRICT_FIELD}: cannot read {pattern!r}; an index selection is PATTERN[i, j:k]")
            parse_restrict_index(found["index"], pattern)
        elif "@" in pattern and RESTRICT_HEAD.match(pattern) is None:
            raise ConfigError(f"{RESTRICT_FIELD}: cannot read {pattern!r}; a head is MODULE@headN, e.g. attn@head0")


DATA_FILTER_NAMES = ("a", "b", "y")


def parse_data_filter(text: str):
    """``posterior.data_filter`` as a checked expression (Python syntax): the names a, b, y, integers,
    arithmetic (+ - * // %), comparisons and & | ~ with parentheses; nothing else is evaluated."""
    import ast

    field_name = "posterior.data_filter"
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        raise ConfigError(f"{field_name}: cannot read {text!r}; write e.g. a <= b or (a + b) % 2 == 0") from None
    allowed = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Compare, ast.Name, ast.Constant, ast.Load, ast.Add,
               ast.Sub, ast.Mult, ast.FloorDiv, ast.Mod, ast.BitAnd, ast.BitOr, ast.Invert, ast.USub, ast.Lt, ast.LtE,
               ast.Gt, ast.GtE, ast.Eq, ast.NotEq)
    for node in ast.walk(tree):
        if not isinstance(node, allowed):
            raise ConfigError(f"{field_name}: {text!r} uses {type(node).__name__}; allowed: the names "
                              f"{', '.join(DATA_FILTER_NAMES)}, integers, + - * // %, comparisons, & | ~")
        if isinstance(node, ast.Name) and node.id not in DATA_FILTER_NAMES:
            raise ConfigError(f"{field_name}: unknown name {node.id!r} in {text!r}; the names are "
                              f"{', '.join(DATA_FILTER_NAMES)} (the operands and the label)")
        if isinstance(node, ast.Constant) and (isinstance(node.value, bool) or not isinstance(node.value, int)):
            raise ConfigError(f"{field_name}: {text!r}: only integer constants, got {node.value!r}")
    return compile(tree, "<posterior.data_filter>", "eval")


# --------------------------------------------------------------------------- overrides

def _field_map(obj: Any) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(obj)}


# Names of earlier releases (flags, presets, sweep spaces, saved config.json files) -> current ones.
LEGACY_NAMES = {
    "target.quad_dim": "target.quadratic.dim",
    "target.dln_widths": "target.dln.widths",
    "target.dln_rank": "target.dln.rank",
    "model": "target.mlp",
    "teacher": "target.mlp.teacher",
}


def canonical(dotted: str) -> str:
    """The current name of a dotted field: ``model.depth`` -> ``target.mlp.depth``."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        new = LEGACY_NAMES.get(".".join(parts[:i]))
        if new is not None:
            return ".".join([new, *parts[i:]])
    return dotted


def _flatten(mapping: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for key, value in mapping.items():
        if isinstance(value, dict):
            out.extend(_flatten(value, f"{prefix}{key}."))
        else:
            out.append((f"{prefix}{key}", value))
    return out


def set_field(cfg: Any, dotted: str, value: Any, *, from_text: bool, _prefix: str = "") -> Any:
    """Return a copy of ``cfg`` with the dotted field set; unknown names raise ConfigError."""
    head, _, rest = dotted.partition(".")
    full = f"{_prefix}{dotted}"
    fields = _field_map(cfg)
    if head not in fields:
        where = f"section {_prefix[:-1]!r}" if _prefix else "the run config"
        raise ConfigError(
            f"{full}: unknown config field {head!r} in {where}; valid fields: {', '.join(fields)}")
    current = getattr(cfg, head)
    if rest:
        if not dataclasses.is_dataclass(current):
            raise ConfigError(f"{full}: {_prefix}{head} is not a section with sub-fields")
        sub = set_field(current, rest, value, from_text=from_text, _prefix=f"{_prefix}{head}.")
        return dataclasses.replace(cfg, **{head: sub})
    if dataclasses.is_dataclass(current):
        if isinstance(value, dict):
            for key, sub_value in value.items():
                current = set_field(current, key, sub_value, from_text=from_text, _prefix=f"{full}.")
            return dataclasses.replace(cfg, **{head: current})
        raise ConfigError(f"{full}: is a section; set one of its fields, e.g. {full}.<field>=...")
    tp = _resolved_hints(type(cfg))[head]
    parsed = parse_value(value, tp, full) if from_text else _check_type(value, tp, full)
    return dataclasses.replace(cfg, **{head: parsed})


def apply_overrides(cfg: RunConfig, overrides: typing.Iterable[str]) -> RunConfig:
    """Apply ``dotted.field=value`` strings in order."""
    for item in overrides:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected dotted.field=value")
        cfg = set_field(cfg, canonical(key), value, from_text=True)
    return cfg


def apply_mapping(cfg: RunConfig, mapping: dict[str, Any]) -> RunConfig:
    """Apply a nested mapping (from a preset file, a sweep point or config.json) onto cfg.

    Keys may be nested tables or dotted strings, in current or legacy names.
    """
    for key, value in _flatten(mapping):
        cfg = set_field(cfg, canonical(key), value, from_text=False)
    return cfg


# --------------------------------------------------------------------------- presets

def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.toml") if not p.stem.startswith("sweep"))


def load_preset(name_or_path: str) -> dict[str, Any]:
    path = Path(name_or_path)
    if not path.suffix:
        path = PRESETS_DIR / f"{name_or_path}.toml"
    if not path.is_file():
        raise ConfigError(f"preset: {name_or_path!r} not found; available: {', '.join(preset_names())}")
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"preset: {path} is not valid TOML ({exc})") from None


def build_config(preset: str | None = None, overrides: typing.Iterable[str] = (),
                 mapping: dict[str, Any] | None = None) -> RunConfig:
    """Defaults, then preset file, then a mapping, then ``--set`` strings; validated."""
    cfg = RunConfig()
    if preset:
        cfg = apply_mapping(cfg, load_preset(preset))
    if mapping:
        cfg = apply_mapping(cfg, mapping)
    cfg = apply_overrides(cfg, overrides)
    return validate(cfg)


# --------------------------------------------------------------------------- (de)serialisation

def to_dict(cfg: Any) -> dict[str, Any]:
    out = dataclasses.asdict(cfg)
    return json.loads(json.dumps(out))  # tuples -> lists, so dicts compare equal after a JSON trip


def get_field(cfg: Any, dotted: str) -> Any:
    """The value of a dotted field (``posterior.gamma``; legacy names are understood)."""
    for part in canonical(dotted).split("."):
        cfg = getattr(cfg, part)
    return cfg


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def to_toml(data: dict[str, Any], _prefix: str = "") -> str:
    """A nested mapping as TOML that ``load_preset`` reads back (None values are left out: defaults)."""
    lines = [f"{k} = {_toml_value(v)}" for k, v in data.items() if v is not None and not isinstance(v, dict)]
    for k, v in data.items():
        if isinstance(v, dict):
            body = to_toml(v, f"{_prefix}{k}.")
            lines += ["", f"[{_prefix}{k}]", body.strip("\n")] if body.strip() else []
    return "\n".join(lines).strip("\n") + "\n"


def from_dict(data: dict[str, Any]) -> RunConfig:
    return validate(apply_mapping(RunConfig(), data))


def normalized(cfg: RunConfig) -> dict[str, Any]:
    """The part of the config that determines results: what the run hash is computed from.

    Presentation fields and the sections of samplers that are not run are dropped, and the target
    is reduced to the fields its kind uses, so an irrelevant change never invalidates the cache.
    """
    full = to_dict(cfg)
    for name in PRESENTATION_FIELDS:
        full.pop(name, None)
    for name in SAMPLERS:
        if name not in cfg.samplers:
            full.pop(name, None)
    for name in cfg.samplers:
        for unused in getattr(cfg, name).unused():
            full[name].pop(unused)
    for name in ("target", "data", "training"):
        full.pop(name)
    full.update(target_section(cfg))
    return full


def runtime_fields(cls: type = RunConfig, prefix: str = "") -> list[str]:
    """Dotted names of the fields the compiled programs take as runtime arguments (``runtime=True``)."""
    out = []
    hints = _resolved_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out += runtime_fields(hints[f.name], f"{prefix}{f.name}.")
        elif f.metadata.get("runtime"):
            out.append(f"{prefix}{f.name}")
    return out


def batch_key(cfg: RunConfig) -> str:
    """Runs with the same key share every compiled program (same target, shapes and structural
    options) and can execute as one batch: the normalized config without its runtime fields.

    Only the runtime fields of samplers the driver batches count: VI's (learning rate, initial
    scale) make its programs reusable, but VI runs one run at a time, so merging its runs into one
    task would only serialise them. A run with no batched sampler is never merged."""
    norm = normalized(cfg)
    if not any(registry.sampler(s).batched for s in cfg.samplers):
        return json.dumps(norm, sort_keys=True)
    for dotted in runtime_fields():
        section = dotted.split(".")[0]
        if section in registry.SAMPLERS and not registry.SAMPLERS[section].batched:
            continue
        *parents, leaf = dotted.split(".")
        node = norm
        for part in parents:
            node = node.get(part, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(leaf, None)
    return json.dumps(norm, sort_keys=True)


# Training fields each optimizer ignores: left out of the hash.
_UNUSED_TRAINING = {"sgd": ("beta1", "beta2", "weight_decay"), "adam": ("weight_decay",), "adamw": ()}


def _omit_new_defaults(obj: Any, d: dict[str, Any]) -> None:
    """Drop from ``d`` (``to_dict(obj)``) the fields marked ``omit_default`` that hold their default:
    fields added after configs were hashed, which leave those hashes as they were."""
    for f in dataclasses.fields(obj):
        if f.name not in d:
            continue
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            _omit_new_defaults(value, d[f.name])
        elif f.metadata.get("omit_default") and value == f.default:
            d.pop(f.name)


def target_section(cfg: RunConfig) -> dict[str, Any]:
    """The fields that define the target (its data and trained w*): the selected kind's section and
    the shared sections it reads, nothing of the other kinds."""
    kind = cfg.target.kind
    section = active_target(cfg)
    own = to_dict(section)
    for name in section.unused():
        own.pop(name)
    _omit_new_defaults(section, own)
    target = {"kind": kind, "dtype": cfg.target.dtype, kind: own}
    if section.SEEDED:
        target["seed"] = cfg.target.seed
    out: dict[str, Any] = {"target": target}
    for name, keep in section.SHARED.items():
        shared = to_dict(getattr(cfg, name))
        out[name] = shared if keep is None else {k: shared[k] for k in keep}
    if "training" in out:
        for name in _UNUSED_TRAINING[cfg.training.optimizer]:
            out["training"].pop(name)
    return out
