"""Sweeps batch runs that share a compiled program: one task, the same numbers, every row kept."""

from __future__ import annotations

import csv

import pytest

from llc.config import build_config
from llc.pipeline import sweep
from llc.pipeline.backends import base
from llc.pipeline.backends.local import LocalBackend

GRID = {"base": {"target": {"kind": "quadratic", "quadratic": {"dim": 6}}, "samplers": ["sgld"], "save_plots": False,
                 "sgld": {"draws": 80, "burnin": 10, "eval_every": 4}},
        "grid": {"sgld": {"step_size": [1e-4, 2e-4, 4e-4, 8e-4]}, "posterior": {"gamma": [50.0, 100.0, 200.0, 400.0]}}}


class CountingBackend(LocalBackend):
    def __init__(self):
        super().__init__()
        self.tasks = []

    def submit(self, tasks, root, *, skip):
        self.tasks.extend(tasks)
        yield from super().submit(tasks, root, skip=skip)


def _rows(path):
    with open(path, newline="") as fh:
        return {r["run_id"]: r for r in csv.DictReader(fh)}


@pytest.fixture(scope="module")
def batched_and_not(tmp_path_factory):
    points = sweep.plan_sweep(sweep.space_from_dict(GRID))
    out = {}
    for batch in (True, False):
        root = tmp_path_factory.mktemp(f"batch{batch}")
        backend = CountingBackend()
        summary = sweep.run_sweep(points, backend, root, root / "results.csv", batch=batch)
        out[batch] = (summary, backend.tasks, _rows(root / "results.csv"))
    return points, out


def test_sweep_runs_one_batch_with_the_unbatched_numbers(batched_and_not):
    points, out = batched_and_not
    (s_b, tasks_b, rows_b), (s_u, tasks_u, rows_u) = out[True], out[False]
    assert len(points) == 16 and s_b.done == s_u.done == 16
    assert len(tasks_b) == 1 and len(tasks_b[0].members) == 16  # one unit of work
    assert len(tasks_u) == 16
    assert rows_b.keys() == rows_u.keys() and len(rows_b) == 16  # every run keeps its id and row
    for rid, row in rows_b.items():
        assert float(row["llc_mean"]) == pytest.approx(float(rows_u[rid]["llc_mean"]), rel=1e-5), rid
        assert row["status"] == "done"
    # The 16 settings really differ.
    assert len({round(float(r["llc_mean"]), 6) for r in rows_b.values()}) == 16


def test_batched_runs_are_cached_per_run(batched_and_not, tmp_path):
    """A rerun of a batched sweep finds every run in the cache (its own directory)."""
    points, _ = batched_and_not
    backend = CountingBackend()
    root = tmp_path / "again"
    sweep.run_sweep(points[:3], backend, root, tmp_path / "a.csv")
    summary = sweep.run_sweep(points, backend, root, tmp_path / "b.csv")
    assert summary.cached == 3 and summary.done == 13
    assert [len(t.members) for t in backend.tasks] == [3, 13]


def test_batches_split_for_parallel_workers_and_by_program():
    cfgs = [build_config(overrides=["target.kind=quadratic", f"sgld.step_size={e}"]) for e in (1e-4, 2e-4, 3e-4, 4e-4)]
    cfgs.append(build_config(overrides=["target.kind=quadratic", "sgld.chains=2"]))  # another program
    tasks = [base.Task(i, str(i), {}) for i in range(5)]
    assert sorted(len(t.members) or 1 for t in base.batch_tasks(tasks, cfgs)) == [1, 4]
    assert sorted(len(t.members) or 1 for t in base.batch_tasks(tasks, cfgs, parallelism=2)) == [1, 2, 2]
    assert sorted(len(t.members) or 1 for t in base.batch_tasks(tasks, cfgs, max_batch=3)) == [1, 1, 3]


def test_batches_split_to_fit_memory(tmp_path, monkeypatch):
    """A batch larger than the free memory allows runs in parts, each with the numbers it has alone."""
    from llc.pipeline import experiment, resources

    cfgs = [build_config(overrides=["target.kind=quadratic", "target.quadratic.dim=4", "data.n_data=300",
                                    "samplers=sgld", "save_plots=false", "sgld.draws=30", "sgld.chains=2",
                                    f"sgld.step_size={eps}"]) for eps in (1e-4, 2e-4, 3e-4, 4e-4, 5e-4)]
    per_run = resources.estimate(cfgs[0])["device"]
    assert resources.batch_cap(cfgs, device_available=None, host_available=10**12) == 5
    cap = resources.batch_cap(cfgs, device_available=int(2.5 * per_run / resources.BATCH_MEMORY_FRACTION))
    assert cap == 2
    assert resources.split_batch([0, 1, 2, 3, 4], cap) == [[0, 1], [2, 3], [4]]
    assert resources.split_batch([0, 1, 2, 3, 4], 4) == [[0, 1, 2], [3, 4]]

    from llc.engine import driver

    sizes = []
    run_batch = driver.run_batch
    monkeypatch.setattr(driver, "run_batch", lambda algs, *a, **k: sizes.append(len(algs)) or run_batch(algs, *a, **k))
    monkeypatch.setattr(resources, "available_device_memory", lambda: int(2.5 * per_run / resources.BATCH_MEMORY_FRACTION))
    split = experiment.run_experiments(cfgs, tmp_path / "split", skip=False)
    assert sizes == [2, 2, 1]
    monkeypatch.setattr(resources, "available_device_memory", lambda: None)
    monkeypatch.setattr(resources, "available_host_memory", lambda: 10**12)
    whole = experiment.run_experiments(cfgs, tmp_path / "whole", skip=False)
    assert sizes == [2, 2, 1, 5]
    for a, b in zip(split, whole):
        assert a["samplers"]["sgld"]["llc_mean"] == pytest.approx(b["samplers"]["sgld"]["llc_mean"], rel=1e-6)


def test_only_driver_batched_samplers_merge_runs():
    """Runs merge into one task only where the driver vmaps them: SGLD runs differing in ε do; VI
    runs (one at a time, even though their programs take γ and the learning rate as arguments)
    never do, and VI's runtime fields keep runs that also hold SGLD apart."""
    from llc.config import batch_key

    def key(*overrides):
        return batch_key(build_config("quick", list(overrides)))

    assert key("samplers=sgld", "sgld.step_size=1e-4") == key("samplers=sgld", "sgld.step_size=3e-4", "seed=2")
    assert key("samplers=vi", "vi.learning_rate=0.01") != key("samplers=vi", "vi.learning_rate=0.02")
    assert key("samplers=vi", "posterior.gamma=100") != key("samplers=vi", "posterior.gamma=200")
    assert key("samplers=sgld,vi", "vi.learning_rate=0.01") != key("samplers=sgld,vi", "vi.learning_rate=0.02")
    assert key("samplers=sgld,vi", "posterior.gamma=100") == key("samplers=sgld,vi", "posterior.gamma=200")
