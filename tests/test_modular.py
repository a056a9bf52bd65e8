"""The modular-arithmetic target: data, split, Flax models, integer inputs end to end, training."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llc.config import build_config
from llc.engine.posterior import cast, make_posterior
from llc.engine.targets import get_target, load_checkpoints, loss_fn_for
from llc.engine.targets.modular import dataset, split, template
from llc.engine.targets.training import decay_mask
from llc.pipeline.experiment import run_experiment
from llc.pipeline.sampling import enable_x64

enable_x64()

TINY = ["target.kind=modular", "target.modular.p=7", "target.modular.train_frac=0.5", "sgld.batch_size=8",
        "target.modular.mlp.width=16", "target.modular.transformer.d_model=8", "target.modular.transformer.heads=2",
        "target.modular.transformer.d_mlp=16", "training.optimizer=adamw", "training.weight_decay=0.5",
        "training.learning_rate=1e-2", "training.steps=200", "training.checkpoints_log=3", "training.log_every=100"]


@pytest.mark.parametrize("op, fn", [("add", np.add), ("subtract", np.subtract), ("multiply", np.multiply)])
def test_dataset_labels_every_pair(op, fn):
    x, y = dataset(5, op, "transformer")
    assert x.shape == (25, 4) and x.dtype == np.int32 and y.dtype == np.int32
    a, b = x[:, 0], x[:, 2]
    np.testing.assert_array_equal(y, fn(a, b) % 5)
    assert (x[:, 1] == 5).all() and (x[:, 3] == 6).all()  # op and "=" tokens: vocabulary p + 2
    assert sorted(zip(a.tolist(), b.tolist())) == [(i, j) for i in range(5) for j in range(5)]
    pairs, labels = dataset(5, op, "mlp")
    np.testing.assert_array_equal(pairs, x[:, [0, 2]])
    np.testing.assert_array_equal(labels, y)


def test_split_is_a_partition_fixed_by_its_seed():
    train, test = split(11, 0.3, 0)
    assert len(train) == 36 and len(test) == 121 - 36
    assert np.union1d(train, test).tolist() == list(range(121))
    np.testing.assert_array_equal(split(11, 0.3, 0)[0], train)
    assert not np.array_equal(split(11, 0.3, 1)[0], train)


def test_default_transformer_is_nanda_sized():
    cfg = build_config(None, ["target.kind=modular"])
    shapes = jax.tree.map(lambda s: s.shape, template(cfg))
    assert shapes["embed"]["embedding"] == (115, 128) and shapes["pos_embed"] == (4, 128)
    assert shapes["attn"]["query"]["kernel"] == (128, 4, 32) and shapes["mlp_in"]["kernel"] == (128, 512)
    assert shapes["unembed"]["kernel"] == (128, 113) and "bias" not in shapes["unembed"]
    assert sum(np.prod(s) for s in jax.tree.leaves(shapes, is_leaf=lambda s: isinstance(s, tuple))) == 227_456


def test_weight_decay_skips_embeddings_biases_and_norms():
    cfg = build_config(None, ["target.kind=modular", "target.modular.transformer.layer_norm=true"])
    mask = decay_mask(template(cfg))
    assert not mask["embed"]["embedding"] and not mask["pos_embed"]
    assert not mask["attn"]["query"]["bias"] and not mask["mlp_in"]["bias"] and not mask["ln_attn"]["scale"]
    assert mask["attn"]["query"]["kernel"] and mask["attn"]["out"]["kernel"] and mask["mlp_out"]["kernel"]
    assert mask["unembed"]["kernel"]


@pytest.mark.parametrize("model", ["mlp", "transformer"])
def test_integer_inputs_end_to_end(tmp_path, model):
    cfg = build_config(None, [*TINY, f"target.modular.model={model}"])
    target = get_target(cfg, tmp_path)
    again = get_target(cfg, tmp_path)
    for t in (target, again):
        assert t.x.dtype == np.int32 and t.y.dtype == np.int32 and t.x_test.dtype == np.int32
        assert t.n == 24 and t.x_test.shape[0] == 25
    assert target.meta["info"]["n_test"] == 25
    post = cast(make_posterior(loss_fn_for(cfg), target.params, target.x, target.y, cfg.posterior), "float32")
    assert post.x.dtype == jnp.int32 and jax.tree.leaves(post.w_star)[0].dtype == jnp.float32
    ck = load_checkpoints(again)
    assert {"train_loss", "train_acc", "test_loss", "test_acc", "jacobian_norm", "effective_lr_mean"} <= set(ck.metrics)
    assert ck.steps[-1] == 200 and ck.metrics["train_acc"][-1] == 1.0
    logits = jax.jit(lambda p, x: loss_fn_for(cfg)(p, x, jnp.zeros(len(x), jnp.int32)))(target.params, target.x)
    assert np.isfinite(logits)


def test_transformer_is_causal_and_reads_the_last_position():
    from llc.engine.targets.modular import Transformer
    net = Transformer(p=7, d_model=8, heads=2, d_mlp=16, activation="relu", layer_norm=False)
    tokens, other_b = jnp.array([[1, 7, 2, 8]]), jnp.array([[1, 7, 3, 8]])
    params = net.init(jax.random.key(0), tokens)

    def run(t):
        logits, state = net.apply(params, t, capture_intermediates=True)
        return logits, state["intermediates"]["attn"]["__call__"][0]  # (1, 4, d_model): every position

    logits, attn = run(tokens)
    logits_b, attn_b = run(other_b)
    assert logits.shape == (1, 7) and attn.shape == (1, 4, 8)
    np.testing.assert_array_equal(attn[:, :2], attn_b[:, :2])  # positions before b never see it
    assert not np.allclose(attn[:, 2:], attn_b[:, 2:]) and not np.allclose(logits, logits_b)


def test_sgld_runs_on_a_modular_target(tmp_path):
    cfg = build_config(None, [*TINY, "target.modular.model=mlp", "samplers=sgld", "sgld.chains=2", "sgld.draws=20",
                              "sgld.burnin=2", "sgld.eval_every=2", "save_plots=false", "target.dtype=float32"])
    result = run_experiment(cfg, tmp_path)
    assert result["target"]["kind"] == "modular" and result["target"]["n"] == 24
    assert np.isfinite(result["samplers"]["sgld"]["llc_mean"])


@pytest.mark.slow
def test_grok_tiny_groks(tmp_path):
    # The preset's promise: memorisation first (train 100%, test near 0), generalisation later.
    ck = load_checkpoints(get_target(build_config("grok-tiny"), tmp_path))
    train, test = ck.metrics["train_acc"], ck.metrics["test_acc"]
    first = int(np.argmax(train >= 1.0))
    assert train[first] == 1.0 and test[first:].min() < 0.3
    assert test[-1] > 0.95 and len(ck.steps) >= 20
