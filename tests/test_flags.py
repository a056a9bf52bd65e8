"""Failure flags on synthetic lambda-hat draws: each fires when it should and stays quiet on healthy chains."""

from __future__ import annotations

import json

import numpy as np
import pytest
from rich.console import Console
from synthetic_runs import ATTRS, ar1, make_idata, write_run

from llc import theory
from llc.analysis import flags as F
from llc.analysis.diagnostics import sampler_metrics
from llc.store.artifacts import load_netcdf, stored_flags
from llc.store.records import flag_code


def _codes(fl: list[str]) -> list[str]:
    return [flag_code(f) for f in fl]


def _flags(llc: np.ndarray, seed: int = 0, **attrs) -> list[str]:
    """Flags of a synthetic run whose lambda-hat draws are ``llc`` (chains, draws)."""
    idata = make_idata("hmc", np.random.default_rng(seed), llc=llc, extra_attrs=attrs)
    return sampler_metrics(idata)["flags"]


def _healthy(seed: int, chains: int = 4, draws: int = 400, rho: float = 0.5, mean: float = 3.0) -> np.ndarray:
    # Gamma-like draws (variance ~ mean, as at a tempered posterior): sum of squared AR(1)s.
    rng = np.random.default_rng(seed)
    k = int(2 * mean)
    return sum(ar1(rng, chains, draws, rho) ** 2 for _ in range(k)) / 2


