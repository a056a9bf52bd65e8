"""The trajectory page of ``llc report`` (no JAX): λ̂ across training, one trajectory or several.

One trajectory (``<root>/trajectories/<id>/``, what ``llc trajectory`` wrote: summary.json,
trajectory.csv, trajectory.nc) -> ``report.html``: λ̂ ± 2 SE, train/test accuracy and loss in
stacked panels on one log step axis with a hover that reads every panel at a checkpoint;
curvature (Hessian and Fisher traces, gradient and weight norms); a sortable table with one row
per checkpoint; files and configuration.

Several trajectories -> their λ̂ curves (and accuracy, curvature) overlaid, one colour each, and a
table of the members. A directory holds several when it is ``<root>/trajectories/`` itself (every
trajectory in it) or when its summary.json lists ``members`` (or ``overlay``): paths or ids of
trajectories, optionally each with the ``setting`` that made it. A member is labelled by that
setting, else by the fields in which the members' ``config`` differ, else by its id.

Step 0 (initialisation) has no place on a log axis: it is drawn a third of the smallest positive
step to the left, and its tick reads 0.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from llc.analysis.health import RHAT_MAX
from llc.posthoc.report_html import (CHAIN_COLORS, PAGE_FILE, VALUE_BUDGET, Page, ReportError, base_layout,
                                     cell, esc, f32, flags_cell, flatten, fmt, kv_table, legend_only, log_axis, num,
                                     plot_html, read_json_file, rel_link, rgba, section, split_flags, table,
                                     value_text)
from llc.store.layout import TRAJ_DIR

Member = tuple[Path, dict[str, Any], "dict[str, Any] | None"]  # directory, summary, the setting that made it
BAD = "#c00000"
MAX_LABEL_FIELDS = 3
MAX_OVERLAY_ROWS = 120  # an overlay lists every checkpoint of its members up to this many rows
CURVATURE = (("hessian_trace", "Hessian trace (Hutchinson, ± 2 SE)", "#9467bd"),
             ("fisher_trace", "empirical Fisher trace", "#8c564b"),
             ("grad_norm", "‖∇L_n(w*)‖", "#7f7f7f"), ("weight_norm", "‖w*‖", "#17becf"))
# The grokking probes recorded in training (modular targets): input space, then Adam's dynamics.
INPUT_SPACE = (("jacobian_norm", "Jacobian norm ‖∂logits/∂u‖ (RMS; ± 2 SE)", "#1f77b4"),
               ("input_hessian_trace", "input Hessian trace of the loss (Hutchinson; ± 2 SE)", "#9467bd"),
               ("representation_norm", "representation norm", "#ff7f0e"),
               ("spectral_smoothness", "spectral smoothness (lower = smoother)", "#7f7f7f"))
ADAM = (("effective_lr_mean", "effective learning rate (mean)", "#2ca02c"),
        ("adam_ratio_mean", "|m|/(√v+ε) (mean)", "#d62728"),
        ("update_decay_ratio", "‖update‖ / ‖weight decay‖", "#8c564b"))
ROUTING = (("routing_entropy", "routing entropy (mean over inputs)", "#9467bd"),
           ("head_utilisation", "head utilisation (effective heads / heads)", "#17becf"))
TRAINING = (("train_acc", "train accuracy", "#2ca02c", "solid"), ("test_acc", "test accuracy", "#d62728", "solid"),
            ("train_loss", "train loss", "#2ca02c", "dash"), ("test_loss", "test loss", "#d62728", "dash"))


def is_trajectory(path: Path) -> bool:
    path = Path(path)
    return (path / "summary.json").is_file() and (path / "trajectory.csv").is_file()


def _member_refs(doc: dict[str, Any]) -> list[Any] | None:
    refs = doc.get("members", doc.get("overlay"))
    return refs if isinstance(refs, list) else None


def is_overlay(path: Path) -> bool:
    """A summary listing member trajectories, or a folder of trajectories (no runs in it)."""
    path = Path(path)
    if (path / "summary.json").is_file():
        return _member_refs(read_json_file(path / "summary.json")) is not None
    return (path.is_dir() and not (path / "manifest.json").is_file()
            and any(is_trajectory(d) for d in path.iterdir() if d.is_dir()))


def find_trajectories(root: Path) -> list[Path]:
    """Trajectories and overlays under ``<root>/trajectories``."""
    base = Path(root) / TRAJ_DIR
    if not base.is_dir():
        return []
    return sorted(d for d in base.iterdir() if d.is_dir() and (is_trajectory(d) or is_overlay(d)))


def load_trajectory(path: Path) -> dict[str, Any]:
    doc = read_json_file(Path(path) / "summary.json")
    if not isinstance(doc.get("rows"), list) or not doc["rows"]:
        raise ReportError(f"{path}/summary.json: not a trajectory summary (no checkpoint 'rows')")
    doc["rows"] = sorted(doc["rows"], key=lambda r: num(r.get("step")) or 0.0)
    return doc


def by_group(path: Path, doc: dict[str, Any]) -> list[Member]:
    """A trajectory's members: itself, or one per group of a restriction family (``--restrict
    per-layer``), each with that group's rows, overlaid like trajectories of several settings."""
    groups = doc.get("groups")
    if not groups:
        return [(path, doc, None)]
    return [(path, {**doc, "rows": [r for r in doc["rows"] if r.get("group") == g]}, {"group": g}) for g in groups]


