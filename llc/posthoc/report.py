"""``llc report``: one self-contained, offline HTML page of a run, a sweep, a calibration, a trajectory
or an artifacts root (no JAX).

A page is a single file: Plotly's JavaScript inlined once, every figure's data inline, a little
JavaScript of our own only for what Plotly does not do (sorting and filtering a table, choosing
the runs to overlay). Nothing is fetched from the network, so a page opens from a cluster's or a
Modal volume's artifacts folder copied to any laptop.

Each page kind is one function ``(path, page_dir, value_budget) -> Page`` (``PAGE_KINDS``); ``detect`` picks the
kind of a path and ``write_report`` renders and writes the page atomically. Kinds:

  run     a run directory (``<sampler>.nc``, metrics.json, manifest.json, config.json)
          -> ``<run>/report.html``: λ̂ table (SE, ESS, R̂, flags, work), combined running λ̂,
          per sampler running λ̂ / L_n trace / rank / autocorrelation with chain toggles
          (click a chain in the legend), acceptance and energy where the sampler has them,
          tuned parameters, config and provenance.
  sweep   a sweep results CSV -> ``<csv>.html``: sortable, filterable table of every row,
          λ̂ and efficiency against any column, links to each run's page (or its folder).
  calibration  ``<root>/calibrations/<id>`` -> ``report.html`` (``report_calibration``): the
          recommendation and why, λ̂ ± 2 SE against the step size per γ, diagnostics, the points.
  trajectory   ``<root>/trajectories/<id>`` -> ``report.html`` (``report_trajectory``): λ̂ with
          accuracy, loss and curvature against the training step; a folder of trajectories, or an
          overlay summary listing members, overlays them.
  index   an artifacts root -> ``<root>/index.html``: every run, sweep, calibration and trajectory
          found, newest first, with a selection of runs whose pooled running λ̂ are overlaid.

Plotly's library alone is ~4.8 MB, so a page's data is kept small: long traces are shown at
every k-th draw within a fixed budget of plotted values per page (the page says so); every
statistic is computed on all draws.
"""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from llc import registry
from llc.analysis import diagnostics as D
from llc.analysis.health import RHAT_MAX
from llc.posthoc.report_calibration import INDEX_HEADERS as CAL_INDEX_HEADERS
from llc.posthoc.report_calibration import calibration_page, is_calibration
from llc.posthoc.report_calibration import index_rows as cal_index_rows
from llc.posthoc.report_html import (CHAIN_COLORS, INDEX_FILE, MAX_LAGS, MAX_PAGE_BYTES, MIN_TRACE_POINTS,
                                     OK_STATUS, PAGE_FILE, RUNNING_POINTS, VALUE_BUDGET, Page, ReportError,
                                     base_layout, cell, esc, flags_cell, flatten, fmt, kv_table, legend_only, num,
                                     plot_html, read_json_file, rel_link, section, stride_for, table, thin)
from llc.posthoc.report_trajectory import INDEX_HEADERS as TRAJ_INDEX_HEADERS
from llc.posthoc.report_trajectory import index_rows as traj_index_rows
from llc.posthoc.report_trajectory import is_overlay, is_trajectory, trajectory_page
from llc.store.cache import run_dir_problem
from llc.store.jsonfiles import ArtifactError
from llc.store.layout import TRAJ_DIR


def _attrs(idata: Any) -> dict[str, Any]:
    from llc.store.artifacts import nc_attrs

    return nc_attrs(idata)


def llc_of(idata: Any) -> tuple[np.ndarray, np.ndarray]:
    """(λ̂ draws (chain, draw), mask of chains that did not diverge)."""
    post = idata.posterior
    a = _attrs(idata)
    llc = D.llc_draws(post["Ln"].values, float(a["L0"]), float(a["nbeta"]))
    arrays = [post["Ln"].values] + ([post["theta_proj"].values] if "theta_proj" in post else [])
    return llc, ~D.diverged_chains(*arrays)


def pooled_running(idata: Any) -> np.ndarray | None:
    llc, good = llc_of(idata)
    if not good.any():
        return None
    return D.running_llc(llc[good])[1]


