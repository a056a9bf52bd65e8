import dataclasses

import pytest

from llc.config import (ConfigError, RunConfig, apply_overrides, build_config, from_dict, load_preset,
                        normalized, preset_names, to_dict)


def test_defaults_validate_and_roundtrip():
    cfg = build_config()
    assert cfg == RunConfig()
    assert from_dict(to_dict(cfg)) == cfg


@pytest.mark.parametrize("name", ["quick", "full", "grok-tiny", "grok", "grok-p17-mlp", "grok-p17-transformer"])
def test_presets_load(name):
    assert name in preset_names()
    cfg = build_config(name)
    assert cfg.samplers


@pytest.mark.parametrize("override, message", [
    ("sgld.step_size=-1", "sgld.step_size: must be > 0"),
    ("sgld.chains=0", "sgld.chains: must be > 0"),
    ("hmc.chains=0", "hmc.chains: must be > 0"),
    ("target.mlp.activation=swish", "target.mlp.activation: 'swish' is not allowed; choose one of relu, tanh, gelu, identity"),
    ("target.kind=cubic", "target.kind: 'cubic' is not allowed"),
    ("sgld.stepsize=1", "unknown config field 'stepsize'"),
    ("nonsense.x=1", "unknown config field 'nonsense'"),
    ("sgld.draws=ten", "sgld.draws: cannot parse 'ten' as int"),
    ("sgld.draws=1.5", "sgld.draws: cannot parse '1.5' as int"),
    ("samplers=sgld,foo", "samplers: 'foo' is not allowed"),
    ("target.dln.widths=6,0,4", "target.dln.widths: every entry must be > 0"),
    ("data.outlier_frac=2", "data.outlier_frac: must be <= 1.0"),
    ("sgld.bias_correction=maybe", "sgld.bias_correction: cannot parse 'maybe' as bool"),
    ("sgld", "expected dotted.field=value"),
    ("sgld=1", "sgld: is a section"),
])
def test_bad_values_rejected_with_field_name(override, message):
    with pytest.raises(ConfigError) as exc:
        build_config(None, [override])
    text = str(exc.value)
    assert message in text
    assert "\n" not in text


def test_cross_field_checks():
    with pytest.raises(ConfigError, match="target.dln.rank: must be <= the narrowest width 4"):
        build_config(None, ["target.kind=dln", "target.dln.widths=6,5,4,6", "target.dln.rank=5"])
    with pytest.raises(ConfigError, match="sgld.batch_size: must be <= the target's n = 100"):
        build_config(None, ["data.n_data=100", "sgld.batch_size=200"])


def test_overrides_parse_types():
    cfg = build_config(None, ["sgld.step_size=1e-5", "target.dln.widths=3,4,5", "target.mlp.widths=none",
                              "sgld.bias_correction=false", "data.n_data=1e3", "samplers=hmc"])
    assert cfg.sgld.step_size == 1e-5
    assert cfg.target.dln.widths == (3, 4, 5)
    assert cfg.sgld.bias_correction is False
    assert cfg.data.n_data == 1000
    assert cfg.samplers == ("hmc",)


def test_preset_errors(tmp_path):
    with pytest.raises(ConfigError, match="preset: 'nope' not found"):
        load_preset("nope")
    bad = tmp_path / "bad.toml"
    bad.write_text("[sgld]\nstep_size = 'big'\n")
    with pytest.raises(ConfigError, match="sgld.step_size: cannot parse 'big' as a number or auto"):
        build_config(str(bad))
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("[sgdl]\nstep_size = 1.0\n")
    with pytest.raises(ConfigError, match="unknown config field 'sgdl'"):
        build_config(str(unknown))


def test_normalized_ignores_irrelevant_fields():
    base = build_config(None, ["samplers=sgld"])
    # presentation and unused sampler sections do not enter the hash input
    assert normalized(base) == normalized(dataclasses.replace(base, save_plots=False))
    assert normalized(base) == normalized(apply_overrides(base, ["hmc.draws=7"]))
    assert normalized(base) != normalized(apply_overrides(base, ["sgld.draws=7"]))
    quad = build_config(None, ["target.kind=quadratic"])
    assert normalized(quad) == normalized(apply_overrides(quad, ["target.mlp.depth=5"]))
    assert normalized(quad) != normalized(apply_overrides(quad, ["target.quadratic.dim=9"]))


