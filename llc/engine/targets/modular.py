"""Modular arithmetic target ([target.modular]): the grokking task.

Every pair (a, b) with a, b in {0..p-1} is labelled (a op b) mod p; a ``train_frac`` of the p^2
pairs (drawn with ``split_seed``) is the training set, the other pairs the test set, stored with
the target. Inputs stay integer end to end:

- ``model = "mlp"``: x is (n, 2) = (a, b); the network sees the concatenated one-hot codes
  (2p inputs), then ``depth`` hidden layers (GELU by default) and p logits.
- ``model = "routed"``: as ``mlp``, each hidden layer a softmax-gated mixture of ``heads`` parallel
  dense heads (``RoutedMLP``), trained with a routing regularizer (``train_loss``).
- ``model = "transformer"``: x is (n, 4) = tokens [a, op, b, =] (vocabulary p + 2: residues, then
  the op token p and the "=" token p + 1); one decoder-only block (causal multi-head attention
  and an MLP, residual stream d_model, learned positional embeddings, LayerNorm optional; more
  blocks with ``n_layers``, pre-norm as in the seed project's GrokTransformer when layer_norm is on),
  logits from the last position. Defaults as in Nanda et al. (2023), "Progress measures for
  grokking via mechanistic interpretability": p = 113, d_model 128, 4 heads of 32, d_mlp 512,
  ReLU, no LayerNorm, weights initialised N(0, 1/d_model).

Embeddings (token and position: "embed", "pos_embed"), biases and norms are never weight-decayed
(``training.decay_mask``), as in the seed project and in Nanda et al.'s AdamW set-up.
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from llc.config import ModularMLPConfig, RoutedConfig, RunConfig, TransformerConfig, modular_train_size
from llc.engine.targets.base import Built
from llc.engine.targets.losses import make_loss, make_metrics

_ACTIVATIONS = {"relu": nn.relu, "gelu": nn.gelu, "tanh": jnp.tanh, "identity": lambda z: z}
_OPS = {"add": np.add, "subtract": np.subtract, "multiply": np.multiply}


def input_codes(p: int, pairs: jax.Array) -> jax.Array:
    """The concatenated one-hot codes of (a, b): what the MLP's first layer reads."""
    return jax.nn.one_hot(pairs, p, dtype=jnp.float32).reshape(*pairs.shape[:-1], 2 * p)


class OneHotMLP(nn.Module):
    """Logits of (a op b) mod p from the one-hot codes of (a, b)."""

    p: int
    depth: int
    width: int
    activation: str

    @nn.compact
    def __call__(self, pairs: jax.Array, inputs: jax.Array | None = None, with_repr: bool = False):
        """``inputs``: continuous (..., 2p) in place of the one-hot codes (for input-space derivatives);
        ``with_repr``: also return the hidden state the output layer reads."""
        h = input_codes(self.p, pairs) if inputs is None else inputs
        for i in range(self.depth):
            h = _ACTIVATIONS[self.activation](nn.Dense(self.width, name=f"hidden_{i}")(h))
        logits = nn.Dense(self.p, name="out")(h)
        return (logits, h) if with_repr else logits


def routing_penalty(name: str, weights: jax.Array) -> jax.Array:
    """Mean over inputs (and routed layers) of a penalty on the gate's weights r (last axis, sums to
    1), 0 when r picks one head and largest when r is uniform: ``entropy`` -sum r log r, ``sparsity``
    sum sqrt(r) - 1 (an L1/2 quasi-norm), ``gini`` the Gini impurity 1 - sum r^2."""
    if name == "entropy":
        return jnp.mean(-jnp.sum(weights * jnp.log(jnp.clip(weights, 1e-30)), axis=-1))
    if name == "sparsity":
        return jnp.mean(jnp.sum(jnp.sqrt(weights + 1e-12), axis=-1) - 1.0)
    if name == "gini":
        return jnp.mean(1.0 - jnp.sum(weights ** 2, axis=-1))
    return jnp.zeros((), weights.dtype)


class RoutedMLP(nn.Module):
    """OneHotMLP whose hidden layers route each input through ``heads`` parallel heads: every head
    is a dense layer of ``width`` units (all heads of a layer in one kernel, ``hidden_<i>``), and
    the layer's output is their mixture sum_k r_k(h) head_k(h), weighted per input by a softmax
    gate r computed from the layer's input (``gate_<i>``). One head picked: a plain MLP layer."""

    p: int
    depth: int
    width: int
    heads: int
    activation: str

    @nn.compact
    def __call__(self, pairs: jax.Array, inputs: jax.Array | None = None, with_repr: bool = False,
                 with_routing: bool = False):
        """As OneHotMLP's; ``with_routing``: also return the gate weights (depth, ..., heads)."""
        h = input_codes(self.p, pairs) if inputs is None else inputs
        routes = []
        for i in range(self.depth):
            r = jax.nn.softmax(nn.Dense(self.heads, name=f"gate_{i}")(h), axis=-1)
            u = _ACTIVATIONS[self.activation](nn.Dense(self.heads * self.width, name=f"hidden_{i}")(h))
            h = jnp.einsum("...kw,...k->...w", u.reshape(*u.shape[:-1], self.heads, self.width), r)
            routes.append(r)
        logits = nn.Dense(self.p, name="out")(h)
        extra = ((h,) if with_repr else ()) + ((jnp.stack(routes),) if with_routing else ())
        return (logits, *extra) if extra else logits