def rank_counts(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Rank histograms per chain (counts / uniform expectation), bin centres, and 2σ of a uniform bin."""
    from scipy.stats import rankdata

    chains, draws = values.shape
    ranks = rankdata(values.reshape(-1), method="average").reshape(chains, draws)
    bins = int(np.clip(draws // 20, 5, 20))
    edges = np.linspace(0.5, chains * draws + 0.5, bins + 1)
    counts = np.stack([np.histogram(r, edges)[0] for r in ranks]).astype(np.float64)
    expected = draws / bins
    sigma = math.sqrt(draws * (1 / bins) * (1 - 1 / bins)) / expected
    return counts / expected, 0.5 * (edges[1:] + edges[:-1]), 2 * sigma


def _stat(idata: Any, name: str) -> np.ndarray | None:
    return D._stat(idata, name)




# --------------------------------------------------------------------------- run page

def _estimate_rows(doc: dict[str, Any], analytic: float | None) -> tuple[list[str], list[list[Any]]]:
    headers = ["sampler", "λ̂ ± SE"] + (["(λ̂ − λ) / SE"] if analytic is not None else []) + \
        ["ESS bulk", "ESS tail", "R̂", "MCSE", "chains × draws", "acceptance", "diverged", "flags"]
    rows = []
    for name, m in (doc.get("samplers") or {}).items():
        mean, se = num(m.get("llc_mean")), num(m.get("llc_se"))
        row: list[Any] = [cell(registry.label(name), sort=registry.order_key(name)[0]),
                          cell(f"{fmt(mean, '.4g')} ± {fmt(se, '.2g')}", sort=mean)]
        if analytic is not None:
            z = (mean - analytic) / se if mean is not None and se else None
            row.append(cell(fmt(z, "+.1f"), sort=z, cls="bad" if z is not None and abs(z) > 3 else ""))
        chains = m.get("chains") or 0
        ess = num(m.get("ess_bulk"))
        rhat = num(m.get("rhat"))
        div = int(m.get("diverged_chains") or 0)
        div_text = f"{div} ch" + (f" / {m['divergent_transitions']} tr" if m.get("divergent_transitions") is not None else "")
        row += [cell(fmt(ess, ".0f"), sort=ess, cls="warn" if ess is not None and chains and ess < 100 * chains else ""),
                cell(fmt(m.get("ess_tail"), ".0f"), sort=num(m.get("ess_tail"))),
                cell(fmt(rhat, ".3f"), sort=rhat,
                     cls="bad" if rhat is not None and rhat > 1.1 else "warn" if rhat is not None and rhat > 1.01 else ""),
                cell(fmt(m.get("mcse"), ".2g"), sort=num(m.get("mcse"))),
                cell(f"{chains} × {m.get('draws', '—')}"),
                cell(fmt(m.get("acceptance_mean"), ".3f"), sort=num(m.get("acceptance_mean"))),
                cell(div_text, sort=div, cls="bad" if div else ""),
                flags_cell(m.get("flags") or [], '<span class="ok">none</span>')]
        rows.append(row)
    return headers, rows


def _work_rows(doc: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    headers = ["sampler", "wall s", "sampling s", "compile s", "warm-up s", "gradient evals", "FDE",
               "ESS / s", "ESS / FDE", "SE² × s", f"s to SE = {doc.get('target_se', 1)}"]
    rows = []
    for name, m in (doc.get("samplers") or {}).items():
        rows.append([registry.label(name)] + [
            cell(fmt(m.get(k), spec), sort=num(m.get(k))) for k, spec in (
                ("wall_s", ".3g"), ("sampling_s", ".3g"), ("compile_s", ".3g"), ("warmup_s", ".3g"),
                ("n_grad_evals", ".4g"), ("fde", ".4g"), ("ess_per_sec", ".3g"), ("ess_per_fde", ".3g"),
                ("wnv_time", ".3g"), ("time_to_se1", ".3g"))])
    return headers, rows


class _Budget:
    """Display points per line so that a page's plotted values stay within VALUE_BUDGET: 30 % for
    the running means (smooth curves), 70 % for the L_n traces, warm-up at a quarter density."""

    def __init__(self, idatas: dict[str, Any], values: int = VALUE_BUDGET):
        run_lines = trace_lines = 0.0
        for idata in idatas.values():
            chains = idata.posterior.sizes["chain"]
            run_lines += chains + 2  # per chain, pooled, and the pooled curve of the combined figure
            trace_lines += chains * (1.25 if "warmup_posterior" in idata.groups() else 1.0)
        self.running_points = int(np.clip(0.3 * values / max(run_lines, 1), 30, RUNNING_POINTS))
        self.trace_points = int(max(MIN_TRACE_POINTS, 0.7 * values / max(trace_lines, 1)))
        self.warm_points = max(30, self.trace_points // 4)
        self.shown: list[tuple[str, str]] = []

    def note(self, sampler: str, what: str, stride: int, draws: int) -> None:
        if stride > 1:
            self.shown.append((sampler, f"{what}: 1 in {stride} of {draws} draws"))

    def of(self, sampler: str) -> str:
        return "; ".join(text for s, text in self.shown if s == sampler)


def _running_traces(idata: Any, metrics: dict[str, Any], budget: _Budget, sampler: str, colors: list[str],
                    row: int, col: int) -> list[tuple[Any, int, int]]:
    import plotly.graph_objects as go

    llc, good = llc_of(idata)
    per_chain, _ = D.running_llc(llc)
    draws = llc.shape[1]
    stride = stride_for(draws, budget.running_points)
    budget.note(sampler, "running λ̂", stride, draws)
    shown = thin(per_chain, stride)
    out = []
    for c in range(llc.shape[0]):
        out.append((go.Scatter(x0=1, dx=stride, y=shown[c], mode="lines", name=f"chain {c}" + ("" if good[c] else " (diverged)"),
                               legendgroup=f"c{c}", line={"color": colors[c % len(colors)], "width": 1.2,
                                                          "dash": "solid" if good[c] else "dot"},
                               opacity=0.75),
                    row, col))
    if good.any():
        pooled = thin(D.running_llc(llc[good])[1], stride)
        out.append((go.Scatter(x0=1, dx=stride, y=pooled, mode="lines", name="pooled", legendgroup="pooled",
                               line={"color": "black", "width": 2.4}), row, col))
    return out


def _trace_traces(idata: Any, budget: _Budget, sampler: str, colors: list[str], row: int, col: int):
    import plotly.graph_objects as go

    Ln = idata.posterior["Ln"].values
    draws = Ln.shape[1]
    stride = stride_for(draws, budget.trace_points)
    budget.note(sampler, "L_n trace", stride, draws)
    shown = thin(Ln, stride)
    out = []
    warm = None
    if "warmup_posterior" in idata.groups() and "Ln" in idata.warmup_posterior:
        warm = idata.warmup_posterior["Ln"].values
        warm = warm if warm.size else None
    for c in range(Ln.shape[0]):
        if warm is not None:
            wstride = stride_for(warm.shape[1], budget.warm_points)
            out.append((go.Scatter(x0=-warm.shape[1], dx=wstride, y=thin(warm[c], wstride), mode="lines",
                                   name="warm-up", legendgroup=f"c{c}", showlegend=False,
                                   line={"color": "#b0b0b0", "width": 0.8}),
                        row, col))
        out.append((go.Scatter(x0=0, dx=stride, y=shown[c], mode="lines", name=f"chain {c}", legendgroup=f"c{c}",
                               showlegend=False, line={"color": colors[c % len(colors)], "width": 0.9}, opacity=0.8), row, col))
    return out


def _rank_traces(idata: Any, colors: list[str], row: int, col: int):
    import plotly.graph_objects as go

    llc, good = llc_of(idata)
    if good.sum() < 1 or llc.shape[1] < 8:
        return [], None
    counts, centres, band = rank_counts(llc[good])
    out = []
    for k, c in enumerate(np.flatnonzero(good)):
        # Bars grow from the uniform expectation (base 1): a chain's excess and deficit read directly.
        out.append((go.Bar(x=centres.astype(np.float32), y=(counts[k] - 1).astype(np.float32), base=1, name=f"chain {c}",
                           legendgroup=f"c{c}", showlegend=False, marker={"color": colors[c % len(colors)]},
                           opacity=0.85),
                    row, col))
    return out, band


def _acf_traces(idata: Any, colors: list[str], row: int, col: int):
    import plotly.graph_objects as go

    Ln = idata.posterior["Ln"].values
    _, good = llc_of(idata)
    if not good.any() or Ln.shape[1] < 4:
        return []
    acf = D.autocorrelation(Ln[good], min(MAX_LAGS, Ln.shape[1] - 1))
    return [(go.Scatter(y=row_.astype(np.float32), mode="lines", name=f"chain {c}", legendgroup=f"c{c}",
                        showlegend=False, line={"color": colors[c % len(colors)], "width": 1.2}), row, col)
            for row_, c in zip(acf, np.flatnonzero(good))]




def sampler_figure(name: str, idata: Any, metrics: dict[str, Any], budget: _Budget, analytic: float | None):
    """Running λ̂, L_n trace, rank histograms and autocorrelation of one sampler; one legend entry
    per chain toggles that chain in all four panels."""
    from plotly.subplots import make_subplots

    chains = idata.posterior.sizes["chain"]
    colors = [CHAIN_COLORS[c % len(CHAIN_COLORS)] for c in range(chains)]
    fig = make_subplots(rows=2, cols=2, horizontal_spacing=0.08, vertical_spacing=0.16,
                        subplot_titles=("running λ̂ = nβ · mean(L_n − L₀), per chain and pooled",
                                        "L_n trace (grey: warm-up, negative steps)",
                                        "rank histograms of λ̂ draws (flat ⇔ chains agree)",
                                        "autocorrelation of L_n"))
    for trace, r, c in _running_traces(idata, metrics, budget, name, colors, 1, 1):
        fig.add_trace(trace, row=r, col=c)
    mean, se = num(metrics.get("llc_mean")), num(metrics.get("llc_se"))
    if mean is not None and se is not None:
        fig.add_hrect(y0=mean - 2 * se, y1=mean + 2 * se, fillcolor="grey", opacity=0.2, line_width=0, row=1, col=1)
        fig.add_trace(legend_only(f"λ̂ ± 2 SE = {mean:.4g} ± {2 * se:.2g}", {"color": "rgba(128,128,128,0.45)", "width": 8}),
                      row=1, col=1)
    if analytic is not None:
        fig.add_hline(y=analytic, line={"color": "crimson", "dash": "dash", "width": 1.2}, row=1, col=1)
        fig.add_trace(legend_only(f"analytic λ = {analytic:.4g}", {"color": "crimson", "dash": "dash"}), row=1, col=1)
    _zoom_running(fig, idata, mean, se, analytic)
    for trace, r, c in _trace_traces(idata, budget, name, colors, 1, 2):
        fig.add_trace(trace, row=r, col=c)
    L0 = num(_attrs(idata).get("L0"))
    if L0 is not None:
        fig.add_hline(y=L0, line={"color": "crimson", "dash": "dash", "width": 1}, row=1, col=2,
                      annotation_text="L₀", annotation_position="bottom left")
    ranks, band = _rank_traces(idata, colors, 2, 1)
    for trace, r, c in ranks:
        fig.add_trace(trace, row=r, col=c)
    if band is not None:
        fig.add_hrect(y0=1 - band, y1=1 + band, fillcolor="grey", opacity=0.18, line_width=0, row=2, col=1)
        fig.add_hline(y=1, line={"color": "black", "dash": "dash", "width": 1}, row=2, col=1)
        heights = [1 + float(np.max(t.y)) for t, _, _ in ranks] + [1 + float(np.min(t.y)) for t, _, _ in ranks]
        fig.update_yaxes(range=[max(0.0, min(1 - 1.6 * band, *heights) - 0.05), max(1 + 1.6 * band, *heights) + 0.05],
                         row=2, col=1)
    for trace, r, c in _acf_traces(idata, colors, 2, 2):
        fig.add_trace(trace, row=r, col=c)
    draws = idata.posterior.sizes["draw"]
    fig.add_hrect(y0=-2 / math.sqrt(draws), y1=2 / math.sqrt(draws), fillcolor="grey", opacity=0.18, line_width=0,
                  row=2, col=2)
    fig.update_xaxes(title_text="kept draw", row=1, col=1)
    fig.update_xaxes(title_text="draw", row=1, col=2)
    fig.update_xaxes(title_text="rank among all chains' draws", row=2, col=1)
    fig.update_xaxes(title_text="lag (draws)", row=2, col=2)
    fig.update_yaxes(title_text="λ̂", row=1, col=1)
    fig.update_yaxes(title_text="L_n(w)", row=1, col=2)
    fig.update_yaxes(title_text="count / uniform", row=2, col=1)
    fig.update_yaxes(title_text="ρ", row=2, col=2)
    fig.update_layout(**base_layout(height=720, barmode="group", bargap=0.15,
                                title={"text": f"{registry.label(name)}: λ̂ = {fmt(mean, '.4g')} ± {fmt(se, '.2g')}",
                                       "x": 0.01},
                                legend={"title": {"text": "click: hide / show"}, "groupclick": "togglegroup"}))
    fig.update_annotations(font_size=12)
    return fig


def _zoom_running(fig: Any, idata: Any, mean: float | None, se: float | None, analytic: float | None) -> None:
    """y-range from the last 90 % of the running means: the first draws swing far wider."""
    llc, good = llc_of(idata)
    per_chain = D.running_llc(llc[good] if good.any() else llc)[0]
    tail = per_chain[:, per_chain.shape[1] // 10:]
    vals: list[float] = []
    if np.isfinite(tail).any():
        vals = [float(np.nanmin(tail[np.isfinite(tail)])), float(np.nanmax(tail[np.isfinite(tail)]))]
    vals += [v for v in (analytic,) if v is not None]
    if mean is not None and se is not None:
        vals += [mean - 2 * se, mean + 2 * se]
    if vals:
        lo, hi = min(vals), max(vals)
        pad = 0.12 * (hi - lo) if hi > lo else max(abs(hi), 1.0) * 0.1
        fig.update_yaxes(range=[lo - pad, hi + pad], row=1, col=1)


def diagnostics_figure(name: str, idata: Any, metrics: dict[str, Any]):
    """The sampler-specific panels its file has data for: acceptance, HMC energy, MCLMC energy
    change, VI optimisation trace. None if there are none."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    panels: list[tuple[str, list[Any], str, str]] = []
    chains = idata.posterior.sizes["chain"]
    colors = [CHAIN_COLORS[c % len(CHAIN_COLORS)] for c in range(chains)]
    acc = _stat(idata, "acceptance_rate")
    if acc is not None:
        edges = np.linspace(0, 1, 41)
        traces = []
        for c in range(acc.shape[0]):
            row = acc[c][np.isfinite(acc[c])]
            counts, _ = np.histogram(np.clip(row, 0, 1), edges)
            traces.append(go.Scatter(x=edges[:-1].astype(np.float32) + 0.0125, y=counts.astype(np.float32),
                                     mode="lines", line={"shape": "hvh", "color": colors[c], "width": 1.4},
                                     name=f"chain {c}", legendgroup=f"c{c}",
                                     hovertemplate=f"chain {c}: mean {row.mean() if row.size else float('nan'):.3f}"
                                                   "<br>acceptance %{x:.3f}<br>draws %{y}<extra></extra>"))
        mean = metrics.get("acceptance_mean")
        panels.append((f"acceptance rate (mean {fmt(mean, '.3f')}; 0.651 optimal HMC, 0.8 adaptation target)",
                       traces, "acceptance probability", "draws"))
    energy = _stat(idata, "energy")
    if energy is not None and energy.shape[1] >= 3 and np.isfinite(energy).all():
        centred = energy - energy.mean(axis=1, keepdims=True)
        transition = np.diff(energy, axis=1)
        lo, hi = np.quantile(np.concatenate([centred.ravel(), transition.ravel()]), [0.001, 0.999])
        edges = np.linspace(lo, hi, 51)
        traces = []
        for label_, data, color in (("marginal energy (centred)", centred, "#1f77b4"),
                                    ("energy transition ΔE", transition, "#d62728")):
            counts, _ = np.histogram(data.ravel(), edges, density=True)
            traces.append(go.Scatter(x=(0.5 * (edges[1:] + edges[:-1])).astype(np.float32), y=counts.astype(np.float32),
                                     mode="lines", fill="tozeroy", line={"shape": "hvh", "color": color}, name=label_,
                                     opacity=0.6))
        bfmi = metrics.get("bfmi_min")
        panels.append((f"energy: ΔE narrower than the marginal ⇒ slow exploration (min BFMI {fmt(bfmi, '.2f')}; < 0.3 poor)",
                       traces, "energy (nats)", "density"))
    de = _stat(idata, D.ENERGY_CHANGE_STAT)
    if de is not None and np.isfinite(de).any():
        finite = de[np.isfinite(de)]
        lo, hi = np.quantile(finite, [0.001, 0.999])
        edges = np.linspace(lo, hi, 51) if hi > lo else np.linspace(lo - 1, hi + 1, 51)
        traces = []
        for c in range(de.shape[0]):
            counts, _ = np.histogram(de[c][np.isfinite(de[c])], edges)
            traces.append(go.Scatter(x=(0.5 * (edges[1:] + edges[:-1])).astype(np.float32), y=counts.astype(np.float32),
                                     mode="lines", line={"shape": "hvh", "color": colors[c], "width": 1.3},
                                     name=f"chain {c}", legendgroup=f"c{c}"))
        panels.append((f"energy change per draw (mean {fmt(metrics.get('energy_change_mean'), '.3g')}, "
                       f"std {fmt(metrics.get('energy_change_std'), '.3g')})", traces, "ΔE (nats)", "draws"))
    trace = _attrs(idata).get("info_trace")
    if isinstance(trace, dict) and "step" in trace:
        step = np.asarray(trace["step"], dtype=np.float64)
        for key, ylabel in (("elbo", "ELBO"), ("llc", "λ̂ estimate")):
            if key not in trace:
                continue
            values = np.asarray(trace[key], dtype=np.float64)
            values = values.reshape(-1, values.shape[-1]) if values.ndim > 1 else values[None]
            if values.shape[-1] != step.size:
                continue
            traces = [go.Scatter(x=step.astype(np.float32), y=row.astype(np.float32), mode="lines",
                                 line={"color": colors[c % len(colors)]}, name=f"chain {c}", legendgroup=f"c{c}")
                      for c, row in enumerate(values)]
            panels.append((f"optimisation: {ylabel}", traces, "optimisation step", ylabel))
    if not panels:
        return None
    cols = min(len(panels), 3)
    rows = math.ceil(len(panels) / cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[p[0] for p in panels], horizontal_spacing=0.07,
                        vertical_spacing=0.2)
    seen: set[str] = set()
    for i, (_, traces, xlabel, ylabel) in enumerate(panels):
        r, c = i // cols + 1, i % cols + 1
        for t in traces:
            t.showlegend = t.name not in seen
            seen.add(t.name)
            fig.add_trace(t, row=r, col=c)
        fig.update_xaxes(title_text=xlabel, row=r, col=c)
        fig.update_yaxes(title_text=ylabel, row=r, col=c)
    fig.update_layout(**base_layout(height=360 * rows, title={"text": f"{registry.label(name)}: sampler diagnostics",
                                                            "x": 0.01}))
    fig.update_annotations(font_size=11)
    return fig


def combined_figure(idatas: dict[str, Any], metrics: dict[str, Any], analytic: float | None,
                    points: int = RUNNING_POINTS):
    """Pooled running λ̂ of every sampler against the fraction of its kept draws, final ± 2 SE."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for name, idata in idatas.items():
        pooled = pooled_running(idata)
        if pooled is None:
            continue
        stride = stride_for(pooled.size, points)
        m = metrics.get(name, {})
        mean, se = num(m.get("llc_mean")), num(m.get("llc_se"))
        color = registry.color(name)
        text = f"{registry.label(name)}: {fmt(mean, '.4g')} ± {fmt(se, '.2g')}"
        fig.add_trace(go.Scatter(x0=100 / pooled.size, dx=100 * stride / pooled.size, y=thin(pooled, stride),
                                 mode="lines", name=text, legendgroup=name, line={"color": color, "width": 2},
                                 hovertemplate=f"{registry.label(name)}<br>%{{x:.1f}} % of draws<br>λ̂ %{{y:.4g}}<extra></extra>"))
        if mean is not None and se is not None:
            fig.add_trace(go.Scatter(x=[101.0 + 1.2 * len(fig.data) / 2], y=[mean], error_y={"type": "data", "array": [2 * se], "color": color},
                                     mode="markers", marker={"color": color, "size": 8}, legendgroup=name,
                                     showlegend=False, hovertemplate=f"{text} (bar: 2 SE)<extra></extra>"))
    if analytic is not None:
        fig.add_hline(y=analytic, line={"color": "crimson", "dash": "dash"})
        fig.add_trace(legend_only(f"analytic λ = {analytic:.4g}", {"color": "crimson", "dash": "dash"}))
    finals = [(num(m.get("llc_mean")), num(m.get("llc_se"))) for m in metrics.values()]
    vals = [v for mean, se in finals if mean is not None and se is not None for v in (mean - 3 * se, mean + 3 * se)]
    if analytic is not None:
        vals.append(analytic)
    if vals:
        lo, hi = min(vals), max(vals)
        span = max(hi - lo, 1e-3 * max(abs(hi), 1.0))
        fig.update_yaxes(range=[lo - 1.5 * span, hi + 1.5 * span])
    fig.update_layout(**base_layout(height=420, margin={"l": 60, "r": 20, "t": 20, "b": 50},
                                xaxis={"title": {"text": "progress through kept draws (% of each sampler's draws)"}},
                                yaxis={"title": {"text": "pooled running λ̂"}}))
    return fig


def _info_table(idatas: dict[str, Any]) -> str:
    from llc.store.artifacts import sampler_info

    rows = []
    for name, idata in idatas.items():
        for key, value in sampler_info(idata).items():  # scalars and per-chain values (the trace is not info)
            shown = value if not isinstance(value, (list, dict)) else json.dumps(value)[:160]
            rows.append([registry.label(name), key, shown])
    if not rows:
        return ""
    return table(["sampler", "tuned parameter / info", "value"], rows, cls="compact")




def run_page(run_dir: Path, page_dir: Path | None = None, value_budget: int = VALUE_BUDGET) -> Page:
    """The page of one run directory."""
    from llc.posthoc.analyze import METRICS_FILE, load_run, run_metrics

    run_dir = Path(run_dir)
    if problem := run_dir_problem(run_dir):  # refused as `llc analyze` refuses it
        raise ReportError(problem)
    try:
        idatas = load_run(run_dir)
    except ArtifactError as exc:
        raise ReportError(str(exc)) from None
    doc = read_json_file(run_dir / METRICS_FILE) or run_metrics(idatas)
    metrics = {name: (doc.get("samplers") or {}).get(name, {}) for name in idatas}
    manifest = read_json_file(run_dir / "manifest.json")
    config = read_json_file(run_dir / "config.json")
    t, p = doc.get("target") or {}, doc.get("posterior") or {}
    analytic = num((doc.get("analytic") or {}).get("value"))
    rid = doc.get("run_id") or manifest.get("run_id") or run_dir.name
    page = Page("run", f"llc run {rid}")
    facts = [f"target <b>{esc(t.get('kind') or '?')}</b> {esc(t.get('id') or '')}",
             f"d = {esc(t.get('d'))}", f"n = {esc(t.get('n'))}", f"nβ = {fmt(p.get('nbeta'), '.4g')}",
             f"γ = {fmt(p.get('gamma'), '.4g')}", f"L₀ = {fmt(t.get('L0'), '.6g')}"]
    if analytic is not None:
        facts.append(f"analytic λ = <b>{analytic:.4g}</b> ({esc((doc.get('analytic') or {}).get('formula') or '')})")
    if manifest.get("created"):
        facts.append(f"created {esc(manifest['created'])}")
    page.subtitle = " · ".join(facts)

    headers, rows = _estimate_rows(doc, analytic)
    page.sections.append(section("LLC estimates", table(headers, rows, cls="sortable estimates", table_id="estimates"),
                                 anchor="estimates",
                                 note="R̂ above 1.01 and ESS below 100 per chain are marked; flags come from the "
                                      "run's failure checks (hover a flag for its message)."))
    headers, rows = _work_rows(doc)
    page.sections.append(section("Work and efficiency", table(headers, rows, cls="sortable"), anchor="work",
                                 note="FDE: full-data-equivalent gradient evaluations. SE² × s: work-normalised "
                                      "variance (lower is better)."))
    budget = _Budget(idatas, value_budget)
    plots = [plot_html(combined_figure(idatas, metrics, analytic, budget.running_points), "combined",
                       "plot combined-plot")]
    page.sections.append(section("Running λ̂, all samplers", "".join(plots), anchor="combined",
                                 note="Pooled running mean of each sampler's λ̂ draws; the bars on the right are "
                                      "the final estimates ± 2 SE."))
    for name, idata in idatas.items():
        body = plot_html(sampler_figure(name, idata, metrics[name], budget, analytic), f"sampler-{name}",
                         "plot sampler-plot")
        diag = diagnostics_figure(name, idata, metrics[name])
        if diag is not None:
            body += plot_html(diag, f"diagnostics-{name}", "plot diagnostics-plot")
        shown = budget.of(name)
        page.sections.append(section(f"{registry.label(name)}", body, anchor=f"s-{name}",
                                     note="Click a chain in the legend to hide or show it in every panel; "
                                          "drag to zoom, double-click to reset." +
                                          (f" Shown for display: {esc(shown)} (statistics use every draw)."
                                           if shown else "")))
    info = _info_table(idatas)
    if info:
        page.sections.append(section("Tuned parameters and sampler info", info, anchor="info"))
    prov = [("run_id", rid), ("created", manifest.get("created")), ("host", manifest.get("host")),
            ("backend (JAX)", manifest.get("jax_backend")), ("devices", manifest.get("devices")),
            ("code fingerprint", manifest.get("code_fingerprint")),
            ("target id", manifest.get("target_id") or t.get("id")),
            ("total seconds", fmt(manifest.get("total_seconds"), ".3g"))]
    prov += [(f"version: {k}", v) for k, v in (manifest.get("versions") or {}).items()]
    body = '<div class="two-col">' + kv_table([(k, v) for k, v in prov if v not in (None, "—")])
    body += kv_table(flatten(config)) + "</div>" if config else "</div>"
    page.sections.append(section("Provenance and configuration", f"<details open><summary>show / hide</summary>{body}</details>",
                                 anchor="provenance"))
    if budget.shown:
        page.notes.append("Traces downsampled for display (statistics use every draw): " +
                          "; ".join(f"{registry.label(s)} {text}" for s, text in budget.shown) + ".")
    return page


# --------------------------------------------------------------------------- sweep page

SWEEP_Y = (("llc_mean", "λ̂ (± 2 SE)"), ("ess_per_sec", "ESS / second"), ("ess_per_fde", "ESS / FDE"),
           ("wnv_time", "SE² × seconds"), ("wall_s", "wall seconds"), ("rhat", "R̂"), ("ess", "ESS"))


def _read_csv(csv_path: Path):
    import pandas as pd

    try:
        df = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.EmptyDataError, pd.errors.ParserError) as exc:
        raise ReportError(f"{csv_path}: not a sweep results CSV ({exc})") from None
    missing = {"run_id", "sampler"} - set(df.columns)
    if missing:
        raise ReportError(f"{csv_path}: not a sweep results CSV (no {', '.join(sorted(missing))} column)")
    return df


# Text columns, identifiers and the estimate itself: never an x axis (step_size_rule is a sentence per row).
NOT_AXES = {"run_id", "status", "error", "backend_info", "artifacts", "sampler", "llc_mean", "llc_se", "flags",
            "step_size_rule"}


def _axis_columns(df) -> tuple[list[str], list[str]]:
    """(config columns, other columns) that vary across rows. The sweep writes the config and run
    constants before ``sampler``; the seed goes last of those (it is rarely the axis of interest)."""
    cols = list(df.columns)
    cut = cols.index("sampler") if "sampler" in cols else len(cols)
    varying = [c for c in cols if c not in NOT_AXES and df[c].nunique() > 1]
    config = sorted((c for c in varying if cols.index(c) < cut), key=lambda c: (c == "seed", cols.index(c)))
    return config, [c for c in varying if cols.index(c) >= cut]


def _column_values(df, col: str) -> tuple[list[Any], bool]:
    import pandas as pd

    numeric = pd.to_numeric(df[col], errors="coerce")
    if numeric.notna().sum() >= max(1, int(0.8 * (df[col] != "").sum())):
        return [None if pd.isna(v) else float(v) for v in numeric], True
    return [str(v) for v in df[col]], False


def sweep_figure(df) -> Any:
    """λ̂ (± 2 SE) or an efficiency metric against any varying column, one colour per sampler; the
    menus choose the columns (Plotly restyles, no data fetched)."""
    import pandas as pd
    import plotly.graph_objects as go

    ok = df[df["status"].isin(OK_STATUS)] if "status" in df.columns else df
    config, other = _axis_columns(df)
    xs = config + other or ["run_id"]
    ys = [(k, lab) for k, lab in SWEEP_Y if k in df.columns]
    samplers = sorted(ok["sampler"].unique(), key=registry.order_key)
    fig = go.Figure()
    x0 = xs[0]
    for s in samplers:
        sub = ok[ok["sampler"] == s]
        xv, _ = _column_values(sub, x0)
        yv = pd.to_numeric(sub[ys[0][0]], errors="coerce") if ys else []
        err = 2 * pd.to_numeric(sub.get("llc_se", pd.Series(dtype=str)), errors="coerce").fillna(0) if ys else []
        hover = [f"run {r}<br>" + "<br>".join(f"{c} = {sub.iloc[i][c]}" for c in xs[:6])
                 for i, r in enumerate(sub["run_id"])]
        fig.add_trace(go.Scatter(x=xv, y=list(yv), mode="markers", name=registry.label(s),
                                 marker={"color": registry.color(s), "size": 9, "opacity": 0.8},
                                 error_y={"type": "data", "array": list(err), "visible": ys[0][0] == "llc_mean"},
                                 text=hover, hovertemplate="%{text}<br>%{y:.4g}<extra>" + registry.label(s) + "</extra>"))
    x_buttons = []
    for col in xs:
        data = [_column_values(ok[ok["sampler"] == s], col) for s in samplers]
        numeric = all(isnum for _, isnum in data)
        x_buttons.append({"label": col, "method": "update",
                          "args": [{"x": [vals for vals, _ in data]},
                                   {"xaxis.title.text": col, "xaxis.type": "-" if numeric else "category"}]})
    y_buttons = []
    for key, lab in ys:
        yv = [list(pd.to_numeric(ok[ok["sampler"] == s][key], errors="coerce")) for s in samplers]
        se = [list(2 * pd.to_numeric(ok[ok["sampler"] == s].get("llc_se", pd.Series(dtype=str)), errors="coerce").fillna(0))
              for s in samplers]
        y_buttons.append({"label": lab, "method": "update",
                          "args": [{"y": yv, "error_y.array": se, "error_y.visible": key == "llc_mean"},
                                   {"yaxis.title.text": lab,
                                    "yaxis.type": "log" if key in ("ess_per_sec", "ess_per_fde", "wnv_time") else "linear"}]})
    scale_buttons = [{"label": "x linear", "method": "relayout", "args": [{"xaxis.type": "linear"}]},
                     {"label": "x log", "method": "relayout", "args": [{"xaxis.type": "log"}]}]
    menus = [{"buttons": x_buttons, "x": 0.0, "y": 1.16, "xanchor": "left", "yanchor": "top", "showactive": True},
             {"buttons": y_buttons, "x": 0.32, "y": 1.16, "xanchor": "left", "yanchor": "top"},
             {"buttons": scale_buttons, "type": "buttons", "direction": "right", "x": 0.64, "y": 1.16,
              "xanchor": "left", "yanchor": "top"}]
    annotations = [{"text": "x:", "x": -0.02, "y": 1.14, "xref": "paper", "yref": "paper", "showarrow": False,
                    "xanchor": "right"},
                   {"text": "y:", "x": 0.30, "y": 1.14, "xref": "paper", "yref": "paper", "showarrow": False,
                    "xanchor": "right"}]
    _, x_numeric = _column_values(ok, x0) if len(ok) else ([], True)
    fig.update_layout(**base_layout(height=480, updatemenus=menus, annotations=annotations,
                                margin={"l": 60, "r": 20, "t": 90, "b": 50},
                                xaxis={"title": {"text": x0}, "type": "-" if x_numeric else "category"},
                                yaxis={"title": {"text": ys[0][1] if ys else ""}}))
    return fig


def sweep_page(csv_path: Path, page_dir: Path | None = None, value_budget: int = VALUE_BUDGET) -> Page:
    """The page of a sweep results CSV."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise ReportError(f"{csv_path}: no such sweep CSV")
    page_dir = Path(page_dir) if page_dir is not None else csv_path.parent
    df = _read_csv(csv_path)
    status = df["status"] if "status" in df.columns else None
    runs = df["run_id"].nunique()
    counts = status.value_counts().to_dict() if status is not None else {}
    page = Page("sweep", f"llc sweep {csv_path.name}")
    page.subtitle = (f"{len(df)} rows · {runs} runs · " +
                     " · ".join(f"{esc(k)} {v}" for k, v in sorted(counts.items())) +
                     f" · {esc(csv_path.resolve())}")
    if len(df):
        page.sections.append(section("λ̂ and efficiency against any column",
                                     plot_html(sweep_figure(df), "sweep-plot", "plot sweep-plot"), anchor="plot",
                                     note="Menus: the column on x, the quantity on y. Finished rows only; click a "
                                          "sampler in the legend to hide it; hover a point for its run."))
    xs, _ = _axis_columns(df)
    metric_cols = [("llc_mean", "λ̂"), ("llc_se", "SE"), ("ess", "ESS"), ("rhat", "R̂"), ("wall_s", "wall s"),
                   ("ess_per_sec", "ESS/s"), ("ess_per_fde", "ESS/FDE")]
    metric_cols = [(k, lab) for k, lab in metric_cols if k in df.columns]
    headers = [*xs, "sampler", *(lab for _, lab in metric_cols), "status", "flags", "run"]
    rows, attrs = [], []
    root_guess = csv_path.parent
    for _, r in df.iterrows():
        row: list[Any] = []
        for col in xs:
            v = r[col]
            row.append(cell(fmt(v, ".4g") if num(v) is not None and "." in str(v) else v,
                            sort=num(v) if num(v) is not None else v))
        row.append(cell(registry.label(r["sampler"]), sort=r["sampler"]))
        for key, _ in metric_cols:
            v = num(r[key])
            cls = ""
            if key == "rhat" and v is not None:
                cls = "bad" if v > 1.1 else "warn" if v > 1.01 else ""
            row.append(cell(fmt(v, ".4g"), sort=v, cls=cls))
        st = r.get("status", "")
        row.append(cell(st, cls="bad" if st == "failed" else "", title=r.get("error") or None))
        flags = [f for f in str(r.get("flags", "") or "").replace(";", ",").split(",") if f.strip()]
        row.append(flags_cell(flags))
        run_dir = Path(r["artifacts"]) if r.get("artifacts") else root_guess / "artifacts" / r["run_id"]
        if (run_dir / PAGE_FILE).is_file():
            link = f'<a href="{esc(rel_link(run_dir / PAGE_FILE, page_dir))}">{esc(r["run_id"])}</a>'
        elif run_dir.is_dir():
            link = (f'<a href="{esc(rel_link(run_dir, page_dir))}/" title="no page yet: llc report {esc(run_dir)}">'
                    f'{esc(r["run_id"])}</a> <span class="muted">(folder)</span>')
        else:
            link = esc(r["run_id"])
        row.append(cell(link, raw=True, sort=r["run_id"]))
        rows.append(row)
        attrs.append({"data-status": st, "data-sampler": r["sampler"]})
    controls = _filter_controls("rows", sorted(df["sampler"].unique(), key=registry.order_key),
                                sorted(status.unique()) if status is not None else [])
    page.sections.append(section(f"All rows ({len(df)})", controls + table(headers, rows, cls="sortable filterable",
                                                                          table_id="rows", row_attrs=attrs),
                                 anchor="rows", note="Click a header to sort; type to filter (every cell is searched)."))
    return page


def _filter_controls(table_id: str, samplers: list[str], statuses: list[str]) -> str:
    opts = lambda values: "".join(f'<option value="{esc(v)}">{esc(v)}</option>' for v in values)  # noqa: E731
    return (f'<div class="controls" data-for="{esc(table_id)}">'
            f'<input type="search" class="filter-text" placeholder="filter rows…" aria-label="filter rows">'
            f'<select class="filter-sampler"><option value="">all samplers</option>{opts(samplers)}</select>'
            + (f'<select class="filter-status"><option value="">any status</option>{opts(statuses)}</select>'
               if statuses else "") +
            '<span class="count"></span></div>')


# --------------------------------------------------------------------------- index page

def find_runs(root: Path) -> list[Path]:
    root = Path(root)
    return [d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".") and (d / "manifest.json").is_file()]


