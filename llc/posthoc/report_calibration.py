"""The calibration page of ``llc report`` (no JAX): ``<root>/calibrations/<id>/`` -> ``report.html``.

What ``llc calibrate`` wrote (summary.json, calibration.csv, calibration.nc) as one page: the
recommendation and why at the top; λ̂ ± 2 SE against the step size (log x), one line per value of
the other axes (γ, nβ, ...) with its analytic value dotted, unhealthy points crossed and the
recommended point ringed; R̂, ESS and MALA acceptance against the step size with the rule's
thresholds; the running λ̂ of every chain at every grid point (from calibration.nc, thinned for
display); and a sortable table of the points.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from llc.analysis.health import AGREE_SE, BACKOFF, RHAT_MAX, STEP_BIAS_REL, mala_floor
from llc.posthoc.report_html import (CHAIN_COLORS, PAGE_FILE, VALUE_BUDGET, Page, ReportError, base_layout,
                                     cell, esc, flags_cell, fmt, kv_table, legend_only, log_axis, num, plot_html,
                                     read_json_file, rel_link, rgba, section, split_flags, stride_for, table, thin,
                                     value_text)
from llc.store.layout import CAL_DIR

# Per-point running λ̂ panels: ~0.6 kB of JSON a line however short, so at most 30 panels of 4 chains
# (with the grid figure and the table: ~130 kB beside Plotly's 4.8 MB).
MAX_TRACE_PANELS = 30
MAX_TRACE_CHAINS = 4
BAD = "#c00000"
REC = "#0e9f6e"


def is_calibration(path: Path) -> bool:
    path = Path(path)
    return (path / "summary.json").is_file() and (path / "calibration.csv").is_file()


def find_calibrations(root: Path) -> list[Path]:
    base = Path(root) / CAL_DIR
    return sorted(d for d in base.iterdir() if is_calibration(d)) if base.is_dir() else []


def load_summary(cal_dir: Path) -> dict[str, Any]:
    doc = read_json_file(Path(cal_dir) / "summary.json")
    if not isinstance(doc.get("rows"), list) or not isinstance(doc.get("axes"), dict) or not doc["axes"]:
        raise ReportError(f"{cal_dir}/summary.json: not a calibration summary (no 'rows' and 'axes')")
    return doc


def short(field: str) -> str:
    """``posterior.gamma`` -> ``gamma``: the axis names a reader knows."""
    return field.rsplit(".", 1)[-1]



def line_label(key: tuple, names: list[str]) -> str:
    return ", ".join(f"{short(n)}={value_text(v)}" for n, v in zip(names, key)) or "all points"


def x_field(summary: dict[str, Any]) -> str:
    """The step size of the calibrated sampler when it is an axis, else the first axis."""
    step = f"{summary.get('sampler', 'sgld')}.step_size"
    return step if step in summary["axes"] else next(iter(summary["axes"]))



def unhealthy_reasons(row: dict[str, Any]) -> list[str]:
    """Why a point fails the rule's health test (its flags, step_bias from the MALA check among them, and R̂)."""
    reasons = split_flags(row)
    rhat = num(row.get("rhat"))
    if rhat is None or rhat >= RHAT_MAX:
        reasons.append(f"R̂ {fmt(rhat, '.3f')} ≥ {RHAT_MAX}" if rhat is not None else "no R̂")
    return reasons


def _mala_floor(summary: dict[str, Any]) -> float | None:
    d = (summary.get("target") or {}).get("d")
    return mala_floor(int(d)) if d else None


def _is_healthy(row: dict[str, Any]) -> bool:
    h = row.get("healthy")
    if isinstance(h, str):
        return h.strip().lower() == "true"
    return bool(h) if h is not None else not unhealthy_reasons(row)


