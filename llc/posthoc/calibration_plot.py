"""The calibration figure: lambda-hat (± 2 SE) against the step size, one line per other setting."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from llc.posthoc.plots import save_figure


def _label(key: tuple, names: list[str]) -> str:
    return ", ".join(f"{n.rsplit('.', 1)[-1]}={v:g}" if isinstance(v, float) else f"{n.rsplit('.', 1)[-1]}={v}"
                     for n, v in zip(names, key)) or "all points"


def draw(path: Path, summary: dict[str, Any], step_field: str) -> Path:
    """λ̂ ± 2 SE vs ``step_field`` (log x), failed points marked, the reference and the choice shown
    (written atomically by ``plots.save_figure``)."""
    rows = summary["rows"]
    others = [k for k in summary["axes"] if k != step_field]
    x_field = step_field if step_field in summary["axes"] else others[0]
    others = [k for k in others if k != x_field]
    fig = Figure(figsize=(10.5, 4.8), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    lines: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        lines.setdefault(tuple(r[k] for k in others), []).append(r)
    colors = itertools.cycle(["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2"])
    for key, pts in lines.items():
        pts = sorted(pts, key=lambda r: r[x_field])
        color = next(colors)
        xs = [r[x_field] for r in pts]
        ys = [r["llc_mean"] if r["llc_mean"] is not None else float("nan") for r in pts]
        errs = [2 * (r["llc_se"] or 0.0) for r in pts]
        ax.errorbar(xs, ys, yerr=errs, color=color, marker="o", ms=4, capsize=3, lw=1.2, label=_label(key, others))
        if pts[0].get("analytic_llc") is not None:  # the exact value of this line's posterior
            ax.plot([xs[0], xs[-1]], [pts[0]["analytic_llc"]] * 2, ls=":", color=color, lw=1.5)
        bad = [(x, y) for x, y, r in zip(xs, ys, pts) if not r["healthy"]]
        if bad:
            ax.plot(*zip(*bad), "x", color="#c00000", ms=9, mew=2)
    ref = summary.get("reference")
    if rows and rows[0].get("analytic_llc") is not None:
        ax.plot([], [], ls=":", color="k", label="analytic λ of each line")
    elif ref and ref.get("llc_mean") is not None:
        ax.axhline(ref["llc_mean"], color="k", ls="--", lw=1, label=f"{ref['kind']} λ = {ref['llc_mean']:.4g}")
        if ref.get("llc_se"):
            ax.axhspan(ref["llc_mean"] - 2 * ref["llc_se"], ref["llc_mean"] + 2 * ref["llc_se"], color="k", alpha=0.08)
    chosen = summary["recommended"]["index"]
    if chosen is not None:
        r = rows[chosen]
        ax.plot([r[x_field]], [r["llc_mean"]], "o", ms=14, mfc="none", mec="#c00000", mew=2, label="recommended")
    ax.plot([], [], "x", color="#c00000", ms=9, mew=2, label="unhealthy (flag, R̂ or acceptance)")
    ax.set_xscale("log")
    ax.set_xlabel(x_field)
    ax.set_ylabel("λ̂  (± 2 SE)")
    finite = [r["llc_mean"] for r in rows if r["llc_mean"] is not None and r["healthy"]]
    if finite:  # keep the healthy points readable when a blown-up point is far away
        lo, hi = min(finite), max(finite)
        if ref and ref.get("llc_mean") is not None:
            lo, hi = min(lo, ref["llc_mean"]), max(hi, ref["llc_mean"])
        pad = 0.25 * (hi - lo) + 0.05 * abs(hi) + 1e-9
        ax.set_ylim(lo - pad, hi + pad)
    t = summary["target"]
    ax.set_title(f"{summary['sampler']} calibration on {t['kind']} target {t['id']} (d={t['d']}, n={t['n']})",
                 fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    return save_figure(fig, path)
