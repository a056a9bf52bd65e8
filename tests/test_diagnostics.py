"""Metrics on synthetic chains with known answers (no JAX, no sampling)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from synthetic_runs import ar1, hmc_stats, make_idata, mclmc_stats

from llc.analysis import diagnostics as D
from llc.store.artifacts import load_netcdf, save_netcdf
from llc.store.jsonfiles import dumps

CHAINS, DRAWS = 4, 5000
N = CHAINS * DRAWS


@pytest.mark.parametrize(("rho", "rel_tol"), [(0.0, 0.12), (0.5, 0.17), (0.8, 0.29)])
def test_ess_of_ar1_chains_matches_closed_form(rho, rel_tol):
    # ESS = N (1 - rho) / (1 + rho) for a stationary AR(1). The tolerance is 4 standard deviations
    # of ArviZ's estimator at N = 20000, measured over 40 seeds (relative sd 3%, 4.2%, 7.2%).
    x = ar1(np.random.default_rng(int(rho * 10)), CHAINS, DRAWS, rho)
    expected = N * (1 - rho) / (1 + rho)
    out = D.ess_rhat(x)
    assert out["ess_bulk"] == pytest.approx(expected, rel=rel_tol)
    assert out["ess_tail"] > 0
    # Same answer through the lambda-hat metrics (lambda draws = nbeta (Ln - L0) is affine in x).
    m = D.llc_metrics(1.0 + x / 50.0, L0=1.0, nbeta=50.0)
    assert m["ess"] == pytest.approx(expected, rel=rel_tol)
    # SE of the mean of AR(1) draws: sqrt(Var(x) (1+rho) / ((1-rho) N)); ESS error halves in a sqrt.
    se_true = math.sqrt((1 + rho) / ((1 - rho) * N))
    assert m["llc_se"] == pytest.approx(se_true, rel=rel_tol / 2 + 0.02)
    assert m["mcse"] == pytest.approx(se_true, rel=rel_tol / 2 + 0.03)


def test_ess_separates_mixing_speeds():
    rng = np.random.default_rng(3)
    slow = D.ess_rhat(ar1(rng, 4, 2000, 0.95))["ess_bulk"]
    fast = D.ess_rhat(ar1(rng, 4, 2000, 0.2))["ess_bulk"]
    assert slow < 0.1 * fast


def test_rhat_iid_chains_near_one():
    # Over 40 seeds R-hat of 4 x 1000 i.i.d. normals had sd 6e-4 and max 1.0021.
    x = np.random.default_rng(11).standard_normal((4, 1000))
    assert abs(D.ess_rhat(x)["rhat"] - 1.0) < 0.005


def test_rhat_flags_shifted_chain():
    rng = np.random.default_rng(12)
    x = rng.standard_normal((4, 1000)) + 0.75 * np.arange(4)[:, None]  # chains centred on 0, .75, 1.5, 2.25
    # Classic R-hat ~ sqrt(1 + Var(chain means) / within-chain variance) = sqrt(1 + 0.94) ~ 1.39.
    assert D.ess_rhat(x)["rhat"] > 1.1
    y = rng.standard_normal((4, 1000))
    y[3] += 2.0  # one chain stuck in another mode
    assert D.ess_rhat(y)["rhat"] > 1.1


def test_rhat_single_chain_is_not_reported_but_ess_is():
    x = np.random.default_rng(13).standard_normal((1, 500))
    out = D.ess_rhat(x)
    assert out["rhat"] is None and out["ess_bulk"] > 100


def test_efficiency_arithmetic():
    m = D.efficiency_metrics(se=0.5, ess=100.0, wall_s=10.0, fde=200.0)
    assert m["llc_var"] == pytest.approx(0.25)
    assert m["wnv_time"] == pytest.approx(2.5) and m["wnv_fde"] == pytest.approx(50.0)
    assert m["ess_per_sec"] == pytest.approx(10.0) and m["ess_per_fde"] == pytest.approx(0.5)
    # cost x (SE / target)^2: already at SE 0.5, reaching SE 1 needs a quarter of the work...
    assert m["time_to_se1"] == pytest.approx(2.5) and m["fde_to_se1"] == pytest.approx(50.0)
    # ...and halving the SE to 0.25 needs four times the work.
    m2 = D.efficiency_metrics(se=0.5, ess=100.0, wall_s=10.0, fde=200.0, target_se=0.25)
    assert m2["time_to_se1"] == pytest.approx(40.0) and m2["fde_to_se1"] == pytest.approx(800.0)
    assert m2["target_se"] == 0.25 and m2["wnv_time"] == m["wnv_time"]


def test_efficiency_missing_inputs_give_none():
    m = D.efficiency_metrics(se=None, ess=None, wall_s=None, fde=0.0)
    assert all(m[k] is None for k in ("llc_var", "wnv_time", "wnv_fde", "time_to_se1", "fde_to_se1",
                                      "ess_per_sec", "ess_per_fde"))
    with pytest.raises(ValueError, match="target_se"):
        D.efficiency_metrics(se=1.0, ess=1.0, wall_s=1.0, fde=1.0, target_se=0.0)


def test_acceptance_energy_and_divergence_stats():
    acc = np.array([[0.0, 0.5, 1.0, np.nan], [0.2, 0.4, 0.6, 0.8]])
    m = D.acceptance_metrics(acc)
    finite = np.array([0.0, 0.5, 1.0, 0.2, 0.4, 0.6, 0.8])
    assert m["acceptance_mean"] == pytest.approx(finite.mean())
    assert m["acceptance_min"] == 0.0 and m["acceptance_max"] == 1.0
    assert m["acceptance_median"] == pytest.approx(0.5)
    assert m["acceptance_per_chain"] == pytest.approx([0.5, 0.5])

    de = np.array([[0.1, -0.3], [0.2, 0.0]])
    e = D.energy_change_metrics(de, dim=2)
    assert e["energy_change_mean"] == pytest.approx(0.0)
    assert e["energy_change_abs_mean"] == pytest.approx(0.15)
    assert e["energy_change_abs_max"] == pytest.approx(0.3)
    assert e["energy_change_std"] == pytest.approx(np.std(de, ddof=1))
    assert e["energy_change_var_per_dim"] == pytest.approx(np.var(de) / 2)

    d = D.divergence_metrics(np.array([[True, False, True], [False, False, False]]))
    assert d == {"divergent_transitions": 2, "divergent_per_chain": [2, 0]}


def test_sampler_metrics_from_inference_data():
    rng = np.random.default_rng(5)
    stats = {**hmc_stats(rng, 4, 300), **mclmc_stats(rng, 4, 300)}
    idata = make_idata("hmc", rng, 4, 300, rho=0.2, stats=stats)
    m = D.sampler_metrics(idata, target_se=0.1)
    llc = idata.posterior["llc"].values
    assert m["llc_mean"] == pytest.approx(llc.mean())
    assert m["llc_per_chain"] == pytest.approx(llc.mean(axis=1).tolist())
    assert m["acceptance_mean"] == pytest.approx(stats["acceptance_rate"].mean())
    assert m["divergent_transitions"] == int(stats["diverging"].sum())
    assert m["energy_change_abs_max"] == pytest.approx(np.abs(stats["energy_change"]).max())
    assert 0 < m["bfmi_min"] < 3
    assert m["stats_mean"]["num_integration_steps"] == 16.0
    assert m["wall_s"] == 2.0 and m["fde"] == 1000.0
    assert m["time_to_se1"] == pytest.approx(2.0 * (m["llc_se"] / 0.1) ** 2)
    assert m["ess_per_sec"] == pytest.approx(m["ess"] / 2.0)
    assert m["info"] == {"step_size": 0.01, "note": "synthetic", "step_size_per_chain": [0.01, 0.02, 0.03, 0.04]}


def test_sampler_metrics_without_stats_or_work():
    rng = np.random.default_rng(6)
    idata = make_idata("sgld", rng, 2, 100, work={"fde": 10.0})
    m = D.sampler_metrics(idata)
    assert "acceptance_mean" not in m and "energy_change_mean" not in m and "divergent_transitions" not in m
    assert "wall_s" not in m
    assert m["ess_per_sec"] is None and m["time_to_se1"] is None and m["fde_to_se1"] is not None


def test_diverged_chain_excluded_and_counted():
    rng = np.random.default_rng(7)
    idata = make_idata("hmc", rng, 4, 200, stats=hmc_stats(rng, 4, 200))
    Ln = idata.posterior["Ln"].values.copy()
    Ln[1, 50:] = np.nan
    idata.posterior["Ln"] = (("chain", "draw"), Ln)
    m = D.sampler_metrics(idata)
    assert m["diverged_chains"] == 1 and m["diverged_chain_ids"] == [1]
    assert m["llc_per_chain"][1] is None
    good = idata.posterior["llc"].values[[0, 2, 3]]
    assert m["llc_mean"] == pytest.approx(good.mean())


def test_metrics_survive_netcdf_round_trip_exactly(tmp_path):
    rng = np.random.default_rng(8)
    idata = make_idata("hmc", rng, 3, 150, stats=hmc_stats(rng, 3, 150))
    before = json.loads(dumps(D.sampler_metrics(idata)))
    save_netcdf(idata, tmp_path / "hmc.nc")
    after = json.loads(dumps(D.sampler_metrics(load_netcdf(tmp_path / "hmc.nc"))))
    assert before == after


def test_evolution_curves():
    x = np.random.default_rng(9).standard_normal((4, 400))
    ev = D.ess_evolution(x, n_points=10)
    assert ev["draws"][-1] == 400 and len(ev["draws"]) == len(ev["bulk"]) == len(ev["tail"])
    # i.i.d.: ESS grows roughly like the number of draws.
    assert ev["bulk"][-1] == pytest.approx(1600, rel=0.15)
    assert ev["bulk"][-1] > 3 * ev["bulk"][0]
    rh = D.rhat_evolution(x, n_points=10)
    assert np.all(np.abs(rh["rhat"] - 1) < 0.05)
    acf = D.autocorrelation(ar1(np.random.default_rng(10), 2, 4000, 0.7), 5)
    # AR(1) autocorrelation at lag k is rho^k.
    assert acf.shape == (2, 6) and acf[:, 1] == pytest.approx([0.7, 0.7], abs=0.05)
    assert acf[:, 3] == pytest.approx([0.343, 0.343], abs=0.07)
