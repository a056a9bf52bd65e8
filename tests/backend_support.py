"""Fixtures and comparisons shared by the backend test modules (local/joblib, Modal, SLURM).

Import the fixtures by name into a test module to use them; ``pinned_code_version`` is autouse.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from llc.store import cache

from llc.pipeline import sweep
from llc.pipeline.backends import execute
from llc.pipeline.backends.local import LocalBackend

CODE_VERSION = "llc-backend-tests"
# Numbers that must agree exactly between backends (timings excluded: they never repeat).
EXACT = ("llc_mean", "llc_se", "ess", "rhat", "fde", "diverged_chains")


@pytest.fixture(scope="module", autouse=True)
def pinned_code_version():
    # Edits to llc/*.py by others while the tests run must not change run ids between two runs.
    mp = pytest.MonkeyPatch()
    mp.setenv(cache.CODE_VERSION_ENV, CODE_VERSION)
    yield
    mp.undo()


@pytest.fixture(scope="module")
def points():
    return sweep.plan_sweep(sweep.load_space("smoke"))


@pytest.fixture(scope="module")
def reference(points, tmp_path_factory):
    """The smoke sweep run serially in-process: the reference every backend must reproduce.

    Shared (same directory) with the other backend test modules, so it is computed once per session.
    """
    root = tmp_path_factory.getbasetemp() / "smoke-reference"
    outs = [o for o in execute(LocalBackend(), [p.cfg for p in points], root) if o is not None]
    return root, sorted(outs, key=lambda o: o.index)


def numbers(record):
    return {s: {k: v[k] for k in EXACT} for s, v in record["samplers"].items()}


def same_numbers(a, b) -> bool:
    """The metrics of two records agree. The draws are bit-identical across backends (compared
    exactly elsewhere), but NumPy reductions can differ in the last bit with memory alignment, so
    the derived floats get a 1e-12 relative slack."""
    na, nb = numbers(a), numbers(b)
    assert na.keys() == nb.keys()
    for s in na:
        for k in EXACT:
            x, y = na[s][k], nb[s][k]
            if isinstance(x, float) and isinstance(y, float):
                assert math.isclose(x, y, rel_tol=1e-12), (s, k, x, y)
            else:
                assert x == y, (s, k, x, y)
    return True


def draws(run_dir: Path) -> dict[str, dict]:
    """Every array of every NetCDF group of the run: the draws themselves."""
    import arviz as az

    out = {}
    for nc in sorted(Path(run_dir).glob("*.nc")):
        idata = az.from_netcdf(nc)
        for group in idata.groups():
            ds = idata[group]
            out[f"{nc.name}/{group}"] = {k: ds[k].values for k in ds.data_vars}
    return out


def assert_same_draws(dir_a: Path, dir_b: Path) -> None:
    import numpy as np

    a, b = draws(dir_a), draws(dir_b)
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].keys() == b[key].keys()
        for var in a[key]:
            np.testing.assert_array_equal(a[key][var], b[key][var], err_msg=f"{dir_a.name} {key}/{var}")
