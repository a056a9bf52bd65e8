"""Cold start of ``llc run --preset quick`` end to end, as a new user sees it (whole processes).

    python benchmarks/cold_start.py [--preset quick] [--repeats 2] [--variant NAME:VAR=VALUE[;VAR=VALUE] ...]
                                    [--out results/cold_start_<host>.json]

Each repetition is a fresh ``llc run --figures none --json`` process with an empty XLA cache and an
empty artifacts directory (so the target is trained too), followed by the same command again with
the cache that process left ("warm": a second run, say with another seed, on the same shapes).
Beside it, the floor every run pays: a process that only imports JAX and initialises the device.
The breakdown of a cold run comes from its own records: per-sampler ``compile_s`` and ``wall_s``
from ``--json`` and its log (kept whole in the JSON). ``--variant`` times the same with other
environment variables, e.g. ``serial:LLC_COMPILE_THREADS=0`` or ``notriton:XLA_FLAGS=--xla_gpu_enable_triton_gemm=false``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    return wall, out


def seconds_into(log: str, pattern: str) -> float | None:
    """Seconds from the log's first timestamp (HH:MM:SS) to the first line matching ``pattern``."""
    stamps = [(line, re.match(r"(\d\d):(\d\d):(\d\d) ", line)) for line in log.splitlines()]
    stamps = [(line, int(m[1]) * 3600 + int(m[2]) * 60 + int(m[3])) for line, m in stamps if m]
    hits = [t for line, t in stamps if re.search(pattern, line)]
    return float(hits[0] - stamps[0][1]) if hits else None


def one_run(preset: str, work: Path, env: dict[str, str], label: str) -> dict:
    art = work / f"art-{label}"
    cache_dir = work / f"xla-{label}"
    env = dict(env, LLC_JAX_CACHE=str(cache_dir), PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "llc", "run", "--preset", preset, "--figures", "none", "--json",
           "--artifacts", str(art)]
    cold, out = timed(cmd, env)
    rec = json.loads(out.stdout)
    shutil.rmtree(art)  # the target too: the warm run retrains it, only the XLA cache is kept
    warm, _ = timed(cmd, env)
    samplers = {name: {"compile_s": s["compile_s"], "wall_s": s["wall_s"]} for name, s in rec["samplers"].items()}
    return {"cold_s": cold, "warm_xla_cache_s": warm, "samplers": samplers,
            "target_ready_after_first_log_line_s": seconds_into(out.stderr, r"target tgt_"),
            "log": out.stderr.splitlines()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--variant", action="append", default=[],
                    help="NAME:VAR=VALUE[;VAR=VALUE]: also time with these environment variables (repeatable)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="llc-coldstart-"))
    base_env = dict(os.environ)
    variants: dict[str, dict[str, str]] = {"default": {}}
    for v in args.variant:
        name, _, assignments = v.partition(":")
        variants[name] = dict(a.split("=", 1) for a in assignments.split(";") if a)

    # Once untimed: a fresh machine's first import writes the bytecode (.pyc) of every module, which
    # an installed package already has (pip compiles it; the device tool's wheels skip that step).
    import_cmd = [sys.executable, "-c", "import llc.cli, llc.pipeline.experiment, blackjax, arviz"]
    timed(import_cmd, base_env)
    floor, _ = timed([sys.executable, "-c", "import jax, jax.numpy as jnp; jnp.ones(1).block_until_ready()"], base_env)
    imports, _ = timed(import_cmd, base_env)
    results = {"host": platform.node(), "preset": args.preset, "jax_import_and_device_s": floor,
               "llc_imports_s": imports, "variants": {}}
    print(f"import jax + first device op: {floor:.1f} s; import llc, blackjax, arviz: {imports:.1f} s")
    for name, extra in variants.items():
        runs = [one_run(args.preset, work, dict(base_env, **extra), f"{name}-{r}") for r in range(args.repeats)]
        results["variants"][name] = {"environment": extra, "runs": runs}
        for r in runs:
            per = ", ".join(f"{k} compile {v['compile_s']:.1f} / run {v['wall_s']:.1f}" for k, v in r["samplers"].items())
            print(f"[{name}] cold {r['cold_s']:.1f} s (target ready {r['target_ready_after_first_log_line_s']} s "
                  f"after the first log line; {per}); "
                  f"second process, warm XLA cache: {r['warm_xla_cache_s']:.1f} s")
    shutil.rmtree(work, ignore_errors=True)
    out = args.out or Path(__file__).parent / "results" / f"cold_start_{platform.node()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
