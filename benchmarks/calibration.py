"""Calibration and batched sweeps, timed side by side in one run (whole processes, as a user sees them).

    python benchmarks/calibration.py [--preset full] [--draws 2000] [--out results/calibration_<host>.json]

On one target (trained once, then cached) it times, each as a fresh ``llc`` process:
  1. ``llc run`` of SGLD alone at the base setting (the unit of comparison),
  2. ``llc calibrate`` over a 4 epsilon x 4 gamma grid (one batched program),
  3. ``llc sweep`` over the same 16 points (batched automatically), and with ``--no-batch``,
and prints the ratios: calibrate / run, and the sweep's summed per-run sampling seconds over its
wall time. Each process starts with an empty XLA cache directory, so compile time is included;
calibrate and the batched sweep are then run once more on other step sizes (same shapes) with the
cache their first process left: the "warm" figures, a researcher's second grid on the same target.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
STEPS = (3e-5, 1e-4, 3e-4, 1e-3)
GAMMAS = (50.0, 100.0, 200.0, 400.0)


def llc(args: list[str], env: dict[str, str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "llc", *args], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        sys.exit(f"llc {' '.join(args)} failed:\n{out.stderr[-3000:]}")
    return wall, out.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="full")
    ap.add_argument("--draws", type=int, default=2000)
    ap.add_argument("--chains", type=int, default=4)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="llc-calbench-"))
    env = dict(os.environ, LLC_ARTIFACTS=str(work / "art"), PYTHONUNBUFFERED="1")
    common = ["--preset", args.preset, "--set", f"sgld.draws={args.draws}", "--set", f"sgld.chains={args.chains}"]

    def fresh_cache() -> dict[str, str]:
        d = work / f"xla-{time.monotonic_ns()}"
        return dict(env, LLC_JAX_CACHE=str(d))

    # The target is trained once and cached (the timings assume a cached target).
    llc(["run", *common, "--samplers", "sgld", "--set", "sgld.draws=10", "--no-save-plots"], fresh_cache())
    run_wall, run_out = llc(["run", *common, "--samplers", "sgld", "--no-save-plots", "--json"], fresh_cache())
    run_rec = json.loads(run_out)
    def grid(scale: float) -> list[str]:
        return ["--grid", "sgld.step_size=" + ",".join(f"{e * scale:.3g}" for e in STEPS),
                "--grid", "posterior.gamma=" + ",".join(map(str, GAMMAS))]

    cal_env = fresh_cache()
    cal_wall, cal_out = llc(["calibrate", *common, *grid(1.0), "--json", "--no-skip"], cal_env)
    cal = json.loads(cal_out)
    cal_warm_wall, cal_warm_out = llc(["calibrate", *common, *grid(1.5), "--json", "--no-skip"], cal_env)
    space = work / "space.toml"
    space.write_text(f'samplers = ["sgld"]\npreset = "{args.preset}"\n[base]\nsave_plots = false\n'
                     f'"sgld.draws" = {args.draws}\n"sgld.chains" = {args.chains}\n[[grid]]\nname = "eps_gamma"\n'
                     f'"sgld.step_size" = {list(STEPS)}\n"posterior.gamma" = {list(GAMMAS)}\n')
    sweeps = {}
    sweep_env = fresh_cache()
    for label, extra, env_ in (("batched", [], sweep_env), ("unbatched", ["--no-batch"], fresh_cache()),
                               ("batched_warm", ["--set", "seed=1"], sweep_env)):
        csv_path = work / f"sweep_{label}.csv"
        wall, _ = llc(["sweep", "--space", str(space), "--out", str(csv_path), "--artifacts", str(work / f"art_{label}"),
                       *extra], env_)
        with csv_path.open() as fh:
            rows = list(csv.DictReader(fh))
        sampling = sum(float(r["sampling_s"]) for r in rows if r.get("sampling_s"))
        sweeps[label] = {"wall_s": wall, "runs": len(rows), "sum_sampling_s": sampling,
                         "sampling_fraction": sampling / wall}
    result = {
        "host": platform.node(), "preset": args.preset, "draws": args.draws, "chains": args.chains,
        "points": len(STEPS) * len(GAMMAS),
        "run_sgld_wall_s": run_wall, "run_sgld_compile_s": run_rec["samplers"]["sgld"]["compile_s"],
        "calibrate_wall_s": cal_wall, "calibrate_sampling_s": cal["sampling_s"], "calibrate_compile_s": cal["compile_s"],
        "calibrate_over_run": cal_wall / run_wall,
        "calibrate_warm_wall_s": cal_warm_wall, "calibrate_warm_compile_s": json.loads(cal_warm_out)["compile_s"],
        "recommended": cal["recommended"], "sweeps": sweeps,
    }
    print(json.dumps(result, indent=2))
    print(f"\nllc run (SGLD) {run_wall:.1f} s | llc calibrate, 16 points {cal_wall:.1f} s "
          f"({cal_wall / run_wall:.2f}x one run; warm cache {cal_warm_wall:.1f} s) | sweep batched "
          f"{sweeps['batched']['wall_s']:.1f} s (sampling {100 * sweeps['batched']['sampling_fraction']:.0f}% of wall; "
          f"warm cache {sweeps['batched_warm']['wall_s']:.1f} s) | unbatched {sweeps['unbatched']['wall_s']:.1f} s")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