def test_healthy_runs_are_not_flagged():
    # 60 healthy runs over mixing speeds and lengths: no flag at all (the tests' false-positive
    # rates, measured on 400 replicates per case, are in llc/analysis/flags.py), except that the
    # runs too short to trust (rho 0.9, 150 draws: a true ESS of 63) are flagged unconverged; the
    # others have a true ESS of at least 3 x UNCONVERGED_ESS, where that flag is rare.
    for seed in range(60):
        rho = (0.0, 0.5, 0.9)[seed % 3]
        draws = (150, 800, 1500)[(seed // 3) % 3]
        short = rho == 0.9 and draws == 150
        fl = _flags(_healthy(seed, draws=draws, rho=rho), seed, analytic_llc=None)
        assert _codes(fl) == (["unconverged"] if short else []), (seed, rho, draws, fl)
    # Near its analytic value (ATTRS: 3.0, quadratic target): quiet too.
    assert _flags(_healthy(1)) == []


def test_unconverged_reads_rhat_and_both_ess():
    # The smoke-sweep row: R-hat 1.38, ESS 5.
    fl = F.unconverged(1.38, 5.2, 8.0)
    assert fl == ("unconverged: R̂ = 1.380 > 1.05, bulk ESS = 5 and tail ESS = 8 < 100: chains disagree "
                  "(longer warm-up or a smaller step) and too few effective draws to trust the SE (run more draws)")
    assert F.unconverged(1.002, 900.0, 60.0).startswith("unconverged: tail ESS = 60 < 100: too few")
    assert F.unconverged(1.06, 900.0, 900.0).endswith("> 1.05: chains disagree (longer warm-up or a smaller step)")
    assert F.unconverged(1.04, 120.0, 100.0) is None
    assert F.unconverged(None, None, None) is None  # one chain has no R-hat; no finite draws, no ESS


def test_unconverged_fires_on_disagreeing_chains_and_short_runs():
    x = _healthy(11, draws=1000)
    assert _flags(x, analytic_llc=None) == []
    # Chains stuck apart: 0.6 marginal sd between neighbours (the chains' ESS is ~500 each).
    spread = x + np.array([0.0, 0.6, 1.2, 1.8])[:, None]
    fl = _flags(spread, analytic_llc=None)
    assert "unconverged" in _codes(fl) and "chains disagree" in fl[_codes(fl).index("unconverged")]
    # 2 chains x 50 draws of a slowly mixing chain: an ESS of ~10, whatever R-hat says.
    short = _healthy(12, chains=2, draws=50, rho=0.9)
    fl = _flags(short, analytic_llc=None)
    assert _codes(fl) == ["unconverged"] and "run more draws" in fl[0]


def test_unconverged_skips_ess_of_independent_draws():
    # VI: 64 i.i.d. draws of q per fit give an exact SE; R-hat still compares independent fits.
    rng = np.random.default_rng(13)
    one = {"chains": 1, "diverged_chains": 0, "rhat": None, "ess_bulk": 64.0, "ess_tail": 64.0}
    assert F.sampler_flags(rng.gamma(3.0, size=(1, 64)), one, {}, sampler="vi") == []
    assert _codes(F.sampler_flags(rng.gamma(3.0, size=(1, 64)), one, {}, sampler="hmc")) == ["unconverged"]
    fits = {**one, "chains": 2, "rhat": 1.3}
    fl = F.sampler_flags(rng.gamma(3.0, size=(2, 64)), fits, {}, sampler="vi")
    assert _codes(fl) == ["unconverged"] and "independent fits disagree (more optimisation steps" in fl[0]


def test_above_half_dim():
    # Issue 11's quadratic: d = 4, lambda-hat 310.
    fl = F.above_half_dim(310.0, 10.0, 4)
    assert fl.startswith("above_d_half:") and "d/2 = 2" in fl
    assert F.above_half_dim(2.1, 0.05, 4) is None  # within 3 SE of d/2
    assert F.above_half_dim(1.9, 0.01, 4) is None
    assert "above_d_half" in _codes(_flags(_healthy(2, mean=6.0), dim=6, analytic_llc=None))


def test_negative():
    assert F.negative(-1.0, 0.1).startswith("negative:")
    assert F.negative(-0.2, 0.1) is None
    x = _healthy(3) - 10.0
    assert "negative" in _codes(_flags(x, analytic_llc=None))


def test_excess_variance_fires_on_rare_huge_excursions():
    x = _healthy(4, draws=500)
    assert F.excess_variance(x, 0.05) is None
    spiky = x.copy()
    spiky[:, ::50] += 300.0  # 2 % of draws far out: the mean is dominated by them
    fl = F.excess_variance(spiky, 0.5)
    assert fl is not None and fl.startswith("excess_variance:")
    assert "excess_variance" in _codes(_flags(spiky, analytic_llc=None))


def test_drift_fires_on_a_trend_and_not_on_stationary_chains():
    x = _healthy(5, draws=600)
    assert F.drift(x) is None
    trending = x + np.linspace(0.0, 2.0, 600)  # ~1.3 marginal sd over the run
    fl = F.drift(trending)
    assert fl is not None and fl.startswith("drift:") and "z =" in fl
    # A strong climb (too little burn-in) makes the ESS of each third tiny; the across-chain t-test
    # still sees every chain moving the same way.
    rng = np.random.default_rng(6)
    climb = 3.0 * (1 - np.exp(-np.arange(300) / 150.0)) + 0.05 * ar1(rng, 4, 300, 0.99)
    fl = F.drift(climb)
    assert fl is not None and "chains move the same way" in fl
    assert "drift" in _codes(_flags(trending, analytic_llc=None))


def test_outlier_chain_is_named():
    x = _healthy(7, draws=500)
    assert F.outlier_chains(x) is None
    shifted = x.copy()
    shifted[2] += 3.0  # ~15 SE of a chain mean
    fl = F.outlier_chains(shifted)
    assert fl is not None and fl.startswith("outlier_chain: chain 2 ")
    assert "chain 0" not in fl and "chain 1" not in fl
    assert F.outlier_chains(shifted[:2]) is None  # two chains: which one is off is unknowable
    # Chains that all disagree are R-hat's business, not an outlier.
    spread = x + np.array([0.0, 3.0, 6.0, 9.0])[:, None]
    assert F.outlier_chains(spread) is None
    assert "outlier_chain" in _codes(_flags(shifted, analytic_llc=None))


def test_analytic_tolerance_and_regime():
    attrs = {"analytic_llc": 1.457, "analytic_formula": "(d/2) * n*beta / (n*beta + gamma)",
             "analytic_regime": "exact for the localized tempered posterior", "nbeta": 268.6, "gamma": 100.0}
    fl = F.far_from_analytic(310.0, 10.0, attrs)
    assert fl.startswith("analytic:") and "is for: exact for the localized tempered posterior" in fl
    assert "at nβ = 268.6, γ = 100" in fl
    assert F.far_from_analytic(1.50, 0.04, attrs) is None  # 1.1 SE
    assert F.far_from_analytic(1.48, 0.001, attrs) is None  # 23 SE but only 1.6 % off
    dln = {**attrs, "analytic_llc": 13.0, "analytic_formula": "Aoyagi", "analytic_regime": "n -> infinity"}
    fl = F.far_from_analytic(8.37, 0.07, dln)
    assert "36% below" in fl and "is for: n -> infinity" in fl
    assert "regime not recorded" in F.far_from_analytic(8.37, 0.07, {"analytic_llc": 13.0})
    assert F.far_from_analytic(8.37, 0.07, {"analytic_llc": None}) is None


def test_diverged_chains_are_a_flag():
    x = _healthy(8)
    idata = make_idata("hmc", np.random.default_rng(8), llc=x,
                       info={"failed_chains": 1, "failure_reasons": {"1": "frozen chain"}})
    Ln = idata.posterior["Ln"].values.copy()
    Ln[1] = np.nan
    idata.posterior["Ln"] = (("chain", "draw"), Ln)
    fl = sampler_metrics(idata)["flags"]
    assert fl == ["diverged: 1 of 4 chains failed (chain 1: frozen chain); excluded from λ̂"]


def test_advice_depends_on_the_kind_of_sampler():
    # VI is an optimiser (no step size, warm-up or burn-in); SGLD's noise is also its minibatch's.
    assert [F.sampler_kind(n) for n in ("vi", "sgld", "hmc", None)] == ["independent", "minibatch", "full_batch",
                                                                        "full_batch"]
    spiky = _healthy(4, draws=500)
    spiky[:, ::50] += 300.0
    vi, sgld, hmc = (F.excess_variance(spiky, 0.5, F.sampler_kind(n)) for n in ("vi", "sgld", "hmc"))
    assert "step size" not in vi and "fewer components, a lower rank" in vi and "learning rate" in vi
    assert sgld.endswith("(step size too large, or the batch too small?)")
    assert hmc.endswith("(step size too large?)")
    vi, sgld = (F.above_half_dim(310.0, 10.0, 4, F.sampler_kind(n)) for n in ("vi", "sgld"))
    assert "q does not fit the tempered posterior" in vi and "step size" not in vi
    assert "not sampling the tempered posterior (step size too large, or the batch too small?)" in sgld
    assert F.unconverged(1.3, None, None, "independent").endswith(
        "the independent fits disagree (more optimisation steps or a lower learning rate)")
    trending = _healthy(5, draws=600) + np.linspace(0.0, 2.0, 600)
    assert "more burn-in" not in F.drift(trending, "independent") and "more burn-in" in F.drift(trending, "minibatch")
    shifted = _healthy(7, draws=500)
    shifted[2] += 3.0
    assert F.outlier_chains(shifted, kind="independent").endswith("one fit converged elsewhere (more optimisation "
                                                                  "steps or a lower learning rate?)")
    assert F.outlier_chains(shifted, kind="minibatch").endswith("(longer warm-up or a smaller step?)")
    # Through the stored file: the sampler's name in its attributes picks the advice.
    fl = sampler_metrics(make_idata("vi", np.random.default_rng(4), llc=spiky))["flags"]
    assert "a stray component" in fl[_codes(fl).index("excess_variance")]


def _quadratic_draws(rng: np.random.Generator, h: np.ndarray, nbeta: float, gamma: float, chains: int = 4,
                     draws: int = 500, proj: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Exact i.i.d. draws of the localized posterior of sum h w^2 / 2: lambda-hat draws, theta projections."""
    w = rng.standard_normal((chains, draws, h.size)) / np.sqrt(nbeta * h + gamma)
    return nbeta * 0.5 * (h * w**2).sum(-1), w @ (rng.standard_normal((h.size, proj)) / np.sqrt(h.size))


def _localizer(llc: np.ndarray, theta: np.ndarray | None, gamma: float = 100.0, nbeta: float = 100.0) -> str | None:
    se = float(llc.std(ddof=1)) / np.sqrt(llc.size)  # i.i.d. draws
    return F.localizer(llc, se, theta, gamma, nbeta)


def test_localizer_fires_where_gamma_sets_lambda_hat():
    rng = np.random.default_rng(21)
    nbeta, gamma, d = 100.0, 100.0, 50
    # The loss dominates half the directions (n*beta h / gamma from 1e-3 to 1e3): Var/lambda-hat ~ 0.86.
    assert _localizer(*_quadratic_draws(rng, np.logspace(-3, 3, d), nbeta, gamma)) is None
    # Every s_i = n*beta h / (n*beta h + gamma) = 0.12 (above the 0.1 threshold): quiet; 0.02: flagged.
    for s, fires in ((0.12, False), (0.02, True)):
        h = np.full(d, gamma * s / (nbeta * (1 - s)))
        assert (_localizer(*_quadratic_draws(rng, h, nbeta, gamma)) is not None) == fires, s
    # Every h tiny (n*beta h << gamma): lambda-hat = 2.5e-3 is the localizer's; the message says what to change.
    llc, theta = _quadratic_draws(rng, np.full(d, 1e-6), nbeta, gamma)
    fl = _localizer(llc, theta)
    exact = theory.quadratic_learning_coefficient(d, 1000, 0.1, gamma, [1e-6] * d)
    assert abs(llc.mean() - exact) < 0.05 * exact
    assert fl.startswith("localizer: the chains spread as far as the localizer alone allows (γ·E[θ²] = ")
    assert "grows as (nβ)^1.00" in fl and "λ̂ measures nβ/γ = 1, not the loss" in fl
    assert fl.endswith("lower posterior.gamma (now 100) or raise n·β (posterior.beta0)")
    # A sampler that barely moves also gives a small lambda-hat with a small variance, but its
    # chains do not reach the localizer's width: not the localizer's doing.
    assert _localizer(llc, 0.1 * theta) is None
    assert _localizer(llc, None) is None and _localizer(llc, theta, gamma=0.0) is None


def test_localizer_flag_from_the_stored_file_and_in_memory():
    rng = np.random.default_rng(22)
    gamma, nbeta = 50.0, 100.0  # synthetic_runs.ATTRS, NBETA
    llc, theta = _quadratic_draws(rng, np.full(20, 1e-5), nbeta, gamma)
    idata = make_idata("hmc", rng, llc=llc, theta=theta, extra_attrs={"analytic_llc": None})
    assert _codes(sampler_metrics(idata)["flags"]) == ["localizer"]
    # The synthetic runs' default theta (sd 0.1: gamma * E[theta^2] = 0.5) with a healthy lambda-hat: quiet.
    assert _flags(_healthy(23), analytic_llc=None) == []
    # A diverged chain's theta is dropped with its lambda-hat draws.
    theta[1] = np.nan
    idata = make_idata("hmc", rng, llc=llc, theta=theta, extra_attrs={"analytic_llc": None})
    m = sampler_metrics(idata)
    assert _codes(m["flags"]) == ["diverged", "localizer"]


def test_samplers_that_disagree_name_each_other():
    # Issue 11's full preset on the H100: SGLD 28.17 +- 0.10, HMC 27.67 +- 0.06.
    metrics = {"sgld": {"llc_mean": 28.17, "llc_se": 0.10, "flags": []},
               "hmc": {"llc_mean": 27.67, "llc_se": 0.06, "flags": ["drift: x"]},
               "mclmc": {"llc_mean": 27.70, "llc_se": 0.05, "flags": []},
               "vi": {"llc_mean": None, "llc_se": None, "flags": []}}
    F.add_cross_sampler_flags(metrics)
    F.add_cross_sampler_flags(metrics)  # idempotent
    assert _codes(metrics["sgld"]["flags"]) == ["disagree"]
    assert "hmc 27.67 ± 0.06 (4.3 SE)" in metrics["sgld"]["flags"][0] and "mclmc" in metrics["sgld"]["flags"][0]
    assert _codes(metrics["hmc"]["flags"]) == ["drift", "disagree"] and "sgld" in metrics["hmc"]["flags"][1]
    assert "mclmc" not in metrics["hmc"]["flags"][1]
    assert metrics["vi"]["flags"] == []
    joined = "; ".join(metrics["hmc"]["flags"] + ["outlier_chain: chain 1 at 3 (6 scales); chain 2 at 4 (7 scales)"])
    assert F.codes_in(joined) == ["drift", "disagree", "outlier_chain"]
    # The quick preset's default run: 9.93 +- 0.117, 9.84 +- 0.089, 9.78 +- 0.044 agree.
    quiet = {"sgld": {"llc_mean": 9.933, "llc_se": 0.117}, "hmc": {"llc_mean": 9.838, "llc_se": 0.089},
             "mclmc": {"llc_mean": 9.777, "llc_se": 0.044}}
    assert F.cross_sampler_flags(quiet) == {"sgld": [], "hmc": [], "mclmc": []}


def test_flags_stored_in_netcdf_and_reproduced_by_analyze(tmp_path):
    from llc.posthoc.analyze import analyze_run

    rng = np.random.default_rng(9)
    spiky = _healthy(9)
    spiky[:, ::40] += 300.0
    idatas = {"sgld": make_idata("sgld", rng, llc=spiky), "hmc": make_idata("hmc", rng, llc=_healthy(10))}
    run = write_run(tmp_path / "run", idatas)
    saved = json.loads((run / "metrics.json").read_text())["samplers"]
    assert "excess_variance" in _codes(saved["sgld"]["flags"]) and "disagree" in _codes(saved["hmc"]["flags"])
    assert stored_flags(load_netcdf(run / "sgld.nc")) == saved["sgld"]["flags"]
    res = analyze_run(run, plots=["running_llc"], out=tmp_path / "out")
    assert res["differences"] == []
    assert res["metrics"]["samplers"]["hmc"]["flags"] == saved["hmc"]["flags"]
    snippet = (tmp_path / "out" / "README_snippet.md").read_text()
    sgld_row = next(line for line in snippet.splitlines() if line.startswith("| sgld |"))
    assert "| ⚠ " in sgld_row and "excess_variance" in sgld_row and "- sgld: excess_variance:" in snippet


def _render(table) -> str:
    console = Console(record=True, width=250)
    console.print(table)
    return console.export_text()


def test_tables_never_show_a_flagged_row_clean():
    from llc.console import result_table
    from llc.posthoc.analyze import metrics_tables

    fl = ["excess_variance: Var of the λ̂ draws is 163× λ̂"]
    record = {"run_id": "r1", "target": {"id": "t", "kind": "mlp", "d": 967, "n": 1024, "analytic_llc": None},
              "posterior": {"nbeta": 147.7, "gamma": 100.0},
              "samplers": {"sgld": {"llc_mean": 74.2, "llc_se": 3.3, "ess": 1084.0, "rhat": 1.001, "wall_s": 3.7,
                                    "fde": 6000.0, "diverged_chains": 0, "flags": fl},
                           "hmc": {"llc_mean": 9.8, "llc_se": 0.09, "ess": 418.0, "rhat": 1.003, "wall_s": 9.6,
                                   "fde": 32000.0, "diverged_chains": 0, "flags": []}}}
    table = result_table(record)
    text = _render(table)
    sgld_row = next(line for line in text.splitlines() if "sgld" in line and "74.2" in line)
    hmc_row = next(line for line in text.splitlines() if line.lstrip("│ ").startswith("hmc"))
    assert "⚠ excess_variance" in sgld_row and "ok" in hmc_row and "⚠" not in hmc_row
    assert "sgld: excess_variance: Var of the λ̂ draws is 163× λ̂" in text
    assert table.rows[0].style == "red" and table.rows[1].style is None
    est, _ = metrics_tables({"run_id": "r1", "samplers": record["samplers"]})
    text = _render(est)
    assert "⚠ excess_variance" in text and "sgld: excess_variance" in text and est.rows[0].style == "red"


def test_sweep_csv_has_a_flags_column():
    from llc.pipeline import sweep
    from llc.pipeline.backends import DONE, Outcome

    point = sweep.plan_sweep(sweep.space_from_dict({"samplers": ["sgld", "hmc"], "base": {"target.kind": "quadratic"},
                                                    "grid": [{"target.quad_dim": [4]}]}))[0]
    summary = {"llc_mean": 1.0, "llc_se": 0.1, "ess": 50.0, "rhat": 1.0, "wall_s": 2.0, "fde": 100.0,
               "diverged_chains": 0}
    record = {"run_id": point.run_id, "artifacts": "", "target": {"d": 4}, "posterior": {},
              "samplers": {"sgld": {**summary, "flags": ["above_d_half: a, b", "drift: c"]},
                           "hmc": {**summary, "flags": []}}}
    rows = sweep.result_rows(point, Outcome(0, point.run_id, DONE, record))
    assert [r["flags"] for r in rows] == ["above_d_half: a, b; drift: c", ""]
    assert ATTRS["dim"] == 6  # the synthetic runs' d (used by test_above_half_dim)


def test_cli_tables_do_not_import_arviz():
    # `llc run --backend modal` fails in one line before any work; importing the tables' helpers
    # must not pull in ArviZ (whose import prints a FutureWarning).
    import subprocess
    import sys

    code_ = "import sys, llc.console; print('arviz' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code_], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr


@pytest.mark.slow
def test_unconverged_rates_match_the_documented_ones():
    # Re-measures two cases of benchmarks/flag_rates.py with another seed (llc/analysis/flags.py
    # quotes them): a correct run with a true ESS of 410 (8 chains x 2000 draws, AR(1), rho 0.95),
    # the worst of those with a true ESS >= 300, and one of the grey zone, true ESS 161 (8 chains x
    # 2000 draws, chi-square-type, rho 0.99).
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "flag_rates", Path(__file__).resolve().parent.parent / "benchmarks" / "flag_rates.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rng = np.random.default_rng(2024)
    reps = 400
    for kind, rho, documented in (("ar1", 0.95, 0.0025), ("chisq", 0.99, 0.44)):
        rate = bench.judge(bench.chains_of(kind, rng, reps, 8, 2000, rho))[0]
        # Two independent binomial estimates of the same rate: their difference has sd
        # sqrt(2 p (1 - p) / reps); 4 sd, with p at least 1 % so that a rate near 0 has room.
        p = max(documented, 0.01)
        assert abs(rate - documented) < 4 * np.sqrt(2 * p * (1 - p) / reps), (kind, rho, rate, documented)


def test_joined_flags_split_back_whole_though_messages_hold_semicolons():
    flags = ["unconverged: bulk ESS = 50 < 100: too few effective draws",
             "localizer: λ̂ grows as (nβ)^1.00 (a learning coefficient does not grow with nβ): lower γ; or raise nβ",
             "drift: trend"]
    assert F.split_flags("; ".join(flags)) == flags
    assert F.split_flags("") == [] and F.split_flags(None) == []
