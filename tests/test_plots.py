"""Figures from synthetic sampler files: which files appear, that they are PNGs, that text does not overlap."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from synthetic_runs import make_idata, synthetic_idatas

from llc.posthoc import plots as P
from llc.analysis.diagnostics import sampler_metrics

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def idatas():
    return synthetic_idatas(seed=1, chains=3, draws=120)


@pytest.fixture(scope="module")
def metrics(idatas):
    return {name: sampler_metrics(idata) for name, idata in idatas.items()}


def test_every_figure_written_where_data_exists(idatas, metrics, tmp_path):
    # Every plot of one sampler (figures cost ~0.4 s each, so the generic set is drawn once)...
    written = P.make_figures({"hmc": idatas["hmc"]}, metrics, tmp_path)
    names = {p.name for p in written}
    generic = ["llc_running", "L_trace", "L_acf", "L_ess", "L_ess_quantile", "L_rhat", "llc_rank",
               "theta_trace", "theta_rank", "Ln_centered"]
    assert {f"hmc_{suffix}.png" for suffix in generic} <= names
    assert {"hmc_acceptance.png", "hmc_energy.png", "llc_running_combined.png"} <= names
    assert "hmc_energy_hist.png" not in names  # no energy_change statistic in this file
    # ...and the sampler-specific ones only where the file holds their statistics.
    other = P.make_figures({"sgld": idatas["sgld"], "mclmc": idatas["mclmc"]}, metrics, tmp_path,
                           ("acceptance", "energy"))
    assert [p.name for p in other] == ["mclmc_energy_hist.png"]
    for path in written + other:
        data = path.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000
    assert set(P.planned_files({"hmc": idatas["hmc"]}, P.PLOT_KEYS)) >= names  # an upper bound


def test_plot_selection_and_no_overwrite(idatas, metrics, tmp_path):
    written = P.make_figures({"hmc": idatas["hmc"]}, metrics, tmp_path, ("running_llc", "acceptance"))
    assert sorted(p.name for p in written) == ["hmc_acceptance.png", "hmc_llc_running.png"]
    (tmp_path / "hmc_llc_running.png").write_bytes(b"keep")
    again = P.make_figures({"hmc": idatas["hmc"]}, metrics, tmp_path, ("running_llc",), overwrite=False)
    assert again == [] and (tmp_path / "hmc_llc_running.png").read_bytes() == b"keep"


def test_parse_plots():
    assert P.parse_plots(None) == P.PLOT_KEYS == P.parse_plots("all")
    assert P.parse_plots("rank, energy") == ("rank", "energy")
    with pytest.raises(ValueError, match="unknown plot 'bogus'"):
        P.parse_plots("rank,bogus")


def _text_boxes(fig):
    """Window extents of titles, axis labels and legends (the text a reader must be able to read)."""
    renderer = fig.canvas.get_renderer()
    boxes = []
    texts = [fig._suptitle] if fig._suptitle is not None else []
    for ax in fig.axes:
        if not ax.get_visible():
            continue
        texts += [ax.title, ax.xaxis.label, ax.yaxis.label]
        if ax.get_legend() is not None:
            boxes.append(("legend", ax.get_legend().get_window_extent(renderer)))
    texts += [t for t in fig.texts if t is not fig._suptitle]
    for leg in fig.legends:
        boxes.append(("figlegend", leg.get_window_extent(renderer)))
    for t in texts:
        if t is not None and t.get_text() and t.get_visible():
            boxes.append((t.get_text(), t.get_window_extent(renderer)))
    return boxes


def test_text_does_not_overlap(idatas, metrics):
    figs = [P.fig_running_llc(idatas["sgld"], metrics["sgld"], "sgld"),
            P.fig_trace(idatas["hmc"], metrics["hmc"], "hmc"),
            P.fig_acceptance(idatas["hmc"], metrics["hmc"], "hmc"),
            P.fig_energy(idatas["hmc"], metrics["hmc"], "hmc"),
            P.fig_theta_rank(idatas["mclmc"], metrics["mclmc"], "mclmc"),
            P.fig_combined(idatas, metrics)]
    for fig in figs:
        fig.canvas.draw()  # Agg canvas; constrained layout runs here
        boxes = _text_boxes(fig)
        assert len(boxes) >= 3
        for (name_a, a), (name_b, b) in itertools.combinations(boxes, 2):
            assert not a.overlaps(b), f"{name_a!r} overlaps {name_b!r}"
        fig_box = fig.bbox
        for name, box in boxes:  # nothing cut off at the figure edges
            assert box.x0 >= fig_box.x0 - 1 and box.x1 <= fig_box.x1 + 1, name


def test_diverged_chain_drawn_dotted_and_left_out_of_pooled(idatas):
    idata = idatas["sgld"].copy()
    Ln = idata.posterior["Ln"].values.copy()
    Ln[0, 10:] = np.nan
    idata.posterior["Ln"] = (("chain", "draw"), Ln)
    m = sampler_metrics(idata)
    fig = P.fig_running_llc(idata, m, "sgld")
    labels = [line.get_label() for line in fig.axes[0].get_lines()]
    assert "chain 0 (diverged)" in labels
    pooled = next(line for line in fig.axes[0].get_lines() if line.get_label() == "pooled")
    assert np.isfinite(pooled.get_ydata()).all()
    assert pooled.get_ydata()[-1] == pytest.approx(m["llc_mean"])


def test_vi_optimisation_trace_figure(tmp_path):
    rng = np.random.default_rng(4)
    steps = np.arange(1, 31) * 10
    trace = {"step": steps, "elbo": -5 - np.exp(-steps / 100)[None], "llc": 3 + 0.1 * rng.standard_normal((1, 30)),
             "grad_norm": np.exp(-steps / 50)[None], "pi": np.ones((1, 30, 2)) / 2}
    vi = make_idata("vi", rng, 1, 60, info={"trace": trace})
    written = P.make_figures({"vi": vi}, {"vi": sampler_metrics(vi)}, tmp_path, ("optimisation",))
    assert [p.name for p in written] == ["vi_opt_trace.png"]
    fig = P.fig_optimisation(vi, sampler_metrics(vi), "vi")
    assert [ax.get_ylabel().split()[0] for ax in fig.axes] == ["ELBO", "λ̂", "gradient"]
    # MCMC files carry no optimisation trace: no figure.
    assert P.fig_optimisation(make_idata("hmc", rng, 2, 60), {}, "hmc") is None
