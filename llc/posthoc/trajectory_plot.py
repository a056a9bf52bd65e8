"""The trajectory figure: lambda-hat (± 2 SE), train/test accuracy and loss, and curvature against
the training step (log x), one panel each, sharing the step axis."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from llc.posthoc.plots import save_figure


def _col(rows: list[dict[str, Any]], key: str) -> np.ndarray:
    return np.asarray([np.nan if r.get(key) is None else r[key] for r in rows], dtype=np.float64)


COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
          "#17becf"]


def by_group(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """A restriction family's rows per group (in first-appearance order); one unnamed group otherwise."""
    out: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        out.setdefault(r.get("group") or "", []).append(r)
    return out


# Panels drawn when a row has their columns (the grokking probes of modular targets), log y as in
# the seed project: (title, [(column, colour, label)], [(twin-axis linear column, colour, label)]).
PROBE_PANELS = (
    ("input space", (("jacobian_norm", "#1f77b4", "Jacobian norm (RMS ‖∂logits/∂u‖_F)"),
                     ("input_hessian_trace", "#9467bd", "|input Hessian trace| of the loss"),
                     ("representation_norm", "#ff7f0e", "representation norm")),
     (("spectral_smoothness", "#7f7f7f", "spectral smoothness (right, lower = smoother)"),)),
    ("Adam", (("effective_lr_mean", "#2ca02c", "effective lr, mean"),
              ("adam_ratio_mean", "#d62728", "|m|/(√v+ε), mean"),
              ("adam_ratio_max", "#ff9896", "|m|/(√v+ε), max"),
              ("update_decay_ratio", "#8c564b", "‖update‖/‖decay‖")), ()),
    ("routing", (("routing_entropy", "#9467bd", "routing entropy (mean over inputs)"),),
     (("head_utilisation", "#17becf", "head utilisation (right)"),)),
)


def _probe_panel(ax, rows: list[dict[str, Any]], step: np.ndarray, title: str, logged, linear) -> None:
    for key, color, label in logged:
        values = np.abs(_col(rows, key))
        if np.isfinite(values).any():
            ax.plot(step, values, "-", color=color, lw=1.3, label=label)
    ax.set_yscale("log")
    ax.set_ylabel(title)
    handles = ax.get_legend_handles_labels()[0]
    twin = [(k, c, lab) for k, c, lab in linear if np.isfinite(_col(rows, k)).any()]
    if twin:
        ax2 = ax.twinx()
        for key, color, label in twin:
            ax2.plot(step, _col(rows, key), "--", color=color, lw=1.2, label=label)
        handles += ax2.get_legend_handles_labels()[0]
    ax.legend(handles=handles, fontsize=7, loc="best")


