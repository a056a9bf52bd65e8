"""llc trajectory: lambda-hat per checkpoint, batched; resumes; never retrains; the API on a user's run."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from typer.testing import CliRunner

import llc
from llc.analysis.flags import split_flags
from llc.cli import app
from llc.config import build_config
from llc.engine.autostep import FACTORS
from llc.pipeline import trajectory as T

runner = CliRunner()
# grok-tiny, smaller: fewer steps and checkpoints, a short chain (CI version of the preset).
SMALL = ["training.steps=300", "training.checkpoints_log=4", "training.checkpoints_linear=3", "sgld.draws=40",
         "sgld.burnin=10", "sgld.eval_every=4", "sgld.chains=2"]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("traj")
    cfg = build_config("grok-tiny", SMALL)
    return root, cfg, T.run_trajectory(cfg, root, max_batch=4)


def test_every_checkpoint_has_lambda_hat_and_curvature(first_run):
    root, cfg, summary = first_run
    rows = summary["rows"]
    assert summary["checkpoints"] == len(rows) >= 6 and summary["computed"] == len(rows)
    assert [r["step"] for r in rows] == sorted(r["step"] for r in rows) and rows[0]["step"] == 0
    for r in rows:
        assert np.isfinite(r["llc_mean"]) and r["llc_se"] > 0
        assert r["hessian_trace_se"] >= 0 and r["fisher_trace"] >= 0 and r["weight_norm"] > 0
        assert 0.0 <= r["train_acc"] <= 1.0 and 0.0 <= r["test_acc"] <= 1.0
        # step_size=auto (the preset's default), chosen per checkpoint, with the rule's reason
        assert r["step_size"] > 0 and "sgld.step_size=auto" in r["step_size_rule"]
    assert len({r["step_size"] for r in rows}) > 1  # the curvature, so the step, changes over training
    out = summary["artifacts"]
    with open(f"{out}/trajectory.csv", newline="") as fh:
        header = next(csv.reader(fh))
    for col in ("step", "llc_mean", "llc_se", "rhat", "ess", "train_loss", "test_loss", "train_acc", "test_acc",
                "grad_norm", "hessian_trace", "fisher_trace", "weight_norm", "flags", "step_size", "step_size_rule",
                *T.PROBE_COLUMNS, "wnorm_hidden_0", "wnorm_out"):
        assert col in header
    for r in rows[1:]:  # recorded in training (Adam's dynamics: none before the first step)
        assert all(np.isfinite(r[c]) for c in T.PROBE_COLUMNS), r
    import xarray as xr

    ds = xr.open_dataset(f"{out}/trajectory.nc", engine="h5netcdf")
    assert ds["llc"].dims == ("step", "chain", "draw") and ds.sizes["step"] == len(rows)
    assert ds["step_size"].values.tolist() == [r["step_size"] for r in rows]


def test_other_epsilon_trains_nothing_and_interrupted_runs_resume(first_run, monkeypatch):
    root, cfg, summary = first_run
    from llc.engine import driver
    from llc.engine import targets

    def no_training(*a, **k):
        raise AssertionError("the target was trained again")

    monkeypatch.setattr(targets, "build_target", no_training)
    other = build_config("grok-tiny", SMALL + ["sgld.step_size=5e-5"])
    calls = {"n": 0}
    real = driver.run_batch

    def dies_on_second_batch(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # killed halfway
        return real(*a, **k)

    monkeypatch.setattr(driver, "run_batch", dies_on_second_batch)
    with pytest.raises(KeyboardInterrupt):
        T.run_trajectory(other, root, max_batch=3)
    monkeypatch.setattr(driver, "run_batch", real)
    resumed = T.run_trajectory(other, root, max_batch=3)
    assert resumed["computed"] == summary["checkpoints"] - 3  # only the missing checkpoints
    assert resumed["checkpoints"] == summary["checkpoints"]
    again = T.run_trajectory(other, root, max_batch=3)
    assert again["computed"] == 0


def test_damaged_points_and_leftovers_are_recomputed_and_removed(first_run):
    """Before: a truncated or bit-flipped points/*.npz raised a 134-line BadZipFile on every rerun,
    and a writer killed mid-write left points/.step_*.npz.tmp-<pid> forever."""
    from llc.store import cache

    root, cfg, summary = first_run
    out_dir = Path(summary["artifacts"])
    points = sorted((out_dir / "points").glob("step_*.npz"))
    truncated, flipped = points[0], points[-1]
    truncated.write_bytes(truncated.read_bytes()[:100])
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0xFF
    flipped.write_bytes(bytes(data))
    leftover = out_dir / "points" / f".{points[1].name}.tmp-999999999-abcdef@{cache.HOST}"  # no such pid
    leftover.write_bytes(b"half a file")
    lines: list[str] = []
    again = T.run_trajectory(cfg, root, max_batch=4, log=lines.append)
    assert again["computed"] == 2
    assert sum("is damaged" in line for line in lines) == 2
    assert not leftover.exists()
    by_step = {r["step"]: r for r in summary["rows"]}
    for row in again["rows"]:  # the same random stream: the recomputed points are the ones lost
        # to float32 rounding: the recomputed batch is narrower (2 checkpoints x the auto grid, not 4 x),
        # and XLA's CPU kernels may order a vmapped reduction differently by width
        assert row["llc_mean"] == pytest.approx(by_step[row["step"]]["llc_mean"], rel=1e-6)


def test_batched_checkpoints_equal_single_ones(first_run, tmp_path):
    """A checkpoint's lambda-hat does not depend on the batch it ran in."""
    root, cfg, summary = first_run
    from llc.engine.targets import get_target, load_checkpoints

    target = get_target(cfg, root)
    ck = load_checkpoints(target)
    k = len(ck.steps) - 1
    data = T.Checkpointed(target.loss_fn, ck.steps[k:], ck.params[k:], target.x, target.y, {})
    alone = T.compute(data, tmp_path / "alone", sampler_cfg=cfg.sgld, posterior_cfg=cfg.posterior, seed=cfg.seed)
    assert alone["rows"][0]["llc_mean"] == pytest.approx(summary["rows"][k]["llc_mean"], rel=1e-5)


def test_batches_fit_in_memory_counting_every_grid_point(first_run, tmp_path, monkeypatch):
    """Before: a trajectory batched max_batch checkpoints whatever their size, and the grok preset's
    16 checkpoints x 4 grid points x 4 chains asked an H100 for 74.7 GiB. Now a batch holds the
    checkpoints whose chains (every auto grid point's) fit in memory."""
    root, cfg, summary = first_run
    from llc.engine.posterior import make_posterior
    from llc.engine.targets import get_target, load_checkpoints
    from llc.pipeline import resources

    target = get_target(cfg, root)
    ck = load_checkpoints(target)
    post = make_posterior(target.loss_fn, ck.params[0], target.x, target.y, cfg.posterior)
    monkeypatch.setattr(resources, "available_device_memory", lambda: 10**12)
    per_auto = resources.BATCH_MEMORY_FRACTION * 10**12 / T._units_that_fit(post, cfg.sgld, auto=True)
    per_fixed = resources.BATCH_MEMORY_FRACTION * 10**12 / T._units_that_fit(post, cfg.sgld, auto=False)
    # every grid point's chains counted (XLA's temporaries are not exactly linear in the batch width)
    assert 0.85 * len(FACTORS) * per_fixed < per_auto <= len(FACTORS) * per_fixed * 1.01
    monkeypatch.setattr(resources, "available_device_memory", lambda: int(5 * per_auto))  # 2.5 units fit
    data = T.Checkpointed(target.loss_fn, ck.steps[:4], ck.params[:4], target.x, target.y, {})
    lines = []
    T.compute(data, tmp_path / "capped", sampler_cfg=cfg.sgld, posterior_cfg=cfg.posterior, seed=cfg.seed,
              max_batch=16, log=lines.append)
    assert "trajectory: 2 checkpoints per batched program fit in memory (max_batch 16)" in lines
    assert [ln for ln in lines if ln.endswith("done")] == ["trajectory: checkpoints 1-2 of 4 done",
                                                           "trajectory: checkpoints 3-4 of 4 done"]


def test_cli_trajectory(first_run):
    root, cfg, summary = first_run
    args = ["trajectory", "--preset", "grok-tiny", "--artifacts", str(root), "--max-batch", "4", "--json"]
    for o in SMALL:
        args += ["--set", o]
    out = runner.invoke(app, args)
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout.strip().splitlines()[-1])["computed"] == 0  # cached points
    bad = runner.invoke(app, ["trajectory", "--preset", "grok-tiny", "--sampler", "vi", "--artifacts", str(root)])
    assert bad.exit_code == 2 and "--sampler" in bad.output


def test_help_lists_every_preset():
    """Before: ``llc run --help`` said "(quick, full)"."""
    from llc.config import preset_names

    out = runner.invoke(app, ["run", "--help"], env={"COLUMNS": "300"})
    assert all(name in out.output for name in preset_names()) and "grok-tiny" in preset_names()


@pytest.mark.parametrize("args, message", [
    (["--preset", "quick"], "training.checkpoints_linear: a trajectory needs checkpoints and this config takes none"),
    (["--set", "target.kind=quadratic"], "target.kind: quadratic targets are not trained"),
    (["--preset", "quick", "--set", "training.checkpoints_linear=5", "--axis", "training.checkpoints_linear=4,0"],
     "training.checkpoints_linear: a trajectory needs checkpoints"),
])
def test_no_checkpoints_is_one_line_before_training(tmp_path, monkeypatch, args, message):
    """Before: ``llc trajectory --preset quick`` trained the target, then failed with exit 1."""
    import llc.engine.targets as targets

    monkeypatch.setattr(targets, "build_target", lambda *a, **k: pytest.fail("the target was built"))
    out = runner.invoke(app, ["trajectory", *args, "--artifacts", str(tmp_path)])
    assert out.exit_code == 2, out.output
    assert message in out.output and len(out.output.strip().splitlines()) == 1, out.output


def test_api_on_a_users_own_checkpoints(tmp_path):
    """llc.trajectory on plain pytrees and on a directory of .npz checkpoints gives the same numbers."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 3)).astype(np.float32)
    y = (x @ np.array([1.0, -2.0, 0.5], np.float32))[:, None]

    def loss(params, batch):
        xb, yb = batch
        return 0.5 * jnp.mean((yb - xb @ params["w"]["kernel"]) ** 2)

    ckpts = [{"w": {"kernel": np.full((3, 1), s, np.float32)}} for s in (0.0, 0.5)]
    ckpts.append({"w": {"kernel": np.array([[1.0], [-2.0], [0.5]], np.float32)}})
    cfg = {"draws": 30, "burnin": 5, "eval_every": 4, "chains": 2, "batch_size": 64}
    a = llc.trajectory(loss, ckpts, (x, y), steps=[0, 10, 100], sampler_config=cfg, out=tmp_path / "a")
    (tmp_path / "ckpts").mkdir()
    for step, p in zip((0, 10, 100), ckpts):
        np.savez(tmp_path / "ckpts" / f"ckpt_{step}.npz", **{"w/kernel": p["w"]["kernel"]})
    b = llc.trajectory(loss, tmp_path / "ckpts", (x, y), sampler_config=cfg, out=tmp_path / "b")
    assert [r["step"] for r in b["rows"]] == [0, 10, 100]
    # An object like llc.estimate's, its summary still readable as before (b["rows"]).
    assert isinstance(b, llc.Trajectory) and b.steps == [0, 10, 100] and b.artifacts == tmp_path / "b"
    assert b.llc_mean == [r["llc_mean"] for r in b["rows"]] and b.llc_se == list(b.table["llc_se"])
    assert b.flags == [split_flags(r["flags"]) for r in b["rows"]]  # messages may hold "; "
    # No train_loss given: it is L0, the loss at each checkpoint on the data (was an empty column).
    saved = list(csv.DictReader(open(tmp_path / "b" / "trajectory.csv")))
    assert [float(r["train_loss"]) for r in saved] == [float(r["L0"]) for r in saved]
    assert list(b.table["train_loss"]) == list(b.table["L0"])
    for ra, rb in zip(a["rows"], b["rows"]):
        assert ra["llc_mean"] == pytest.approx(rb["llc_mean"], rel=1e-6)
    # At the true solution the gradient vanishes; far from it, it does not.
    assert b["rows"][-1]["grad_norm"] < 1e-3 < b["rows"][0]["grad_norm"]


def test_trajectories_over_training_settings_are_overlaid(first_run):
    root, cfg, summary = first_run
    out = runner.invoke(app, ["trajectory", "--preset", "grok-tiny", "--artifacts", str(root), "--max-batch", "4",
                              "--axis", "training.weight_decay=0.5,1.0", "--json", *sum((["--set", o] for o in SMALL), [])])
    assert out.exit_code == 0, out.output
    overlay = json.loads(out.stdout.strip().splitlines()[-1])
    assert [m["setting"]["training.weight_decay"] for m in overlay["members"]] == [0.5, 1.0]
    assert overlay["members"][1]["artifacts"] == summary["artifacts"]  # weight decay 1.0 is the preset's: reused
    import pandas as pd

    table = pd.read_csv(f"{overlay['artifacts']}/overlay.csv")
    assert set(table["training.weight_decay"]) == {0.5, 1.0} and len(table) == 2 * summary["checkpoints"]
    from pathlib import Path

    assert Path(overlay["artifacts"], "overlay.png").stat().st_size > 10_000
    bad = runner.invoke(app, ["trajectory", "--preset", "grok-tiny", "--artifacts", str(root),
                              "--axis", "training.weight_decay=-1"])
    assert bad.exit_code == 2 and "training.weight_decay" in bad.output


def test_figure_of_a_users_run_names_no_blank_target_and_says_what_is_missing(tmp_path, monkeypatch):
    """Before: title "— target  (2 checkpoints)" and an empty accuracy/loss panel. Now the title
    says it is the user's model and the panel says which of accuracy / loss was not recorded."""
    from llc.posthoc import trajectory_plot

    figures = []
    monkeypatch.setattr(trajectory_plot, "save_figure", lambda fig, path: figures.append(fig) or path)
    rows = [{"step": s, "llc_mean": 1.0 + s, "llc_se": 0.1, "flags": "", "grad_norm": 0.1, "L0": 0.5}
            for s in (0, 10)]
    for extra, missing in (({}, "no accuracy or loss recorded"), ({"train_loss": 0.5}, "no accuracy recorded")):
        trajectory_plot.draw(tmp_path / "t.png", {"sampler": "sgld", "target": {},
                                                  "rows": [{**r, **extra} for r in rows]})
        fig = figures[-1]
        assert fig._suptitle.get_text() == "LLC across training — your model (2 checkpoints)"
        assert missing in [t.get_text() for ax in fig.axes for t in ax.texts]
