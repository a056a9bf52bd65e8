"""Building blocks of ``llc report`` pages (no JAX): the page record, escaped HTML tables and
sections, Plotly figures as divs sharing one inlined library, the shared figure layout, relative
links, and thinning of long series for display. Every page kind (``llc.posthoc.report`` and the
calibration / trajectory modules beside it) is built from these."""

from __future__ import annotations

import html
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llc.analysis.flags import split_flags as flags_in_text

PAGE_FILE = "report.html"
INDEX_FILE = "index.html"
# Plotted values per page (float32, base64: ~5.3 bytes each): ~75 kB of data beside the 4.8 MB library.
VALUE_BUDGET = 14_000
RUNNING_POINTS = 200  # a running mean is smooth: 200 points draw it exactly enough
MIN_TRACE_POINTS = 40
MAX_LAGS = 60
MAX_PAGE_BYTES = 4_950_000  # a page that would be larger is drawn again with half the plotted values
CHAIN_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                "#bcbd22", "#17becf")
PLOT_CONFIG = {"displaylogo": False, "responsive": True,
               "toImageButtonOptions": {"format": "png", "scale": 2}}
OK_STATUS = ("done", "cached")


class ReportError(ValueError):
    """A path that cannot be reported on; one line naming it."""


@dataclass
class Page:
    kind: str
    title: str
    subtitle: str = ""
    sections: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- HTML building blocks

def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def fmt(value: Any, spec: str = ".3g") -> str:
    if value is None or value == "":
        return "—"
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    if not math.isfinite(number):
        return str(number)
    return format(number, spec)


