import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import llc
from conftest import tanh_net
from llc.api import NotAMinimumWarning
from llc.config import ConfigError
from llc.pipeline.sampling import enable_x64
from llc.theory import quadratic_learning_coefficient

enable_x64()


def test_estimate_pure_loss_matches_quadratic_theory():
    d, n = 6, 1000
    x = np.zeros((n, 1))
    loss = lambda params, batch: 0.5 * jnp.sum(params["w"] ** 2)  # noqa: E731
    est = llc.estimate(loss, {"w": np.zeros(d)}, x, x, sampler="sgld",
                       sampler_config={"draws": 2000, "step_size": 1e-4, "dtype": "float64"},
                       posterior={"gamma": 50.0})
    exact = quadratic_learning_coefficient(d, n, est.beta, est.gamma)
    eps, precision = 1e-4, est.n * est.beta + est.gamma
    sgld_exact = exact / (1 - eps * precision / 4)  # Euler bias of SGLD on a Gaussian
    assert abs(est.llc_mean - sgld_exact) < 4 * est.llc_se
    assert est.llc_running.shape == (2000,)
    assert est.metrics["flags"] == []


def test_estimate_flags_an_impossible_answer():
    """A step far too large on a d = 4 quadratic reads above d/2: the estimate says so."""
    x = np.zeros((2048, 1))
    loss = lambda params, batch: 0.5 * jnp.sum(params["w"] ** 2)  # noqa: E731
    est = llc.estimate(loss, {"w": np.zeros(4)}, x, x, sampler="sgld",
                       sampler_config={"draws": 1000, "step_size": 0.0108, "dtype": "float64"})
    assert any(f.startswith("above_d_half") or "d/2" in f for f in est.metrics["flags"]), est.metrics["flags"]


def test_estimate_flax_module():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((256, 2))
    y = np.tanh(x[:, :1]) + 0.1 * rng.standard_normal((256, 1))
    model = tanh_net()
    params = model.init(jax.random.key(0), x)
    est = llc.estimate(model, params, x, y, sampler_config={"draws": 100, "chains": 2})
    assert est.metrics["chains"] == 2 and est.output.Ln.shape == (2, 100)
    assert np.isfinite(est.llc_mean)


def test_estimate_rejects_bad_options():
    x = np.zeros((10, 1))
    loss = lambda p, b: jnp.sum(p ** 2)  # noqa: E731
    with pytest.raises(ConfigError, match="sgld.step_size: must be > 0"):
        llc.estimate(loss, np.zeros(3), x, x, sampler_config={"step_size": -1.0})
    with pytest.raises(ConfigError, match="sampler: 'metropolis' is not allowed"):
        llc.estimate(loss, np.zeros(3), x, x, sampler="metropolis")


@pytest.mark.parametrize("kind", ["flax", "loss_fn"])
def test_repeated_estimate_reuses_its_programs(kind):
    """A notebook re-estimating at a new w* (same model, same shapes) compiles nothing the second
    time; the answer is still that of the new w*. The shapes (7 -> 5 -> 1, n = 213) are this
    test's own, so the first call cannot find another test's programs in memory."""
    import flax.linen as nn

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(1)(nn.tanh(nn.Dense(5)(x)))

    rng = np.random.default_rng(1)
    x = rng.standard_normal((213 if kind == "flax" else 217, 7))
    y = np.tanh(x[:, :1]) + 0.1 * rng.standard_normal((len(x), 1))

    def loss(p, batch):
        return 0.5 * jnp.mean(jnp.sum((batch[1] - Net().apply(p, batch[0])) ** 2, axis=-1))

    estimates = []
    for seed in (0, 1):
        params = Net().init(jax.random.key(seed), x)
        # A new module object each call (equal to the last), or the same loss function object.
        model = Net() if kind == "flax" else loss
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotAMinimumWarning)  # an untrained w* will do
            estimates.append(llc.estimate(model, params, x, y, sampler_config={"draws": 50, "chains": 2}))
    first, second = (e.metrics["compile_s"] for e in estimates)
    assert first > 0 and second < 0.05 * first, (first, second)
    assert estimates[0].llc_mean != estimates[1].llc_mean


