"""The tempered, localized posterior every estimator samples.

    log p(w) = -n*beta*L_n(w) - (gamma/2) * ||w - w*||^2
    lambda_hat = n*beta * (E_w[L_n(w)] - L_n(w*))

Restricted (``mask``, llc.engine.restrict): the loss sees w* + m * (w - w*), so only the selected
coordinates reach it; the localizer still holds every coordinate, so an unselected one is an exact
Gaussian N(w*, 1/gamma) that never touches L_n (no flat direction for HMC or MCLMC to drift along),
and the minibatch samplers keep them at w* exactly (``Problem.restrict`` on their noise).
lambda_hat then measures the selected coordinates alone, and d means their number.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from llc.config import PosteriorConfig
from llc.engine import prng
from llc.engine import restrict as restriction


class Posterior(NamedTuple):
    loss_fn: Callable  # loss_fn(params, x, y): mean loss over a batch
    w_star: Any  # pytree
    x: Any
    y: Any
    n: int
    beta: float
    gamma: float
    L0: float
    mask: Any = None  # restriction: a 0/1 pytree like w_star, or None (every coordinate moves)

    @property
    def nbeta(self) -> float:
        return self.n * self.beta

    @property
    def size(self) -> int:
        """Coordinates of w (the samplers' state)."""
        return int(sum(np.size(leaf) for leaf in jax.tree.leaves(self.w_star)))

    @property
    def dim(self) -> int:
        """Coordinates that move: d of d/2 and every dimension-dependent check."""
        return self.size if self.mask is None else restriction.free_dim(self.mask)


def resolve_beta_gamma(cfg: PosteriorConfig, n: int, d: int) -> tuple[float, float]:
    beta = cfg.beta0 / math.log(n) if cfg.beta_mode == "inv_log_n" else cfg.beta0
    gamma = d / cfg.prior_radius**2 if cfg.prior_radius is not None else cfg.gamma
    return float(beta), float(gamma)


def make_posterior(loss_fn: Callable, w_star, x, y, cfg: PosteriorConfig, L0: float | None = None,
                   restrict: Any = None) -> Posterior:
    """The posterior around ``w_star``. ``restrict`` (default ``cfg.restrict``): one group of patterns
    (llc.engine.restrict; not a family), or a mask pytree like ``w_star`` (true where w moves)."""
    n = int(np.shape(x)[0])
    restrict = cfg.restrict if restrict is None else restrict
    mask = restriction.as_mask(w_star, restrict)
    d = restriction.free_dim(mask) if mask is not None else int(sum(np.size(leaf) for leaf in jax.tree.leaves(w_star)))
    beta, gamma = resolve_beta_gamma(cfg, n, d)
    if L0 is None:
        L0 = float(jax.jit(loss_fn)(w_star, x, y))
    return Posterior(loss_fn, w_star, x, y, n, beta, gamma, float(L0), mask)


def cast(post: Posterior, dtype: str) -> Posterior:
    """The same posterior with its floating arrays in ``dtype`` (float32 for SGLD, float64 for HMC).

    Only float leaves are cast: integer inputs (tokens, class labels) stay integer.
    """
    def conv(tree):
        # Cast on the host, copy once (an eager jnp cast compiles a program per array shape).
        host = jax.tree.map(lambda a: np.asarray(a, dtype=dtype) if np.issubdtype(np.asarray(a).dtype, np.floating)
                            else np.asarray(a), tree)
        return jax.device_put(host)

    mask = None if post.mask is None else conv(post.mask)
    return post._replace(w_star=conv(post.w_star), x=conv(post.x), y=conv(post.y), mask=mask)


def ones_mask(post: Posterior):
    """The mask of no restriction (for a batch that mixes restricted and unrestricted runs)."""
    return jax.tree.map(lambda a: np.ones(np.shape(a), np.asarray(a).dtype), post.w_star)


def problem_arrays(post: Posterior) -> dict[str, Any]:
    """Everything of the posterior a compiled program takes as runtime arguments (never constants)."""
    dtype = jax.tree.leaves(post.w_star)[0].dtype
    arrays = {"w_star": post.w_star, "x": post.x, "y": post.y,
              "nbeta": np.asarray(post.nbeta, dtype), "gamma": np.asarray(post.gamma, dtype)}
    if post.mask is not None:
        arrays["mask"] = post.mask
    return arrays


class Problem:
    """The posterior inside a traced program: functions of a position (a pytree, or a flat vector
    when ``unravel`` is given) over runtime arrays."""

    def __init__(self, loss_fn: Callable, arrays: dict[str, Any], n: int, unravel: Callable | None,
                 frozen: tuple[bool, ...] | None = None):
        self.loss_fn, self.n, self.unravel = loss_fn, n, unravel
        # Leaves (w*'s flatten order) that every setting of the program holds at w* (``frozen_leaves``):
        # the loss reads them as w* itself, so XLA takes no gradient through them and draws no noise.
        self.frozen = frozen if frozen and any(frozen) and unravel is None else None
        self.w_star, self.x, self.y = arrays["w_star"], arrays["x"], arrays["y"]
        self.nbeta, self.gamma = arrays["nbeta"], arrays["gamma"]
        self.position0 = ravel_pytree(self.w_star)[0] if unravel is not None else self.w_star
        mask = arrays.get("mask")
        self.mask = None if mask is None else ravel_pytree(mask)[0] if unravel is not None else mask

    build = classmethod(lambda cls, loss_fn, arrays, n, unravel, frozen=None: cls(loss_fn, arrays, n, unravel, frozen))

    def _shift(self, position):
        """w* + m * (w - w*): the position the loss sees (the position itself when unrestricted)."""
        if self.mask is None:
            return position
        shifted = jax.tree.map(lambda p, c, m: c + m * (p - c), position, self.position0, self.mask)
        if self.frozen is None:
            return shifted
        leaves, treedef = jax.tree.flatten(shifted)
        centre = jax.tree.leaves(self.position0)
        return jax.tree.unflatten(treedef, [c if f else s for s, c, f in zip(leaves, centre, self.frozen)])

    def _params(self, position):
        position = self._shift(position)
        return self.unravel(position) if self.unravel is not None else position

    def restrict(self, tree):
        """``tree`` (an increment of the position) with the unselected coordinates zeroed."""
        if self.mask is None:
            return tree
        return jax.tree.map(lambda t, m: t * m, tree, self.mask)

    def gaussian(self, key, tree):
        """N(0, I) like ``tree`` (one key per leaf, split from ``key``), zero where the restriction
        holds w at w*; a frozen leaf's draw is skipped, which leaves every other leaf's unchanged."""
        return self.restrict(prng.normal_like(key, tree, self.frozen))

    def loss(self, position, x=None, y=None) -> jax.Array:
        """Mean loss over (x, y), the full data by default."""
        x = self.x if x is None else x
        y = self.y if y is None else y
        return self.loss_fn(self._params(position), x, y)

    def prior(self, position) -> jax.Array:
        """(gamma/2) ||w - w*||^2 over every coordinate, summed leaf by leaf."""
        return 0.5 * self.gamma * sq_distance(position, self.position0)

    def logdensity(self, position) -> jax.Array:
        return -self.nbeta * self.loss(position) - self.prior(position)

    def minibatch_logdensity_grad(self, position, key, batch_size: int):
        """Unbiased estimate of grad log p from ``batch_size`` examples drawn with replacement."""
        idx = jax.random.randint(key, (batch_size,), 0, self.n)
        xb = jax.tree.map(lambda a: a[idx], self.x)
        yb = jax.tree.map(lambda a: a[idx], self.y)
        return jax.grad(lambda w: -self.nbeta * self.loss(w, xb, yb) - self.prior(w))(position)

    def loss_from_logdensity(self, position, logdensity) -> jax.Array:
        """L_n from a stored log density, without another forward pass (HMC and MCLMC keep it)."""
        return -(logdensity + 0.5 * self.gamma * sq_distance(position, self.position0)) / self.nbeta

    def project(self, position, matrix) -> jax.Array:
        flat = ravel_pytree(jax.tree.map(lambda a, b: a - b, self._shift(position), self.position0))[0]
        return flat @ matrix


def frozen_leaves(posts: Sequence[Posterior]) -> tuple[bool, ...] | None:
    """Per leaf of w*, whether every posterior's restriction holds it whole at w* (None when none
    is): static for a batch's program, so its samplers skip those leaves' gradients and noise."""
    if any(p.mask is None for p in posts):
        return None
    held = tuple(all(not np.any(np.asarray(leaf)) for leaf in leaves)
                 for leaves in zip(*(jax.tree.leaves(p.mask) for p in posts)))
    return held if any(held) else None


def sq_distance(params, center) -> jax.Array:
    return sum(jnp.sum((a - b) ** 2) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(center)))
