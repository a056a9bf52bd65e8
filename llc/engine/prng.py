"""Standard normal pytrees, leaf by leaf: the noise of the minibatch samplers (SGLD, SGHMC, SGNHT).

    normal_like(key, tree, skip=None) -> a pytree like ``tree``

Leaf i is ``jax.random.normal(k_i, leaf.shape, leaf.dtype)`` with ``k_i`` the i-th key of
``jax.random.split(key, leaves)``, so skipping a leaf (a restriction that holds it at w*) leaves every
other leaf's draw unchanged.

Tried and not kept: hashing every leaf at once (their keys and counters concatenated, one threefry
over all, the same bits). It compiled the tiny torch GPT's SGLD program in 6-7.5 s instead of 10-11 s
on the CPU, but ran 2.6x slower there (grok-tiny's MLP, 240 chains vmapped: 87-93 ms against 33-35
ms a step for the noise), and the concatenated arrays are memory traffic of their own every step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def normal_like(key, tree, skip: tuple[bool, ...] | None = None):
    """Standard normals shaped like ``tree`` (every leaf in its own dtype), leaf i drawn with the
    i-th of ``jax.random.split(key, leaves)``; zeros, never drawn, for the leaves ``skip`` marks."""
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(key, len(leaves))
    skip = skip or (False,) * len(leaves)
    return jax.tree.unflatten(treedef, [jnp.zeros_like(leaf) if s else jax.random.normal(k, leaf.shape, leaf.dtype)
                                        for k, leaf, s in zip(keys, leaves, skip)])
