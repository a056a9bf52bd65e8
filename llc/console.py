"""Output for runs on the command line: progress while sampling (a Rich bar on a terminal, plain
lines from ``llc.pipeline.progress`` in a log) and the result tables.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from llc.analysis import flags
from llc.config import RunConfig
from llc.pipeline.progress import PlainProgress, clock, stderr_line_writer
from llc.store import records


def run_with_progress(cfg: RunConfig, root: Path, *, skip: bool, console: Console) -> dict[str, Any]:
    from llc.pipeline.experiment import run_experiment

    if not console.is_terminal:
        with PlainProgress(stderr_line_writer(console.file)) as plain:
            return run_experiment(cfg, root, skip=skip, progress=plain, log=plain.log)

    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("draws"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        tasks: dict[str, int] = {}

        def progress(sampler: str, done: int, total: int, phase: str) -> None:
            label = sampler if phase == sampler else f"{sampler} ({phase})"
            key = f"{sampler}/{phase}"
            if key not in tasks:
                tasks[key] = bar.add_task(label, total=total)
            bar.update(tasks[key], completed=done)

        def log(msg: str) -> None:
            # console.print, not console.log: log lines carry no source path.
            console.print(f"[dim]{clock()}[/] {msg}", highlight=False, soft_wrap=True)

        return run_experiment(cfg, root, skip=skip, progress=progress, log=log)


def run_family_with_progress(cfgs: list[RunConfig], root: Path, *, skip: bool, console: Console) -> list[dict[str, Any]]:
    """A restriction family's runs (one per group, llc.pipeline.experiment.expand_restriction) as one
    batched call, with progress lines on ``console``."""
    from llc.pipeline.experiment import run_experiments

    with PlainProgress(stderr_line_writer(console.file)) as plain:
        return run_experiments(cfgs, root, skip=skip, progress=plain, log=plain.log)


def family_table(results: list[dict[str, Any]]) -> Table:
    """One row per (group, sampler) of a restriction family: the group's dimension, lambda-hat, flags."""
    first = results[0]
    t = first["target"]
    table = Table(title=f"restricted LLCs — target {t['id']} ({t['kind']}, d={t['d']}), {len(results)} groups")
    for col in ("group", "d", "d/2", "sampler", "λ̂ ± SE", "R̂", "flags"):
        table.add_column(col, justify="left" if col in ("group", "sampler", "flags") else "right")
    for result in results:
        post = result["posterior"]
        group = ", ".join(post.get("restrict") or ["all"])
        for name, m in result["samplers"].items():
            llc = "—" if m["llc_mean"] is None else f"{m['llc_mean']:.4g} ± {_fmt(m['llc_se'], '.2g')}"
            table.add_row(group, str(post.get("dim", t["d"])), f"{post.get('dim', t['d']) / 2:g}", name, llc,
                          _fmt(m.get("rhat"), ".3f"),
                          f"[red]⚠ {', '.join(flags.codes_in('; '.join(m['flags'])))}[/]" if m["flags"] else "ok")
    return table


def print_family(results: list[dict[str, Any]], console: Console) -> None:
    console.print(fit(family_table(results), console))
    for result in results:
        console.print(f"artifacts: {result['artifacts']}", highlight=False)


# --------------------------------------------------------------------------- tables at any width

WRAPPED = ("flags",)  # columns whose text may wrap inside a table; every other cell stays on one line
WRAPPED_MIN = 24  # narrower than this, a wrapped column becomes a tall strip of words
_GAP = "   "


def _plain(cell: Any) -> Text:
    return cell.copy() if isinstance(cell, Text) else Text.from_markup(str(cell)) if isinstance(cell, str) else Text(str(cell))


def _needed(table: Table) -> list[int]:
    """The width each column needs for no cell (nor header) to be cut or broken: its widest value,
    or for a wrapped column the smaller of its widest value and ``WRAPPED_MIN`` (at least its
    longest word)."""
    widths = []
    for column in table.columns:
        texts = [_plain(c) for c in column._cells]
        header = str(column.header)
        if header.strip().lower() in WRAPPED:
            longest = max([len(w) for t in texts for w in t.plain.split()] + [len(header)])
            widths.append(max(longest, min(max([t.cell_len for t in texts] + [0]), WRAPPED_MIN)))
        else:
            widths.append(max([t.cell_len for t in texts] + [Text(header).cell_len]))
    return widths


