"""The submitit backend on a real SLURM cluster (one node on this host: scripts/slurm-local.sh).

The cluster is started here if it is not running (as root; packages: ``apt-get install -y
slurm-wlm munge``) and stopped afterwards if this module started it. Where SLURM cannot start
the tests skip with the reason, except with LLC_REQUIRE_SLURM=1 (CI), where they fail instead.
"""

from __future__ import annotations

import csv
import math
import os
import re
import subprocess
import sys

import pytest

from llc.store import cache

from llc.pipeline import sweep
from llc.pipeline.backends import DONE, FAILED, BackendUnavailable, execute

from backend_support import (  # noqa: F401  (fixtures are used by name)
    CODE_VERSION, assert_same_draws, pinned_code_version, points, reference)

pytestmark = pytest.mark.slurm

PROJECT = cache.PROJECT_DIR
SCRIPT = PROJECT / "scripts" / "slurm-local.sh"


def _unavailable(reason: str):
    if os.environ.get("LLC_REQUIRE_SLURM") == "1":
        pytest.fail(f"LLC_REQUIRE_SLURM=1 but SLURM is unavailable: {reason}")
    pytest.skip(f"SLURM unavailable: {reason}")


@pytest.fixture(scope="module")
def slurm_cluster():
    status = subprocess.run(["bash", str(SCRIPT), "status"], capture_output=True, text=True, timeout=60)
    if status.returncode == 0:
        yield "running"
        return
    if os.geteuid() != 0:
        _unavailable("the local cluster needs root to start (sudo scripts/slurm-local.sh start)")
    start = subprocess.run(["bash", str(SCRIPT), "start"], capture_output=True, text=True, timeout=600)
    if start.returncode != 0:
        tail = " | ".join((start.stderr or start.stdout).strip().splitlines()[-3:])
        _unavailable(f"scripts/slurm-local.sh start failed: {tail}")
    try:
        yield "started"
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop"], capture_output=True, text=True, timeout=120)


def test_sweep_on_slurm_equals_a_local_run(slurm_cluster, reference, tmp_path):
    ref_root, ref = reference
    art, out = tmp_path / "art", tmp_path / "res.csv"
    env = {**os.environ, cache.CODE_VERSION_ENV: CODE_VERSION}
    proc = subprocess.run(
        [sys.executable, "-m", "llc", "sweep", "--space", "smoke", "--backend", "submitit", "--cpus", "1",
         "--timeout-min", "10", "--artifacts", str(art), "--out", str(out)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 done, 0 cached, 0 failed" in proc.stderr

    with out.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["status"] for r in rows] == [DONE, DONE]
    assert [r["run_id"] for r in rows] == [o.run_id for o in ref]
    # The jobs went through sbatch as one array: ids <array>_<task>, logs under <artifacts>/slurm_logs.
    job_ids = [r["backend_info"] for r in rows]
    assert all(re.fullmatch(r"\d+_\d+", j) for j in job_ids) and len({j.split("_")[0] for j in job_ids}) == 1
    for j in job_ids:
        logs = list((art / "slurm_logs" / j).glob("*_log.out"))
        assert logs, f"no SLURM log for job {j}"
    for row, theirs in zip(rows, ref):
        rid = row["run_id"]
        for key in ("llc_mean", "llc_se", "ess"):  # derived floats: last-bit slack (NumPy alignment)
            assert math.isclose(float(row[key]), theirs.result["samplers"]["sgld"][key], rel_tol=1e-12)
        # Same files, same draws, bit for bit.
        assert sorted(p.name for p in (art / rid).iterdir()) == sorted(p.name for p in (ref_root / rid).iterdir())
        assert_same_draws(art / rid, ref_root / rid)

    # Started again: everything is cached, nothing is submitted.
    jobs_before = sorted(p.name for p in (art / "slurm_logs").iterdir())
    again = subprocess.run(
        [sys.executable, "-m", "llc", "sweep", "--space", "smoke", "--backend", "submitit",
         "--artifacts", str(art), "--out", str(out)], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=300)
    assert again.returncode == 0 and "0 done, 2 cached, 0 failed" in again.stderr, again.stderr[-2000:]
    assert sorted(p.name for p in (art / "slurm_logs").iterdir()) == jobs_before


def test_a_killed_job_is_reported_failed(slurm_cluster, points, tmp_path, monkeypatch):
    from llc.pipeline.backends import submitit_backend
    from llc.pipeline.backends.submitit_backend import SubmititBackend

    monkeypatch.setattr(submitit_backend, "RESULT_GRACE_S", 1.0)
    # Long enough that it is still running when cancelled (it would take minutes).
    long_cfg = sweep.plan_sweep(sweep.load_space("smoke"), overrides=["sgld.draws=2000000"])[0].cfg
    backend = SubmititBackend(cpus=1, timeout_min=10, poll_s=0.2)
    cancelled = None
    outcome = None
    for out in execute(backend, [long_cfg], tmp_path):
        if out is not None:
            outcome = out
            break
        running = [j for j, s in backend._states.items() if s == "RUNNING"]
        if running and cancelled is None:
            cancelled = running[0]
            subprocess.run(["scancel", cancelled.split("_")[0]], check=True)
    assert cancelled is not None
    assert outcome.status == FAILED
    assert f"SLURM job {cancelled} ended without a result" in outcome.error
    assert not (tmp_path / outcome.run_id).exists()


def test_missing_slurm_is_one_clear_line(monkeypatch):
    from llc.pipeline.backends import submitit_backend

    monkeypatch.setattr(submitit_backend.shutil, "which", lambda tool: None)
    with pytest.raises(BackendUnavailable, match="slurm-local.sh start") as info:
        submitit_backend.SubmititBackend().check()
    assert "\n" not in str(info.value)
