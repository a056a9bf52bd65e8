"""The contract every registered sampler passes; adding a sampler adds it here without an edit.

* Its compile signature (``SamplerKind.signature``) changes with every structural field and with no
  runtime field; a driver-batched sampler's ``make`` uses it as ``Algorithm.static`` and passes every
  runtime field in ``params`` (an argument of the programs, not a constant baked into them).
* On a standard Gaussian, the mean and variance of every projected direction are right within
  Z Monte Carlo standard errors (ArviZ's ESS), with the sampler module's own ``GAUSSIAN_TEST``
  settings.
* A driver-batched sampler gives each run of a batch the draws that run gets alone.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import typing

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llc import config, registry
from llc.config import ConfigError, PosteriorConfig, sampler_class
from llc.engine import driver
from llc.engine.posterior import make_posterior
from llc.pipeline.sampling import sample_one

jax.config.update("jax_enable_x64", True)

GAUSS_DIM = 20
Z = 4.0  # |error| < Z * MCSE; with 2*GAUSS_DIM checks per sampler a false alarm is ~3e-3

NAMES = list(registry.SAMPLERS)
BATCHED = list(registry.batched_names())


def _module(name: str):
    return importlib.import_module(registry.sampler(name).module)


def _fields(name: str, runtime: bool) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(sampler_class(name)) if bool(f.metadata.get("runtime")) == runtime]


def _allowed(value, f: dataclasses.Field) -> bool:
    try:
        config._check_constraints(value, f.metadata, f.name)
    except ConfigError:
        return False
    return True


def other_value(cfg, f: dataclasses.Field):
    """Another value of field ``f`` within its metadata's constraints (choices, bounds, types)."""
    value = getattr(cfg, f.name)
    hint = typing.get_type_hints(type(cfg))[f.name]
    inner, optional = config._unwrap_optional(hint)
    if config._is_step_size(hint):  # a number or "auto": another number (auto is resolved before make)
        inner, value = float, (None if value == config.AUTO else value)
    if "choices" in f.metadata:
        candidates = list(f.metadata["choices"]) + ([None] if optional else [])
    elif inner is bool:
        candidates = [not value]
    elif typing.get_origin(inner) is tuple:
        candidates = [(1,), *([None] if optional else []), (*(value or ()), 1)]
    elif inner is int:
        candidates = [1, 2] if value is None else [value + 1, value - 1]
    elif inner is float:
        candidates = [0.5] if value is None else [value * 1.5, 0.5, *((value + f.metadata[b]) / 2 for b in ("lt", "le")
                                                                  if b in f.metadata)]
        candidates += [None] if optional else []
    else:
        raise TypeError(f"{f.name}: no rule for picking another {inner}")
    return next(c for c in candidates if c != value and _allowed(c, f))


def concrete(cfg):
    """The default section with a number where the step size is ``auto`` (resolved on the one road,
    never by ``make``)."""
    return dataclasses.replace(cfg, step_size=1e-3) if getattr(cfg, "step_size", None) == config.AUTO else cfg


def _leaves(params) -> list[np.ndarray]:
    return [np.asarray(a) for a in jax.tree.leaves(params)]


# --------------------------------------------------------------------------- signature

@pytest.mark.parametrize("name", NAMES)
def test_signature_has_every_structural_field_and_no_runtime_one(name):
    cfg = sampler_class(name)()
    for f in _fields(name, runtime=False):
        changed = dataclasses.replace(cfg, **{f.name: other_value(cfg, f)})
        assert changed.signature() != cfg.signature(), f"{name}.{f.name}"
    for f in _fields(name, runtime=True):
        changed = dataclasses.replace(cfg, **{f.name: other_value(cfg, f)})
        assert changed.signature() == cfg.signature(), f"{name}.{f.name}"


@pytest.mark.parametrize("name", BATCHED)
def test_make_passes_every_runtime_field_as_an_argument(name):
    cfg = concrete(sampler_class(name)())
    alg = _module(name).make(cfg)
    assert alg.static == cfg.signature()  # what the driver's compile cache is keyed on
    for f in _fields(name, runtime=True):
        changed = _module(name).make(dataclasses.replace(cfg, **{f.name: other_value(cfg, f)}))
        assert any(not np.array_equal(a, b) for a, b in zip(_leaves(changed.params), _leaves(alg.params))), \
            f"{name}.{f.name} is not in make(cfg).params"


# --------------------------------------------------------------------------- rules

@pytest.mark.parametrize("name", NAMES)
def test_run_config_rules(name):
    """A minibatch sampler refuses a batch larger than n (one line naming the field); the CLI's
    --chains / --draws set the fields the class names; steps per chain stay within int32."""
    base = ["target.kind=quadratic", "data.n_data=1000", f"samplers={name}"]
    cls = sampler_class(name)
    assert registry.sampler(name).minibatch == issubclass(cls, config.MinibatchKind)
    if registry.sampler(name).minibatch:
        with pytest.raises(ConfigError, match=rf"^{name}\.batch_size: must be <= the target's n = 1000 "):
            config.build_config(overrides=[*base, f"{name}.batch_size=1001"])
    from llc.cli import _override_flags

    cfg = config.build_config(overrides=[*base, *_override_flags(chains=3, draws=7)])
    for flag, value in (("CHAINS_FIELD", 3), ("DRAWS_FIELD", 7)):
        if getattr(cls, flag) is not None:
            assert getattr(getattr(cfg, name), getattr(cls, flag)) == value
    assert 0 < getattr(cfg, name).steps_per_chain() <= config.INT_MAX


