"""Issue 24 (everyday use, hardened): the remaining items, each with the reproduction it was found by.

Real processes where the behaviour depends on one (Ctrl-C, kill -9, a full or read-only disk);
the rest goes through the CLI in-process.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
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
