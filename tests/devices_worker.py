"""Run by tests/test_devices.py in a process with 4 forced host devices (XLA_FLAGS, set before JAX
starts): ``python devices_worker.py ROOT CASE...`` runs each case (a plain run, a calibration, a
trajectory, data-sharded estimates) on 1 device and on 4 and prints one JSON object of what each
case measured; the test judges it."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(sys.argv[1])
QUADRATIC = ["target.kind=quadratic", "target.quadratic.dim=4", "figures=none", "sgld.chains=4", "sgld.draws=100",
             "hmc.chains=4", "hmc.draws=100", "hmc.warmup=100"]


def on(devices: int, data: int = 1) -> str:
    os.environ["LLC_DEVICES"], os.environ["LLC_DATA_SHARDS"] = str(devices), str(data)
    return f"d{devices}x{data}"


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-12)))


def plain_run(samplers: str = "sgld") -> dict:
    """``llc run``'s library road: SGLD (step_size=auto: a batch of 4 grid points), and more samplers."""
    from llc.config import build_config
    from llc.pipeline.experiment import run_experiment

    cfg = build_config(None, [f"samplers={samplers}", *QUADRATIC])
    out, header = {}, []
    for n in (1, 4):
        rec = run_experiment(cfg, ROOT / on(n), log=header.append)
        manifest = json.loads((Path(rec["artifacts"]) / "manifest.json").read_text())
        out[n] = {"devices": rec["devices"], "manifest": manifest["devices"],
                  "llc": {s: rec["samplers"][s]["llc_mean"] for s in rec["samplers"]}}
    return {"devices": [out[1]["devices"], out[4]["devices"]], "manifest": [out[1]["manifest"], out[4]["manifest"]],
            "header": [h for h in header if "backend" in h],
            "rel": {s: rel(out[4]["llc"][s], out[1]["llc"][s]) for s in out[1]["llc"]}}


def calibration() -> dict:
    """Five step sizes x 2 chains: two setting shards, padded to six."""
    from llc.config import build_config
    from llc.pipeline import calibrate as cal

    p = cal.plan(build_config(None, [*QUADRATIC, "sgld.chains=2"]), "sgld",
                 ["sgld.step_size=1e-4,3e-4,1e-3,3e-3,1e-2"])
    runs = {n: cal.calibrate(p, ROOT / on(n)) for n in (1, 4)}
    return {"devices": [runs[1]["devices"], runs[4]["devices"]],
            "rel": rel([r["llc_mean"] for r in runs[4]["rows"]], [r["llc_mean"] for r in runs[1]["rows"]])}


def _net():
    import jax.numpy as jnp

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 3)).astype(np.float32)
    y = np.tanh(x @ rng.normal(size=(3, 1))).astype(np.float32)

    def loss(params, batch):
        xb, yb = batch
        return 0.5 * jnp.mean((yb - jnp.tanh(xb @ params["a"]) @ params["b"]) ** 2)

    params = {"a": rng.normal(size=(3, 4)).astype(np.float32) * 0.5,
              "b": rng.normal(size=(4, 1)).astype(np.float32) * 0.5}
    return loss, params, x, y


def trajectory() -> dict:
    """Three checkpoints x 2 chains (``llc.trajectory``): padded to four settings."""
    import llc

    loss, params, x, y = _net()
    ckpts = [{k: v * s for k, v in params.items()} for s in (0.5, 0.8, 1.0)]
    cfg = {"draws": 40, "burnin": 5, "chains": 2, "batch_size": 16, "step_size": 1e-3}
    runs = {n: llc.trajectory(loss, ckpts, (x, y), sampler_config=cfg, out=ROOT / on(n) / "traj") for n in (1, 4)}
    return {"devices": [runs[1]["devices"], runs[4]["devices"]], "rel": rel(runs[4].llc_mean, runs[1].llc_mean)}


def plain_run_hmc() -> dict:
    return plain_run("sgld,hmc")


def data_shards(splits=((4, 4),), samplers=("hmc",)) -> dict:
    """``llc.estimate`` with the rows of x, y split over devices: the full-batch gradient (HMC) and
    minibatches gathered across devices (SGLD)."""
    import warnings

    import llc

    warnings.simplefilter("ignore", llc.NotAMinimumWarning)  # w* is any point here
    loss, params, x, y = _net()
    out = {}
    configs = {"hmc": {"draws": 30, "warmup": 20, "chains": 2},
               "sgld": {"draws": 40, "chains": 2, "batch_size": 16, "step_size": 1e-3}}
    for sampler in samplers:
        cfg = configs[sampler]
        on(1)
        one = llc.estimate(loss, params, x, y, sampler=sampler, sampler_config=cfg).output
        for devices, data in splits:
            on(devices, data)
            split = llc.estimate(loss, params, x, y, sampler=sampler, sampler_config=cfg).output
            out[f"{sampler}_{devices}x{data}"] = {"Ln": rel(split.Ln, one.Ln), "theta": float(
                np.max(np.abs(split.theta_proj - one.theta_proj)))}
    return out


def data_shards_all() -> dict:
    return data_shards(((4, 4), (4, 2)), ("hmc", "sgld"))


if __name__ == "__main__":
    import jax

    result = {"devices": len(jax.devices())}
    for case in sys.argv[2:]:
        result[case] = globals()[case]()
    print(json.dumps(result))
