"""llc calibrate: one batched program over a grid, a recommendation checked against exact values."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llc.cli import app
from llc.config import build_config
from llc.pipeline import calibrate as cal
from llc.pipeline.experiment import run_experiment

runner = CliRunner()
QUAD4 = ["target.kind=quadratic", "target.quadratic.dim=4", "sgld.step_size=1e-4"]  # the default grid around 1e-4


@pytest.fixture(scope="module")
def quad_summary(tmp_path_factory):
    root = tmp_path_factory.mktemp("cal")
    plan = cal.plan(build_config(overrides=QUAD4), "sgld")
    return plan, cal.calibrate(plan, root), root


def test_quadratic_recommendation_within_3se_of_exact(quad_summary):
    plan, summary, _ = quad_summary
    assert summary["batches"] == 1 and summary["points"] == 15  # one compiled program for the grid
    rec = summary["recommended"]
    assert rec["index"] is not None, rec["why"]
    row = summary["rows"][rec["index"]]
    assert row["healthy"] and not row["flags"]
    assert abs(row["llc_mean"] - row["analytic_llc"]) < 3 * row["llc_se"], row
    # The rule prefers speed: not the smallest healthy step size.
    smallest = min(r["sgld.step_size"] for r in summary["rows"] if r["healthy"])
    assert row["sgld.step_size"] > smallest


def test_recommended_preset_reproduces_its_grid_point(quad_summary):
    _, summary, root = quad_summary
    cfg = build_config(summary["preset"])
    row = summary["rows"][summary["recommended"]["index"]]
    assert cfg.sgld.step_size == row["sgld.step_size"] and cfg.posterior.gamma == row["posterior.gamma"]
    alone = run_experiment(cfg, root)["samplers"]["sgld"]
    assert alone["llc_mean"] == pytest.approx(row["llc_mean"], rel=1e-5)


def test_outputs_on_disk(quad_summary):
    _, summary, _ = quad_summary
    import xarray as xr
    from pathlib import Path

    d = Path(summary["artifacts"])
    for name in ("calibration.csv", "calibration.nc", "calibration.png", "recommended.toml", "summary.json"):
        assert (d / name).stat().st_size > 0, name
    ds = xr.open_dataset(d / "calibration.nc", engine="h5netcdf")
    assert ds["llc"].dims == ("point", "chain", "draw") and ds.sizes["point"] == 15
    assert "mala_acceptance" in ds
    assert json.loads((d / "summary.json").read_text())["recommended"]["why"]


def test_large_step_is_not_recommended_and_is_marked(tmp_path):
    """The issue's blown-up setting (epsilon = 0.0108 on the quadratic) is never healthy."""
    plan = cal.plan(build_config(overrides=QUAD4), "sgld", ["sgld.step_size=1e-4,0.0108"])
    summary = cal.calibrate(plan, tmp_path)
    big = [r for r in summary["rows"] if r["sgld.step_size"] == 0.0108][0]
    assert not big["healthy"]
    assert big["flags"]
    assert summary["rows"][summary["recommended"]["index"]]["sgld.step_size"] == 1e-4


def test_cli_calibrate_and_bad_grid(tmp_path):
    out = runner.invoke(app, ["calibrate", "--target", "quadratic", "--quad-dim", "3", "--artifacts", str(tmp_path),
                              "--grid", "sgld.step_size=1e-4,3e-4", "--draws", "200", "--json"])
    assert out.exit_code == 0, out.output
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["points"] == 2 and summary["recommended"]["why"]
    bad = runner.invoke(app, ["calibrate", "--target", "quadratic", "--artifacts", str(tmp_path),
                              "--grid", "sgld.stepsize=1,2"])
    assert bad.exit_code == 2
    assert "sgld.stepsize" in bad.output and len(bad.output.strip().splitlines()) == 1


@pytest.mark.parametrize("grid, message", [
    (["sgld.chains=2,4"], "--grid sgld.chains: every point of a calibration records the same chains x draws"),
    (["sgld.draws=100,200"], "--grid sgld.draws: every point"),
    (["hmc.step_size=1e-3,2e-3"], "--grid hmc.step_size: this calibration runs sgld"),
    (["sgld.step_size=1e-4,,3e-4"], "--grid sgld.step_size: an empty value in '1e-4,,3e-4'"),
    (["sgld.step_size=1e-4", "sgld.step_size=3e-4"], "--grid sgld.step_size: given twice"),
])
def test_bad_grids_are_one_line_before_any_work(tmp_path, monkeypatch, grid, message):
    """Before the fix these trained the target and then failed stacking the points, or silently
    dropped a value or an axis."""
    import llc.engine.targets as T

    monkeypatch.setattr(T, "build_target", lambda *a, **k: pytest.fail("the target was built"))
    args = ["calibrate", "--target", "quadratic", "--artifacts", str(tmp_path)]
    out = runner.invoke(app, args + [x for g in grid for x in ("--grid", g)])
    assert out.exit_code == 2, out.output
    assert message in out.output and len(out.output.strip().splitlines()) == 1, out.output


