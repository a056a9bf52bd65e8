"""Routed networks (target.modular.model = routed): the gate's penalties, one head picked is an MLP
layer, the regularizer enters training only, and the routing is recorded along training."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llc.config import ConfigError, build_config
from llc.engine.targets import modular
from llc.pipeline.sampling import enable_x64

enable_x64()

ROUTED = ["target.kind=modular", "target.modular.model=routed", "target.modular.p=5", "target.modular.train_frac=0.6",
          "target.modular.routed.width=8", "target.modular.routed.heads=3", "samplers=sgld", "sgld.batch_size=8",
          "training.optimizer=adamw", "training.weight_decay=0.5", "training.learning_rate=1e-2"]


@pytest.mark.parametrize("name, uniform", [("entropy", np.log(3)), ("sparsity", np.sqrt(3) - 1), ("gini", 2 / 3),
                                           ("none", 0.0)])
def test_routing_penalties_vanish_on_one_head_and_peak_when_even(name, uniform):
    even = jnp.full((4, 3), 1 / 3)
    one = jax.nn.one_hot(jnp.array([0, 2, 1, 0]), 3)
    assert float(modular.routing_penalty(name, even)) == pytest.approx(uniform, rel=1e-6)
    assert float(modular.routing_penalty(name, one)) == pytest.approx(0.0, abs=1e-5)
    mixed = jnp.array([[0.7, 0.2, 0.1]])
    assert 0 <= float(modular.routing_penalty(name, mixed)) <= uniform


def test_one_head_picked_is_a_plain_mlp_layer():
    cfg = build_config(None, ROUTED)
    net = modular.network(cfg)
    x = jnp.asarray(modular.dataset(5, "add", "routed")[0])
    params = jax.tree.map(jnp.asarray, modular.build(cfg).params)
    # a gate bias that picks head 1 for every input
    params["gate_0"]["bias"] = jnp.array([-1e3, 1e3, -1e3])
    mlp = modular.OneHotMLP(5, 1, 8, "gelu")
    kernel = params["hidden_0"]["kernel"].reshape(10, 3, 8)[:, 1]
    bias = params["hidden_0"]["bias"].reshape(3, 8)[1]
    plain = {"hidden_0": {"kernel": kernel, "bias": bias}, "out": params["out"]}
    np.testing.assert_allclose(net.apply({"params": params}, x), mlp.apply({"params": plain}, x), rtol=1e-5, atol=1e-6)
    _, routes = net.apply({"params": params}, x, with_routing=True)
    assert routes.shape == (1, 25, 3) and np.allclose(routes[..., 1], 1.0)


def test_the_regularizer_is_in_training_only():
    cfg = build_config(None, [*ROUTED, "target.modular.routed.regularizer=gini",
                              "target.modular.routed.lambda_routing=0.5"])
    built = modular.build(cfg)
    x, y = built.x, built.y
    _, routes = modular.network(cfg).apply({"params": built.params}, x, with_routing=True)
    objective, loss = modular.train_loss(cfg), modular.loss(cfg)
    assert float(objective(built.params, x, y) - loss(built.params, x, y)) == pytest.approx(
        0.5 * float(modular.routing_penalty("gini", routes)), rel=1e-5)
    assert modular.train_loss(build_config(None, [*ROUTED, "target.modular.routed.regularizer=none"])) is loss
    with pytest.raises(ConfigError, match="target.modular.routed.regularizer: 'l1' is not allowed; choose one of "
                                          "none, entropy, sparsity, gini"):
        build_config(None, [*ROUTED, "target.modular.routed.regularizer=l1"])


def test_routing_is_recorded_in_training():
    from llc.engine.targets import build_target

    cfg = build_config(None, [*ROUTED, "training.steps=30", "training.log_every=10", "training.checkpoints_linear=2",
                              "target.dtype=float32"])
    target = build_target(cfg)
    log = target.log
    for name in ("routing_entropy", "head_utilisation", "wnorm_gate_0", "jacobian_norm", "adam_ratio_mean"):
        assert np.isfinite(log[name][1:]).all(), name
    assert log["routing_entropy"][0] == pytest.approx(np.log(3), abs=0.05)  # the gate starts near even
    assert 1 / 3 <= log["head_utilisation"].min() and log["head_utilisation"].max() <= 1 + 1e-6


def test_existing_presets_keep_their_hash_input():
    """A routed section never enters the hash of an mlp or transformer target (left out as unused)."""
    from llc.config import target_section

    for preset in ("grok", "grok-tiny"):
        assert "routed" not in target_section(build_config(preset))["target"]["modular"]


@pytest.mark.slow
def test_grok_tiny_routed_groks_with_every_column(tmp_path):
    from llc.pipeline.trajectory import PROBE_COLUMNS, ROUTING_COLUMNS, run_trajectory

    cfg = build_config("grok-tiny", ["target.modular.model=routed", "sgld.draws=40", "sgld.burnin=10",
                                     "sgld.chains=2"])
    summary = run_trajectory(cfg, tmp_path, max_batch=8)
    rows = summary["rows"]
    train, test = np.array([r["train_acc"] for r in rows]), np.array([r["test_acc"] for r in rows])
    first = int(np.argmax(train >= 1.0))
    assert test[first] < 0.3 and test[-1] > 0.95  # memorises first, generalises later
    for r in rows[1:]:
        assert all(np.isfinite(r[c]) for c in PROBE_COLUMNS + ROUTING_COLUMNS), r
