"""PyTorch models as pure JAX functions: ``torch.export``'s core-ATen graph, translated op by op.

    est = llc.estimate(torch_module, None, x, y, loss="cross_entropy")

The module is exported once (``torch.export`` with a dynamic batch axis, eval mode, then
``run_decompositions()`` to core ATen) and its graph is interpreted with ``jax.numpy`` / ``lax``
through ``OPS``, an explicit table from ATen operator name to JAX function. The parameters become
the pytree w*, a flat dict keyed by the module's parameter names (``layers.0.weight``); buffers
(masks, BatchNorm statistics) and lifted constants are constants of the loss. A graph holding an
operator outside ``OPS`` is refused with one line naming it, before anything is traced or sampled.

Why this bridge (README "PyTorch models"): torchax 0.0.13 does not import against torch 2.13, and
torch2jax calls back into torch at run time; a translation of the exported graph needs only torch at
set-up and leaves a program XLA compiles whole, with gradients from JAX.

Importing this module does not import torch: ``adapt`` looks for torch only in ``sys.modules``.
"""

from __future__ import annotations

import hashlib
import math
import operator
import sys
import threading
import weakref
from typing import Any, Callable

import jax
import jax.numpy as jnp
import jax.scipy.special  # noqa: F401 - OPS names jax.scipy.special.erf at import
import numpy as np
from jax import lax

from llc.config import ConfigError

# --------------------------------------------------------------------------------------------
# The operator table: ATen overload name (str(OpOverload)) -> JAX function of the same arguments.
# Tensors arrive as JAX arrays, torch dtypes as JAX dtypes (``_jax_dtype``), SymInts as ints.
# --------------------------------------------------------------------------------------------

_INT64_MAX = 9223372036854775807


def _dims(x, dim):
    """ATen's dim arguments: an int, a list, or None / [] (all axes)."""
    if dim is None or (isinstance(dim, (list, tuple)) and len(dim) == 0):
        return tuple(range(jnp.ndim(x)))
    return tuple(d % max(jnp.ndim(x), 1) for d in (dim if isinstance(dim, (list, tuple)) else [dim]))


def _addmm(bias, a, b, *, beta=1, alpha=1):
    out = a @ b
    return (out if alpha == 1 else alpha * out) + (bias if beta == 1 else beta * bias)


def _expand(x, size, implicit=False):
    size = list(size)
    lead = len(size) - jnp.ndim(x)
    shape = [x.shape[i - lead] if s == -1 else s for i, s in enumerate(size)]
    return jnp.broadcast_to(x, shape)


def _slice(x, dim=0, start=None, end=None, step=1):
    dim %= jnp.ndim(x)
    n = x.shape[dim]
    start = 0 if start is None else start
    end = n if end is None or end >= _INT64_MAX else end
    index = [slice(None)] * jnp.ndim(x)
    index[dim] = slice(start, end, step)
    return x[tuple(index)]


def _select(x, dim, index):
    return jnp.take(x, index, axis=dim % jnp.ndim(x))


def _split_with_sizes(x, sizes, dim=0):
    return jnp.split(x, np.cumsum(sizes)[:-1].tolist(), axis=dim % jnp.ndim(x))


def _split(x, size, dim=0):
    n = x.shape[dim]
    return jnp.split(x, list(range(size, n, size)), axis=dim % jnp.ndim(x))


def _squeeze(x, dims=None):
    axes = tuple(d for d in _dims(x, dims) if x.shape[d] == 1)  # ATen ignores dims that are not 1
    return jnp.squeeze(x, axes) if axes else x


def _layer_norm(x, shape, weight=None, bias=None, eps=1e-5):
    axes = tuple(range(jnp.ndim(x) - len(shape), jnp.ndim(x)))
    mean = jnp.mean(x, axes, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axes, keepdims=True)
    rstd = lax.rsqrt(var + eps)
    out = (x - mean) * rstd
    if weight is not None:
        out = out * weight
    if bias is not None:
        out = out + bias
    return out, mean, rstd


