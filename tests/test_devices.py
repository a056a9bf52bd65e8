"""Several local devices (llc.engine.devices): the sharded program equals the one-device one, and
the device settings are checked before any work.

The equality tests run tests/devices_worker.py in a process of its own with 4 forced host devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=4`` must be set before JAX starts; this test
process has one CPU device). Each case runs on 1 device and on 4 in that process and reports the
largest relative difference, which the tests bound.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llc.cli import app
from llc.config import ConfigError, build_config
from llc.engine import devices
from llc.pipeline.resources import estimate

WORKER = Path(__file__).with_name("devices_worker.py")


def _forced_four(tmp_path: Path, *cases: str) -> dict:
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": os.pathsep.join([str(WORKER.parent.parent), os.environ.get("PYTHONPATH", "")])}
    env.pop("LLC_DEVICES", None)
    env.pop("LLC_DATA_SHARDS", None)
    done = subprocess.run([sys.executable, str(WORKER), str(tmp_path), *cases], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["devices"] == 4
    return result


def test_plain_run_calibration_and_data_shards_equal_one_device(tmp_path):
    """4 devices against 1: a run (SGLD's auto-step grid, 4 settings x 4 chains), a calibration (5
    points x 2 chains: padded to 6 settings over 2 setting shards) and HMC with the data's rows over
    4 devices (the full-batch gradient reduced across them). The record, manifest and header say
    how many devices ran."""
    r = _forced_four(tmp_path, "plain_run", "calibration", "data_shards")
    run = r["plain_run"]
    assert run["devices"] == [1, 4] and run["manifest"] == [1, 4]
    assert run["header"][0].endswith("x64 on, 1 device used") and run["header"][1].endswith("4 devices used")
    assert run["rel"]["sgld"] < 1e-5
    assert r["calibration"]["devices"] == [1, 4] and r["calibration"]["rel"] < 1e-5
    assert r["data_shards"]["hmc_4x4"]["Ln"] < 1e-8 and r["data_shards"]["hmc_4x4"]["theta"] < 1e-8


@pytest.mark.slow
def test_trajectory_hmc_run_and_sgld_data_shards_equal_one_device(tmp_path):
    """The API's trajectory (3 checkpoints padded to 4 settings), a run with HMC, and data split 4 and
    2 ways for HMC and SGLD (minibatches gathered across devices). HMC's window adaptation turns a
    rounding difference (XLA may order a reduction differently for another per-device batch shape,
    as it does on one device for another batch size) into a different tuned step after many steps:
    its run is bounded loosely, its short data-split chains tightly."""
    r = _forced_four(tmp_path, "trajectory", "plain_run_hmc", "data_shards_all")
    assert r["trajectory"]["devices"] == [1, 4] and r["trajectory"]["rel"] < 1e-5
    assert r["plain_run_hmc"]["rel"]["sgld"] < 1e-5 and r["plain_run_hmc"]["rel"]["hmc"] < 0.05
    for case, diff in r["data_shards_all"].items():
        assert diff["Ln"] < (1e-8 if case.startswith("hmc") else 1e-5), case


@pytest.mark.parametrize("env, value, message", [
    ("LLC_DEVICES", "0", "LLC_DEVICES: '0' is not allowed; choose an integer from 1 to 1 (the local cpu devices)"),
    ("LLC_DEVICES", "two", "LLC_DEVICES: 'two' is not allowed; choose an integer from 1 to 1"),
    ("LLC_DEVICES", "2", "LLC_DEVICES: '2' is not allowed; choose an integer from 1 to 1"),
    ("LLC_DATA_SHARDS", "2", "LLC_DATA_SHARDS: '2' is not allowed; choose an integer from 1 to 1"),
])
def test_bad_device_settings_are_one_line(monkeypatch, env, value, message):
    monkeypatch.setenv(env, value)
    with pytest.raises(ConfigError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        devices.requested()


def test_data_shards_must_divide_devices_and_rows():
    with pytest.raises(ConfigError, match=r"^LLC_DATA_SHARDS: 4 data shards do not divide the n = 6 data points; "
                                          r"choose one of 1, 2$"):
        devices.check_rows(6, devices.Spread(4, 4))


@pytest.mark.parametrize("settings, chains, spread, shards", [
    (1, 4, devices.Spread(4), 4),   # a plain run: its chains
    (5, 2, devices.Spread(4), 2),   # 2 chain shards x 2 setting shards: 3 settings x 1 chain each
    (3, 3, devices.Spread(4), 1),   # chains that no shard count divides: settings alone
    (8, 4, devices.Spread(4, 2), 2),
])
def test_the_batch_is_split_where_each_device_has_least_to_do(settings, chains, spread, shards):
    assert devices.chain_shards(settings, chains, spread) == shards


def test_memory_estimate_is_per_device():
    """A run alone splits its chains (state and activations) over the devices; data shards split the
    activations and the data."""
    cfg = build_config("quick", ["samplers=sgld", "sgld.chains=4"])
    one, four, split = (estimate(cfg, s)["device"] for s in (None, devices.Spread(4), devices.Spread(4, 4)))
    assert four < one / 2 and split < one / 2


def test_cli_refuses_bad_devices_before_any_work(tmp_path):
    res = CliRunner().invoke(app, ["run", "--target", "quadratic", "--devices", "0", "--artifacts", str(tmp_path)])
    assert res.exit_code == 2
    assert "--devices: '0' is not allowed; choose an integer from 1 to 1 (the local cpu devices)" in res.output
    assert not any(tmp_path.iterdir())


def _host_devices(env_changes: dict[str, str | None], code: str = "") -> int:
    """Local devices after ``devices.spread_host_cores`` in a fresh process (``code`` runs first)."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": os.pathsep.join([str(WORKER.parent.parent), os.environ.get("PYTHONPATH", "")])}
    env.pop("XLA_FLAGS", None)
    for k, v in env_changes.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    script = f"{code}\nfrom llc.engine import devices\ndevices.spread_host_cores()\nimport jax\nprint(jax.local_device_count())"
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return int(done.stdout.split()[-1])


def test_a_cpu_host_shows_each_core_as_a_device_unless_told_otherwise():
    cores = min(len(os.sched_getaffinity(0)), devices.HOST_DEVICES_MAX)
    assert _host_devices({}) == cores
    assert _host_devices({"XLA_FLAGS": "--xla_force_host_platform_device_count=3"}) == 3  # the user's count
    # A process pinned to one core (a joblib worker) keeps one device.
    assert _host_devices({}, "import os; os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})") == 1
    # Once JAX has started its backends the count is fixed: nothing changes (no error either).
    assert _host_devices({}, "import jax; jax.devices()") == 1


def test_an_installed_accelerator_plugin_keeps_one_cpu_device(tmp_path):
    """An accelerator plugin (here a stand-in for jax-cuda13-plugin's ``jax_plugins.xla_cuda13``)
    means the CPU is not where llc samples: the host's cores are left as JAX has them."""
    (tmp_path / "jax_plugins" / "xla_cuda13").mkdir(parents=True)
    (tmp_path / "jax_plugins" / "xla_cuda13" / "__init__.py").write_text("")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(WORKER.parent.parent)])}
    env.pop("XLA_FLAGS", None)
    env.pop("JAX_PLATFORMS", None)
    script = ("import os\nfrom llc.engine import devices\nprint(devices._accelerator_plugin())\n"
              "devices.spread_host_cores()\nprint('xla_force_host' in os.environ.get('XLA_FLAGS', ''))")
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["True", "False"]
    env["PYTHONPATH"] = str(WORKER.parent.parent)
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert done.stdout.split()[0] == "False"