class Transformer(nn.Module):
    """Decoder-only transformer of ``n_layers`` blocks; logits of the answer from the last position.
    Block 0's parameters are named as the one-layer model's (attn, mlp_in, mlp_out, ln_attn,
    ln_mlp), block l >= 1's with the suffix _l (attn_1, ...)."""

    p: int
    d_model: int
    heads: int
    d_mlp: int
    activation: str
    layer_norm: bool
    n_layers: int = 1

    @nn.compact
    def __call__(self, tokens: jax.Array, inputs: jax.Array | None = None, with_repr: bool = False):
        """``inputs``: token embeddings (..., 4, d_model) in place of the embedding lookup (for
        input-space derivatives); ``with_repr``: also return the last position's final residual."""
        init = nn.initializers.normal(1.0 / math.sqrt(self.d_model))
        norm = (lambda name: nn.LayerNorm(name=name)) if self.layer_norm else (lambda name: lambda h: h)
        h = nn.Embed(self.p + 2, self.d_model, embedding_init=init, name="embed")(tokens) if inputs is None else inputs
        h = h + self.param("pos_embed", init, (tokens.shape[-1], self.d_model)).astype(h.dtype)
        for layer in range(self.n_layers):
            sfx = f"_{layer}" if layer else ""
            attn = nn.MultiHeadDotProductAttention(num_heads=self.heads, qkv_features=self.d_model,
                                                   out_features=self.d_model, kernel_init=init, name="attn" + sfx)
            h = h + attn(norm("ln_attn" + sfx)(h), mask=nn.make_causal_mask(tokens))
            m = nn.Dense(self.d_mlp, kernel_init=init, name="mlp_in" + sfx)(norm("ln_mlp" + sfx)(h))
            h = h + nn.Dense(self.d_model, kernel_init=init, name="mlp_out" + sfx)(_ACTIVATIONS[self.activation](m))
        rep = norm("ln_final")(h)[..., -1, :]
        logits = nn.Dense(self.p, use_bias=False, kernel_init=init, name="unembed")(rep)
        return (logits, rep) if with_repr else logits


@functools.lru_cache(maxsize=None)
def _network(p: int, model: str, section: ModularMLPConfig | TransformerConfig | RoutedConfig) -> nn.Module:
    if model == "mlp":
        return OneHotMLP(p, section.depth, section.width, section.activation)
    if model == "routed":
        return RoutedMLP(p, section.depth, section.width, section.heads, section.activation)
    return Transformer(p, section.d_model, section.heads, section.d_mlp, section.activation, section.layer_norm,
                       section.n_layers)


@functools.lru_cache(maxsize=None)
def _apply_for(network: nn.Module):
    # One function object per network structure: losses built on it share compiled programs.
    return lambda params, x: network.apply({"params": params}, x)


def network(cfg: RunConfig) -> nn.Module:
    m = cfg.target.modular
    return _network(m.p, m.model, getattr(m, m.model))


def apply_fn(cfg: RunConfig):
    """apply(params, x) -> logits (n, p), params being the Flax "params" collection."""
    return _apply_for(network(cfg))


def dataset(p: int, op: str, model: str) -> tuple[np.ndarray, np.ndarray]:
    """All p^2 examples in the order a * p + b: inputs (int32) and labels (a op b) mod p (int32)."""
    a, b = np.divmod(np.arange(p * p), p)
    labels = np.mod(_OPS[op](a, b), p).astype(np.int32)
    if model != "transformer":  # the MLPs read the pair
        return np.stack([a, b], axis=1).astype(np.int32), labels
    return np.stack([a, np.full_like(a, p), b, np.full_like(a, p + 1)], axis=1).astype(np.int32), labels


