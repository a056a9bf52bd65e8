"""Issue 24 (everyday use, hardened): the remaining items, each with the reproduction it was found by.

Real processes where the behaviour depends on one (Ctrl-C, kill -9, a full or read-only disk);
the rest goes through the CLI in-process.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- 1-2. make install / make quick

@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_makefile_installs_what_the_readme_does_and_runs_that_environment():
    def dry(*targets: str, **variables: str) -> list[str]:
        args = ["make", "-n", "--no-print-directory", "-C", str(REPO), *targets, *(f"{k}={v}" for k, v in variables.items())]
        out = subprocess.run(args, capture_output=True, text=True, check=True, env={"PATH": os.environ["PATH"]})
        return out.stdout.splitlines()

    install = "\n".join(dry("install"))
    assert "--all-extras" not in install  # before: uv sync --all-extras (both CUDA plugins -> segfault)
    assert "uv sync --extra test" in install and "pip install -e '.[test]'" in install  # as the README says
    assert "UV_PROJECT_ENVIRONMENT=.venv" in install and "python3 -m venv .venv" in install
    for target in ("quick", "test", "sweep"):  # before: `python` from PATH, not the installed environment
        (line,) = dry(target)
        assert line.startswith(".venv/bin/python -m "), line
    (line,) = dry("quick", VENV="/opt/env")
    assert line.startswith("/opt/env/bin/python -m llc run")


def test_gpu_extras_are_declared_conflicting():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    conflicts = project["tool"]["uv"]["conflicts"]
    assert [{"extra": "cuda12"}, {"extra": "cuda13"}] in conflicts
    lock = tomllib.loads((REPO / "uv.lock").read_text())  # the lock was resolved with the conflict
    assert [{"package": "llc", "extra": "cuda12"}, {"package": "llc", "extra": "cuda13"}] in lock["conflicts"]


# --------------------------------------------------------------------------- 7. Ctrl-C and kill -9

REPRO = ["run", "--target", "quadratic", "--quad-dim", "3", "--samplers", "sgld"]


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), **extra}


def _temp_names(root: Path) -> list[str]:
    return [p.name for p in root.rglob("*") if ".tmp-" in p.name] if root.exists() else []


def _survivors(pids: list[int], within_s: float = 3.0) -> list[str]:
    """The processes of ``pids`` still alive after ``within_s`` (zombies count as gone)."""
    import psutil

    deadline = time.time() + within_s
    while True:
        alive = []
        for pid in pids:
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(pid)
                if proc.status() != psutil.STATUS_ZOMBIE:
                    alive.append(" ".join(proc.cmdline())[:90])
        if not alive or time.time() > deadline:
            return alive
        time.sleep(0.1)


def _kill_leftovers(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def _start_drawing(art: Path, err: Path) -> tuple[subprocess.Popen, list[int]]:
    """``llc run`` with figures; returns once the first PNG exists (more are being drawn) with the
    ids of its child processes (the figure worker and multiprocessing's resource tracker)."""
    import psutil

    cmd = [sys.executable, "-m", "llc", *REPRO, "--artifacts", str(art)]
    proc = subprocess.Popen(cmd, env=_env(LLC_FIGURE_WORKERS="1"), stdout=subprocess.DEVNULL, stderr=err.open("w"),
                            start_new_session=True)  # its own process group, as a shell job
    deadline = time.time() + 240

    def pngs() -> list[Path]:
        try:
            return list(art.glob("*/*.png"))
        except FileNotFoundError:  # a directory the run removes (its lock, a temporary) went during the scan
            return []

    while not pngs():
        assert time.time() < deadline and proc.poll() is None, err.read_text()[-2000:]
        time.sleep(0.05)
    kids = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
    assert len(kids) >= 2  # the worker and the resource tracker
    return proc, kids


@pytest.mark.parametrize("to_group", [True, False], ids=["terminal-ctrl-c", "sigint-to-main"])
def test_ctrl_c_while_figures_are_drawn_exits_at_once_with_one_line(tmp_path, to_group):
    pytest.importorskip("psutil")
    art, err = tmp_path / "A", tmp_path / "err.txt"
    proc, kids = _start_drawing(art, err)
    try:
        t0 = time.time()
        if to_group:
            os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: every process of the job
        else:
            proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=60)  # before: > 45 s (the main process joined the worker at exit)
        took = time.time() - t0
        assert rc == 130
        assert took < 3.0, took  # measured ~0.1 s; generous for a loaded machine
        assert _survivors(kids) == []  # before: worker and resource tracker orphaned
    finally:
        _kill_leftovers([proc.pid, *kids])
    after = err.read_text().split("background process(es)…", 1)[1]
    lines = [line for line in after.splitlines() if line.strip()]
    assert len(lines) == 1, after  # before: a traceback from the pool's thread
    assert lines[0].startswith("interrupted while drawing figures: the run itself is saved")
    (run_dir,) = [p for p in art.iterdir() if p.name != "targets"]
    assert _temp_names(art) == []
    from llc.store import cache

    assert cache.is_complete(run_dir)


