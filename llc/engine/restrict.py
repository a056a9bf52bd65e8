"""Weight restriction (the weight-refined LLC): which coordinates of w the posterior moves.

A restriction is a tuple of patterns over the parameter paths ("/" between nested names:
``attn/query/kernel``; a PyTorch module's names as they are: ``layers.0.weight``)::

    attn/*                 every leaf under attn (fnmatch globs; ``*`` crosses "/")
    hidden_0               a module: every leaf under it
    attn/query/kernel[:,1] index selection within a leaf (integers and slices, NumPy style)
    attn@head1             head 1 of a multi-head attention module in Flax's layout: its slices of
                           the query/key/value kernels (d, heads, head_dim) and biases (heads,
                           head_dim) and of the output kernel (heads, head_dim, d); the output bias
                           is shared by the heads and belongs to none

The union of the patterns moves; every other coordinate stays at w*. ``mask`` turns patterns into a
0/1 pytree shaped like w*, which the posterior applies as a runtime array (llc.engine.posterior),
so restrictions of equal shapes share one compiled program. ``family`` expands ``per-layer`` and
``per-head`` into groups, one restricted estimate each.
"""

from __future__ import annotations

import fnmatch
from typing import Any, Callable

import jax
import numpy as np

from llc.config import RESTRICT_FAMILIES as FAMILIES
from llc.config import RESTRICT_FIELD as FIELD
from llc.config import RESTRICT_HEAD as _HEAD
from llc.config import RESTRICT_INDEXED as _INDEXED
from llc.config import ConfigError, check_restrict_syntax as check_syntax, parse_restrict_index as _parse_index

ATTENTION_PARTS = ("query", "key", "value", "out")
RestrictError = ConfigError  # one line naming posterior.restrict and what is allowed


