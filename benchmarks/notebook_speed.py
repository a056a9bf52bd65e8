"""What a researcher feels around the sampler: a repeated ``llc.estimate`` in one process, a fresh
``llc run`` with its target cached and a warm XLA cache, and devinterp doing the same SGLD work,
measured side by side in one invocation.

    python benchmarks/notebook_speed.py --out results/notebook_speed_h100.json

Steps (each timed as wall seconds):
1. ``llc run --preset full --samplers sgld`` in a fresh process: builds the target and fills the XLA
   cache (cold), then the same command with ``--no-skip`` in another fresh process (target cached,
   XLA warm), with its breakdown: interpreter + imports (``import llc.cli``), backend start
   (``jax.devices()``), compilation and sampling (the run's own compile_s / wall_s), and the rest
   (target load, writing NetCDF and records).
2. In this process: ``llc.estimate`` on the full target (SGLD, 4 chains x 1,000 draws x 10 steps, no
   burn-in) three times with the same loss function object, each with a new w* (w* + tiny noise).
3. devinterp's ``sample`` + ``compute_llc`` on the same target, settings and w* (torch on the host's
   CPU threads, as in ``benchmarks/devinterp_compare.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DRAWS, CHAINS, EVERY = 1000, 4, 10


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return wall, proc.stdout


def fresh_runs(preset: str, root: Path, env: dict[str, str]) -> dict:
    base = [sys.executable, "-m", "llc", "run", "--preset", preset, "--samplers", "sgld", "--figures", "none",
            "--json", "--artifacts", str(root)]
    cold, _ = timed(base, env)
    warm, out = timed(base + ["--no-skip"], env)
    record = json.loads(out)
    sgld = record["samplers"]["sgld"]
    imports, _ = timed([sys.executable, "-c", "import llc.cli"], env)
    backend, _ = timed([sys.executable, "-c", "import jax; jax.devices()"], env)
    jax_import, _ = timed([sys.executable, "-c", "import jax"], env)
    breakdown = {"interpreter_and_cli_imports_s": imports, "backend_start_s": backend - jax_import,
                 "compile_s": sgld["compile_s"], "sampling_s": sgld["wall_s"]}
    breakdown["rest_s"] = warm - sum(breakdown.values())  # JAX/ArviZ imports on the way, target load, writing
    return {"cold_run_s": cold, "fresh_run_s": warm, "breakdown": breakdown, "llc_mean": sgld["llc_mean"],
            "llc_se": sgld["llc_se"], "target": record["target"]}


def repeated_estimates(preset: str, root: Path) -> tuple[dict, object, object, object]:
    import jax

    import llc
    from llc.config import build_config
    from llc.engine.targets import get_target

    jax.config.update("jax_enable_x64", True)
    target = get_target(build_config(preset, ["samplers=sgld"]), root)

    def loss(params, batch):  # one object for every call: its programs are reused
        return target.loss_fn(params, *batch)

    rng = np.random.default_rng(0)
    calls = []
    for i in range(3):
        w = jax.tree.map(lambda a: np.asarray(a) + (1e-4 * rng.standard_normal(np.shape(a)) if i else 0.0),
                         target.params)
        t0 = time.perf_counter()
        est = llc.estimate(loss, w, target.x, target.y, sampler="sgld", seed=i,
                           sampler_config={"chains": CHAINS, "draws": DRAWS, "eval_every": EVERY, "burnin": 0})
        calls.append({"wall_s": time.perf_counter() - t0, "compile_s": est.metrics["compile_s"],
                      "sampling_s": est.metrics["wall_s"], "llc_mean": est.llc_mean, "llc_se": est.llc_se})
    from llc.config import SGLDConfig
    from llc.engine.posterior import make_posterior

    scfg = SGLDConfig(chains=CHAINS, draws=DRAWS, eval_every=EVERY, burnin=0, step_size=1e-4)  # one program, as devinterp's
    post = make_posterior(target.loss_fn, target.params, target.x, target.y, build_config(preset).posterior)
    return {"calls": calls}, target, post, scfg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--preset", default="full", help="the target (full: the issue's d = 9,997 MLP)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads for devinterp")
    args = ap.parse_args()
    sys.path.insert(0, str(HERE))
    with tempfile.TemporaryDirectory(prefix="llc-nb-") as tmp:
        root = Path(tmp) / "artifacts"
        env = {**os.environ, "LLC_JAX_CACHE": str(Path(tmp) / "xla"), "PYTHONUNBUFFERED": "1"}
        os.environ["LLC_JAX_CACHE"] = env["LLC_JAX_CACHE"]
        runs = fresh_runs(args.preset, root, env)
        print(json.dumps(runs, indent=1), flush=True)
        api, target, post, scfg = repeated_estimates(args.preset, root)
        print(json.dumps(api, indent=1), flush=True)
        import devinterp_compare

        ok, why = devinterp_compare.available()
        dev = devinterp_compare.run(target, post, scfg, threads=args.threads) if ok else {"error": why}
    second = api["calls"][1]["wall_s"]
    result = {"fresh_run": runs, "estimate": api, "devinterp": {k: dev.get(k) for k in
                                                                ("wall_s", "torch_threads", "llc_mean", "llc_se",
                                                                 "devinterp_version", "error")},
              "ratios": {"devinterp_over_second_estimate": dev["wall_s"] / second if "wall_s" in dev else None,
                         "devinterp_over_fresh_run": dev["wall_s"] / runs["fresh_run_s"] if "wall_s" in dev else None}}
    import jax

    result["device"] = str(jax.devices()[0].device_kind)
    text = json.dumps(result, indent=1, default=float)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
