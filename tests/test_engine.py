"""The driver: compiled programs reused across hyperparameters, in-process and across processes;
exact single steps of the plug-in samplers."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np

from llc.config import SGLDConfig, build_config
from llc.engine import driver
from llc.engine.posterior import Problem, problem_arrays
from llc.pipeline.experiment import run_experiment
from llc.pipeline.sampling import enable_x64

QUAD = ["target.kind=quadratic", "target.quadratic.dim=5", "data.n_data=777", "samplers=sgld", "save_plots=false",
        "sgld.draws=60", "sgld.burnin=0", "sgld.eval_every=5", "sgld.chains=2"]


def test_grid_of_16_runs_compiles_once(tmp_path):
    enable_x64()
    driver._COMPILED.clear()
    compile_s = []
    for eps in (1e-4, 2e-4, 4e-4, 8e-4):
        for gamma in (50.0, 100.0, 200.0, 400.0):
            cfg = build_config(overrides=QUAD + [f"sgld.step_size={eps}", f"posterior.gamma={gamma}"])
            rec = run_experiment(cfg, tmp_path)
            compile_s.append(rec["samplers"]["sgld"]["compile_s"])
    first, rest = compile_s[0], compile_s[1:]
    assert first > 0
    assert all(c < 0.05 * first for c in rest), compile_s


def _run_json(tmp_path, cache_dir, eps: float) -> dict:
    env = dict(os.environ, LLC_JAX_CACHE=str(cache_dir), JAX_PLATFORMS="cpu")
    args = [sys.executable, "-m", "llc", "run", "--json", "--artifacts", str(tmp_path / "art"), "--no-save-plots"]
    for o in QUAD[:-4] + ["sgld.draws=60", "sgld.burnin=0", "sgld.eval_every=5", f"sgld.step_size={eps}"]:
        args += ["--set", o]
    out = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)


def test_fresh_process_reuses_the_persistent_cache(tmp_path):
    cache = tmp_path / "xla"
    cold = _run_json(tmp_path, cache, 1e-4)["samplers"]["sgld"]["compile_s"]
    entries = sorted(p.name for p in cache.iterdir())
    warm = _run_json(tmp_path, cache, 3e-4)["samplers"]["sgld"]["compile_s"]
    assert cold > 0 and entries
    # Every program of the second process (another step size: a runtime value) came from the cache:
    # it added no entry. Its remaining compile_s is tracing and lowering, which a persistent cache
    # never skips: ~0.25 of the cold time on a loaded 2-core machine, so a ratio alone would be flaky.
    assert sorted(p.name for p in cache.iterdir()) == entries
    assert warm < 0.5 * cold, (cold, warm)


def test_sgld_step_is_the_langevin_update():
    enable_x64()
    w_star = {"a": jnp.array([0.5, -1.0], jnp.float32), "b": jnp.array([2.0], jnp.float32)}
    x = jnp.linspace(0.0, 1.0, 8, dtype=jnp.float32)[:, None]
    y = 2.0 * x

    def loss(p, xb, yb):
        return 0.5 * jnp.mean((yb - p["a"][0] * xb - p["b"][0]) ** 2) + 0.1 * jnp.sum(p["a"] ** 2)

    from llc.engine.posterior import Posterior
    from llc.engine.samplers import sgld

    post = Posterior(loss, w_star, x, y, 8, 0.5, 3.0, 0.0)
    cfg = SGLDConfig(step_size=1e-2, batch_size=8)
    alg = sgld.make(cfg)
    problem = Problem(loss, problem_arrays(post), 8, None)
    moved = {"a": w_star["a"] + 0.1, "b": w_star["b"] - 0.2}
    state = alg.init(jax.random.key(0), moved, problem, alg.params)
    key = jax.random.key(5)
    new, _ = alg.step(key, state, problem, alg.params)
    k_batch, k_noise = jax.random.split(key)
    idx = jax.random.randint(k_batch, (8,), 0, 8)
    grad = jax.grad(lambda w: -4.0 * loss(w, x[idx], y[idx])
                    - 1.5 * sum(jnp.sum((w[k] - w_star[k]) ** 2) for k in w))(moved)
    # A normal per leaf, the i-th leaf (sorted keys) from the i-th split of the step's noise key.
    noise = {k: jax.random.normal(kk, moved[k].shape, moved[k].dtype)
             for k, kk in zip(sorted(moved), jax.random.split(k_noise, len(moved)))}
    for k in moved:
        expect = moved[k] + 0.005 * grad[k] + np.sqrt(0.01) * noise[k]
        np.testing.assert_allclose(np.asarray(new.position[k]), np.asarray(expect), rtol=1e-6, atol=1e-7)


def _quadratic_posts(gammas, tmp_path):
    from llc.engine.posterior import make_posterior
    from llc.engine.targets import get_target

    cfg = build_config(overrides=QUAD)
    target = get_target(cfg, tmp_path)
    return [make_posterior(target.loss_fn, target.params, target.x, target.y,
                           build_config(overrides=QUAD + [f"posterior.gamma={g}"]).posterior, L0=target.L0)
            for g in gammas]


def test_batched_runs_equal_unbatched_runs(tmp_path):
    """A grid as one program gives each run the numbers it gets alone (same random streams)."""
    enable_x64()
    from llc.config import HMCConfig
    from llc.engine.samplers import hmc, sgld

    gammas = (50.0, 100.0, 100.0, 400.0)
    posts = _quadratic_posts(gammas, tmp_path)
    seeds = (0, 0, 1, 2)
    for make, cfgs in (
        (sgld.make, [SGLDConfig(step_size=eps, chains=2, draws=40, burnin=5, eval_every=3)
                     for eps in (1e-4, 3e-4, 3e-4, 1e-3)]),
        (hmc.make, [HMCConfig(chains=2, draws=20, warmup=30, target_accept=t) for t in (0.6, 0.7, 0.8, 0.9)]),
    ):
        algs = [make(c) for c in cfgs]
        keys = [jax.random.key(s) for s in seeds]
        batched = driver.run_batch(algs, posts, keys)
        for alg, post, key, b in zip(algs, posts, keys, batched):
            alone = driver.run(alg, post, key)
            np.testing.assert_allclose(b.Ln, alone.Ln, rtol=1e-6)
            np.testing.assert_allclose(b.theta_proj, alone.theta_proj, rtol=1e-5, atol=1e-9)
            assert b.info["batch_size"] == 4
        # Different settings really differ (the batch is not one run copied).
        assert not np.allclose(batched[0].Ln, batched[1].Ln)


def test_precompiled_programs_are_the_ones_run(tmp_path):
    """Programs compiled ahead from an untrained target's shapes (on threads) are the ones the runs
    use: nothing compiles again, and the first run reports the compile time."""
    enable_x64()
    import threading

    from llc.config import MCLMCConfig
    from llc.engine.posterior import make_posterior
    from llc.engine.samplers import mclmc, sgld
    from llc.engine.targets import untrained

    cfg = build_config(overrides=QUAD)
    loss_fn, params, x, y = untrained(cfg)
    shapes_only = make_posterior(loss_fn, params, x, y, cfg.posterior, L0=0.0)
    trained = _quadratic_posts((100.0,), tmp_path)[0]
    driver._COMPILED.clear()
    algs = [sgld.make(SGLDConfig(chains=2, draws=20, eval_every=2, step_size=1e-4)),
            mclmc.make(MCLMCConfig(chains=2, draws=20, warmup=60, energy_check_steps=30))]
    threads = [threading.Thread(target=driver.precompile, args=([a], [shapes_only]), kwargs={"programs": (p,)})
               for a in algs for p in (("warmup",) if a.warmup else ()) + ("sample",)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    compiled = len(driver._COMPILED)
    assert compiled == 4  # sgld: init and sampling; mclmc: warm-up and sampling
    for alg in algs:
        out = driver.run(alg, trained, jax.random.key(1))
        assert out.work["compile_s"] > 0 and np.isfinite(out.Ln).all()
    assert len(driver._COMPILED) == compiled


def test_background_compilation_gives_the_same_run(tmp_path, monkeypatch):
    enable_x64()
    overrides = QUAD + ["samplers=[sgld,mclmc]", "mclmc.draws=20", "mclmc.warmup=60", "mclmc.chains=2",
                        "mclmc.energy_check_steps=30"]
    cfg = build_config(overrides=overrides)
    records = []
    for threads in ("0", "3"):
        monkeypatch.setenv("LLC_COMPILE_THREADS", threads)
        driver._COMPILED.clear()
        records.append(run_experiment(cfg, tmp_path / threads))
    for name in ("sgld", "mclmc"):
        assert records[0]["samplers"][name]["llc_mean"] == records[1]["samplers"][name]["llc_mean"]
        assert records[1]["samplers"][name]["compile_s"] > 0


def test_vi_reuses_its_programs_across_runtime_values(tmp_path):
    """VI (its own loop, not the driver's) takes nβ, γ, the learning rate and the initial scale as
    runtime arguments too: a second run with other values of all four compiles nothing new, and
    its result is that of a fresh process-wide cache (the values are not baked in)."""
    enable_x64()
    base = ["target.kind=quadratic", "target.quadratic.dim=3", "data.n_data=500", "samplers=vi", "save_plots=false",
            "vi.components=1", "vi.rank=3", "vi.steps=100", "vi.eval_every=20", "vi.eval_samples=16",
            "vi.whitening_mode=adam", "vi.whitening_steps=20", "vi.lr_schedule=cosine", "vi.batch_size=64"]
    other = ["posterior.gamma=300", "posterior.beta0=2", "vi.learning_rate=0.02", "vi.init_scale=2", "seed=3"]
    driver._COMPILED.clear()
    first = run_experiment(build_config(overrides=base), tmp_path / "a")["samplers"]["vi"]
    second = run_experiment(build_config(overrides=base + other), tmp_path / "a")["samplers"]["vi"]
    assert first["compile_s"] > 0 and second["compile_s"] < 0.05 * first["compile_s"], (first, second)
    driver._COMPILED.clear()
    alone = run_experiment(build_config(overrides=base + other), tmp_path / "b")["samplers"]["vi"]
    assert alone["compile_s"] > 0
    assert alone["llc_mean"] == second["llc_mean"] and alone["llc_mean"] != first["llc_mean"]


def test_hmc_window_adaptation_in_float32(tmp_path):
    """BlackJAX's window adaptation works in float64 under x64 while a float32 HMC keeps its state and
    parameters in float32: it must still trace and run (the slow variant tests cover the other tuners)."""
    enable_x64()
    short = ["target.kind=quadratic", "target.quadratic.dim=2", "data.n_data=200", "save_plots=false",
             "samplers=hmc", "hmc.warmup=30", "hmc.draws=20", "hmc.dtype=float32"]
    s = run_experiment(build_config(overrides=short), tmp_path)["samplers"]["hmc"]
    assert s["diverged_chains"] == 0 and np.isfinite(s["llc_mean"]), s
