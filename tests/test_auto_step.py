"""step_size=auto: a batched grid of step sizes in units of the posterior's stiffness, llc.analysis.health's
rule on it, the choice recorded everywhere; the dimension-aware MALA check (``step_bias``)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from llc.analysis import flags
from llc.analysis.health import STEP_BIAS_REL, isotropic_mala_acceptance, mala_floor
from llc.config import AUTO, ConfigError, build_config, target_n
from llc.engine import autostep
from llc.pipeline.experiment import run_experiment

# Exact lambda at finite n*beta with the localizer (llc.theory); the spread spectrum is the issue's
# case where SGLD at eps = 1e-4 read +11 % (12.6 SE) with no flag.
QUAD4 = ["target.kind=quadratic", "target.quadratic.dim=4", "samplers=sgld", "sgld.draws=1000"]
SPREAD = ",".join(f"{v:.4g}" for v in np.geomspace(1e-3, 22.0, 14)) + ",0"
QUAD15 = ["target.kind=quadratic", "target.quadratic.dim=15", f"target.quadratic.eigenvalues={SPREAD}",
          "samplers=sgld", "sgld.draws=1000"]


def test_auto_is_the_minibatch_default_and_a_number_wins():
    cfg = build_config("quick")
    assert cfg.sgld.step_size == cfg.sghmc.step_size == cfg.sgnht.step_size == AUTO
    assert build_config("quick", ["sgld.step_size=3e-4"]).sgld.step_size == 3e-4
    assert build_config("quick", ["sgld.step_size=Auto"]).sgld.step_size == AUTO
    with pytest.raises(ConfigError, match=r"^sgld.step_size: cannot parse 'fast' as a number or auto$"):
        build_config("quick", ["sgld.step_size=fast"])
    with pytest.raises(ConfigError, match=r"^sghmc.step_size: must be > 0.0, got -0.1$"):
        build_config("quick", ["sghmc.step_size=-0.1"])


def test_stiffness_is_the_largest_eigenvalue_of_the_tempered_curvature():
    import jax
    import jax.numpy as jnp

    from llc.engine.curvature import stiffness

    h = np.linspace(0.0, 22.0, 15)
    loss = lambda w, x, y: 0.5 * jnp.sum(h * w["a"] ** 2)  # noqa: E731
    w, data = {"a": jnp.zeros(15)}, (jnp.zeros((3, 1)), jnp.zeros(3))
    lam = float(stiffness(loss, w, data, 10.0, 3.0, jax.random.key(0), iters=200))
    assert lam == pytest.approx(10.0 * 22.0 + 3.0, rel=1e-6)
    metric = {"a": jnp.full(15, 0.25)}  # M^(1/2) (nbeta H + gamma) M^(1/2)
    assert float(stiffness(loss, w, data, 10.0, 3.0, jax.random.key(1), metric=metric, iters=200)) == \
        pytest.approx(0.25 * 223.0, rel=1e-6)


@pytest.mark.parametrize("dim,h", [(4, 1.0), (15, 0.3), (1000, 0.1), (1000, 0.3)])
def test_isotropic_mala_acceptance_matches_simulation(dim, h):
    """The closed form against the chain itself: x at SGLD's stationary law, one move, MALA's test."""
    rng = np.random.default_rng(0)
    reps = 4000
    x = rng.standard_normal((reps, dim)) / np.sqrt(1 - h / 4)
    xp = (1 - h / 2) * x + np.sqrt(h) * rng.standard_normal((reps, dim))
    log_q = lambda to, frm: -((to - (1 - h / 2) * frm) ** 2).sum(1) / (2 * h)  # noqa: E731
    log_a = -0.5 * (xp**2).sum(1) + 0.5 * (x**2).sum(1) + log_q(x, xp) - log_q(xp, x)
    acc = np.exp(np.minimum(log_a, 0.0))
    # 0.01: the normal approximation of the sum over coordinates (its documented accuracy), plus MC error
    assert isotropic_mala_acceptance(dim, h) == pytest.approx(acc.mean(), abs=0.01 + 3 * acc.std() / np.sqrt(reps))


def test_mala_floor_falls_with_dimension():
    floors = [mala_floor(d) for d in (4, 100, 16_000)]
    assert floors == sorted(floors, reverse=True) and floors[0] > 0.95 and floors[-1] < 0.7
    assert mala_floor(16_000) == isotropic_mala_acceptance(16_000, 4 * STEP_BIAS_REL)


@pytest.fixture(scope="module")
def quad4_auto(tmp_path_factory):
    root = tmp_path_factory.mktemp("auto")
    cfg = build_config(None, QUAD4)
    return root, cfg, run_experiment(cfg, root)


def test_auto_on_the_quadratic_is_exact_within_3se_and_recorded_everywhere(quad4_auto):
    import arviz as az

    from llc.store.artifacts import nc_attrs

    root, cfg, result = quad4_auto
    s = result["samplers"]["sgld"]
    exact = result["target"]["analytic_llc"]
    assert abs(s["llc_mean"] - exact) < 3 * s["llc_se"], s
    assert not s["flags"], s["flags"]
    # --json / sweep CSV (the result record), metrics.json, NetCDF
    assert s["step_size"] > 0 and s["step_size_rule"].startswith("sgld.step_size=auto chose")
    info = json.loads((root / result["run_id"] / "metrics.json").read_text())["samplers"]["sgld"]["info"]
    assert info["step_size"] == s["step_size"] and info["step_size"] in info["auto_step_grid"]
    assert len(info["auto_step_grid"]) == len(autostep.FACTORS) == len(info["auto_step_llc"])
    lam = info["auto_step_stiffness"]
    assert np.allclose(np.array(info["auto_step_grid"]) * lam, autostep.FACTORS)
    idata = az.from_netcdf(root / result["run_id"] / "sgld.nc")
    attrs = nc_attrs(idata)
    assert attrs["info_step_size"] == s["step_size"] and attrs["info_step_size_rule"] == s["step_size_rule"]
    assert idata.sampler_info["auto_step_grid"].dims == ("auto_point",)


def test_the_chosen_point_is_the_run_it_would_be_alone(quad4_auto):
    root, cfg, result = quad4_auto
    s = result["samplers"]["sgld"]
    alone = run_experiment(build_config(None, QUAD4 + [f"sgld.step_size={s['step_size']!r}"]), root)["samplers"]["sgld"]
    assert alone["llc_mean"] == s["llc_mean"] and alone["llc_se"] == s["llc_se"]


def test_auto_is_unbiased_where_the_old_default_step_is_not(tmp_path):
    """The anisotropic quadratic (Hessian eigenvalues 0..22): the old eps = 1e-4 read +11 %; auto is within
    3 SE of the exact value, and the larger grid points it passed over are flagged or off its plateau."""
    result = run_experiment(build_config(None, QUAD15), tmp_path)
    s = result["samplers"]["sgld"]
    exact = result["target"]["analytic_llc"]
    assert abs(s["llc_mean"] - exact) < 3 * s["llc_se"], (s, exact)
    info = json.loads((tmp_path / result["run_id"] / "metrics.json").read_text())["samplers"]["sgld"]["info"]
    biggest = int(np.argmax(info["auto_step_grid"]))
    assert info["auto_step_llc"][biggest] > exact * (1 + STEP_BIAS_REL)  # the grid does reach a biased step
    assert info["step_size"] < info["auto_step_grid"][biggest]


def test_step_bias_flags_a_large_explicit_step_and_not_a_small_one(tmp_path):
    """c = eps * lam_max: 1.0 inflates lambda-hat by ~25 % on the isotropic quadratic, 0.03 by < 1 %."""
    n = target_n(build_config(None, QUAD4))
    lam = float(n / np.log(n) + 100.0)  # n*beta * 1 + gamma (beta = 1/log n, gamma 100)
    big = run_experiment(build_config(None, QUAD4 + [f"sgld.step_size={1.0 / lam!r}"]), tmp_path)["samplers"]["sgld"]
    small = run_experiment(build_config(None, QUAD4 + [f"sgld.step_size={0.03 / lam!r}"]), tmp_path)["samplers"]["sgld"]
    assert "step_bias" in flags.codes_in("; ".join(big["flags"]))
    assert "step_bias" not in flags.codes_in("; ".join(small["flags"]))


def test_no_healthy_grid_point_is_flagged_with_the_reasons(tmp_path):
    """Too few draws for any step to pass R-hat < 1.01: the best-mixed point stands in, flagged auto_step."""
    result = run_experiment(build_config(None, QUAD4[:-1] + ["sgld.draws=40", "sgld.burnin=5", "sgld.eval_every=1",
                                                             "sgld.chains=2"]), tmp_path)
    s = result["samplers"]["sgld"]
    [flag] = [f for f in s["flags"] if f.startswith("auto_step:")]
    assert "no step size on the grid" in flag and "best-mixed" in flag


def test_calibrate_with_an_auto_base_grids_the_auto_steps(tmp_path):
    from llc.pipeline import calibrate as cal

    plan = cal.plan(build_config(None, QUAD4[:2] + ["sgld.draws=300"]), "sgld")
    assert plan.axes["sgld.step_size"] == (AUTO,)
    summary = cal.calibrate(plan, tmp_path)
    steps = sorted({r["sgld.step_size"] for r in summary["rows"]})
    assert len(steps) == len(autostep.FACTORS) and summary["points"] == len(steps) * 3  # x 3 gammas
    assert all(isinstance(v, float) for v in steps)


def test_preconditioned_sgld_scales_its_grid_in_the_preconditioners_metric(tmp_path):
    """RMSProp SGLD moves eps * G * grad with G = 1/(sqrt(v) + eps'): its stiffness is measured in that
    metric, so its grid differs from plain SGLD's on the same posterior; each records its choice."""
    runs = {}
    for precond in ("none", "rmsprop"):
        result = run_experiment(build_config(None, QUAD4[:-1] + ["sgld.draws=200", f"sgld.precond={precond}"]),
                                tmp_path)
        info = json.loads((tmp_path / result["run_id"] / "metrics.json").read_text())["samplers"]["sgld"]["info"]
        runs[precond] = info
        post = result["posterior"]
        assert info["step_size"] in info["auto_step_grid"] and info["step_size_rule"].startswith("sgld.step_size=auto")
    plain, rms = runs["none"]["auto_step_stiffness"], runs["rmsprop"]["auto_step_stiffness"]
    assert plain == pytest.approx(post["nbeta"] + post["gamma"], rel=1e-3)  # n*beta * 1 + gamma, exact here
    assert not np.isclose(rms, plain, rtol=0.1)  # G rescales the curvature it feels


def test_extrapolation_to_a_zero_step_removes_a_linear_bias():
    """Richardson on two grid points: a bias linear in the step is removed exactly, the SE propagates, and
    the metrics carry the extrapolated value with the step's own beside it."""
    from llc.analysis.health import apply_extrapolation, extrapolate_to_zero_step

    low = {"step_size": 1e-4, "llc_mean": 10.0 * (1 + 0.1), "llc_se": 0.1}
    high = {"step_size": 3e-4, "llc_mean": 10.0 * (1 + 0.3), "llc_se": 0.05}
    value, se = extrapolate_to_zero_step(low, high)
    assert value == pytest.approx(10.0) and se == pytest.approx(np.hypot(3 * 0.1, 0.05) / 2)
    metrics = {"llc_mean": 11.0, "llc_se": 0.1}
    info = {"auto_step_extrapolated": 1, "llc_extrapolated": value, "llc_extrapolated_se": se}
    out = apply_extrapolation(dict(metrics), info)
    assert out["llc_mean"] == value and out["llc_se"] == se
    assert out["llc_mean_at_step"] == 11.0 and out["llc_se_at_step"] == 0.1
    assert apply_extrapolation(dict(metrics), {"auto_step_extrapolated": 0}) == metrics


def test_a_grid_whose_smallest_step_diverges_is_extended_below():
    """A quartic bowl is flat at w* (stiffness there = gamma) and steep where the chains go: the grid
    from w*'s stiffness diverges at every point, the grid below it mixes, and the rule picks from it."""
    import jax.numpy as jnp

    import llc

    n = 100
    x = np.zeros((n, 1))
    nbeta = n / np.log(n)
    loss = lambda params, batch: (1000.0 / nbeta) * jnp.sum(params["w"] ** 4)  # noqa: E731
    est = llc.estimate(loss, {"w": np.zeros(4)}, x, x, sampler="sgld",
                       sampler_config={"draws": 400}, posterior={"gamma": 1.0})
    info = est.output.info
    grid = info["auto_step_grid"]
    assert len(grid) == 2 * len(autostep.FACTORS)
    assert np.allclose(grid[:4], np.asarray(grid[4:]) * autostep.LOWER_GRID_SHIFT)
    assert np.isnan(info["auto_step_llc"][4])  # the w*-scaled grid's smallest step diverged
    assert info["auto_step_chosen_healthy"] == 1 and est.metrics["step_size"] < grid[4]
    assert "after its smallest step diverged" in est.metrics["step_size_rule"]
    # A quartic in each of 4 coordinates: lambda = 4 * 1/4 = 1 as n*beta grows; at finite n*beta the
    # localizer (gamma = 1 against a curvature ~ 12*1000*E[w^2] ~ 400) lowers it by well under 1 %.
    assert abs(est.llc_mean - 1.0) < 4 * est.llc_se + 0.03, (est.llc_mean, est.llc_se)
    assert not est.metrics["flags"], est.metrics["flags"]


def test_rmsprop_grid_is_not_set_by_coordinates_the_loss_leaves_alone():
    """Parameters the loss never reads have no gradient at w*: RMSProp's G there is what the localizer's
    force makes it (1/sqrt(gamma)), not 1/eps, so the grid is not 1e-10 and the estimate mixes. The loss
    is an exact quadratic (least squares), so lambda = sum_i s_i / 2 with s_i = nb h_i / (nb h_i + gamma)."""
    import jax.numpy as jnp

    import llc

    rng = np.random.default_rng(0)
    n, d = 2000, 4
    x = rng.standard_normal((n, d))
    y = x @ rng.standard_normal(d) + rng.standard_normal(n)
    w_star = np.linalg.lstsq(x, y, rcond=None)[0]
    loss = lambda p, batch: 0.5 * jnp.mean((batch[0] @ p["w"] - batch[1]) ** 2)  # noqa: E731
    params = {"w": w_star, "unused": np.zeros(3)}
    est = llc.estimate(loss, params, x, y, sampler="sgld", posterior={"gamma": 100.0},
                       sampler_config={"precond": "rmsprop", "draws": 1000})
    nb = est.n * est.beta
    h = np.linalg.eigvalsh(x.T @ x / n)
    exact = float(np.sum(nb * h / (nb * h + est.gamma)) / 2)
    info = est.output.info
    assert info["auto_step_stiffness"] < 1e4, info["auto_step_stiffness"]  # gamma / eps = 1e10 before
    assert info["auto_step_chosen_healthy"] == 1, est.metrics["step_size_rule"]
    assert abs(est.llc_mean - exact) < 4 * est.llc_se + 0.02 * exact, (est.llc_mean, est.llc_se, exact)
