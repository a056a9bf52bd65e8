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
import time
import zipfile
from pathlib import Path
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from llc.config import TrainingConfig
from llc.engine.targets import probes as P

# A training given a resume file saves its state there between chunks, at most this often (seconds):
# each save writes the parameters, the optimizer state and the checkpoints so far.
RESUME_EVERY_S = 30.0
# optax.adam's default epsilon, which make_optimizer keeps.
ADAM_EPS = 1e-8
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
    opt_state: Any = None  # the optimizer's state after the last step (to continue training)


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


def learning_rate(cfg: TrainingConfig) -> Any:
    """The learning rate: a number, or a schedule of the step t (from 0)."""
    if cfg.warmup_steps > 1:
        # Step t (from 0) uses lr * (t + 1) / warmup_steps until it reaches lr: unlike a ramp from 0,
        # no step is wasted, so no two checkpoints are equal.
        return optax.linear_schedule(cfg.learning_rate / cfg.warmup_steps, cfg.learning_rate, cfg.warmup_steps - 1)
    return cfg.learning_rate


def make_optimizer(cfg: TrainingConfig) -> optax.GradientTransformation:
    lr = learning_rate(cfg)
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
    names: list[str]  # recorded columns: train_<metric> (then test_<metric>), then probes, then Adam's
    probe_fn: Callable | None  # (params, probe_data, key) -> {name: scalar}
    probe_keys: list[str]
    adam: bool  # record Adam's dynamics (probes.adam_metrics)
    ck_steps: np.ndarray
    log_every: int  # 0: no log
    opt: optax.GradientTransformation
    n: int
    minibatch: bool
    recording: bool
    dtype: Any
    chunk: int  # steps per compiled chunk
    n_chunks: int
    offset: int = 0  # steps taken before this training (a continued one): recorded steps start there


def _plan(loss_fn: Callable, params, x, y, cfg: TrainingConfig, seed: int, metrics_fn: Callable | None,
          test: tuple[Any, Any] | None, probes: tuple[Callable, Any] | None = None,
          adam_dynamics: bool = False, offset: int = 0) -> _Plan:
    steps = cfg.steps
    metrics_fn = metrics_fn or (lambda p, xb, yb: {"loss": loss_fn(p, xb, yb)})
    ck_steps = checkpoint_steps(steps, cfg.checkpoints_log, cfg.checkpoints_linear)
    log_every = cfg.log_every if cfg.log_every and steps else 0
    metric_keys = _metric_keys(metrics_fn, params, x, y)
    names = [f"{split}_{k}" for split in ("train", "test")[: 1 + (test is not None)] for k in metric_keys]
    probe_fn = probes[0] if probes is not None else None
    probe_keys = sorted(jax.eval_shape(probe_fn, params, probes[1], jax.random.key(0))) if probe_fn else []
    adam = adam_dynamics and cfg.optimizer in ("adam", "adamw")
    names += probe_keys + (list(P.ADAM_KEYS) if adam else [])
    n = jax.tree.leaves(x)[0].shape[0]
    # steps + 1 iterations: the last records the final state (see _programs)
    chunk = math.ceil((steps + 1) / min(MAX_CHUNKS, steps + 1)) if steps else 0
    return _Plan(cfg, seed, loss_fn, metrics_fn, metric_keys, names, probe_fn, probe_keys, adam, ck_steps, log_every,
                 make_optimizer(cfg), n,
                 minibatch=cfg.batch_size is not None and cfg.batch_size < n,
                 recording=bool(len(ck_steps) or log_every), dtype=jax.tree.leaves(params)[0].dtype,
                 chunk=chunk, n_chunks=math.ceil((steps + 1) / chunk) if steps else 0, offset=offset)


def _evaluate(plan: _Plan, p, opt_state, t, data):
    """The recorded metrics at ``p`` after ``t`` steps, one row in ``plan.names`` order: train (then
    test) metrics, the probes, Adam's dynamics."""
    values = [plan.metrics_fn(p, data["x"], data["y"])]
    if data["test"] is not None:
        values.append(plan.metrics_fn(p, *data["test"]))
    row = [jnp.asarray(v[k], plan.dtype) for v in values for k in plan.metric_keys]
    if plan.probe_fn is not None:
        # The probes' random vectors are fixed by (seed, step): a resumed run draws the same.
        key = jax.random.fold_in(jax.random.fold_in(jax.random.key(plan.seed), 0x9B0BE), t + plan.offset)
        probed = plan.probe_fn(p, data["probe"], key)
        row += [jnp.asarray(probed[k], plan.dtype) for k in plan.probe_keys]
    if plan.adam:
        cfg = plan.cfg
        lr = learning_rate(cfg)
        state = P.adam_state(opt_state)
        # the rate of the last step taken (step t - 1); none before the first
        lr_t = lr(jnp.maximum(state.count - 1, 0)) if callable(lr) else lr
        adam = P.adam_metrics(state, p, lr_t, cfg.beta1, cfg.beta2, ADAM_EPS,
                              cfg.weight_decay if cfg.optimizer == "adamw" else 0.0, decay_mask(p))
        row += [adam[k].astype(plan.dtype) for k in P.ADAM_KEYS]
    return jnp.stack(row)


