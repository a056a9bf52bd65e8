"""Training that finds w* (Optax), with checkpoints and metrics recorded along the way.

    trained = train(loss_fn, params, x, y, cfg.training, seed, metrics_fn=..., test=(x_test, y_test))
    trained.params                       # w*: the parameters after cfg.steps optimizer steps
    trained.checkpoints                  # Checkpoints(steps, params, metrics) or None
    trained.log                          # {"step", "train_loss", ...} every cfg.log_every steps, or None

Steps run in chunks of one compiled ``lax.scan`` (the data are arguments, not constants); between
chunks the loss is checked, so a diverging run stops within a chunk with ``TrainingDiverged``.
Checkpoints and logged metrics are written into preallocated buffers inside the scan (under
``lax.cond``, so steps that record nothing cost nothing extra), never through the host.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from llc.config import TrainingConfig

# At most this many chunks: progress and the divergence check happen between them.
MAX_CHUNKS = 20


class TrainingDiverged(RuntimeError):
    """Training produced a non-finite loss; the message is one line naming the training settings."""


class Checkpoints(NamedTuple):
    """Parameters saved during training, with the train/test metrics at each of them.

    ``steps[i]`` is the number of optimizer steps taken before ``params[i]`` (0: the initialisation);
    ``metrics`` maps ``train_loss``, ``test_loss`` (and ``train_acc``, ``test_acc`` for
    classification targets) to arrays aligned with ``steps``.
    """

    steps: np.ndarray
    params: list
    metrics: dict[str, np.ndarray]

    def stacked(self):
        """One pytree whose leaves have a leading checkpoint axis (for vmapping over checkpoints)."""
        return jax.tree.map(lambda *leaves: np.stack(leaves), *self.params)


class Trained(NamedTuple):
    params: Any  # w*, a pytree of NumPy arrays
    checkpoints: Checkpoints | None
    log: dict[str, np.ndarray] | None  # "step" and the metrics, every log_every steps


def checkpoint_steps(steps: int, n_log: int, n_linear: int) -> np.ndarray:
    """Sorted unique checkpoint steps: ``n_log`` log-spaced in [1, steps] (early training changes
    fastest) and ``n_linear`` evenly spaced in [0, steps]; the last step is always included when
    any checkpoint is asked for. Rounding merges close steps, so there may be fewer than asked."""
    if steps == 0 or n_log + n_linear == 0:
        return np.zeros(0, dtype=np.int64)
    parts = [np.array([steps])]
    if n_log:
        parts.append(np.geomspace(1, steps, n_log))
    if n_linear:
        parts.append(np.linspace(0, steps, n_linear))
    return np.unique(np.rint(np.concatenate(parts)).astype(np.int64))


def decay_mask(params) -> Any:
    """True for the leaves weight decay applies to: weight matrices and kernels; not biases or norm
    scales (1-d, or named ``bias`` / ``scale`` as Flax names them) nor embedding tables (a name
    ``embed*`` or ``*_embed``, e.g. Flax's ``embedding``; the unembedding is a weight matrix)."""
    def is_embedding(name: str) -> bool:
        return name.startswith("embed") or name.endswith("_embed")

    def decays(path, leaf) -> bool:
        names = [str(getattr(k, "key", getattr(k, "name", ""))).lower() for k in path]
        return len(np.shape(leaf)) >= 2 and names[-1] not in ("bias", "scale") and not any(map(is_embedding, names))

    return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(cfg: TrainingConfig) -> optax.GradientTransformation:
    lr: Any = cfg.learning_rate
    if cfg.warmup_steps > 1:
        # Step t (from 0) uses lr * (t + 1) / warmup_steps until it reaches lr: unlike a ramp from 0,
        # no step is wasted, so no two checkpoints are equal.
        lr = optax.linear_schedule(cfg.learning_rate / cfg.warmup_steps, cfg.learning_rate, cfg.warmup_steps - 1)
    if cfg.optimizer == "sgd":
        tx = optax.sgd(lr)
    elif cfg.optimizer == "adam":
        tx = optax.adam(lr, b1=cfg.beta1, b2=cfg.beta2)
    else:
        tx = optax.adamw(lr, b1=cfg.beta1, b2=cfg.beta2, weight_decay=cfg.weight_decay, mask=decay_mask)
    if cfg.clip_norm is not None:
        tx = optax.chain(optax.clip_by_global_norm(cfg.clip_norm), tx)
    return tx


def describe(cfg: TrainingConfig) -> str:
    """The training settings in one line, for error messages."""
    parts = [f"optimizer={cfg.optimizer}", f"learning_rate={cfg.learning_rate:g}", f"steps={cfg.steps}",
             f"batch_size={cfg.batch_size or 'full'}"]
    if cfg.optimizer == "adamw":
        parts.append(f"weight_decay={cfg.weight_decay:g}")
    if cfg.warmup_steps:
        parts.append(f"warmup_steps={cfg.warmup_steps}")
    parts.append(f"clip_norm={cfg.clip_norm if cfg.clip_norm is not None else 'none'}")
    return ", ".join(f"training.{p}" for p in parts)


class _Carry(NamedTuple):
    params: Any
    opt_state: Any
    bad_step: jax.Array  # first step whose loss was not finite, -1 while none
    bad_loss: jax.Array
    record: Any  # (checkpoint params, checkpoint metrics, log metrics); None parts when unused


def _metric_keys(metrics_fn: Callable, params, x, y) -> list[str]:
    return sorted(jax.eval_shape(metrics_fn, params, x, y), key=lambda k: (k != "loss", k))


class _Plan(NamedTuple):
    """What one ``train`` call fixes before its first step; the compiled programs close over it."""
    cfg: TrainingConfig
    seed: int
    loss_fn: Callable
    metrics_fn: Callable
    metric_keys: list[str]
    names: list[str]  # recorded columns: train_<metric> (then test_<metric>)
    ck_steps: np.ndarray
    log_every: int  # 0: no log
    opt: optax.GradientTransformation
    n: int
    minibatch: bool
    recording: bool
    dtype: Any
    chunk: int  # steps per compiled chunk
    n_chunks: int


def _plan(loss_fn: Callable, params, x, y, cfg: TrainingConfig, seed: int, metrics_fn: Callable | None,
          test: tuple[Any, Any] | None) -> _Plan:
    steps = cfg.steps
    metrics_fn = metrics_fn or (lambda p, xb, yb: {"loss": loss_fn(p, xb, yb)})
    ck_steps = checkpoint_steps(steps, cfg.checkpoints_log, cfg.checkpoints_linear)
    log_every = cfg.log_every if cfg.log_every and steps else 0
    metric_keys = _metric_keys(metrics_fn, params, x, y)
    names = [f"{split}_{k}" for split in ("train", "test")[: 1 + (test is not None)] for k in metric_keys]
    n = jax.tree.leaves(x)[0].shape[0]
    chunk = math.ceil(steps / min(MAX_CHUNKS, steps)) if steps else 0
    return _Plan(cfg, seed, loss_fn, metrics_fn, metric_keys, names, ck_steps, log_every, make_optimizer(cfg), n,
                 minibatch=cfg.batch_size is not None and cfg.batch_size < n,
                 recording=bool(len(ck_steps) or log_every), dtype=jax.tree.leaves(params)[0].dtype,
                 chunk=chunk, n_chunks=math.ceil(steps / chunk) if steps else 0)


def _evaluate(plan: _Plan, p, data):
    """The recorded metrics at ``p``, one row: train (then test) values in ``plan.names`` order."""
    values = [plan.metrics_fn(p, data["x"], data["y"])]
    if data["test"] is not None:
        values.append(plan.metrics_fn(p, *data["test"]))
    return jnp.stack([jnp.asarray(v[k], plan.dtype) for v in values for k in plan.metric_keys])


def _record(plan: _Plan, rec, p, t, data):
    """Write step ``t``'s parameters and metrics into the buffers where ``t`` is a checkpoint / log step."""
    ck_params, ck_metrics, log = rec
    ck_steps, log_every = plan.ck_steps, plan.log_every
    is_ck = jnp.zeros((), bool)
    if len(ck_steps):
        ck = jnp.asarray(ck_steps)
        j = jnp.clip(jnp.searchsorted(ck, t), 0, len(ck_steps) - 1)
        is_ck = ck[j] == t
    is_log = (t % log_every == 0) if log_every else jnp.zeros((), bool)
    m = jax.lax.cond(is_ck | is_log, lambda q: _evaluate(plan, q, data),
                     lambda q: jnp.full(len(plan.names), jnp.nan, plan.dtype), p)
    if len(ck_steps):
        ck_params = jax.lax.cond(is_ck, lambda b: jax.tree.map(lambda bi, pi: bi.at[j].set(pi), b, p),
                                 lambda b: b, ck_params)
        ck_metrics = ck_metrics.at[j].set(jnp.where(is_ck, m, ck_metrics[j]))
    if log_every:
        i = jnp.minimum(t // log_every, log.shape[0] - 1)
        log = log.at[i].set(jnp.where(is_log, m, log[i]))
    return ck_params, ck_metrics, log


def _one_step(plan: _Plan, carry: _Carry, key, t, data) -> _Carry:
    """Optimizer step ``t`` (from 0), on a minibatch drawn with ``key`` or on the full data."""
    if plan.minibatch:
        idx = jax.random.randint(key, (plan.cfg.batch_size,), 0, plan.n)
        xb, yb = jax.tree.map(lambda a: a[idx], data["x"]), jax.tree.map(lambda a: a[idx], data["y"])
    else:
        xb, yb = data["x"], data["y"]
    loss, grads = jax.value_and_grad(plan.loss_fn)(carry.params, xb, yb)
    updates, opt_state = plan.opt.update(grads, carry.opt_state, carry.params)
    p = optax.apply_updates(carry.params, updates)
    first_bad = (carry.bad_step < 0) & ~jnp.isfinite(loss)
    rec = _record(plan, carry.record, p, t + 1, data) if plan.recording else carry.record
    return _Carry(p, opt_state, jnp.where(first_bad, t, carry.bad_step),
                  jnp.where(first_bad, loss, carry.bad_loss), rec)


def _programs(plan: _Plan) -> tuple[Callable, Callable]:
    """(start, run_chunk): setup and one chunk of steps, each one compiled program (eager jnp calls
    would compile one small program per operation: on a GPU ~50 ms each, seconds of a quick run)."""
    steps, chunk, n_chunks = plan.cfg.steps, plan.chunk, plan.n_chunks

    @jax.jit
    def start(params, data):
        rec = (None, None, None)
        if plan.recording:
            k = len(plan.ck_steps)
            rec = (jax.tree.map(lambda a: jnp.zeros((k, *a.shape), a.dtype), params) if k else None,
                   jnp.full((k, len(plan.names)), jnp.nan, plan.dtype) if k else None,
                   jnp.full((steps // plan.log_every + 1, len(plan.names)), jnp.nan, plan.dtype)
                   if plan.log_every else None)
            rec = _record(plan, rec, params, jnp.int32(0), data)
        return _Carry(params, plan.opt.init(params), jnp.int32(-1), jnp.zeros((), plan.dtype), rec)

    @jax.jit
    def run_chunk(carry: _Carry, c, data):
        keys = jax.random.split(jax.random.key(plan.seed), steps)
        keys = jnp.concatenate([keys, keys[: n_chunks * chunk - steps]])  # padding, never used
        ts = c * chunk + jnp.arange(chunk, dtype=jnp.int32)

        def body(c, xs):
            key, t = xs
            # Steps past the end (padding of the last chunk) leave the carry alone.
            return jax.lax.cond(t < steps, lambda c: _one_step(plan, c, key, t, data), lambda c: c, c), None

        return jax.lax.scan(body, carry, (jax.lax.dynamic_slice_in_dim(keys, c * chunk, chunk), ts))[0]

    return start, run_chunk


def _run(plan: _Plan, params, data, progress: Callable[[int, int], None] | None) -> _Carry:
    """All chunks, with the divergence check and ``progress`` between them."""
    start, run_chunk = _programs(plan)
    steps = plan.cfg.steps
    carry = start(params, data)
    for c in range(plan.n_chunks):
        carry = run_chunk(carry, np.int32(c), data)
        bad = int(carry.bad_step)
        if bad >= 0:
            raise TrainingDiverged(f"target training diverged: the loss became {float(carry.bad_loss)} at step "
                                   f"{bad} ({describe(plan.cfg)}); lower training.learning_rate or set "
                                   "training.clip_norm")
        if progress is not None:
            progress(min((c + 1) * plan.chunk, steps), steps)
    return carry


def _result(plan: _Plan, carry: _Carry) -> Trained:
    """The final carry on the host: w*, the checkpoints and the log table."""
    to_np = lambda tree: jax.tree.map(np.asarray, tree)  # noqa: E731
    ck_params, ck_metrics, log = carry.record
    ck_steps, names = plan.ck_steps, plan.names
    checkpoints = None
    if len(ck_steps):
        stacked = to_np(ck_params)
        checkpoints = Checkpoints(ck_steps, [jax.tree.map(lambda a, i=i: a[i], stacked) for i in range(len(ck_steps))],
                                  dict(zip(names, np.asarray(ck_metrics).T)))
    log_table = None
    if plan.log_every:
        log_table = {"step": np.arange(0, plan.cfg.steps + 1, plan.log_every), **dict(zip(names, np.asarray(log).T))}
    return Trained(to_np(carry.params), checkpoints, log_table)


def train(loss_fn: Callable, params, x, y, cfg: TrainingConfig, seed: int, *,
          metrics_fn: Callable | None = None, test: tuple[Any, Any] | None = None,
          progress: Callable[[int, int], None] | None = None) -> Trained:
    """Minimise ``loss_fn(params, x, y)`` for ``cfg.steps`` steps from ``params``.

    Args:
      metrics_fn: ``(params, x, y) -> {"loss": ..., "acc": ...}`` recorded at checkpoints and every
        ``cfg.log_every`` steps on the training data and on ``test``; default ``{"loss": loss_fn}``.
      test: held-out ``(x, y)``, or None.
      progress: called as ``progress(steps_done, steps)`` between chunks.

    Raises:
      TrainingDiverged: at the first chunk in which the loss became NaN or infinite.
    """
    plan = _plan(loss_fn, params, x, y, cfg, seed, metrics_fn, test)
    carry = _run(plan, params, {"x": x, "y": y, "test": test}, progress)
    return _result(plan, carry)


def full_loss_and_grad_norm(loss_fn: Callable, params, x, y) -> tuple[float, float]:
    @jax.jit
    def loss_and_norm(params, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        return loss, optax.global_norm(grads)

    loss, norm = loss_and_norm(params, x, y)
    return float(loss), float(norm)


def cast_floats(tree, dtype):
    """Float leaves to ``dtype``; integer leaves (tokens, class labels) stay as they are."""
    def conv(a):
        a = np.asarray(a)
        return a.astype(dtype) if np.issubdtype(a.dtype, np.floating) else a

    return jax.tree.map(conv, tree)