def find_sweeps(root: Path) -> list[Path]:
    """Sweep CSVs in the root (two levels down) and beside it (``llc sweep`` writes the CSV to the
    working directory by default, the runs under ./artifacts)."""
    root = Path(root)
    candidates = list(root.glob("*.csv")) + list(root.glob("*/*.csv")) + list(root.resolve().parent.glob("*.csv"))
    out, seen = [], set()
    for path in candidates:
        key = path.resolve()
        if key in seen:
            continue
        seen.add(key)
        try:
            with path.open() as fh:
                header = fh.readline()
        except OSError:
            continue
        cols = set(header.strip().split(","))
        if {"run_id", "sampler", "status"} <= cols:
            out.append(path)
    return out


def _pooled_from_file(path: Path) -> np.ndarray | None:
    """Pooled running λ̂ of one sampler file, reading only its posterior group (a quarter of the
    time of loading the whole InferenceData: the index reads every run)."""
    import xarray as xr

    if not path.is_file():
        return None
    try:
        with xr.open_dataset(path, group="posterior", engine="h5netcdf") as ds:
            llc = ds["llc"].values
            arrays = [llc] + ([ds["theta_proj"].values] if "theta_proj" in ds else [])
    except Exception:  # noqa: BLE001 - another layout: the full reader decides
        from llc.store.artifacts import load_netcdf

        try:
            return pooled_running(load_netcdf(path))
        except ArtifactError:
            return None
    good = ~D.diverged_chains(*arrays)
    return D.running_llc(llc[good])[1] if good.any() else None