def test_loss_wrappers_are_equal_exactly_for_the_same_model():
    """Programs are cached by the loss wrapper: equal for an equal module or the same function,
    distinct otherwise (a wrong match would run another model's program)."""
    from typing import Sequence

    import flax.linen as nn

    from llc.api import _as_loss_fn

    class Net(nn.Module):
        widths: Sequence[int] = (3,)

        @nn.compact
        def __call__(self, x):
            return nn.Dense(self.widths[0])(x)

    def f(p, b):
        return jnp.sum(p)

    def g(p, b):
        return jnp.sum(p)

    assert _as_loss_fn(Net()) == _as_loss_fn(Net()) and hash(_as_loss_fn(Net())) == hash(_as_loss_fn(Net()))
    assert _as_loss_fn(Net()) != _as_loss_fn(Net(widths=(4,)))
    assert _as_loss_fn(f) == _as_loss_fn(f) and _as_loss_fn(f) != _as_loss_fn(g)
    unhashable = Net(widths=[3])  # a list field: compared by identity
    assert _as_loss_fn(unhashable) == _as_loss_fn(unhashable)
    assert _as_loss_fn(unhashable) != _as_loss_fn(Net(widths=[3]))
    assert {_as_loss_fn(unhashable): 1}[_as_loss_fn(unhashable)] == 1


_ESTIMATE_IN_A_PROCESS = """
import sys, warnings
import jax.numpy as jnp, numpy as np, llc
warnings.simplefilter("ignore")
x = np.random.default_rng(0).standard_normal((97, 3))
loss = lambda p, b: 0.5 * jnp.mean((b[1] - b[0] @ p) ** 2)
est = llc.estimate(loss, np.full((3, 3), float(sys.argv[1])), x, x, sampler_config={"draws": 40, "chains": 2})
print(est.metrics["compile_s"])
"""


@pytest.mark.slow  # the same persistent cache as test_engine's fresh-process test, through the API
def test_estimate_in_a_fresh_process_reuses_the_persistent_cache(tmp_path):
    import os
    import subprocess
    import sys

    env = dict(os.environ, LLC_JAX_CACHE=str(tmp_path / "xla"), JAX_PLATFORMS="cpu")

    def compile_s(w: float) -> float:
        out = subprocess.run([sys.executable, "-c", _ESTIMATE_IN_A_PROCESS, str(w)], env=env, capture_output=True,
                             text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        return float(out.stdout.split()[-1])

    cold, warm = compile_s(0.1), compile_s(0.3)
    assert warm < 0.25 * cold, (cold, warm)


# --------------------------------------------------------------------------- everyday use, hardened

def _mlp_problem():
    """A small Flax MLP at its initialisation, with 64 examples of 3 features."""
    from conftest import tanh_net

    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 3))
    y = np.tanh(x[:, :1])
    model = tanh_net()
    return model, model.init(jax.random.key(0), x), x, y


def test_dir_lists_the_public_names_without_importing_jax():
    import subprocess
    import sys

    code = "import sys, llc; print(sorted(set(llc.__all__) - set(dir(llc))), 'jax' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.split("] ")[0] + "]" == "[]" and out.stdout.strip().endswith("False"), out.stdout + out.stderr
    assert {"estimate", "trajectory", "Estimate", "Trajectory", "DivergedWarning", "ConfigError"} <= set(llc.__all__)
    assert "annotations" not in dir(llc) and llc.Estimate is llc.api.Estimate


@pytest.mark.filterwarnings("ignore::llc.api.NotAMinimumWarning")
def test_all_chains_diverged_warns_with_reasons_and_advice():
    """Before: llc_mean None and no word; now a DivergedWarning names the count, the reason and the fix."""
    model, params, x, y = _mlp_problem()
    with pytest.warns(llc.DivergedWarning, match=r"sgld: all 2 chains diverged \(non-finite state\).*smaller step size"):
        est = llc.estimate(model, params, x, y, sampler_config={"draws": 20, "burnin": 2, "chains": 2, "step_size": 10.0})
    assert est.llc_mean is None and est.flags == est.metrics["flags"] and any("diverged" in f for f in est.flags)


def test_a_clean_estimate_does_not_warn_diverged():
    model, params, x, y = _mlp_problem()
    with warnings.catch_warnings():
        warnings.simplefilter("error", llc.DivergedWarning)
        warnings.simplefilter("ignore", NotAMinimumWarning)
        est = llc.estimate(model, params, x, y, sampler_config={"draws": 20, "burnin": 2, "chains": 2})
    assert est.llc_mean is not None and est.flags is est.metrics["flags"]


