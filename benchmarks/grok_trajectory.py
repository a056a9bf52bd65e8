"""Calibrate SGLD at the final checkpoint of a grokking preset, then run its whole LLC trajectory at
the recommended step size; prints timings and the lambda-hat curve beside train/test accuracy.

    python benchmarks/grok_trajectory.py --preset grok --grid 1e-7,3e-7,1e-6,3e-6,1e-5 [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="grok")
    ap.add_argument("--grid", default="1e-7,3e-7,1e-6,3e-6,1e-5", help="SGLD step sizes to calibrate")
    ap.add_argument("--gamma", type=float, default=100.0)
    ap.add_argument("--fallback", type=float, default=None, help="step size when no grid point is healthy")
    ap.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    ap.add_argument("--out", type=Path, default=None, help="copy summary JSON and figures here")
    args = ap.parse_args()

    import llc
    from llc.config import build_config
    from llc.pipeline.trajectory import run_trajectory

    t0 = time.perf_counter()
    cal = llc.calibrate(args.preset, [f"posterior.gamma={args.gamma}"], grid=[f"sgld.step_size={args.grid}"],
                        root=args.artifacts, skip=False)
    t_cal = time.perf_counter() - t0
    print(f"calibration ({t_cal:.1f} s, {cal['compile_s']:.1f} s compiling): {cal['recommended']['why']}")
    for r in cal["rows"]:
        print(f"  eps={r['sgld.step_size']:<8g} llc={r['llc_mean']:.4g} ± {r['llc_se']:.2g}  rhat={r['rhat']}  "
              f"mala={r['mala_acceptance']}  flags={r['flags']}")
    setting = (cal["recommended"]["setting"] or {}).get("sgld.step_size") or args.fallback
    if setting is None:
        raise SystemExit("no healthy step size on the grid; pass --fallback")
    cfg = build_config(args.preset, [f"sgld.step_size={setting}", f"posterior.gamma={args.gamma}"])
    t1 = time.perf_counter()
    traj = run_trajectory(cfg, args.artifacts, log=print)
    t_traj = time.perf_counter() - t1
    print(f"trajectory: {traj['checkpoints']} checkpoints x {cfg.sgld.chains} chains x {cfg.sgld.draws} draws at "
          f"eps={setting:g} in {t_traj:.1f} s ({traj['compile_s']:.1f} s compiling)")
    print(f"{'step':>7} {'llc':>10} {'se':>8} {'rhat':>6} {'train_acc':>9} {'test_acc':>8}")
    for r in traj["rows"]:
        print(f"{r['step']:>7} {r['llc_mean']:>10.4g} {r['llc_se']:>8.2g} {r['rhat']:>6.3f} "
              f"{r['train_acc']:>9.3f} {r['test_acc']:>8.3f}")
    if args.out:
        import shutil

        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "grok_summary.json").write_text(json.dumps({"calibration": cal, "trajectory": traj,
                                                                "calibrate_s": t_cal, "trajectory_s": t_traj},
                                                               indent=1, default=float))
        shutil.copy(Path(traj["artifacts"]) / "trajectory.png", args.out / "grok_trajectory.png")
        shutil.copy(Path(cal["artifacts"]) / "calibration.png", args.out / "grok_calibration.png")


if __name__ == "__main__":
    main()
