"""Closed-form learning coefficients (RLCTs) used as ground truth for estimators.

References
----------
* M. Aoyagi, "Consideration on the learning efficiency of multiple-layered
  neural networks with linear units", Neural Networks 172 (2024) 106132
  (Theorem 1); restated in Lau, Furman, Wang, Murfet, Wei, "The Local Learning
  Coefficient: A Singularity-Aware Complexity Measure" (arXiv:2308.12108),
  appendix on deep linear networks.
* M. Aoyagi and S. Watanabe, "Stochastic complexities of reduced rank
  regression in Bayesian estimation", Neural Networks 18 (2005) 924-933.

Everything here is pure Python; the arithmetic is done with ``Fraction`` so that
the case analysis (strict inequalities, ceilings, parities) is exact and the
only rounding is the final conversion to ``float``.
"""

from __future__ import annotations

import math
import numbers
from fractions import Fraction
from typing import List, Sequence, Tuple

__all__ = [
    "dln_learning_coefficient",
    "rrr_learning_coefficient",
    "quadratic_learning_coefficient",
    "num_params_dln",
]


# ---------------------------------------------------------------------------
# argument checking
# ---------------------------------------------------------------------------

def _as_int(value, name: str, minimum: int) -> int:
    # bool is an Integral subclass, but passing True as a width is surely a bug.
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _check_widths(widths) -> List[int]:
    if isinstance(widths, (str, bytes)) or not isinstance(widths, Sequence):
        # numpy arrays are not registered as Sequence; accept any 1-d iterable
        # of integers except strings.
        try:
            widths = list(widths)
        except TypeError:
            raise ValueError(
                f"widths must be a sequence of layer widths, got {widths!r}"
            ) from None
        if any(isinstance(w, (str, bytes)) for w in widths):
            raise ValueError(f"widths must contain integers, got {widths!r}")
    widths = list(widths)
    if len(widths) < 2:
        raise ValueError(
            "widths must have at least 2 entries (input and output width), "
            f"got {widths!r}"
        )
    return [_as_int(w, f"widths[{i}]", 1) for i, w in enumerate(widths)]


def _check_rank(rank, upper: int, what: str) -> int:
    rank = _as_int(rank, "rank", 0)
    if rank > upper:
        raise ValueError(
            f"rank must be <= {what} = {upper} (a product of these layers cannot "
            f"have larger rank), got {rank}"
        )
    return rank


# ---------------------------------------------------------------------------
# deep linear networks
# ---------------------------------------------------------------------------

def num_params_dln(widths: Sequence[int]) -> int:
    """Number of weights of a bias-free DLN with the given widths."""
    h = _check_widths(widths)
    return sum(a * b for a, b in zip(h[:-1], h[1:]))


def _aoyagi_subsets(m: Sequence[int]) -> List[Tuple[int, ...]]:
    """All index sets Sigma satisfying the conditions of Aoyagi's Theorem 1.

    ``m`` holds M_j = H_j - r.  The first condition (max over Sigma < min over
    the complement) forces Sigma to be the ``ell + 1`` smallest entries with a
    strict gap after them, so only ``L`` candidates (ell = 1..L) need checking
    instead of all subsets.  ell = 0 is excluded: the theorem needs
    ``sum <= 0 * max`` and ``sum < 0 * min`` together, impossible for M >= 0,
    and the formula divides by ell.
    """
    order = sorted(range(len(m)), key=lambda j: m[j])
    vals = [m[j] for j in order]
    n_layers = len(m) - 1
    found = []
    for ell in range(1, n_layers + 1):
        inside, outside = vals[: ell + 1], vals[ell + 1 :]
        s = sum(inside)
        ok = s >= ell * max(inside)
        if outside:
            ok = ok and max(inside) < min(outside) and s < ell * min(outside)
        if ok:
            found.append(tuple(sorted(order[: ell + 1])))
    return found