def _batch_norm_eval(x, weight, bias, mean, var, momentum, eps):
    shape = (1, -1) + (1,) * (jnp.ndim(x) - 2)
    out = (x - mean.reshape(shape)) * lax.rsqrt(var.reshape(shape) + eps)
    if weight is not None:
        out = out * weight.reshape(shape)
    if bias is not None:
        out = out + bias.reshape(shape)
    empty = jnp.zeros((0,), x.dtype)
    return out, empty, empty


def _convolution(x, w, bias, stride, padding, dilation, transposed, output_padding, groups):
    if transposed:
        raise ConfigError("model: the PyTorch bridge translates aten.convolution.default only untransposed "
                          "(ConvTranspose is not supported)")
    k = jnp.ndim(x) - 2
    spatial = "DHW"[-k:] if k <= 3 else None
    dn = (f"NC{spatial}", f"OI{spatial}", f"NC{spatial}")
    out = lax.conv_general_dilated(x, w, window_strides=tuple(stride), padding=[(p, p) for p in padding],
                                   rhs_dilation=tuple(dilation), dimension_numbers=dn, feature_group_count=groups)
    return out if bias is None else out + bias.reshape((1, -1) + (1,) * k)


def _pad(x, pad, value=0.0):
    widths = [(0, 0)] * jnp.ndim(x)
    for i in range(len(pad) // 2):  # ATen's pad lists (left, right) from the last axis backwards
        lo, hi = pad[2 * i], pad[2 * i + 1]
        widths[jnp.ndim(x) - 1 - i] = (lo, hi)
    if any(lo < 0 or hi < 0 for lo, hi in widths):
        return lax.pad(x, jnp.asarray(value, x.dtype), [(lo, hi, 0) for lo, hi in widths])
    return jnp.pad(x, widths, constant_values=value)


def _index(x, indices):
    return x[tuple(slice(None) if i is None else i for i in indices)]


def _reduce(fn):
    def reduce(x, dim=None, keepdim=False, *, dtype=None):
        out = fn(x, axis=_dims(x, dim), keepdims=keepdim)
        return out if dtype is None else out.astype(dtype)
    return reduce


def _var(x, dim=None, *, correction=None, keepdim=False):
    return jnp.var(x, axis=_dims(x, dim), ddof=1 if correction is None else correction, keepdims=keepdim)


def _max_dim(x, dim, keepdim=False):
    return jnp.max(x, axis=dim, keepdims=keepdim), jnp.argmax(x, axis=dim, keepdims=keepdim)


def _full(size, value, *, dtype=None, **_):
    return jnp.full(tuple(size), value, dtype=dtype if dtype is not None else _default_dtype(value))


def _default_dtype(value):
    # torch: a Python float fills float32 (here: the parameters' float dtype), an int int64, a bool bool.
    if isinstance(value, bool):
        return jnp.bool_
    if isinstance(value, int):
        return jax.dtypes.canonicalize_dtype(np.int64)
    return _Call.float_dtype


def _arange(*args, dtype=None, **_):
    start, end, step = (0, args[0], 1) if len(args) == 1 else (args + (1,))[:3]
    if dtype is None:
        dtype = _default_dtype(start if isinstance(start, float) else end if isinstance(end, float)
                               else step if isinstance(step, float) else 0)
    return jnp.arange(start, end, step, dtype=dtype)


def _like(value_fn):
    def like(x, *args, dtype=None, **_):
        return jnp.full(x.shape, value_fn(args), dtype=dtype if dtype is not None else x.dtype)
    return like


def _to_copy(x, *, dtype=None, **_):
    return x if dtype is None else x.astype(dtype)


def _where(cond, a, b):
    return jnp.where(cond, a, b)


def _scalar_tensor(value, *, dtype=None, **_):
    return jnp.asarray(value, dtype=dtype if dtype is not None else _Call.float_dtype)


def _nop(*args, **kwargs):
    return None


def _binary(fn):
    def binary(a, b, *, alpha=1):
        return fn(a, b if alpha == 1 else alpha * b)
    return binary


def _softmax(x, dim, half_to_float=False):
    return jax.nn.softmax(x, axis=dim)


def _log_softmax(x, dim, half_to_float=False):
    return jax.nn.log_softmax(x, axis=dim)


def _gelu(x, *, approximate="none"):
    return jax.nn.gelu(x, approximate=approximate == "tanh")


def _clamp(x, min=None, max=None):
    return jnp.clip(x, min, max)


def _embedding(weight, indices, padding_idx=-1, scale_grad_by_freq=False, sparse=False):
    return jnp.take(weight, indices, axis=0)


def _div_mode(a, b, *, rounding_mode=None):
    if rounding_mode == "floor":
        return jnp.floor_divide(a, b)
    if rounding_mode == "trunc":
        return jnp.trunc(jnp.true_divide(a, b)).astype(jnp.result_type(a, b))
    return jnp.true_divide(a, b)


OPS: dict[str, Callable] = {
    # linear algebra
    "aten.addmm.default": _addmm,
    "aten.mm.default": jnp.matmul,
    "aten.bmm.default": jnp.matmul,
    "aten.convolution.default": _convolution,
    # shapes and views
    "aten.view.default": lambda x, shape: jnp.reshape(x, tuple(shape)),
    "aten._unsafe_view.default": lambda x, shape: jnp.reshape(x, tuple(shape)),
    "aten.reshape.default": lambda x, shape: jnp.reshape(x, tuple(shape)),
    "aten.permute.default": lambda x, dims: jnp.transpose(x, tuple(dims)),
    "aten.t.default": lambda x: jnp.swapaxes(x, 0, 1) if jnp.ndim(x) == 2 else x,
    "aten.transpose.int": lambda x, a, b: jnp.swapaxes(x, a, b),
    "aten.expand.default": _expand,
    "aten.unsqueeze.default": lambda x, dim: jnp.expand_dims(x, dim % (jnp.ndim(x) + 1)),
    "aten.squeeze.dims": _squeeze,
    "aten.squeeze.dim": _squeeze,
    "aten.squeeze.default": _squeeze,
    "aten.slice.Tensor": _slice,
    "aten.select.int": _select,
    "aten.split_with_sizes.default": _split_with_sizes,
    "aten.split.Tensor": _split,
    "aten.cat.default": lambda xs, dim=0: jnp.concatenate(xs, axis=dim),
    "aten.clone.default": lambda x, *, memory_format=None: x,
    "aten.alias.default": lambda x: x,
    "aten._to_copy.default": _to_copy,
    "aten.index.Tensor": _index,
    "aten.gather.default": lambda x, dim, index, *, sparse_grad=False: jnp.take_along_axis(x, index, axis=dim),
    "aten.constant_pad_nd.default": _pad,
    "aten.embedding.default": _embedding,
    # creation
    "aten.arange.default": _arange,
    "aten.arange.start": _arange,
    "aten.arange.start_step": _arange,
    "aten.full.default": _full,
    "aten.full_like.default": _like(lambda a: a[0]),
    "aten.zeros_like.default": _like(lambda a: 0),
    "aten.ones_like.default": _like(lambda a: 1),
    "aten.scalar_tensor.default": _scalar_tensor,
    # elementwise arithmetic
    "aten.add.Tensor": _binary(jnp.add),
    "aten.add.Scalar": _binary(jnp.add),
    "aten.sub.Tensor": _binary(jnp.subtract),
    "aten.sub.Scalar": _binary(jnp.subtract),
    "aten.rsub.Scalar": lambda a, b, alpha=1: b - alpha * a,
    "aten.rsub.Tensor": lambda a, b, alpha=1: b - alpha * a,
    "aten.mul.Tensor": jnp.multiply,
    "aten.mul.Scalar": jnp.multiply,
    "aten.div.Tensor": jnp.true_divide,
    "aten.div.Scalar": jnp.true_divide,
    "aten.div.Tensor_mode": _div_mode,
    "aten.neg.default": jnp.negative,
    "aten.pow.Tensor_Scalar": jnp.power,
    "aten.pow.Tensor_Tensor": jnp.power,
    "aten.pow.Scalar": jnp.power,
    "aten.reciprocal.default": jnp.reciprocal,
    "aten.abs.default": jnp.abs,
    "aten.sign.default": jnp.sign,
    "aten.maximum.default": jnp.maximum,
    "aten.minimum.default": jnp.minimum,
    "aten.clamp.default": _clamp,
    "aten.clamp.Tensor": _clamp,
    "aten.where.self": _where,
    "aten.exp.default": jnp.exp,
    "aten.expm1.default": jnp.expm1,
    "aten.log.default": jnp.log,
    "aten.log1p.default": jnp.log1p,
    "aten.sqrt.default": jnp.sqrt,
    "aten.rsqrt.default": lax.rsqrt,
    "aten.sin.default": jnp.sin,
    "aten.cos.default": jnp.cos,
    "aten.erf.default": jax.scipy.special.erf,
    # activations
    "aten.relu.default": jax.nn.relu,
    "aten.tanh.default": jnp.tanh,
    "aten.sigmoid.default": jax.nn.sigmoid,
    "aten.gelu.default": _gelu,
    "aten.hardtanh.default": lambda x, lo=-1.0, hi=1.0: jnp.clip(x, lo, hi),
    "aten.leaky_relu.default": lambda x, slope=0.01: jnp.where(x > 0, x, slope * x),
    "aten.elu.default": lambda x, alpha=1.0, scale=1.0, input_scale=1.0:
        scale * jnp.where(x > 0, x, alpha * jnp.expm1(input_scale * x)),
    "aten.softplus.default": lambda x, beta=1.0, threshold=20.0:
        jnp.where(beta * x > threshold, x, jnp.logaddexp(beta * x, 0.0) / beta),
    "aten._softmax.default": _softmax,
    "aten._log_softmax.default": _log_softmax,
    # normalization
    "aten.native_layer_norm.default": _layer_norm,
    "aten._native_batch_norm_legit_no_training.default": _batch_norm_eval,
    # reductions
    "aten.sum.dim_IntList": _reduce(jnp.sum),
    "aten.sum.default": lambda x, *, dtype=None: _reduce(jnp.sum)(x, dtype=dtype),
    "aten.mean.dim": _reduce(jnp.mean),
    "aten.mean.default": lambda x, *, dtype=None: _reduce(jnp.mean)(x, dtype=dtype),
    "aten.amax.default": _reduce(jnp.max),
    "aten.amin.default": _reduce(jnp.min),
    "aten.any.dim": _reduce(jnp.any),
    "aten.any.dims": _reduce(jnp.any),
    "aten.any.default": lambda x: jnp.any(x),
    "aten.all.dim": _reduce(jnp.all),
    "aten.all.default": lambda x: jnp.all(x),
    "aten.var.correction": _var,
    "aten.max.dim": _max_dim,
    "aten.argmax.default": lambda x, dim=None, keepdim=False: jnp.argmax(x, axis=dim, keepdims=keepdim),
    # comparisons and logic
    **{f"aten.{name}.{kind}": fn for name, fn in (("eq", jnp.equal), ("ne", jnp.not_equal), ("lt", jnp.less),
                                                  ("le", jnp.less_equal), ("gt", jnp.greater),
                                                  ("ge", jnp.greater_equal)) for kind in ("Tensor", "Scalar")},
    "aten.logical_not.default": jnp.logical_not,
    "aten.logical_and.default": jnp.logical_and,
    "aten.logical_or.default": jnp.logical_or,
    "aten.bitwise_not.default": jnp.invert,
    "aten.bitwise_and.Tensor": jnp.bitwise_and,
    "aten.bitwise_or.Tensor": jnp.bitwise_or,
    # symbolic sizes (the dynamic batch axis) and shape asserts: plain ints / nothing at trace time
    "aten.sym_size.int": lambda x, dim: x.shape[dim],
    "aten._assert_scalar.default": _nop,
    "aten.sym_constrain_range_for_size.default": _nop,
    "aten._assert_tensor_metadata.default": _nop,
    # Python operators torch.export leaves in the graph (tuple items, SymInt arithmetic)
    "_operator.getitem": operator.getitem,
    "_operator.add": operator.add,
    "_operator.sub": operator.sub,
    "_operator.mul": operator.mul,
    "_operator.floordiv": operator.floordiv,
    "_operator.truediv": operator.truediv,
    "_operator.mod": operator.mod,
    "_operator.neg": operator.neg,
    "math.sqrt": math.sqrt,
}
SUPPORTED = tuple(sorted(OPS))


def _op_name(target: Any) -> str:
    if hasattr(target, "_schema") or type(target).__name__ == "OpOverload":
        return str(target)  # aten.addmm.default
    return f"{getattr(target, '__module__', None) or type(target).__module__}.{getattr(target, '__name__', target)}"


# --------------------------------------------------------------------------------------------
# The exported program and its interpreter
# --------------------------------------------------------------------------------------------


class _CallState(threading.local):
    """Per-call state of the interpreter: the float dtype torch's float32 maps to (the parameters').
    Thread-local: two threads may trace programs at two precisions at once."""

    float_dtype: Any = jnp.float32


_Call = _CallState()


def _jax_dtype(dt) -> Any:
    import torch

    if dt.is_floating_point:
        return _Call.float_dtype  # float32 in torch computes at the sampler's precision here
    dtypes = {torch.bool: np.bool_, torch.int64: np.int64, torch.int32: np.int32, torch.int16: np.int16,
              torch.int8: np.int8, torch.uint8: np.uint8}
    if dt not in dtypes:
        raise ConfigError(f"model: the PyTorch bridge has no JAX dtype for {dt} (floating, bool and int dtypes only)")
    return jax.dtypes.canonicalize_dtype(dtypes[dt])


def _to_numpy(t) -> np.ndarray:
    return t.detach().cpu().numpy() if hasattr(t, "detach") else np.asarray(t)


class TorchProgram:
    """A module's forward pass as ``apply(params, x) -> output``, a pure JAX function.

    Built from ``torch.export`` (batch axis dynamic, eval mode) decomposed to core ATen; the
    parameter names and shapes are ``shapes``; buffers and lifted constants are held as numpy.
    """

    def __init__(self, module, example_x):
        import torch
        from torch.export import Dim, export

        was_training = module.training
        module.eval()  # dropout off, BatchNorm on its running statistics: a deterministic loss
        try:
            ex = torch.as_tensor(example_x[:2])
            dynamic = ({0: Dim("batch")},)
            try:
                ep = export(module, (ex,), dynamic_shapes=dynamic).run_decompositions()
            except Exception as exc:  # noqa: BLE001 - torch raises many kinds; one line for the user
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                why = ("forward branches on tensor values, which torch.export cannot trace; "
                       if "DataDependent" in type(exc).__name__ else "")
                raise ConfigError(f"model: torch.export could not export {type(module).__name__} with a "
                                  f"dynamic batch axis ({why}{type(exc).__name__}: {first})") from None
        finally:
            module.train(was_training)
        self.graph = ep.graph_module.graph
        sig = ep.graph_signature
        state = {**ep.state_dict, **ep.constants}
        self.inputs: list[tuple[str, str, Any]] = []  # (placeholder, kind, name or constant)
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.buffers: dict[str, np.ndarray] = {}
        for spec in sig.input_specs:
            kind = spec.kind.name
            if kind == "PARAMETER":
                self.shapes[spec.target] = tuple(state[spec.target].shape)
                self.inputs.append((spec.arg.name, "param", spec.target))
            elif kind in ("BUFFER", "CONSTANT_TENSOR"):
                value = _to_numpy(state[spec.target])
                if kind == "BUFFER":
                    self.buffers[spec.target] = value
                self.inputs.append((spec.arg.name, "const", value))
            elif kind == "USER_INPUT":
                self.inputs.append((spec.arg.name, "x", None))
            else:
                raise ConfigError(f"model: the exported graph has an input of kind {kind}; the bridge takes "
                                  "parameters, buffers, constants and one input x")
        if sum(kind == "x" for _, kind, _ in self.inputs) != 1:
            raise ConfigError("model: the module's forward must take one tensor x (the bridge feeds it x only)")
        self._check_ops()

    def _check_ops(self) -> None:
        for node in self.graph.nodes:
            if node.op == "call_function" and _op_name(node.target) not in OPS:
                where = list((node.meta.get("nn_module_stack") or {}).values())
                at = f" (in {where[-1][0] or 'the top module'})" if where else ""
                raise ConfigError(f"model: the PyTorch bridge cannot translate operator {_op_name(node.target)}{at}; "
                                  f"the {len(OPS)} supported operators are llc.bridges.torch.SUPPORTED "
                                  "(README \"PyTorch models\")")
            if node.op not in ("placeholder", "call_function", "output"):
                raise ConfigError(f"model: the exported graph has a {node.op} node ({node.name}); the PyTorch "
                                  "bridge translates call_function nodes only")

    def __call__(self, params: dict[str, Any], x: Any) -> Any:
        import torch
        from torch.fx import Node

        leaves = [params[name] for name in self.shapes]
        previous = _Call.float_dtype
        _Call.float_dtype = jnp.result_type(*leaves) if leaves else jnp.float32
        try:
            env: dict[str, Any] = {}
            for placeholder, kind, value in self.inputs:
                env[placeholder] = params[value] if kind == "param" else x if kind == "x" else jnp.asarray(value)

            def value_of(a):
                if isinstance(a, Node):
                    return env[a.name]
                if isinstance(a, (list, tuple)):
                    return type(a)(value_of(v) for v in a)
                if isinstance(a, dict):
                    return {k: value_of(v) for k, v in a.items()}
                if isinstance(a, torch.dtype):
                    return _jax_dtype(a)
                if isinstance(a, (torch.device, torch.layout, torch.memory_format)):
                    return None
                return a

            for node in self.graph.nodes:
                if node.op == "call_function":
                    kwargs = {k: v for k, v in value_of(node.kwargs).items()
                              if k not in ("device", "layout", "pin_memory", "memory_format", "non_blocking")}
                    env[node.name] = OPS[_op_name(node.target)](*value_of(node.args), **kwargs)
                elif node.op == "output":
                    outs = value_of(node.args[0])
                    return outs[0] if len(outs) == 1 else tuple(outs)
        finally:
            _Call.float_dtype = previous
        raise ConfigError("model: the exported graph has no output")


# --------------------------------------------------------------------------------------------
# Losses on the output, and the loss function the samplers call
# --------------------------------------------------------------------------------------------


def _mse(out, y):
    return 0.5 * jnp.mean(jnp.sum((y - out) ** 2, axis=-1))


def _cross_entropy(out, y):
    logp = jax.nn.log_softmax(out, axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, y[..., None].astype(jnp.int32), axis=-1))