def _created(run_dir: Path, manifest: dict[str, Any]) -> tuple[float, str]:
    from datetime import datetime

    stamp = manifest.get("created") or ""
    for fmt_ in ("%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S"):
        try:
            return datetime.strptime(stamp, fmt_).timestamp(), stamp
        except (ValueError, TypeError):
            continue
    mtime = (run_dir / "manifest.json").stat().st_mtime
    return mtime, time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(mtime))


def _runs_by_age(runs: list[Path]) -> list[tuple[float, str, Path, dict[str, Any]]]:
    """(timestamp, created, run directory, manifest) of each run, newest first."""
    info = []
    for run_dir in runs:
        manifest = read_json_file(run_dir / "manifest.json")
        ts, created = _created(run_dir, manifest)
        info.append((ts, created, run_dir, manifest))
    info.sort(key=lambda x: (-x[0], x[2].name))
    return info


def _overlay_traces(fig, i: int, run_dir: Path, samplers: dict[str, Any], kind: str, per_line: int,
                    visible: bool) -> int:
    """Add run ``i``'s pooled running λ̂ lines (one per sampler) to the overlay; returns how many."""
    import plotly.graph_objects as go

    added = 0
    for name in samplers or [p.stem for p in sorted(run_dir.glob("*.nc"))]:
        pooled = _pooled_from_file(run_dir / f"{name}.nc")
        if pooled is None:
            continue
        stride = stride_for(pooled.size, per_line)
        fig.add_trace(go.Scatter(x0=100 / pooled.size, dx=100 * stride / pooled.size, y=thin(pooled, stride),
                                 mode="lines",
                                 name=f"{run_dir.name} · {registry.label(name)}", visible=visible,
                                 line={"width": 1.8, "color": CHAIN_COLORS[i % len(CHAIN_COLORS)], "dash": ("solid", "dash", "dot", "dashdot")[registry.order_key(name)[0] % 4]},
                                 hovertemplate=f"run {run_dir.name} ({esc(kind)})<br>{registry.label(name)}"
                                               "<br>%{x:.1f} % of draws<br>λ̂ %{y:.4g}<extra></extra>"))
        added += 1
    return added


