"""llc.engine.prng.normal_like: one threefry hash over every leaf gives the bits of a loop over them."""

import jax
import numpy as np
import pytest

from llc.engine import prng
from llc.pipeline.sampling import enable_x64

enable_x64()


def _loop(key, tree):
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(treedef, [jax.random.normal(k, leaf.shape, leaf.dtype) for k, leaf in zip(keys, leaves)])


def _tree(dtype):
    # Repeated shapes (a network's blocks), a scalar, an odd size, an empty leaf, a 3-d leaf.
    shapes = {"a": (3, 5), "b": (7,), "c": (3, 5), "d": (), "e": (0, 4), "f": (2, 3, 4), "g": (5, 3)}
    return {k: np.zeros(s, dtype) for k, s in shapes.items()}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_normal_like_draws_the_loops_bits(dtype):
    tree = _tree(dtype)
    keys = jax.random.split(jax.random.key(3), 4)
    # Jitted and vmapped over chains, as in a sampling program, and eagerly on one key.
    hashed = jax.jit(jax.vmap(lambda k: prng.normal_like(k, tree)))(keys)
    looped = jax.jit(jax.vmap(lambda k: _loop(k, tree)))(keys)
    one = prng.normal_like(keys[0], tree)
    for name in tree:
        assert hashed[name].dtype == one[name].dtype == np.dtype(dtype)
        np.testing.assert_array_equal(np.asarray(hashed[name]), np.asarray(looped[name]))
        np.testing.assert_array_equal(np.asarray(one[name]), np.asarray(looped[name][0]))


def test_mixed_dtypes_and_raw_keys_draw_by_the_loop():
    tree = {"a": np.zeros((3,), np.float32), "b": np.zeros((2,), np.float64)}
    key = jax.random.key(1)
    for k in (key, jax.random.key_data(key)):
        out, ref = prng.normal_like(k, tree), _loop(k, tree)
        for name in tree:
            np.testing.assert_array_equal(np.asarray(out[name]), np.asarray(ref[name]))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_skipped_leaves_are_zero_and_leave_the_others_draws_alone(dtype):
    tree = _tree(dtype)
    names = sorted(tree)
    skip = tuple(n in ("b", "f") for n in names)
    key = jax.random.key(5)
    full = jax.jit(lambda k: prng.normal_like(k, tree))(key)
    part = jax.jit(lambda k: prng.normal_like(k, tree, skip))(key)
    for n in names:
        if n in ("b", "f"):
            assert not np.any(np.asarray(part[n]))
        else:
            np.testing.assert_array_equal(part[n], full[n])