# --------------------------------------------------------------------------- Gaussian moments

def _quadratic_loss(params, x, y):
    del x, y
    return 0.5 * jnp.sum(params["theta"] ** 2)


@pytest.fixture(scope="module")
def gaussian():
    """Quadratic loss with n*beta + gamma = 1: the localized posterior is exactly N(0, I_d); one
    posterior for the module, so runs reuse their compiled programs."""
    n = 1000
    cfg = PosteriorConfig(beta_mode="fixed", beta0=0.5 / n, gamma=0.5)
    return make_posterior(_quadratic_loss, {"theta": np.zeros(GAUSS_DIM)}, np.zeros((n, 1)), np.zeros((n, 1)), cfg)


@pytest.fixture(scope="module")
def gaussian_runs(gaussian):
    """Each sampler's run on the Gaussian with its module's settings, computed once."""
    runs = {}

    def get(name):
        if name not in runs:
            cfg = gaussian_config(name)
            runs[name] = cfg, sample_one(name, gaussian, cfg, jax.random.key(1), proj_dim=GAUSS_DIM)
        return runs[name]

    return get


def gaussian_config(name: str):
    return dataclasses.replace(sampler_class(name)(), **_module(name).GAUSSIAN_TEST)


def _mcse_mean(x: np.ndarray) -> float:
    """Standard error of the mean of a (chains, draws) array from ArviZ's ESS."""
    return float(x.std(ddof=1) / math.sqrt(az.ess(x, method="mean")))


@pytest.mark.parametrize("name", NAMES)
def test_standard_gaussian_moments(name, gaussian_runs):
    cfg, out = gaussian_runs(name)
    chains, draws = out.Ln.shape
    assert chains == cfg.chains
    assert out.theta_proj.shape == (chains, draws, GAUSS_DIM)
    assert np.isfinite(out.Ln).all(), out.info
    # theta_proj = theta @ M with theta ~ N(0, I): direction j has mean 0 and variance |M_j|^2.
    matrix = np.asarray(driver.projection_matrix(GAUSS_DIM, GAUSS_DIM, seed=0, dtype=cfg.dtype), np.float64)
    true_var = (matrix**2).sum(axis=0)
    for j in range(GAUSS_DIM):
        p = out.theta_proj[:, :, j]
        se_mean = _mcse_mean(p)
        assert abs(p.mean()) < Z * se_mean, (name, j, p.mean(), se_mean)
        sq = p**2
        se_var = _mcse_mean(sq)
        assert abs(sq.mean() - true_var[j]) < Z * se_var, (name, j, sq.mean(), true_var[j], se_var)
        # The check is only meaningful if the Monte Carlo error is small against the variance.
        assert se_var < 0.05 * true_var[j], (name, j, se_var)


# --------------------------------------------------------------------------- batched == alone

def _batched_cases() -> list:
    """Every batched sampler; one whose module declares ``BATCHED_EQUALS_ALONE = False`` (a known
    defect) is expected to fail, and is slow so as not to spend the default suite on it."""
    known = pytest.mark.xfail(strict=True, reason="the module declares BATCHED_EQUALS_ALONE = False")
    return [name if getattr(_module(name), "BATCHED_EQUALS_ALONE", True) else
            pytest.param(name, marks=[known, pytest.mark.slow]) for name in BATCHED]


@pytest.mark.parametrize("name", _batched_cases())
def test_batched_runs_equal_runs_alone(name, gaussian, gaussian_runs):
    """The Gaussian run and one with every runtime field changed, as one program: each gets the
    draws it gets alone (the Gaussian run above is the first one alone)."""
    cfg, alone = gaussian_runs(name)
    other = dataclasses.replace(cfg, **{f.name: other_value(cfg, f) for f in _fields(name, runtime=True)})
    make = _module(name).make
    keys = [jax.random.key(1), jax.random.key(3)]
    batched = driver.run_batch([make(cfg), make(other)], [gaussian, gaussian], keys, proj_dim=GAUSS_DIM)
    alones = [alone, driver.run(make(other), gaussian, keys[1], proj_dim=GAUSS_DIM)]
    for b, a in zip(batched, alones):
        np.testing.assert_allclose(b.Ln, a.Ln, rtol=1e-6)
        np.testing.assert_allclose(b.theta_proj, a.theta_proj, rtol=1e-5, atol=1e-9)
    assert not np.allclose(batched[0].Ln, batched[1].Ln)  # two runs, not one copied
