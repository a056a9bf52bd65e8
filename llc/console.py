"""Rich output for runs: a progress display while sampling and the result table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from llc.config import RunConfig


def run_with_progress(cfg: RunConfig, root: Path, *, skip: bool, console: Console) -> dict[str, Any]:
    from llc.pipeline.experiment import run_experiment

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

        return run_experiment(cfg, root, skip=skip, progress=progress, log=lambda msg: console.log(msg))


def _fmt(value: Any, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def result_table(result: dict[str, Any]) -> Table:
    t = result["target"]
    p = result["posterior"]
    title = (f"LLC estimates — run {result['run_id']}{' (cached)' if result.get('cached') else ''}\n"
             f"target {t['id']} ({t['kind']}, d={t['d']}, n={t['n']}), nβ={p['nbeta']:.4g}, γ={p['gamma']:.4g}")
    table = Table(title=title)
    for col in ("sampler", "λ̂ ± SE", "ESS", "R̂", "wall s", "FDE", "diverged"):
        table.add_column(col, justify="right" if col != "sampler" else "left")
    for name, s in result["samplers"].items():
        llc = "—" if s["llc_mean"] is None else f"{s['llc_mean']:.3f} ± {_fmt(s['llc_se'], '.3f')}"
        table.add_row(name, llc, _fmt(s["ess"], ".0f"), _fmt(s["rhat"], ".3f"), _fmt(s["wall_s"], ".2f"),
                      _fmt(s["fde"], ".3g"), str(s["diverged_chains"]))
    if t.get("analytic_llc") is not None:
        table.caption = f"analytic λ = {t['analytic_llc']:.4f}"
    return table


def print_result(result: dict[str, Any], console: Console) -> None:
    console.print(result_table(result))
    console.print(f"artifacts: {result['artifacts']}", highlight=False)