def _set_leaf(params, dtype):
    bias = params["params"]["Dense_0"]["bias"]
    return {"params": {**params["params"], "Dense_0": {**params["params"]["Dense_0"], "bias": bias.astype(dtype)}}}


def _with(arr, index, value):
    arr = np.array(arr)
    arr[index] = value
    return arr


@pytest.mark.parametrize("case, message", [
    ("nan_x", r"^x: contains NaN \(1 of 192 values\)"),
    ("inf_y", r"^y: contains inf \(1 of 64 values\)"),
    ("empty", r"^x: empty \(0 examples\); need at least 2$"),
    ("one", r"^x: 1 example; need at least 2$"),
    ("x_none", r"^x: expected an array of shape \(n, \.\.\.\) with a leading example axis, got NoneType$"),
    ("x_1d", r"^x: expected an array of shape \(n, \.\.\.\) with a leading example axis, got shape \(5,\)$"),
    ("int_leaf", r"^params: leaf \['params'\]\['Dense_0'\]\['bias'\] has integer dtype int32; "
                 r"the parameters must be floating point$"),
    ("seed", r"^seed: must be >= 0, got -1$"),
    ("proj_dim", r"^proj_dim: must be >= 1, got 0$"),
    ("chains", r"^sampler_config\.chains: 1000000000 chains × \d+ parameters need about [\d.]+ GB.*lower chains"),
    ("loss_xy", r"^model: the loss function's signature is loss\(params, x, y\); it is called as loss\(params, \(x, y\)\)"),
])
def test_bad_input_is_refused_in_one_line_naming_the_argument(case, message, monkeypatch):
    """Before: NaN/inf blamed on params, 'math domain error', IndexError, raw JAX/Flax errors, a
    killed process, or silently accepted. Now: one ConfigError line, before any sampling."""
    from llc.pipeline import sampling

    monkeypatch.setattr(sampling, "sample_one", lambda *a, **k: pytest.fail("sampled bad input"))
    model, params, x, y = _mlp_problem()

    def loss(params, x, y):
        return jnp.mean((y - model.apply(params, x)) ** 2)

    kwargs = {}
    if case == "nan_x":
        x = _with(x, (0, 0), np.nan)
    elif case == "inf_y":
        y = _with(y, (3, 0), np.inf)
    elif case == "empty":
        x, y = x[:0], y[:0]
    elif case == "one":
        x, y = x[:1], y[:1]
    elif case == "x_none":
        x = None
    elif case == "x_1d":
        x, y = x[:5, 0], y[:5]
    elif case == "int_leaf":
        params = _set_leaf(params, np.int32)
    elif case == "seed":
        kwargs["seed"] = -1
    elif case == "proj_dim":
        kwargs["proj_dim"] = 0
    elif case == "chains":
        kwargs["sampler_config"] = {"chains": 10**9}
    elif case == "loss_xy":
        model = loss
    with pytest.raises(ConfigError, match=message) as err:
        llc.estimate(model, params, x, y, **kwargs)
    assert "\n" not in str(err.value)


def test_api_memory_check_uses_the_run_estimate_constants():
    """The API's refusal is the CLI's estimate (chains × d × item × copies + recorded draws)."""
    from llc.config import SGLDConfig
    from llc.pipeline import resources as R

    sc = SGLDConfig(chains=4, draws=100, burnin=0)
    state, records, _ = R.chain_bytes(sc, 1000, 4)
    assert state == 4 * 1000 * 4 * R.STATE_COPIES and records == 4 * 100 * 16 * 8 * R.RECORD_COPIES
    R.check_sampler_memory(sc, 1000, 0, 4, "sampler_config.", host_available=state + records, device_available=None)
    with pytest.raises(ConfigError, match="^sampler_config.chains: 4 chains × 1000 parameters need about"):
        R.check_sampler_memory(sc, 1000, 0, 4, "sampler_config.", host_available=records, device_available=None)
    with pytest.raises(ConfigError, match="of accelerator memory"):
        R.check_sampler_memory(sc, 1000, 0, 4, "sampler_config.", host_available=10**12, device_available=state - 1)


def test_trajectory_of_no_checkpoints_is_refused(tmp_path):
    x = np.zeros((8, 1))
    with pytest.raises(ConfigError, match="^checkpoints: empty; give at least one$"):
        llc.trajectory(lambda p, b: jnp.sum(p ** 2), [], (x, x), out=tmp_path)