def _key_name(key: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def leaf_paths(tree) -> list[str]:
    """The "/"-joined path of every leaf, in ``jax.tree.leaves`` order."""
    return ["/".join(_key_name(k) for k in path) for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _matches(path: str, glob: str) -> bool:
    # A module name selects everything under it, with "/" (Flax) or "." (PyTorch) below it.
    return any(fnmatch.fnmatchcase(path, g) for g in (glob, f"{glob}/*", f"{glob}.*"))


def _selectors(paths: list[str], shapes: list[tuple], pattern: str) -> list[tuple[int, Any]]:
    """(leaf number, index or None for the whole leaf) selected by one pattern."""
    head = _HEAD.match(pattern)
    if head is not None:
        return _head_selectors(paths, shapes, head["module"], int(head["head"]), pattern)
    indexed = _INDEXED.match(pattern)
    glob, index = (indexed["glob"], _parse_index(indexed["index"], pattern)) if indexed else (pattern, None)
    chosen = [(i, index) for i, path in enumerate(paths) if _matches(path, glob)]
    if not chosen:
        raise RestrictError(f"{FIELD}: {pattern!r} matches no parameter; the parameters are {_listing(paths)}")
    return chosen


def _listing(paths: list[str], at_most: int = 12) -> str:
    shown = ", ".join(paths[:at_most])
    return shown + (f", ... ({len(paths)} in all)" if len(paths) > at_most else "")


def attention_modules(paths: list[str], shapes: list[tuple]) -> dict[str, int]:
    """Multi-head attention modules in Flax's layout, with their number of heads."""
    out: dict[str, int] = {}
    for path, shape in zip(paths, shapes):
        parts = path.split("/")
        if len(parts) >= 3 and parts[-2] == "query" and parts[-1] == "kernel" and len(shape) == 3:
            module = "/".join(parts[:-2])
            if all(f"{module}/{p}/kernel" in paths for p in ATTENTION_PARTS):
                out[module] = shape[1]
    return out


def _head_selectors(paths, shapes, module: str, head: int, pattern: str) -> list[tuple[int, Any]]:
    modules = attention_modules(paths, shapes)
    if module not in modules:
        found = ", ".join(modules) or "none"
        raise RestrictError(f"{FIELD}: {pattern!r}: {module!r} is not a multi-head attention module in Flax's layout "
                            f"(attention modules here: {found})")
    if head >= modules[module]:
        raise RestrictError(f"{FIELD}: {pattern!r}: {module} has heads 0..{modules[module] - 1}")
    where = {path: i for i, path in enumerate(paths)}
    chosen = []
    for part in ATTENTION_PARTS[:3]:
        chosen.append((where[f"{module}/{part}/kernel"], (slice(None), head)))
        if f"{module}/{part}/bias" in where:
            chosen.append((where[f"{module}/{part}/bias"], (head,)))
    chosen.append((where[f"{module}/out/kernel"], (head,)))
    return chosen


def mask(tree, patterns: tuple[str, ...]):
    """A pytree like ``tree`` of 0/1 arrays (its leaves' dtypes): 1 where some pattern selects the
    coordinate. Raises RestrictError (one line) for a pattern that selects nothing."""
    check_syntax(patterns)
    if any(p in FAMILIES for p in patterns):
        raise RestrictError(f"{FIELD}: {patterns[0]} is a family; expand it with llc.engine.restrict.family")
    leaves, treedef = jax.tree.flatten(tree)
    paths, shapes = leaf_paths(tree), [tuple(np.shape(leaf)) for leaf in leaves]
    out = [np.zeros(shape, dtype=bool) for shape in shapes]
    for pattern in patterns:
        for i, index in _selectors(paths, shapes, pattern):
            if index is None:
                out[i][...] = True
                continue
            try:
                out[i][index] = True
            except IndexError:
                raise RestrictError(f"{FIELD}: {pattern!r}: index out of range for {paths[i]} of shape "
                                    f"{shapes[i]}") from None
    return jax.tree.unflatten(treedef, [m.astype(_mask_dtype(leaf)) for m, leaf in zip(out, leaves)])


def _mask_dtype(leaf) -> np.dtype:
    """A mask leaf's dtype: its parameter's floating dtype (arrays or shape structs), else float32."""
    dtype = np.dtype(leaf.dtype) if hasattr(leaf, "dtype") else np.asarray(leaf).dtype
    return dtype if np.issubdtype(dtype, np.floating) else np.dtype(np.float32)


def as_mask(tree, restrict):
    """``restrict`` as a 0/1 mask like ``tree``, or None for no restriction: patterns (a string or a
    sequence of them) or a pytree of booleans/0-1 values with ``tree``'s structure and shapes."""
    if restrict is None or (isinstance(restrict, (tuple, list)) and not restrict):
        return None
    if isinstance(restrict, str):
        restrict = (restrict,)
    if isinstance(restrict, (tuple, list)) and all(isinstance(p, str) for p in restrict):
        out = mask(tree, tuple(restrict))
    else:
        if jax.tree.structure(restrict) != jax.tree.structure(tree):
            raise RestrictError(f"restrict: a mask needs the parameters' structure {jax.tree.structure(tree)}, "
                                f"got {jax.tree.structure(restrict)}")
        out = []
        for path, m, leaf in zip(leaf_paths(tree), jax.tree.leaves(restrict), jax.tree.leaves(tree)):
            m = np.asarray(m)
            if m.shape != np.shape(leaf) or not np.isin(m, (0, 1)).all():
                raise RestrictError(f"restrict: the mask of {path} must be booleans (or 0/1) of shape "
                                    f"{np.shape(leaf)}, got {m.dtype} of shape {m.shape}")
            out.append(m.astype(_mask_dtype(leaf)))
        out = jax.tree.unflatten(jax.tree.structure(tree), out)
    if free_dim(out) == 0:
        raise RestrictError(f"{FIELD}: the restriction selects no coordinate")
    return out


def free_dim(mask_tree) -> int:
    """Coordinates a mask lets move."""
    return int(sum(np.count_nonzero(np.asarray(m)) for m in jax.tree.leaves(mask_tree)))


def _module_of(path: str, attention: set[str]) -> str:
    parts = path.split("/")
    if len(parts) == 1 and "." in path:  # a PyTorch name: layers.0.weight
        return path.rsplit(".", 1)[0]
    if len(parts) == 1:
        return path
    module = "/".join(parts[:-1])
    parent = "/".join(parts[:-2])
    return parent if parts[-2] in ATTENTION_PARTS and parent in attention else module


def family(tree, name: str) -> list[tuple[str, ...]]:
    """The groups of a family, each a tuple of patterns: ``per-layer``, one group per module that owns
    parameters (an attention module as a whole); ``per-head``, one per head of each attention module
    (``attn@headN``), then the other modules as in per-layer."""
    if name not in FAMILIES:
        raise RestrictError(f"{FIELD}: {name!r} is not a family; choose from {', '.join(FAMILIES)}")
    leaves = jax.tree.leaves(tree)
    paths, shapes = leaf_paths(tree), [tuple(np.shape(leaf)) for leaf in leaves]
    attention = attention_modules(paths, shapes)
    if name == "per-head" and not attention:
        raise RestrictError(f"{FIELD}: per-head needs a multi-head attention module in Flax's layout and this "
                            "model has none; use per-layer")
    modules: dict[str, list[str]] = {}
    for path in paths:
        modules.setdefault(_module_of(path, set(attention)), []).append(path)
    groups: list[tuple[str, ...]] = []
    for module, members in modules.items():
        if name == "per-head" and module in attention:
            groups += [(f"{module}@head{h}",) for h in range(attention[module])]
        elif [p for p in paths if _matches(p, module)] == members:
            groups.append((module,))  # the module's name selects exactly its parameters
        else:
            groups.append(tuple(members))
    return groups


def label(patterns: tuple[str, ...]) -> str:
    """A short name for a group: its patterns' common module, else the patterns joined."""
    if not patterns:
        return "all"
    if len(patterns) == 1:
        return patterns[0]
    split = [p.replace(".", "/").split("/") for p in patterns]
    common = []
    for parts in zip(*split):
        if len(set(parts)) != 1:
            break
        common.append(parts[0])
    if common and len(common) < min(map(len, split)):
        sep = "/" if "/" in patterns[0] else "."
        return sep.join(common)
    return " + ".join(patterns)


def resolve(tree, patterns: tuple[str, ...]) -> list[tuple[str, ...]]:
    """The groups ``patterns`` stand for: a family's groups, else the one group of the patterns
    (checked against ``tree``'s paths), else ``[()]`` for no restriction."""
    if not patterns:
        return [()]
    if len(patterns) == 1 and patterns[0] in FAMILIES:
        return family(tree, patterns[0])
    mask(tree, patterns)  # every pattern must select something
    return [tuple(patterns)]


def from_callable(tree, select: Callable[[str], bool]) -> tuple[str, ...]:
    """The exact leaf paths a function of the path selects (``restrict=`` in the API)."""
    return tuple(path for path in leaf_paths(tree) if select(path))
