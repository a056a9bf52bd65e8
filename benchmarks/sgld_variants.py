#!/usr/bin/env python
"""Where SGLD's time goes, and what a leaner step would gain: a profile of variants, side by side.

    python benchmarks/sgld_variants.py [--size quick|tiny] [--device-kind cpu|gpu] [--out JSON]

Variants (chains vmapped, one lax.scan; all timed round-robin, best of --repeats):
  raw_fixed        value_and_grad on contiguous minibatches (the limit, as in run.py)
  raw_gather       + random indices with replacement and a gather (what SGLD's batches cost)
  lean_step        + Gaussian noise drawn per leaf in the position's dtype and the SGLD update:
                   the least a plain SGLD step needs
  lean_step_rbg    the same with JAX's "unsafe_rbg" PRNG instead of threefry
  llc_step         llc.engine.samplers.sgld.build_step (BlackJAX sgld: ravel + float64-promoted noise,
                   state carries m and v even for plain SGLD)
  llc_run          llc.engine.samplers.sgld.run (adds the full-batch L_n every eval_every steps, chunks)
  lean_run_full    a patched run: lean_step + full-batch L_n every eval_every steps (same
                   estimator as llc_run), state = position only, state buffers donated
  lean_run_mb      a patched run: L_n estimated by the mean minibatch loss of the eval_every
                   steps before each draw (value_and_grad; no extra forward pass)

This is a measurement aid for the lead; nothing in llc uses it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--size", choices=("tiny", "quick"), default="quick")
    p.add_argument("--device-kind", choices=("cpu", "gpu"), default=None)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--artifacts", type=Path, default=None)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--draws", type=int, default=None, help="draws per chain (x eval_every steps)")
    args = p.parse_args(argv)
    if args.device_kind == "cpu":
        os.environ["JAX_PLATFORMS"] = "cpu"
    sys.path[:0] = [str(HERE), str(HERE.parent)]
    import tempfile

    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)
    import run as bench_run
    from benchlib import compile_program, memory_stats, minibatch_limit, sgld_step_limit

    from llc.config import build_config
    from llc.engine.posterior import cast, make_posterior
    from llc.engine.samplers import base, sgld
    from llc.engine.targets import get_target

    size = bench_run.SIZES[args.size]
    root = args.artifacts or Path(tempfile.mkdtemp(prefix="llc-bench-"))
    draws = args.draws or (200 if args.size == "quick" else 40)
    cfg = build_config(mapping={**size["target"], "sgld": {**size["sgld"], "draws": draws, "burnin": 0}})
    target = get_target(cfg, root)
    post = make_posterior(target.loss_fn, target.params, target.x, target.y, cfg.posterior, L0=target.L0)
    s = cfg.sgld
    p32 = cast(post, s.dtype)
    C, B, E = s.chains, s.batch_size, s.eval_every
    steps = draws * E
    n = p32.n

    # ------------------------------------------------------------------ lean programs
    from benchlib import lean_sgld_step

    def lean_step_fn(p):
        return lean_sgld_step(p, s.step_size, B)

    def lean_step_program(impl: str):
        def program(ws, keys, data):
            p = base.with_data(p32, data)
            step = lean_step_fn(p)

            def one(w, k):
                w, _ = jax.lax.scan(lambda w, k: (step(w, k)[0], None), w, jax.random.split(k, steps))
                return w

            return jax.vmap(one)(ws, keys)

        key = jax.random.key(1, impl=impl)
        args_ = (base.replicate(p32.w_star, C), jax.random.split(key, C), base.posterior_data(p32))
        return program, args_

    def lean_run(estimator: str):
        """Chunked like sgld.run; returns (compiled chunk, initial state, keys, size, data)."""
        total = draws
        size_ = base.chunk_size(total)
        data = base.posterior_data(p32)

        def chunk(ws, keys, chunk_index, data):
            p = base.with_data(p32, data)
            step = lean_step_fn(p)

            def one_draw(w, k):
                w, lbs = jax.lax.scan(step, w, jax.random.split(k, E))
                if estimator == "mb":
                    # Each minibatch loss is taken at w_t on a batch drawn independently of w_t,
                    # so it is unbiased for L_n(w_t); their mean over the draw is recorded.
                    return w, jnp.mean(lbs)
                return w, p.loss_fn(w, p.x, p.y)

            draw_keys = base.chunk_draw_keys(keys, chunk_index, size_)
            return jax.vmap(lambda w, k: jax.lax.scan(one_draw, w, k))(ws, draw_keys)

        ws = base.replicate(p32.w_star, C)
        keys = base.chain_keys(jax.random.key(2), C)
        t0 = time.perf_counter()
        compiled = jax.jit(chunk, donate_argnums=(0,)).lower(ws, keys, jnp.asarray(0, jnp.int32), data).compile()
        compile_s = time.perf_counter() - t0

        def go():
            w0 = base.replicate(p32.w_star, C)
            _, Ln, wall = base.run_chunks(compiled, w0, keys, total, size_, data, base.no_progress, "x")
            return wall, Ln

        return go, compile_s, memory_stats(compiled)

    # ------------------------------------------------------------------ measure round-robin
    results: dict[str, dict] = {}
    timers = {}

    def add_compiled(name, program, args_):
        compiled, cs = compile_program(program, *args_)
        base.block(compiled(*args_))
        results[name] = {"compile_s": cs, **memory_stats(compiled), "times": []}

        def t():
            t0 = time.perf_counter()
            base.block(compiled(*args_))
            return time.perf_counter() - t0

        timers[name] = t

    # Limit programs from benchlib (timed there once; re-timed here round-robin).
    for name, rb in (("raw_fixed", False), ("raw_gather", True)):
        r = minibatch_limit(p32, C, B, steps, random_batches=rb, repeats=1)
        results[name] = {"compile_s": r["compile_s"], "program_bytes": r["program_bytes"], "times": [r["min_s"]]}
    prog, a = lean_step_program("threefry2x32")
    add_compiled("lean_step", prog, a)
    prog, a = lean_step_program("unsafe_rbg")
    add_compiled("lean_step_rbg", prog, a)
    r = sgld_step_limit(p32, s, C, steps, repeats=1)
    results["llc_step"] = {"compile_s": r["compile_s"], "program_bytes": r["program_bytes"], "times": [r["min_s"]]}

    def llc_run():
        o = sgld.run(post, s, jax.random.key(3))
        results["llc_run"].setdefault("compile_s", o.work["compile_s"])
        return o.work["wall_s"]

    results["llc_run"] = {"times": []}
    for name, est in (("lean_run_full", "full"), ("lean_run_mb", "mb")):
        go, cs, mem = lean_run(est)
        go()
        results[name] = {"compile_s": cs, **mem, "times": []}
        timers[name] = (lambda g=go: g()[0])
    timers["llc_run"] = llc_run
    # raw limits re-timed through fresh compiles would cost compile time each round; they were
    # timed once above, and are re-run here through minibatch_limit's own best-of.
    for r_ in range(args.repeats):
        for name, t in timers.items():
            results[name]["times"].append(t())
        for name, rb in (("raw_fixed", False), ("raw_gather", True)):
            if r_ < 2:
                results[name]["times"].append(
                    minibatch_limit(p32, C, B, steps, random_batches=rb, repeats=1)["min_s"])

    grads = C * steps
    raw = grads / min(results["raw_fixed"]["times"])
    rows = {}
    for name, r in results.items():
        best = min(r["times"])
        rows[name] = {"grads_per_s": grads / best, "ratio_to_raw": raw / (grads / best), "best_s": best,
                      "all_s": r["times"], "compile_s": r.get("compile_s"), "program_bytes": r.get("program_bytes")}
    meta = {"backend": jax.default_backend(), "size": args.size, "d": target.d, "n": n, "chains": C, "batch": B,
            "eval_every": E, "steps_per_chain": steps, "repeats": args.repeats, "loadavg": list(os.getloadavg())}
    out = args.out or HERE / "results" / f"sgld_variants_{'gpu' if meta['backend'] != 'cpu' else 'cpu'}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    from benchlib import to_jsonable

    out.write_text(json.dumps(to_jsonable({"meta": meta, "variants": rows}), indent=2))
    print(f"{meta}")
    print(f"{'variant':16s} {'grads/s':>12s} {'x raw':>7s} {'best s':>8s} {'compile s':>9s} {'program MiB':>11s}")
    for name, r in rows.items():
        pb = r["program_bytes"]
        print(f"{name:16s} {r['grads_per_s']:12,.0f} {r['ratio_to_raw']:7.2f} {r['best_s']:8.3f} "
              f"{(r['compile_s'] or 0):9.2f} {('-' if pb is None else f'{pb / 2**20:.1f}'):>11s}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