def test_kill_9_of_llc_run_while_figures_are_drawn_leaves_no_process(tmp_path):
    pytest.importorskip("psutil")
    proc, kids = _start_drawing(tmp_path / "A", tmp_path / "err.txt")
    try:
        proc.send_signal(signal.SIGKILL)  # the main process only: its children are not told
        proc.wait(timeout=60)
        assert _survivors(kids) == []  # before: worker and resource tracker alive for good
    finally:
        _kill_leftovers(kids)


# Runs the CLI with a pause (a marker line, then a long sleep) at a chosen point, for a SIGINT there.
INTERRUPTIBLE = textwrap.dedent(r"""
    import sys, time
    point = sys.argv[1]

    def pause():
        print("AT", point, flush=True)
        time.sleep(600)

    if point in ("training", "sampling"):  # in the engine's loop, at its first progress report
        import llc.pipeline.progress as P
        call = P.PlainProgress.__call__
        def patched(self, sampler, done, total, phase):
            call(self, sampler, done, total, phase)
            if done > 0 and (phase == "training") == (point == "training"):
                pause()
        P.PlainProgress.__call__ = patched
    elif point == "writing":  # the first sampler file written into the run's temporary directory
        import arviz as az
        to_netcdf = az.InferenceData.to_netcdf
        def patched(self, *a, **k):
            out = to_netcdf(self, *a, **k)
            pause()
            return out
        az.InferenceData.to_netcdf = patched
    from llc.cli import main
    sys.argv = ["llc", *sys.argv[2:]]
    main()
""")