def _lines(summary: dict[str, Any], xf: str) -> tuple[list[str], dict[tuple, list[int]]]:
    """(the other axes, {their values: row indices sorted along x}) in grid order."""
    others = [k for k in summary["axes"] if k != xf]
    rows = summary["rows"]
    lines: dict[tuple, list[int]] = {}
    for i, r in enumerate(rows):
        lines.setdefault(tuple(r.get(k) for k in others), []).append(i)
    order = {v: j for j, v in enumerate(summary["axes"][xf])}
    for idx in lines.values():
        idx.sort(key=lambda i: order.get(rows[i].get(xf), len(order)))
    return others, lines


def _x_is_log(summary: dict[str, Any], xf: str) -> tuple[bool, bool]:
    """(numeric, positive): a numeric axis of positive values is drawn on a log scale."""
    values = summary["axes"][xf]
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    return numeric, numeric and all(v > 0 for v in values)


def x_axis(summary: dict[str, Any], xf: str) -> dict[str, Any]:
    """The x axis of the grid: log for positive numbers, ticks at the grid's own values."""
    numeric, log_x = _x_is_log(summary, xf)
    values = list(summary["axes"][xf])
    axis: dict[str, Any] = {"type": "log" if log_x else ("linear" if numeric else "category")}
    if numeric:
        axis.update(tickmode="array", tickvals=values, ticktext=[value_text(v) for v in values])
    return axis



def _hover(row: dict[str, Any], axes: list[str], rec: bool) -> str:
    parts = [f"<b>{esc(short(k))} = {esc(value_text(row.get(k)))}</b>" for k in axes]
    parts.append(f"λ̂ = {fmt(row.get('llc_mean'), '.4g')} ± {fmt(row.get('llc_se'), '.2g')} (SE)")
    if num(row.get("analytic_llc")) is not None:
        parts.append(f"analytic λ = {fmt(row['analytic_llc'], '.4g')}")
    parts.append(f"R̂ {fmt(row.get('rhat'), '.3f')} · ESS {fmt(row.get('ess'), '.0f')}"
                 + (f" · MALA acc {fmt(row.get('mala_acceptance'), '.3f')}"
                    if num(row.get("mala_acceptance")) is not None else ""))
    parts.append(f"nβ = {fmt(row.get('nbeta'), '.4g')} · γ = {fmt(row.get('gamma'), '.4g')}")
    reasons = unhealthy_reasons(row) if not _is_healthy(row) else []
    if reasons:
        parts.append(f"<span style='color:{BAD}'>unhealthy: {esc('; '.join(reasons))}</span>")
    if rec:
        parts.append(f"<span style='color:{REC}'><b>recommended</b></span>")
    return "<br>".join(parts)