def _resolve(ref: Any, where: Path) -> Path | None:
    """A member given as a path (absolute, relative to the overlay or beside it) or an id."""
    raw = (ref.get("artifacts") or ref.get("path") or ref.get("id")) if isinstance(ref, dict) else ref
    if not raw:
        return None
    raw = Path(str(raw))
    for cand in (raw, where / raw, where.parent / raw, where.parent / raw.name):
        if is_trajectory(cand):
            return cand
    return None


def members_of(path: Path) -> tuple[list[Member], list[str]]:
    """[(directory, summary, setting or None)] of the trajectories a path shows, and the members
    that could not be found."""
    path = Path(path)
    if is_trajectory(path):
        return by_group(path, load_trajectory(path)), []
    refs = _member_refs(read_json_file(path / "summary.json")) if (path / "summary.json").is_file() else None
    out, missing = [], []
    folder = refs is None  # every trajectory in it, ordered by what tells them apart
    if folder:
        refs = [str(d) for d in sorted(path.iterdir()) if d.is_dir() and is_trajectory(d)]
    for ref in refs:
        d = _resolve(ref, path)
        if d is None:
            missing.append(str((ref.get("artifacts") or ref.get("id")) if isinstance(ref, dict) else ref))
            continue
        try:
            out.append((d, load_trajectory(d), ref.get("setting") if isinstance(ref, dict) else None))
        except ReportError:
            missing.append(str(d))
    return (sort_by_setting(out) if folder else out), missing


