"""Figures off the critical path: drawn after a run is saved, from its files, atomically, once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from synthetic_runs import hmc_stats, make_idata, write_run
from typer.testing import CliRunner

from llc.config import figure_mode
from llc.posthoc import figures as F
from llc.posthoc import plots as P

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ROOT = Path(__file__).resolve().parent.parent


def _run(tmp_path: Path, name: str = "run1", draws: int = 120) -> Path:
    rng = np.random.default_rng(3)
    idatas = {"sgld": make_idata("sgld", rng, 3, draws, rho=0.5),
              "hmc": make_idata("hmc", rng, 3, draws, stats=hmc_stats(rng, 3, draws))}
    return write_run(tmp_path / name, idatas)


def _complete_png(path: Path) -> bool:
    from PIL import Image

    data = path.read_bytes()
    if not data.startswith(PNG_MAGIC):
        return False
    with Image.open(path) as im:
        im.load()  # decodes every row: a truncated file raises
    return True


def test_modes_and_keys():
    assert figure_mode("auto") == "all" and figure_mode("auto", default="summary") == "summary"
    assert figure_mode("all", save_plots=False) == "none"
    assert F.plot_keys("none") == () and F.plot_keys("all") == P.PLOT_KEYS
    assert set(F.plot_keys("summary")) <= set(P.PLOT_KEYS) and "combined" in F.plot_keys("summary")
    with pytest.raises(ValueError, match="--figures: 'most' is not allowed"):
        figure_mode("most")


def test_figures_do_not_change_the_run_id():
    import dataclasses

    from llc.config import build_config
    from llc.store import cache

    cfg = build_config(None, ["target.kind=quadratic", "samplers=sgld"])
    assert cache.run_id(dataclasses.replace(cfg, figures="none")) == cache.run_id(cfg)


def test_draw_after_save_in_process_then_only_what_is_missing(tmp_path):
    run = _run(tmp_path)
    report = F.after_save(run, F.plot_keys("summary"))
    expected = {"sgld_llc_running.png", "sgld_L_trace.png", "hmc_llc_running.png", "hmc_L_trace.png",
                P.COMBINED_FILE}
    assert report is not None and set(report.written) == expected and not report.errors
    assert {p.name for p in run.glob("*.png")} == expected
    assert all(_complete_png(p) for p in run.glob("*.png"))
    assert not list(run.glob(".*.tmp"))  # every temp file was renamed into place
    record = json.loads((run / F.RECORD_FILE).read_text())
    assert set(record["keys"]) == set(F.SUMMARY_PLOTS) and set(record["files"]) == expected
    gallery = (run / "gallery.md").read_text()
    assert all(f"]({name})" in gallery for name in expected)
    assert P.COMBINED_FILE in (run / "README_snippet.md").read_text()

    # The same figures again: nothing to draw. All of them: only the keys not drawn yet.
    assert F.after_save(run, F.plot_keys("summary")) is None
    before = (run / "sgld_llc_running.png").stat().st_mtime_ns
    more = F.after_save(run, F.plot_keys("all"))
    assert more is not None and "sgld_llc_running.png" not in more.written and "hmc_acceptance.png" in more.written
    assert (run / "sgld_llc_running.png").stat().st_mtime_ns == before
    assert set(json.loads((run / F.RECORD_FILE).read_text())["keys"]) == set(P.PLOT_KEYS)


def test_background_queue_draws_every_run_while_the_caller_goes_on(tmp_path):
    runs = [_run(tmp_path, f"run{i}") for i in range(2)]
    t0 = time.perf_counter()
    with F.background(workers=2) as queue:
        for run in runs:
            F.after_save(run, F.plot_keys("summary"))
        queued = time.perf_counter() - t0
        assert queue.pending > 0  # returned before drawing: the figures are someone else's work
    assert queued < 1.0
    assert len(queue.reports) == 2 and not any(r.errors for r in queue.reports)
    for run in runs:
        names = {p.name for p in run.glob("*.png")}
        assert {"sgld_llc_running.png", "hmc_L_trace.png", P.COMBINED_FILE} <= names
        assert all(_complete_png(run / n) for n in names)
        assert set(json.loads((run / F.RECORD_FILE).read_text())["keys"]) == set(F.SUMMARY_PLOTS)


def test_a_kill_while_drawing_leaves_only_whole_pngs(tmp_path):
    run = _run(tmp_path, draws=400)
    script = (f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
              "from llc.posthoc import figures as F\n"
              f"while True: F.draw_run(__import__('pathlib').Path({str(run)!r}), F.plot_keys('all'))\n")
    proc = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        deadline = time.time() + 60
        while len(list(run.glob("*.png"))) < 4 and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.37)  # somewhere in the middle of a figure
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    pngs = list(run.glob("*.png"))
    assert len(pngs) >= 4
    assert all(_complete_png(p) for p in pngs)  # a half-written figure only ever exists as a hidden temp file
    assert all(p.name.startswith(".") for p in run.iterdir() if p.name.endswith(".tmp"))


def test_experiment_saves_the_run_before_drawing(tmp_path):
    from llc.config import build_config
    from llc.pipeline.experiment import run_experiment
    from llc.store import cache

    cfg = build_config(None, ["target.kind=quadratic", "samplers=sgld", "sgld.draws=40", "sgld.chains=2",
                              "figures=summary"])
    result = run_experiment(cfg, tmp_path)
    run = Path(result["artifacts"])
    marker = (run / cache.COMPLETE_MARKER).stat().st_mtime_ns
    pngs = sorted(run.glob("*.png"))
    assert {p.name for p in pngs} == {"sgld_llc_running.png", "sgld_L_trace.png", P.COMBINED_FILE}
    assert all(p.stat().st_mtime_ns >= marker for p in pngs)  # drawn after the run was marked complete
    drawn = {p.name: p.stat().st_mtime_ns for p in pngs}
    # A cached run asked for every figure draws the rest, and only the rest.
    run_experiment(build_config(None, ["target.kind=quadratic", "samplers=sgld", "sgld.draws=40",
                                       "sgld.chains=2", "figures=all"]), tmp_path)
    assert "sgld_llc_rank.png" in {p.name for p in run.glob("*.png")}
    assert all((run / name).stat().st_mtime_ns == mtime for name, mtime in drawn.items())


@pytest.mark.parametrize("args, message", [
    (["--figures", "bogus"], "--figures: 'bogus' is not allowed; choose one of none, summary, all"),
    (["--figures", "all", "--no-save-plots"], "--no-save-plots contradicts --figures all"),
])
def test_cli_figures_option_is_checked_before_work(args, message):
    from llc.cli import app

    for command in ("run", "sweep"):
        res = CliRunner().invoke(app, [command, *args])
        assert res.exit_code == 2 and message in res.output, (command, res.output)


def test_figures_flag_wins_over_a_space_without_plots():
    from llc.cli import _figures_override
    from llc.pipeline import sweep as sw

    space = sw.load_space("smoke")  # its [base] says save_plots = false
    points = sw.plan_sweep(space, overrides=_figures_override("summary", False))
    assert points and all(figure_mode(p.cfg.figures, save_plots=p.cfg.save_plots) == "summary" for p in points)
    plain = sw.plan_sweep(space)
    assert all(figure_mode(p.cfg.figures, save_plots=p.cfg.save_plots, default="summary") == "none" for p in plain)


def test_a_failed_figure_is_not_recorded_as_drawn(tmp_path, monkeypatch):
    run = _run(tmp_path)

    def broken(*args):
        raise RuntimeError("no ink")

    monkeypatch.setitem(P.PER_SAMPLER, "trace", [("L_trace", broken)])
    report = F.after_save(run, ("running_llc", "trace"))
    assert report.failed_keys == {"trace"} and any("no ink" in e for e in report.errors)
    assert set(json.loads((run / F.RECORD_FILE).read_text())["keys"]) == {"running_llc"}
    monkeypatch.undo()
    again = F.after_save(run, ("running_llc", "trace"))  # asked again: only the failed key is redrawn
    assert again is not None and set(again.written) == {"sgld_L_trace.png", "hmc_L_trace.png"}


def test_every_figure_file_has_a_title_in_gallery_order():
    """The store names figure files without importing the plotting module: its list must match."""
    from llc.store.records import FIGURE_TITLES, figure_info

    suffixes = [suffix for items in P.PER_SAMPLER.values() for suffix, _ in items]
    assert suffixes == list(FIGURE_TITLES)
    names = [f"hmc_{s}.png" for s in reversed(suffixes)] + [P.COMBINED_FILE, "sgld_L_trace.png"]
    ranked = sorted(names, key=lambda n: figure_info(n)[:2])
    assert ranked[0] == "sgld_L_trace.png" and ranked[1] == "hmc_llc_running.png" and ranked[-1] == P.COMBINED_FILE
