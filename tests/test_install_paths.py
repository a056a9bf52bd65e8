"""Every documented install path, in a fresh copy of the repository: pip (the README), uv (the README's
alternative) and make (``make install`` then ``make quick``) each install an environment that runs a
config it has never run (issue 24: ``make install`` once installed both CUDA plugins, so any new config
segfaulted, and ``make quick`` ran whatever ``python`` came first on PATH). Minutes each: slow."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
# A config no cache holds (LLC_JAX_CACHE=off: it compiles), small enough for seconds of sampling.
NEW_CONFIG = ["run", "--target", "quadratic", "--quad-dim", "3", "--samplers", "hmc", "--draws", "60",
              "--set", "hmc.warmup=60", "--figures", "none", "--json"]


def _copy(tmp: Path) -> Path:
    """The repository's tracked and untracked-not-ignored files, as a fresh clone has them."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, check=True,
                           capture_output=True, text=True).stdout.split()
    dest = tmp / "llc"
    for name in files:
        src = REPO / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "UV_PROJECT_ENVIRONMENT")}
    env.update(LLC_JAX_CACHE="off", JAX_PLATFORMS="cpu", **extra)
    return env


def _ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, (proc.returncode, proc.stdout[-2000:], proc.stderr[-3000:])


def _check_record(stdout: str) -> None:
    result = json.loads(stdout)
    assert result["samplers"]["hmc"]["llc_mean"] > 0 and result["cached"] is False


def _uv() -> list[str]:
    if shutil.which("uv"):
        return ["uv"]
    _ok(subprocess.run([sys.executable, "-m", "pip", "install", "-q", "uv"], capture_output=True, text=True))
    return [sys.executable, "-m", "uv"]


def test_pip_install_runs_a_new_config(tmp_path):
    repo = _copy(tmp_path)
    _ok(subprocess.run([sys.executable, "-m", "venv", ".venv"], cwd=repo, capture_output=True, text=True))
    _ok(subprocess.run([".venv/bin/pip", "install", "-q", "-e", ".[test]"], cwd=repo, env=_env(),
                       capture_output=True, text=True, timeout=1800))
    out = subprocess.run([".venv/bin/llc", *NEW_CONFIG, "--artifacts", "a"], cwd=repo, env=_env(),
                         capture_output=True, text=True, timeout=900)
    _ok(out)
    _check_record(out.stdout)


def test_uv_sync_runs_a_new_config_and_refuses_both_cuda_extras(tmp_path):
    repo = _copy(tmp_path)
    uv = _uv()
    both = subprocess.run([*uv, "sync", "--all-extras", "--dry-run"], cwd=repo, env=_env(), capture_output=True,
                          text=True, timeout=900)
    assert both.returncode != 0 and "incompatible" in both.stderr, both.stderr[-2000:]
    _ok(subprocess.run([*uv, "sync", "--extra", "test"], cwd=repo, env=_env(), capture_output=True, text=True,
                       timeout=1800))
    out = subprocess.run([*uv, "run", "llc", *NEW_CONFIG, "--artifacts", "a"], cwd=repo, env=_env(),
                         capture_output=True, text=True, timeout=900)
    _ok(out)
    _check_record(out.stdout)


def test_make_install_then_make_quick_uses_the_installed_environment(tmp_path):
    repo = _copy(tmp_path)
    # A PATH whose first python has no llc (the reported failure: make quick ran pyenv's Python).
    decoy = tmp_path / "decoy"
    decoy.mkdir()
    (decoy / "python").write_text("#!/bin/sh\necho 'decoy python: make used the wrong interpreter' >&2; exit 97\n")
    (decoy / "python").chmod(0o755)
    env = _env(PATH=f"{decoy}:{os.environ['PATH']}")
    _ok(subprocess.run(["make", "install"], cwd=repo, env=env, capture_output=True, text=True, timeout=1800))
    assert (repo / ".venv" / "bin" / "python").exists()
    quick = subprocess.run(["make", "quick"], cwd=repo, env=env,
                           capture_output=True, text=True, timeout=1200)
    _ok(quick)
    assert "LLC estimates" in quick.stdout
    out = subprocess.run([".venv/bin/python", "-m", "llc", *NEW_CONFIG, "--artifacts", "a"], cwd=repo, env=env,
                         capture_output=True, text=True, timeout=900)
    _ok(out)
    _check_record(out.stdout)
