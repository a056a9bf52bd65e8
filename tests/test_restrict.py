"""Weight restriction (refined LLCs): patterns, masks, known answers, families batched as one program."""

from __future__ import annotations

import csv
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from typer.testing import CliRunner

import llc
from llc.cli import app
from llc.config import ConfigError, build_config
from llc.engine import restrict as R
from llc.engine.targets import modular

runner = CliRunner()


def _half_norm(p, batch):
    # 1/2 ||theta||^2, whatever the data: lambda is exact at any n*beta, gamma.
    return 0.5 * (jnp.sum(p["a"] ** 2) + jnp.sum(p["b"] ** 2)) + 0.0 * jnp.mean(batch[0])


DATA = (np.zeros((1000, 1)), np.zeros((1000, 1)))
THETA = {"a": np.zeros(3), "b": np.zeros(5)}


def _exact(est, k: int) -> float:
    nbeta = est.n * est.beta
    return 0.5 * k * nbeta / (nbeta + est.gamma)


def test_grok_transformer_heads_layers_and_errors():
    tree = modular.template(build_config("grok"))
    heads = R.family(tree, "per-head")
    assert [g for g in heads if "@" in g[0]] == [(f"attn@head{h}",) for h in range(4)]
    # a head: its query/key/value kernel columns and biases, and its rows of the output kernel
    assert R.free_dim(R.mask(tree, ("attn@head1",))) == 3 * (128 * 32 + 32) + 32 * 128
    layers = R.family(tree, "per-layer")
    assert [R.label(g) for g in layers] == ["attn", "embed", "mlp_in", "mlp_out", "pos_embed", "unembed"]
    total = sum(np.size(leaf) for leaf in jax.tree.leaves(tree))
    assert sum(R.free_dim(R.mask(tree, g)) for g in layers) == total  # the layers partition w
    # heads overlap nothing and leave only the shared output bias of attention out
    per_head = sum(R.free_dim(R.mask(tree, g)) for g in heads)
    assert per_head == total - 128
    assert R.free_dim(R.mask(tree, ("attn/query/kernel[:,1]",))) == 128 * 32
    for bad, says in ((("nope",), "matches no parameter"), (("attn@head4",), "heads 0..3"),
                      (("mlp_in@head0",), "not a multi-head attention"), (("attn/query/kernel[9,9,9]",), "out of range"),
                      (("attn/query/kernel[:,1:1]",), "selects no coordinate")):
        with pytest.raises(ConfigError, match=says) as info:
            R.as_mask(tree, bad)
        assert "\n" not in str(info.value) and str(info.value).startswith(("posterior.restrict", "restrict"))


def test_config_syntax_is_checked_before_any_work():
    assert build_config("quick", ["posterior.restrict=attn/query/kernel[:,1],b"]).posterior.restrict == \
        ("attn/query/kernel[:,1]", "b")
    for value, says in (("per-layer,a", "stands alone"), ("x[a]", "cannot read the index"), ("a@h1", "MODULE@headN")):
        with pytest.raises(ConfigError, match=says):
            build_config("quick", [f"posterior.restrict={value}"])


@pytest.mark.parametrize("sampler", ["sgld", "hmc"])
def test_known_answer_on_half_norm_restricted_to_k_of_d(sampler):
    jax.config.update("jax_enable_x64", True)
    est = llc.estimate(_half_norm, THETA, *DATA, sampler=sampler, restrict=["a"])
    exact = _exact(est, 3)
    assert est.metrics["dim"] == 3 and est.metrics["restrict"] == "a"
    assert abs(est.llc_mean - exact) < 3 * est.llc_se, (est.llc_mean, est.llc_se, exact)
    assert not any(f.startswith("above_d_half") for f in est.flags)


def test_mask_pytree_and_function_of_the_path_mean_the_same():
    by_mask = llc.estimate(_half_norm, THETA, *DATA, restrict={"a": np.zeros(3, bool), "b": np.ones(5, bool)})
    by_function = llc.estimate(_half_norm, THETA, *DATA, restrict=lambda path: path.startswith("b"))
    by_glob = llc.estimate(_half_norm, THETA, *DATA, restrict="b")
    assert by_mask.llc_mean == by_function.llc_mean == by_glob.llc_mean
    assert abs(by_glob.llc_mean - _exact(by_glob, 5)) < 3 * by_glob.llc_se