def test_legacy_names_map_to_target_sections():
    cfg = build_config(None, ["target.quad_dim=3", "target.dln_widths=3,4,5", "target.dln_rank=1", "model.depth=3",
                              "teacher.width=7"])
    assert cfg.target.quadratic.dim == 3
    assert cfg.target.dln.widths == (3, 4, 5) and cfg.target.dln.rank == 1
    assert cfg.target.mlp.depth == 3 and cfg.target.mlp.teacher.width == 7
    # a config.json of the previous layout loads into the same config
    old = {"target": {"kind": "quadratic", "quad_dim": 3}, "model": {"depth": 3}, "teacher": {"width": 7}}
    assert from_dict(old) == apply_overrides(RunConfig(), ["target.kind=quadratic", "target.quadratic.dim=3",
                                                           "target.mlp.depth=3", "target.mlp.teacher.width=7"])


@pytest.mark.parametrize("kind, irrelevant, relevant", [
    ("mlp", ["target.dln.rank=1", "target.quadratic.dim=9", "target.modular.p=7"], ["target.mlp.depth=3", "data.noise=hetero"]),
    ("quadratic", ["target.seed=5", "data.noise=hetero", "training.steps=5", "target.mlp.depth=5"],
     ["target.quadratic.dim=9", "data.n_data=100"]),
    ("dln", ["target.mlp.depth=5", "target.modular.op=multiply"], ["target.dln.rank=1", "training.steps=5"]),
    ("modular", ["data.noise=hetero", "data.n_data=100", "target.mlp.depth=5", "target.modular.mlp.width=7"],
     ["target.modular.p=7", "target.modular.transformer.heads=2", "training.weight_decay=0.5"]),
])
def test_normalized_keeps_only_the_selected_target_kind(kind, irrelevant, relevant):
    base = build_config(None, [f"target.kind={kind}", "samplers=hmc", "training.optimizer=adamw"])
    for override in irrelevant:
        assert normalized(apply_overrides(base, [override])) == normalized(base), override
    for override in relevant:
        assert normalized(apply_overrides(base, [override])) != normalized(base), override


def test_unused_training_fields_leave_the_hash_alone():
    sgd = build_config(None, ["training.optimizer=sgd"])
    assert normalized(apply_overrides(sgd, ["training.beta2=0.5"])) == normalized(sgd)
    adam = build_config(None, ["training.optimizer=adam"])
    assert normalized(apply_overrides(adam, ["training.beta2=0.5"])) != normalized(adam)


@pytest.mark.parametrize("overrides, message", [
    (["target.mlp.loss=hinge"], "target.mlp.loss: 'hinge' is not allowed; choose one of mse, cross_entropy"),
    (["target.mlp.loss=cross_entropy"], "target.mlp.out_dim: cross_entropy needs >= 2 classes"),
    (["training.weight_decay=1"], "training.weight_decay: only training.optimizer=adamw uses it"),
    (["target.kind=modular", "target.modular.transformer.heads=3"], "target.modular.transformer.heads: must divide"),
    (["target.kind=modular", "target.modular.p=3", "target.modular.train_frac=0.01"], "target.modular.train_frac: leaves 0"),
    (["target.kind=modular", "target.modular.op=divide"], "target.modular.op: 'divide' is not allowed"),
    (["target.kind=modular", "target.modular.p=7", "sgld.batch_size=64"], "sgld.batch_size: must be <= the target's n = 15"),
    (["target.kind=quadratic", "target.quadratic.dim=3", "target.quadratic.eigenvalues=1,2"],
     "target.quadratic.eigenvalues: needs target.quadratic.dim = 3 entries, got 2"),
    (["target.kind=quadratic", "target.quadratic.dim=2", "target.quadratic.eigenvalues=1,-2"],
     "target.quadratic.eigenvalues: every entry must be >= 0"),
    (["target.kind=quadratic", "target.quadratic.dim=2", "target.quadratic.eigenvalues=0,1", "posterior.gamma=0"],
     "posterior.gamma: a zero eigenvalue (flat direction) needs gamma > 0"),
])
def test_target_section_checks(overrides, message):
    with pytest.raises(ConfigError) as exc:
        build_config(None, overrides)
    assert message in str(exc.value) and "\n" not in str(exc.value)
