"""Tests for llc.theory: closed-form learning coefficients."""

import itertools
import random

import numpy as np
import pytest

from llc.theory import (
    _aoyagi_subsets,
    _dln_lambda_exact,
    _rrr_lambda_exact,
    dln_learning_coefficient,
    num_params_dln,
    quadratic_learning_coefficient,
    rrr_learning_coefficient,
)


def _all_shapes(max_layers, max_width):
    """Every (widths, rank) with 1..max_layers matrices and widths <= max_width."""
    for n_mat in range(1, max_layers + 1):
        for widths in itertools.product(range(1, max_width + 1), repeat=n_mat + 1):
            for rank in range(min(widths) + 1):
                yield widths, rank


def _random_shapes(count, seed=0, max_layers=10, max_width=25):
    rng = random.Random(seed)
    for _ in range(count):
        n_mat = rng.randint(1, max_layers)
        widths = tuple(rng.randint(1, max_width) for _ in range(n_mat + 1))
        yield widths, rng.randint(0, min(widths))


# ---------------------------------------------------------------------------
# num_params_dln
# ---------------------------------------------------------------------------

def test_num_params_dln():
    assert num_params_dln((3, 4)) == 12
    assert num_params_dln((3, 4, 5)) == 12 + 20
    assert num_params_dln([2, 7, 1, 9]) == 14 + 7 + 9
    assert num_params_dln(np.array([2, 3, 4])) == 6 + 12


# ---------------------------------------------------------------------------
# values derivable by hand
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("h1,h2", [(1, 1), (1, 5), (4, 3), (7, 7)])
def test_single_layer_is_regular(h1, h2):
    # L = 1: f(x) = W x is linear regression, an identifiable regular model,
    # so lambda = d/2 = h1*h2/2 whatever the true rank.
    for r in range(min(h1, h2) + 1):
        assert dln_learning_coefficient((h1, h2), r) == pytest.approx(h1 * h2 / 2)


@pytest.mark.parametrize("n_mat", [2, 3, 4, 7, 12])
def test_scalar_chain(n_mat):
    # widths (1,...,1): K(w) ~ (w_1 ... w_L - c)^2.
    # c = 0 (rank 0): normal crossing monomial (w_1...w_L)^2, RLCT = 1/2.
    # c != 0 (rank 1): the zero set is a smooth hypersurface, RLCT = 1/2.
    widths = (1,) * (n_mat + 1)
    assert dln_learning_coefficient(widths, 0) == pytest.approx(0.5)
    assert dln_learning_coefficient(widths, 1) == pytest.approx(0.5)


@pytest.mark.parametrize("hidden", [1, 2, 3, 4, 10])
def test_inner_product_model(hidden):
    # widths (1, H, 1), rank 0: K ~ (sum_i a_i b_i)^2, the square of a
    # nondegenerate quadratic form in 2H >= 2 variables, whose log canonical
    # threshold is min(1, H) = 1; hence lambda = 1/2.
    assert dln_learning_coefficient((1, hidden, 1), 0) == pytest.approx(0.5)


def test_any_width_equal_to_rank_gives_function_space_dimension():
    # If some width equals the true rank r, every layer map near the truth has
    # full rank r at the bottleneck and the parameter -> matrix map is a
    # submersion onto the manifold of rank-r H_{L+1} x H_1 matrices, of
    # dimension r (H_1 + H_{L+1} - r).  A submersion onto a manifold gives
    # lambda = (manifold dimension) / 2.
    for widths, _ in _all_shapes(5, 5):
        r = min(widths)
        expected = r * (widths[0] + widths[-1] - r) / 2
        assert dln_learning_coefficient(widths, r) == pytest.approx(expected)