def grid_figure(summary: dict[str, Any]):
    """λ̂ ± 2 SE (bands) against the x axis, one line per value of the other axes."""
    import plotly.graph_objects as go

    rows = summary["rows"]
    xf = x_field(summary)
    others, lines = _lines(summary, xf)
    numeric, log_x = _x_is_log(summary, xf)
    chosen = (summary.get("recommended") or {}).get("index")
    rec_key = tuple(rows[chosen].get(k) for k in others) if chosen is not None else None
    fig = go.Figure()
    has_analytic = False
    bad_x, bad_y, bad_text = [], [], []
    for j, (key, idx) in enumerate(lines.items()):
        color = CHAIN_COLORS[j % len(CHAIN_COLORS)]
        label = line_label(key, others) + (" (the rule's line)" if key == rec_key and len(lines) > 1 else "")
        xs = [rows[i].get(xf) for i in idx]
        ys = [num(rows[i].get("llc_mean")) for i in idx]
        ses = [num(rows[i].get("llc_se")) or 0.0 for i in idx]
        ok = [k for k, y in enumerate(ys) if y is not None]
        if ok:
            bx = [xs[k] for k in ok]
            lo = [ys[k] - 2 * ses[k] for k in ok]
            hi = [ys[k] + 2 * ses[k] for k in ok]
            fig.add_trace(go.Scatter(x=bx + bx[::-1], y=hi + lo[::-1], mode="lines", fill="toself", fillcolor=rgba(color, 0.16),
                                     line={"width": 0}, hoverinfo="skip", showlegend=False, legendgroup=f"line{j}",
                                     name=f"{label} ± 2 SE"))
        fig.add_trace(go.Scatter(
            x=xs, y=ys, mode="lines+markers", name=label, legendgroup=f"line{j}",
            line={"color": color, "width": 3 if key == rec_key else 1.8},
            marker={"size": 8, "color": color, "line": {"color": "white", "width": 1}},
            text=[_hover(rows[i], [xf, *others], i == chosen) for i in idx], hovertemplate="%{text}<extra></extra>"))
        analytic = num(rows[idx[0]].get("analytic_llc"))
        if analytic is not None and xs:
            has_analytic = True
            fig.add_trace(go.Scatter(x=[xs[0], xs[-1]], y=[analytic, analytic], mode="lines", legendgroup=f"line{j}",
                                     showlegend=False, line={"color": color, "dash": "dot", "width": 1.6},
                                     name=f"analytic λ ({label})",
                                     hovertemplate=f"analytic λ = {analytic:.4g} ({esc(label)})<extra></extra>"))
        for i, x, y in zip(idx, xs, ys):
            if y is not None and not _is_healthy(rows[i]):
                bad_x.append(x)
                bad_y.append(y)
                bad_text.append(_hover(rows[i], [xf, *others], False))
    if bad_x:
        fig.add_trace(go.Scatter(x=bad_x, y=bad_y, mode="markers", name="unhealthy (flag, R̂ or acceptance)",
                                 marker={"symbol": "x-thin", "size": 15, "line": {"color": BAD, "width": 3}},
                                 text=bad_text, hovertemplate="%{text}<extra></extra>"))
    if has_analytic:
        fig.add_trace(legend_only("analytic λ of each line (dotted)", {"color": "#555", "dash": "dot"}))
    ref = summary.get("reference") or {}
    ref_mean, ref_se = num(ref.get("llc_mean")), num(ref.get("llc_se")) or 0.0
    if ref_mean is not None and ref.get("kind") != "analytic":
        if ref_se:
            fig.add_hrect(y0=ref_mean - 2 * ref_se, y1=ref_mean + 2 * ref_se, fillcolor="black", opacity=0.07,
                          line_width=0)
        fig.add_hline(y=ref_mean, line={"color": "black", "dash": "dash", "width": 1.4})
        fig.add_trace(legend_only(f"{ref.get('kind', 'reference')} reference λ̂ = {ref_mean:.4g}"
                                  + (f" ± {2 * ref_se:.2g} (2 SE)" if ref_se else ""),
                                  {"color": "black", "dash": "dash"}))
    if chosen is not None and num(rows[chosen].get("llc_mean")) is not None:
        r = rows[chosen]
        fig.add_trace(go.Scatter(x=[r.get(xf)], y=[r["llc_mean"]], mode="markers", name="recommended",
                                 marker={"symbol": "circle-open", "size": 24, "color": REC, "line": {"width": 3.5}},
                                 hovertemplate=_hover(r, [xf, *others], True) + "<extra></extra>"))
        fig.add_annotation(x=math.log10(r[xf]) if log_x else r.get(xf), y=r["llc_mean"],
                           text=f"<b>recommended</b><br>{esc(short(xf))} = {esc(value_text(r.get(xf)))}",
                           showarrow=True, arrowhead=2, arrowcolor=REC, ax=0, ay=-58, font={"color": REC, "size": 12},
                           bgcolor="rgba(255,255,255,0.85)")
    _fit_y(fig, summary, ref_mean, ref_se)
    t = summary.get("target") or {}
    fig.update_layout(**base_layout(
        height=500, margin={"l": 60, "r": 20, "t": 46, "b": 50},
        title={"text": f"{esc(summary.get('sampler', ''))} on {esc(t.get('kind', '?'))} target {esc(t.get('id', ''))} "
                       f"(d = {esc(t.get('d', '—'))}, n = {esc(t.get('n', '—'))}): λ̂ ± 2 SE", "x": 0.01},
        xaxis={"title": {"text": xf + (" (log scale)" if log_x else "")}, **x_axis(summary, xf)},
        yaxis={"title": {"text": "λ̂ (band: ± 2 SE)"}},
        legend={"title": {"text": "click: hide / show"}}))
    return fig