def _short_keys(keys: list[str]) -> dict[str, str]:
    """Last dotted component, unless two keys share it."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last)}



def _differing(members: list[Member]) -> tuple[list[str], list[dict[str, Any]]]:
    """(the fields in which the members differ, each member's value of every field): from their
    settings when all have one, else from their configs (and samplers) when all have one."""
    if members and all(s for _, _, s in members):
        return list(dict.fromkeys(k for _, _, s in members for k in s)), [dict(s) for _, _, s in members]
    if len(members) > 1 and all(isinstance(doc.get("config"), dict) for _, doc, _ in members):
        flat = [dict(flatten(doc["config"])) | {"sampler": doc.get("sampler")} for _, doc, _ in members]
        keys = [k for k in dict.fromkeys(k for f in flat for k in f)
                if len({json.dumps(f.get(k), sort_keys=True, default=str) for f in flat}) > 1]
        return keys, flat
    return [], [{} for _ in members]


def labels(members: list[Member]) -> tuple[list[str], list[str]]:
    """(a label per member, the fields that tell them apart): ``field=value`` of at most
    MAX_LABEL_FIELDS such fields, else the member's id."""
    keys, values = _differing(members)
    if not keys:
        return [d.name for d, _, _ in members], []
    short = _short_keys(keys)
    more = " …" if len(keys) > MAX_LABEL_FIELDS else ""
    return [", ".join(f"{short[k]}={value_text(v.get(k))}" for k in keys[:MAX_LABEL_FIELDS]) + more
            for v in values], keys


def sort_by_setting(members: list[Member]) -> list[Member]:
    """Members in the order of the values that tell them apart (numbers by size), so that the
    colours of a sequential scale follow the setting."""
    keys, values = _differing(members)

    def key(i: int) -> tuple:
        return tuple((0, float(values[i][k]), "") if num(values[i].get(k)) is not None else (1, 0.0, str(values[i].get(k)))
                     for k in keys)

    return [members[i] for i in sorted(range(len(members)), key=key)]


def _col(rows: list[dict[str, Any]], key: str) -> list[float | None]:
    return [num(r.get(key)) for r in rows]


def _has(rows: list[dict[str, Any]], key: str) -> bool:
    return any(v is not None for v in _col(rows, key))



class StepAxis:
    """Training steps on a log axis: step 0 drawn at a third of the smallest positive step."""

    def __init__(self, steps: list[float]):
        positive = [s for s in steps if s > 0]
        self.low = min(positive) / 3 if positive else 1.0
        top = max(positive) if positive else 10.0
        ticks = [10.0 ** k for k in range(math.ceil(math.log10(min(positive or [1.0]))), math.floor(math.log10(top)) + 1)]
        self.has_zero = any(s <= 0 for s in steps)
        self.tickvals = ([self.low] if self.has_zero else []) + ticks
        self.ticktext = (["0"] if self.has_zero else []) + [f"{int(t):,}" if t >= 1 else f"{t:g}" for t in ticks]

    def x(self, steps: list[Any]) -> list[float]:
        return [float(s) if num(s) is not None and float(s) > 0 else self.low for s in steps]

    def axis(self, **kwargs: Any) -> dict[str, Any]:
        return {"type": "log", "tickmode": "array", "tickvals": self.tickvals, "ticktext": self.ticktext,
                "title": {"text": "training step (log scale" + ("; 0 = initialisation)" if self.has_zero else ")")},
                **kwargs}




def _chain_means(traj_dir: Path, steps: list[Any]) -> np.ndarray | None:
    """Per-chain mean λ̂ at every checkpoint (step, chain) from trajectory.nc, or None."""
    import xarray as xr

    path = Path(traj_dir) / "trajectory.nc"
    if not path.is_file():
        return None
    try:
        with xr.open_dataset(path, engine="h5netcdf") as ds:
            if "llc" not in ds or ds["llc"].dims[0] != "step":
                return None
            order = {int(s): i for i, s in enumerate(ds["step"].values)}
            means = np.nanmean(np.asarray(ds["llc"].values, dtype=np.float64), axis=-1)
    except (OSError, ValueError, KeyError):
        return None
    if any(num(s) is None or int(s) not in order for s in steps):
        return None
    return means[[order[int(s)] for s in steps]]


def member_colors(n: int) -> list[str]:
    """One colour per overlaid trajectory: the categorical palette up to its size, beyond it a
    sequential scale (members are in the order of their setting, so neighbours stay alike)."""
    if n <= len(CHAIN_COLORS):
        return list(CHAIN_COLORS[:n])
    from plotly.colors import sample_colorscale, unlabel_rgb

    return ["#%02x%02x%02x" % tuple(int(v) for v in unlabel_rgb(c))
            for c in sample_colorscale("Viridis", [0.88 * i / (n - 1) for i in range(n)])]


def _stacked(n_panels: int, heights: list[float], gap: float = 0.07) -> list[tuple[float, float]]:
    """Vertical domains, top to bottom, of panels sharing one x axis."""
    total = sum(heights) + gap * (n_panels - 1)
    out, top = [], 1.0
    for h in heights:
        size = h / total
        out.append((max(0.0, top - size), top))
        top -= size + gap / total
    return out


def _llc_traces(fig, rows: list[dict], xs: list, color: str, group: str, label: str, name: str, single: bool) -> None:
    """One member's λ̂ line (open markers where R̂ is high) over its ± 2 SE band."""
    import plotly.graph_objects as go

    llc, se = _col(rows, "llc_mean"), [v or 0.0 for v in _col(rows, "llc_se")]
    ok = [i for i, v in enumerate(llc) if v is not None]
    if ok:
        bx = [xs[i] for i in ok]
        fig.add_trace(go.Scatter(x=f32(bx + bx[::-1]),
                                 y=f32([llc[i] + 2 * se[i] for i in ok] + [llc[i] - 2 * se[i] for i in ok][::-1]),
                                 mode="lines", fill="toself", fillcolor=rgba(color, 0.18), line={"width": 0},
                                 hoverinfo="skip", legendgroup=group, showlegend=single, name="± 2 SE"))
    symbols = [100 if (num(r.get("rhat")) or 0) >= RHAT_MAX else 0 for r in rows]  # 100: circle-open
    # Hover from numbers, not per-point text, so that an overlay of many trajectories stays small;
    # x is the step (step 0 sits at a fraction of a step: rounded, it reads 0).
    custom = [[e, num(r.get("rhat")), num(r.get("test_acc"))] for e, r in zip(se, rows)]
    if single:  # the unified hover lists every panel's trace at the step: λ̂'s entry stays one line
        hover = "λ̂ %{y:.4g} ± %{customdata[0]:.2g} (R̂ %{customdata[1]:.3f})<extra></extra>"
    else:
        hover = (f"<b>{esc(name)}</b><br>step %{{x:,.0f}}<br>λ̂ %{{y:.4g}} ± %{{customdata[0]:.2g}} "
                 "(R̂ %{customdata[1]:.3f})<br>test accuracy %{customdata[2]:.3f}<extra></extra>")
    fig.add_trace(go.Scatter(
        x=f32(xs), y=f32(llc), mode="lines+markers", name=label, legendgroup=group, customdata=f32(custom),
        line={"color": color, "width": 2.2}, marker={"size": 7, "color": color, "symbol": symbols,
                                                      "line": {"width": 1.5, "color": color}},
        hovertemplate=hover))


def _chain_mean_traces(fig, xs: list, cm: np.ndarray) -> None:
    """Each chain's mean λ̂ per checkpoint, hidden until asked for in the legend."""
    import plotly.graph_objects as go

    for c in range(cm.shape[1]):
        fig.add_trace(go.Scatter(x=f32(xs), y=cm[:, c].astype(np.float32), mode="markers", name="chain means",
                                 legendgroup="chains", showlegend=c == 0, visible="legendonly",
                                 marker={"size": 5, "color": "rgba(60,60,60,0.45)"},
                                 hovertemplate=f"chain {c}: %{{y:.4g}}<extra></extra>"))


def _metric_traces(fig, rows: list[dict], xs: list, yname: dict[str, str], color: str, group: str, name: str,
                   single: bool) -> None:
    """One member's accuracy and loss curves, on the panels that exist."""
    import plotly.graph_objects as go

    for key, title, tcolor, dash in TRAINING:
        panel = "acc" if key.endswith("acc") else "loss"
        if panel not in yname or not _has(rows, key):
            continue
        is_test = key.startswith("test")
        fig.add_trace(go.Scatter(
            x=f32(xs), y=f32(_col(rows, key)), mode="lines+markers" if single else "lines", yaxis=yname[panel],
            name=title if single else f"{name}: {title}", legendgroup=group if not single else key,
            showlegend=single, line={"color": tcolor if single else color,
                                     "dash": ("solid" if is_test else "dot") if not single else dash,
                                     "width": 1.8 if is_test or single else 1.2},
            marker={"size": 4}, hovertemplate=f"{title} %{{y:.4g}}<extra>{'' if single else esc(name)}</extra>"))


def _key_traces(fig, all_rows: list[dict], flagged: list[tuple[Any, Any, str]], single: bool) -> None:
    """After the members: crosses on flagged checkpoints and legend entries explaining the marks."""
    import plotly.graph_objects as go

    if flagged:
        flagged_x, flagged_y, flagged_text = (list(v) for v in zip(*flagged))
        fig.add_trace(go.Scatter(x=flagged_x, y=flagged_y, mode="markers", name="flagged checkpoint",
                                 marker={"symbol": "x-thin", "size": 14, "line": {"color": BAD, "width": 3}},
                                 text=flagged_text, hovertemplate="flags: %{text}<extra></extra>"))
    if any((num(r.get("rhat")) or 0) >= RHAT_MAX for r in all_rows):
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=f"open marker: R̂ ≥ {RHAT_MAX}",
                                 marker={"symbol": "circle-open", "size": 8, "color": "#444"}, hoverinfo="skip"))
    if not single:
        fig.add_trace(legend_only("accuracy and loss: test solid, train dotted", {"color": "#444"}))


