"""The same SGLD LLC estimate with devinterp (PyTorch), for ``benchmarks/run.py --sections devinterp``.

devinterp >= 2 is built around language models: its sampler reads a dataset of ``input_ids`` and a
per-token loss ``(model, input_ids) -> (batch, seq-1)``. A regression target fits that interface
without touching devinterp's code: each "sequence" is ``[i, 0]`` (the index of a data point and a
pad), so ``seq-1 = 1`` and the custom loss returns the per-sample loss 0.5 * ||y_i - f(x_i)||^2 as a
(batch, 1) tensor. devinterp averages it over the batch before ``backward``: exactly llc's loss
(mean over the batch of 0.5 * ||y - f(x)||^2).

Update rules, read from devinterp/optim/sgmcmc.py (SGMCMC.sgld) and llc/samplers/sgld.py:
    devinterp: w <- w - (lr/2) * (nbeta * grad L_batch(w) + gamma * (w - w0)) + sqrt(lr) * N(0, 1)
    llc:       w <- w + (eps/2) * grad log p_batch(w) + N(0, eps),
               log p_batch = -nbeta * L_batch(w) - gamma/2 * ||w - w*||^2
so lr = eps, devinterp's ``n_beta`` = llc's n*beta and ``localization`` = gamma, with w0 = w*.

Estimators differ, and the comparison says how: llc records the full-batch L_n(w) every
``eval_every`` steps after burn-in; devinterp records the minibatch loss of every step (burn-in
included in its own ``llc_mean``) and L_n(w*) from ``num_init_loss_batches`` minibatches (one full
pass here). Both are unbiased for E[L_n] - L_n(w*) up to the burn-in.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def available() -> tuple[bool, str]:
    try:
        import devinterp  # noqa: F401
        import torch  # noqa: F401
        from devinterp.slt.sampling import sample  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any import failure means "not available"
        return False, f"devinterp/torch not importable ({type(exc).__name__}: {exc}); pip install -e '.[bench]'"
    return True, ""


def torch_mlp(params, activation: str):
    """nn.Sequential with llc's weights: llc stores W as (fan_in, fan_out), torch as (out, in)."""
    import torch
    from torch import nn

    acts = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": lambda: nn.GELU(approximate="tanh"), "identity": nn.Identity}
    layers = []
    for i, layer in enumerate(params):
        w = np.asarray(layer["W"], dtype=np.float32)
        lin = nn.Linear(w.shape[0], w.shape[1], bias="b" in layer)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(w.T.copy()))
            if "b" in layer:
                lin.bias.copy_(torch.from_numpy(np.asarray(layer["b"], dtype=np.float32)))
        layers.append(lin)
        if i < len(params) - 1:
            layers.append(acts[activation]())
    return nn.Sequential(*layers)


class _IndexDataset:
    """Item i is {"input_ids": [i, 0]}: a data-point index and a pad (devinterp wants seq >= 2)."""

    def __init__(self, n: int):
        import torch

        self.ids = torch.stack([torch.arange(n), torch.zeros(n, dtype=torch.long)], dim=1)

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def __getitem__(self, i):
        return {"input_ids": self.ids[i]}