def _record(plan: _Plan, rec, p, opt_state, t, data):
    """Write step ``t``'s parameters and metrics into the buffers where ``t`` is a checkpoint / log step."""
    ck_params, ck_metrics, log = rec
    ck_steps, log_every = plan.ck_steps, plan.log_every
    is_ck = jnp.zeros((), bool)
    if len(ck_steps):
        ck = jnp.asarray(ck_steps)
        j = jnp.clip(jnp.searchsorted(ck, t), 0, len(ck_steps) - 1)
        is_ck = ck[j] == t
    # t runs past the last step in the last chunk's padding: nothing is recorded there
    is_log = ((t % log_every == 0) & (t <= plan.cfg.steps)) if log_every else jnp.zeros((), bool)
    m = jax.lax.cond(is_ck | is_log, lambda q, s: _evaluate(plan, q, s, t, data),
                     lambda q, s: jnp.full(len(plan.names), jnp.nan, plan.dtype), p, opt_state)
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
    return _Carry(p, opt_state, jnp.where(first_bad, t, carry.bad_step),
                  jnp.where(first_bad, loss, carry.bad_loss), carry.record)


def _programs(plan: _Plan) -> tuple[Callable, Callable]:
    """(start, run_chunk): setup and one chunk of steps, each one compiled program (eager jnp calls
    would compile one small program per operation: on a GPU ~50 ms each, seconds of a quick run)."""
    steps, chunk, n_chunks = plan.cfg.steps, plan.chunk, plan.n_chunks

    @jax.jit
    def start(params, opt_state, data):
        opt_state = plan.opt.init(params) if opt_state is None else opt_state
        rec = (None, None, None)
        if plan.recording:
            k = len(plan.ck_steps)
            rec = (jax.tree.map(lambda a: jnp.zeros((k, *a.shape), a.dtype), params) if k else None,
                   jnp.full((k, len(plan.names)), jnp.nan, plan.dtype) if k else None,
                   jnp.full((steps // plan.log_every + 1, len(plan.names)), jnp.nan, plan.dtype)
                   if plan.log_every else None)
        return _Carry(params, opt_state, jnp.int32(-1), jnp.zeros((), plan.dtype), rec)

    @jax.jit
    def run_chunk(carry: _Carry, c, data):
        root = jax.random.key(plan.seed)
        # a continued training draws its minibatches from a stream of its own
        keys = jax.random.split(jax.random.fold_in(root, plan.offset) if plan.offset else root, steps)
        keys = jnp.concatenate([keys, keys[: n_chunks * chunk - steps]])  # padding, never used
        ts = c * chunk + jnp.arange(chunk, dtype=jnp.int32)

        def body(c, xs):
            key, t = xs
            # Iteration t records the state after t steps, then takes step t: one call site of the
            # recorded metrics (and probes) in one program, compiled once. Steps past the end
            # (iteration ``steps`` records only; the last chunk's padding) leave the parameters alone.
            if plan.recording:
                c = c._replace(record=_record(plan, c.record, c.params, c.opt_state, t, data))
            return jax.lax.cond(t < steps, lambda c: _one_step(plan, c, key, t, data), lambda c: c, c), None

        return jax.lax.scan(body, carry, (jax.lax.dynamic_slice_in_dim(keys, c * chunk, chunk), ts))[0]

    return start, run_chunk


def _signature(plan: _Plan) -> str:
    """What a resume file must match: the same training, the same chunks, the same records."""
    import dataclasses
    import json

    return json.dumps({"cfg": dataclasses.asdict(plan.cfg), "seed": plan.seed, "names": plan.names,
                       "chunk": plan.chunk, "n_chunks": plan.n_chunks, "offset": plan.offset,
                       "ck_steps": plan.ck_steps.tolist(), "x64": bool(jax.config.jax_enable_x64)}, sort_keys=True)


def _save_state(path: Path, plan: _Plan, chunks_done: int, carry: _Carry) -> None:
    from llc.store import cache

    path.parent.mkdir(parents=True, exist_ok=True)
    leaves = {f"leaf_{i:05d}": np.asarray(a) for i, a in enumerate(jax.tree.leaves(carry))}
    with cache.atomic_file(path, "wb") as fh:  # a run killed mid-write leaves the previous state whole
        np.savez(fh, signature=_signature(plan), chunks_done=chunks_done, **leaves)


def _load_state(path: Path, plan: _Plan, fresh: _Carry) -> tuple[int, _Carry] | None:
    """(chunks done, carry) from a resume file of this very training, else None (then it starts over)."""
    if not path.is_file():
        return None
    leaves, treedef = jax.tree.flatten(fresh)
    try:
        with np.load(path, allow_pickle=False) as fh:
            if str(fh["signature"]) != _signature(plan):
                return None
            saved = [fh[f"leaf_{i:05d}"] for i in range(len(leaves))]
            done = int(fh["chunks_done"])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None  # damaged or of another layout: start over
    if [a.shape for a in saved] != [np.shape(a) for a in leaves]:
        return None
    return done, jax.tree.unflatten(treedef, [jnp.asarray(a, dtype=np.asarray(b).dtype) for a, b in zip(saved, leaves)])


def _run(plan: _Plan, params, data, progress: Callable[[int, int], None] | None, opt_state=None,
         resume: Path | None = None, log: Callable[[str], None] = lambda msg: None) -> _Carry:
    """All chunks, with the divergence check, the resume file and ``progress`` between them."""
    start, run_chunk = _programs(plan)
    steps = plan.cfg.steps
    carry = start(params, opt_state, data)
    first = 0
    if resume is not None:
        found = _load_state(Path(resume), plan, carry)
        if found is not None:
            first, carry = found
            log(f"training: resuming after step {min(first * plan.chunk, steps) + plan.offset} from {resume}")
    saved_at = time.monotonic()
    for c in range(first, plan.n_chunks):
        carry = run_chunk(carry, np.int32(c), data)
        bad = int(carry.bad_step)
        if bad >= 0:
            raise TrainingDiverged(f"target training diverged: the loss became {float(carry.bad_loss)} at step "
                                   f"{bad + plan.offset} ({describe(plan.cfg)}); lower training.learning_rate or set "
                                   "training.clip_norm")
        if resume is not None and c + 1 < plan.n_chunks and time.monotonic() - saved_at >= RESUME_EVERY_S:
            _save_state(Path(resume), plan, c + 1, carry)
            saved_at = time.monotonic()
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
        checkpoints = Checkpoints(ck_steps + plan.offset,
                                  [jax.tree.map(lambda a, i=i: a[i], stacked) for i in range(len(ck_steps))],
                                  dict(zip(names, np.asarray(ck_metrics).T)))
    log_table = None
    if plan.log_every:
        log_table = {"step": np.arange(0, plan.cfg.steps + 1, plan.log_every) + plan.offset,
                     **dict(zip(names, np.asarray(log).T))}
    return Trained(to_np(carry.params), checkpoints, log_table, to_np(carry.opt_state))


def train(loss_fn: Callable, params, x, y, cfg: TrainingConfig, seed: int, *,
          metrics_fn: Callable | None = None, test: tuple[Any, Any] | None = None,
          progress: Callable[[int, int], None] | None = None,
          probes: tuple[Callable, Any] | None = None, adam_dynamics: bool = False,
          resume: Path | None = None, log: Callable[[str], None] = lambda msg: None,
          opt_state: Any = None, offset: int = 0) -> Trained:
    """Minimise ``loss_fn(params, x, y)`` for ``cfg.steps`` steps from ``params``.

    Args:
      metrics_fn: ``(params, x, y) -> {"loss": ..., "acc": ...}`` recorded at checkpoints and every
        ``cfg.log_every`` steps on the training data and on ``test``; default ``{"loss": loss_fn}``.
      test: held-out ``(x, y)``, or None.
      progress: called as ``progress(steps_done, steps)`` between chunks.
      probes: ``(probe_fn, probe_data)``: ``probe_fn(params, probe_data, key) -> {name: scalar}``
        recorded beside the metrics (e.g. ``modular.probes``).
      adam_dynamics: with Adam/AdamW, also record ``probes.ADAM_KEYS`` (``probes.adam_metrics``;
        NaN at step 0).
      resume: a file for the training's state, saved between chunks (at most every RESUME_EVERY_S
        seconds); a training killed on the way starts again from it (``log`` says so) and ends
        with the parameters, checkpoints and log of an uninterrupted one. The caller removes it.
      opt_state, offset: continue a training that took ``offset`` steps and ended in ``opt_state``
        (the learning-rate schedule and Adam's moments go on); recorded steps count from ``offset``.

    Raises:
      TrainingDiverged: at the first chunk in which the loss became NaN or infinite.
    """
    plan = _plan(loss_fn, params, x, y, cfg, seed, metrics_fn, test, probes, adam_dynamics, offset)
    data = {"x": x, "y": y, "test": test, "probe": probes[1] if probes is not None else None}
    carry = _run(plan, params, data, progress, opt_state, resume, log)
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