def test_family_is_batched_and_equals_each_group_alone():
    family = llc.estimate(_half_norm, THETA, *DATA, restrict="per-layer")
    assert list(family) == ["a", "b"]
    for name, k in (("a", 3), ("b", 5)):
        alone = llc.estimate(_half_norm, THETA, *DATA, restrict=[name])
        # One program vmapped over both groups with each group's own random stream: the same draws
        # as the group alone (to float rounding, which a different batch width may reorder).
        np.testing.assert_allclose(family[name].output.Ln, alone.output.Ln, rtol=1e-6, atol=0)
        assert abs(family[name].llc_mean - _exact(family[name], k)) < 3 * family[name].llc_se


def test_sgld_holds_the_other_coordinates_at_w_star():
    from llc.config import SGLDConfig
    from llc.engine.posterior import Problem, make_posterior, problem_arrays
    from llc.engine.samplers import sgld

    from llc.config import PosteriorConfig

    post = make_posterior(lambda p, x, y: _half_norm(p, (x, y)), {"a": np.ones(3), "b": np.ones(5)}, *DATA,
                          PosteriorConfig(), restrict=("a",))
    problem = Problem(post.loss_fn, problem_arrays(post), post.n, None)
    alg = sgld.make(SGLDConfig(step_size=1e-3, batch_size=10, mala_check=False))
    state = alg.init(jax.random.key(0), post.w_star, problem, alg.params)
    for i in range(5):
        state, _ = alg.step(jax.random.key(i), state, problem, alg.params)
    assert np.array_equal(state.position["b"], np.ones(5))  # exactly w*: no noise, no drift
    assert not np.allclose(state.position["a"], np.ones(3))


def test_leaves_every_setting_holds_are_skipped_without_changing_a_draw():
    """A batch whose every restriction holds a leaf whole at w* compiles that leaf as a constant (no
    gradient through it, no noise drawn): the same chain, step for step, as the masked program."""
    from llc.config import PosteriorConfig, SGLDConfig
    from llc.engine.posterior import Problem, frozen_leaves, make_posterior, problem_arrays
    from llc.engine.samplers import sgld

    def post(restrict):
        return make_posterior(lambda p, x, y: _half_norm(p, (x, y)), {"a": np.ones(3), "b": np.ones(5)}, *DATA,
                              PosteriorConfig(), restrict=restrict)

    only_a, only_b = post(("a",)), post(("b",))
    assert frozen_leaves([only_a]) == (False, True)
    assert frozen_leaves([only_a, only_a]) == (False, True)
    assert frozen_leaves([only_a, only_b]) is None  # no leaf held by both
    assert frozen_leaves([post(None)]) is None
    alg = sgld.make(SGLDConfig(step_size=1e-3, batch_size=10, mala_check=False))
    masked = Problem(only_a.loss_fn, problem_arrays(only_a), only_a.n, None)
    skipped = Problem(only_a.loss_fn, problem_arrays(only_a), only_a.n, None, frozen_leaves([only_a]))
    states = [alg.init(jax.random.key(0), only_a.w_star, p, alg.params) for p in (masked, skipped)]
    for i in range(5):
        states = [alg.step(jax.random.key(i), s, p, alg.params)[0]
                  for s, p in zip(states, (masked, skipped))]
    for leaf in ("a", "b"):
        np.testing.assert_array_equal(states[0].position[leaf], states[1].position[leaf])


def _two_layer_linear(seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(400, 3))
    w1, w2 = rng.normal(size=(3, 2)), rng.normal(size=(2, 3))
    y = x @ w1 @ w2 + 0.1 * rng.normal(size=(400, 3))

    def loss(p, batch):
        bx, by = batch
        return 0.5 * jnp.mean(jnp.sum((by - bx @ p["w1"] @ p["w2"]) ** 2, axis=-1))

    return loss, {"w1": w1, "w2": w2}, x, y


@pytest.mark.parametrize("layer", ["w1", "w2"])
def test_dln_one_layer_is_the_reduced_linear_model(layer):
    """With the other layer fixed, a linear network is linear in the free layer, so L_n is exactly
    quadratic there: lambda = 1/2 sum_i n*beta*h_i / (n*beta*h_i + gamma) over the eigenvalues h_i of
    the reduced problem's Hessian (taken at any point: it is constant)."""
    jax.config.update("jax_enable_x64", True)
    loss, params, x, y = _two_layer_linear()
    est = llc.estimate(loss, params, x, y, sampler="hmc", restrict=[layer])
    flat = params[layer].ravel()

    def reduced(v):
        return loss({**params, layer: v.reshape(params[layer].shape)}, (x, y))

    h = np.linalg.eigvalsh(np.asarray(jax.hessian(reduced)(jnp.asarray(flat))))
    nbeta = est.n * est.beta
    exact = 0.5 * float(np.sum(nbeta * h / (nbeta * h + est.gamma)))
    assert est.metrics["dim"] == 6
    assert abs(est.llc_mean - exact) < 3 * est.llc_se, (est.llc_mean, est.llc_se, exact)