LOSSES = {"mse": _mse, "cross_entropy": _cross_entropy}


class TorchLoss:
    """``loss(params, (x, y))``: the module's output on x, scored against y; a mean over the batch.

    Equal for the same exported program and loss, so repeated estimates on one module reuse their
    compiled programs (``llc.api._Loss`` explains why)."""

    def __init__(self, program: TorchProgram, loss: str | Callable):
        self.program = program
        self.loss = loss
        self._fn = LOSSES[loss] if isinstance(loss, str) else loss

    def __call__(self, params, batch):
        x, y = batch
        return self._fn(self.program(params, x), y)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.program is self.program and other.loss == self.loss

    def __hash__(self) -> int:
        return hash((id(self.program), self.loss if isinstance(self.loss, str) else id(self.loss)))


# One program per (module, input signature, buffer contents): re-estimating the same module at new
# weights reuses the export and every compiled program keyed on its loss.
_PROGRAMS: "weakref.WeakKeyDictionary[Any, dict[tuple, TorchProgram]]" = weakref.WeakKeyDictionary()


def _buffer_digest(module) -> str:
    h = hashlib.sha1()
    for name, buf in module.named_buffers():
        h.update(name.encode())
        h.update(_to_numpy(buf).tobytes())
    return h.hexdigest()