def _fit_y(fig: Any, summary: dict[str, Any], ref_mean: float | None, ref_se: float) -> None:
    """A y-range that keeps the healthy points readable when a blown-up point lies far away (every
    point when none is healthy)."""
    vals: list[float] = []
    any_healthy = any(_is_healthy(r) for r in summary["rows"])
    for r in summary["rows"]:
        m, se = num(r.get("llc_mean")), num(r.get("llc_se")) or 0.0
        if m is not None and (_is_healthy(r) or not any_healthy):
            vals += [m - 2 * se, m + 2 * se]
        if num(r.get("analytic_llc")) is not None:
            vals.append(r["analytic_llc"])
    if ref_mean is not None:
        vals += [ref_mean - 2 * ref_se, ref_mean + 2 * ref_se]
    if len(vals) >= 2:
        lo, hi = min(vals), max(vals)
        pad = 0.15 * (hi - lo) + 0.03 * abs(hi) + 1e-9
        fig.update_yaxes(range=[lo - pad, hi + 1.6 * pad])  # headroom for the recommendation's label


def diagnostics_figure(summary: dict[str, Any]):
    """R̂, ESS and (SGLD) MALA acceptance per point against the x axis, with the rule's thresholds."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    rows = summary["rows"]
    xf = x_field(summary)
    others, lines = _lines(summary, xf)
    panels = [("rhat", f"R̂ (healthy < {RHAT_MAX})"), ("ess", "ESS (bulk)")]
    if any(num(r.get("mala_acceptance")) is not None for r in rows):
        floor = _mala_floor(summary)
        panels.append(("mala_acceptance", "MALA acceptance of SGLD moves" + (f" (step_bias below {floor:.3f})"
                                                                             if floor is not None else "")))
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[p[1] for p in panels], horizontal_spacing=0.07)
    for j, (key, idx) in enumerate(lines.items()):
        color = CHAIN_COLORS[j % len(CHAIN_COLORS)]
        label = line_label(key, others)
        for c, (col, title) in enumerate(panels, start=1):
            fig.add_trace(go.Scatter(x=[rows[i].get(xf) for i in idx], y=[num(rows[i].get(col)) for i in idx],
                                     mode="lines+markers", name=label, legendgroup=f"line{j}", showlegend=c == 1,
                                     line={"color": color, "width": 1.6}, marker={"size": 7, "color": color},
                                     hovertemplate=f"{esc(label)}<br>{esc(short(xf))} %{{x}}<br>{esc(title)}: "
                                                   "%{y:.4g}<extra></extra>"),
                          row=1, col=c)
    for c, (col, _) in enumerate(panels, start=1):
        if col == "rhat":
            fig.add_hline(y=RHAT_MAX, line={"color": BAD, "dash": "dash", "width": 1.2}, row=1, col=c)
        if col == "mala_acceptance" and _mala_floor(summary) is not None:
            fig.add_hline(y=_mala_floor(summary), line={"color": BAD, "dash": "dash", "width": 1.2}, row=1, col=c)
        if col == "ess":
            fig.update_yaxes(row=1, col=c, **log_axis([num(r.get("ess")) for r in rows]))
        fig.update_xaxes(title_text=short(xf), row=1, col=c, **x_axis(summary, xf))
    fig.update_layout(**base_layout(height=330, margin={"l": 60, "r": 20, "t": 40, "b": 50}))
    fig.update_annotations(font_size=12)
    return fig


def _read_llc(cal_dir: Path) -> np.ndarray | None:
    """λ̂ draws (point, chain, draw) from calibration.nc, or None when it cannot be read."""
    import xarray as xr

    path = Path(cal_dir) / "calibration.nc"
    if not path.is_file():
        return None
    try:
        with xr.open_dataset(path, engine="h5netcdf") as ds:
            return np.asarray(ds["llc"].values, dtype=np.float64) if "llc" in ds else None
    except (OSError, ValueError, KeyError):
        return None


def traces_figure(summary: dict[str, Any], llc: np.ndarray, value_budget: int) -> tuple[Any, int]:
    """Running λ̂ of every chain at every grid point: one row per line of the grid, one column per
    x value; unhealthy panels shaded red, the recommended one green; the first MAX_TRACE_CHAINS
    chains. Returns (figure, stride)."""
    from plotly.subplots import make_subplots
    import plotly.graph_objects as go

    from llc.analysis import diagnostics as D

    rows = summary["rows"]
    xf = x_field(summary)
    others, lines = _lines(summary, xf)
    xs = list(summary["axes"][xf])
    chosen = (summary.get("recommended") or {}).get("index")
    points, chains, draws = llc.shape
    chains = min(chains, MAX_TRACE_CHAINS)
    stride = stride_for(draws, int(np.clip(0.3 * value_budget / max(points * chains, 1), 20, 200)))
    fig = make_subplots(rows=len(lines), cols=len(xs), shared_xaxes=True, horizontal_spacing=0.025,
                        vertical_spacing=min(0.08, 0.3 / max(len(lines), 1)),
                        column_titles=[f"{short(xf)} = {value_text(x)}" for x in xs],
                        row_titles=[line_label(k, others) for k in lines])
    for r_i, (key, idx) in enumerate(lines.items(), start=1):
        for i in idx:
            c_i = xs.index(rows[i].get(xf)) + 1 if rows[i].get(xf) in xs else 1
            per_chain, _ = D.running_llc(llc[i])
            shown = thin(per_chain, stride)
            for c in range(chains):
                fig.add_trace(go.Scatter(x0=1, dx=stride, y=shown[c], mode="lines", name=f"chain {c}",
                                         legendgroup=f"c{c}", showlegend=i == 0,
                                         line={"color": CHAIN_COLORS[c % len(CHAIN_COLORS)], "width": 1},
                                         hovertemplate=f"chain {c}: %{{y:.4g}}<extra></extra>"),
                              row=r_i, col=c_i)
            analytic = num(rows[i].get("analytic_llc"))
            if analytic is not None:
                fig.add_hline(y=analytic, line={"color": "#555", "dash": "dot", "width": 1}, row=r_i, col=c_i)
            tail = per_chain[:, draws // 10:]
            finite = tail[np.isfinite(tail)]
            if finite.size:
                lo, hi = float(finite.min()), float(finite.max())
                if analytic is not None:
                    lo, hi = min(lo, analytic), max(hi, analytic)
                pad = 0.1 * (hi - lo) + 1e-6 * max(abs(hi), 1.0)
                fig.update_yaxes(range=[lo - pad, hi + pad], row=r_i, col=c_i)
            shade = REC if i == chosen else BAD if not _is_healthy(rows[i]) else None
            if shade:
                fig.add_shape(type="rect", xref="x domain", yref="y domain", x0=0, x1=1, y0=0, y1=1, layer="below",
                              fillcolor=rgba(shade, 0.09), line={"color": shade, "width": 1.5}, row=r_i, col=c_i)
    fig.add_trace(legend_only("recommended point (green frame)", {"color": REC, "width": 6}))
    fig.add_trace(legend_only("unhealthy point (red frame)", {"color": BAD, "width": 6}))
    fig.update_xaxes(showticklabels=False)
    fig.update_xaxes(showticklabels=True, row=len(lines))
    fig.update_yaxes(tickfont={"size": 9})
    fig.update_layout(**base_layout(height=int(110 + 165 * len(lines)), margin={"l": 50, "r": 120, "t": 50, "b": 40},
                                    legend={"title": {"text": "click: hide / show"}, "groupclick": "togglegroup"}))
    fig.update_annotations(font_size=11)
    return fig, stride


def _recommendation_html(summary: dict[str, Any], cal_dir: Path, page_dir: Path) -> str:
    rec = summary.get("recommended") or {}
    setting = rec.get("setting") or {}
    why = rec.get("why") or "no reason recorded"
    if rec.get("index") is not None:
        head = " · ".join(f"<b>{esc(k)}</b> = {esc(value_text(v))}" for k, v in setting.items())
        r = summary["rows"][rec["index"]]
        head += (f'<span class="rec-llc">λ̂ = {fmt(r.get("llc_mean"), ".4g")} ± {fmt(r.get("llc_se"), ".2g")}'
                 + (f' (analytic {fmt(r["analytic_llc"], ".4g")})' if num(r.get("analytic_llc")) is not None else "")
                 + "</span>")
        state = "ok"
        title = "Recommended setting"
    else:
        head = "no point of the grid passes the rule"
        state = "bad"
        title = "No recommendation"
    preset = Path(summary["preset"]) if summary.get("preset") else cal_dir / "recommended.toml"
    run_line = ""
    if rec.get("index") is not None and preset.is_file():
        run_line = (f'<p class="run-it">Run it: <code>llc run --preset {esc(preset)}</code> '
                    f'(<a href="{esc(rel_link(preset, page_dir))}">recommended.toml</a>)</p>')
    rule = (f"A point is <i>healthy</i> with no failure flag (for SGLD, <code>step_bias</code> among them: a mean MALA "
            f"acceptance below what a Gaussian posterior of the same dimension accepts at a step that inflates λ̂ by "
            f"{STEP_BIAS_REL:.0%}) and R̂ &lt; {RHAT_MAX}. On the line of the base config's other values, walking up the step sizes from the "
            f"smallest healthy one, a point joins the plateau while its λ̂ agrees within {AGREE_SE:g} combined SE "
            f"with every healthy point below it. The recommended step size is the largest on the plateau that is at "
            f"most 1/{BACKOFF:g} of the plateau's top: the bias grows about linearly with the step, and the top's "
            "agreement bounds it there only to about 2 combined SE, which the smaller steps' larger SE dominate. "
            "γ and nβ define the posterior, so the rule leaves them to you.")
    return (f'<div class="callout {state}"><div class="callout-title">{esc(title)}</div>'
            f'<p class="rec-setting">{head}</p><p class="why" id="recommendation-why">{esc(why)}</p>{run_line}'
            f'<details><summary>the rule</summary><p class="note">{rule}</p></details></div>')


def _points_table(summary: dict[str, Any]) -> str:
    rows = summary["rows"]
    xf = x_field(summary)
    others = [k for k in summary["axes"] if k != xf]
    chosen = (summary.get("recommended") or {}).get("index")
    axes = [xf, *others]
    has_mala = any(num(r.get("mala_acceptance")) is not None for r in rows)
    has_analytic = any(num(r.get("analytic_llc")) is not None for r in rows)
    headers = [short(k) for k in axes] + ["nβ", "γ", "λ̂ ± SE"] + (["analytic λ", "(λ̂ − λ) / SE"] if has_analytic else []) \
        + ["R̂", "ESS"] + (["MALA acc."] if has_mala else []) + ["healthy", "flags", "run id"]
    body, attrs = [], []
    for i, r in enumerate(rows):
        mean, se = num(r.get("llc_mean")), num(r.get("llc_se"))
        rhat, acc = num(r.get("rhat")), num(r.get("mala_acceptance"))
        row: list[Any] = [cell(value_text(r.get(k)), sort=r.get(k) if isinstance(r.get(k), (int, float)) else None)
                          for k in axes]
        row += [cell(fmt(r.get("nbeta"), ".4g"), sort=num(r.get("nbeta"))),
                cell(fmt(r.get("gamma"), ".4g"), sort=num(r.get("gamma"))),
                cell(f"{fmt(mean, '.4g')} ± {fmt(se, '.2g')}", sort=mean)]
        if has_analytic:
            a = num(r.get("analytic_llc"))
            z = (mean - a) / se if a is not None and mean is not None and se else None
            row += [cell(fmt(a, ".4g"), sort=a),
                    cell(fmt(z, "+.1f"), sort=z, cls="bad" if z is not None and abs(z) > 3 else "")]
        row += [cell(fmt(rhat, ".3f"), sort=rhat, cls="bad" if rhat is None or rhat >= RHAT_MAX else ""),
                cell(fmt(r.get("ess"), ".0f"), sort=num(r.get("ess")))]
        if has_mala:
            floor = _mala_floor(summary)
            row.append(cell(fmt(acc, ".3f"), sort=acc, cls="bad" if None not in (acc, floor) and acc < floor else ""))
        healthy = _is_healthy(r)
        status = ('<span class="badge rec">recommended</span>' if i == chosen else
                  '<span class="ok">yes</span>' if healthy else
                  f'<span class="badge bad" title="{esc("; ".join(unhealthy_reasons(r)))}">no</span>')
        row += [cell(status, raw=True, sort=2 if i == chosen else int(healthy)),
                flags_cell(split_flags(r)),
                cell(r.get("run_id") or "—")]
        body.append(row)
        attrs.append({"class": "recommended" if i == chosen else "" if healthy else "unhealthy",
                      "data-point": str(i)})
    return table(headers, body, cls="sortable", table_id="points", row_attrs=attrs)


def calibration_page(cal_dir: Path, page_dir: Path | None = None, value_budget: int = VALUE_BUDGET) -> Page:
    """The page of one calibration directory."""
    cal_dir = Path(cal_dir)
    page_dir = Path(page_dir) if page_dir is not None else cal_dir
    summary = load_summary(cal_dir)
    if not summary["rows"]:
        raise ReportError(f"{cal_dir}/summary.json: a calibration without grid points")
    t = summary.get("target") or {}
    cid = summary.get("calibration_id") or cal_dir.name
    page = Page("calibration", f"llc calibration {cid}")
    axes_text = " × ".join(f"{esc(short(k))} ({len(v)})" for k, v in summary["axes"].items())
    facts = [f"sampler <b>{esc(summary.get('sampler', '?'))}</b>",
             f"target <b>{esc(t.get('kind', '?'))}</b> {esc(t.get('id', ''))} (d = {esc(t.get('d', '—'))}, "
             f"n = {esc(t.get('n', '—'))})",
             f"{len(summary['rows'])} points: {axes_text}",
             f"{esc(summary.get('batches', '—'))} batched program(s), {fmt(summary.get('wall_s'), '.3g')} s wall: "
             f"{fmt(summary.get('sampling_s'), '.3g')} s sampling, {fmt(summary.get('compile_s'), '.2g')} s compiling"]
    ref = summary.get("reference") or {}
    if num(ref.get("llc_mean")) is not None:
        facts.append(f"reference ({esc(ref.get('kind'))}) λ = <b>{fmt(ref['llc_mean'], '.4g')}</b>"
                     + (f" ± {fmt(ref.get('llc_se'), '.2g')}" if num(ref.get("llc_se")) else ""))
    page.subtitle = " · ".join(facts)
    page.sections.append(section("Recommendation", _recommendation_html(summary, cal_dir, page_dir),
                                 anchor="recommendation"))
    xf = x_field(summary)
    page.sections.append(section(
        f"λ̂ against {'the step size' if xf.endswith('.step_size') else short(xf)}",
        plot_html(grid_figure(summary), "grid", "plot grid-plot"), anchor="grid",
        note="One line per value of the other axes (click the legend to hide one); bands are ± 2 SE; crosses mark "
             "unhealthy points; dotted lines are each line's analytic λ where the target has one. The y range fits "
             "the healthy points: use the autoscale button to see every point. Hover a point for its diagnostics."))
    page.sections.append(section("R̂, ESS and acceptance", plot_html(diagnostics_figure(summary), "diagnostics",
                                                                   "plot diagnostics-plot"),
                                 anchor="diagnostics", note="Dashed red: the rule's thresholds."))
    llc = _read_llc(cal_dir)
    if value_budget < VALUE_BUDGET // 4:  # write_report is shrinking an oversized page
        page.notes.append("Per-point running λ̂ panels left out to keep the page under 5 MB.")
    elif llc is not None and llc.shape[0] == len(summary["rows"]) and llc.shape[0] <= MAX_TRACE_PANELS:
        fig, stride = traces_figure(summary, llc, value_budget)
        shown = f" Shown for display: 1 in {stride} of {llc.shape[2]} draws." if stride > 1 else ""
        if llc.shape[1] > MAX_TRACE_CHAINS:
            shown += f" Chains 0–{MAX_TRACE_CHAINS - 1} of {llc.shape[1]}."
        page.sections.append(section("Running λ̂ of every chain at every point", plot_html(fig, "traces",
                                                                                      "plot traces-plot"),
                                     anchor="traces",
                                     note="From calibration.nc: chains that disagree, or a running mean still "
                                          "drifting, show why a point is unhealthy. Click a chain in the legend to "
                                          "hide it in every panel." + shown))
        if stride > 1:
            page.notes.append(f"Running λ̂ panels show 1 in {stride} of {llc.shape[2]} draws; statistics use every draw.")
    elif llc is None:
        page.notes.append("calibration.nc missing or unreadable: no per-point running λ̂.")
    else:
        page.notes.append(f"{llc.shape[0]} grid points: per-point running λ̂ panels left out (more than "
                          f"{MAX_TRACE_PANELS}).")
    page.sections.append(section(f"Grid points ({len(summary['rows'])})", _points_table(summary), anchor="points",
                                 note="Click a header to sort. Hover 'no' for why a point is unhealthy."))
    files = [(name, cal_dir / name) for name in ("calibration.csv", "calibration.nc", "calibration.png",
                                                 "recommended.toml", "summary.json")]
    links = " · ".join(f'<a href="{esc(rel_link(p, page_dir))}">{esc(n)}</a>' for n, p in files if p.is_file())
    prov = [("calibration id", cid), ("directory", str(cal_dir.resolve())),
            ("axes", "; ".join(f"{k} = {', '.join(value_text(v) for v in vals)}" for k, vals in summary["axes"].items()))]
    page.sections.append(section("Files", f"<p>{links}</p>" + kv_table(prov), anchor="files"))
    return page


def index_rows(root: Path, page_dir: Path) -> list[tuple[float, list[Any]]]:
    """(time, table row) per calibration under ``root``, for the artifacts index."""
    out = []
    for d in find_calibrations(root):
        try:
            s = load_summary(d)
        except ReportError:
            continue
        created = num(read_json_file(d / "manifest.json").get("created")) or (d / "summary.json").stat().st_mtime
        rec = s.get("recommended") or {}
        t = s.get("target") or {}
        if rec.get("index") is not None:
            r = s["rows"][rec["index"]]
            choice = (", ".join(f"{short(k)}={value_text(v)}" for k, v in (rec.get("setting") or {}).items())
                      + f": λ̂ {fmt(r.get('llc_mean'), '.4g')} ± {fmt(r.get('llc_se'), '.2g')}")
        else:
            choice = '<span class="bad-text">no recommendation</span>'
        page_file = d / PAGE_FILE
        link = (f'<a href="{esc(rel_link(page_file, page_dir))}">page</a>' if page_file.is_file()
                else f'<a href="{esc(rel_link(d, page_dir))}/" title="no page yet: llc report {esc(d)}">folder</a>')
        out.append((created, [
            cell(time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(created)), sort=created),
            cell(d.name), cell(s.get("sampler", "—")),
            cell(f"{t.get('kind', '—')} (d={t.get('d', '—')}, n={t.get('n', '—')})"),
            cell(" × ".join(f"{short(k)} ({len(v)})" for k, v in s["axes"].items()), sort=len(s["rows"])),
            cell(choice if rec.get("index") is None else esc(choice), raw=True,
                 title=rec.get("why")),
            cell(link, raw=True)]))
    return out


INDEX_HEADERS = ["created", "calibration", "sampler", "target", "grid", "recommended (hover: why)", "open"]