def test_rule_recommends_a_third_of_the_plateau_top():
    """Bias linear in the step, SE ~ 1/sqrt(step) (ESS ~ step): the top agrees within 2 combined SE
    with every smaller step yet sits 4 of its own SE off; the rule takes a step a third of it."""
    steps = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3)
    plan = cal.plan(build_config(overrides=QUAD4), "sgld", ["sgld.step_size=" + ",".join(map(str, steps))])
    truth, slope = 10.0, 400.0
    rows = [{"sgld.step_size": e, "llc_mean": truth + slope * e, "llc_se": 0.1 * (1e-3 / e) ** 0.5, "rhat": 1.001,
             "mala_acceptance": 0.99, "flags": []} for e in steps]
    top = rows[-1]
    assert abs(top["llc_mean"] - truth) > 3 * top["llc_se"]  # what "the largest on the plateau" would pick
    rec = cal.recommend(plan, rows)
    chosen = rows[rec["index"]]
    assert chosen["sgld.step_size"] == 3e-4, rec["why"]
    assert abs(chosen["llc_mean"] - truth) < chosen["llc_se"]
    assert "1e-05" in rec["why"] and "0.001" in rec["why"]  # the plateau's ends are named
    # A clear disagreement at 3e-4 ends the plateau at 1e-4; the rule takes a third of that.
    rows[-2] = {**rows[-2], "llc_mean": truth + 2.0}
    rec = cal.recommend(plan, rows)
    assert rows[rec["index"]]["sgld.step_size"] == 3e-5, rec["why"]


SMALL_GRID = ["sgld.step_size=1e-4,3e-4"]


def test_a_damaged_calibration_is_said_moved_aside_and_recomputed(tmp_path):
    """Before: a damaged calibration was recomputed silently, with no .broken/ copy (unlike runs)."""
    from llc.store import cache

    plan = cal.plan(build_config(overrides=QUAD4 + ["sgld.draws=200"]), "sgld", SMALL_GRID)
    first = cal.calibrate(plan, tmp_path)
    out_dir = Path(first["artifacts"])
    csv_file = out_dir / "calibration.csv"
    data = bytearray(csv_file.read_bytes())
    data[-5] ^= 0x01
    csv_file.write_bytes(bytes(data))
    leftover = out_dir.parent / f".{out_dir.name}.tmp-999999999-abcdef@{cache.HOST}"  # a killed writer's
    leftover.mkdir()
    lines: list[str] = []
    again = cal.calibrate(plan, tmp_path, log=lines.append)
    assert not again["cached"] and any("is damaged" in line for line in lines), lines
    assert list((out_dir.parent / ".broken").iterdir())  # kept for inspection, as a damaged run is
    assert not leftover.exists()
    assert [r["llc_mean"] for r in again["rows"]] == [r["llc_mean"] for r in first["rows"]]
    assert cal.calibrate(plan, tmp_path)["cached"]


def test_two_identical_calibrations_at_once_compute_once(tmp_path):
    """Before: two identical ``llc calibrate`` at once both computed. Now the second waits on the
    calibration's lock and reads the first's result."""
    import os
    import subprocess
    import sys

    args = [sys.executable, "-m", "llc", "calibrate", "--target", "quadratic", "--quad-dim", "4", "--draws", "200",
            "--grid", SMALL_GRID[0], "--json", "--artifacts", str(tmp_path)]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    results = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in results]
    cached = sorted(json.loads(out.strip().splitlines()[-1])["cached"] for out, _ in results)
    assert cached == [False, True]


def test_a_damaged_recommended_preset_is_refused(quad_summary):
    """Before: a bit-flipped recommended.toml (gamma 100 -> 100.1) was run without complaint."""
    _, summary, root = quad_summary
    preset = Path(summary["preset"])
    text = preset.read_text()
    assert "gamma = 100.0" in text
    try:
        preset.write_text(text.replace("gamma = 100.0", "gamma = 100.1"))
        out = runner.invoke(app, ["run", "--preset", str(preset), "--artifacts", str(root)])
        assert out.exit_code == 2, out.output
        assert "does not match the checksum" in out.output and len(out.output.strip().splitlines()) == 1
    finally:
        preset.write_text(text)


@pytest.mark.parametrize("command", [["calibrate", "--target", "quadratic"], ["trajectory", "--preset", "grok-tiny"]])
def test_an_unwritable_root_is_one_line_before_any_work(command, tmp_path):
    """Before: calibrate and trajectory (uncached) gave ~110-line tracebacks for an unwritable root."""
    afile = tmp_path / "a-file"
    afile.write_text("")
    for root in ("/dev/null", str(afile / "sub")):
        out = runner.invoke(app, [*command, "--artifacts", root])
        assert out.exit_code == 2, out.output
        assert "--artifacts" in out.output and len(out.output.strip().splitlines()) == 1, out.output


def test_a_cached_calibration_in_a_copied_root_names_where_its_files_are(quad_summary, tmp_path):
    """The library, not only the CLI: llc.calibrate on a copy of the root reports the copy's paths."""
    import shutil

    plan, summary, root = quad_summary
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    again = cal.calibrate(plan, copy)
    assert again["cached"] and again["artifacts"] == str(copy / "calibrations" / summary["calibration_id"])
    assert again["preset"].startswith(again["artifacts"]) and Path(again["preset"]).is_file()
