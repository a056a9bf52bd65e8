"""SGLD's MALA acceptance check: its value, and what it costs in the compiled sampling program.

The check evaluates two full-batch gradients every ``mala_every`` draws. Two structural
regressions would multiply its cost without changing a number: the ``lax.cond`` turning into a
select (both branches, so the full-batch gradients, on every draw; vmap does this when the
predicate is batched) and the check moving into the per-step loop. The tests read the compiled
HLO and count full-batch gradient evaluations as they run, so neither can come back unseen.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llc.config import SGLDConfig
from llc.engine import driver
from llc.engine.posterior import Posterior, Problem, problem_arrays
from llc.engine.samplers import sgld
from llc.pipeline.sampling import enable_x64

N = 97  # full-batch size: no other array dimension of these programs is 97
BATCH = 13


def _mlp_loss(p, x, y):
    return jnp.mean((jnp.tanh(x @ p["w1"]) @ p["w2"] - y) ** 2)


def _posterior(loss_fn) -> Posterior:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, 5)).astype(np.float32)
    y = rng.normal(size=(N, 3)).astype(np.float32)
    w = {"w1": jnp.asarray(rng.normal(size=(5, 7)), jnp.float32),
         "w2": jnp.asarray(0.3 * rng.normal(size=(7, 3)), jnp.float32)}
    return Posterior(loss_fn, w, x, y, N, 1.0, 10.0, 0.0)


def _configs(mala: bool, draws=12, burnin=2, every=4):
    return [SGLDConfig(step_size=eps, chains=2, draws=draws, burnin=burnin, eval_every=3, batch_size=BATCH,
                       mala_check=mala, mala_every=every) for eps in (1e-4, 1e-3)]


def _run(loss_fn, cfgs, monkeypatch=None):
    """run_batch over the configs (one setting each); returns (outputs, HLO text of the sampling program)."""
    texts = []
    if monkeypatch is not None:
        compile_cached = driver.compile_cached

        def spy(key, fn, *args, **kwargs):
            exe, seconds = compile_cached(key, fn, *args, **kwargs)
            if key[0] == "sample":
                texts.append(exe.as_text())
            return exe, seconds

        monkeypatch.setattr(driver, "compile_cached", spy)
    post = _posterior(loss_fn)
    outs = driver.run_batch([sgld.make(c) for c in cfgs], [post] * len(cfgs), [jax.random.key(3)] * len(cfgs))
    return outs, (texts[-1] if texts else None)


# --------------------------------------------------------------------------- a small HLO reader

_REF = re.compile(r"\b(?:calls|to_apply|body|condition|true_computation|false_computation)=%?([\w.\-]+)")
_GROUP = re.compile(r"\b(?:branch_computations|called_computations)=\{([^}]*)\}")
_INSTR = re.compile(r"^\s*(?:ROOT )?%?[\w.\-]+ = (.*?) ([a-z][\w\-]*)\(")
_MOVES = {"parameter", "get-tuple-element", "tuple", "bitcast", "copy", "constant", "while", "conditional", "call"}


def _computations(hlo: str) -> tuple[dict[str, list[str]], str]:
    comps: dict[str, list[str]] = {}
    name = entry = None
    for line in hlo.splitlines():
        if name is None:
            m = re.match(r"^(ENTRY )?%?([\w.\-]+) \(", line)
            if m and line.rstrip().endswith("{"):
                name = m.group(2)
                comps[name] = []
                entry = name if m.group(1) else entry
        elif line.startswith("}"):
            name = None
        else:
            comps[name].append(line)
    assert entry is not None
    return comps, entry


def _refs(line: str) -> list[str]:
    out = _REF.findall(line)
    for group in _GROUP.findall(line):
        out += [s.strip().lstrip("%") for s in group.split(",") if s.strip()]
    return out


def _reachable(comps, roots, stop=frozenset()) -> set[str]:
    seen, todo = set(), list(roots)
    while todo:
        c = todo.pop()
        if c not in seen and c not in stop:
            seen.add(c)
            todo += [r for line in comps[c] for r in _refs(line)]
    return seen


def _full_batch_ops(comps, names) -> int:
    """Instructions that compute (not just move) an array with a full-batch dimension."""
    dim = re.compile(rf"\[(?:[\d,]*,)?{N}(?:,[\d,]*)?\]")
    return sum(1 for c in names for line in comps[c]
               if (m := _INSTR.match(line)) and m.group(2) not in _MOVES and dim.search(m.group(1)))


def _split_at_conditionals(hlo: str) -> tuple[int, int, int]:
    """(conditionals, full-batch ops inside their branches, full-batch ops elsewhere)."""
    comps, entry = _computations(hlo)
    everything = _reachable(comps, [entry])
    branches = [r for c in everything for line in comps[c] if " conditional(" in line for r in _refs(line)]
    inside = _reachable(comps, branches)
    outside = _reachable(comps, [entry], stop=frozenset(branches))
    n_cond = sum(" conditional(" in line for c in everything for line in comps[c])
    return n_cond, _full_batch_ops(comps, inside), _full_batch_ops(comps, outside)


# --------------------------------------------------------------------------- tests

@pytest.mark.parametrize("preconditioned", [False, True])
def test_mala_acceptance_is_the_metropolis_adjusted_langevin_ratio(preconditioned):
    """Against the formula written out in NumPy, on a linear-regression posterior (18 parameters)
    at a step size whose acceptance is well inside (0, 1); preconditioned: RMSProp's move
    N(w + eps/2 G grad, eps G) with a diagonal G, the same formula with G's weights."""
    enable_x64()

    def linear(p, x, y):
        return jnp.mean((x @ p["w"] + p["b"] - y) ** 2)

    post = _posterior(linear)._replace(w_star={"w": jnp.zeros((5, 3), jnp.float32), "b": jnp.zeros(3, jnp.float32)})
    problem = Problem(linear, problem_arrays(post), N, None)
    eps = 1e-2 if preconditioned else 5e-3
    params = sgld.make(SGLDConfig(step_size=eps)).params
    rng = np.random.default_rng(1)
    metric = jax.tree.map(lambda a: np.exp(rng.normal(size=a.shape) if preconditioned else 0 * a).astype(np.float32),
                          post.w_star)
    w = jax.tree.map(lambda a: a + 0.05 * rng.normal(size=a.shape).astype(np.float32), post.w_star)
    grad = jax.grad(problem.logdensity)(w)
    w_new = jax.tree.map(lambda a, g, m: a + 0.5 * eps * m * g + np.sqrt(eps * m) * rng.normal(size=a.shape).astype(
        np.float32), w, grad, metric)

    def flat(t):
        return np.concatenate([np.asarray(t[k], np.float64).ravel() for k in sorted(t)])

    lp, lp_new = float(problem.logdensity(w)), float(problem.logdensity(w_new))
    g, g_new, m = flat(grad), flat(jax.grad(problem.logdensity)(w_new)), flat(metric)
    a, b = flat(w), flat(w_new)
    log_q_back = -np.sum((a - b - 0.5 * eps * m * g_new) ** 2 / m) / (2 * eps)
    log_q_fwd = -np.sum((b - a - 0.5 * eps * m * g) ** 2 / m) / (2 * eps)
    want = min(1.0, np.exp(lp_new - lp + log_q_back - log_q_fwd))
    assert 0.2 < want < 0.9  # the ratio itself, not the clip at 1 or an underflow to 0
    got = sgld.mala_acceptance(problem, params, w, w_new, metric if preconditioned else None)
    assert float(got) == pytest.approx(want, rel=1e-3)