def stacked(table: Table, width: int = 80) -> Group:
    """The table's rows as blocks: the first cell in bold, then ``header value`` pairs packed into
    lines (a narrow terminal, or output piped at 80 columns, reads every value whole)."""
    out: list[Any] = []
    if table.title:
        out.append(Text(str(table.title), style="bold"))
    headers = [str(c.header) or "·" for c in table.columns]
    cells = [[_plain(c) for c in column._cells] for column in table.columns]
    for i, row in enumerate(table.rows):
        values = [col[i] for col in cells]
        first = Text.assemble((f"{headers[0]} ", "dim"), (values[0].plain, "bold"))
        pairs = [Text.assemble((f"{h} ", "dim"), v) for h, v in zip(headers[1:], values[1:]) if v.plain.strip()]
        line = Text("  ")
        lines = [first]
        for pair in pairs:
            if line.cell_len > 2 and line.cell_len + len(_GAP) + pair.cell_len > width:
                lines.append(line)
                line = Text("  ")
            line += (Text(_GAP) if line.cell_len > 2 else Text()) + pair
        if line.cell_len > 2:
            lines.append(line)
        block = Text("\n").join(lines)
        if row.style:
            block.stylize(row.style)
        out.append(block)
    if table.caption:
        out.append(Text.from_markup(str(table.caption)))
    return Group(*out)


def fit(table: Table, console: Console) -> Table | Group:
    """``table`` as is where every column fits the console on one line per value (the wrapped
    columns: at least ``WRAPPED_MIN`` wide); else its rows stacked (``stacked``). One rule for
    every table the CLI prints: at 80 columns a table of 10 columns cut numbers to ``0.0…``."""
    needed = _needed(table)
    border = 3 * len(table.columns) + 1  # "│ " + " " per column and the closing "│"
    if sum(needed) + border <= console.width:
        for column, need in zip(table.columns, needed):
            if str(column.header).strip().lower() not in WRAPPED:
                column.no_wrap, column.min_width = True, need
        return table
    return stacked(table, console.width)


