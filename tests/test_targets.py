import json

import jax
import numpy as np
import pytest

from llc.config import build_config
from llc.pipeline.experiment import enable_x64
from llc.engine.targets import PrecisionError, get_target, target_id
from llc.engine.targets.mlp import count_params, student_sizes

enable_x64()

SMALL_MLP = ["data.n_data=256", "model.in_dim=4", "model.target_params=120", "training.steps=300"]


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
    monkeypatch.setattr(T, "train_erm", lambda *a, **k: pytest.fail("target was rebuilt"))
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
    cfg = build_config(None, ["model.target_params=10000", "model.in_dim=32", "model.depth=2"])
    d = count_params(student_sizes(cfg), bias=True)
    assert abs(d - 10000) / 10000 < 0.02


@pytest.mark.parametrize("x_dist", ["gauss_iso", "gauss_aniso", "mixture", "lowdim", "heavy_tail"])
@pytest.mark.parametrize("noise", ["gauss", "hetero", "student_t", "outliers"])
def test_all_data_generators(tmp_path, x_dist, noise):
    cfg = build_config(None, ["data.n_data=64", "sgld.batch_size=32", "model.in_dim=3", "model.target_params=40", "training.steps=5",
                              f"data.x_dist={x_dist}", f"data.noise={noise}"])
    t = get_target(cfg, tmp_path)
    assert t.x.shape == (64, 3) and t.y.shape == (64, 1)
    assert np.isfinite(t.x).all() and np.isfinite(t.y).all()


def test_dln_teacher_has_requested_rank(tmp_path):
    cfg = build_config(None, ["target.kind=dln", "target.dln_widths=6,5,4,6", "target.dln_rank=2",
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
