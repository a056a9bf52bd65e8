"""Minibatch SGLD on BlackJAX, with optional RMSProp / Adam diagonal preconditioning.

Step-size convention (as in devinterp and Lau et al.):
    w <- w + (eps/2) * G * grad log p_batch(w) + N(0, eps * G)
with G = 1 for plain SGLD. BlackJAX's overdamped Langevin solver uses h * grad + sqrt(2h) * noise,
so plain SGLD calls it with h = eps/2. The preconditioned variants (pSGLD-style) are heuristics:
G adapts during sampling and the small Gamma-correction term is omitted.

The online LLC: every ``eval_every`` steps the full-batch L_n is evaluated and recorded.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import blackjax
import jax
import jax.numpy as jnp
import numpy as np

from llc.config import SGLDConfig
from llc.posterior import Posterior, cast, full_loss, minibatch_logdensity_grad
from llc.samplers import base


class SGLDState(NamedTuple):
    position: Any
    m: Any  # first-moment estimate (Adam); zeros otherwise
    v: Any  # second-moment estimate (RMSProp/Adam); zeros otherwise
    t: jax.Array  # steps taken


def _preconditioned_update(cfg: SGLDConfig, state: SGLDState, grad, key):
    b1, b2, eps = cfg.beta1, cfg.beta2, cfg.eps
    t = state.t + 1
    v = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, state.v, grad)
    if cfg.precond == "adam":
        m = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state.m, grad)
        tf = t.astype(jnp.result_type(float))
        c1 = 1 - b1**tf if cfg.bias_correction else 1.0
        c2 = 1 - b2**tf if cfg.bias_correction else 1.0
        drift = jax.tree.map(lambda m: m / c1, m)
        v_hat = jax.tree.map(lambda v: v / c2, v)
    else:
        m, drift, v_hat = state.m, grad, v
    leaves, treedef = jax.tree.flatten(state.position)
    noise_keys = jax.random.split(key, len(leaves))
    noise = jax.tree.unflatten(treedef, [jax.random.normal(k, p.shape, p.dtype) for k, p in zip(noise_keys, leaves)])
    h = cfg.step_size

    def move(p, d, vh, z):
        g_diag = 1.0 / (jnp.sqrt(vh) + eps)
        return p + 0.5 * h * g_diag * d + jnp.sqrt(h * g_diag) * z

    position = jax.tree.map(move, state.position, drift, v_hat, noise)
    return SGLDState(position, m, v, t)


def build_step(post: Posterior, cfg: SGLDConfig):
    """One SGLD step for one chain: (state, key) -> state."""
    grad_fn = minibatch_logdensity_grad(post)
    plain = blackjax.sgld(grad_fn)
    n, b = post.n, cfg.batch_size

    def step(state: SGLDState, key):
        return _step(state, key), None

    def _step(state: SGLDState, key):
        k_batch, k_noise = jax.random.split(key)
        idx = jax.random.randint(k_batch, (b,), 0, n)
        minibatch = (post.x[idx], post.y[idx])
        if cfg.precond == "none":
            position = plain.step(k_noise, state.position, minibatch, 0.5 * cfg.step_size)
            # BlackJAX builds its unit noise scale as a float64 array under x64, promoting a
            # float32 position; the noise itself is drawn in the position's dtype, so casting
            # back is exact up to the final rounding.
            position = jax.tree.map(lambda new, old: new.astype(old.dtype), position, state.position)
            return state._replace(position=position, t=state.t + 1)
        return _preconditioned_update(cfg, state, grad_fn(state.position, minibatch), k_noise)

    return step


def run(post: Posterior, cfg: SGLDConfig, key: jax.Array, *, proj_dim: int = 4,
        progress: base.ProgressFn = base.no_progress) -> base.SamplerOutput:
    post = cast(post, cfg.dtype)
    total = cfg.burnin + cfg.draws
    size = base.chunk_size(total)
    proj = base.projection_matrix(post.dim, proj_dim, seed=0, dtype=cfg.dtype)
    data = (base.posterior_data(post), proj)

    def chunk(states, keys, chunk_index, data):
        arrays, matrix = data
        p = base.with_data(post, arrays)
        step = build_step(p, cfg)
        loss = full_loss(p)

        def one_draw(state, draw_key):
            state, _ = jax.lax.scan(step, state, jax.random.split(draw_key, cfg.eval_every))
            w = state.position
            return state, (loss(w), base.project(w, p.w_star, matrix))

        draw_keys = base.chunk_draw_keys(keys, chunk_index, size)
        return jax.vmap(lambda s, k: jax.lax.scan(one_draw, s, k))(states, draw_keys)

    zeros = jax.tree.map(jnp.zeros_like, post.w_star)
    init = SGLDState(post.w_star, zeros, zeros, jnp.zeros((), jnp.int32))
    states = base.replicate(init, cfg.chains)
    keys = base.chain_keys(key, cfg.chains)
    compiled, compile_s = base.compile_timed(chunk, states, keys, jnp.asarray(0, jnp.int32), data)
    _, (Ln, theta), wall = base.run_chunks(compiled, states, keys, total, size, data, progress, "sgld")

    steps = total * cfg.eval_every
    grads = steps * cfg.chains
    work = {
        "n_grad_evals": float(grads),
        "fde": grads * cfg.batch_size / post.n,
        "full_loss_evals": float(total * cfg.chains),
        "wall_s": wall,
        "compile_s": compile_s,
        "warmup_s": wall * cfg.burnin / total,
    }
    return base.SamplerOutput(
        name="sgld",
        Ln=np.asarray(Ln[:, cfg.burnin:], dtype=np.float64),
        Ln_warmup=np.asarray(Ln[:, :cfg.burnin], dtype=np.float64),
        theta_proj=np.asarray(theta[:, cfg.burnin:], dtype=np.float64),
        stats={},
        work=work,
        info={"step_size": cfg.step_size, "batch_size": cfg.batch_size, "eval_every": cfg.eval_every,
              "steps_per_chain": steps, "precond": cfg.precond},
    )