@pytest.mark.parametrize("width,rank", [(1, 0), (3, 0), (3, 1), (5, 0), (5, 2), (6, 6)])
def test_equal_widths_depth_saturation(width, rank):
    # Hand-evaluation of Aoyagi's theorem for equal widths H: all M_j = m = H - r
    # tie, so Sigma is everything and ell = L.  For L >= m, ceil((L+1)m/L) = m+1,
    # a = m, and the formula simplifies to
    #   lambda = (2 r H - r^2)/2 + m (m + 1)/4,
    # independent of depth: Aoyagi's (2024) abstract says lambda stays bounded
    # as the number of layers grows.
    m = width - rank
    expected = (2 * rank * width - rank**2) / 2 + m * (m + 1) / 4
    for n_mat in range(max(m, 1), max(m, 1) + 30):
        assert dln_learning_coefficient((width,) * (n_mat + 1), rank) == pytest.approx(expected)


# ---------------------------------------------------------------------------
# reduced rank regression (Aoyagi & Watanabe 2005)
# ---------------------------------------------------------------------------

# (n_in M, hidden H, n_out N, rank r, lambda), evaluated by hand from the case
# table of Aoyagi & Watanabe (2005), Neural Networks 18:924-933.  The shapes are
# the ones timaeus' devinterp test-suite uses to exercise each case.
RRR_CASES = [
    (5, 3, 5, 0, 6.5),   # generic, M+H+N+r odd: (2*3*10 - 0 - 9 + 1)/8
    (5, 4, 5, 0, 8.0),   # generic, even: (2*4*10 - 0 - 16)/8
    (4, 3, 8, 0, 6.0),   # M+H < N+r: (H M - H r + N r)/2 = 12/2
    (8, 3, 4, 0, 6.0),   # N+H < M+r: (H N - H r + M r)/2 = 12/2
    (3, 8, 4, 0, 6.0),   # M+N < H+r: M N / 2
    (2, 1, 2, 0, 1.0),   # generic, odd: (2*1*4 - 0 - 1 + 1)/8
    (3, 2, 3, 1, 3.5),   # generic, odd: (2*3*6 - 0 - 9 + 1)/8
    (4, 3, 8, 2, 11.0),  # M+H < N+r: (12 - 6 + 16)/2
    (2, 5, 3, 1, 3.0),   # M+N < H+r: M N / 2
]


@pytest.mark.parametrize("m,h,n,r,expected", RRR_CASES)
def test_rrr_known_values(m, h, n, r, expected):
    assert rrr_learning_coefficient(m, h, n, r) == pytest.approx(expected)
    # ... and Aoyagi's DLN theorem with two layers must reproduce them.
    assert dln_learning_coefficient((m, h, n), r) == pytest.approx(expected)


def test_dln_two_layers_matches_rrr_exhaustively():
    # Aoyagi (2024) generalises Aoyagi & Watanabe (2005); for L = 2 they must
    # agree exactly (compared as Fractions, no tolerance).
    for m, h, n in itertools.product(range(1, 10), repeat=3):
        for r in range(min(m, h, n) + 1):
            assert _dln_lambda_exact((m, h, n), r) == _rrr_lambda_exact(m, h, n, r), (m, h, n, r)


def test_rrr_symmetric_in_input_output():
    # Transposing y = BAx gives y' = A^T B^T x' with the roles of M and N
    # swapped and the same loss, hence the same RLCT.
    for m, h, n in itertools.product(range(1, 8), repeat=3):
        for r in range(min(m, h, n) + 1):
            assert rrr_learning_coefficient(m, h, n, r) == rrr_learning_coefficient(n, h, m, r)


# ---------------------------------------------------------------------------
# structural properties of the DLN formula
# ---------------------------------------------------------------------------

def test_subset_sigma_exists_and_is_unique():
    # Aoyagi's theorem asserts existence; on every small shape exactly one
    # admissible Sigma is found, so the value is unambiguous.
    for widths, r in _all_shapes(5, 5):
        subsets = _aoyagi_subsets([w - r for w in widths])
        assert len(subsets) == 1, (widths, r, subsets)


