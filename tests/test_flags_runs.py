"""Issue 11's two wrong answers are flagged in a real `llc run`; a good run is not."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llc.store.records import flag_code as code
from llc.config import build_config
from llc.pipeline.experiment import run_experiment
from llc.store.artifacts import load_netcdf, stored_flags


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("artifacts")  # shared: the quick target is trained once


def _run(root: Path, preset: str | None, overrides: list[str]) -> dict:
    return run_experiment(build_config(preset, [*overrides, "save_plots=false"]), root)


def _codes(result: dict, sampler: str) -> list[str]:
    return [code(f) for f in result["samplers"][sampler]["flags"]]


def test_quadratic_sgld_too_large_step_is_flagged(root):
    # `llc run --target quadratic --quad-dim 4 --samplers sgld --set sgld.step_size=0.0108`:
    # lambda-hat ~310 where d/2 = 2 and the exact value is 1.457, with R-hat 1.008 and no divergence.
    result = _run(root, None, ["target.kind=quadratic", "target.quadratic.dim=4", "samplers=sgld", "sgld.step_size=0.0108"])
    s = result["samplers"]["sgld"]
    assert s["llc_mean"] > 100 and s["diverged_chains"] == 0 and s["rhat"] < 1.02  # clean by the old diagnostics
    assert {"above_d_half", "excess_variance", "analytic"} <= set(_codes(result, "sgld"))
    run = Path(result["artifacts"])
    assert stored_flags(load_netcdf(run / "sgld.nc")) == s["flags"]
    assert json.loads((run / "metrics.json").read_text())["samplers"]["sgld"]["flags"] == s["flags"]


def test_quadratic_good_run_is_clean(root):
    result = _run(root, None, ["target.kind=quadratic", "target.quadratic.dim=4", "samplers=sgld,hmc"])
    assert result["samplers"]["sgld"]["flags"] == [] and result["samplers"]["hmc"]["flags"] == []


def test_quick_preset_sgld_too_large_step_is_flagged(root):
    # `llc run --preset quick --samplers sgld --set sgld.step_size=4e-3`: lambda-hat ~74-82 (the
    # default step gives 9.9, HMC 9.8) with R-hat 1.001. Nothing is above d/2 = 483 here and the
    # chains neither drift nor disagree; the draws' variance (~160x lambda-hat) gives it away.
    result = _run(root, "quick", ["samplers=sgld", "sgld.step_size=4e-3"])
    s = result["samplers"]["sgld"]
    assert s["llc_mean"] > 40 and s["rhat"] < 1.02 and s["diverged_chains"] == 0
    assert "excess_variance" in _codes(result, "sgld")


def test_quick_preset_sgld_default_is_clean(root):
    result = _run(root, "quick", ["samplers=sgld"])
    assert 8 < result["samplers"]["sgld"]["llc_mean"] < 12
    assert result["samplers"]["sgld"]["flags"] == []


def test_calibrate_points_carry_the_same_flags(root):
    import xarray as xr

    from llc.pipeline import calibrate as cal

    plan = cal.plan(build_config(None, ["target.kind=quadratic", "target.quadratic.dim=4"]), "sgld",
                    ["sgld.step_size=1e-4,0.0108"])
    summary = cal.calibrate(plan, root)
    good, big = sorted(summary["rows"], key=lambda r: r["sgld.step_size"])
    assert good["flags"] == "" and {"above_d_half", "excess_variance"} <= set(code(f) for f in big["flags"].split("; "))
    ds = xr.open_dataset(Path(summary["artifacts"]) / "calibration.nc", engine="h5netcdf")
    stored = {float(s): str(f) for s, f in zip(ds["sgld__step_size"].values, ds["flags"].values)}
    assert stored[1e-4] == "" and "above_d_half" in {code(f) for f in stored[0.0108].split("\n")}