def run(target, post, scfg, *, threads: int, seed: int = 0, ours: dict[str, Any] | None = None) -> dict[str, Any]:
    """devinterp's SGLD LLC estimate on llc's target with llc's SGLD settings; timings and lambda-hat."""
    os.environ.setdefault("TQDM_DISABLE", "1")  # progress bars would only add noise to the timing
    import devinterp
    import torch
    from devinterp.slt.llc import compute_llc
    from devinterp.slt.sampling import sample

    from llc.analysis.diagnostics import llc_metrics

    torch.set_num_threads(threads)
    activation = target.meta.get("info", {}).get("activation", "relu")
    model = torch_mlp(target.params, activation)
    X = torch.from_numpy(np.asarray(target.x, dtype=np.float32))
    Y = torch.from_numpy(np.asarray(target.y, dtype=np.float32))
    n, batch = int(X.shape[0]), int(scfg.batch_size)

    def loss_fn(model, input_ids):
        idx = input_ids[:, 0]
        pred = model(X[idx])
        return 0.5 * ((Y[idx] - pred) ** 2).sum(dim=-1, keepdim=True)

    # Sanity: both sides compute the same loss and gradient at w* (float32).
    check = _check_equivalence(model, target, post, X, Y, batch)

    steps_bw = int(scfg.eval_every)
    burn_steps = int(scfg.burnin) * steps_bw
    kwargs = dict(
        lr=float(scfg.step_size), n_beta=float(post.nbeta), num_chains=int(scfg.chains), num_draws=int(scfg.draws),
        batch_size=batch, num_burnin_steps=burn_steps, num_steps_bw_draws=steps_bw,
        num_init_loss_batches=max(1, n // batch), localization=float(post.gamma), init_seed=100 + seed,
        device="cpu", loss_fn=loss_fn,
    )
    with tempfile.TemporaryDirectory(prefix="llc-bench-devinterp-") as tmp:
        t0 = time.perf_counter()
        samples = sample(model, _IndexDataset(n), {}, output_path=str(Path(tmp) / "samples.zarr"), **kwargs)
        llc_ds = compute_llc(samples)
        wall = time.perf_counter() - t0
        ds = samples.dataset
        trace = np.asarray(ds.sampling_loss_micro.values, dtype=np.float64).mean(axis=(2, 3))  # (chains, steps)
        init_loss = float(np.asarray(ds.init_loss.values, dtype=np.float64).mean())
        own_llc = float(llc_ds.llc_mean.values)
        own_std = float(llc_ds.llc_std.values)

    chains, steps = trace.shape
    # lambda-hat from devinterp's draws, burn-in dropped, SE from ESS: the same estimator llc uses.
    m_all = llc_metrics(trace[:, burn_steps:], init_loss, post.nbeta)
    # ... and thinned to the steps where llc evaluates L_n, for a like-for-like ESS count.
    m_thin = llc_metrics(trace[:, burn_steps + steps_bw - 1::steps_bw], init_loss, post.nbeta)
    total_steps = chains * steps
    result = {
        "devinterp_version": getattr(devinterp, "__version__", None) or _dist_version("devinterp"),
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "settings": {k: v for k, v in kwargs.items() if k != "loss_fn"},
        "equivalence_check": check,
        "wall_s": wall,
        "steps_total": total_steps,
        "steps_per_s": total_steps / wall,
        "init_loss": init_loss,
        "llc_devinterp_llc_mean": own_llc,
        "llc_devinterp_llc_std_over_chains": own_std,
        "llc_devinterp_llc_mean_note": "devinterp.compute_llc: mean over every step, burn-in included",
        "llc_mean": m_all["llc_mean"],
        "llc_se": m_all["llc_se"],
        "ess": m_all["ess"],
        "llc_mean_thinned": m_thin["llc_mean"],
        "llc_se_thinned": m_thin["llc_se"],
    }
    if ours is not None:
        result["ours"] = ours
        result["speedup_wall"] = wall / ours["wall_s"] if ours.get("wall_s") else None
        result["speedup_wall_incl_compile"] = wall / (ours["wall_s"] + ours["compile_s"])
        if ours.get("llc_se") and m_all["llc_se"]:
            diff = ours["llc_mean"] - m_all["llc_mean"]
            se = math.hypot(ours["llc_se"], m_all["llc_se"])
            result["llc_diff"] = diff
            result["llc_diff_z"] = diff / se
            result["agree_within_3se"] = abs(diff) <= 3 * se
    return result


def _dist_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _check_equivalence(model, target, post, X, Y, batch: int) -> dict[str, float]:
    """Loss at w* on all data, and the minibatch gradient on the first ``batch`` points, torch vs JAX."""
    import jax
    import jax.numpy as jnp
    import torch

    params32 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), target.params)
    x32, y32 = jnp.asarray(target.x, jnp.float32), jnp.asarray(target.y, jnp.float32)
    with torch.no_grad():
        t_loss = float((0.5 * ((Y - model(X)) ** 2).sum(-1)).mean())
    j_loss = float(post.loss_fn(params32, x32, y32))
    model.zero_grad()
    (0.5 * ((Y[:batch] - model(X[:batch])) ** 2).sum(-1)).mean().backward()
    t_grads = [p.grad.detach().numpy() for p in model.parameters()]
    g = jax.grad(post.loss_fn)(params32, x32[:batch], y32[:batch])
    j_grads = []
    for layer in g:  # torch order per Linear: weight (out, in), then bias
        j_grads.append(np.asarray(layer["W"]).T)
        if "b" in layer:
            j_grads.append(np.asarray(layer["b"]))
    model.zero_grad()
    num = math.sqrt(sum(float(np.sum((a - b) ** 2)) for a, b in zip(t_grads, j_grads)))
    den = math.sqrt(sum(float(np.sum(b**2)) for b in j_grads)) or 1.0
    return {"loss_torch": t_loss, "loss_jax": j_loss, "L0_float64": float(target.L0),
            "grad_rel_diff": num / den}
