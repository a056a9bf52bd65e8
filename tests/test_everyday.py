"""Issue 24 (everyday use, hardened): the remaining items, each with the reproduction it was found by.

Real processes where the behaviour depends on one (Ctrl-C, kill -9, a full or read-only disk);
the rest goes through the CLI in-process.
"""

from __future__ import annotations

import contextlib
import os
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
    while not list(art.glob("*/*.png")):
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
