"""llc.engine.prng.normal_like: a skipped leaf is zero and every other leaf draws as before."""

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
def test_skipped_leaves_are_zero_and_leave_the_others_draws_alone(dtype):
    tree = _tree(dtype)
    names = sorted(tree)
    skip = tuple(n in ("b", "f") for n in names)
    key = jax.random.key(5)
    full = _loop(key, tree)
    part = jax.jit(lambda k: prng.normal_like(k, tree, skip))(key)
    for n in names:
        if n in ("b", "f"):
            assert not np.any(np.asarray(part[n]))
        else:
            np.testing.assert_array_equal(part[n], full[n])
