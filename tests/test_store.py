"""The NetCDF layout (format 2): per-chain info as variables, VI's trace as a group, no JSON in attributes."""

from __future__ import annotations

import json
from pathlib import Path

import arviz as az
import numpy as np
import pytest
from synthetic_runs import ATTRS, L0, NBETA, make_idata, synthetic_idatas, write_run
from typer.testing import CliRunner

from llc.cli import app
from llc.store import artifacts as A
from llc.store.jsonfiles import dumps

CHAINS, DRAWS = 3, 40


def _hmc_like_info() -> dict:
    return {"algorithm": "hmc", "step_size": 0.05, "step_size_per_chain": [0.04, 0.05, 0.06],
            "mean_accept": np.float64(0.81), "divergences": 2, "failed_chains": 1, "collapsed": True,
            "not_run": None, "energy_check_realized_per_chain": [],
            "failure_reasons": {"1": "non-finite state, frozen chain"}}


def _vi_like_info(points: int = 5, M: int = 2) -> dict:
    rng = np.random.default_rng(0)
    pi = rng.dirichlet(np.ones(M), (CHAINS, points))
    trace = {"step": ((np.arange(points) + 1) * 10).tolist(), "elbo": rng.normal(size=(CHAINS, points)).tolist(),
             "llc": rng.normal(size=(CHAINS, points)).tolist(), "pi": pi.tolist(),
             "learning_rate": [0.1] * points}  # one series for all chains
    return {"components": M, "ranks": [1, 2], "mixture_weights": pi[:, -1].tolist(),
            "final_elbo": [-1.0, -2.0, -3.0], "llc_cv_per_chain": [3.0, 3.1, 2.9], "trace": trace}


def _idata(info: dict):
    rng = np.random.default_rng(1)
    Ln = L0 + (3 + rng.standard_normal((CHAINS, DRAWS))) / NBETA
    return A.to_inference_data("hmc", Ln, None, rng.standard_normal((CHAINS, DRAWS, 2)), {}, L0=L0, nbeta=NBETA,
                               attrs=ATTRS, work={"fde": 10.0, "wall_s": 1.5}, info=info)


def _round_trip(idata, tmp_path):
    A.save_netcdf(idata, tmp_path / "x.nc")
    return A.load_netcdf(tmp_path / "x.nc")


def test_per_chain_info_is_a_chain_variable_and_scalars_plain_attributes(tmp_path):
    loaded = _round_trip(_idata(_hmc_like_info()), tmp_path)
    group = loaded[A.INFO_GROUP]
    assert group["step_size_per_chain"].dims == ("chain",)
    assert group["step_size_per_chain"].values.tolist() == [0.04, 0.05, 0.06]
    assert group[A.FAILURE_VAR].dims == ("chain",)
    assert group[A.FAILURE_VAR].values.tolist() == ["", "non-finite state, frozen chain", ""]
    attrs = A.nc_attrs(loaded)
    assert attrs["llc_format"] == A.NC_FORMAT_VERSION == 2
    assert attrs["info_step_size"] == 0.05 and attrs["info_algorithm"] == "hmc" and attrs["info_collapsed"] == 1
    assert attrs["work_fde"] == 10.0 and attrs["flags"] == ""
    # No JSON anywhere in the attributes: numbers and plain strings only.
    for key, value in attrs.items():
        assert isinstance(value, (int, float, str)), key
        assert not (isinstance(value, str) and value[:1] in ("[", "{")), key
    # What the engine returned comes back (empty arrays and None carry nothing).
    assert A.sampler_info(loaded) == {
        "algorithm": "hmc", "step_size": 0.05, "mean_accept": 0.81, "divergences": 2, "failed_chains": 1,
        "collapsed": 1, "step_size_per_chain": [0.04, 0.05, 0.06],
        "failure_reasons": {"1": "non-finite state, frozen chain"}}


def test_vi_trace_is_its_own_group_with_chain_and_step_dims(tmp_path):
    info = _vi_like_info()
    loaded = _round_trip(_idata(info), tmp_path)
    trace = loaded[A.TRACE_GROUP]
    assert trace["elbo"].dims == ("chain", "step") and trace["pi"].dims == ("chain", "step", "component")
    assert trace["step"].values.tolist() == [10, 20, 30, 40, 50]
    assert loaded[A.INFO_GROUP]["ranks"].dims == ("component",)
    assert loaded[A.INFO_GROUP]["mixture_weights"].dims == ("chain", "component")
    read = A.optimisation_trace(loaded)
    assert set(read) == {"step", "elbo", "llc", "pi", "learning_rate"}
    assert read["learning_rate"].shape == (CHAINS, 5)
    np.testing.assert_array_equal(read["pi"], np.asarray(info["trace"]["pi"]))
    got = A.sampler_info(loaded)
    assert "trace" not in got and got["ranks"] == [1, 2] and got["final_elbo"] == [-1.0, -2.0, -3.0]
    assert A.optimisation_trace(_idata(_hmc_like_info())) is None


