"""Teacher-student MLP target ([target.mlp]); MLPs as pure functions of a parameter pytree (a list of
{"W", "b"} dicts), also used by the deep linear network."""

from __future__ import annotations

import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from llc.engine.targets.base import Built
from llc.engine.targets.data import add_noise, sample_inputs
from llc.engine.targets.losses import make_loss, make_metrics

ACTIVATION_FNS = {
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "gelu": jax.nn.gelu,
    "identity": lambda z: z,
}


def count_params(sizes: Sequence[int], bias: bool) -> int:
    return sum(a * b + (b if bias else 0) for a, b in zip(sizes[:-1], sizes[1:]))


def width_for_params(target: int, in_dim: int, out_dim: int, depth: int, bias: bool) -> int:
    """Hidden width h (same for every hidden layer) whose parameter count is closest to target."""
    # count(h) = (depth-1) h^2 + (in + out + depth*bias - bias ... ) h + const; solve, then search nearby.
    a = depth - 1
    b = in_dim + out_dim + (depth if bias else 0)
    c = (out_dim if bias else 0) - target
    guess = (-c / b) if a == 0 else (-b + math.sqrt(b * b - 4 * a * c)) / (2 * a)
    candidates = range(max(1, int(guess) - 2), int(guess) + 3)
    return min(candidates, key=lambda h: abs(count_params([in_dim, *[h] * depth, out_dim], bias) - target))


def init_mlp(rng: np.random.Generator, sizes: Sequence[int], bias: bool, scale: float = 1.0) -> list[dict]:
    """Gaussian init with std scale/sqrt(fan_in); NumPy so that targets are bit-reproducible."""
    layers = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        layer = {"W": rng.standard_normal((fan_in, fan_out)) * scale / math.sqrt(fan_in)}
        if bias:
            layer["b"] = np.zeros(fan_out)
        layers.append(layer)
    return layers


def apply_mlp(params: Sequence[dict], x: jax.Array, activation: str) -> jax.Array:
    act = ACTIVATION_FNS[activation]
    h = x
    for i, layer in enumerate(params):
        h = h @ layer["W"]
        if "b" in layer:
            h = h + layer["b"]
        if i < len(params) - 1:
            h = act(h)
    return h


def apply_mlp_numpy(params: Sequence[dict], x: np.ndarray, activation: str) -> np.ndarray:
    # Jitted: eagerly, each layer's matmul, add and activation compile a program of their own.
    return np.asarray(jax.jit(apply_fn(activation))(params, x))


@functools.lru_cache(maxsize=None)
def apply_fn(activation: str):
    """apply(params, x) of an MLP with this activation: one function object per activation, so the
    losses built on it (and the driver's compiled programs, cached by them) are shared."""
    return functools.partial(apply_mlp, activation=activation)


# --------------------------------------------------------------------------- teacher-student target

def student_sizes(cfg) -> list[int]:
    m = cfg.target.mlp
    if m.widths is not None:
        hidden = list(m.widths)
    else:
        h = width_for_params(m.target_params, m.in_dim, m.out_dim, m.depth, m.bias)
        hidden = [h] * m.depth
    return [m.in_dim, *hidden, m.out_dim]


def teacher_activation(cfg) -> str:
    m = cfg.target.mlp
    return m.activation if m.teacher.activation == "same" else m.teacher.activation


def build(cfg) -> Built:
    """Teacher-student data: inputs from [data], outputs of a random teacher MLP plus noise (mse), or
    the argmax class of the noisy teacher outputs (cross_entropy); the student starts at random."""
    m, t = cfg.target.mlp, cfg.target.mlp.teacher
    rng = np.random.default_rng([cfg.target.seed, 0])
    teacher = init_mlp(rng, [m.in_dim, *[t.width] * t.depth, m.out_dim], bias=True, scale=t.weight_scale)
    x = sample_inputs(rng, cfg.data, cfg.data.n_data, m.in_dim)
    y_clean = apply_mlp_numpy(teacher, x, teacher_activation(cfg))
    y = add_noise(rng, cfg.data, x, y_clean)
    info = {"sizes": student_sizes(cfg), "activation": m.activation, "loss": m.loss}
    if m.loss == "cross_entropy":
        y = np.argmax(y, axis=-1).astype(np.int32)
        info["class_counts"] = np.bincount(y, minlength=m.out_dim).tolist()
    student = init_mlp(rng, info["sizes"], bias=m.bias)
    return Built(student, x, y, info)


def template(cfg):
    return init_mlp(np.random.default_rng(0), student_sizes(cfg), bias=cfg.target.mlp.bias)


def loss(cfg):
    m = cfg.target.mlp
    return make_loss(apply_fn(m.activation), m.loss)


def metrics(cfg):
    m = cfg.target.mlp
    return make_metrics(apply_fn(m.activation), m.loss, m.loss == "cross_entropy")