def _training_layout(ax: StepAxis, panels: list[str], heights: dict[str, float], yname: dict[str, str],
                     all_rows: list[dict], single: bool) -> dict[str, Any]:
    """The stacked panels' axes on one step axis, and the x / λ̂ log-linear buttons."""
    layout: dict[str, Any] = {"xaxis": ax.axis(anchor=yname[panels[-1]], showspikes=True, spikemode="across",
                                               spikethickness=1, spikecolor="#999", spikedash="dot",
                                               # x of step 0 is a fraction of a step: rounded, it reads 0
                                               unifiedhovertitle={"text": "<b>step %{x:,.0f}</b>"})}
    titles = {"y": "λ̂ (band: ± 2 SE)", "acc": "accuracy", "loss": "loss (log)"}
    domains = _stacked(len(panels), [heights[p] for p in panels])
    for p, (lo, hi) in zip(panels, domains):
        key = "yaxis" if yname[p] == "y" else f"yaxis{yname[p][1:]}"
        layout[key] = {"domain": [lo, hi], "anchor": "x", "title": {"text": titles[p]},
                       **(log_axis([v for r in all_rows for v in (num(r.get("train_loss")), num(r.get("test_loss")))])
                          if p == "loss" else {}), **({"range": [-0.03, 1.03]} if p == "acc" else {})}
    buttons = [{"label": "x log", "method": "relayout", "args": [{"xaxis.type": "log", "xaxis.tickmode": "array"}]},
               {"label": "x linear", "method": "relayout", "args": [{"xaxis.type": "linear", "xaxis.tickmode": "auto"}]}]
    return base_layout(
        height=int(260 * sum(heights[p] for p in panels) + 140), hovermode="x unified" if single else "closest",
        hoversubplots="axis", margin={"l": 70, "r": 20, "t": 40, "b": 50},
        updatemenus=[{"type": "buttons", "direction": "right", "buttons": buttons, "x": 0.0, "y": 1.0,
                      "xanchor": "left", "yanchor": "bottom", "pad": {"b": 6}, "showactive": True},
                     # λ̂ spans decades across grokking (≈ 30 while memorising, ≈ 0.005 after)
                     {"type": "buttons", "direction": "right", "x": 0.2, "y": 1.0, "xanchor": "left",
                      "yanchor": "bottom", "pad": {"b": 6}, "showactive": True,
                      "buttons": [{"label": "λ̂ linear", "method": "relayout",
                                   "args": [{"yaxis.type": "linear", "yaxis.dtick": None, "yaxis.tickformat": None}]},
                                  {"label": "λ̂ log", "method": "relayout", "args": [{
                                      f"yaxis.{k}": v for k, v in log_axis(
                                          [num(r.get("llc_mean")) for r in all_rows]).items()}]}]}],
        legend={"title": {"text": "click: hide / show"}, "groupclick": "togglegroup"}, **layout)


