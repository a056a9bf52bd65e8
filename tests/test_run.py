import json
import os
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from llc.store import cache
from llc.cli import app
from llc.config import build_config
from llc.pipeline.experiment import run_experiment
from llc.theory import quadratic_learning_coefficient

QUAD = ["--target", "quadratic", "--quad-dim", "4", "--samplers", "sgld", "--no-save-plots"]


def _llc(*args, artifacts):
    env = dict(os.environ, LLC_CODE_VERSION="test-run")
    return subprocess.run([sys.executable, "-m", "llc", "run", *args, "--json", "--artifacts", str(artifacts)],
                          capture_output=True, text=True, env=env, timeout=300)


def test_quadratic_sgld_matches_analytic_then_cached(tmp_path):
    proc = _llc(*QUAD, artifacts=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, "stdout must hold exactly one JSON object"
    result = json.loads(lines[0])
    for key in ("run_id", "artifacts", "cached", "target", "posterior", "samplers"):
        assert key in result
    assert result["cached"] is False and result["target"]["id"].startswith("tgt_")
    s = result["samplers"]["sgld"]
    for key in ("llc_mean", "llc_se", "ess", "rhat", "wall_s", "fde", "diverged_chains"):
        assert key in s
    p = result["posterior"]
    exact = quadratic_learning_coefficient(4, p["n"], p["beta"], p["gamma"])
    # Plain SGLD on a Gaussian of precision P = n*beta + gamma with step eps has stationary variance
    # 1 / (P (1 - eps P / 4)): its lambda-hat is biased by that known factor, small at the eps auto chooses.
    eps = s["step_size"]  # what step_size=auto chose
    precision = p["nbeta"] + p["gamma"]
    sgld_exact = exact / (1 - eps * precision / 4)
    assert abs(s["llc_mean"] - exact) / exact < 0.05
    assert abs(s["llc_mean"] - sgld_exact) < 4 * s["llc_se"], (s, sgld_exact)
    assert s["diverged_chains"] == 0 and s["rhat"] < 1.05

    run_dir = tmp_path / result["run_id"]
    for name in ("sgld.nc", "metrics.json", "config.json", "manifest.json", "result.json"):
        assert (run_dir / name).is_file()
    import arviz as az
    idata = az.from_netcdf(str(run_dir / "sgld.nc"))
    assert idata.posterior["Ln"].shape[:2] == (4, build_config().sgld.draws)
    assert "theta_proj" in idata.posterior and "llc_running" in idata.posterior

    t0 = time.perf_counter()
    again = _llc(*QUAD, artifacts=tmp_path)
    assert again.returncode == 0, again.stderr
    cached = json.loads(again.stdout)
    assert cached["cached"] is True and cached["run_id"] == result["run_id"]
    assert cached["samplers"] == result["samplers"]
    assert time.perf_counter() - t0 < 30

    forced = _llc(*QUAD, "--no-skip", artifacts=tmp_path)
    assert json.loads(forced.stdout)["cached"] is False


@pytest.mark.parametrize("args, field", [
    (["--set", "sgld.step_size=-1"], "sgld.step_size"),
    (["--chains", "0"], "sgld.chains"),
    (["--set", "target.mlp.activation=swish"], "target.mlp.activation"),
    (["--target", "cubic"], "target.kind"),
    (["--set", "sgld.nope=1"], "sgld.nope"),
    (["--preset", "missing"], "preset"),
])
def test_bad_input_exits_2_with_one_line(tmp_path, args, field):
    result = CliRunner().invoke(app, ["run", *args, "--artifacts", str(tmp_path)])
    assert result.exit_code == 2
    text = result.output.strip()
    assert field in text and len(text.splitlines()) == 1, text
    assert not any(tmp_path.iterdir()), "nothing may be written for a rejected config"


def test_failed_run_leaves_nothing_cache_would_reuse(tmp_path, monkeypatch):
    cfg = build_config(None, ["target.kind=quadratic", "samplers=sgld", "sgld.draws=20", "save_plots=false"])
    from llc.engine import driver

    def exploding(*args, **kwargs):
        raise RuntimeError("worker lost")

    monkeypatch.setattr(driver, "run_batch", exploding)
    with pytest.raises(RuntimeError, match="worker lost"):
        run_experiment(cfg, tmp_path)
    run_dir = tmp_path / cache.run_id(cfg)
    assert not run_dir.exists() and not cache.is_complete(run_dir)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "targets"]
    assert leftovers == []  # the run's lock is released and removed with its directory
    monkeypatch.undo()
    result = run_experiment(cfg, tmp_path)
    assert result["cached"] is False and cache.is_complete(run_dir)


