"""Python API: the LLC of your own model, with the same samplers and outputs as ``llc run``.

    import llc
    est = llc.estimate(model, params, x, y, sampler="sgld")      # a Flax (linen) module
    est = llc.estimate(loss_fn, params, x, y, sampler="hmc")     # any loss_fn(params, (x, y))
    print(est.llc_mean, est.llc_se)
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from llc import config as C
from llc import registry
from llc.analysis.diagnostics import diverged_chains, llc_draws, running_llc
from llc.analysis.flags import split_flags
from llc.engine.driver import SamplerOutput
from llc.engine.posterior import make_posterior
from llc.pipeline import sampling

_SAMPLER_CONFIGS = {name: C.sampler_class(name) for name in registry.SAMPLERS}


@dataclasses.dataclass(frozen=True)
class Estimate:
    """lambda-hat with its uncertainty, the raw sampler output and the posterior constants."""

    sampler: str
    llc_mean: float | None
    llc_se: float | None
    metrics: dict[str, Any]
    output: SamplerOutput
    n: int
    beta: float
    gamma: float
    L0: float

    @property
    def flags(self) -> list[str]:
        """The failure flags (README "Failure flags"); empty only for a clean result."""
        return self.metrics["flags"]

    @property
    def llc_running(self) -> np.ndarray:
        """Pooled running lambda-hat over draws."""
        ok = ~diverged_chains(self.output.Ln, self.output.theta_proj)  # as llc_mean: diverged chains excluded
        return running_llc(llc_draws(self.output.Ln[ok], self.L0, self.n * self.beta))[1]


def _mse(pred, y):
    return 0.5 * jnp.mean(jnp.sum((y - pred) ** 2, axis=-1))


class _Loss:
    """A user's model as the internal loss(params, x, y), a mean over the batch.

    Compiled programs are cached by the loss they call (``driver._program_key``), so two wrappers
    of the same model compare equal: an equal Flax module (a dataclass, equal fields) or the same
    loss function object. A new lambda per call would recompile every program on every call. A
    model that cannot be hashed (a module with a list field) is compared by identity; the wrapper
    holds it, so its id stays its own while a cached program keys on it.
    """

    def __init__(self, model: Any):
        self.model = model
        try:
            hash(model)
            self._key: Any = model
        except TypeError:
            self._key = ("id", id(model))

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other._key == self._key  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self), self._key))


class _ModuleLoss(_Loss):
    def __call__(self, params, x, y):
        return _mse(self.model.apply(params, x), y)


class _FunctionLoss(_Loss):
    def __call__(self, params, x, y):
        return self.model(params, (x, y))


def _is_module(model: Any) -> bool:
    return hasattr(model, "apply") and callable(model.apply)


def _as_loss_fn(model: Any) -> Callable:
    """Internal loss signature is loss(params, x, y), a mean over the batch."""
    if _is_module(model):  # flax.linen.Module (or anything alike)
        return _ModuleLoss(model)
    if callable(model):
        return _FunctionLoss(model)
    raise TypeError("model: pass a Flax linen Module or a pure loss_fn(params, (x, y)) -> scalar mean loss")


@functools.lru_cache(maxsize=None)
def _value_and_grad(loss_fn: Callable) -> Callable:
    """One jitted value-and-gradient per loss (equal wrappers share it): a check on every call."""
    return jax.jit(jax.value_and_grad(loss_fn))


class NotAMinimumWarning(UserWarning):
    """The gradient at w* is large enough to bias lambda-hat: w* is not a (local) minimum."""


# Warn when the gradient's first-order term alone moves lambda-hat by more than this.
GRADIENT_SHIFT_WARN = 0.5


def _check_data(model: Any, x: Any, y: Any) -> None:
    """x and y are finite arrays with one leading example axis of the same length n >= 2 (beta
    divides by log n), checked before anything is traced or sampled."""
    for name, arr in (("x", x), ("y", y)):
        if arr is None or not hasattr(arr, "shape") or not hasattr(arr, "dtype"):
            raise C.ConfigError(f"{name}: expected an array of shape (n, ...) with a leading example axis, "
                                f"got {type(arr).__name__}")
        if np.ndim(arr) == 0:
            raise C.ConfigError(f"{name}: expected an array of shape (n, ...) with a leading example axis, got a scalar")
    # A Flax module maps a batch (n, features...) to outputs; 1-D x would be one example of n features.
    if _is_module(model) and np.ndim(x) < 2:
        raise C.ConfigError(f"x: expected an array of shape (n, ...) with a leading example axis, "
                            f"got shape {tuple(np.shape(x))}")
    n = int(np.shape(x)[0])
    if n < 2:
        raise C.ConfigError(f"x: {'empty (0 examples)' if n == 0 else '1 example'}; need at least 2")
    if int(np.shape(y)[0]) != n:
        raise C.ConfigError(f"y: {np.shape(y)[0]} rows, x has {n}; give one target row per input row")
    for name, arr in (("x", x), ("y", y)):
        values = np.asarray(arr)
        if values.dtype.kind in "fc":
            for bad, test in (("NaN", np.isnan), ("inf", np.isinf)):
                if test(values).any():
                    raise C.ConfigError(f"{name}: contains {bad} ({int(test(values).sum())} of {values.size} "
                                        "values); clean or drop those examples")


def _check_params(params: Any) -> int:
    """Every leaf of w* is a floating-point array (the samplers differentiate and move it); returns d."""
    leaves = jax.tree_util.tree_leaves_with_path(params)
    if not leaves:
        raise C.ConfigError("params: no array leaves; pass the parameter pytree w* (e.g. model.init(...))")
    for path, leaf in leaves:
        dtype = np.dtype(leaf.dtype) if hasattr(leaf, "dtype") else np.result_type(leaf)
        if not jnp.issubdtype(dtype, jnp.floating):
            kind = "integer " if jnp.issubdtype(dtype, jnp.integer) else ""
            raise C.ConfigError(f"params: leaf {jax.tree_util.keystr(path) or '(root)'} has {kind}dtype {dtype}; "
                                "the parameters must be floating point")
    return int(sum(np.size(leaf) for _, leaf in leaves))


def _check_signature(model: Any, params: Any, x: Any, y: Any) -> None:
    """A loss function is called as loss(params, (x, y)): a loss(params, x, y) fails inside JAX
    with a bare TypeError, so compare the signature first (when Python can read it)."""
    import inspect

    try:
        sig = inspect.signature(model)
    except (TypeError, ValueError):
        return
    try:
        sig.bind(params, (x, y))
    except TypeError:
        raise C.ConfigError(f"model: the loss function's signature is {getattr(model, '__name__', 'loss')}{sig}; "
                            "it is called as loss(params, (x, y)) with the batch as one tuple") from None


def _check_shapes(model: Any, loss_fn: Callable, params: Any, x: Any, y: Any) -> None:
    """Shapes of y and the model output agree (on shapes alone: nothing compiles)."""
    if _is_module(model):
        out = jax.eval_shape(model.apply, params, x)
        if tuple(out.shape) != tuple(np.shape(y)):
            hint = " (e.g. y[:, None])" if tuple(out.shape) == (*np.shape(y), 1) else ""
            raise C.ConfigError(f"y: shape {tuple(np.shape(y))} does not match the model output shape "
                             f"{tuple(out.shape)}; reshape y{hint}: the loss would broadcast them silently")
    else:
        out = jax.eval_shape(loss_fn, params, x, y)
        if tuple(out.shape) != ():
            raise C.ConfigError(f"model: the loss function returned shape {tuple(out.shape)}; it must return "
                             "the scalar mean loss over the batch")


def _check_minimum(loss_fn: Callable, params: Any, x: Any, y: Any, d: int, pcfg: C.PosteriorConfig) -> None:
    """The loss is finite at w*, which is near a minimum (else a warning)."""
    import warnings

    from llc.engine.posterior import resolve_beta_gamma

    n = int(np.shape(x)[0])
    loss, grads = _value_and_grad(loss_fn)(params, x, y)
    beta, gamma = resolve_beta_gamma(pcfg, n, d)
    # On the host: an eager square and sum per leaf would compile two programs per leaf shape.
    gnorm = float(np.sqrt(sum(np.sum(np.square(np.asarray(g, np.float64))) for g in jax.tree.leaves(grads))))
    if not (np.isfinite(float(loss)) and np.isfinite(gnorm)):
        raise C.ConfigError(f"params: the loss at w* is {float(loss)} (gradient norm {gnorm}); nothing to sample around")
    # With the localizer, a gradient g tilts the posterior mean by -n*beta*g/gamma, which lowers
    # lambda-hat by about (n*beta*|g|)^2 / gamma before any curvature enters.
    shift = (n * beta * gnorm) ** 2 / gamma if gamma > 0 else 0.0
    if shift > GRADIENT_SHIFT_WARN:
        warnings.warn(f"params: the gradient norm at w* is {gnorm:.3g}, so w* is not a minimum: that alone "
                      f"lowers lambda-hat by about {shift:.3g} = (n*beta*|grad|)^2/gamma; train w* to "
                      "convergence (or raise posterior gamma)", NotAMinimumWarning, stacklevel=3)


class DivergedWarning(UserWarning):
    """Every chain diverged (non-finite or frozen): there is no lambda-hat to report."""


def _warn_diverged(sampler: str, scfg: Any, out: SamplerOutput) -> None:
    import warnings

    chains = int(out.Ln.shape[0])
    reasons = out.info.get("failure_reasons") or {}
    why = sorted(set(reasons.values()))
    step = out.info.get("step_size", getattr(scfg, "step_size", None))  # auto's chosen step
    advice = (f"try a smaller step size (sampler_config={{'step_size': {step / 10:g}}}, now {step:g})"
              if isinstance(step, (int, float)) else "try a smaller step size")
    warnings.warn(f"{sampler}: all {chains} chains diverged{' (' + '; '.join(why) + ')' if why else ''}, so "
                  f"llc_mean is None; {advice}", DivergedWarning, stacklevel=3)


def _check_count(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise C.ConfigError(f"{name}: must be an integer, got {value!r}")
    if value < low:
        raise C.ConfigError(f"{name}: must be >= {low}, got {value}")


def _build(cls: type, values: dict[str, Any] | Any | None, section: str):
    if values is None:
        return cls()
    if isinstance(values, cls):
        return values
    cfg = cls()
    for key, value in dict(values).items():
        cfg = C.set_field(cfg, key, value, from_text=False)
    C.validate_tree(cfg, prefix=f"{section}.")
    return cfg


def estimate(model: Any, params: Any, x: Any, y: Any, *, sampler: str = "sgld",
             sampler_config: dict[str, Any] | Any | None = None,
             posterior: dict[str, Any] | C.PosteriorConfig | None = None,
             seed: int = 0, proj_dim: int = 4, loss: Any = None, restrict: Any = None) -> Estimate | dict[str, Estimate]:
    """Estimate the LLC of ``model`` at ``params`` (w*) on data ``(x, y)``.

    ``model`` is a Flax linen Module (loss: mean squared error, 0.5 * ||y - f(x)||^2 per sample)
    or a pure ``loss_fn(params, (x, y))`` returning the mean loss over the batch.
    ``sampler_config`` overrides fields of the sampler's config (e.g. ``{"step_size": 1e-4}``; the
    minibatch samplers' default ``"auto"`` runs a batched grid of step sizes and keeps the one
    llc.analysis.health's rule chooses, recorded in ``.metrics["step_size"]`` and ``["step_size_rule"]``),
    ``posterior`` those of PosteriorConfig (beta_mode, beta0, gamma, prior_radius).
    A PyTorch ``nn.Module`` (params None: its own weights) runs as JAX; ``loss`` is then "mse",
    "cross_entropy" or a JAX ``loss(output, y)`` (``llc.bridges.torch``).
    ``restrict`` moves only some parameters, the others held at w* (the weight-refined LLC;
    llc.engine.restrict): globs over parameter paths (``"attn/*"``, ``["a"]``), a boolean mask pytree
    like ``params``, or a function of the path; ``"per-layer"`` / ``"per-head"`` return a dict
    {group: Estimate}, every group sampled in one batched program.
    """
    model, params, x, y = _torch_bridge(model, params, x, y, loss)
    if sampler not in _SAMPLER_CONFIGS:
        raise C.ConfigError(f"sampler: {sampler!r} is not allowed; choose one of {', '.join(_SAMPLER_CONFIGS)}")
    _check_count("seed", seed, 0)  # as the CLI's --seed
    _check_count("proj_dim", proj_dim, 1)  # no projection, no record to tell a diverged chain by
    scfg = _build(_SAMPLER_CONFIGS[sampler], sampler_config, sampler)
    pcfg = _build(C.PosteriorConfig, posterior, "posterior")
    if scfg.dtype == "float64" and not jax.config.jax_enable_x64:
        raise C.ConfigError(f"{sampler}.dtype: float64 needs jax_enable_x64; enable it or pass dtype='float32'")
    _check_data(model, x, y)
    d = _check_params(params)
    from llc.pipeline.resources import check_sampler_memory

    check_sampler_memory(scfg, d, int(np.asarray(x).nbytes + np.asarray(y).nbytes), proj_dim, "sampler_config.")
    if hasattr(scfg, "batch_size") and scfg.batch_size > np.shape(x)[0]:
        scfg = dataclasses.replace(scfg, batch_size=int(np.shape(x)[0]))
    if not _is_module(model):
        _check_signature(model, params, x, y)
    sampling.enable_compilation_cache()  # a new process reuses this model's programs too
    loss_fn = _as_loss_fn(model)
    _check_shapes(model, loss_fn, params, x, y)
    scfg.check(None, int(np.shape(x)[0]))
    groups = _restriction_groups(params, pcfg.restrict if restrict is None else restrict)
    shaped = [make_posterior(loss_fn, params, x, y, pcfg, L0=0.0, restrict=r) for _, r in groups]  # no L0 yet
    key = jax.random.key(seed)
    jobs = [sampling.Job(sampler, scfg, key, proj_dim) for _ in shaped]  # one stream: as each group alone
    batches = sampling.plan(jobs)
    # Cold, compiling the sampling programs is most of a call: they need only the shapes, so they
    # compile on a thread while this one checks w*, computes L0 and (step_size=auto) the curvature.
    compiling = sampling.precompile_in_background(batches, jobs, lambda: dict(enumerate(shaped)),
                                                   beside_compiles=True)
    try:
        _check_minimum(loss_fn, params, x, y, d, pcfg)
        posts = [make_posterior(loss_fn, params, x, y, pcfg, restrict=r) for _, r in groups]
        outs = sampling.sample(batches, jobs, posts)
    finally:
        if compiling is not None:
            compiling.shutdown(wait=False, cancel_futures=True)
    estimates = {}
    for (name, _), post, out in zip(groups, posts, outs):
        metrics = sampling.evaluate(out, post)
        metrics.update(out.work)
        metrics.update({k: out.info[k] for k in ("step_size", "step_size_rule") if k in out.info})
        metrics.update({"dim": post.dim, **({"restrict": name} if name is not None else {})})
        if metrics["llc_mean"] is None:
            _warn_diverged(sampler, scfg, out)
        estimates[name] = Estimate(sampler, metrics["llc_mean"], metrics["llc_se"], metrics, out,
                                   post.n, post.beta, post.gamma, post.L0)
    return estimates if len(groups) > 1 else estimates[groups[0][0]]


def _restrict_patterns(params: Any, restrict: Any) -> Any:
    """``restrict=`` as patterns (a tuple of strings, syntax checked; empty for none): from a string, a
    sequence of them or a function of the path. Anything else (a mask pytree) is returned as it is."""
    from llc.engine import restrict as restriction

    if restrict is None:
        return ()
    if callable(restrict):
        patterns = restriction.from_callable(params, restrict)
        if not patterns:
            raise C.ConfigError("restrict: the function selects no parameter path; paths look like "
                                + ", ".join(restriction.leaf_paths(params)[:4]))
        return patterns
    if isinstance(restrict, str):
        restrict = (restrict,)
    if isinstance(restrict, (tuple, list)) and all(isinstance(p, str) for p in restrict):
        C.check_restrict_syntax(tuple(restrict))
        return tuple(restrict)
    return restrict


def _restriction_groups(params: Any, restrict: Any) -> list[tuple[str | None, Any]]:
    """(name, restriction) per group: a family's groups, the patterns given, or a mask pytree;
    ``[(None, ())]`` for no restriction."""
    from llc.engine import restrict as restriction

    patterns = _restrict_patterns(params, restrict)
    if not isinstance(patterns, tuple):
        return [("mask", patterns)]
    if not patterns:
        return [(None, ())]
    return [(restriction.label(g), g) for g in restriction.resolve(params, patterns)]


def _torch_bridge(model: Any, params: Any, x: Any, y: Any, loss: Any, checkpoints: bool = False):
    """A PyTorch module as a JAX loss function and parameter dict; any other model unchanged."""
    from llc.bridges import torch as bridge

    return bridge.adapt(model, params, x, y, loss, checkpoints=checkpoints)


def _load_checkpoint_dir(path) -> tuple[list[Any], list[int]]:
    """Checkpoints from a directory: ``*.npz`` files (keys ``a/b/c`` become nested dicts), or Orbax
    checkpoint sub-directories (needs ``orbax-checkpoint``); ordered, and stepped, by the first
    integer in each name."""
    import re

    path = Path(path)
    npz = [p for p in path.iterdir() if p.suffix == ".npz"]
    entries = sorted(npz or [p for p in path.iterdir() if p.is_dir()],
                     key=lambda p: int(m.group()) if (m := re.search(r"\d+", p.name)) else -1)
    if not entries:
        raise ValueError(f"checkpoints: {path} holds no .npz files or Orbax checkpoint directories")
    params, steps = [], []
    for entry in entries:
        if entry.suffix == ".npz":
            tree: dict[str, Any] = {}
            with np.load(entry) as fh:
                for key in fh.files:
                    *parents, leaf = key.split("/")
                    node = tree
                    for part in parents:
                        node = node.setdefault(part, {})
                    node[leaf] = fh[key]
        else:
            import orbax.checkpoint as ocp

            tree = ocp.PyTreeCheckpointer().restore(entry.resolve())
        params.append(tree)
        match = re.search(r"\d+", entry.name)
        steps.append(int(match.group()) if match else len(steps))
    return params, steps


@dataclasses.dataclass(frozen=True)
class Trajectory:
    """Lambda-hat at every checkpoint: one entry per checkpoint in ``steps``, ``llc_mean``,
    ``llc_se`` and ``flags``; ``table`` the rows of trajectory.csv; ``artifacts`` the directory;
    ``summary`` its summary.json (``traj["rows"]`` reads it, as when this was a dict)."""

    steps: list[int]
    llc_mean: list[float | None]
    llc_se: list[float | None]
    flags: list[list[str]]
    table: Any  # pandas.DataFrame
    artifacts: Path
    summary: dict[str, Any]

    def __getitem__(self, key: str) -> Any:
        return self.summary[key]

    @classmethod
    def from_summary(cls, summary: dict[str, Any]) -> "Trajectory":
        import pandas as pd

        rows = summary["rows"]
        table = pd.DataFrame(rows)
        return cls([int(r["step"]) for r in rows], [r["llc_mean"] for r in rows], [r["llc_se"] for r in rows],
                   [split_flags(r["flags"]) for r in rows], table, Path(summary["artifacts"]), summary)


def trajectory(model: Any, checkpoints: Any, data: tuple[Any, Any], *, steps: Any = None,
               sampler: str = "sgld", sampler_config: dict[str, Any] | Any | None = None,
               posterior: dict[str, Any] | C.PosteriorConfig | None = None, seed: int = 0,
               metrics: dict[str, Any] | None = None, out: Any = "llc_trajectory", max_batch: int = 16,
               loss: Any = None, restrict: Any = None) -> Trajectory:
    """Lambda-hat and curvature at every checkpoint of a user's own training run.

    ``model``: a Flax linen Module (MSE loss) or a pure ``loss_fn(params, (x, y))``;
    ``checkpoints``: a list of parameter pytrees, or a directory of ``.npz`` / Orbax checkpoints;
    ``data``: the training data ``(x, y)`` the posterior is built on; ``steps``: the training step
    of each checkpoint (default: from the file names, else 0, 1, ...); ``metrics``: optional
    per-checkpoint columns (e.g. ``{"test_acc": [...]}``). Writes ``out`` (trajectory.csv / .nc /
    .png, summary.json; checkpoints already there are not recomputed) and returns a ``Trajectory``.
    Without a ``train_loss`` metric, the train loss is L0, the loss at each checkpoint on ``data``.
    A PyTorch ``nn.Module`` takes state_dicts as checkpoints and ``loss`` as in ``estimate``.
    ``restrict``: patterns or a function of the path as in ``estimate``; a family (``"per-layer"``,
    ``"per-head"``) gives a row per (checkpoint, group), all groups batched together.
    """
    from llc.pipeline.trajectory import Checkpointed, compute

    if sampler not in _SAMPLER_CONFIGS:
        raise C.ConfigError(f"sampler: {sampler!r} is not allowed; choose one of {', '.join(_SAMPLER_CONFIGS)}")
    if isinstance(checkpoints, (str, bytes)) or hasattr(checkpoints, "iterdir"):
        params, file_steps = _load_checkpoint_dir(checkpoints)
    else:
        params, file_steps = list(checkpoints), list(range(len(checkpoints)))
        if not params:
            raise C.ConfigError("checkpoints: empty; give at least one")
    steps = np.asarray(file_steps if steps is None else steps, dtype=np.int64)
    if len(steps) != len(params):
        raise ValueError(f"steps: {len(steps)} values for {len(params)} checkpoints")
    x, y = data
    model, params, x, y = _torch_bridge(model, params, x, y, loss, checkpoints=True)
    scfg = _build(_SAMPLER_CONFIGS[sampler], sampler_config, sampler)
    if hasattr(scfg, "batch_size") and scfg.batch_size > np.shape(x)[0]:
        scfg = dataclasses.replace(scfg, batch_size=int(np.shape(x)[0]))
    cols = {k: np.asarray(v, dtype=np.float64) for k, v in (metrics or {}).items()}
    loss_fn = _as_loss_fn(model)
    if "train_loss" not in cols:
        # L0, as the posterior computes it (after the same set-up: x64 on): the training loss at w*
        # on the data it is built on.
        sampling.prepare()
        loss_at = jax.jit(loss_fn)
        cols["train_loss"] = np.asarray([float(loss_at(p, x, y)) for p in params])
    ck = Checkpointed(loss_fn, steps, params, x, y, cols)
    pcfg = _build(C.PosteriorConfig, posterior, "posterior")
    if restrict is not None:
        patterns = _restrict_patterns(params[0], restrict)
        if not isinstance(patterns, tuple):
            raise C.ConfigError("restrict: a trajectory takes patterns or a function of the path (its directory is "
                                "keyed by them), not a mask pytree")
        pcfg = dataclasses.replace(pcfg, restrict=patterns)
    return Trajectory.from_summary(compute(
        ck, out, sampler=sampler, sampler_cfg=scfg, posterior_cfg=pcfg, seed=seed, max_batch=max_batch))