def training_figure(members: list[Member], names: list[str], chain_means: list[np.ndarray | None],
                    compact: bool = False):
    """λ̂ ± 2 SE, accuracy and loss against the step, stacked on one x axis; one hover reads every
    panel at a checkpoint. With several members, one colour per member; ``compact``: no loss panel."""
    import plotly.graph_objects as go

    single = len(members) == 1
    all_rows = [r for _, doc, _ in members for r in doc["rows"]]
    ax = StepAxis([num(r.get("step")) or 0.0 for r in all_rows])
    has_acc = any(_has(all_rows, k) for k in ("train_acc", "test_acc"))
    has_loss = not compact and any(_has(all_rows, k) for k in ("train_loss", "test_loss"))
    panels = ["y"] + (["acc"] if has_acc else []) + (["loss"] if has_loss else [])
    heights = {"y": 1.5, "acc": 1.0, "loss": 0.8}
    yname = {p: ("y" if i == 0 else f"y{i + 1}") for i, p in enumerate(panels)}
    fig = go.Figure()
    flagged = []  # (step x, λ̂, flags) of every flagged checkpoint, drawn over all members
    for m, ((d, doc, _), name) in enumerate(zip(members, names)):
        rows = doc["rows"]
        color = "#1f5fbf" if single else member_colors(len(members))[m]
        xs = ax.x([r.get("step") for r in rows])
        group = f"m{m}"
        label = f"λ̂ ({doc.get('sampler', '?')})" if single else name
        _llc_traces(fig, rows, xs, color, group, label, name, single)
        flagged += [(x, y, esc("; ".join(split_flags(r)))) for r, x, y in zip(rows, xs, _col(rows, "llc_mean"))
                    if split_flags(r) and y is not None]
        if single and chain_means[m] is not None:
            _chain_mean_traces(fig, xs, chain_means[m])
        _metric_traces(fig, rows, xs, yname, color, group, name, single)
    _key_traces(fig, all_rows, flagged, single)
    fig.update_layout(**_training_layout(ax, panels, heights, yname, all_rows, single))
    return fig


