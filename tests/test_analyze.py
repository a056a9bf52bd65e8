"""`llc analyze` and `llc promote` on saved runs: exact reproduction, no JAX, clear errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from synthetic_runs import synthetic_idatas, write_run
from typer.testing import CliRunner

from llc.posthoc.analyze import analyze_run, latest_run, promote
from llc.store.jsonfiles import ArtifactError
from llc.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def real_run(tmp_path_factory) -> Path:
    """A small real `llc run` (quadratic target, SGLD) with figures, written by run_experiment."""
    from llc.config import build_config
    from llc.pipeline.experiment import run_experiment

    root = tmp_path_factory.mktemp("artifacts")
    cfg = build_config(None, ["target.kind=quadratic", "samplers=sgld", "sgld.chains=2", "sgld.draws=150",
                              "sgld.burnin=10", "sgld.eval_every=5"])
    result = run_experiment(cfg, root)
    return Path(result["artifacts"])


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory) -> Path:
    return write_run(tmp_path_factory.mktemp("runs") / "synth", synthetic_idatas(seed=2, chains=2, draws=80))


def test_run_writes_records_and_figures(real_run):
    for name in ("sgld.nc", "metrics.json", "manifest.txt", "README_snippet.md", "gallery.md",
                 "sgld_llc_running.png", "llc_running_combined.png"):
        assert (real_run / name).is_file(), name
    manifest = (real_run / "manifest.txt").read_text()
    assert "sgld.draws = 150" in manifest and "wall" in manifest and real_run.name in manifest
    snippet = (real_run / "README_snippet.md").read_text()
    assert "| sgld |" in snippet and "(sgld_llc_running.png)" in snippet
    gallery = (real_run / "gallery.md").read_text()
    pngs = sorted(p.name for p in real_run.glob("*.png"))
    assert all(f"({name})" in gallery for name in pngs)


def test_analyze_reproduces_metrics_json(real_run, tmp_path):
    saved = json.loads((real_run / "metrics.json").read_text())
    # A copy elsewhere: the analysis needs nothing but the run's files.
    copy = shutil.copytree(real_run, tmp_path / "copied_run")
    res = runner.invoke(app, ["analyze", str(copy), "--plots", "none"])
    assert res.exit_code == 0, res.output
    assert "identical to saved" in res.output
    fresh = json.loads((copy / "analysis" / "metrics.json").read_text())
    assert fresh == saved
    m = saved["samplers"]["sgld"]
    for key in ("llc_mean", "llc_se", "ess_bulk", "ess_tail", "rhat", "mcse", "wnv_time", "wnv_fde",
                "ess_per_sec", "ess_per_fde", "time_to_se1", "fde_to_se1", "llc_per_chain"):
        assert m[key] is not None, key
    assert f"{m['llc_mean']:.3f}" in res.output


def test_analyze_target_se_and_overwrite(synthetic_run, tmp_path):
    out = tmp_path / "figs"
    res = runner.invoke(app, ["analyze", str(synthetic_run), "--which", "hmc", "--plots", "running_llc,acceptance",
                              "--out", str(out), "--target-se", "0.5"])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.glob("*.png")) == ["hmc_acceptance.png", "hmc_llc_running.png"]
    doc = json.loads((out / "metrics.json").read_text())
    assert list(doc["samplers"]) == ["hmc"]
    m = doc["samplers"]["hmc"]
    assert m["target_se"] == 0.5
    assert m["time_to_se1"] == pytest.approx(m["wall_s"] * (m["llc_se"] / 0.5) ** 2)
    assert "differs from saved" in res.output and "time_to_se1" in res.output
    # A second analysis into the same place must be asked for.
    again = runner.invoke(app, ["analyze", str(synthetic_run), "--which", "hmc", "--plots", "running_llc",
                                "--out", str(out)])
    assert again.exit_code == 2 and "--overwrite" in again.output
    forced = runner.invoke(app, ["analyze", str(synthetic_run), "--which", "hmc", "--plots", "running_llc",
                                 "--out", str(out), "--overwrite"])
    assert forced.exit_code == 0, forced.output


def test_analyze_never_imports_jax(synthetic_run, tmp_path):
    code = textwrap.dedent(f"""
        import sys
        from typer.testing import CliRunner
        from llc.cli import app
        res = CliRunner().invoke(app, ["analyze", {str(synthetic_run)!r}, "--plots", "running_llc,energy",
                                       "--out", {str(tmp_path / "out")!r}])
        assert res.exit_code == 0, res.output
        from llc.posthoc.analyze import promote
        promote({str(tmp_path / "out")!r}, out={str(tmp_path / "readme")!r})  # figures just drawn
        print("JAX_LOADED" if "jax" in sys.modules or "jaxlib" in sys.modules else "NO_JAX")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("NO_JAX")
    assert (tmp_path / "out" / "hmc_energy.png").is_file() and (tmp_path / "readme" / "hmc_energy.png").is_file()


def _invoke_error(run_dir: Path, *extra: str) -> str:
    res = runner.invoke(app, ["analyze", str(run_dir), "--plots", "none", *extra])
    assert res.exit_code == 2, res.output
    lines = [line for line in res.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), res.output
    return lines[0]