def test_python_dash_m_help():
    proc = subprocess.run([sys.executable, "-m", "llc", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    for command in ("run",):
        assert command in proc.stdout


def test_rewritten_records_name_the_analysis_files():
    """experiment.py names them without importing llc.store.records (ArviZ) at import time."""
    import subprocess
    import sys

    from llc.pipeline import experiment
    from llc.store.records import FIGURE_RECORD, GALLERY_FILE, SNIPPET_FILE

    assert experiment.REWRITTEN_RECORDS == (GALLERY_FILE, SNIPPET_FILE, FIGURE_RECORD)
    code = "import sys, llc.pipeline.experiment; print('arviz' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


def test_run_without_figures_never_imports_the_posthoc_layer(tmp_path):
    """The run path (sampling, metrics, records, NetCDF) needs no post-hoc module; figures are the
    only post-hoc step of a run, and with them off none is imported."""
    code = ("import atexit, sys\n"
            "atexit.register(lambda: print('POSTHOC', sorted(m for m in sys.modules if m.startswith('llc.posthoc')),"
            " file=sys.stderr))\n"
            "from llc.cli import main\n"
            f"sys.argv = ['llc', 'run', *{QUAD!r}, '--set', 'sgld.draws=20', '--json', '--artifacts', {str(tmp_path)!r}]\n"
            "main()\n")
    env = dict(os.environ, LLC_CODE_VERSION="test-run")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["samplers"]["sgld"]["llc_mean"] is not None
    line = next(line for line in proc.stderr.splitlines() if line.startswith("POSTHOC"))
    assert line == "POSTHOC []", line


def test_cached_run_imports_no_jax_blackjax_or_arviz(tmp_path):
    """A run answered from the cache reads result.json and prints it: a fraction of a second, not
    the seconds JAX and ArviZ take to import. The first run computes (kept small), the next two
    are cache hits, with --json and with the table."""
    small = ["--preset", "quick", "--samplers", "sgld", "--figures", "none", "--draws", "20", "--chains", "2",
             "--set", "training.steps=20", "--set", "sgld.burnin=0", "--artifacts", str(tmp_path)]
    code = ("import atexit, sys\n"
            "atexit.register(lambda: print('LOADED', sorted(m for m in ('jax', 'blackjax', 'arviz') if m in sys.modules),"
            " file=sys.stderr))\n"
            "from llc.cli import main\n"
            "sys.argv = ['llc', 'run', *sys.argv[1:]]\n"
            "main()\n")
    env = dict(os.environ, LLC_CODE_VERSION="test-run")

    def run(*extra):
        proc = subprocess.run([sys.executable, "-c", code, *small, *extra], capture_output=True, text=True, env=env,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr
        return proc, next(line for line in proc.stderr.splitlines() if line.startswith("LOADED"))

    first, loaded = run("--json")
    assert not json.loads(first.stdout)["cached"] and loaded != "LOADED []"  # the check sees a computing run's imports
    hit, loaded = run("--json")
    assert json.loads(hit.stdout)["cached"] and json.loads(hit.stdout)["samplers"] == json.loads(first.stdout)["samplers"]
    assert loaded == "LOADED []", loaded
    table, loaded = run()
    assert "(cached)" in table.stdout and "sgld" in table.stdout
    assert loaded == "LOADED []", loaded