def _run_row(run_dir: Path, ts: float, created: str, manifest: dict[str, Any], doc: dict[str, Any],
             trace_ids: list[int], checked: bool, page_dir: Path) -> list[str]:
    """A run's row of the index: overlay tick box, age, target, estimates, R̂, flags, time, link."""
    samplers = doc.get("samplers") or {}
    t = doc.get("target") or {}
    est = "<br>".join(f"{esc(registry.label(s))}: {fmt(m.get('llc_mean'), '.4g')} ± {fmt(m.get('llc_se'), '.2g')}"
                      for s, m in samplers.items())
    flags = [f for m in samplers.values() for f in (m.get("flags") or [])]
    rhat = max((num(m.get("rhat")) or 0 for m in samplers.values()), default=None)
    page_file = run_dir / PAGE_FILE
    link = (f'<a href="{esc(rel_link(page_file, page_dir))}">page</a>' if page_file.is_file()
            else f'<a href="{esc(rel_link(run_dir, page_dir))}/" title="llc report {esc(run_dir)}">folder</a>')
    check = (f'<input type="checkbox" class="overlay-pick" data-traces="{esc(json.dumps(trace_ids))}"'
             f'{" checked" if checked and trace_ids else ""}{" disabled" if not trace_ids else ""}'
             f' aria-label="overlay {esc(run_dir.name)}">')
    return [cell(check, raw=True), cell(created, sort=ts), cell(run_dir.name),
            cell(f"{t.get('kind') or '—'} (d={t.get('d', '—')}, n={t.get('n', '—')})"),
            cell(est or "—", raw=True, sort=num(next(iter(samplers.values()), {}).get("llc_mean"))),
            cell(fmt(rhat, ".3f"), sort=rhat, cls="warn" if rhat and rhat > RHAT_MAX else ""),
            flags_cell(flags),
            cell(fmt(manifest.get("total_seconds"), ".3g"), sort=num(manifest.get("total_seconds"))),
            cell(link, raw=True)]


