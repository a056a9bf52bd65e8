"""Grokking-study probes against direct computations: spectral smoothness vs an explicit DFT,
Jacobian norm vs jax.jacfwd, input Hessian trace vs jax.hessian, Adam's dynamics vs the moments
recomputed by hand; and training records them at checkpoints and log steps."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from llc.config import build_config
from llc.engine.targets import modular
from llc.engine.targets import probes as P
from llc.engine.targets.losses import LOSSES
from llc.pipeline.sampling import enable_x64

enable_x64()

P5 = ["target.kind=modular", "samplers=sgld", "sgld.batch_size=8", "target.modular.p=5", "target.modular.train_frac=0.5",
      "target.modular.mlp.width=8",
      "target.modular.transformer.d_model=8", "target.modular.transformer.heads=2",
      "target.modular.transformer.d_mlp=16", "training.optimizer=adamw", "training.weight_decay=0.5"]


def _explicit_smoothness(grid: np.ndarray) -> float:
    """The definition written out: a DFT by double loop over (a, b), DC removed, power-weighted radius."""
    p = grid.shape[0]
    centred = grid - grid.mean(axis=(0, 1))
    num = den = 0.0
    for k1 in range(p):
        for k2 in range(p):
            coeff = sum(centred[a, b] * np.exp(-2j * np.pi * (k1 * a + k2 * b) / p) for a in range(p) for b in range(p))
            power = float(np.sum(np.abs(coeff) ** 2))
            f1, f2 = min(k1, p - k1) / (p // 2), min(k2, p - k2) / (p // 2)
            num += np.sqrt(f1 ** 2 + f2 ** 2) / np.sqrt(2) * power
            den += power
    return num / den


def test_spectral_smoothness_is_the_explicit_dft():
    rng = np.random.default_rng(0)
    grid = rng.normal(size=(7, 7, 3))
    assert float(P.spectral_smoothness(jnp.asarray(grid))) == pytest.approx(_explicit_smoothness(grid), rel=1e-10)
    a = np.arange(7)
    smooth = np.cos(2 * np.pi * (a[:, None] + a[None, :]) / 7)[..., None]  # one lowest frequency
    rough = np.cos(2 * np.pi * 3 * (a[:, None] + a[None, :]) / 7)[..., None]  # the highest
    assert float(P.spectral_smoothness(jnp.asarray(smooth))) == pytest.approx(1 / 3)
    assert float(P.spectral_smoothness(jnp.asarray(rough))) == pytest.approx(1.0)
    assert float(P.spectral_smoothness(jnp.ones((7, 7, 2)))) == 0.0  # constant: no power off DC


@pytest.fixture(scope="module", params=["mlp", "transformer"])
def model(request):
    cfg = build_config(None, [*P5, f"target.modular.model={request.param}"])
    built = modular.build(cfg)
    # float64; the MLP's weights scaled up from the initialisation's, for logits that are not tiny
    scale = 3.0 if request.param == "mlp" else 1.0
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64) * scale, built.params)
    fn, data = modular.probes(cfg)
    return cfg, params, fn, data


def test_continuous_inputs_reproduce_the_integer_forward(model):
    cfg, params, _, data = model
    m = cfg.target.modular
    net = modular.network(cfg)
    u = modular.continuous_inputs(m.model, m.p, params, data["x"])
    np.testing.assert_allclose(net.apply({"params": params}, data["x"], u), net.apply({"params": params}, data["x"]),
                               rtol=1e-12, atol=1e-12)


def test_probes_against_direct_computations(model):
    cfg, params, fn, data = model
    m = cfg.target.modular
    net = modular.network(cfg)
    v = {"params": params}
    got = jax.jit(fn)(params, data, jax.random.key(1))
    logits, rep = net.apply(v, data["x"], with_repr=True)
    assert float(got["spectral_smoothness"]) == pytest.approx(
        _explicit_smoothness(np.asarray(logits).reshape(5, 5, 5)), rel=1e-8)
    assert float(got["representation_norm"]) == pytest.approx(float(np.mean(np.linalg.norm(rep, axis=-1))))
    assert len(data["sub"]) == 25  # p^2 < PROBE_INPUTS: every input
    xs, ys = data["x"], data["y"]
    us = modular.continuous_inputs(m.model, m.p, params, xs)
    f = lambda x1, u1: net.apply(v, x1[None], u1[None])[0]  # noqa: E731
    jac = jax.vmap(jax.jacfwd(f, argnums=1))(xs, us)  # (n, p, *u.shape)
    exact_jac = float(np.sqrt(np.mean(np.sum(np.asarray(jac).reshape(len(xs), -1) ** 2, axis=1))))
    assert abs(float(got["jacobian_norm"]) - exact_jac) < 3 * float(got["jacobian_norm_se"])
    assert float(got["jacobian_norm_se"]) < 0.2 * exact_jac  # an estimate, not noise
    g = lambda x1, u1, y1: LOSSES[m.loss](f(x1, u1)[None], y1[None])  # noqa: E731
    hess = jax.vmap(jax.hessian(g, argnums=1))(xs, us, ys)
    size = int(np.prod(us.shape[1:]))
    exact_tr = float(np.mean(np.trace(np.asarray(hess).reshape(len(xs), size, size), axis1=1, axis2=2)))
    se = float(got["input_hessian_trace_se"])
    assert 0 < se < 0.5 * abs(exact_tr) and abs(float(got["input_hessian_trace"]) - exact_tr) < 3 * se
    for name, sub in params.items():
        norm = np.sqrt(sum(np.sum(np.asarray(a) ** 2) for a in jax.tree.leaves(sub)))
        assert float(got[f"wnorm_{name}"]) == pytest.approx(norm)


def test_adam_metrics_are_the_moments_by_hand():
    rng = np.random.default_rng(0)
    params = {"w": {"kernel": rng.normal(size=(3, 2))}, "b": {"bias": rng.normal(size=2)}}
    mask = {"w": {"kernel": True}, "b": {"bias": False}}
    b1, b2, eps, wd, lr = 0.9, 0.98, 1e-8, 0.5, 1e-2
    tx = optax.chain(optax.clip_by_global_norm(100.0), optax.adamw(lr, b1=b1, b2=b2, weight_decay=wd, mask=mask))
    state = tx.init(params)
    assert np.isnan(P.adam_metrics(P.adam_state(state), params, lr, b1, b2, eps, wd, mask)["adam_ratio_mean"])
    grads = [jax.tree.map(lambda a: rng.normal(size=a.shape), params) for _ in range(3)]
    m = jax.tree.map(np.zeros_like, params)
    v = jax.tree.map(np.zeros_like, params)
    p = params
    for g in grads:
        updates, state = tx.update(g, state, p)
        p = optax.apply_updates(p, updates)
        m = jax.tree.map(lambda a, b: b1 * a + (1 - b1) * b, m, g)
        v = jax.tree.map(lambda a, b: b2 * a + (1 - b2) * b * b, v, g)
    t = len(grads)
    mh = np.concatenate([np.ravel(a) / (1 - b1 ** t) for a in jax.tree.leaves(m)])
    vh = np.concatenate([np.ravel(a) / (1 - b2 ** t) for a in jax.tree.leaves(v)])
    got = P.adam_metrics(P.adam_state(state), p, lr, b1, b2, eps, wd, mask)
    eff, ratio = lr / (np.sqrt(vh) + eps), np.abs(mh) / (np.sqrt(vh) + eps)
    np.testing.assert_allclose([got[k] for k in P.ADAM_KEYS[:4]], [eff.mean(), eff.max(), ratio.mean(), ratio.max()],
                               rtol=1e-10)
    # the decayed coordinates: the kernel (its 6 entries come first in leaf order: "b" < "w")
    kernel = slice(2, 8)
    expected = np.linalg.norm(mh[kernel] / (np.sqrt(vh[kernel]) + eps)) / (wd * np.linalg.norm(p["w"]["kernel"]))
    assert float(got["update_decay_ratio"]) == pytest.approx(expected, rel=1e-10)


def test_training_records_the_probes_at_checkpoints_and_log_steps():
    from llc.engine.targets import build_target

    cfg = build_config(None, [*P5, "target.modular.model=mlp", "training.steps=40", "training.checkpoints_linear=3",
                              "training.log_every=20", "training.learning_rate=1e-2", "target.dtype=float32"])
    target = build_target(cfg)
    log, ck = target.log, target.checkpoints
    for name in ("spectral_smoothness", "jacobian_norm", "input_hessian_trace", "representation_norm",
                 "wnorm_hidden_0", "wnorm_out", *P.ADAM_KEYS):
        assert name in log and name in ck.metrics, name
        assert np.isfinite(log[name][1:]).all() and np.isfinite(ck.metrics[name][1:]).all(), name
        # the checkpoints (0, 20, 40) and the log steps (0, 20, 40) are the same steps
        np.testing.assert_allclose(ck.metrics[name], log[name], rtol=1e-6, equal_nan=True)
    assert np.isnan(log["adam_ratio_mean"][0]) and np.isfinite(log["spectral_smoothness"][0])  # no Adam step yet
    assert ck.metrics["wnorm_out"][-1] == pytest.approx(
        float(optax.global_norm(target.params["out"])), rel=1e-5)


def test_trajectory_files_figure_and_page_carry_the_probes(tmp_path):
    """The probe columns reach trajectory.csv/.nc (only where recorded), the figure and the report page."""
    import json

    import pandas as pd
    import xarray as xr

    from llc.pipeline import trajectory as T
    from llc.posthoc.report_trajectory import trajectory_page

    rng = np.random.default_rng(0)
    steps = [0, 10, 100, 1000]
    (tmp_path / "points").mkdir()
    for i, step in enumerate(steps):
        row = {"step": step, "llc_mean": 5.0 + i, "llc_se": 0.2, "rhat": 1.0, "ess": 100.0, "L0": 1.0 / (i + 1),
               "nbeta": 10.0, "gamma": 100.0, "grad_norm": 0.1, "weight_norm": 3.0, "train_acc": 0.5, "test_acc": 0.1,
               "spectral_smoothness": 0.5 - 0.1 * i, "jacobian_norm": 2.0 + i, "jacobian_norm_se": 0.1,
               "input_hessian_trace": 1.0 + i, "input_hessian_trace_se": 0.2, "representation_norm": 3.0 + i,
               "wnorm_out": 1.0 + i, "wnorm_hidden_0": 2.0 + i, "flags": [],
               **{k: (np.nan if step == 0 else 0.1 * (i + 1)) for k in P.ADAM_KEYS}}
        T._atomic_write(T._point_file(tmp_path, step), lambda p, r=row: T._save_npz(
            p, row=json.dumps(r), Ln=rng.normal(size=(2, 10)), theta=rng.normal(size=(2, 10, 4))))
    summary = T._assemble(tmp_path, steps, "sgld", wall_s=1.0, compile_s=0.5, computed=4,
                          target={"id": "tgt_x", "kind": "modular", "n": 10, "d": 20})
    table = pd.read_csv(tmp_path / "trajectory.csv")
    for col in (*T.PROBE_COLUMNS, "wnorm_out", "wnorm_hidden_0"):
        assert col in table.columns, col
    assert np.isnan(table["adam_ratio_mean"][0]) and table["jacobian_norm"].tolist() == [2.0, 3.0, 4.0, 5.0]
    ds = xr.open_dataset(tmp_path / "trajectory.nc", engine="h5netcdf")
    assert ds["wnorm_out"].values.tolist() == [1.0, 2.0, 3.0, 4.0]
    assert summary["rows"][1]["update_decay_ratio"] == pytest.approx(0.2)
    page = trajectory_page(tmp_path)
    found = [s for s in page.sections if s.startswith(('<section id="sec-input-space"', '<section id="sec-adam"'))]
    assert len(found) == 2 and "Jacobian norm" in found[0] and "update" in found[1], [s[:60] for s in page.sections]
    assert (tmp_path / "trajectory.png").stat().st_size > 10_000
