"""Standard normal pytrees from one threefry hash: the values ``jax.random.normal`` draws leaf by leaf.

    normal_like(key, tree) -> a pytree like ``tree``

Leaf i is ``jax.random.normal(k_i, leaf.shape, leaf.dtype)`` with ``k_i`` the i-th key of
``jax.random.split(key, leaves)``. Drawn by a loop over the leaves, each leaf is a threefry hash of
its own, which the CPU backend lowers to a ``while`` loop whose body LLVM compiles separately. For
the tiny torch GPT of benchmarks/torch_vs_devinterp.py (17 leaves, 4 chains) the noise alone took
8-9.5 s of CPU to compile that way against 1.5 s as one hash, and its SGLD sampling program 10-11 s
against 6-7.5 s (wall, alternated runs on a loaded 2-core machine).

One hash gives the same bits. With JAX's default key implementation (threefry2x32) and partitionable
threefry (default since JAX 0.5), element e of a leaf's random bits is threefry2x32(k_i, (0, e)),
e its row-major index: so every leaf's elements are hashed at once, their keys and indices
concatenated, and mapped to normals as ``jax.random.normal`` maps bits (its uniform on
[nextafter(-1, 0), 1) from the mantissa bits, then sqrt(2) erfinv). tests/test_prng.py checks the
result equals the loop's bit for bit; any other key implementation, threefry mode or dtype draws by
the loop, and so does every backend but the CPU: on a GPU the concatenated key and counter arrays
would be memory traffic of their own every step (three words per coordinate), a cost not measured
there, for a compile-time saving measured only on the CPU. Inside a sampling program XLA fuses the arithmetic around the noise differently, so a
chain can differ in the last bit: one fused SGLD-like step rounded 4% of a GPT's coordinates 1 ulp
apart, and the benchmark GPT's lambda-hat moved by 2e-8 relative (20 and 200 draws).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend.random import threefry2x32_p

_UINT = {32: np.uint32, 64: np.uint64}


def _one_hash(key, leaves: list) -> bool:
    """Whether ``normal_like`` may hash ``leaves`` at once (else it draws leaf by leaf)."""
    if not jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):  # a raw uint32 key
        return False
    dtypes = {jnp.dtype(leaf.dtype) for leaf in leaves}
    return (jax.default_backend() == "cpu" and str(jax.random.key_impl(key)) == "threefry2x32" and jax.config.jax_threefry_partitionable
            and len(dtypes) == 1 and next(iter(dtypes)) in (jnp.dtype(np.float32), jnp.dtype(np.float64))
            and all(np.size(leaf) < 2**32 for leaf in leaves))


def normal_like(key, tree, skip: tuple[bool, ...] | None = None):
    """Standard normals shaped like ``tree`` (every leaf in its own dtype), leaf i drawn with the
    i-th of ``jax.random.split(key, leaves)``; zeros, never drawn, for the leaves ``skip`` marks."""
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(key, len(leaves))
    skip = skip or (False,) * len(leaves)
    if not _one_hash(key, leaves):
        return jax.tree.unflatten(treedef, [jnp.zeros_like(leaf) if s else jax.random.normal(k, leaf.shape, leaf.dtype)
                                            for k, leaf, s in zip(keys, leaves, skip)])
    dtype = jnp.dtype(leaves[0].dtype)
    sizes = [0 if s else int(np.size(leaf)) for leaf, s in zip(leaves, skip)]
    data = jax.random.key_data(keys)  # (leaves, 2) uint32
    k1, k2 = (jnp.concatenate([jnp.broadcast_to(data[i, j], (s,)) for i, s in enumerate(sizes)]) for j in (0, 1))
    index = jnp.concatenate([lax.iota(np.uint32, s) for s in sizes])
    hi, lo = threefry2x32_p.bind(k1, k2, jnp.zeros_like(index), index)
    # As jax.random's bits of this width, then its uniform and normal.
    nbits, nmant = jnp.finfo(dtype).bits, jnp.finfo(dtype).nmant
    uint = _UINT[nbits]
    bits = hi ^ lo if nbits == 32 else (hi.astype(uint) << uint(32)) | lo.astype(uint)
    mantissa = lax.bitwise_or(lax.shift_right_logical(bits, jnp.array(nbits - nmant, uint)),
                              jnp.asarray(np.array(1.0, dtype).view(uint), dtype=uint))
    floats = lax.bitcast_convert_type(mantissa, dtype) - jnp.array(1.0, dtype)
    low = lax.convert_element_type(np.nextafter(np.array(-1.0, dtype), np.array(0.0, dtype), dtype=dtype), dtype)
    high = lax.convert_element_type(np.array(1.0, dtype), dtype)
    uniform = lax.max(low, floats * (high - low) + low)
    normal = lax.mul(np.array(np.sqrt(2), dtype), lax.erf_inv(uniform))
    ends = np.cumsum([0] + sizes)
    return jax.tree.unflatten(treedef, [jnp.zeros_like(leaf) if s else normal[a:b].reshape(np.shape(leaf))
                                        for a, b, leaf, s in zip(ends[:-1], ends[1:], leaves, skip)])
