import json

import jax
import numpy as np
import pytest

from llc import theory
from llc.config import build_config
from llc.pipeline.sampling import enable_x64
from llc.engine.targets import (PrecisionError, TrainingDiverged, analytic_llc, get_target, load_checkpoints,
                                load_training_log, target_id)
from llc.engine.targets.mlp import build, count_params, student_sizes
from llc.engine.targets.training import checkpoint_steps

enable_x64()

SMALL_MLP = ["data.n_data=256", "target.mlp.in_dim=4", "target.mlp.target_params=120", "training.steps=300"]


def test_target_built_once_then_loaded(tmp_path, monkeypatch):
    cfg = build_config(None, SMALL_MLP)
    first = get_target(cfg, tmp_path)
    assert not first.cached
    path = tmp_path / "targets" / first.id
    meta = json.loads((path / "meta.json").read_text())
    for key in ("config", "d", "n", "dtype", "x64", "L0", "versions", "code_fingerprint", "erm"):
        assert key in meta
    assert (path / "data.npz").is_file() and (path / "params.npz").is_file()
    # The second request must not retrain: make training impossible and load.
    import llc.engine.targets as T
    monkeypatch.setattr(T, "train", lambda *a, **k: pytest.fail("target was rebuilt"))
    second = get_target(cfg, tmp_path)
    assert second.cached and second.id == first.id
    assert second.L0 == first.L0
    for a, b in zip(jax.tree.leaves(first.params), jax.tree.leaves(second.params)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(first.x, second.x)


def test_target_id_depends_on_target_fields_only():
    cfg = build_config(None, SMALL_MLP)
    assert target_id(cfg) == target_id(build_config(None, [*SMALL_MLP, "sgld.step_size=0.1", "seed=0"]))
    assert target_id(cfg) != target_id(build_config(None, [*SMALL_MLP, "data.noise=student_t"]))
    assert target_id(cfg) != target_id(build_config(None, [*SMALL_MLP, "target.seed=1"]))


def test_erm_reaches_a_minimum(tmp_path):
    cfg = build_config(None, SMALL_MLP)
    t = get_target(cfg, tmp_path)
    assert t.meta["erm"]["grad_norm"] < 1e-2
    assert t.d == count_params(student_sizes(cfg), bias=True)


def test_target_params_sizing():
    cfg = build_config(None, ["target.mlp.target_params=10000", "target.mlp.in_dim=32", "target.mlp.depth=2"])
    d = count_params(student_sizes(cfg), bias=True)
    assert abs(d - 10000) / 10000 < 0.02


@pytest.mark.parametrize("x_dist", ["gauss_iso", "gauss_aniso", "mixture", "lowdim", "heavy_tail"])
@pytest.mark.parametrize("noise", ["gauss", "hetero", "student_t", "outliers"])
def test_all_data_generators(tmp_path, x_dist, noise):
    cfg = build_config(None, ["data.n_data=64", "sgld.batch_size=32", "target.mlp.in_dim=3", "target.mlp.target_params=40", "training.steps=5",
                              f"data.x_dist={x_dist}", f"data.noise={noise}"])
    t = get_target(cfg, tmp_path)
    assert t.x.shape == (64, 3) and t.y.shape == (64, 1)
    assert np.isfinite(t.x).all() and np.isfinite(t.y).all()


def test_dln_teacher_has_requested_rank(tmp_path):
    cfg = build_config(None, ["target.kind=dln", "target.dln.widths=6,5,4,6", "target.dln.rank=2",
                              "training.steps=10", "data.n_data=128", "sgld.batch_size=64"])
    t = get_target(cfg, tmp_path)
    sv = np.array(t.meta["info"]["teacher_singular_values"])
    assert (sv[:2] > 1e-3).all() and (sv[2:] < 1e-10).all()
    assert all("b" not in layer for layer in t.params)


def test_precision_guard(tmp_path):
    cfg = build_config(None, ["target.kind=quadratic"])
    get_target(cfg, tmp_path)
    jax.config.update("jax_enable_x64", False)
    try:
        with pytest.raises(PrecisionError, match="float64 but JAX x64 is disabled"):
            get_target(cfg, tmp_path)
    finally:
        jax.config.update("jax_enable_x64", True)


def test_diverging_training_stops_with_one_line_and_saves_nothing(tmp_path):
    # issue 13: a 5-layer deep linear network under plain SGD at learning rate 0.1
    cfg = build_config(None, ["target.kind=dln", "target.dln.widths=6,5,5,5,5,6", "training.optimizer=sgd",
                              "training.learning_rate=0.1", "data.n_data=256"])
    with pytest.raises(TrainingDiverged) as exc:
        get_target(cfg, tmp_path)
    text = str(exc.value)
    assert "\n" not in text and "diverged" in text
    assert "training.optimizer=sgd" in text and "training.learning_rate=0.1" in text
    assert not (tmp_path / "targets").exists() or not any((tmp_path / "targets").iterdir())


def test_non_finite_target_is_never_saved(tmp_path, monkeypatch):
    import llc.engine.targets as T
    cfg = build_config(None, SMALL_MLP)
    monkeypatch.setattr(T, "full_loss_and_grad_norm", lambda *a: (float("nan"), 0.0))
    with pytest.raises(TrainingDiverged, match="L0 not finite"):
        get_target(cfg, tmp_path)
    assert not (tmp_path / "targets" / target_id(cfg)).exists()


def test_checkpoint_schedule():
    assert checkpoint_steps(100, 0, 0).size == 0
    steps = checkpoint_steps(1000, 4, 3)
    assert steps.tolist() == [0, 1, 10, 100, 500, 1000]  # log 1, 10, 100, 1000 and linear 0, 500, 1000
    assert checkpoint_steps(5, 10, 0).tolist() == [1, 2, 3, 4, 5]  # rounding merges duplicates


def test_checkpoints_stored_with_the_target_and_loaded_back(tmp_path):
    cfg = build_config(None, [*SMALL_MLP, "training.checkpoints_log=4", "training.checkpoints_linear=3",
                              "training.log_every=50"])
    built = get_target(cfg, tmp_path)
    start = build(cfg).params
    loaded = get_target(cfg, tmp_path)
    assert loaded.cached and loaded.checkpoints is None
    ck = load_checkpoints(loaded)
    assert ck.steps.tolist() == [0, 1, 7, 45, 150, 300]  # log-spaced 1, 6.7, 44.8, 300; linear 0, 150, 300
    for a, b in zip(jax.tree.leaves(ck.params[0]), jax.tree.leaves(start)):
        np.testing.assert_allclose(a, b)  # step 0: the initialisation
    for a, b in zip(jax.tree.leaves(ck.params[-1]), jax.tree.leaves(loaded.params)):
        np.testing.assert_array_equal(a, b)  # the last step is w*
    for a, b in zip(jax.tree.leaves(ck.params[2]), jax.tree.leaves(load_checkpoints(built).params[2])):
        np.testing.assert_array_equal(a, b)
    assert set(ck.metrics) == {"train_loss"}
    assert ck.metrics["train_loss"][-1] == pytest.approx(loaded.L0, rel=1e-9)
    assert np.all(np.diff(ck.metrics["train_loss"][1:]) < 0)  # training lowers the loss
    log = load_training_log(loaded)
    assert log["step"].tolist() == list(range(0, 301, 50))
    np.testing.assert_allclose(log["train_loss"][[0, 3, 6]], ck.metrics["train_loss"][[0, 4, 5]], rtol=1e-12)
    assert jax.tree.leaves(ck.stacked())[0].shape[0] == 6
    with pytest.raises(ValueError, match="has no checkpoints"):
        load_checkpoints(get_target(build_config(None, SMALL_MLP), tmp_path))


def test_classification_mlp_keeps_integer_labels(tmp_path):
    cfg = build_config(None, [*SMALL_MLP, "target.mlp.out_dim=3", "target.mlp.loss=cross_entropy", "data.noise_scale=0",
                              "training.checkpoints_linear=2"])
    t = get_target(cfg, tmp_path)
    assert t.y.dtype == np.int32 and t.y.shape == (256,) and set(np.unique(t.y)) <= {0, 1, 2}
    assert get_target(cfg, tmp_path).y.dtype == np.int32
    acc = load_checkpoints(t).metrics["train_acc"]
    assert acc[-1] > 0.9 and acc[-1] > acc[0]


def test_analytic_values_come_from_the_target_modules():
    quad = analytic_llc(build_config(None, ["target.kind=quadratic", "target.quadratic.dim=4"]), 1000, 0.5, 100.0)
    assert quad["value"] == pytest.approx(2 * 500 / 600) and "exact" in quad["regime"]
    dln = analytic_llc(build_config(None, ["target.kind=dln"]), 1000, 0.5, 100.0)
    assert dln["value"] == theory.dln_learning_coefficient((6, 5, 4, 6), 2) and "infinity" in dln["regime"]
    assert analytic_llc(build_config(None, []), 1000, 0.5, 100.0) is None


def test_anisotropic_quadratic_is_exact_for_hmc_and_keeps_float32_chains(tmp_path):
    """Hessian eigenvalues from 0 to 22: HMC reads the exact finite-gamma value within 4 SE; the
    curvature constant takes the chain's dtype (a float32 SGLD chain stays float32)."""
    from llc.engine.targets import loss_fn_for
    from llc.pipeline.experiment import run_experiment

    spectrum = "target.quadratic.eigenvalues=0,0.01,0.3,1,5,22"
    base = ["target.kind=quadratic", "target.quadratic.dim=6", spectrum, "data.n_data=1000", "save_plots=false"]
    cfg = build_config(None, base + ["samplers=hmc", "hmc.draws=400"])
    assert loss_fn_for(cfg) is loss_fn_for(build_config(None, base))  # one loss object: programs are reused
    rec = run_experiment(cfg, tmp_path)
    exact = rec["target"]["analytic_llc"]
    assert exact == pytest.approx(theory.quadratic_learning_coefficient(
        6, 1000, 1 / np.log(1000), 100.0, [0, 0.01, 0.3, 1, 5, 22]))
    hmc = rec["samplers"]["hmc"]
    assert abs(hmc["llc_mean"] - exact) < 4 * hmc["llc_se"], (hmc, exact)
    loss = loss_fn_for(cfg)
    theta = np.ones(6, np.float32)
    assert jax.grad(lambda t: loss({"theta": t}, None, None))(theta).dtype == np.float32


def test_warmup_and_clipping_in_the_optimizer():
    import jax.numpy as jnp
    from llc.config import TrainingConfig
    from llc.engine.targets.training import make_optimizer
    opt = make_optimizer(TrainingConfig(optimizer="sgd", learning_rate=0.4, warmup_steps=4, clip_norm=1.0))
    p = {"w": jnp.zeros(2)}
    state = opt.init(p)
    steps = []
    for _ in range(5):
        upd, state = opt.update({"w": jnp.array([3.0, 4.0])}, state, p)  # norm 5, clipped to 1
        steps.append(float(jnp.linalg.norm(upd["w"])))
    np.testing.assert_allclose(steps, [0.1, 0.2, 0.3, 0.4, 0.4], rtol=1e-6)  # lr (t+1)/4, no zero step


def test_a_target_saved_but_not_catalogued_is_catalogued_when_loaded(tmp_path):
    """Before: a target killed between its rename and the catalog append was never catalogued, and
    its writer left targets/.catalog.lock behind for good."""
    from llc.store import cache

    cfg = build_config(None, ["target.kind=quadratic", "target.quadratic.dim=3"])
    first = get_target(cfg, tmp_path)
    catalog = tmp_path / "targets" / "_catalog.jsonl"
    assert [json.loads(line)["id"] for line in catalog.read_text().splitlines()] == [first.id]
    catalog.write_text("")  # as if killed right after the rename
    lock = cache.lock_path(tmp_path / "targets", "_catalog.jsonl")
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_text("")  # a killed holder's lock file
    again = get_target(cfg, tmp_path)
    assert again.cached and [json.loads(line)["id"] for line in catalog.read_text().splitlines()] == [first.id]
    get_target(cfg, tmp_path)
    assert len(catalog.read_text().splitlines()) == 1  # never twice
    assert any(item.path == lock for item in cache.find_litter(tmp_path / "targets")) or not lock.exists()
