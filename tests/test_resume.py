"""A training killed with SIGKILL resumes from its saved state to the uninterrupted result; a trained
target is extended as a new target that records its parent (``llc trajectory --extend``)."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest

from llc.config import build_config
from llc.engine.targets import build_target, extend_target, get_target, load_checkpoints, load_training_log
from llc.pipeline.sampling import enable_x64
from llc.store import targets as stored

enable_x64()

SMALL = ["target.kind=modular", "target.modular.model=mlp", "target.modular.p=5", "target.modular.train_frac=0.6",
         "target.modular.mlp.width=8", "samplers=sgld", "sgld.batch_size=8", "target.dtype=float32",
         "training.optimizer=adamw", "training.weight_decay=0.5", "training.learning_rate=1e-2",
         "training.warmup_steps=10", "training.checkpoints_linear=4", "training.log_every=10"]

KILLED = textwrap.dedent("""
    import os, signal, sys
    from llc.pipeline.sampling import enable_x64
    enable_x64()
    from llc.config import build_config
    from llc.engine.targets import get_target, training
    training.RESUME_EVERY_S = 0.0  # save between every chunk
    def progress(done, total):
        if done >= total // 2:
            os.kill(os.getpid(), signal.SIGKILL)  # kill -9 halfway: no cleanup of any kind
    get_target(build_config(None, sys.argv[2:]), sys.argv[1], progress=progress)
""")


def _same(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)


def test_training_killed_halfway_resumes_to_the_uninterrupted_result(tmp_path):
    cfg = build_config(None, [*SMALL, "training.steps=200"])
    script = tmp_path / "killed.py"
    script.write_text(KILLED)
    repo = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "root"), *SMALL, "training.steps=200"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == -9, done.stderr
    from llc.engine.targets import target_id

    resume = stored.resume_path(tmp_path / "root", target_id(cfg))
    assert resume.is_file() and not stored.target_path(tmp_path / "root", target_id(cfg)).exists()
    lines: list[str] = []
    resumed = get_target(cfg, tmp_path / "root", log=lines.append)
    assert any("resuming after step" in line for line in lines), lines
    step = int(next(line for line in lines if "resuming" in line).split("after step ")[1].split()[0])
    assert 0 < step < 200
    assert not resume.exists()  # removed once the target is saved
    whole = build_target(cfg)  # never interrupted
    _same(resumed.params, whole.params)
    ck_r, ck_w = load_checkpoints(resumed), whole.checkpoints
    assert ck_r.steps.tolist() == ck_w.steps.tolist()
    _same(ck_r.params, ck_w.params)
    for k, v in ck_w.metrics.items():
        np.testing.assert_array_equal(ck_r.metrics[k], v)
    for k, v in whole.log.items():
        np.testing.assert_array_equal(load_training_log(resumed)[k], v)


def test_extended_target_goes_on_from_its_parent(tmp_path, monkeypatch):
    import llc.engine.targets as targets

    monkeypatch.setattr(targets, "probes_for", lambda cfg: None)  # not what is tested here; 3x faster
    parent_cfg = build_config(None, [*SMALL, "training.steps=60"])
    parent = get_target(parent_cfg, tmp_path)
    child = extend_target(parent_cfg, parent, 40, tmp_path)
    assert child.id != parent.id and child.meta["parent"] == parent.id
    assert child.meta["extends"] == {"parent": parent.id, "from_step": 60, "steps": 40}
    # full-batch AdamW from the parent's parameters and optimizer state: the run of 100 steps
    whole = build_target(build_config(None, [*SMALL, "training.steps=100"]))
    for a, b in zip(jax.tree.leaves(child.params), jax.tree.leaves(whole.params)):
        np.testing.assert_array_equal(a, b)
    again = extend_target(parent_cfg, get_target(parent_cfg, tmp_path), 40, tmp_path)  # from the store
    assert again.cached and again.id == child.id
    _same(again.params, child.params)
    ck = load_checkpoints(again)
    assert ck.steps.tolist() == [0, 20, 40, 60, 73, 87, 100]  # the parent's, then the extension's
    _same(ck.params[3], parent.params)
    log = load_training_log(again)
    assert log["step"].tolist() == list(range(0, 101, 10))
    np.testing.assert_allclose(log["train_loss"][-1], again.L0, rtol=1e-5)
    with pytest.raises(ValueError, match="--extend: must be > 0"):
        extend_target(parent_cfg, parent, 0, tmp_path)


def test_cli_trajectory_extend(tmp_path, monkeypatch):
    import json

    from typer.testing import CliRunner

    import llc.engine.targets as targets
    from llc.cli import app

    monkeypatch.setattr(targets, "probes_for", lambda cfg: None)
    sets = [*SMALL, "training.steps=60", "sgld.chains=2", "sgld.draws=20", "sgld.burnin=5", "sgld.eval_every=2",
            "sgld.step_size=1e-4"]
    args = ["trajectory", "--artifacts", str(tmp_path), "--json", "--max-batch", "4",
            *sum((["--set", o] for o in sets), [])]
    out = CliRunner().invoke(app, [*args, "--extend", "40"])
    assert out.exit_code == 0, out.output
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    parent = get_target(build_config(None, sets), tmp_path)
    assert summary["target"]["parent"] == parent.id and summary["target"]["id"] != parent.id
    assert [r["step"] for r in summary["rows"]] == [0, 20, 40, 60, 73, 87, 100]
    plain = json.loads(CliRunner().invoke(app, args).stdout.strip().splitlines()[-1])
    assert plain["artifacts"] != summary["artifacts"] and "parent" not in plain["target"]
    assert [r["step"] for r in plain["rows"]] == [0, 20, 40, 60]
