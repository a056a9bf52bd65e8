import numpy as np

from llc.analysis.diagnostics import diverged_chains, llc_draws, llc_metrics, running_llc


def test_running_llc_bookkeeping():
    rng = np.random.default_rng(0)
    Ln = 1.0 + rng.random((3, 50))
    llc = llc_draws(Ln, L0=1.0, nbeta=10.0)
    per_chain, pooled = running_llc(llc)
    for c in range(3):
        for t in (0, 9, 49):
            assert np.isclose(per_chain[c, t], 10.0 * (Ln[c, : t + 1].mean() - 1.0))
    for t in (0, 24, 49):
        assert np.isclose(pooled[t], llc[:, : t + 1].mean())
    metrics = llc_metrics(Ln, 1.0, 10.0)
    assert np.isclose(metrics["llc_mean"], pooled[-1])
    assert np.allclose(metrics["llc_per_chain"], per_chain[:, -1])


def test_diverged_chain_excluded():
    rng = np.random.default_rng(1)
    Ln = 2.0 + 0.1 * rng.standard_normal((4, 100))
    Ln[2, 60:] = np.nan
    theta = rng.standard_normal((4, 100, 2))
    theta[3, 10, 0] = np.inf
    assert diverged_chains(Ln, theta).tolist() == [False, False, True, True]
    m = llc_metrics(Ln, 2.0, 5.0, theta)
    assert m["diverged_chains"] == 2 and m["diverged_chain_ids"] == [2, 3]
    assert np.isclose(m["llc_mean"], 5.0 * (Ln[:2].mean() - 2.0))
    assert m["llc_per_chain"][2] is None and np.isfinite(m["llc_mean"])
