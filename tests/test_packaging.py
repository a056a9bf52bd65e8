"""Presets and sweep spaces ship inside the package, so a non-editable install finds them."""
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PRESETS = sorted(p.name for p in (REPO / "llc" / "presets").glob("*.toml"))


def test_presets_live_in_the_package():
    assert {"quick.toml", "full.toml", "sweep_default.toml", "sweep_smoke.toml"} <= set(PRESETS)
    assert not (REPO / "presets").exists()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    # Build from a copy holding only what the sdist would (no artifacts/, .venv/), so the build
    # neither litters the checkout nor walks large directories.
    src = tmp_path_factory.mktemp("src")
    shutil.copytree(REPO / "llc", src / "llc", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(src)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    wheels = list(out.glob("llc-*.whl"))
    assert len(wheels) == 1
    return wheels[0]


def test_wheel_contains_presets_and_spaces(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in PRESETS:
        assert f"llc/presets/{name}" in names


def test_installed_wheel_finds_presets(wheel, tmp_path):
    # Unpack the wheel (what `pip install .` puts in site-packages) and import llc from there only.
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = ("import llc.config as c, llc.pipeline.sweep as s; "
            "assert c.PRESETS_DIR.is_relative_to(%r), c.PRESETS_DIR; "
            "c.build_config('quick'); s.load_space('smoke'); print(','.join(c.preset_names()))") % str(site)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                          env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == ",".join(sorted(n[:-5] for n in PRESETS if not n.startswith("sweep")))