def test_rmsprop_sgld_checks_its_step():
    """RMSProp SGLD records its MALA acceptance too: high at a small step, and step_bias at one far too
    large (the same floor as plain SGLD's, in G's whitened coordinates). Least squares, so minibatch
    gradients carry noise at w* as a network's do."""
    import llc

    rng = np.random.default_rng(0)
    x = rng.standard_normal((2000, 4))
    y = x @ rng.standard_normal(4) + rng.standard_normal(2000)
    w_star = np.linalg.lstsq(x, y, rcond=None)[0]
    loss = lambda p, batch: 0.5 * jnp.mean((batch[0] @ p["w"] - batch[1]) ** 2)  # noqa: E731
    accepted = {}
    for eps in (1e-2, 1.0):
        est = llc.estimate(loss, {"w": w_star}, x, y, sampler="sgld",
                           sampler_config={"precond": "rmsprop", "step_size": eps, "draws": 300})
        accepted[eps] = (est.output.info["mean_mala_acceptance"], est.metrics["flags"])
    assert accepted[1e-2][0] > 0.9 and not any(f.startswith("step_bias") for f in accepted[1e-2][1]), accepted
    assert any(f.startswith("step_bias") for f in accepted[1.0][1]), accepted


def test_mala_branch_is_a_real_conditional_of_the_sampling_program(monkeypatch):
    """All the check's full-batch work sits in a conditional; outside it the program computes on
    the full batch exactly what it does with the check off (the per-draw L_n)."""
    enable_x64()

    def loss(p, x, y):  # a loss object of its own: a fresh compile, whatever ran before
        return _mlp_loss(p, x, y)

    _, on = _run(loss, _configs(True), monkeypatch)
    _, off = _run(loss, _configs(False), monkeypatch)
    n_cond, inside, outside = _split_at_conditionals(on)
    n_cond_off, _, total_off = _split_at_conditionals(off)
    assert n_cond_off == 0 and total_off > 0
    assert n_cond >= 1, "the MALA check is no longer a conditional (a select runs it on every draw)"
    assert inside > 0, "no full-batch work inside the conditional"
    assert outside == total_off, (f"{outside} full-batch ops outside the conditional vs {total_off} with the check "
                                  "off: part of the check runs on every draw")


