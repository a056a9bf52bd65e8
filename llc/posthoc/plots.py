"""Diagnostic figures of a run, drawn from the saved NetCDF files (no JAX).

Every figure is a PNG named ``<sampler>_<plot>.png`` (plus ``llc_running_combined.png`` across
samplers). Figures are built on bare ``matplotlib.figure.Figure`` objects rendered by the Agg
canvas: no pyplot state, no GUI backend, nothing left open between figures. A figure whose data
is missing from a file (e.g. acceptance rates for SGLD) is skipped, never drawn empty.

Plot keys (``llc analyze --plots``) and the files they produce:

    running_llc    <s>_llc_running.png     running lambda-hat per chain + pooled, final mean +- 2 SE
    trace          <s>_L_trace.png         L_n trace per chain (warm-up greyed) and its density
    autocorr       <s>_L_acf.png           autocorrelation of L_n per chain
    ess_evolution  <s>_L_ess.png           bulk / tail ESS of L_n against the number of draws
    ess_quantile   <s>_L_ess_quantile.png  ESS of quantiles of lambda-hat draws (ArviZ)
    rhat           <s>_L_rhat.png          R-hat of L_n against the number of draws
    rank           <s>_llc_rank.png        rank plot of the lambda-hat draws (ArviZ)
    theta          <s>_theta_trace.png, <s>_theta_rank.png   random projections of w - w*
    centered       <s>_Ln_centered.png     L_n - L0 per chain
    acceptance     <s>_acceptance.png      acceptance-rate histogram (HMC, adjusted MCLMC)
    energy         <s>_energy.png          HMC energy plot (ArviZ);  <s>_energy_hist.png  MCLMC dE
    optimisation   <s>_opt_trace.png       ELBO / lambda-hat / gradient norm along a VI optimisation
    combined       llc_running_combined.png  pooled running lambda-hat of every sampler
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

import arviz as az
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from llc import registry
from llc.analysis import diagnostics as D
from llc.store.records import COMBINED_FILE

DPI = 120
PLOT_KEYS = ("running_llc", "trace", "autocorr", "ess_evolution", "ess_quantile", "rhat", "rank", "theta",
             "centered", "acceptance", "energy", "optimisation", "combined")
# Reference acceptance rates: 0.651 is the asymptotically optimal HMC rate (Beskos et al. 2013);
# 0.8 is the usual target of step-size adaptation (Stan, BlackJAX window adaptation).
ACCEPT_REFS = ((0.651, "0.651: optimal (Beskos et al.)"), (0.8, "0.8: adaptation target"))
label = registry.label


# Fixed margins (inches) instead of constrained layout: the layout engine measures every text
# object in an extra draw pass, ~40 % of a figure's time (profiled on 34 figures of a quick run).
# The frame is the same for every single-panel figure, so it is set once here; the legend column
# on the right is wide enough for the longest label the figures write ("λ̂ ± 2 SE = ...").
MARGIN_LEFT, MARGIN_BOTTOM, MARGIN_TOP, MARGIN_RIGHT = 0.95, 0.62, 0.42, 0.25
LEGEND_WIDTH = 2.15


def _figure(width: float = 9.0, height: float = 4.5, *, legend: bool = True, constrained: bool = False) -> Figure:
    """A bare Agg figure. ``legend``: keep a column on the right for ``_chain_legend``;
    ``constrained``: let matplotlib lay out a multi-panel figure (slower, rare figures only)."""
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained" if constrained else None)
    FigureCanvasAgg(fig)  # render with Agg whatever pyplot's backend is (headless, thread-safe)
    if not constrained:
        right = width - (LEGEND_WIDTH if legend else MARGIN_RIGHT)
        fig.subplots_adjust(left=MARGIN_LEFT / width, right=right / width, bottom=MARGIN_BOTTOM / height,
                            top=1 - MARGIN_TOP / height)
    return fig


def _chain_colors(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def _attrs(idata) -> dict[str, Any]:
    from llc.store.artifacts import nc_attrs

    return nc_attrs(idata)


def _good(idata) -> np.ndarray:
    """Mask of chains that did not diverge (same rule as the metrics)."""
    post = idata.posterior
    arrays = [post["Ln"].values] + ([post["theta_proj"].values] if "theta_proj" in post else [])
    return ~D.diverged_chains(*arrays)


def _llc(idata) -> np.ndarray:
    a = _attrs(idata)
    return D.llc_draws(idata.posterior["Ln"].values, float(a["L0"]), float(a["nbeta"]))


def _chain_legend(ax, n: int | None = None) -> None:
    """Legend outside the axes, on the right: traces fill their axes, so any inside spot hides data.
    Many chains: only the non-chain entries (reference lines, pooled curve) are listed."""
    handles, labels = ax.get_legend_handles_labels()
    if len(handles) > 12:
        keep = [i for i, lab in enumerate(labels) if not lab.startswith("chain ")]
        handles, labels = [handles[i] for i in keep], [labels[i] for i in keep]
    if not handles:
        return
    fig = ax.figure
    if fig.get_layout_engine() is not None:
        fig.legend(handles, labels, loc="outside right upper", fontsize="small")
    else:  # the column _figure kept free on the right; narrower axes if a long label needs more
        gap = 0.12 / fig.get_figwidth()
        leg = fig.legend(handles, labels, loc="upper left", fontsize="small", borderaxespad=0,
                         bbox_to_anchor=(fig.subplotpars.right + gap, fig.subplotpars.top))
        width = leg.get_window_extent(fig.canvas.get_renderer()).width / fig.bbox.width
        if fig.subplotpars.right + gap + width > 0.995:
            fig.subplots_adjust(right=0.995 - gap - width)
            leg.set_bbox_to_anchor((fig.subplotpars.right + gap, fig.subplotpars.top))


def _tidy(ax) -> None:
    """ArviZ sets its own (large) font sizes; bring its axes back to the sizes of the other figures."""
    ax.title.set_fontsize("large")
    ax.xaxis.label.set_fontsize("medium")
    ax.yaxis.label.set_fontsize("medium")
    ax.tick_params(labelsize="medium")


def _analytic(idata) -> float | None:
    value = _attrs(idata).get("analytic_llc")
    return float(value) if value is not None else None


# --------------------------------------------------------------------------- per-sampler figures

def fig_running_llc(idata, metrics: dict[str, Any], sampler: str) -> Figure:
    llc = _llc(idata)
    good = _good(idata)
    per_chain, _ = D.running_llc(llc)
    _, pooled = D.running_llc(llc[good]) if good.any() else (None, np.full(llc.shape[1], np.nan))
    x = np.arange(1, llc.shape[1] + 1)
    fig = _figure()
    ax = fig.add_subplot()
    for c, color in zip(range(llc.shape[0]), _chain_colors(llc.shape[0])):
        style = {} if good[c] else {"linestyle": ":"}
        ax.plot(x, per_chain[c], color=color, lw=1.0, alpha=0.7,
                label=f"chain {c}" + ("" if good[c] else " (diverged)"), **style)
    ax.plot(x, pooled, color="black", lw=2.2, label="pooled")
    mean, se = metrics.get("llc_mean"), metrics.get("llc_se")
    if mean is not None and se is not None:
        ax.axhspan(mean - 2 * se, mean + 2 * se, color="grey", alpha=0.25,
                   label=f"λ̂ ± 2 SE = {mean:.3f} ± {2 * se:.3f}")
    exact = _analytic(idata)
    if exact is not None:
        ax.axhline(exact, color="crimson", ls="--", lw=1.2, label=f"analytic λ = {exact:.3f}")
    ax.set_xlabel("kept draw t (per chain)")
    ax.set_ylabel("running λ̂_t = nβ (mean L_n − L₀)  [dimensionless]")
    ax.set_title(f"{label(sampler)}: running LLC estimate")
    _zoom_running(ax, per_chain[good] if good.any() else per_chain, mean, se, exact)
    _chain_legend(ax)
    return fig


def _zoom_running(ax, per_chain: np.ndarray, mean, se, exact) -> None:
    """Clip the y-range to the second half of the curves: the first few draws of a running mean swing
    wildly and would otherwise squash the part worth reading."""
    tail = per_chain[:, per_chain.shape[1] // 10:]
    vals = [v for v in (tail[np.isfinite(tail)].min() if np.isfinite(tail).any() else None,
                        tail[np.isfinite(tail)].max() if np.isfinite(tail).any() else None, exact) if v is not None]
    if mean is not None and se is not None:
        vals += [mean - 2 * se, mean + 2 * se]
    if vals:
        lo, hi = min(vals), max(vals)
        pad = 0.15 * (hi - lo) if hi > lo else max(abs(hi), 1.0) * 0.1
        ax.set_ylim(lo - pad, hi + pad)


def _warmup_Ln(idata) -> np.ndarray | None:
    if "warmup_posterior" in idata.groups() and "Ln" in idata.warmup_posterior:
        w = idata.warmup_posterior["Ln"].values
        return w if w.size else None
    return None


def fig_trace(idata, metrics, sampler) -> Figure:
    Ln = idata.posterior["Ln"].values
    warm = _warmup_Ln(idata)
    fig = _figure(10, 4.5)
    ax, axd = fig.subplots(1, 2, width_ratios=[4, 1], sharey=True, gridspec_kw={"wspace": 0.04})
    colors = _chain_colors(Ln.shape[0])
    x = np.arange(Ln.shape[1])
    for c, color in enumerate(colors):
        if warm is not None:
            ax.plot(np.arange(-warm.shape[1], 0), warm[c], color="grey", lw=0.6, alpha=0.5,
                    label="warm-up (discarded)" if c == 0 else None)
        ax.plot(x, Ln[c], color=color, lw=0.7, alpha=0.8, label=f"chain {c}")
        row = Ln[c][np.isfinite(Ln[c])]
        if row.size > 1:
            axd.hist(row, bins=40, orientation="horizontal", histtype="step", color=color, density=True)
    if warm is not None:
        ax.axvline(0, color="black", lw=0.8, ls=":")
    L0 = float(_attrs(idata)["L0"])
    ax.axhline(L0, color="crimson", ls="--", lw=1.0, label="L₀ = L_n(w*)")
    ax.set_xlabel("draw (negative: warm-up)")
    ax.set_ylabel("L_n(w)  [mean loss per sample]")
    ax.set_title(f"{label(sampler)}: trace of L_n")
    _chain_legend(ax)
    axd.set_xlabel("density")
    axd.set_title("kept draws", fontsize="medium")
    _robust_ylim(ax, Ln, L0)
    return fig


def _robust_ylim(ax, values: np.ndarray, *extra: float) -> None:
    finite = values[np.isfinite(values)]
    if finite.size:
        lo, hi = np.quantile(finite, [0.001, 0.999])
        lo, hi = min(lo, *extra), max(hi, *extra)
        pad = 0.05 * (hi - lo) if hi > lo else 1.0
        ax.set_ylim(lo - pad, hi + pad)


def fig_autocorr(idata, metrics, sampler, max_lag: int = 100) -> Figure:
    Ln = idata.posterior["Ln"].values
    good = _good(idata)
    fig = _figure()
    ax = fig.add_subplot()
    draws = Ln.shape[1]
    if good.any():
        acf = D.autocorrelation(Ln[good], max_lag)
        lags = np.arange(acf.shape[1])
        for row, c in zip(acf, np.flatnonzero(good)):
            ax.plot(lags, row, color=_chain_colors(Ln.shape[0])[c], lw=1.2, marker="o", ms=2, label=f"chain {c}")
    band = 2 / math.sqrt(draws)
    ax.axhspan(-band, band, color="grey", alpha=0.25, label="±2/√N (white noise)")
    ax.axhline(0, color="black", lw=0.8)
    ess = metrics.get("ess")
    if ess:
        tau = Ln[good].size / ess
        ax.text(0.98, 0.95, f"integrated autocorrelation time ≈ N/ESS = {tau:.1f} draws",
                transform=ax.transAxes, ha="right", va="top", fontsize="small",
                bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none"})
    ax.set_xlabel("lag  [draws]")
    ax.set_ylabel("autocorrelation of L_n")
    ax.set_title(f"{label(sampler)}: autocorrelation of L_n")
    ax.set_ylim(min(-0.2, ax.get_ylim()[0]), 1.05)
    _chain_legend(ax)
    return fig


def fig_ess_evolution(idata, metrics, sampler) -> Figure | None:
    Ln = idata.posterior["Ln"].values[_good(idata)]
    if Ln.shape[0] == 0 or Ln.shape[1] < 8:
        return None
    ev = D.ess_evolution(Ln)
    fig = _figure(legend=False)
    ax = fig.add_subplot()
    ax.plot(ev["total_draws"], ev["bulk"], marker="o", ms=3, label="bulk ESS")
    ax.plot(ev["total_draws"], ev["tail"], marker="s", ms=3, label="tail ESS")
    min_ess = 100 * Ln.shape[0]
    ax.axhline(min_ess, color="crimson", ls="--", lw=1.0, label=f"100 per chain = {min_ess}")
    ax.set_xlabel(f"total draws (all {Ln.shape[0]} chains)")
    ax.set_ylabel("effective sample size of L_n  [draws]")
    ax.set_title(f"{label(sampler)}: ESS evolution of L_n (≡ of λ̂ draws)")
    ax.set_ylim(bottom=0)
    ax.legend(loc="best", fontsize="small")
    return fig


def fig_ess_quantile(idata, metrics, sampler) -> Figure | None:
    good = _good(idata)
    if not good.any() or idata.posterior.sizes["draw"] < 8:
        return None
    sub = idata.posterior[["llc"]].isel(chain=np.flatnonzero(good))
    fig = _figure(legend=False)
    ax = fig.add_subplot()
    az.plot_ess(sub, var_names=["llc"], kind="quantile", ax=ax, show=False)
    ax.set_title(f"{label(sampler)}: ESS of quantiles of λ̂ draws")
    ax.set_xlabel("quantile of the λ̂ draws")
    ax.set_ylabel("effective sample size  [draws]")
    from matplotlib.lines import Line2D

    ax.legend(handles=[Line2D([], [], color="C0", marker="o", ls="", label="ESS of the quantile estimate"),
                       Line2D([], [], color="grey", ls="--", label=f"100 per chain = {100 * int(good.sum())}")],
              loc="best", fontsize="small")
    _tidy(ax)
    return fig


def fig_rhat(idata, metrics, sampler) -> Figure | None:
    Ln = idata.posterior["Ln"].values[_good(idata)]
    if Ln.shape[0] == 0 or Ln.shape[1] < 20:
        return None
    ev = D.rhat_evolution(Ln)
    fig = _figure(legend=False)
    ax = fig.add_subplot()
    ax.plot(ev["draws"], ev["rhat"], marker="o", ms=3, color="tab:blue", label="rank-normalised split R̂")
    ax.axhline(1.01, color="tab:green", ls="--", lw=1.0, label="1.01 (converged)")
    ax.axhline(1.1, color="crimson", ls="--", lw=1.0, label="1.1 (not converged)")
    ax.set_xlabel(f"draws per chain ({Ln.shape[0]} chains)")
    ax.set_ylabel("R̂ of L_n  [dimensionless]")
    title = f"{label(sampler)}: R̂ of L_n against draws"
    if Ln.shape[0] == 1:
        title += " (one chain: split halves)"
    ax.set_title(title)
    top = np.nanmax(ev["rhat"]) if np.isfinite(ev["rhat"]).any() else 1.2
    ax.set_ylim(min(0.99, np.nanmin(ev["rhat"]) - 0.005) if np.isfinite(ev["rhat"]).any() else 0.99,
                max(1.12, top + 0.02))
    ax.legend(loc="best", fontsize="small")
    return fig


def rank_histograms(values: np.ndarray, bins: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-chain histograms of the ranks of all draws pooled over chains: (counts (chain, bin), edges).

    Chains that sample the same distribution give flat histograms (Vehtari et al. 2021, rank plots).
    NumPy only: ArviZ's plot_rank cost ~0.2 s of Python per panel for the same bars."""
    from scipy.stats import rankdata

    values = np.asarray(values, dtype=np.float64)
    chains, draws = values.shape[:2]
    ranks = rankdata(values.reshape(-1), method="average").reshape(chains, draws)
    bins = bins or int(np.clip(draws // 20, 5, 20))
    edges = np.linspace(0.5, chains * draws + 0.5, bins + 1)
    counts = np.stack([np.histogram(row, edges)[0] for row in ranks])
    return counts, edges


def _draw_ranks(ax, values: np.ndarray, chain_ids: np.ndarray, colors: list) -> None:
    """One row per chain: its rank histogram scaled so that the uniform expectation (dashed) sits at
    0.45 of the row, with the ±2σ band a uniform histogram would stay in."""
    counts, edges = rank_histograms(values)
    draws, bins = values.shape[1], counts.shape[1]
    expected = draws / bins
    sd = math.sqrt(draws * (1 / bins) * (1 - 1 / bins))
    scale = 0.45 / expected
    for row, (c, hist) in enumerate(zip(chain_ids, counts)):
        ax.axhspan(row + scale * (expected - 2 * sd), row + scale * (expected + 2 * sd), color="grey", alpha=0.18,
                   lw=0)
        ax.stairs(row + scale * hist, edges, baseline=row, fill=True, color=colors[c], alpha=0.85)
        ax.axhline(row + 0.45, color="black", ls="--", lw=0.8)
    ax.set_yticks(np.arange(len(chain_ids)) + 0.3, [str(c) for c in chain_ids])
    ax.set_ylim(-0.05, len(chain_ids))
    ax.set_xlim(edges[0], edges[-1])


def fig_rank(idata, metrics, sampler) -> Figure | None:
    good = _good(idata)
    if good.sum() < 1 or idata.posterior.sizes["draw"] < 8:
        return None
    llc = _llc(idata)
    fig = _figure(legend=False)
    ax = fig.add_subplot()
    _draw_ranks(ax, llc[good], np.flatnonzero(good), _chain_colors(llc.shape[0]))
    ax.set_title(f"{label(sampler)}: rank plot of λ̂ draws (flat bars ⇔ chains agree)")
    ax.set_xlabel("rank of draw among all chains (binned); band: ±2σ of a uniform histogram")
    ax.set_ylabel("chain")
    return fig


def fig_theta_trace(idata, metrics, sampler) -> Figure | None:
    if "theta_proj" not in idata.posterior:
        return None
    theta = idata.posterior["theta_proj"].values  # (chain, draw, proj)
    k = min(theta.shape[2], 4)
    height = 1.2 + 1.5 * k
    fig = _figure(10, height)
    fig.subplots_adjust(top=1 - 0.55 / height, hspace=0.1)
    axes = np.atleast_1d(fig.subplots(k, 1, sharex=True))
    colors = _chain_colors(theta.shape[0])
    for j, ax in enumerate(axes):
        for c, color in enumerate(colors):
            ax.plot(theta[c, :, j], color=color, lw=0.6, alpha=0.8, label=f"chain {c}" if j == 0 else None)
        ax.axhline(0, color="black", lw=0.6, ls=":")
        ax.set_ylabel(f"⟨w − w*, u{j}⟩")
    axes[-1].set_xlabel("kept draw")
    fig.suptitle(f"{label(sampler)}: θ projected on fixed random directions u_j (0 = w*)")
    _chain_legend(axes[0])
    return fig


def fig_theta_rank(idata, metrics, sampler) -> Figure | None:
    if "theta_proj" not in idata.posterior or idata.posterior.sizes["draw"] < 8:
        return None
    good = _good(idata)
    if not good.any():
        return None
    theta = idata.posterior["theta_proj"].values
    k = min(theta.shape[2], 4)
    cols, rows = (2 if k > 1 else 1), math.ceil(k / 2)
    height = 1.1 + 1.9 * rows
    fig = _figure(10, height, legend=False)
    fig.subplots_adjust(top=1 - 0.75 / height, hspace=0.55, wspace=0.12)
    axes = np.atleast_1d(fig.subplots(rows, cols, sharey=True)).ravel()
    colors = _chain_colors(theta.shape[0])
    for j, ax in enumerate(axes[:k]):
        _draw_ranks(ax, theta[good, :, j], np.flatnonzero(good), colors)
        ax.set_title(f"projection u{j}", fontsize="medium")
        if j % cols == 0:
            ax.set_ylabel("chain")
        if j >= k - cols:
            ax.set_xlabel("rank (binned)")
    for ax in axes[k:]:
        ax.set_visible(False)
    fig.suptitle(f"{label(sampler)}: rank plots of θ projections (flat bars ⇔ chains agree)")
    return fig


def fig_centered(idata, metrics, sampler) -> Figure:
    Ln = idata.posterior["Ln"].values
    L0 = float(_attrs(idata)["L0"])
    centered = Ln - L0
    fig = _figure()
    ax = fig.add_subplot()
    for c, color in enumerate(_chain_colors(Ln.shape[0])):
        ax.plot(centered[c], color=color, lw=0.7, alpha=0.8, label=f"chain {c}")
    ax.axhline(0, color="black", lw=0.8, ls="--", label="L_n = L₀")
    good = _good(idata)
    if good.any():
        mean = float(np.mean(centered[good]))
        ax.axhline(mean, color="black", lw=1.6, label=f"mean {mean:.3g} = λ̂ / nβ")
    ax.set_xlabel("kept draw")
    ax.set_ylabel("L_n(w) − L₀  [mean loss per sample]")
    ax.set_title(f"{label(sampler)}: centered loss L_n − L₀ (what λ̂ averages)")
    _robust_ylim(ax, centered, 0.0)
    _chain_legend(ax)
    return fig


def fig_acceptance(idata, metrics, sampler) -> Figure | None:
    acc = D._stat(idata, "acceptance_rate")
    if acc is None:
        return None
    fig = _figure()
    ax = fig.add_subplot()
    bins = np.linspace(0, 1, 41)
    for c, color in enumerate(_chain_colors(acc.shape[0])):
        row = acc[c][np.isfinite(acc[c])]
        if row.size:
            ax.hist(np.clip(row, 0, 1), bins=bins, histtype="step", lw=1.4, color=color,
                    label=f"chain {c}: mean {row.mean():.3f}")
    for (ref, text), style in zip(ACCEPT_REFS, ("--", ":")):
        ax.axvline(ref, color="crimson", ls=style, lw=1.4, label=text)
    mean = metrics.get("acceptance_mean")
    ax.set_xlabel("acceptance probability per draw")
    ax.set_ylabel("number of draws")
    ax.set_title(f"{label(sampler)}: acceptance rate" + (f" (mean {mean:.3f})" if mean is not None else ""))
    ax.set_xlim(0, 1)
    _chain_legend(ax)
    return fig


def fig_energy(idata, metrics, sampler) -> Figure | None:
    energy = D._stat(idata, "energy")
    if energy is None or energy.shape[1] < 3 or not np.isfinite(energy).all():
        return None
    fig = _figure(legend=False)
    ax = fig.add_subplot()
    az.plot_energy(idata, ax=ax, show=False, fill_alpha=(0.6, 0.4),
                   legend=True, bfmi=False, textsize=None)
    bfmi = metrics.get("bfmi_min")
    ax.set_title(f"{label(sampler)}: energy diagnostic" + (f" (min BFMI {bfmi:.2f}; < 0.3 is poor)" if bfmi else ""))
    ax.set_xlabel("energy, centered  [nats]")
    ax.set_ylabel("density")
    from matplotlib.ticker import AutoLocator

    ax.xaxis.set_major_locator(AutoLocator())  # ArviZ hides the energy axis ticks
    ax.legend(loc="best", fontsize="small")
    _tidy(ax)
    return fig


def fig_energy_hist(idata, metrics, sampler) -> Figure | None:
    de = D._stat(idata, D.ENERGY_CHANGE_STAT)
    if de is None or not np.isfinite(de).any():
        return None
    fig = _figure()
    ax = fig.add_subplot()
    finite = de[np.isfinite(de)]
    lo, hi = np.quantile(finite, [0.001, 0.999])
    bins = np.linspace(lo, hi, 61) if hi > lo else 30
    for c, color in enumerate(_chain_colors(de.shape[0])):
        row = de[c][np.isfinite(de[c])]
        if row.size:
            ax.hist(row, bins=bins, histtype="step", lw=1.2, color=color, label=f"chain {c}")
    ax.axvline(0, color="black", lw=0.8, ls="--")
    lines = [f"mean {metrics.get('energy_change_mean', float('nan')):.3g}",
             f"std {metrics.get('energy_change_std', float('nan')):.3g}"]
    if metrics.get("energy_change_var_per_dim") is not None:
        lines.append(f"Var/d {metrics['energy_change_var_per_dim']:.2g}")
    ax.text(0.98, 0.95, "\n".join(lines), transform=ax.transAxes, ha="right", va="top", fontsize="small",
            bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none"})
    ax.set_xlabel("energy change ΔE per draw  [nats]")
    ax.set_ylabel("number of draws")
    ax.set_title(f"{label(sampler)}: energy-change distribution")
    _chain_legend(ax)
    return fig


def fig_optimisation(idata, metrics, sampler) -> Figure | None:
    """Optimisation trace of a variational run (the file's ``optimisation_trace`` group): ELBO, the
    LLC estimate along the way and the gradient norm, whichever the trace holds."""
    from llc.store.artifacts import optimisation_trace

    trace = optimisation_trace(idata)
    if trace is None:
        return None
    step = np.asarray(trace["step"], dtype=np.float64)
    panels = [(k, lab) for k, lab in (("elbo", "ELBO  [nats]"), ("llc", "λ̂ estimate  [dimensionless]"),
                                      ("grad_norm", "gradient norm")) if k in trace]
    series = []
    for key, ylabel in panels:
        values = np.asarray(trace[key], dtype=np.float64)
        values = values.reshape(-1, values.shape[-1]) if values.ndim > 1 else values[None]
        if values.shape[-1] == step.size:
            series.append((key, ylabel, values))
    if not series:
        return None
    fig = _figure(9, 1.4 + 1.9 * len(series), constrained=True)
    axes = np.atleast_1d(fig.subplots(len(series), 1, sharex=True))
    colors = _chain_colors(series[0][2].shape[0])
    for ax, (key, ylabel, values) in zip(axes, series):
        for c, row in enumerate(values):
            ax.plot(step, row, color=colors[c % len(colors)], lw=1.0, label=f"chain {c}" if ax is axes[0] else None)
        if key == "grad_norm" and np.all(values[np.isfinite(values)] > 0):
            ax.set_yscale("log")
        if key == "llc" and metrics.get("llc_mean") is not None:
            ax.axhline(metrics["llc_mean"], color="black", ls="--", lw=1.0, label="final λ̂ (kept draws)")
            ax.legend(loc="best", fontsize="small")
        ax.set_ylabel(ylabel)
    axes[-1].set_xlabel("optimisation step")
    fig.suptitle(f"{label(sampler)}: optimisation trace")
    return fig


# --------------------------------------------------------------------------- registry

PlotFn = Callable[..., "Figure | None"]
# plot key -> [(file suffix, function)]
PER_SAMPLER: dict[str, list[tuple[str, PlotFn]]] = {
    "running_llc": [("llc_running", fig_running_llc)],
    "trace": [("L_trace", fig_trace)],
    "autocorr": [("L_acf", fig_autocorr)],
    "ess_evolution": [("L_ess", fig_ess_evolution)],
    "ess_quantile": [("L_ess_quantile", fig_ess_quantile)],
    "rhat": [("L_rhat", fig_rhat)],
    "rank": [("llc_rank", fig_rank)],
    "theta": [("theta_trace", fig_theta_trace), ("theta_rank", fig_theta_rank)],
    "centered": [("Ln_centered", fig_centered)],
    "acceptance": [("acceptance", fig_acceptance)],
    "energy": [("energy", fig_energy), ("energy_hist", fig_energy_hist)],
    "optimisation": [("opt_trace", fig_optimisation)],
}


def parse_plots(plots: str | list[str] | None) -> tuple[str, ...]:
    """``None``/"all" -> every plot key; else a validated tuple (ValueError names the bad key)."""
    if plots is None:
        return PLOT_KEYS
    items = [p.strip() for p in (plots.split(",") if isinstance(plots, str) else plots) if p.strip()]
    if items == ["all"]:
        return PLOT_KEYS
    bad = [p for p in items if p not in PLOT_KEYS]
    if bad:
        raise ValueError(f"--plots: unknown plot {bad[0]!r}; choose from {', '.join(PLOT_KEYS)} or all")
    return tuple(items)


def fig_combined(idatas: dict[str, Any], metrics: dict[str, dict[str, Any]]) -> Figure | None:
    """Pooled running lambda-hat of every sampler on one axis, against the fraction of kept draws
    (samplers keep different numbers of draws), with each final mean +- 2 SE at the right edge."""
    if not idatas:
        return None
    fig = _figure(9, 5, legend=False)
    ax = fig.add_subplot()
    exact = None
    finals = []
    for i, (name, idata) in enumerate(idatas.items()):
        good = _good(idata)
        if not good.any():
            continue
        llc = _llc(idata)[good]
        _, pooled = D.running_llc(llc)
        frac = np.arange(1, llc.shape[1] + 1) / llc.shape[1] * 100
        m = metrics.get(name, {})
        mean, se = m.get("llc_mean"), m.get("llc_se")
        text = f"{label(name)}: λ̂ = {mean:.3f} ± {se:.3f}" if mean is not None and se is not None else label(name)
        line, = ax.plot(frac, pooled, lw=1.8, label=text)
        if mean is not None and se is not None:
            x_end = 101.5 + 1.5 * i
            ax.errorbar([x_end], [mean], yerr=[2 * se], color=line.get_color(), capsize=3, marker="o", ms=4)
            finals.append((mean, se))
        exact = exact if exact is not None else _analytic(idata)
    if exact is not None:
        ax.axhline(exact, color="crimson", ls="--", lw=1.2, label=f"analytic λ = {exact:.3f}")
    ax.set_xlabel("progress through kept draws  [% of each sampler's draws]; bars: final mean ± 2·SE")
    ax.set_ylabel("pooled running λ̂  [dimensionless]")
    ax.set_title("Running LLC estimate, all samplers")
    vals = [v for mean, se in finals for v in (mean - 3 * se, mean + 3 * se)]
    if exact is not None:
        vals.append(exact)
    if vals:
        lo, hi = min(vals), max(vals)
        span = max(hi - lo, 1e-3 * max(abs(hi), 1.0))
        # Frame the final estimates generously; the first draws of a running mean swing far wider.
        ax.set_ylim(lo - 1.5 * span, hi + 1.5 * span)
    ax.set_xlim(0, 103 + 1.5 * len(idatas))
    ax.legend(loc="best", fontsize="small")
    return fig


def save_figure(fig: Figure, path: Path) -> Path:
    """Write the PNG under a temporary name and rename it into place: a reader (or a kill) never
    meets half a file. zlib level 3: a quarter less encoding time than the default 6 for ~10 %
    larger files (noisy traces compress poorly either way)."""
    from llc.store.cache import atomic_file  # the umask's permissions, owner-named temp file

    path = Path(path)
    with atomic_file(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=DPI, pil_kwargs={"compress_level": 3})
    return path


def planned_files(idatas: dict[str, Any], plots: tuple[str, ...]) -> list[str]:
    """File names that ``make_figures`` may write (an upper bound: some may be skipped for lack of data)."""
    names = [f"{s}_{suffix}.png" for s in idatas for key in plots if key in PER_SAMPLER
             for suffix, _ in PER_SAMPLER[key]]
    if "combined" in plots and idatas:
        names.append(COMBINED_FILE)
    return names


def make_figures(idatas: dict[str, Any], metrics: dict[str, dict[str, Any]], out_dir: Path,
                 plots: tuple[str, ...] | None = None, *, overwrite: bool = True,
                 log: Callable[[str], None] = lambda msg: None) -> list[Path]:
    """Draw the requested figures of every sampler into ``out_dir``; returns the files written."""
    plots = parse_plots(plots) if not isinstance(plots, tuple) else plots
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def emit(fig: Figure | None, name: str) -> None:
        path = out_dir / name
        if fig is None:
            return
        if path.exists() and not overwrite:
            log(f"kept existing {path} (pass --overwrite to replace it)")
            return
        written.append(save_figure(fig, path))

    for sampler, idata in idatas.items():
        m = metrics.get(sampler, {})
        for key in plots:
            for suffix, fn in PER_SAMPLER.get(key, []):
                try:
                    fig = fn(idata, m, sampler)
                except Exception as exc:  # one broken figure must not lose the run's other outputs
                    log(f"{sampler}: figure {suffix} failed ({type(exc).__name__}: {exc}); skipped")
                    continue
                emit(fig, f"{sampler}_{suffix}.png")
    if "combined" in plots:
        emit(fig_combined(idatas, metrics), COMBINED_FILE)
    return written
