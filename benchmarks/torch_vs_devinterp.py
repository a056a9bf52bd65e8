#!/usr/bin/env python
"""One PyTorch model, one data set, two LLC estimates: llc (the module translated to JAX by
llc.bridges.torch) against devinterp (the module run by torch), SGLD with the same settings.

    python benchmarks/torch_vs_devinterp.py --model gpt --chains 4 --draws 200 [--out r.json]
    python benchmarks/torch_vs_devinterp.py --model mlp --n 1024 --width 64

Models: ``mlp`` (nn.Sequential regression, MSE) and ``gpt`` (a GPT-2-like module with token and
position embeddings, pre-LayerNorm causal attention, GELU MLP, cross-entropy over tokens), both
trained briefly in torch first so w* is near a minimum. Settings match step for step (see
benchmarks/devinterp_compare.py for the update rules): devinterp's ``lr`` = llc's step_size,
``n_beta`` = n*beta, ``localization`` = gamma, ``num_draws`` x ``num_steps_bw_draws`` = llc's
draws x eval_every, burn-in ``burnin x eval_every`` steps, same minibatch size.

What each side's time holds (end to end, one process, nothing compiled before):
  llc        llc.estimate: torch.export + translation, input checks, XLA compile (persistent XLA
             cache off unless --xla-cache), warm-up, sampling and the LLC metrics; then the same
             call again (export and programs reused in memory).
  devinterp  devinterp.slt.sampling.sample + compute_llc (its zarr output in a temporary folder).

Lambda-hat: llc records the full-batch L_n every eval_every steps after burn-in; devinterp records
the minibatch loss of every step. The JSON carries devinterp's own llc_mean (burn-in included) and
lambda-hat from its trace after burn-in with llc's estimator (SE from ESS), and the z-score of the
difference. On a GPU machine the JAX side uses the GPU JAX sees; ``--torch-device cuda`` moves
devinterp there too (default: cuda when torch sees it).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

os.environ.setdefault("TQDM_DISABLE", "1")  # progress bars would only add noise to the timing


def tiny_gpt(vocab: int, d: int, heads: int, T: int, layers: int):
    """A GPT-2-like module (as tests/test_torch_bridge.py's, without dropout): embeddings, pre-LayerNorm
    causal self-attention, GELU MLP, a linear head. No dropout: devinterp samples in train mode, llc
    in eval mode, and the two must score the same function."""
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
            self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
            self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
            self.register_buffer("causal", torch.tril(torch.ones(T, T, dtype=torch.bool)))

        def forward(self, x):
            B, L, C = x.shape
            q, k, v = self.qkv(self.ln1(x)).split(C, dim=2)
            q, k, v = (t.view(B, L, heads, C // heads).transpose(1, 2) for t in (q, k, v))
            att = (q @ k.transpose(-2, -1)) / math.sqrt(C // heads)
            att = att.masked_fill(~self.causal[:L, :L], float("-inf")).softmax(-1)
            x = x + self.proj((att @ v).transpose(1, 2).contiguous().view(B, L, C))
            return x + self.mlp(self.ln2(x))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte, self.wpe = nn.Embedding(vocab, d), nn.Embedding(T, d)
            self.blocks = nn.ModuleList([Block() for _ in range(layers)])
            self.ln, self.head = nn.LayerNorm(d), nn.Linear(d, vocab, bias=False)

        def forward(self, idx):
            x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device))
            for block in self.blocks:
                x = block(x)
            return self.head(self.ln(x))

    return GPT()


def build(args):
    """(module, x, y, loss name, devinterp dataset, devinterp per-token loss) on the CPU, trained."""
    import torch
    from torch import nn

    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    if args.model == "mlp":
        x = torch.randn(args.n, 4, generator=g)
        y = torch.tanh(x @ torch.randn(4, 2, generator=g)) + 0.1 * torch.randn(args.n, 2, generator=g)
        model = nn.Sequential(nn.Linear(4, args.width), nn.GELU(), nn.Linear(args.width, args.width), nn.Tanh(),
                              nn.Linear(args.width, 2))

        def train_loss(m):
            return 0.5 * ((y - m(x)) ** 2).sum(-1).mean()
    else:
        V, T = args.vocab, args.seq
        start = torch.randint(0, V, (args.n, 1), generator=g)
        step = torch.randint(1, 3, (args.n, 1), generator=g)
        seq = (start + step * torch.arange(T + 1)[None, :]) % V  # arithmetic sequences mod V
        x, y = seq[:, :-1], seq[:, 1:]
        model = tiny_gpt(V, args.width, 2, T, args.layers)

        def train_loss(m):
            return nn.functional.cross_entropy(m(x).reshape(-1, V), y.reshape(-1))
    # Trained where torch sees a GPU (a 10M-parameter GPT trains in seconds there, minutes on a CPU),
    # then handed to both sides on the CPU.
    where = "cuda" if torch.cuda.is_available() else "cpu"
    model, x, y = model.to(where), x.to(where), y.to(where)
    opt = torch.optim.Adam(model.parameters(), lr=args.train_lr)
    for _ in range(args.train_steps):
        opt.zero_grad()
        train_loss(model).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        final = float(train_loss(model))
    return model.cpu(), x.cpu(), y.cpu(), ("mse" if args.model == "mlp" else "cross_entropy"), final


def run_llc(model, x, y, loss, args):
    import llc
    from llc.api import NotAMinimumWarning

    config = {"chains": args.chains, "draws": args.draws, "burnin": args.burnin, "eval_every": args.eval_every,
              "batch_size": args.batch_size, "step_size": args.step_size}
    runs = []
    for _ in range(2):
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotAMinimumWarning)  # a briefly trained w*; the same for both
            est = llc.estimate(model, None, x, y, loss=loss, sampler="sgld", sampler_config=config, seed=args.seed)
        runs.append((time.perf_counter() - t0, est))
    (wall, est), (wall2, _) = runs
    import jax

    return est, {"wall_s": wall, "wall_s_second_call": wall2, "compile_s": est.metrics.get("compile_s"),
                 "sampling_s": est.metrics.get("sampling_s"), "llc_mean": est.llc_mean, "llc_se": est.llc_se,
                 "ess": est.metrics.get("ess"), "L0": est.L0, "nbeta": est.n * est.beta, "gamma": est.gamma,
                 "flags": est.flags, "step_size": est.metrics.get("step_size"), "jax_version": jax.__version__, "jax_backend": jax.default_backend()}


def run_devinterp(model, x, y, loss, est, args):
    import devinterp
    import torch
    from devinterp.slt.llc import compute_llc
    from devinterp.slt.sampling import sample

    from llc.analysis.diagnostics import llc_metrics

    device = args.torch_device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device)
    n = int(x.shape[0])
    if loss == "mse":
        # devinterp reads a dataset of input_ids and a per-token loss: each "sequence" [i, 0] indexes a
        # data point (devinterp wants seq >= 2), the per-"token" loss is 0.5 * ||y_i - f(x_i)||^2.
        X, Y = x.to(device), y.to(device)
        ids = torch.stack([torch.arange(n), torch.zeros(n, dtype=torch.long)], dim=1)

        def loss_fn(m, input_ids):
            idx = input_ids[:, 0]
            return 0.5 * ((Y[idx] - m(X[idx])) ** 2).sum(dim=-1, keepdim=True)
    else:
        ids = torch.cat([x, y[:, -1:]], dim=1)  # the sequence: inputs then the last target token

        def loss_fn(m, input_ids):
            logits = m(input_ids[:, :-1])
            return torch.nn.functional.cross_entropy(logits.transpose(1, 2), input_ids[:, 1:], reduction="none")

    class Dataset:
        def __len__(self):
            return n

        def __getitem__(self, i):
            return {"input_ids": ids[i]}

    steps_bw = args.eval_every
    burn_steps = args.burnin * steps_bw
    step = est.metrics["step_size"] if args.step_size == "auto" else args.step_size
    kwargs = dict(lr=step, n_beta=float(est.n * est.beta), num_chains=args.chains, num_draws=args.draws,
                  batch_size=args.batch_size, num_burnin_steps=burn_steps, num_steps_bw_draws=steps_bw,
                  num_init_loss_batches=max(1, n // args.batch_size), localization=float(est.gamma),
                  init_seed=100 + args.seed, device=device, loss_fn=loss_fn)
    with tempfile.TemporaryDirectory(prefix="llc-torch-vs-devinterp-") as tmp:
        t0 = time.perf_counter()
        samples = sample(model, Dataset(), {}, output_path=str(Path(tmp) / "samples.zarr"), **kwargs)
        llc_ds = compute_llc(samples)
        wall = time.perf_counter() - t0
        ds = samples.dataset
        trace = np.asarray(ds.sampling_loss_micro.values, dtype=np.float64)
        trace = trace.reshape(trace.shape[0], trace.shape[1], -1).mean(axis=2)  # (chains, steps)
        init_loss = float(np.asarray(ds.init_loss.values, dtype=np.float64).mean())
        own = float(llc_ds.llc_mean.values)
    kept = llc_metrics(trace[:, burn_steps:], init_loss, est.n * est.beta)
    return {"wall_s": wall, "device": device, "torch_threads": torch.get_num_threads(),
            "devinterp_version": getattr(devinterp, "__version__", None), "torch_version": torch.__version__,
            "init_loss": init_loss, "llc_mean_devinterp_own": own, "llc_mean": kept["llc_mean"],
            "llc_se": kept["llc_se"], "ess": kept["ess"], "steps_recorded": int(trace.shape[1]),
            "settings": {k: v for k, v in kwargs.items() if k != "loss_fn"}}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=("mlp", "gpt"), default="gpt")
    ap.add_argument("--n", type=int, default=256, help="examples (sequences for gpt)")
    ap.add_argument("--width", type=int, default=16, help="hidden width (gpt: embedding size)")
    ap.add_argument("--layers", type=int, default=1, help="gpt blocks")
    ap.add_argument("--vocab", type=int, default=11)
    ap.add_argument("--seq", type=int, default=8)
    ap.add_argument("--chains", type=int, default=4)
    ap.add_argument("--draws", type=int, default=200, help="recorded draws per chain (each eval_every steps)")
    ap.add_argument("--burnin", type=int, default=20, help="burn-in draws (x eval_every steps)")
    ap.add_argument("--eval-every", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--step-size", type=lambda v: v if v == "auto" else float(v), default=1e-4,
                    help="SGLD's step (or auto: llc's calibrated choice, which devinterp then uses too)")
    ap.add_argument("--train-steps", type=int, default=300)
    ap.add_argument("--train-lr", type=float, default=1e-2)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: torch's own; on a shared CPU use 1: on the 2-core dev box, "
                         "loaded by other jobs, devinterp took 410 s with 2 threads, 17 s with 1)")
    ap.add_argument("--torch-device", default=None, help="devinterp's device (default: cuda if available)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-devinterp", action="store_true")
    ap.add_argument("--xla-cache", action="store_true",
                    help="keep llc's persistent XLA cache (default off: the first call compiles from nothing)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    if not args.xla_cache:
        os.environ["LLC_JAX_CACHE"] = "off"  # before llc enables it: a cold first call, as devinterp's
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    model, x, y, loss, train_loss = build(args)
    d = sum(p.numel() for p in model.parameters())
    est, ours = run_llc(model, x, y, loss, args)
    result = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
              "d": d, "train_loss": train_loss, "llc": ours}
    try:
        import devinterp  # noqa: F401
    except ImportError as exc:  # a GPU machine without the bench extra still measures llc's side
        result["devinterp"] = {"error": f"not importable ({exc}); pip install -e '.[bench]'"}
        args.skip_devinterp = True
    if not args.skip_devinterp:
        theirs = run_devinterp(model, x, y, loss, est, args)
        result["devinterp"] = theirs
        result["speedup_end_to_end"] = theirs["wall_s"] / ours["wall_s"]
        result["speedup_second_call"] = theirs["wall_s"] / ours["wall_s_second_call"]
        if ours["llc_se"] and theirs["llc_se"]:
            se = math.hypot(ours["llc_se"], theirs["llc_se"])
            result["llc_diff_z"] = (ours["llc_mean"] - theirs["llc_mean"]) / se
    text = json.dumps(result, indent=2, default=float)
    print(text)
    if args.out:
        args.out.write_text(text)
    return result


if __name__ == "__main__":
    main()