def test_unstorable_values_are_refused():
    with pytest.raises(TypeError, match="nested"):
        _idata({"odd": {"a": 1}})
    with pytest.raises(TypeError, match="'target_kind'"):
        A.to_inference_data("hmc", np.zeros((1, 4)), None, np.zeros((1, 4, 1)), {}, L0=0.0, nbeta=1.0,
                            attrs={"target_kind": ["mlp"]})


def test_flags_round_trip(tmp_path):
    idata = _idata({})
    assert A.stored_flags(idata) == []
    A.set_flags(idata, ["drift: one", "excess_variance: two"])
    assert A.stored_flags(_round_trip(idata, tmp_path)) == ["drift: one", "excess_variance: two"]
    with pytest.raises(ValueError):
        A.set_flags(idata, ["two\nlines"])


def _write_format1(path, sampler: str) -> None:
    """A sampler file as llc wrote it before format 2: info (per-chain lists, trace) as JSON attributes."""
    rng = np.random.default_rng(3)
    Ln = L0 + (3 + rng.standard_normal((2, 30))) / NBETA
    attrs = {"llc_format": 1, "sampler": sampler, "L0": L0, "nbeta": NBETA, **ATTRS,
             "work_fde": 10.0, "info_step_size_per_chain": json.dumps([0.1, 0.2])}
    az.from_dict(posterior={"Ln": Ln, "llc": NBETA * (Ln - L0)}, attrs=attrs).to_netcdf(str(path))


def test_analyze_refuses_the_old_layout_with_one_line(tmp_path):
    run = write_run(tmp_path / "run", synthetic_idatas(seed=1, chains=2, draws=40))
    _write_format1(run / "hmc.nc", "hmc")
    res = CliRunner().invoke(app, ["analyze", str(run), "--plots", "none"])
    assert res.exit_code == 2, res.output
    lines = [line for line in res.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), res.output
    assert "hmc.nc" in lines[0] and "format 1" in lines[0] and "re-run" in lines[0]


def test_metrics_info_reads_the_new_layout(tmp_path):
    rng = np.random.default_rng(4)
    idata = make_idata("vi", rng, CHAINS, 50, info=_vi_like_info())
    from llc.analysis.diagnostics import sampler_metrics

    before = sampler_metrics(idata)
    assert before["info"]["llc_cv_per_chain"] == [3.0, 3.1, 2.9] and "trace" not in before["info"]
    after = sampler_metrics(_round_trip(idata, tmp_path))
    assert json.loads(dumps(before)) == json.loads(dumps(after))


def _run_and_analyze(tmp_path, samplers: list[str], extra: list[str]) -> tuple[dict, dict]:
    from llc.config import build_config
    from llc.pipeline.experiment import run_experiment
    from llc.posthoc.analyze import analyze_run

    cfg = build_config(None, ["target.kind=quadratic", f"samplers={','.join(samplers)}", "save_plots=false",
                              *[f"{s}.chains=2" for s in samplers], *extra])
    result = run_experiment(cfg, tmp_path)
    return result, analyze_run(Path(result["artifacts"]), plots=["optimisation"] if "vi" in samplers else [])


def test_real_vi_and_sgld_runs_store_and_reproduce(tmp_path):
    result, res = _run_and_analyze(tmp_path, ["sgld", "vi"], ["sgld.draws=100", "vi.steps=200"])
    assert res["differences"] == []  # metrics.json (info and flags included) reproduced from the files
    assert [p.name for p in res["figures"]] == ["vi_opt_trace.png"]
    vi = A.load_netcdf(Path(result["artifacts"]) / "vi.nc")
    assert vi[A.TRACE_GROUP]["elbo"].dims == ("chain", "step") and vi[A.TRACE_GROUP].sizes["chain"] == 2
    assert vi[A.INFO_GROUP]["final_elbo"].dims == ("chain",)


@pytest.mark.slow
def test_every_sampler_stores_and_reproduces(tmp_path):
    # ~75 s cold on 2 CPU cores (the MCLMC tuners' compilation), ~15 s with the XLA cache warm.
    from llc import registry

    samplers = list(registry.SAMPLER_NAMES)
    short = ["sgld.draws=100", "hmc.draws=100", "hmc.warmup=100", "mclmc.draws=100", "mclmc.warmup=200",
             "mclmc_adjusted.draws=100", "mclmc_adjusted.warmup=200", "vi.steps=200", "sghmc.draws=100",
             "sgnht.draws=100"]
    result, res = _run_and_analyze(tmp_path, samplers, [o for o in short if o.split(".")[0] in samplers])
    assert res["differences"] == []
    assert set(result["samplers"]) == set(samplers)


def test_report_info_table_shows_per_chain_values():
    from llc.posthoc.report import _info_table

    idata = _idata(_hmc_like_info())
    html = _info_table({"hmc": idata})
    assert "step_size_per_chain" in html and "0.04, 0.05, 0.06" in html and "failure_reasons" in html
