"""Sweeps: the space, the plan, the streamed CSV, restart after interruption, plot-sweep."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llc.store import cache

from llc.pipeline import sweep
from llc.pipeline.backends import CACHED, DONE, FAILED, Backend, Outcome
from llc.cli import app
from llc.config import ConfigError

runner = CliRunner()


@pytest.fixture(scope="module", autouse=True)
def pinned_code_version():
    mp = pytest.MonkeyPatch()
    mp.setenv(cache.CODE_VERSION_ENV, "llc-backend-tests")
    yield
    mp.undo()


def rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


# --------------------------------------------------------------------------- space and plan

def test_default_space_covers_the_specification():
    space = sweep.load_space()
    points = sweep.plan_sweep(space)
    axes = {k for _, grid in space.grids for k in grid}
    assert {"target.mlp.target_params", "target.mlp.depth", "target.mlp.widths", "target.mlp.activation", "data.x_dist",
            "data.noise"} <= axes
    sizes = [v for _, grid in space.grids for v in grid.get("target.mlp.target_params", [])]
    assert min(sizes) == 500 and max(sizes) == 10_000
    assert len({p.run_id for p in points}) == len(points)  # overlapping grid points run once
    assert set(points[0].cfg.samplers) == {"sgld", "hmc", "mclmc"}
    assert len(sweep.plan_sweep(space, n_seeds=2)) == 2 * len(points)


def test_cartesian_product_overrides_and_pins():
    space = sweep.space_from_dict({"samplers": ["sgld"], "base": {"target.kind": "quadratic", "sgld.batch_size": 8},
                                   "grid": [{"name": "g", "target": {"quadratic": {"dim": [1, 2, 3]}},
                                             "data.n_data": [16, 32]}]})
    assert len(sweep.plan_sweep(space)) == 6
    # --set of an axis pins it; --axis replaces one or adds a new one to every grid.
    pinned = sweep.plan_sweep(space, overrides=["data.n_data=64"])
    assert len(pinned) == 3 and {p.cfg.data.n_data for p in pinned} == {64}
    more = sweep.plan_sweep(space, axes=["sgld.step_size=1e-4,2e-4"], n_seeds=2, seed=5)
    assert len(more) == 24
    assert {p.cfg.seed for p in more} == {5, 6} and all(p.cfg.target.seed == p.cfg.seed for p in more)
    assert {p.values["sgld.step_size"] for p in more} == {1e-4, 2e-4}
    widths = sweep.parse_axis("target.mlp.widths=16,16|64")
    assert widths == ("target.mlp.widths", [(16, 16), (64,)])


@pytest.mark.parametrize("data, match", [
    ({"grid": [{"target.mlp.depthx": [1]}]}, "target.mlp.depthx"),
    ({"grid": [{"target.mlp.depth": 2}]}, "non-empty list"),
    ({"grid": [{"target.mlp.depth": [0]}]}, "target.mlp.depth: must be > 0"),
    ({"colour": 1}, "unknown key"),
])
def test_bad_spaces_fail_in_one_line(data, match):
    with pytest.raises(ConfigError, match=match) as info:
        sweep.plan_sweep(sweep.space_from_dict(data))
    assert "\n" not in str(info.value)


def test_unknown_space_file_lists_the_available_ones(tmp_path):
    result = runner.invoke(app, ["sweep", "--space", str(tmp_path / "nope.toml"), "--dry-run"])
    assert result.exit_code == 2
    assert "smoke" in result.output and "default" in result.output


def test_dry_run_lists_runs_without_running(tmp_path):
    result = runner.invoke(app, ["sweep", "--space", "smoke", "--dry-run", "--n-seeds", "2",
                                 "--out", str(tmp_path / "r.csv"), "--artifacts", str(tmp_path / "a")])
    assert result.exit_code == 0, result.output
    assert "4 runs" in result.output
    assert not (tmp_path / "r.csv").exists() and not (tmp_path / "a").exists()


# --------------------------------------------------------------------------- streaming CSV

class ScriptedBackend(Backend):
    """Yields canned outcomes; checks the CSV between them (it must already hold earlier runs)."""

    name = "scripted"

    def __init__(self, csv_path: Path, interrupt_after: int | None = None):
        self.csv_path = csv_path
        self.interrupt_after = interrupt_after
        self.seen_rows: list[int] = []

    def submit(self, tasks, root, *, skip):
        for i, task in enumerate(tasks):
            if self.interrupt_after is not None and i == self.interrupt_after:
                raise KeyboardInterrupt
            self.seen_rows.append(len(rows(self.csv_path)) if self.csv_path.exists() else 0)
            if i == 1:
                yield Outcome(task.index, task.run_id, FAILED, error="ValueError: boom")
                continue
            record = {"run_id": task.run_id, "artifacts": "", "cached": False,
                      "target": {"d": 10 * (i + 1), "L0": 0.0, "analytic_llc": None},
                      "posterior": {"n": 100, "beta": 0.2, "gamma": 100.0, "nbeta": 20.0},
                      "samplers": {s: {"llc_mean": 1.0 + i, "llc_se": 0.1, "ess": 50.0, "rhat": 1.0,
                                       "wall_s": 2.0, "fde": 100.0, "diverged_chains": 0}
                                   for s in task.config["samplers"]}}
            yield Outcome(task.index, task.run_id, DONE, record)


def _space3():
    return sweep.space_from_dict({"samplers": ["sgld", "hmc"], "base": {"target.kind": "quadratic"},
                                  "grid": [{"target.quadratic.dim": [1, 2, 3]}]})


def test_csv_streams_one_row_per_run_and_sampler(tmp_path):
    out = tmp_path / "res.csv"
    points = sweep.plan_sweep(_space3())
    backend = ScriptedBackend(out)
    summary = sweep.run_sweep(points, backend, tmp_path / "art", out)
    assert backend.seen_rows == [0, 2, 4]  # the file grew after each finished run
    assert (summary.done, summary.cached, summary.failed) == (2, 0, 1)
    table = rows(out)
    assert len(table) == 6 and [r["sampler"] for r in table] == ["sgld", "hmc"] * 3
    assert [r["quad_dim"] for r in table] == ["1", "1", "2", "2", "3", "3"]
    failed = [r for r in table if r["status"] == FAILED]
    assert len(failed) == 2 and failed[0]["error"] == "ValueError: boom" and failed[0]["llc_mean"] == ""
    ok = table[0]
    # WNV = SE² x work, ESS rates: derived when metrics.json does not already hold them.
    assert float(ok["wnv_time"]) == pytest.approx(0.1 ** 2 * 2.0)
    assert float(ok["ess_per_fde"]) == pytest.approx(0.5)
    assert ok["run_id"] == points[0].run_id and ok["n_params"] == "10"


def test_interrupted_sweep_keeps_finished_rows(tmp_path):
    out = tmp_path / "res.csv"
    points = sweep.plan_sweep(_space3())
    with pytest.raises(KeyboardInterrupt):
        sweep.run_sweep(points, ScriptedBackend(out, interrupt_after=1), tmp_path / "art", out)
    assert [r["status"] for r in rows(out)] == [DONE, DONE]


@pytest.mark.parametrize("damage", ["truncated", "zeroed"])
def test_a_damaged_csv_is_said_and_rebuilt(tmp_path, damage):
    """Before: a CSV truncated mid-row kept a row with an empty run_id, and a zeroed one was silently
    replaced. Now either is said in one line, a copy kept, and the file rebuilt from the runs."""
    from rich.console import Console

    out = tmp_path / "res.csv"
    points = sweep.plan_sweep(_space3())
    sweep.run_sweep(points, ScriptedBackend(out), tmp_path / "art", out)
    whole = rows(out)
    data = out.read_bytes()
    out.write_bytes(data[: len(data) - 40] if damage == "truncated" else b"\0" * len(data))
    console = Console(file=io.StringIO(), width=300)
    sweep.run_sweep(points, ScriptedBackend(out), tmp_path / "art", out, console=console)
    said = console.file.getvalue()
    assert f"sweep CSV {out} is damaged" in said and "rebuilding it" in said, said
    assert list(tmp_path.glob("res.csv.damaged-*"))
    rebuilt = rows(out)
    assert all(r["run_id"] for r in rebuilt) and len(rebuilt) == len(whole)
    assert [(r["run_id"], r["sampler"], r["llc_mean"]) for r in rebuilt] == \
        [(r["run_id"], r["sampler"], r["llc_mean"]) for r in whole]


# --------------------------------------------------------------------------- real sweep, restart

def corrupt_target(root: Path, cfg) -> Path:
    """A 'complete' cached target of the wrong precision: the run that needs it fails."""
    from llc.engine.targets import target_id

    tdir = root / "targets" / target_id(cfg)
    tdir.mkdir(parents=True)
    (tdir / "meta.json").write_text(json.dumps({"id": target_id(cfg), "dtype": "float32"}))
    cache.seal(tdir, {})
    return tdir


def test_sweep_cli_failure_then_restart_runs_only_what_is_missing(tmp_path):
    art, out = tmp_path / "art", tmp_path / "res.csv"
    points = sweep.plan_sweep(sweep.load_space("smoke"))
    broken = corrupt_target(art, points[0].cfg)
    args = ["sweep", "--space", "smoke", "--artifacts", str(art), "--out", str(out)]
    first = runner.invoke(app, args)
    # The failing run is reported with its error; the other one still runs; the exit code says so.
    assert first.exit_code == 1, first.output
    assert "1 done, 0 cached, 1 failed" in first.output
    assert f"failed run {points[0].run_id}" in first.output and "PrecisionError" in first.output
    table = rows(out)
    assert [r["status"] for r in table] == [FAILED, DONE]
    assert "PrecisionError" in table[0]["error"] and table[0]["llc_mean"] == ""
    ok = table[1]
    assert float(ok["llc_mean"]) > 0 and float(ok["ess"]) > 0 and ok["rhat"] != ""
    assert ok["wnv_time"] != "" and ok["ess_per_sec"] != "" and ok["target"] == "quadratic"
    assert float(ok["llc_mean"]) == json.loads((art / ok["run_id"] / "result.json").read_text())[
        "samplers"]["sgld"]["llc_mean"]
    # Fixed and started again: only the missing run executes, the finished one comes from the cache.
    shutil.rmtree(broken)
    second = runner.invoke(app, args)
    assert second.exit_code == 0, second.output
    assert "1 done, 1 cached, 0 failed" in second.output
    again = rows(out)
    assert [r["status"] for r in again] == [DONE, CACHED]
    assert again[1]["llc_mean"] == ok["llc_mean"]
    assert all(cache.is_complete(art / r["run_id"]) for r in again)


def test_sweep_cli_bad_flag_values_fail_in_one_line(tmp_path):
    result = runner.invoke(app, ["sweep", "--space", "smoke", "--axis", "sgld.step_size=abc",
                                 "--out", str(tmp_path / "r.csv")])
    assert result.exit_code == 2 and "sgld.step_size" in result.output
    result = runner.invoke(app, ["sweep", "--space", "smoke", "--backend", "cloud", "--out", str(tmp_path / "r.csv")])
    assert result.exit_code == 2 and "--backend" in result.output
    assert not (tmp_path / "r.csv").exists()


# --------------------------------------------------------------------------- plot-sweep

def _synthetic_csv(path: Path) -> Path:
    fields = ["activation", "n_data", "n_params", "sampler", "llc_mean", "llc_se", "ess_per_sec", "ess_per_fde",
              "wnv_time", "run_id", "status"]
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        for act in ("relu", "tanh"):
            for i, d in enumerate((500, 1000, 5000, 10000)):
                for j, s in enumerate(("sgld", "hmc", "mclmc")):
                    w.writerow({"activation": act, "n_data": 1024 * (1 + i % 2), "n_params": d, "sampler": s,
                                "llc_mean": d / 100 * (1 + 0.1 * j), "llc_se": 0.5, "ess_per_sec": 100 / (j + 1),
                                "ess_per_fde": 0.01 * (j + 1), "wnv_time": 0.1 * d / 1000,
                                "run_id": f"{act}{d}", "status": "done"})
        w.writerow({"activation": "relu", "n_params": 700, "sampler": "sgld", "status": "failed", "run_id": "x"})
    return path


def test_plot_sweep_writes_a_png(tmp_path):
    src = _synthetic_csv(tmp_path / "res.csv")
    out = tmp_path / "plot.png"
    result = runner.invoke(app, ["plot-sweep", "--csv", str(src), "--out", str(out),
                                 "--filters", "activation=relu", "--samplers", "sgld,hmc"])
    assert result.exit_code == 0, result.output
    assert out.stat().st_size > 20_000 and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from llc.posthoc.sweep_plots import load_rows

    df = load_rows(src, filters="activation=relu", samplers="sgld,hmc")
    assert set(df["sampler"]) == {"sgld", "hmc"} and set(df["activation"]) == {"relu"} and len(df) == 8
    df = load_rows(src, size_col="n_data", filters="n_data=2048")
    assert len(df) == 12  # numeric filter, failed rows dropped


@pytest.mark.parametrize("args, match", [
    (["--filters", "colour=red"], "no column 'colour'"),
    (["--filters", "activation"], "not col=value"),
    (["--size-col", "nope"], "missing column"),
    (["--filters", "activation=sigmoid"], "no finished runs"),
])
def test_plot_sweep_errors_are_one_line(tmp_path, args, match):
    src = _synthetic_csv(tmp_path / "res.csv")
    result = runner.invoke(app, ["plot-sweep", "--csv", str(src), "--out", str(tmp_path / "p.png"), *args])
    assert result.exit_code == 2
    assert match in result.output and not (tmp_path / "p.png").exists()