def test_full_batch_gradients_run_only_on_checked_draws():
    """Counted as they run: 2 full-batch gradients per check, a check every ``mala_every`` draws
    (burn-in included) per chain and setting, and the work accounting reports the same number."""
    enable_x64()
    counted = []

    @jax.custom_vjp
    def loss(p, x, y):
        return _mlp_loss(p, x, y)

    def fwd(p, x, y):
        return _mlp_loss(p, x, y), (p, x, y)

    def bwd(res, ct):
        p, x, y = res
        if x.shape[0] == N:  # a full-batch gradient (minibatches have BATCH rows)
            # One element per evaluation, whether the callback sees the batch at once or element-wise.
            jax.debug.callback(lambda v: counted.append(np.size(v)), jnp.sum(p["w1"]))
        return jax.vjp(_mlp_loss, p, x, y)[1](ct)

    loss.defvjp(fwd, bwd)
    draws, burnin, every = 12, 2, 4
    cfgs = _configs(True, draws, burnin, every)
    outs, _ = _run(loss, cfgs)
    jax.effects_barrier()
    chains, total = cfgs[0].chains, draws + burnin
    checks = -(-total // every)  # global draws 0, 4, 8, 12
    assert sum(counted) == 2 * checks * chains * len(cfgs)
    minibatch = total * cfgs[0].eval_every * chains
    for out in outs:
        assert out.work["n_grad_evals"] - minibatch == 2 * checks * chains
        acc = out.stats["mala_acceptance"]  # kept draws: global index burnin + j
        checked = (burnin + np.arange(draws)) % every == 0
        assert np.isfinite(acc[:, checked]).all() and np.isnan(acc[:, ~checked]).all()
        assert ((acc[:, checked] >= 0) & (acc[:, checked] <= 1)).all()


def test_calibrate_reports_sampling_apart_from_compilation(tmp_path):
    """``llc calibrate``'s sampling seconds are the points' sampling_s (what a sweep's CSV sums),
    not the wall around the batch, which also holds compilation (most of it on a cold cache)."""
    from llc.config import build_config
    from llc.pipeline import calibrate as cal

    base = build_config(overrides=["target.kind=quadratic", "target.quadratic.dim=3", "sgld.draws=20",
                                   "sgld.burnin=4", "sgld.eval_every=2", "sgld.chains=2"])
    res = cal.run_points(cal.plan(base, "sgld", ["sgld.step_size=1e-4,2e-4"]), tmp_path)
    assert res["sampling_s"] == pytest.approx(sum(o.work["sampling_s"] for o in res["outputs"]))
    assert 0 < res["sampling_s"] and res["sampling_s"] + res["compile_s"] <= res["wall_s"]