def draw(path: Path, summary: dict[str, Any]) -> Path:
    groups = by_group(summary["rows"])
    rows = next(iter(groups.values()))  # the checkpoint-level panels: the same for every group
    step = _col(rows, "step")
    probe_panels = [p for p in PROBE_PANELS if any(np.isfinite(_col(rows, k)).any() for k, _, _ in (*p[1], *p[2]))]
    fig = Figure(figsize=(9.5, 9.0 + 2.6 * len(probe_panels)), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(3 + len(probe_panels), 1, sharex=True,
                        gridspec_kw={"height_ratios": [1.3, 1, 1] + [1] * len(probe_panels)})
    ax_llc, ax_acc, ax_curv = axes[:3]
    for ax, (title, logged, linear) in zip(axes[3:], probe_panels):
        _probe_panel(ax, rows, step, title, logged, linear)
    flag_labelled = False
    for i, (name, members) in enumerate(groups.items()):
        color = COLORS[i % len(COLORS)]
        g_step, llc, se = _col(members, "step"), _col(members, "llc_mean"), _col(members, "llc_se")
        flagged = np.asarray([bool(r.get("flags")) for r in members])
        label = f"λ̂ {name} (d = {members[0].get('dim')})" if name else f"λ̂ ({summary['sampler']})"
        ax_llc.fill_between(g_step, llc - 2 * se, llc + 2 * se, color=color, alpha=0.2, lw=0,
                            label="± 2 SE" if i == 0 else None)
        ax_llc.plot(g_step, llc, "o-", color=color, ms=3.5, lw=1.4, label=label)
        if flagged.any():
            ax_llc.plot(g_step[flagged], llc[flagged], "x", color="#c00000", ms=8, mew=2,
                        label=None if flag_labelled else "flagged")
            flag_labelled = True
    if len(groups) > 1:
        ax_llc.set_yscale("symlog", linthresh=1.0)
    ax_llc.set_ylabel("λ̂" + (f" per group ({summary['sampler']}, restricted)" if len(groups) > 1 else ""))
    ax_llc.legend(fontsize=7 if len(groups) > 4 else 8, loc="upper left", ncol=2 if len(groups) > 4 else 1)
    for key, color, style in (("train_acc", "#2ca02c", "-"), ("test_acc", "#d62728", "-")):
        if np.isfinite(_col(rows, key)).any():
            ax_acc.plot(step, _col(rows, key), style, color=color, lw=1.5, label=key.replace("_", " "))
    ax_acc.set_ylabel("accuracy")
    ax_loss = ax_acc.twinx()
    for key, color in (("train_loss", "#2ca02c"), ("test_loss", "#d62728")):
        if np.isfinite(_col(rows, key)).any():
            ax_loss.plot(step, _col(rows, key), "--", color=color, lw=1.0, alpha=0.8, label=key.replace("_", " "))
    ax_loss.set_yscale("log")
    ax_loss.set_ylabel("loss (dashed)")
    handles = ax_acc.get_legend_handles_labels()[0] + ax_loss.get_legend_handles_labels()[0]
    if handles:
        ax_acc.legend(handles=handles, fontsize=8, loc="center left")
    # Say what was not recorded (a user's own run often logs no accuracy) instead of a blank axis.
    missing = [what for what, keys in (("accuracy", ("train_acc", "test_acc")), ("loss", ("train_loss", "test_loss")))
               if not any(np.isfinite(_col(rows, k)).any() for k in keys)]
    if missing:
        ax_acc.text(0.5, 0.5, f"no {' or '.join(missing)} recorded", transform=ax_acc.transAxes, ha="center",
                    va="center", fontsize=9, color="#7f7f7f")
    for key, color, label in (("hessian_trace", "#9467bd", "Hessian trace (Hutchinson)"),
                              ("fisher_trace", "#8c564b", "empirical Fisher trace"),
                              ("grad_norm", "#7f7f7f", "‖∇L_n‖"), ("weight_norm", "#17becf", "‖w‖")):
        values = _col(rows, key)
        if np.isfinite(values).any():
            ax_curv.plot(step, np.abs(values), "-", color=color, lw=1.3, label=label)
    ax_curv.set_yscale("log")
    ax_curv.set_ylabel("curvature / size")
    ax_curv.legend(fontsize=8, loc="best")
    ax_curv.set_xscale("symlog", linthresh=max(1.0, float(np.nanmin(step[step > 0])) if (step > 0).any() else 1.0))
    ax_curv.set_xlim(left=-0.3 if (step <= 0).any() else None, right=float(np.nanmax(step)) * 1.05)
    axes[-1].set_xlabel("training step (log scale; 0 = initialisation)")
    for ax in axes:
        ax.grid(alpha=0.3)
    target = summary.get("target") or {}
    # A user's own model (llc.trajectory) has no target kind or id.
    what = f"{target['kind']} target {target.get('id', '')} " if target.get("kind") else "your model "
    family = f", {len(groups)} restricted groups" if len(groups) > 1 else ""
    fig.suptitle(f"LLC across training — {what}({len(rows)} checkpoints{family})", fontsize=11)
    fig.tight_layout()
    return save_figure(fig, path)


def draw_overlay(path: Path, members: list[tuple[dict[str, Any], dict[str, Any]]]) -> Path:
    """Several trajectories (one per training setting): lambda-hat (± 2 SE) and test accuracy
    against the step, one colour per setting."""
    fig = Figure(figsize=(9.5, 6.5), dpi=110)
    FigureCanvasAgg(fig)
    ax_llc, ax_acc = fig.subplots(2, 1, sharex=True)
    colors = COLORS
    positive = []
    for i, (setting, summary) in enumerate(members):
        rows, color = summary["rows"], colors[i % len(colors)]
        label = ", ".join(f"{k.rsplit('.', 1)[-1]}={v:g}" if isinstance(v, float) else f"{k.rsplit('.', 1)[-1]}={v}"
                          for k, v in setting.items())
        step, llc, se = _col(rows, "step"), _col(rows, "llc_mean"), _col(rows, "llc_se")
        positive += list(step[step > 0])
        ax_llc.fill_between(step, llc - 2 * se, llc + 2 * se, color=color, alpha=0.15, lw=0)
        ax_llc.plot(step, llc, "o-", color=color, ms=3, lw=1.3, label=label)
        if np.isfinite(_col(rows, "test_acc")).any():
            ax_acc.plot(step, _col(rows, "test_acc"), "-", color=color, lw=1.4, label=f"test acc, {label}")
            ax_acc.plot(step, _col(rows, "train_acc"), ":", color=color, lw=1.0)
    ax_llc.set_ylabel("λ̂ (± 2 SE)")
    ax_llc.legend(fontsize=8)
    ax_acc.set_ylabel("accuracy (train dotted)")
    ax_acc.set_xscale("symlog", linthresh=max(1.0, min(positive)) if positive else 1.0)
    ax_acc.set_xlim(left=-0.3)
    ax_acc.set_xlabel("training step (log scale; 0 = initialisation)")
    for ax in (ax_llc, ax_acc):
        ax.grid(alpha=0.3)
    fig.suptitle(f"LLC across training — {len(members)} settings", fontsize=11)
    fig.tight_layout()
    return save_figure(fig, path)