def test_bounded_by_half_parameter_count():
    # lambda <= d/2 for any model with a prior positive at the truth
    # (Watanabe 2009); equality for regular models.
    shapes = list(_all_shapes(4, 5)) + list(_random_shapes(3000))
    for widths, r in shapes:
        lam = dln_learning_coefficient(widths, r)
        assert lam <= num_params_dln(widths) / 2 + 1e-9, (widths, r, lam)


def test_at_least_regular_part():
    # The singular correction a(l-a)/(4l) + (S^2/l - sum M^2)/4 is >= 0 because
    # S >= l * max M on Sigma, so lambda >= r (H_1 + H_{L+1} - r) / 2.
    for widths, r in _random_shapes(3000, seed=1):
        lam = dln_learning_coefficient(widths, r)
        assert lam >= r * (widths[0] + widths[-1] - r) / 2 - 1e-9, (widths, r, lam)


def test_reversal_invariance():
    # The transposed network x -> W_1^T ... W_L^T x realises the transposed
    # matrices with the same loss geometry, so reversing widths keeps lambda.
    for widths, r in _random_shapes(2000, seed=2):
        assert _dln_lambda_exact(widths, r) == _dln_lambda_exact(widths[::-1], r)


def test_hidden_permutation_invariance():
    # In Aoyagi's formula only the multiset of M_j and the end widths H_1,
    # H_{L+1} enter, so shuffling hidden widths leaves lambda unchanged.
    rng = random.Random(3)
    for widths, r in _random_shapes(500, seed=3):
        if len(widths) < 4:
            continue
        hidden = list(widths[1:-1])
        rng.shuffle(hidden)
        shuffled = (widths[0], *hidden, widths[-1])
        assert _dln_lambda_exact(widths, r) == _dln_lambda_exact(shuffled, r)


def test_wide_hidden_layers_give_regular_end_to_end_matrix():
    # Generalisation of RRR case 4: when every hidden width exceeds the input
    # plus output width, Sigma = {input, output} and lambda = H_1 H_{L+1} / 2.
    for h1, hout in [(1, 1), (2, 3), (4, 4)]:
        for depth in range(2, 6):
            widths = (h1, *([h1 + hout + 1] * (depth - 1)), hout)
            for r in range(min(h1, hout) + 1):
                assert dln_learning_coefficient(widths, r) == pytest.approx(h1 * hout / 2)


def test_returns_python_float():
    assert type(dln_learning_coefficient((2, 3, 2), 1)) is float
    assert type(rrr_learning_coefficient(2, 3, 2, 1)) is float
    assert type(quadratic_learning_coefficient(3, 10, 1.0, 1.0)) is float


def test_accepts_numpy_integers():
    widths = np.array([3, 4, 5])
    assert dln_learning_coefficient(widths, np.int64(1)) == dln_learning_coefficient((3, 4, 5), 1)


# ---------------------------------------------------------------------------
# quadratic potential
# ---------------------------------------------------------------------------

def test_quadratic_limits():
    assert quadratic_learning_coefficient(7, 100, 1.0, 0.0) == pytest.approx(3.5)
    # n beta = gamma halves the value.
    assert quadratic_learning_coefficient(4, 10, 0.5, 5.0) == pytest.approx(1.0)
    # gamma / (n beta) -> 0 recovers d/2.
    assert quadratic_learning_coefficient(4, 10**9, 1.0, 1.0) == pytest.approx(2.0, rel=1e-8)


def test_quadratic_matches_gaussian_sampling():
    # exp(-n beta |t|^2/2 - gamma |t|^2/2) is N(0, I / (n beta + gamma));
    # the estimator is n beta E[L(theta)] with L = |theta|^2 / 2.
    dim, n, beta, gamma = 5, 200, 0.3, 40.0
    rng = np.random.default_rng(0)
    theta = rng.standard_normal((400_000, dim)) / np.sqrt(n * beta + gamma)
    estimate = n * beta * np.mean(0.5 * np.sum(theta**2, axis=1))
    exact = quadratic_learning_coefficient(dim, n, beta, gamma)
    assert estimate == pytest.approx(exact, rel=0.01)