def test_trajectory_family_rows_figure_and_equality_with_one_group(tmp_path):
    loss, params, x, y = _two_layer_linear()
    checkpoints = [{k: v * s for k, v in params.items()} for s in (0.9, 1.0)]
    small = {"draws": 60, "burnin": 20, "chains": 2, "eval_every": 4, "batch_size": 64}
    family = llc.trajectory(loss, checkpoints, (x, y), sampler_config=small, restrict="per-layer",
                            out=tmp_path / "family")
    assert family.summary["groups"] == ["w1", "w2"]
    assert [(r["step"], r["group"]) for r in family.summary["rows"]] == [(0, "w1"), (0, "w2"), (1, "w1"), (1, "w2")]
    assert all(r["dim"] == 6 for r in family.summary["rows"])
    with open(tmp_path / "family" / "trajectory.csv", newline="") as fh:
        header = next(csv.reader(fh))
    assert header[:3] == ["step", "group", "dim"]
    import xarray as xr

    ds = xr.open_dataset(tmp_path / "family" / "trajectory.nc", engine="h5netcdf")
    assert ds["llc"].dims == ("step", "group", "chain", "draw") and list(ds["group"].values) == ["w1", "w2"]
    assert (tmp_path / "family" / "trajectory.png").stat().st_size > 0
    one = llc.trajectory(loss, checkpoints, (x, y), sampler_config=small, restrict=["w2"], out=tmp_path / "one")
    mine = [r["llc_mean"] for r in family.summary["rows"] if r["group"] == "w2"]
    # the same random stream per unit; batched with the other group's units only float rounding differs
    np.testing.assert_allclose(mine, one.llc_mean, rtol=1e-5)


@pytest.mark.parametrize("value, says", [("nope", "matches no parameter"), ("x[a]", "cannot read the index"),
                                         ("per-head", "per-head needs a multi-head attention")])
def test_cli_bad_restriction_is_one_line_exit_2(tmp_path, value, says):
    for command in (["run", "--preset", "quick"], ["trajectory", "--preset", "grok-tiny"],
                    ["calibrate", "--preset", "quick"]):
        result = runner.invoke(app, [*command, "--restrict", value, "--artifacts", str(tmp_path)])
        assert result.exit_code == 2, (command, result.output)
        assert says in result.output and "Traceback" not in result.output
    assert not any(tmp_path.iterdir())  # nothing trained or written


def test_calibrate_takes_one_group_not_a_family(tmp_path):
    result = runner.invoke(app, ["calibrate", "--preset", "grok-tiny", "--restrict", "per-layer",
                                 "--artifacts", str(tmp_path)])
    assert result.exit_code == 2 and "takes one restriction" in result.output


