"""The benchmark script runs at its tiny size and writes the JSON the README documents.

No timing assertions: benchmarks run on demand (benchmarks/README.md); this only guards the script.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "run.py"


def _bench_module():
    """benchmarks/run.py as a module (it imports nothing heavy at module level)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("llc_benchmarks_run", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_unknown_section_is_rejected():
    bench_run = _bench_module()
    with pytest.raises(SystemExit):
        bench_run.parse_args(["--sections", "overhead,warp"])


def test_goal_summary_reads_measured_figures():
    bench_run = _bench_module()
    results = {"overhead": {"minibatch": {"overhead": 1.5}},
               "devinterp": {"available": True, "speedup_wall": 12.0, "speedup_wall_incl_compile": 3.0,
                             "llc_diff_z": 0.5, "agree_within_3se": True}}
    goals = {g["goal"].split(" (")[0]: g["met"] for g in bench_run.goal_summary(results, "cpu")}
    assert goals["SGLD overhead vs raw minibatch value_and_grad"] is False
    assert goals["SGLD throughput vs devinterp, same CPU/chains/draws"] is True
    assert goals["lambda-hat agrees with devinterp"] is True


@pytest.mark.slow  # ~1 min on 2 cores: the benchmark harness end to end, run on demand like the benchmarks
def test_tiny_run_writes_expected_json(tmp_path):
    out = tmp_path / "bench.json"
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONWARNINGS="ignore")
    cmd = [sys.executable, str(SCRIPT), "--size", "tiny", "--device-kind", "cpu", "--samplers", "sgld",
           "--sections", "overhead,efficiency,scaling", "--out", str(out), "--artifacts", str(tmp_path / "art")]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())

    meta = data["meta"]
    assert meta["device_kind"] == "cpu" and meta["size"] == "tiny"
    assert meta["sections"] == ["overhead", "efficiency", "scaling"]
    assert {"loadavg_start", "loadavg_end", "versions", "goals"} <= set(meta)

    res = data["results"]
    assert not any("error" in r for r in res.values()), {k: r.get("error") for k, r in res.items()}
    mb = res["overhead"]["minibatch"]
    for key in ("raw_grads_per_s", "gather_grads_per_s", "sgld_step_grads_per_s", "sgld_steps_per_s",
                "overhead", "sgld_compile_s", "raw_compile_s"):
        assert mb[key] > 0, key
    # Samplers left out with --samplers are reported, not silently dropped.
    assert res["overhead"]["full_batch"]["hmc"]["available"] is False
    assert res["efficiency"]["mclmc"]["available"] is False

    sg = res["efficiency"]["sgld"]
    assert sg["available"] and sg["ess"] > 0 and sg["ess_per_s"] > 0 and sg["ess_per_fde"] > 0
    assert sg["llc_mean"] is not None

    sc = res["scaling"]
    assert [r["d"] for r in sc["params"]] == sorted(r["d"] for r in sc["params"])
    for sweep in ("params", "data", "chains"):
        assert sc[sweep], sweep
        for row in sc[sweep]:
            assert row["sgld_steps_per_s"] > 0 and row["raw_grads_per_s"] > 0
            assert row["sgld_program_bytes"] > 0 and row["host_maxrss_bytes"] > 0

    goal_names = [g["goal"] for g in meta["goals"]]
    assert any(name.startswith("SGLD overhead") for name in goal_names)
    # The tables go to stdout.
    assert "Overhead vs the limit" in proc.stdout and "SGLD scaling" in proc.stdout