def _runs_sections(info, page_dir: Path, per_line: int) -> list[str]:
    """The overlay of the runs' running λ̂ (the newest few shown) and the table of runs that picks them."""
    import plotly.graph_objects as go

    fig = go.Figure()
    rows, attrs = [], []
    n_lines = 0
    shown_by_default = 3
    for i, (ts, created, run_dir, manifest) in enumerate(info):
        doc = read_json_file(run_dir / "metrics.json")
        samplers = doc.get("samplers") or {}
        added = _overlay_traces(fig, i, run_dir, samplers, (doc.get("target") or {}).get("kind") or "", per_line,
                                i < shown_by_default)
        trace_ids = list(range(n_lines, n_lines + added))
        n_lines += added
        rows.append(_run_row(run_dir, ts, created, manifest, doc, trace_ids, i < shown_by_default, page_dir))
        attrs.append({"data-status": "done", "data-sampler": " ".join(samplers)})
    fig.update_layout(**base_layout(height=440, title={"text": "Pooled running λ̂ of the selected runs", "x": 0.01},
                                xaxis={"title": {"text": "progress through kept draws (%)"}},
                                yaxis={"title": {"text": "pooled running λ̂"}},
                                legend={"font": {"size": 10}}))
    controls = _filter_controls("runs", sorted({s for _, _, d, _ in info for s in (read_json_file(d / 'metrics.json').get('samplers') or {})},
                                               key=registry.order_key), [])
    return [section("Overlay", plot_html(fig, "overlay", "plot overlay-plot"), anchor="overlay",
                    note="Tick runs in the table below to overlay them (line style: sampler)."),
            section(f"Runs ({len(info)})", controls + table(
                ["overlay", "created", "run id", "target", "λ̂ ± SE", "max R̂", "flags", "seconds", "open"], rows,
                cls="sortable filterable", table_id="runs", row_attrs=attrs), anchor="runs")]