def program(module, x: np.ndarray) -> TorchProgram:
    key = (tuple(x.shape[1:]), str(x.dtype), _buffer_digest(module))
    cache = _PROGRAMS.setdefault(module, {})
    if key not in cache:
        cache[key] = TorchProgram(module, x)
    return cache[key]


def is_torch_module(model: Any) -> bool:
    torch = sys.modules.get("torch")  # not imported: the model cannot be a torch module
    return torch is not None and isinstance(model, torch.nn.Module)


def _host(value: Any) -> Any:
    """A torch tensor as numpy (x, y may be either); anything else unchanged."""
    return _to_numpy(value) if hasattr(value, "detach") else value


def params_from(prog: TorchProgram, state: Any, what: str) -> dict[str, np.ndarray]:
    """w* as the flat dict of parameter name -> array, from a module, a state_dict or such a dict."""
    import torch

    if isinstance(state, torch.nn.Module):
        state = state.state_dict()
    if not isinstance(state, dict):
        raise ConfigError(f"{what}: expected a state_dict (parameter name -> tensor) or None, got {type(state).__name__}")
    out = {}
    for name, shape in prog.shapes.items():
        if name not in state:
            raise ConfigError(f"{what}: no parameter {name!r} (the module's parameters: {', '.join(prog.shapes)})")
        value = np.asarray(_to_numpy(state[name]))
        if tuple(value.shape) != shape:
            raise ConfigError(f"{what}: parameter {name!r} has shape {tuple(value.shape)}, the module's is {shape}")
        out[name] = value
    for name, buf in prog.buffers.items():  # buffers are constants of the loss: a checkpoint cannot move them
        if name in state and not np.array_equal(_to_numpy(state[name]), buf):
            raise ConfigError(f"{what}: buffer {name!r} differs from the module's; load it into the module "
                              "(buffers are constants of the translated loss)")
    return out