def test_run_family_prints_a_row_per_group_and_sums_to_the_layers(tmp_path):
    # the quick preset's MLP (layers 0, 1, 2), HMC only, short chains
    short = ["--samplers", "hmc", "--draws", "80", "--set", "hmc.warmup=60"]
    result = runner.invoke(app, ["run", "--preset", "quick", *short,
                                 "--restrict", "per-layer", "--artifacts", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    import json

    doc = json.loads(result.stdout.strip().splitlines()[-1])
    groups = [g["posterior"]["restrict"] for g in doc["groups"]]
    assert groups == [["0"], ["1"], ["2"]]
    dims = [g["posterior"]["dim"] for g in doc["groups"]]
    assert sum(dims) == doc["groups"][0]["target"]["d"]
    for g in doc["groups"]:
        m = g["samplers"]["hmc"]
        assert m["llc_mean"] is not None and 0 < m["llc_mean"] < g["posterior"]["dim"] / 2 + 3 * m["llc_se"]
    table = runner.invoke(app, ["run", "--preset", "quick", *short,
                                "--restrict", "per-layer", "--artifacts", str(tmp_path)])
    assert table.exit_code == 0 and "restricted LLCs" in table.output


@pytest.mark.slow  # the command of the criterion end to end; test_trajectory_family_... covers the logic
def test_cli_trajectory_per_layer_gives_one_curve_per_layer(tmp_path):
    small = ["training.steps=300", "training.checkpoints_log=3", "training.checkpoints_linear=2", "sgld.draws=30",
             "sgld.burnin=10", "sgld.eval_every=4", "sgld.chains=2"]
    result = runner.invoke(app, ["trajectory", "--preset", "grok-tiny", "--restrict", "per-layer",
                                 *[a for s in small for a in ("--set", s)], "--artifacts", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    import json

    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["groups"] == ["hidden_0", "out"]
    steps = sorted({r["step"] for r in summary["rows"]})
    assert len(summary["rows"]) == 2 * len(steps)
    for r in summary["rows"]:
        assert r["llc_mean"] is not None and math.isfinite(r["llc_mean"])


# --------------------------------------------------------------------------- data refinement

TINY_GROK = ["training.steps=200", "sgld.draws=60", "sgld.burnin=10", "sgld.chains=2", "sgld.eval_every=4"]


def test_data_refinement_selects_splits_and_filters(tmp_path):
    from llc.engine.targets import get_target, posterior_data
    from llc.engine.targets.modular import dataset, split

    cfg = build_config("grok-tiny", TINY_GROK)
    target = get_target(cfg, tmp_path)
    p = cfg.target.modular
    x_all, y_all = dataset(p.p, p.op, p.model)
    train, test = split(p.p, p.train_frac, p.split_seed)
    for data, rows in (("train", train), ("test", test), ("all", np.concatenate([train, test]))):
        x, y = posterior_data(target, build_config("grok-tiny", [*TINY_GROK, f"posterior.data={data}"]))
        np.testing.assert_array_equal(x, x_all[rows])
        np.testing.assert_array_equal(y, y_all[rows])
    x, y = posterior_data(target, build_config("grok-tiny", [*TINY_GROK, "posterior.data=test",
                                                             "posterior.data_filter=(a <= b) & (y % 2 == 0)"]))
    keep = (x_all[test, 0] <= x_all[test, 1]) & (y_all[test] % 2 == 0)
    np.testing.assert_array_equal(x, x_all[test][keep])
    with pytest.raises(ConfigError, match="keeps 0 of"):
        posterior_data(target, build_config("grok-tiny", [*TINY_GROK, "posterior.data_filter=a > 1000"]))


def test_data_refined_run_is_on_its_own_data_and_combines_with_restriction(tmp_path):
    result = runner.invoke(app, ["run", "--preset", "grok-tiny", *[a for s in TINY_GROK for a in ("--set", s)],
                                 "--set", "posterior.data=test", "--set", "posterior.data_filter=a <= b",
                                 "--restrict", "out", "--artifacts", str(tmp_path), "--json", "--figures", "none"])
    assert result.exit_code == 0, result.output
    import json

    record = json.loads(result.stdout.strip().splitlines()[-1])
    post = record["posterior"]
    p, frac = 41, 0.5
    n_test = p * p - round(frac * p * p)
    assert post["data"] == "test" and post["data_filter"] == "a <= b" and post["restrict"] == ["out"]
    assert 0.4 * n_test < post["n"] < 0.6 * n_test  # about half the test pairs have a <= b
    assert post["dim"] == 128 * 41 + 41
    from llc.store.artifacts import load_netcdf, nc_attrs

    attrs = nc_attrs(load_netcdf(f"{record['artifacts']}/sgld.nc"))
    assert attrs["posterior_data"] == "test" and attrs["posterior_data_filter"] == "a <= b"
    assert attrs["dim"] == 128 * 41 + 41 and attrs["restrict"] == "out"


@pytest.mark.parametrize("override, says", [("posterior.data_filter=open('x')", "uses Call"),
                                            ("posterior.data_filter=c < 1", "unknown name 'c'"),
                                            ("posterior.data=test", "needs a target with held-out data")])
def test_bad_data_refinement_is_one_line_before_work(tmp_path, override, says):
    preset = "quick" if override == "posterior.data=test" else "grok-tiny"
    result = runner.invoke(app, ["run", "--preset", preset, "--set", override, "--artifacts", str(tmp_path)])
    assert result.exit_code == 2 and says in result.output and "Traceback" not in result.output
    assert not any(tmp_path.iterdir())