def _sweeps_section(sweeps: list[Path], page_dir: Path) -> str:
    """One row per sweep CSV, newest first: its runs, rows, statuses and page."""
    srows = []
    for csv_path in sorted(sweeps, key=lambda p: -p.stat().st_mtime):
        try:
            df = _read_csv(csv_path)
        except ReportError:
            continue
        counts = df["status"].value_counts().to_dict() if "status" in df.columns else {}
        html_page = csv_path.with_suffix(".html")
        target = html_page if html_page.is_file() else csv_path
        mtime = csv_path.stat().st_mtime
        srows.append([cell(time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(mtime)), sort=mtime),
                      cell(f'<a href="{esc(rel_link(target, page_dir))}">{esc(csv_path.name)}</a>', raw=True, sort=csv_path.name),
                      cell(str(df["run_id"].nunique()), sort=df["run_id"].nunique()),
                      cell(str(len(df)), sort=len(df)),
                      cell(", ".join(f"{k} {v}" for k, v in sorted(counts.items()))),
                      cell("page" if target == html_page else f"llc report {csv_path}")])
    return section(f"Sweeps ({len(srows)})", table(
        ["modified", "CSV", "runs", "rows", "status", "page"], srows, cls="sortable", table_id="sweeps"),
        anchor="sweeps")


def _trajectories_section(trajs, root: Path, page_dir: Path) -> str:
    all_page = root / TRAJ_DIR / PAGE_FILE
    overlaid = (f'<a href="{esc(rel_link(all_page, page_dir))}">all of them overlaid</a>' if all_page.is_file()
                else f"all of them overlaid: <code>llc report {esc(root / TRAJ_DIR)}</code>")
    return section(f"Trajectories ({len(trajs)})", table(
        TRAJ_INDEX_HEADERS, [row for _, row in trajs], cls="sortable textual", table_id="trajectories"),
        anchor="trajectories", note=f"llc trajectory: λ̂ at every training checkpoint; {overlaid}.")