def adapt(model: Any, params: Any, x: Any, y: Any, loss: Any, *, checkpoints: bool = False):
    """``llc.api``'s hook: a torch ``nn.Module`` becomes (TorchLoss, parameter dict(s), x, y as numpy);
    anything else passes unchanged (``loss`` is for torch modules only)."""
    if not is_torch_module(model):
        if loss is not None:
            raise ConfigError("loss: only for a PyTorch module; a Flax module's loss is MSE, a loss function "
                              "computes its own")
        return model, params, x, y
    loss = "mse" if loss is None else loss
    if isinstance(loss, str) and loss not in LOSSES:
        raise ConfigError(f"loss: {loss!r} is not allowed; choose one of {', '.join(LOSSES)} or pass a JAX "
                          "function loss(output, y) -> scalar mean")
    if not isinstance(loss, str) and not callable(loss):
        raise ConfigError(f"loss: expected a name ({', '.join(LOSSES)}) or a function, got {type(loss).__name__}")
    x, y = _host(x), _host(y)
    for name, arr in (("x", x), ("y", y)):
        if not hasattr(arr, "shape") or np.ndim(arr) == 0:
            raise ConfigError(f"{name}: expected an array of shape (n, ...) with a leading example axis, "
                              f"got {type(arr).__name__}")
    if np.shape(x)[0] < 2:
        raise ConfigError(f"x: {np.shape(x)[0]} examples; need at least 2")
    prog = program(model, np.asarray(x))
    if checkpoints:
        params = [params_from(prog, p, f"checkpoints[{i}]") for i, p in enumerate(params)]
    else:
        params = params_from(prog, model if params is None else params, "params")
    first = params[0] if checkpoints and params else params
    if first:
        out = jax.eval_shape(prog, first, jnp.asarray(x[:2]))
        _check_target(loss, out, np.asarray(y))
    return TorchLoss(prog, loss), params, x, y


def _check_target(loss: Any, out: Any, y: np.ndarray) -> None:
    """y fits the output for the named losses (before tracing: broadcasting would hide a mismatch)."""
    if isinstance(out, tuple):
        if isinstance(loss, str):
            raise ConfigError(f"model: the module returns {len(out)} outputs; loss={loss!r} needs one "
                              "(pass loss=function(outputs, y))")
        return
    if loss == "mse" and (out.shape[1:] != y.shape[1:]):
        hint = " (e.g. y[:, None])" if out.shape[1:] == (*y.shape[1:], 1) else ""
        raise ConfigError(f"y: shape {y.shape} does not match the model output shape (n, {', '.join(map(str, out.shape[1:]))}); "
                          f"reshape y{hint}: the loss would broadcast them silently")
    if loss == "cross_entropy":
        if not np.issubdtype(y.dtype, np.integer):
            raise ConfigError(f"y: cross_entropy takes integer class (or token) labels, got dtype {y.dtype}")
        if out.shape[1:-1] != y.shape[1:]:
            raise ConfigError(f"y: shape {y.shape} does not match the logits' shape (n, "
                              f"{', '.join(map(str, out.shape[1:]))}) without its class axis")