def test_analyze_bad_files(synthetic_run, tmp_path):
    run = shutil.copytree(synthetic_run, tmp_path / "run")
    # Missing: config.json lists a sampler whose file is gone.
    (run / "mclmc.nc").unlink()
    msg = _invoke_error(run)
    assert "mclmc.nc" in msg and "no such NetCDF file" in msg
    msg = _invoke_error(synthetic_run, "--which", "vi,hmc")
    assert "vi.nc" in msg and "samplers of this run: sgld, hmc, mclmc" in msg
    # Truncated.
    data = (run / "hmc.nc").read_bytes()
    (run / "hmc.nc").write_bytes(data[: len(data) // 2])
    msg = _invoke_error(run, "--which", "hmc")
    assert "hmc.nc" in msg and "not a readable NetCDF file" in msg
    # Foreign: not NetCDF at all, and a NetCDF that llc did not write.
    (run / "hmc.nc").write_text("hello")
    assert "not a readable NetCDF file" in _invoke_error(run, "--which", "hmc")
    import xarray as xr

    xr.Dataset({"a": ("x", np.arange(3.0))}).to_netcdf(run / "hmc.nc")
    assert "not an llc sampler file" in _invoke_error(run, "--which", "hmc")
    # A valid llc file under the wrong name.
    shutil.copyfile(synthetic_run / "sgld.nc", run / "hmc.nc")
    assert "holds sampler 'sgld'" in _invoke_error(run, "--which", "hmc")
    assert "no such run directory" in _invoke_error(tmp_path / "nowhere")
    with pytest.raises(ArtifactError):
        analyze_run(tmp_path / "nowhere")


def _fake_run(root: Path, name: str, created: str, samplers: list[str], figures: list[str]) -> Path:
    run = root / name
    run.mkdir(parents=True)
    (run / "manifest.json").write_text(json.dumps({"run_id": name, "created": created}))
    (run / "config.json").write_text(json.dumps({"samplers": samplers}))
    for fig in figures:
        (run / fig).write_bytes(f"{name}:{fig}".encode())
    return run


def test_promote_latest_run(tmp_path):
    root = tmp_path / "artifacts"
    all_figs = ["sgld_llc_running.png", "hmc_llc_running.png", "mclmc_llc_running.png", "hmc_llc_rank.png",
                "hmc_L_ess.png", "hmc_Ln_centered.png", "hmc_acceptance.png", "hmc_energy.png",
                "mclmc_energy_hist.png", "llc_running_combined.png", "sgld_llc_rank.png"]
    _fake_run(root, "old", "2025-01-01T10:00:00+0000", ["sgld", "hmc", "mclmc"], all_figs)
    # Later in absolute time although its local clock reads earlier (a different time zone).
    _fake_run(root, "new", "2025-01-01T09:00:00-0200", ["sgld", "hmc", "mclmc"], all_figs)
    (root / "targets").mkdir()  # not a run: no manifest
    assert latest_run(root).name == "new"
    out = tmp_path / "assets" / "readme"
    res = runner.invoke(app, ["promote", "--artifacts", str(root), "--out", str(out)])
    assert res.exit_code == 0, res.output
    expected = {"sgld_llc_running.png", "hmc_llc_running.png", "mclmc_llc_running.png", "llc_rank.png",
                "llc_ess_evolution.png", "Ln_centered.png", "hmc_acceptance.png", "hmc_energy.png",
                "mclmc_energy_hist.png", "llc_running_combined.png"}
    assert {p.name for p in out.glob("*.png")} == expected
    assert (out / "llc_rank.png").read_bytes() == b"new:hmc_llc_rank.png"  # HMC is the reference
    assert json.loads((out / "promoted.json").read_text())["run"] == "new"


def test_promote_named_run_and_sampler_filter(tmp_path):
    root = tmp_path / "artifacts"
    _fake_run(root, "a", "2025-01-01T10:00:00+0000", ["sgld", "mclmc"],
              ["sgld_llc_running.png", "mclmc_llc_running.png", "sgld_llc_rank.png", "mclmc_energy_hist.png"])
    out = tmp_path / "readme"
    res = runner.invoke(app, ["promote-readme-images", "--run", "a", "--artifacts", str(root), "--out", str(out),
                              "--samplers", "sgld"])
    assert res.exit_code == 0, res.output
    assert {p.name for p in out.glob("*.png")} == {"sgld_llc_running.png", "llc_rank.png"}
    assert (out / "llc_rank.png").read_bytes() == b"a:sgld_llc_rank.png"
    run_dir, copies = promote(root / "a", root, tmp_path / "readme2")
    assert {dst.name for _, dst in copies} >= {"mclmc_llc_running.png", "mclmc_energy_hist.png"}
    # A run without figures, or no run at all: a one-line error.
    _fake_run(root, "bare", "2026-01-01T10:00:00+0000", ["sgld"], [])
    res = runner.invoke(app, ["promote", "--artifacts", str(root), "--out", str(out)])
    assert res.exit_code == 2 and "no figures to promote" in res.output
    res = runner.invoke(app, ["promote", "--artifacts", str(tmp_path / "none"), "--out", str(out)])
    assert res.exit_code == 2 and "no such artifacts directory" in res.output


def test_a_root_or_a_run_without_manifest_is_one_line(real_run, tmp_path):
    """Before: `llc analyze artifacts` (a root) said "incomplete run", and `llc report` wrote a page
    for a run without manifest.json, which `llc analyze` refuses."""
    root = real_run.parent
    out = runner.invoke(app, ["analyze", str(root), "--plots", "none"])
    assert out.exit_code == 2, out.output
    line = out.output.strip()
    assert "is an artifacts root, not a run" in line and real_run.name in line and "\n" not in line
    partial = tmp_path / "partial"
    shutil.copytree(real_run, partial)
    (partial / "manifest.json").unlink()
    for cmd in (["analyze", str(partial), "--plots", "none"], ["report", str(partial), "--out", str(tmp_path / "p.html")]):
        out = runner.invoke(app, cmd)
        assert out.exit_code == 2 and "incomplete run" in out.output, (cmd, out.output)
        assert len(out.output.strip().splitlines()) == 1
    assert not (tmp_path / "p.html").exists()