def num(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def cell(text: Any, *, sort: Any = None, cls: str = "", raw: bool = False, title: str | None = None) -> dict[str, Any]:
    """A table cell: shown text (escaped unless ``raw``), the value it sorts by, a CSS class."""
    return {"html": text if raw else esc(text), "sort": sort, "cls": cls, "title": title}


def table(headers: list[str], rows: list[list[Any]], *, cls: str = "", table_id: str | None = None,
          row_attrs: list[dict[str, str]] | None = None) -> str:
    """An HTML table; a cell is plain text or a ``cell(...)``. ``cls="sortable"`` makes the headers sort it."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = []
    for i, row in enumerate(rows):
        tds = []
        for c in row:
            c = c if isinstance(c, dict) else cell(c)
            attrs = ""
            if c.get("sort") is not None:
                attrs += f' data-sort="{esc(c["sort"])}"'
            if c.get("cls"):
                attrs += f' class="{esc(c["cls"])}"'
            if c.get("title"):
                attrs += f' title="{esc(c["title"])}"'
            tds.append(f"<td{attrs}>{c['html']}</td>")
        extra = "".join(f' {k}="{esc(v)}"' for k, v in (row_attrs[i] if row_attrs else {}).items())
        body.append(f"<tr{extra}>{''.join(tds)}</tr>")
    tid = f' id="{esc(table_id)}"' if table_id else ""
    return (f'<div class="table-wrap"><table{tid} class="{esc(cls)}"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table></div>")


def section(title: str, body: str, *, anchor: str | None = None, note: str = "") -> str:
    aid = f' id="sec-{esc(anchor)}"' if anchor else ""  # prefixed: tables and plots have ids of their own
    note_html = f'<p class="note">{note}</p>' if note else ""
    return f"<section{aid}><h2>{esc(title)}</h2>{note_html}{body}</section>"


def badges(flags: Any) -> str:
    """Failure flags as badges; a flag is a string or a dict with a name/code and a message."""
    if not flags:
        return ""
    out = []
    for flag in flags if isinstance(flags, (list, tuple)) else [flags]:
        if isinstance(flag, dict):
            name = flag.get("name") or flag.get("code") or flag.get("flag") or "flag"
            detail = flag.get("message") or flag.get("detail") or json.dumps(flag)
        else:
            name, detail = str(flag), str(flag)
        out.append(f'<span class="badge bad" title="{esc(detail)}">{esc(name)}</span>')
    return " ".join(out)


def flags_cell(flags: Any, empty: str = "") -> dict[str, Any]:
    """A table cell of failure flags as badges, sorted by their number; ``td.flags`` wraps their text
    (a flag's message is a sentence: unwrapped, it pushed the table's other columns off-screen)."""
    count = len(flags) if isinstance(flags, (list, tuple)) else int(bool(flags))
    return cell(badges(flags) or empty, raw=True, sort=count, cls="flags")


def kv_table(items: list[tuple[str, Any]]) -> str:
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in items)
    return f'<div class="table-wrap"><table class="kv"><tbody>{rows}</tbody></table></div>'


def plot_html(fig: Any, div_id: str, cls: str = "plot") -> str:
    """One Plotly figure as a div + the script that draws it (the library is in the page's head)."""
    import plotly.graph_objects as go

    # Assigned, not merged: Plotly's default template would add ~10 kB of JSON to every figure.
    fig.layout.template = go.layout.Template(layout={"xaxis": AXIS, "yaxis": AXIS})
    inner = fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"plot-{div_id}", config=PLOT_CONFIG,
                        default_width="100%", default_height=f"{int(fig.layout.height or 450)}px")
    return f'<div class="{esc(cls)}" data-plot="{esc(div_id)}">{inner}</div>'


AXIS = {"gridcolor": "#e8e8e8", "zeroline": False, "linecolor": "#999", "ticks": "outside", "tickcolor": "#999",
        "automargin": True, "showline": True}


def base_layout(**kwargs: Any) -> dict[str, Any]:
    """The layout every figure shares, plus ``kwargs``."""
    base = {"font": {"family": "system-ui, -apple-system, Segoe UI, Roboto, sans-serif", "size": 12, "color": "#222"},
            "paper_bgcolor": "white", "plot_bgcolor": "white", "hovermode": "closest",
            "margin": {"l": 60, "r": 20, "t": 50, "b": 50},
            "legend": {"bgcolor": "rgba(255,255,255,0.85)", "font": {"size": 11}},
            "colorway": list(CHAIN_COLORS)}
    base.update(kwargs)
    return base


def rel_link(target: Path, page_dir: Path) -> str:
    """A relative link from the page's folder (works from file:// wherever the folder is copied)."""
    try:
        rel = os.path.relpath(Path(target).resolve(), Path(page_dir).resolve())
    except ValueError:  # another drive (Windows)
        rel = Path(target).resolve().as_uri()
    return rel.replace(os.sep, "/")


# --------------------------------------------------------------------------- data helpers

def stride_for(draws: int, points: int) -> int:
    return max(1, math.ceil(draws / max(points, 1)))


def thin(values: np.ndarray, stride: int) -> np.ndarray:
    """Every ``stride``-th value along the last axis, as float32 (compact inline data); plotted
    with ``x0``/``dx`` so that no x array is stored."""
    return np.asarray(values)[..., ::stride].astype(np.float32)

def read_json_file(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def legend_only(name: str, line: dict[str, Any]) -> Any:
    """A legend entry for a reference line or band (annotations inside the panels hide the data)."""
    import plotly.graph_objects as go

    return go.Scatter(x=[None], y=[None], mode="lines", line=line, name=name, hoverinfo="skip")


def flatten(obj: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(obj, dict):
        out: list[tuple[str, Any]] = []
        for k, v in obj.items():
            out.extend(flatten(v, f"{prefix}{k}."))
        return out
    if isinstance(obj, list):
        return [(prefix[:-1], ", ".join(map(str, obj)))]
    return [(prefix[:-1], obj)]


def log_axis(values: Any) -> dict[str, Any]:
    """A log axis whose labels are whole numbers: 1-2-5 ticks over up to three decades, decades beyond
    (Plotly's default labels minor ticks by their first digit only, so 20 reads "2")."""
    v = np.abs(np.asarray([x for x in np.ravel(np.asarray(values, dtype=object)) if x is not None], dtype=np.float64))
    v = v[np.isfinite(v) & (v > 0)]
    decades = math.log10(v.max() / v.min()) if v.size else 0.0
    return {"type": "log", "tickformat": "~g", "dtick": "D2" if decades <= 3 else 1}


def value_text(v: Any) -> str:
    """A setting's value as a person writes it: 0.0003, 100, relu."""
    return format(v, "g") if isinstance(v, float) else str(v)


def rgba(hex_color: str, alpha: float) -> str:
    h = hex_color.lstrip("#")
    return f"rgba({int(h[0:2], 16)},{int(h[2:4], 16)},{int(h[4:6], 16)},{alpha})"


def split_flags(row: dict[str, Any]) -> list[str]:
    """A row's failure flags: a list, or the "; "-joined string of a CSV or summary row."""
    flags = row.get("flags") or []
    return flags_in_text(flags) if isinstance(flags, str) else list(flags)


def f32(values: Any) -> np.ndarray:
    """Numbers (None for a gap) as float32: Plotly writes them as base64 (~5 bytes each) instead of
    full-precision decimal text (~19), which keeps pages of many curves within their size."""
    return np.asarray([[np.nan if v is None else v for v in row] if isinstance(row, (list, tuple)) else
                       (np.nan if row is None else row) for row in values], dtype=np.float32)