def test_quadratic_with_eigenvalues_matches_gaussian_sampling():
    # Coordinate i of exp(-n beta sum h_i t_i^2/2 - gamma |t|^2/2) is N(0, 1 / (n beta h_i + gamma)).
    hs = np.array([0.0, 0.01, 0.3, 1.0, 5.0, 22.0])
    n, beta, gamma = 200, 0.3, 40.0
    rng = np.random.default_rng(1)
    draws = 400_000
    theta = rng.standard_normal((draws, hs.size)) / np.sqrt(n * beta * hs + gamma)
    per_draw = n * beta * 0.5 * np.sum(hs * theta**2, axis=1)
    exact = quadratic_learning_coefficient(hs.size, n, beta, gamma, hs)
    se = per_draw.std() / np.sqrt(draws)
    assert abs(per_draw.mean() - exact) < 4 * se
    # Unit eigenvalues are the isotropic formula; flat directions add nothing; gamma -> 0 counts the
    # nonzero eigenvalues.
    assert quadratic_learning_coefficient(4, n, beta, gamma, [1.0] * 4) == pytest.approx(
        quadratic_learning_coefficient(4, n, beta, gamma), rel=1e-15)
    assert quadratic_learning_coefficient(2, n, beta, gamma, [0.0, 1.0]) == pytest.approx(
        quadratic_learning_coefficient(1, n, beta, gamma), rel=1e-15)
    assert quadratic_learning_coefficient(3, 10**12, 1.0, 1e-6, [0.0, 2.0, 7.0]) == pytest.approx(1.0, rel=1e-9)
    with pytest.raises(ValueError, match="gamma must be > 0"):
        quadratic_learning_coefficient(2, n, beta, 0.0, [0.0, 1.0])
    with pytest.raises(ValueError, match="needs dim = 3"):
        quadratic_learning_coefficient(3, n, beta, gamma, [1.0, 2.0])


# ---------------------------------------------------------------------------
# argument validation
# ---------------------------------------------------------------------------

@pytest.mark.parametrize(
    "widths,rank,match",
    [
        ((3,), 0, "widths"),
        ((), 0, "widths"),
        ((3, 0, 2), 0, r"widths\[1\]"),
        ((3, -1), 0, r"widths\[1\]"),
        ((3, 2.5), 0, r"widths\[1\]"),
        ((True, 2), 0, r"widths\[0\]"),
        ("32", 0, "widths"),
        (5, 0, "widths"),
        ((3, 4), -1, "rank"),
        ((3, 4), 4, "rank"),
        ((3, 2, 4), 3, "rank"),
        ((3, 4), 1.0, "rank"),
    ],
)
def test_dln_invalid_arguments(widths, rank, match):
    with pytest.raises(ValueError, match=match):
        dln_learning_coefficient(widths, rank)


def test_num_params_invalid():
    with pytest.raises(ValueError, match="widths"):
        num_params_dln((4,))


@pytest.mark.parametrize(
    "args,match",
    [
        ((0, 2, 2, 0), "n_in"),
        ((2, 0, 2, 0), "hidden"),
        ((2, 2, 0, 0), "n_out"),
        ((2, 2, 2, -1), "rank"),
        ((4, 2, 5, 3), "rank"),
        ((2.0, 2, 2, 0), "n_in"),
    ],
)
def test_rrr_invalid_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        rrr_learning_coefficient(*args)


@pytest.mark.parametrize(
    "args,match",
    [
        ((0, 10, 1.0, 1.0), "dim"),
        ((2, 0, 1.0, 1.0), "n"),
        ((2, 10, 0.0, 1.0), "beta"),
        ((2, 10, -1.0, 1.0), "beta"),
        ((2, 10, float("nan"), 1.0), "beta"),
        ((2, 10, 1.0, -0.5), "gamma"),
        ((2, 10, 1.0, float("inf")), "gamma"),
        ((2, 10, "1", 1.0), "beta"),
    ],
)
def test_quadratic_invalid_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        quadratic_learning_coefficient(*args)