def split(p: int, train_frac: float, split_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted indices (into ``dataset``) of the training and the test pairs."""
    perm = np.random.default_rng([split_seed, 2]).permutation(p * p)
    n = modular_train_size(p, train_frac)
    return np.sort(perm[:n]), np.sort(perm[n:])


def build(cfg: RunConfig) -> Built:
    m = cfg.target.modular
    x, y = dataset(m.p, m.op, m.model)
    train_idx, test_idx = split(m.p, m.train_frac, m.split_seed)
    variables = network(cfg).init(jax.random.key(cfg.target.seed), x[:1])
    params = jax.tree.map(np.asarray, variables["params"])
    info = {"p": m.p, "op": m.op, "model": m.model, "n_train": len(train_idx), "n_test": len(test_idx),
            "chance_accuracy": 1.0 / m.p}
    return Built(params, x[train_idx], y[train_idx], info, x[test_idx], y[test_idx])


def template(cfg: RunConfig):
    m = cfg.target.modular
    dummy = jnp.zeros((1, 4 if m.model == "transformer" else 2), jnp.int32)
    return jax.eval_shape(lambda: network(cfg).init(jax.random.key(0), dummy)["params"])


def loss(cfg: RunConfig):
    return make_loss(apply_fn(cfg), cfg.target.modular.loss)


@functools.lru_cache(maxsize=None)
def _routed_objective(net: nn.Module, loss_name: str, regularizer: str, weight: float):
    from llc.engine.targets.losses import LOSSES

    def objective(params, x, y):
        logits, routes = net.apply({"params": params}, x, with_routing=True)
        return LOSSES[loss_name](logits, y) + weight * routing_penalty(regularizer, routes)

    return objective


def train_loss(cfg: RunConfig):
    """What training minimises: the loss, plus the routing regularizer of a routed network."""
    m = cfg.target.modular
    if m.model != "routed" or m.routed.regularizer == "none" or m.routed.lambda_routing == 0:
        return loss(cfg)
    return _routed_objective(network(cfg), m.loss, m.routed.regularizer, m.routed.lambda_routing)


def metrics(cfg: RunConfig):
    return make_metrics(apply_fn(cfg), cfg.target.modular.loss, True)


# At most this many inputs (a fixed random subset of the p^2) enter the Jacobian and Hessian probes:
# their cost grows with inputs x probes, and the mean over a subset is an unbiased estimate whose
# SE the probes report. Spectral smoothness and the representation norm use every input.
PROBE_INPUTS = 512
PROBES_PER_INPUT = 2


def continuous_inputs(model: str, p: int, params, x: jax.Array) -> jax.Array:
    """The continuous input u that the network's first layer reads for integer inputs ``x``: the
    one-hot codes (n, 2p) for the MLP, the token embeddings (n, 4, d_model) for the transformer."""
    if model != "transformer":
        return input_codes(p, x).astype(jax.tree.leaves(params)[0].dtype)
    return jnp.take(params["embed"]["embedding"], x, axis=0)


@functools.lru_cache(maxsize=None)
def _probe_fn(net: nn.Module, loss: str, p: int, model: str):
    # One function object per network structure, as for the loss: compiled programs are shared.
    from llc.engine.targets import probes as P
    from llc.engine.targets.losses import LOSSES

    def probe_fn(params, data, key):
        v = {"params": params}
        logits, rep = net.apply(v, data["x"], with_repr=True)
        out = {"spectral_smoothness": P.spectral_smoothness(logits.reshape(p, p, -1)),
               "representation_norm": jnp.mean(jnp.linalg.norm(rep, axis=-1))}
        xs, ys = data["x"][data["sub"]], data["y"][data["sub"]]
        us = continuous_inputs(model, p, params, xs)
        f = lambda x1, u1: net.apply(v, x1[None], u1[None])[0]  # noqa: E731
        g = lambda x1, u1, y1: LOSSES[loss](f(x1, u1)[None], y1[None])  # noqa: E731
        kj, kh = jax.random.split(key)
        jac_sq, jac_sq_se = P.jacobian_sq_norm(f, xs, us, kj, PROBES_PER_INPUT)
        out["jacobian_norm"] = jnp.sqrt(jac_sq)
        out["jacobian_norm_se"] = jac_sq_se / (2 * jnp.sqrt(jnp.maximum(jac_sq, 1e-30)))  # delta method
        out["input_hessian_trace"], out["input_hessian_trace_se"] = P.input_hessian_trace(
            g, xs, us, ys, kh, PROBES_PER_INPUT)
        out.update(P.layer_weight_norms(params))
        if model == "routed":
            r = net.apply(v, data["x"], with_routing=True)[1]  # (depth, p^2, heads)
            out["routing_entropy"] = routing_penalty("entropy", r)
            # effective number of heads in use (exp of the entropy of the mean routing), over heads
            mean = r.mean(axis=1)
            used = jnp.exp(-jnp.sum(mean * jnp.log(jnp.clip(mean, 1e-30)), axis=-1)) / r.shape[-1]
            out["head_utilisation"] = used.mean()
        dtype = jax.tree.leaves(params)[0].dtype
        return {k: jnp.asarray(val, dtype) for k, val in out.items()}

    return probe_fn


def probes(cfg: RunConfig):
    """(probe_fn, probe_data): ``probe_fn(params, probe_data, key) -> {name: scalar}``, the
    input-space metrics of ``llc.engine.targets.probes`` on this task's p^2 inputs (Jacobian and
    Hessian on a fixed subset of at most PROBE_INPUTS), and the per-layer weight norms
    (``wnorm_<layer>``). Training records them at checkpoints and log steps."""
    m = cfg.target.modular
    x, y = dataset(m.p, m.op, m.model)
    n = min(PROBE_INPUTS, len(x))
    sub = np.sort(np.random.default_rng([m.split_seed, 3]).choice(len(x), n, replace=False)).astype(np.int32)
    return _probe_fn(network(cfg), m.loss, m.p, m.model), {"x": x, "y": y, "sub": sub}
