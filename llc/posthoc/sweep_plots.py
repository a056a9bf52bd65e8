"""``llc plot-sweep``: λ̂ and sampler efficiency against model size, from the sweep CSV (no JAX).

Four panels sharing the size axis: λ̂ (each run ± 2 SE, the per-size mean as a line, the
analytic value where the target has one), ESS per second, ESS per full-data gradient, and the
work-normalised variance SE² × seconds (lower is better). One colour per sampler throughout.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llc import registry

OK_STATUS = ("done", "cached")
PANELS = (("ess_per_sec", "ESS / second", "wall-clock efficiency (higher is better)"),
          ("ess_per_fde", "ESS / FDE", "gradient efficiency (higher is better)"),
          ("wnv_time", "SE(λ̂)² × seconds", "work-normalised variance (lower is better)"))


class SweepPlotError(ValueError):
    """Unusable input for plot-sweep; one line."""


def parse_filters(text: str | None) -> list[tuple[str, str]]:
    out = []
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise SweepPlotError(f"--filters: {part!r} is not col=value")
        out.append((key.strip(), value.strip()))
    return out


def _matches(series: Any, value: str) -> Any:
    import pandas as pd

    numeric = pd.to_numeric(series, errors="coerce")
    try:
        target = float(value)
    except ValueError:
        target = None
    if target is not None and numeric.notna().any():
        return numeric == target
    return series.astype(str).str.strip() == value


def load_rows(csv_path: Path | str, *, size_col: str = "n_params", filters: str | None = None,
              samplers: str | None = None):
    import pandas as pd

    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise SweepPlotError(f"{csv_path} not found; run `llc sweep` first (or pass --csv)")
    try:
        df = pd.read_csv(csv_path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError) as exc:
        raise SweepPlotError(f"{csv_path} is not a sweep results CSV ({exc})") from None
    needed = {"sampler", "llc_mean", size_col}
    missing = needed - set(df.columns)
    if missing:
        raise SweepPlotError(f"{csv_path}: missing column(s) {', '.join(sorted(missing))}; "
                             f"columns: {', '.join(df.columns)}")
    if "status" in df.columns:
        df = df[df["status"].isin(OK_STATUS)]
    for key, value in parse_filters(filters):
        if key not in df.columns:
            raise SweepPlotError(f"--filters: no column {key!r}; columns: {', '.join(df.columns)}")
        df = df[_matches(df[key], value)]
    if samplers:
        wanted = [s.strip() for s in samplers.split(",") if s.strip()]
        df = df[df["sampler"].isin(wanted)]
    df = df.copy()
    df[size_col] = pd.to_numeric(df[size_col], errors="coerce")
    df = df[df[size_col].notna() & pd.to_numeric(df["llc_mean"], errors="coerce").notna()]
    if df.empty:
        raise SweepPlotError(f"no finished runs with a numeric {size_col!r} left after the filters")
    return df


def plot_sweep(csv_path: Path | str, out: Path | str, *, size_col: str = "n_params",
               filters: str | None = None, samplers: str | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    import pandas as pd

    df = load_rows(csv_path, size_col=size_col, filters=filters, samplers=samplers)
    for col in ("llc_mean", "llc_se", "analytic_llc", *(p[0] for p in PANELS)):
        if col in df.columns:
            df[col] = pd.to_numeric(df[col], errors="coerce")
    sizes = df[size_col].to_numpy(dtype=float)
    log_x = sizes.min() > 0 and sizes.max() / sizes.min() >= 10

    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5), constrained_layout=True)
    names = list(dict.fromkeys(df["sampler"]))
    for name in names:
        sub = df[df["sampler"] == name].sort_values(size_col)
        color = registry.color(name)
        ax = axes[0, 0]
        se = sub["llc_se"].fillna(0).to_numpy() if "llc_se" in sub else None
        ax.errorbar(sub[size_col], sub["llc_mean"], yerr=None if se is None else 2 * se, fmt="o", ms=4,
                    alpha=0.45, color=color, capsize=2, lw=1)
        mean = sub.groupby(size_col)["llc_mean"].mean()
        ax.plot(mean.index, mean.to_numpy(), "-", color=color, lw=2, label=f"{name} (mean over runs)")
        for ax, (col, _, _) in zip(axes.flat[1:], PANELS):
            if col not in sub or sub[col].notna().sum() == 0:
                continue
            vals = sub[[size_col, col]].dropna()
            vals = vals[vals[col] > 0]
            ax.plot(vals[size_col], vals[col], "o", ms=4, alpha=0.45, color=color)
            med = vals.groupby(size_col)[col].median()
            ax.plot(med.index, med.to_numpy(), "-", color=color, lw=2, label=name)
    if "analytic_llc" in df and df["analytic_llc"].notna().any():
        exact = df.dropna(subset=["analytic_llc"]).groupby(size_col)["analytic_llc"].mean()
        axes[0, 0].plot(exact.index, exact.to_numpy(), "k--", lw=1.5, label="analytic λ")

    axes[0, 0].set_title("Estimated LLC λ̂ (runs ± 2 SE)")
    axes[0, 0].set_ylabel("λ̂")
    for ax, (col, ylabel, title) in zip(axes.flat[1:], PANELS):
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        if ax.lines:
            ax.set_yscale("log")
        else:
            ax.text(0.5, 0.5, f"no {col} values", ha="center", va="center", transform=ax.transAxes, color="0.4")
    for ax in axes.flat:
        ax.set_xlabel(size_col.replace("_", " ") + (" (log scale)" if log_x else ""))
        if log_x:
            ax.set_xscale("log")
        ticks = sorted(set(sizes))
        if len(ticks) <= 8:  # label the sizes actually swept rather than powers of ten
            ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
            ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.grid(True, which="major", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=9, loc="best")
    runs = df["run_id"].nunique() if "run_id" in df else len(df)
    subtitle = f"{runs} runs, samplers: {', '.join(names)}"
    if filters:
        subtitle += f" — filters: {filters}"
    fig.suptitle(f"LLC sweep vs {size_col}\n{subtitle}", fontsize=12)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