def _fmt(value: Any, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def result_table(result: dict[str, Any]) -> Table:
    t = result["target"]
    p = result["posterior"]
    title = (f"LLC estimates — run {result['run_id']}{' (cached)' if result.get('cached') else ''}\n"
             f"target {t['id']} ({t['kind']}, d={t['d']}, n={t['n']}), nβ={p['nbeta']:.4g}, γ={p['gamma']:.4g}")
    table = Table(title=title)
    for col in ("sampler", "λ̂ ± SE", "ESS", "R̂", "wall s", "FDE", "diverged", "flags"):
        table.add_column(col, justify="left" if col in ("sampler", "flags") else "right")
    for name, s in result["samplers"].items():
        llc = "—" if s["llc_mean"] is None else f"{s['llc_mean']:.3f} ± {_fmt(s['llc_se'], '.3f')}"
        cell, style = records.table_cells(s.get("flags"))
        table.add_row(name, llc, _fmt(s["ess"], ".0f"), _fmt(s["rhat"], ".3f"), _fmt(s["wall_s"], ".2f"),
                      _fmt(s["fde"], ".3g"), str(s["diverged_chains"]), cell, style=style)
    notes = [f"analytic λ = {t['analytic_llc']:.4f}"] if t.get("analytic_llc") is not None else []
    notes += records.table_notes(result["samplers"])
    if notes:
        table.caption = "\n".join(notes)
        table.caption_justify = "left"
    return table


def print_result(result: dict[str, Any], console: Console) -> None:
    console.print(fit(result_table(result), console))
    console.print(f"artifacts: {result['artifacts']}", highlight=False)


def calibration_table(summary: dict[str, Any]) -> Table:
    """One row per grid point: its settings, lambda-hat, diagnostics, flags; the choice marked."""
    axes = list(summary["axes"])
    t = summary["target"]
    table = Table(title=f"{summary['sampler']} calibration {summary['calibration_id']}"
                        f"{' (cached)' if summary.get('cached') else ''} — target {t['id']} ({t['kind']}, d={t['d']})")
    exact = any(r.get("analytic_llc") is not None for r in summary["rows"])
    for col in [a.rsplit(".", 1)[-1] for a in axes] + ["nβ", "λ̂ ± SE"] + (["exact λ"] if exact else []) + \
            ["R̂", "ESS", "MALA acc.", "flags", "choice"]:
        table.add_column(col, justify="right")
    for row in summary["rows"]:
        llc = "—" if row["llc_mean"] is None else f"{row['llc_mean']:.4g} ± {_fmt(row['llc_se'], '.2g')}"
        mark = "[bold green]← recommended[/]" if row["recommended"] else ("" if row["healthy"] else "[red]✗[/]")
        table.add_row(*[f"{row[a]:g}" if isinstance(row[a], float) else str(row[a]) for a in axes],
                      f"{row['nbeta']:.4g}", llc, *([_fmt(row["analytic_llc"], ".4g")] if exact else []),
                      _fmt(row["rhat"], ".3f"), _fmt(row["ess"], ".0f"),
                      _fmt(row["mala_acceptance"], ".3f"),
                      f"[red]⚠ {', '.join(flags.codes_in(row['flags']))}[/]" if row["flags"] else "", mark)
    ref = summary.get("reference")
    if ref:
        table.caption = f"reference ({ref['kind']}): λ = {ref['llc_mean']:.4g}" + (
            f" ± {ref['llc_se']:.2g}" if ref.get("llc_se") else "")
    return table


def print_calibration(summary: dict[str, Any], console: Console) -> None:
    console.print(fit(calibration_table(summary), console))
    rec = summary["recommended"]
    console.print(("[bold]recommended:[/] " if rec["index"] is not None else "[bold red]no recommendation:[/] ")
                  + rec["why"], highlight=False)
    if summary.get("preset"):
        console.print(f"preset: {summary['preset']}  (llc run --preset {summary['preset']})", highlight=False)
    console.print(f"artifacts: {summary['artifacts']}  ({summary['points']} points in {summary['batches']} "
                  f"batched program(s), {summary['wall_s']:.1f} s wall: {_fmt(summary.get('sampling_s'), '.2f')} s "
                  f"sampling, {summary['compile_s']:.1f} s compiling)",
                  highlight=False)


def print_trajectory(summary: dict[str, Any], console: Console) -> None:
    """One row per checkpoint: step, lambda-hat, diagnostics, training metrics, curvature."""
    t = summary.get("target") or {}
    table = Table(title=f"LLC trajectory ({summary['sampler']}) — target {t.get('id')} ({t.get('kind')}, d={t.get('d')})")
    cols = (("step", "step", "d"), ("λ̂ ± SE", None, None), ("R̂", "rhat", ".3f"), ("ESS", "ess", ".0f"),
            ("ε", "step_size", ".2g"), ("train acc", "train_acc", ".3f"), ("test acc", "test_acc", ".3f"), ("train loss", "train_loss", ".3g"),
            ("tr H", "hessian_trace", ".3g"), ("tr F", "fisher_trace", ".3g"), ("‖∇L‖", "grad_norm", ".2g"),
            ("flags", "flags", None))
    for title, *_ in cols:
        table.add_column(title, justify="right")
    for row in summary["rows"]:
        cells = []
        for _, key, spec in cols:
            if key is None:
                cells.append("—" if row["llc_mean"] is None else f"{row['llc_mean']:.4g} ± {_fmt(row['llc_se'], '.2g')}")
            elif key == "flags":
                cells.append(f"[red]{row['flags']}[/]" if row.get("flags") else "")
            else:
                cells.append(_fmt(row.get(key), spec))
        table.add_row(*cells)
    console.print(fit(table, console))
    console.print(f"artifacts: {summary['artifacts']}  ({summary['computed']} of {summary['checkpoints']} checkpoints "
                  f"computed now, {summary['wall_s']:.1f} s, {summary['compile_s']:.1f} s compiling); figure: "
                  f"{summary['artifacts']}/trajectory.png", highlight=False)