@pytest.mark.parametrize("point, what", [
    ("training", "building or training the target"),
    ("sampling", "sampling"),
    ("writing", "writing results"),
])
def test_ctrl_c_during_a_run_says_what_stopped_and_keeps_nothing_half_written(tmp_path, point, what):
    art = tmp_path / "A"
    args = (["run", "--preset", "quick", "--samplers", "sgld", "--set", "training.steps=200"] if point == "training"
            else REPRO)
    proc = subprocess.Popen([sys.executable, "-c", INTERRUPTIBLE, point, *args, "--figures", "none",
                             "--artifacts", str(art)], env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == f"AT {point}"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130
    last = [line for line in err.splitlines() if line.strip()][-1]
    # before: exit 130 without a word
    assert last == (f"interrupted while {what}: nothing half-written is kept; run the same command again to start "
                    "over (finished parts are reused)"), err[-2000:]
    assert "Traceback" not in err
    assert _temp_names(art) == []
    assert [p.name for p in art.iterdir() if p.name != "targets"] == [] if art.exists() else True


# --------------------------------------------------------------------------- 8. a full disk

@pytest.fixture
def small_disk(tmp_path):
    """A real 20 MB tmpfs (needs root, as this project's CI runs): writes past it fail with ENOSPC."""
    mount = tmp_path / "disk"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(mount: Path, free_kb: int) -> None:
    """Leave about ``free_kb`` KB free on ``mount``."""
    filler = mount / "filler"
    filler.unlink(missing_ok=True)
    avail = shutil.disk_usage(mount).free
    with filler.open("wb") as fh:
        with contextlib.suppress(OSError):
            fh.write(b"\0" * max(0, avail - free_kb * 1024))


def _llc(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llc", *args], env=_env(), capture_output=True, text=True,
                          timeout=timeout)


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    """The only line that is not progress (a timestamped log line) on stderr, and no traceback."""
    lines = [line for line in proc.stderr.splitlines() if line.strip() and not re.match(r"\d\d:\d\d:\d\d ", line)]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    return lines[0]


QUAD = ["--target", "quadratic", "--quad-dim", "3"]


@pytest.mark.parametrize("free_kb, writing", [
    (20, "targets/tgt_"),  # the target's save (before: long traceback)
    (60, "sgld.nc"),  # the run's NetCDF (before: HDF5 tracebacks, then a segfault: exit 139)
])
def test_a_full_disk_during_a_run_is_one_line_and_leaves_no_temporary_file(small_disk, free_kb, writing):
    art = small_disk / "A"
    _fill(small_disk, free_kb)
    proc = _llc("run", *QUAD, "--samplers", "sgld", "--figures", "none", "--artifacts", str(art))
    assert proc.returncode == 1, proc.stderr[-3000:]
    line = _one_error_line(proc)
    assert line.startswith(f"error: no space left on {small_disk} (") and " KB free) while writing " in line, line
    written = line.split(" while writing ", 1)[1].split(";", 1)[0]
    assert writing in written and ".tmp-" not in written and written.startswith(str(art)), line
    assert line.endswith("nothing half-written is kept: free some space and run again")
    assert _temp_names(small_disk) == []
    assert [p.name for p in art.iterdir() if p.name not in ("targets", ".locks")] == []  # no run directory


@pytest.mark.slow  # the same NetCDF write path as the run's (above), through llc calibrate
def test_a_full_disk_during_a_calibration_is_one_line(small_disk):
    art = small_disk / "A"
    assert _llc("run", *QUAD, "--samplers", "sgld", "--figures", "none", "--draws", "20",
                "--artifacts", str(art)).returncode == 0  # the target is cached
    _fill(small_disk, 100)
    proc = _llc("calibrate", *QUAD, "--draws", "200", "--artifacts", str(art))
    assert proc.returncode == 1, proc.stderr[-3000:]  # before: a segfault (exit 139)
    line = _one_error_line(proc)
    assert re.search(rf"while writing {re.escape(str(art))}/calibrations/cal_\w+/calibration.nc;", line), line
    assert _temp_names(small_disk) == []
    assert not (art / "calibrations").exists() or list((art / "calibrations").iterdir()) == []


GROK_SMALL = ["--preset", "grok-tiny", "--draws", "20", "--chains", "1", "--set", "training.steps=100",
              "--set", "training.checkpoints_log=2", "--set", "training.checkpoints_linear=2", "--set", "sgld.burnin=10",
              "--set", "target.modular.p=11", "--set", "sgld.batch_size=32"]


@pytest.mark.slow
def test_a_full_disk_during_a_trajectory_is_one_line(small_disk):
    art = small_disk / "A"
    _fill(small_disk, 150)  # the target (~100 KB) fits, its trajectory (~180 KB) does not
    proc = _llc("trajectory", *GROK_SMALL, "--artifacts", str(art))
    assert proc.returncode == 1, proc.stderr[-3000:]  # before: a long traceback
    line = _one_error_line(proc)
    assert re.search(r"while writing \S+/trajectories/traj_\w+/", line) and ".tmp-" not in line, line
    assert _temp_names(small_disk) == []


def test_write_failures_name_the_final_file():
    import errno as E

    from llc.store.writes import final_name, write_failure

    assert final_name(Path("/a/.r1.tmp-12-ab@h/.x.nc.tmp-3-cd@h")) == Path("/a/r1/x.nc")
    hdf5 = OSError(E.ENOSPC, "Can't close file (file write failed: time = x, filename = '/a/.r1.tmp-1-a@h/s.nc', "
                             "file descriptor = 4)")
    assert write_failure(hdf5).startswith("no space left on / (")
    assert "while writing /a/r1/s.nc;" in write_failure(hdf5)
    assert write_failure(OSError(E.EROFS, "Read-only file system", "/m/.f.tmp-1-a@h")) == \
        "read-only file system: cannot write /m/f; nothing half-written is kept"
    assert write_failure(OSError(E.ENOENT, "No such file", "/x")) is None  # not a write failure: not ours
    assert write_failure(ValueError("x")) is None


# --------------------------------------------------------------------------- 9. read-only places

@pytest.fixture
def read_only_run(tmp_path):
    """A complete run on a tmpfs remounted read-only (root ignores permission bits, not a ro mount)."""
    mount = tmp_path / "ro"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(mount)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        art = mount / "A"
        proc = _llc("run", *QUAD, "--samplers", "sgld", "--figures", "none", "--draws", "20", "--artifacts", str(art))
        assert proc.returncode == 0, proc.stderr[-2000:]
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        (run_dir,) = [p for p in art.iterdir() if p.name not in ("targets", ".locks")]
        yield art, run_dir
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_analyze_and_report_on_a_read_only_place_are_one_line_before_work(read_only_run, tmp_path):
    from typer.testing import CliRunner

    from llc.cli import app

    art, run_dir = read_only_run
    cases = [  # before: a 35- to 47-line EROFS traceback, exit 1, after the work was done
        (["analyze", str(run_dir), "--plots", "none"], f"error: analyze: cannot create {run_dir}/analysis ({run_dir} "
                                                       "is not writable: Read-only file system)"),
        (["report", str(run_dir)], f"error: report: {run_dir} is not writable (Read-only file system)"),
        (["report", str(art)], f"error: report: {art} is not writable (Read-only file system)"),
        (["report", str(run_dir), "--out", str(art / "x.html")], f"error: --out: {art} is not writable"),
    ]
    for args, expected in cases:
        res = CliRunner().invoke(app, args)
        lines = [line for line in res.output.splitlines() if line.strip()]
        assert res.exit_code == 2 and len(lines) == 1 and lines[0].startswith(expected), (args, res.output)
    # elsewhere the same commands work: the check refuses only what cannot be written
    res = CliRunner().invoke(app, ["analyze", str(run_dir), "--plots", "none", "--out", str(tmp_path / "an")])
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize("command", [["calibrate", *QUAD], ["trajectory", "--preset", "grok-tiny"]])
def test_calibrate_and_trajectory_refuse_unwritable_roots_before_work(read_only_run, command):
    from typer.testing import CliRunner

    from llc.cli import app

    art, _ = read_only_run
    for root, expected in ((art, f"error: --artifacts: {art} is not writable (Read-only file system)"),
                           (Path("/dev/null"), "error: --artifacts: /dev/null is a file, not a directory")):
        res = CliRunner().invoke(app, [*command, "--artifacts", str(root)])
        lines = [line for line in res.output.splitlines() if line.strip()]
        assert res.exit_code == 2 and lines == [expected], res.output


# --------------------------------------------------------------------------- 14. redraw what is gone; moved roots

def test_deleted_or_truncated_figures_and_a_zeroed_gallery_are_redrawn(tmp_path):
    import json

    from llc.config import build_config
    from llc.pipeline.experiment import run_experiment
    from llc.posthoc import figures

    cfg = build_config(None, ["target.kind=quadratic", "target.quadratic.dim=3", "samplers=sgld", "sgld.draws=100",
                              "figures=summary"])
    run_dir = Path(run_experiment(cfg, tmp_path / "A")["artifacts"])
    record = json.loads((run_dir / "figures.json").read_text())
    assert set(record["keys"]) == set(figures.SUMMARY_PLOTS)
    deleted, truncated = run_dir / "sgld_llc_running.png", run_dir / "sgld_L_trace.png"
    deleted.unlink()
    truncated.write_bytes(truncated.read_bytes()[:500])
    (run_dir / "gallery.md").write_bytes(b"\0" * 300)
    # the record no longer claims what is not on disk, whole
    assert figures.recorded_keys(run_dir) == {"combined"}

    assert run_experiment(cfg, tmp_path / "A")["cached"] is True  # before: nothing redrawn
    for png in (deleted, truncated):
        assert figures.png_intact(png), png
    gallery = (run_dir / "gallery.md").read_text()
    assert gallery.startswith("# Figures of run") and "](sgld_llc_running.png)" in gallery
    record = json.loads((run_dir / "figures.json").read_text())
    assert set(record["keys"]) == set(figures.SUMMARY_PLOTS)
    assert record["files"] == sorted(p.name for p in run_dir.glob("*.png"))

    # a zeroed gallery alone (every PNG whole) is rewritten too, without drawing anything
    (run_dir / "gallery.md").write_bytes(b"\0" * 300)
    stamps = {p.name: p.stat().st_mtime_ns for p in run_dir.glob("*.png")}
    run_experiment(cfg, tmp_path / "A")
    assert (run_dir / "gallery.md").read_text().startswith("# Figures of run")
    assert stamps == {p.name: p.stat().st_mtime_ns for p in run_dir.glob("*.png")}
    from llc.store import cache

    assert cache.is_complete(run_dir)  # figure records are not part of the sealed run


def test_a_copied_artifacts_root_reports_where_its_files_are(tmp_path):
    import json

    from typer.testing import CliRunner

    from llc.cli import app

    args = ["calibrate", *QUAD, "--draws", "100", "--grid", "sgld.step_size=1e-4,3e-4", "--json"]
    first = CliRunner().invoke(app, [*args, "--artifacts", str(tmp_path / "A")])
    assert first.exit_code == 0, first.output
    shutil.copytree(tmp_path / "A", tmp_path / "B")
    shutil.rmtree(tmp_path / "A")
    res = CliRunner().invoke(app, [*args, "--artifacts", str(tmp_path / "B")])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["cached"] is True
    where = tmp_path / "B" / "calibrations" / summary["calibration_id"]
    assert summary["artifacts"] == str(where)  # before: the old root's path
    if summary.get("preset"):  # where a point is recommended
        assert summary["preset"] == str(where / "recommended.toml") and Path(summary["preset"]).is_file()
    assert str(tmp_path / "A") not in res.stdout  # no path of the old root anywhere

    run = ["run", *QUAD, "--samplers", "sgld", "--draws", "50", "--figures", "none", "--json"]
    assert CliRunner().invoke(app, [*run, "--artifacts", str(tmp_path / "B")]).exit_code == 0
    shutil.copytree(tmp_path / "B", tmp_path / "C")
    res = CliRunner().invoke(app, [*run, "--artifacts", str(tmp_path / "C")])
    record = json.loads(res.stdout.strip().splitlines()[-1])
    assert record["cached"] is True and record["artifacts"].startswith(str(tmp_path / "C"))


# --------------------------------------------------------------------------- 3. tables at 80 columns

def cell_len(line: str) -> int:
    from rich.cells import cell_len as width

    return width(line)  # "λ̂" is two code points, one cell

def _tables():
    """A run's, a calibration's, a trajectory's and llc analyze's tables, with the values the
    issue saw cut at 80 columns (long numbers, a long flag, many columns)."""
    from rich.table import Table

    from llc import console as C
    from llc.posthoc.analyze import metrics_tables

    flag = ("unconverged: bulk ESS = 2 and tail ESS = 26 < 100: too few effective draws to trust the SE "
            "(run more draws)")
    sampler = {"llc_mean": 1.2345678, "llc_se": 0.0312, "ess": 724.3, "rhat": 1.004, "wall_s": 0.05, "fde": 5500.0,
               "diverged_chains": 0, "flags": [flag]}
    result = {"run_id": "8696bec49e68", "cached": True, "artifacts": "/a/8696bec49e68",
              "target": {"id": "tgt_2d65c7baeb8a", "kind": "quadratic", "d": 3, "n": 2048, "analytic_llc": 1.0931},
              "posterior": {"nbeta": 268.6, "gamma": 100.0}, "samplers": {"sgld": sampler, "hmc": sampler}}
    run = C.result_table(result)
    row = {"sgld.step_size": 0.00031622, "posterior.gamma": 200.0, "nbeta": 268.6, "llc_mean": 0.93456,
           "llc_se": 0.034, "analytic_llc": 0.8598123, "rhat": 1.279, "ess": 12.0, "mala_acceptance": 0.999,
           "flags": "unconverged: R-hat 1.279", "recommended": True, "healthy": True}
    cal = C.calibration_table({"axes": {"sgld.step_size": [], "posterior.gamma": []}, "sampler": "sgld",
                               "calibration_id": "cal_40abdd3ae2be", "target": result["target"], "rows": [row] * 3,
                               "reference": {"kind": "analytic", "llc_mean": 1.093}})
    est, eff = metrics_tables({"run_id": "r1", "target": result["target"], "posterior": result["posterior"],
                               "target_se": 1.0, "samplers": {"sampler_with_a_long_name": {
                                   **sampler, "mcse": 0.0312, "ess_bulk": 724.0, "ess_tail": 151.0,
                                   "acceptance_mean": 0.8123, "energy_change_abs_mean": 0.0123,
                                   "divergent_transitions": 3, "ess_per_sec": 112.0, "ess_per_fde": 0.0325,
                                   "wnv_time": 0.0062, "wnv_fde": 21.4, "time_to_se1": 0.0062, "fde_to_se1": 21.4}}})
    traj_rows = [{"step": s, "llc_mean": 0.0123456, "llc_se": 0.00123, "rhat": 1.0012, "ess": 2.0, "train_acc": 0.05,
                  "test_acc": 0.098, "train_loss": 2.4012, "hessian_trace": 4.6421, "fisher_trace": 4.67,
                  "grad_norm": 0.2, "flags": flag} for s in (0, 100, 4000)]
    traj = {"sampler": "sgld", "target": result["target"], "rows": traj_rows, "artifacts": "/a/t", "computed": 3,
            "checkpoints": 3, "wall_s": 1.0, "compile_s": 1.0}
    assert all(isinstance(t, Table) for t in (run, cal, est, eff))
    return {"run": run, "calibration": cal, "analyze estimates": est, "analyze efficiency": eff}, traj, row


def _cell_texts(table) -> list[str]:
    from rich.text import Text

    return [Text.from_markup(c).plain if isinstance(c, str) else str(c) for col in table.columns for c in col._cells]


@pytest.mark.parametrize("width", [80, 100, 240])
def test_every_table_is_readable_at_the_terminal_width(width, monkeypatch):
    """Every value and header whole (before at 80 columns: ``0.0…``, ``samp…``, a headerless column)."""
    import io

    from rich.console import Console

    from llc import console as C

    monkeypatch.setenv("COLUMNS", str(width))  # the width of a piped or narrow terminal
    tables, traj, _ = _tables()
    printed = {}
    for name, table in tables.items():
        values = [v for v in _cell_texts(table) if v.strip()]
        headers = [str(c.header) for c in table.columns]
        assert all(h.strip() for h in headers), (name, headers)  # every column says what it is
        out = io.StringIO()
        console = Console(file=out)
        assert console.width == width
        console.print(C.fit(table, console))
        printed[name] = text = out.getvalue()
        assert "…" not in text, (name, text)
        assert max(cell_len(line) for line in text.splitlines()) <= width, text
        flat = " ".join(text.split())  # a long flag may wrap across lines; every value is there whole
        for value in values + headers:
            assert " ".join(value.split()) in flat, (name, value, text)
    out = io.StringIO()
    C.print_trajectory(traj, Console(file=out))
    text = out.getvalue()
    assert "…" not in text and max(cell_len(line) for line in text.splitlines()) <= width, text
    for value in ("0.01235 ± 0.0012", "4.64", "0.098", "2.4", "step", "‖∇L‖", "4000"):
        assert value in text, (value, text)
    if width == 80:  # at 80, the wide tables are stacked: one block per row
        assert "┃" not in printed["calibration"] and "┃" not in text
    if width == 240:  # wide enough: tables as tables
        assert all("┃" in t for t in printed.values()) and "┃" in text


def test_the_cli_tables_are_readable_when_piped(tmp_path):
    """Through the real CLI at COLUMNS=80 (what a pipe gets): llc run and llc analyze."""
    art = tmp_path / "A"
    env = _env(COLUMNS="80")
    proc = subprocess.run([sys.executable, "-m", "llc", *QUAD_RUN, "--artifacts", str(art)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run_dir = next(p for p in art.iterdir() if p.name not in ("targets", ".locks"))
    ana = subprocess.run([sys.executable, "-m", "llc", "analyze", str(run_dir), "--plots", "none", "--out",
                          str(tmp_path / "an")], env=env, capture_output=True, text=True, timeout=300)
    assert ana.returncode == 0, ana.stderr[-2000:]
    for text in (proc.stdout, ana.stdout):
        assert "…" not in text and max(cell_len(line) for line in text.splitlines()) <= 80, text  # before: samp…, acce…
        assert "sgld" in text and "λ̂ ± SE" in text


QUAD_RUN = ["run", *QUAD, "--samplers", "sgld", "--draws", "50", "--figures", "none"]