def _dln_lambda_exact(widths: Sequence[int], rank: int) -> Fraction:
    h = _check_widths(widths)
    r = _check_rank(rank, min(h), "min(widths)")
    m = [hj - r for hj in h]
    subsets = _aoyagi_subsets(m)
    if not subsets:
        # Aoyagi proves such a subset always exists; reaching this is a bug.
        raise RuntimeError(f"no admissible subset for widths={h}, rank={r}")
    sigma = subsets[0]
    ell = len(sigma) - 1
    ms = [m[j] for j in sigma]
    s = sum(ms)
    # M = ceil(S / ell) - 1 and a = S - M * ell, so a lies in {1, ..., ell}
    # (a = ell exactly when ell divides S, which kills the a(ell - a) term).
    big_m = -((-s) // ell) - 1
    a = s - big_m * ell
    pair_sum = (s * s - sum(x * x for x in ms)) // 2  # sum_{i<j in Sigma} M_i M_j
    lam = (
        Fraction(-r * r + r * (h[0] + h[-1]), 2)
        + Fraction(a * (ell - a), 4 * ell)
        - Fraction(ell * (ell - 1), 4) * Fraction(s, ell) ** 2
        + Fraction(pair_sum, 2)
    )
    return lam


def dln_learning_coefficient(widths: Sequence[int], rank: int) -> float:
    """Learning coefficient of a bias-free deep linear network (Aoyagi 2024).

    ``widths = (H_1, ..., H_{L+1})`` lists input, hidden and output widths;
    ``rank`` is the rank r of the true (teacher) end-to-end matrix, with
    ``0 <= r <= min(widths)``.

    With M_j = H_j - r, take the subset Sigma of ell + 1 indices with
    max_{Sigma} M < min_{not Sigma} M, sum_{Sigma} M >= ell * max_{Sigma} M and
    sum_{Sigma} M < ell * min_{not Sigma} M.  With S = sum_{Sigma} M,
    M* = ceil(S / ell) - 1 and a = S - M* ell,

        lambda = (-r^2 + r (H_1 + H_{L+1})) / 2 + a (ell - a) / (4 ell)
                 - ell (ell - 1) / 4 * (S / ell)^2
                 + 1/2 * sum_{i < j in Sigma} M_i M_j.
    """
    return float(_dln_lambda_exact(widths, rank))


# ---------------------------------------------------------------------------
# reduced rank regression (two weight matrices)
# ---------------------------------------------------------------------------

def _rrr_lambda_exact(n_in, hidden, n_out, rank) -> Fraction:
    m = _as_int(n_in, "n_in", 1)
    h = _as_int(hidden, "hidden", 1)
    n = _as_int(n_out, "n_out", 1)
    r = _check_rank(rank, min(m, h, n), "min(n_in, hidden, n_out)")
    # Aoyagi & Watanabe (2005), Main Theorem, model y = B A x with A: h x m,
    # B: n x h and true rank r.  The three "degenerate" cases come first; the
    # generic case splits on the parity of m + h + n + r.
    if m + h < n + r:
        return Fraction(h * m - h * r + n * r, 2)
    if n + h < m + r:
        return Fraction(h * n - h * r + m * r, 2)
    if m + n < h + r:
        return Fraction(m * n, 2)
    num = 2 * (h + r) * (m + n) - (m - n) ** 2 - (h + r) ** 2
    if (m + h + n + r) % 2:
        num += 1
    return Fraction(num, 8)


def rrr_learning_coefficient(n_in: int, hidden: int, n_out: int, rank: int) -> float:
    """Learning coefficient of reduced-rank regression y = B A x.

    Aoyagi & Watanabe (2005): A is ``hidden x n_in``, B is ``n_out x hidden``,
    and the true product B0 A0 has rank ``rank``.  With M = n_in, N = n_out,
    H = hidden, r = rank:

    * M + H < N + r:  lambda = (H M - H r + N r) / 2
    * N + H < M + r:  lambda = (H N - H r + M r) / 2
    * M + N < H + r:  lambda = M N / 2
    * otherwise:      lambda = (2 (H + r)(M + N) - (M - N)^2 - (H + r)^2 + e) / 8
      with e = 1 if M + H + N + r is odd and e = 0 if it is even.
    """
    return float(_rrr_lambda_exact(n_in, hidden, n_out, rank))


# ---------------------------------------------------------------------------
# quadratic potential
# ---------------------------------------------------------------------------

def _as_real(value, name: str, *, strictly_positive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if strictly_positive and value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    if not strictly_positive and value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def quadratic_learning_coefficient(dim: int, n: int, beta: float, gamma: float,
                                   eigenvalues: Sequence[float] | None = None) -> float:
    """Exact finite-gamma LLC estimate for L(theta) = sum_i h_i theta_i^2 / 2 at theta* = 0.

    The localized tempered posterior exp(-n beta L(theta) - gamma/2 |theta|^2) is Gaussian with
    precision n beta h_i + gamma in coordinate i, so E[h_i theta_i^2 / 2] = h_i / (2 (n beta h_i +
    gamma)) and the estimator n beta (E[L] - L(0)) equals sum_i (1/2) n beta h_i / (n beta h_i + gamma):
    (dim / 2) n beta / (n beta + gamma) when every h_i = 1 (``eigenvalues`` None). It tends to half the
    number of nonzero h_i as gamma / (n beta h_i) -> 0; a flat direction (h_i = 0) adds nothing.
    """
    d = _as_int(dim, "dim", 1)
    n = _as_int(n, "n", 1)
    b = _as_real(beta, "beta", strictly_positive=True)
    g = _as_real(gamma, "gamma", strictly_positive=False)
    nb = n * b
    if eigenvalues is None:
        return 0.5 * d * nb / (nb + g)
    hs = [_as_real(h, "eigenvalue", strictly_positive=False) for h in eigenvalues]
    if len(hs) != d:
        raise ValueError(f"eigenvalues: needs dim = {d} entries, got {len(hs)}")
    if g == 0 and 0.0 in hs:
        raise ValueError("gamma must be > 0 when an eigenvalue is 0 (the posterior is improper otherwise)")
    return float(sum(0.5 * nb * h / (nb * h + g) for h in hs))