def curvature_figure(members: list[Member], names: list[str], compact: bool = False, spec=CURVATURE):
    """Hessian and Fisher traces, gradient and weight norms at each checkpoint (log y), side by side;
    ``compact``: the Hessian trace alone. ``spec``: other (column, title, colour) panels, e.g.
    INPUT_SPACE; a column with a ``<column>_se`` twin gets a ± 2 SE band."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    single = len(members) == 1
    all_rows = [r for _, doc, _ in members for r in doc["rows"]]
    panels = [(k, t, c) for k, t, c in spec if _has(all_rows, k) and (not compact or k == "hessian_trace")]
    if not panels:
        return None
    if single:  # the two traces in one panel (same units), the norms beside it
        layout_panels = [[p for p in panels if p[0] in ("hessian_trace", "fisher_trace")],
                         *[[p] for p in panels if p[0] not in ("hessian_trace", "fisher_trace")]]
        layout_panels = [lp for lp in layout_panels if lp]
    else:
        layout_panels = [[p] for p in panels]
    titles = [" and ".join(t.split(" (")[0] for _, t, _ in lp) for lp in layout_panels]
    fig = make_subplots(rows=1, cols=len(layout_panels), subplot_titles=titles, horizontal_spacing=0.06)
    ax = StepAxis([num(r.get("step")) or 0.0 for r in all_rows])
    for c, lp in enumerate(layout_panels, start=1):
        for key, title, color in lp:
            for m, ((_, doc, _), name) in enumerate(zip(members, names)):
                rows = doc["rows"]
                lc = color if single else member_colors(len(members))[m]
                xs = ax.x([r.get("step") for r in rows])
                ys = [abs(v) if v is not None else None for v in _col(rows, key)]
                group = key if single else f"m{m}"
                if _has(rows, f"{key}_se"):
                    se = [v or 0.0 for v in _col(rows, f"{key}_se")]
                    ok = [i for i, v in enumerate(ys) if v is not None]
                    hi = [ys[i] + 2 * se[i] for i in ok]
                    lo = [max(ys[i] - 2 * se[i], 1e-12) for i in ok]
                    bx = [xs[i] for i in ok]
                    fig.add_trace(go.Scatter(x=f32(bx + bx[::-1]), y=f32(hi + lo[::-1]), mode="lines", fill="toself",
                                             fillcolor=rgba(lc, 0.18), line={"width": 0}, hoverinfo="skip",
                                             showlegend=False, legendgroup=group), row=1, col=c)
                fig.add_trace(go.Scatter(
                    x=f32(xs), y=f32(ys), mode="lines+markers", name=title if single else name, legendgroup=group,
                    showlegend=single or c == 1, line={"color": lc, "width": 1.8}, marker={"size": 5},
                    hovertemplate=f"{esc(name) + '<br>' if not single else ''}step %{{x:,.0f}}<br>{title}: "
                                  "%{y:.4g}<extra></extra>"), row=1, col=c)
        fig.update_xaxes(row=1, col=c, **ax.axis())
        fig.update_yaxes(row=1, col=c, **log_axis([num(r.get(k)) for r in all_rows for k, _, _ in lp]))
    fig.update_layout(**base_layout(height=380, margin={"l": 60, "r": 20, "t": 40, "b": 50},
                                    legend={"orientation": "h", "y": -0.28, "x": 0}))
    fig.update_annotations(font_size=12)
    return fig


def _checkpoint_table(members: list[Member], names: list[str]) -> str:
    single = len(members) == 1
    all_rows = [r for _, doc, _ in members for r in doc["rows"]]
    cols = [(k, t, s) for k, t, s in (
        ("train_acc", "train acc", ".3f"), ("test_acc", "test acc", ".3f"), ("train_loss", "train loss", ".4g"),
        ("test_loss", "test loss", ".4g"), ("L0", "L₀", ".4g"), ("hessian_trace", "tr H", ".4g"),
        ("fisher_trace", "tr F", ".4g"), ("grad_norm", "‖∇L‖", ".3g"), ("weight_norm", "‖w‖", ".4g"))
        if _has(all_rows, k)]
    headers = ([] if single else ["trajectory"]) + ["step", "λ̂ ± SE", "R̂", "ESS"] + [t for _, t, _ in cols] + ["flags"]
    body, attrs = [], []
    for (_, doc, _), name in zip(members, names):
        for r in doc["rows"]:
            mean, rhat = num(r.get("llc_mean")), num(r.get("rhat"))
            row: list[Any] = [] if single else [cell(name)]
            row += [cell(esc(r.get("step")), sort=num(r.get("step"))),
                    cell(f"{fmt(mean, '.4g')} ± {fmt(r.get('llc_se'), '.2g')}", sort=mean),
                    cell(fmt(rhat, ".3f"), sort=rhat,
                         cls="bad" if rhat is not None and rhat > 1.1 else "warn" if rhat is not None and rhat >= RHAT_MAX else ""),
                    cell(fmt(r.get("ess"), ".0f"), sort=num(r.get("ess")))]
            for key, _, spec in cols:
                v = num(r.get(key))
                if key == "hessian_trace" and num(r.get("hessian_trace_se")) is not None:
                    row.append(cell(f"{fmt(v, spec)} ± {fmt(r['hessian_trace_se'], '.2g')}", sort=v))
                else:
                    row.append(cell(fmt(v, spec), sort=v))
            row.append(flags_cell(split_flags(r)))
            body.append(row)
            attrs.append({"class": "flagged" if split_flags(r) else ""})
    return table(headers, body, cls="sortable", table_id="checkpoints", row_attrs=attrs)


def _members_table(members: list[Member], names: list[str],
                   page_dir: Path) -> str:
    headers = ["trajectory", "id", "sampler", "target", "checkpoints", "final λ̂ ± SE", "peak λ̂ (step)",
               "final train / test acc", "flagged", "open"]
    body = []
    for (d, doc, _), name in zip(members, names):
        rows = doc["rows"]
        last = rows[-1]
        llc = _col(rows, "llc_mean")
        finite = [(v, r.get("step")) for v, r in zip(llc, rows) if v is not None]
        peak = max(finite, key=lambda x: x[0]) if finite else (None, None)
        t = doc.get("target") or {}
        n_flag = sum(bool(split_flags(r)) for r in rows)
        body.append([cell(name), cell(d.name), cell(doc.get("sampler", "—")),
                     cell(f"{t.get('kind', '—')} {t.get('id', '')}"), cell(str(len(rows)), sort=len(rows)),
                     cell(f"{fmt(last.get('llc_mean'), '.4g')} ± {fmt(last.get('llc_se'), '.2g')}",
                          sort=num(last.get("llc_mean"))),
                     cell(f"{fmt(peak[0], '.4g')} ({esc(peak[1])})", sort=peak[0]),
                     cell(f"{fmt(last.get('train_acc'), '.3f')} / {fmt(last.get('test_acc'), '.3f')}",
                          sort=num(last.get("test_acc"))),
                     cell(str(n_flag), sort=n_flag, cls="bad" if n_flag else ""),
                     cell(_open_link(d, page_dir), raw=True)])
    return table(headers, body, cls="sortable textual", table_id="members")


def _open_link(d: Path, page_dir: Path) -> str:
    page_file = d / PAGE_FILE
    if page_file.is_file():
        return f'<a href="{esc(rel_link(page_file, page_dir))}">page</a>'
    return f'<a href="{esc(rel_link(d, page_dir))}/" title="no page yet: llc report {esc(d)}">folder</a>'


def trajectory_page(path: Path, page_dir: Path | None = None, value_budget: int = VALUE_BUDGET) -> Page:
    """The page of one trajectory directory, or of several overlaid."""
    path = Path(path)
    page_dir = Path(page_dir) if page_dir is not None else path
    members, missing = members_of(path)
    if not members:
        raise ReportError(f"{path}: no trajectory (summary.json with checkpoint rows and trajectory.csv) found"
                          + (f"; missing members: {', '.join(missing)}" if missing else ""))
    single = len(members) == 1 and is_trajectory(path)
    names, fields = labels(members)
    if single:
        d, doc, _ = members[0]
        t = doc.get("target") or {}
        page = Page("trajectory", f"llc trajectory {d.name}")
        rows = doc["rows"]
        flagged = sum(bool(split_flags(r)) for r in rows)
        page.subtitle = " · ".join([
            f"sampler <b>{esc(doc.get('sampler', '?'))}</b>",
            f"target <b>{esc(t.get('kind', '?'))}</b> {esc(t.get('id', ''))} (d = {esc(t.get('d', '—'))}, "
            f"n = {esc(t.get('n', '—'))})",
            f"{len(rows)} checkpoints, steps {esc(rows[0].get('step'))}–{esc(rows[-1].get('step'))}",
            f"final λ̂ = <b>{fmt(rows[-1].get('llc_mean'), '.4g')}</b> ± {fmt(rows[-1].get('llc_se'), '.2g')}",
            f"{flagged} flagged", f"{fmt(doc.get('wall_s'), '.3g')} s ({fmt(doc.get('compile_s'), '.2g')} s compiling)"])
    else:
        page = Page("trajectory", f"llc trajectories overlaid: {len(members)} in {path.name}")
        page.subtitle = (f"{len(members)} trajectories" + (f" differing in {esc(', '.join(fields))}" if fields else "")
                         + f" · {esc(path.resolve())}")
    chain_means = [_chain_means(d, [r.get("step") for r in doc["rows"]]) if single else None for d, doc, _ in members]
    # write_report lowers the budget when a page came out too large: an overlay then drops its loss
    # panel and all curvature but the Hessian trace.
    compact = not single and value_budget < VALUE_BUDGET
    if compact:
        page.notes.append("Overlay shortened to stay under 5 MB: no loss panel; curvature: the Hessian trace only.")
    page.sections.append(section(
        "λ̂ across training" if single else "λ̂ across training, overlaid",
        plot_html(training_figure(members, names, chain_means, compact), "training", "plot training-plot"),
        anchor="training",
        note=("Hover a checkpoint: one label reads λ̂, accuracy and loss there. Open markers: R̂ ≥ "
              f"{RHAT_MAX} (chains disagree; the SE understates the error); crosses: flagged checkpoints. "
              "'chain means' (legend) shows each chain's mean λ̂. Drag to zoom; the buttons switch the step axis "
              "and λ̂ between log and linear scales." if single else
              "One colour per trajectory (click the legend to hide one); bands are ± 2 SE; accuracy and loss: test "
              "solid, train dotted. Hover a point for that checkpoint.")))
    curv = curvature_figure(members, names, compact)
    if curv is not None:
        page.sections.append(section("Curvature at each checkpoint", plot_html(curv, "curvature", "plot curvature-plot"),
                                     anchor="curvature",
                                     note="At w* = the checkpoint, on the full training set: Hessian trace "
                                          "(Hutchinson estimate; band ± 2 SE), empirical Fisher trace, gradient norm "
                                          "and weight norm (log scales)."))
    for spec, title, anchor, note in (
            (INPUT_SPACE, "Input space at each checkpoint", "input-space",
             "Recorded in training on the p² inputs: derivatives with respect to the network's continuous input u "
             "(one-hot codes of the MLP, token embeddings of the transformer); Jacobian and Hessian by random "
             "probes (band ± 2 SE); the hidden state before the unembedding; the power-weighted mean frequency "
             "of the output over (a, b)."),
            (ADAM, "Adam's dynamics at each checkpoint", "adam",
             "From the optimizer's bias-corrected moments m, v after the step: lr/(√v+ε) and |m|/(√v+ε) averaged "
             "over every coordinate; Adam's step against the weight decay's over the decayed weights."),
            (ROUTING, "Routing at each checkpoint", "routing",
             "Routed networks: the entropy of each input's gate weights (0: one head), and exp(entropy of the "
             "mean gate) / heads, the share of heads in use across inputs.")):
        fig = None if compact else curvature_figure(members, names, spec=spec)
        if fig is not None:
            page.sections.append(section(title, plot_html(fig, anchor, "plot curvature-plot"), anchor=anchor,
                                         note=note))
    if not single:
        page.sections.append(section(f"Trajectories ({len(members)})", _members_table(members, names, page_dir),
                                     anchor="members",
                                     note="Labels name the fields in which the trajectories differ"
                                          + (f" ({esc(', '.join(fields))})." if fields else " (ids: no configs to compare).")))
    n_rows = sum(len(doc["rows"]) for _, doc, _ in members)
    if single or n_rows <= MAX_OVERLAY_ROWS * value_budget / VALUE_BUDGET:
        page.sections.append(section(f"Checkpoints ({n_rows})", _checkpoint_table(members, names),
                                     anchor="checkpoints", note="Click a header to sort."))
    else:  # ~1 kB of HTML a row: the page would outgrow its size budget
        page.notes.append(f"{n_rows} checkpoints in all: their table is on each trajectory's own page "
                          "(llc report <trajectory>).")
    if missing:
        page.notes.append("Members not found: " + ", ".join(missing) + ".")
    if single:
        d, doc, _ = members[0]
        files = [(n, d / n) for n in ("trajectory.csv", "trajectory.nc", "trajectory.png", "summary.json")]
        links = " · ".join(f'<a href="{esc(rel_link(p, page_dir))}">{esc(n)}</a>' for n, p in files if p.is_file())
        body = f"<p>{links}</p>" + kv_table([("trajectory id", d.name), ("directory", str(d.resolve())),
                                            ("sampler", doc.get("sampler")),
                                            ("computed now / checkpoints", f"{doc.get('computed', '—')} / "
                                                                           f"{doc.get('checkpoints', len(doc['rows']))}")])
        if isinstance(doc.get("config"), dict):
            body += f"<details><summary>configuration</summary>{kv_table(flatten(doc['config']))}</details>"
        page.sections.append(section("Files and configuration", body, anchor="files"))
    return page


def index_rows(root: Path, page_dir: Path) -> list[tuple[float, list[Any]]]:
    """(time, table row) per trajectory or overlay under ``root``, for the artifacts index."""
    out = []
    for d in find_trajectories(root):
        created = (d / "summary.json").stat().st_mtime if (d / "summary.json").is_file() else d.stat().st_mtime
        stamp = cell(time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(created)), sort=created)
        if is_trajectory(d):
            try:
                doc = load_trajectory(d)
            except ReportError:
                continue
            rows, t = doc["rows"], doc.get("target") or {}
            last = rows[-1]
            what = f"{t.get('kind', '—')} {t.get('id', '')}, {doc.get('sampler', '?')}"
            summary = (f"{len(rows)} checkpoints to step {last.get('step')}; final λ̂ {fmt(last.get('llc_mean'), '.4g')}"
                       f" ± {fmt(last.get('llc_se'), '.2g')}, test acc {fmt(last.get('test_acc'), '.3f')}")
        else:
            members, missing = members_of(d)
            names, fields = labels(members)
            what = f"overlay of {len(members)}" + (f" ({', '.join(fields)})" if fields else "")
            summary = "; ".join(names) + (f" ({len(missing)} missing)" if missing else "")
        out.append((created, [stamp, cell(d.name), cell(what), cell(summary), cell(_open_link(d, page_dir), raw=True)]))
    return out


INDEX_HEADERS = ["modified", "trajectory", "what", "summary", "open"]