def index_page(root: Path, page_dir: Path | None = None, value_budget: int = VALUE_BUDGET) -> Page:
    """The page of an artifacts root: runs newest first, sweeps, calibrations and trajectories, and
    an overlay of selected runs."""
    root = Path(root)
    page_dir = Path(page_dir) if page_dir is not None else root
    runs = find_runs(root)
    sweeps = find_sweeps(root)
    cals = sorted(cal_index_rows(root, page_dir), key=lambda x: -x[0])
    trajs = sorted(traj_index_rows(root, page_dir), key=lambda x: -x[0])
    if not runs and not sweeps and not cals and not trajs:
        raise ReportError(f"{root}: no runs (directories with manifest.json), sweep CSVs, calibrations or "
                          "trajectories found")
    info = _runs_by_age(runs)
    page = Page("index", f"llc artifacts {root.resolve()}")
    page.subtitle = (f"{len(runs)} runs · {len(sweeps)} sweeps · {len(cals)} calibrations · {len(trajs)} trajectories"
                     " · newest first")
    # Every line thinned alike so that all the runs' curves together stay within the page's budget.
    per_line = max(20, min(RUNNING_POINTS, value_budget // max(1, 2 * len(info))))
    if info:
        page.sections += _runs_sections(info, page_dir, per_line)
    if sweeps:
        page.sections.append(_sweeps_section(sweeps, page_dir))
    if cals:
        page.sections.append(section(f"Calibrations ({len(cals)})", table(
            CAL_INDEX_HEADERS, [row for _, row in cals], cls="sortable textual", table_id="calibrations"), anchor="calibrations",
            note="llc calibrate: hover a recommendation for why it was chosen."))
    if trajs:
        page.sections.append(_trajectories_section(trajs, root, page_dir))
    if info and per_line < RUNNING_POINTS:
        page.notes.append(f"Running λ̂ curves downsampled to about {per_line} points each for display.")
    else:
        page.notes.append(f"Running λ̂ curves shown at up to {RUNNING_POINTS} points each.")
    return page


# --------------------------------------------------------------------------- page kinds and rendering

PAGE_KINDS: dict[str, Callable[..., Page]] = {"run": run_page, "sweep": sweep_page, "index": index_page,
                                              "calibration": calibration_page, "trajectory": trajectory_page}


def detect(path: Path) -> str:
    """The page kind of a path (ReportError names what was expected)."""
    path = Path(path)
    if path.is_file() and path.suffix.lower() == ".csv":
        return "sweep"
    if path.is_dir():
        if is_calibration(path):  # before runs: a calibration also has a manifest.json and a .nc file
            return "calibration"
        if is_trajectory(path) or is_overlay(path):
            return "trajectory"
        if (path / "manifest.json").is_file() or any(path.glob("*.nc")):
            return "run"
        return "index"
    raise ReportError(f"{path}: not a run directory, a sweep CSV, a calibration, a trajectory or an artifacts root")


def default_out(path: Path, kind: str) -> Path:
    path = Path(path)
    return path.with_suffix(".html") if kind == "sweep" else path / (INDEX_FILE if kind == "index" else PAGE_FILE)


CSS = """
:root{--fg:#1d2330;--muted:#667085;--line:#e4e7ec;--bg:#f6f7f9;--accent:#2f5bd3;--bad:#b42318;--warn:#b54708}
*{box-sizing:border-box}body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);background:var(--bg)}
header{background:#1d2330;color:#fff;padding:14px 28px}header h1{margin:0;font-size:19px;font-weight:600}
header .sub{color:#c9d1e0;font-size:13px;margin-top:4px}header .sub b{color:#fff}
nav{position:sticky;top:0;z-index:10;background:#fff;border-bottom:1px solid var(--line);padding:6px 28px;font-size:13px}
nav a{color:var(--accent);text-decoration:none;margin-right:16px}main{padding:12px 28px 40px;max-width:1500px}
section{background:#fff;border:1px solid var(--line);border-radius:8px;padding:12px 16px;margin:14px 0}
h2{font-size:16px;margin:2px 0 8px}p.note{color:var(--muted);margin:0 0 8px;font-size:12.5px}
.table-wrap{overflow-x:auto}table{border-collapse:collapse;font-size:13px;width:100%}
th,td{padding:5px 9px;border-bottom:1px solid var(--line);text-align:right;white-space:nowrap}
th:first-child,td:first-child{text-align:left}table.textual th,table.textual td{text-align:left}thead th{background:#f0f2f5;position:sticky;top:0}
table.sortable th{cursor:pointer;user-select:none}table.sortable th:hover{background:#e4e8ef}
th.asc::after{content:" ▲";font-size:10px}th.desc::after{content:" ▼";font-size:10px}
tbody tr:hover{background:#f7f9fc}
td.flags{white-space:normal;text-align:left;min-width:16em;max-width:30em}td.flags .badge{white-space:normal;text-align:left}td.bad{color:var(--bad);font-weight:600}td.warn{color:var(--warn);font-weight:600}
table.kv th{text-align:left;background:none;color:var(--muted);font-weight:500;position:static}table.kv td{text-align:left;white-space:normal;word-break:break-all}
.badge{display:inline-block;padding:1px 7px;border-radius:10px;font-size:11.5px;font-weight:600;margin:1px}
.badge.bad{background:#fee4e2;color:var(--bad)}.ok{color:#067647}.muted{color:var(--muted)}
.controls{display:flex;gap:8px;align-items:center;margin:4px 0 8px}.controls input,.controls select{padding:5px 8px;border:1px solid #cfd4dc;border-radius:6px;font:inherit}
.controls input{min-width:260px}.controls .count{color:var(--muted);font-size:12.5px}
.two-col{display:grid;grid-template-columns:1fr 1fr;gap:16px}@media(max-width:1000px){.two-col{grid-template-columns:1fr}}
details summary{cursor:pointer;color:var(--accent);margin-bottom:6px}.plot{margin:6px 0}
footer{color:var(--muted);font-size:12px;padding:0 28px 24px}
.callout{border-left:6px solid #067647;background:#ecfdf3;border-radius:6px;padding:10px 16px;margin:4px 0}
.callout.bad{border-left-color:var(--bad);background:#fef3f2}.callout-title{font-weight:700;font-size:13px;text-transform:uppercase;letter-spacing:.04em;color:#067647}
.callout.bad .callout-title{color:var(--bad)}.callout .rec-setting{font-size:20px;margin:4px 0 6px}
.callout .why{font-size:14.5px;margin:0 0 6px;max-width:1100px}.callout code{background:#fff;padding:1px 6px;border-radius:4px;border:1px solid var(--line)}
.callout p.run-it{margin:0 0 4px}.callout .rec-llc{font-size:15px;color:var(--muted);margin-left:18px}.badge.rec{background:#d1fadf;color:#05603a}.bad-text{color:var(--bad);font-weight:600}
tr.recommended td{background:#ecfdf3;font-weight:600}tr.flagged td{background:#fef3f2}tr.unhealthy td{color:#8a8f98}tr.unhealthy td.bad{color:var(--bad)}
"""

# Sorting and filtering of tables, and the overlay selection of the index page: what Plotly does not do.
JS = """
(function(){
function key(td){var s=td.getAttribute('data-sort');var v=s===null?td.textContent.trim():s;var n=parseFloat(v);return (v!==''&&!isNaN(n)&&isFinite(v))?[0,n]:[1,v.toLowerCase()];}
function cmp(a,b){if(a[0]!==b[0])return a[0]-b[0];return a[1]<b[1]?-1:a[1]>b[1]?1:0;}
document.querySelectorAll('table.sortable').forEach(function(t){
  t.querySelectorAll('thead th').forEach(function(th,i){th.addEventListener('click',function(){
    var asc=!th.classList.contains('asc');t.querySelectorAll('thead th').forEach(function(h){h.classList.remove('asc','desc');});
    th.classList.add(asc?'asc':'desc');var body=t.tBodies[0];var rows=Array.prototype.slice.call(body.rows);
    rows.sort(function(r1,r2){var c=cmp(key(r1.cells[i]),key(r2.cells[i]));return asc?c:-c;});
    rows.forEach(function(r){body.appendChild(r);});});});});
document.querySelectorAll('.controls').forEach(function(box){
  var t=document.getElementById(box.getAttribute('data-for'));if(!t)return;
  var text=box.querySelector('.filter-text'),smp=box.querySelector('.filter-sampler'),st=box.querySelector('.filter-status'),count=box.querySelector('.count');
  function apply(){var q=text.value.toLowerCase().trim(),s=smp?smp.value:'',u=st?st.value:'',shown=0;
    Array.prototype.forEach.call(t.tBodies[0].rows,function(r){
      var ok=(!q||r.textContent.toLowerCase().indexOf(q)>=0)&&(!s||(' '+r.getAttribute('data-sampler')+' ').indexOf(' '+s+' ')>=0)&&(!u||r.getAttribute('data-status')===u);
      r.style.display=ok?'':'none';if(ok)shown++;});
    count.textContent=shown+' of '+t.tBodies[0].rows.length+' rows';}
  [text,smp,st].forEach(function(el){if(el){el.addEventListener('input',apply);el.addEventListener('change',apply);}});apply();});
var overlay=document.getElementById('plot-overlay');
document.querySelectorAll('input.overlay-pick').forEach(function(box){box.addEventListener('change',function(){
  if(!overlay)return;var ids=JSON.parse(box.getAttribute('data-traces'));if(ids.length)Plotly.restyle(overlay,{visible:box.checked},ids);});});
})();
"""


def render(page: Page) -> str:
    """The page as one HTML document: Plotly's library inline once, then the sections."""
    from importlib import metadata

    from plotly.offline import get_plotlyjs

    try:
        version = metadata.version("llc")
    except metadata.PackageNotFoundError:
        version = "?"
    anchors = re.findall(r'<section id="([^"]+)"[^>]*><h2>(.*?)</h2>', "".join(page.sections))
    nav = "".join(f'<a href="#{a}">{t}</a>' for a, t in anchors)
    notes = "".join(f"<p>{esc(n)}</p>" for n in page.notes)
    generated = time.strftime("%Y-%m-%d %H:%M:%S")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{esc(page.title)}</title>"
        "<link rel=\"icon\" href=\"data:,\">"  # no favicon request: the page makes none at all
        f"<style>{CSS}</style><script type=\"text/javascript\">{get_plotlyjs()}</script></head>"
        f"<body data-kind=\"{esc(page.kind)}\"><header><h1>{esc(page.title)}</h1>"
        f"<div class=\"sub\">{page.subtitle}</div></header><nav>{nav}</nav><main>{''.join(page.sections)}</main>"
        f"<footer>{notes}<p>Written by llc {esc(version)} (<code>llc report</code>) on {generated}; "
        "self-contained: opens offline.</p></footer>"
        f"<script>{JS}</script></body></html>\n")


def write_report(path: Path, out: Path | None = None, *, kind: str | None = None) -> tuple[Path, str]:
    """Render the page of ``path`` and write it atomically; returns (file, kind)."""
    path = Path(path)
    if not path.exists():
        raise ReportError(f"{path}: no such file or directory")
    kind = kind or detect(path)
    out = Path(out) if out is not None else default_out(path, kind)
    budget = VALUE_BUDGET
    while True:  # the data budget keeps pages small; many chains and samplers can still need less
        text = render(PAGE_KINDS[kind](path, page_dir=out.parent, value_budget=budget))
        if len(text.encode()) <= MAX_PAGE_BYTES or budget < VALUE_BUDGET // 8:
            break
        budget //= 2
    out.parent.mkdir(parents=True, exist_ok=True)
    from llc.store.cache import atomic_file

    with atomic_file(out, "w", encoding="utf-8") as fh:  # the umask's permissions (mkstemp: 0600)
        fh.write(text)
    return out, kind
