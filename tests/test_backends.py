"""Execution backends: the cache is honoured, failures are isolated, joblib equals serial."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import pytest

from llc.store import cache
from llc.pipeline.backends import CACHED, DONE, FAILED, Backend, BackendUnavailable, execute, make_backend
from llc.pipeline.backends.joblib_backend import JoblibBackend, cpu_slots, describe_worker
from llc.pipeline.backends.local import LocalBackend
from llc.config import to_dict

from backend_support import (  # noqa: E402,F401  (fixtures are used by name)
    assert_same_draws, pinned_code_version, points, reference, same_numbers)


class SpyBackend(Backend):
    """Records what reaches the backend, then runs it in-process."""

    name = "spy"

    def __init__(self):
        self.submitted = []

    def submit(self, tasks, root, *, skip):
        self.submitted.extend(t.run_id for t in tasks)
        yield from LocalBackend().submit(tasks, root, skip=skip)


def corrupt_target(root: Path, cfg) -> None:
    """Leave a 'complete' but wrong cached target for cfg: its run then fails when loading it."""
    from llc.engine.targets import target_id

    tdir = root / "targets" / target_id(cfg)
    tdir.mkdir(parents=True)
    (tdir / "meta.json").write_text(json.dumps({"id": target_id(cfg), "dtype": "float32"}))
    cache.seal(tdir, {})


def test_serial_runs_complete_and_are_cached(reference, points):
    root, outs = reference
    assert {o.status for o in outs} <= {DONE, CACHED}
    assert [o.run_id for o in outs] == [p.run_id for p in points]
    for o in outs:
        assert cache.is_complete(root / o.run_id)
        assert o.result["run_id"] == o.run_id
        assert o.result["samplers"]["sgld"]["llc_mean"] is not None


def test_complete_runs_are_not_resubmitted(reference, points):
    root, outs = reference
    spy = SpyBackend()
    again = [o for o in execute(spy, [p.cfg for p in points], root) if o is not None]
    assert spy.submitted == []
    assert {o.status for o in again} == {CACHED}
    for mine, theirs in zip(sorted(again, key=lambda o: o.index), outs):
        assert mine.result == {**theirs.result, "cached": True}
    # A missing run (say a sweep was interrupted) is the only one submitted.
    import shutil

    shutil.rmtree(root / outs[1].run_id)
    third = sorted((o for o in execute(spy, [p.cfg for p in points], root) if o is not None), key=lambda o: o.index)
    assert spy.submitted == [outs[1].run_id]
    assert [o.status for o in third] == [CACHED, DONE]
    assert same_numbers(third[1].result, outs[1].result)


def test_duplicate_configs_run_once(reference, points):
    root, outs = reference
    spy = SpyBackend()
    cfg = points[0].cfg
    got = [o for o in execute(spy, [cfg, cfg], root, skip=True) if o is not None]
    assert sorted(o.index for o in got) == [0, 1]
    assert len({o.run_id for o in got}) == 1 and spy.submitted == []


def test_local_failure_is_reported_and_others_go_on(points, tmp_path):
    corrupt_target(tmp_path, points[0].cfg)
    outs = sorted((o for o in execute(LocalBackend(), [p.cfg for p in points], tmp_path) if o is not None),
                  key=lambda o: o.index)
    assert outs[0].status == FAILED and "PrecisionError" in outs[0].error and "\n" not in outs[0].error
    assert not (tmp_path / outs[0].run_id).exists()  # nothing half-written
    assert outs[1].status == DONE


def test_joblib_two_workers_equal_serial_and_isolate_failures(reference, points, tmp_path):
    _, ref = reference
    # A third run whose cached target is broken: it must fail alone, with its error.
    bad = dataclasses.replace(points[0].cfg, target=dataclasses.replace(points[0].cfg.target, quadratic=dataclasses.replace(points[0].cfg.target.quadratic, dim=3)))
    corrupt_target(tmp_path, bad)
    backend = make_backend("joblib", workers=2)
    outs = sorted((o for o in execute(backend, [p.cfg for p in points] + [bad], tmp_path) if o is not None),
                  key=lambda o: o.index)
    assert [o.status for o in outs] == [DONE, DONE, FAILED]
    assert "PrecisionError" in outs[2].error and "Traceback" in outs[2].info["traceback"]
    assert [o.run_id for o in outs[:2]] == [o.run_id for o in ref]
    for mine, theirs in zip(outs, ref):
        # Same seeds: the same draws bit for bit, the same numbers, the same files.
        assert_same_draws(tmp_path / mine.run_id, Path(theirs.result["artifacts"]))
        assert same_numbers(mine.result, theirs.result)
        assert sorted(p.name for p in (tmp_path / mine.run_id).iterdir()) == \
            sorted(p.name for p in Path(theirs.result["artifacts"]).iterdir())


def _describe_after_a_while():
    time.sleep(0.5)  # keep this worker busy so that the other task goes to the other worker
    return describe_worker()


def test_joblib_workers_get_disjoint_cpus(tmp_path):
    backend = JoblibBackend(2)
    ex = backend._executor(str(tmp_path))
    try:
        infos = [f.result(timeout=60) for f in [ex.submit(_describe_after_a_while) for _ in range(2)]]
    finally:
        ex.shutdown(wait=True)
    slots = [tuple(i["cpus"]) for i in infos]
    assert len(set(slots)) == 2, infos
    n_cpus = len(cpu_slots(1)[0])
    if n_cpus <= 2:
        # One CPU each: XLA must also be told not to spawn its own thread pool.
        assert all("xla_cpu_multi_thread_eigen=false" in i["xla_flags"] and i["omp"] == "1" for i in infos)


def test_cpu_slots_split_evenly():
    assert cpu_slots(2, [0, 1, 2, 3, 4]) == [[0, 1, 2], [3, 4]]
    assert cpu_slots(3, [0, 1]) == [[0], [1], [0]]
    assert cpu_slots(1, [5, 6]) == [[5, 6]]


def test_make_backend_rejects_bad_input():
    with pytest.raises(BackendUnavailable, match="--backend"):
        make_backend("cloud")
    with pytest.raises(BackendUnavailable, match="--workers"):
        make_backend("joblib", workers=0)
    assert make_backend("local", workers=2).name == "joblib"  # the spec's `--backend=local --workers=N`
    assert make_backend("local").name == "local"


def test_worker_round_trips_config_dicts(points):
    from llc.config import from_dict

    for p in points:
        d = json.loads(json.dumps(to_dict(p.cfg)))
        assert from_dict(d) == p.cfg
        assert cache.run_id(from_dict(d)) == p.run_id


def test_light_cache_reader_matches_the_experiment_one(reference):
    from llc.pipeline import experiment
    from llc.pipeline.backends.base import RESULT_FILE, load_cached_record

    root, outs = reference
    assert RESULT_FILE == experiment.RESULT_FILE
    for o in outs:
        assert load_cached_record(root / o.run_id) == experiment.load_cached(root / o.run_id)


def test_damaged_cached_run_is_moved_aside_and_recomputed(reference, points, tmp_path):
    import shutil

    root, outs = reference
    rid = outs[0].run_id
    shutil.copytree(root / rid, tmp_path / rid)
    (tmp_path / rid / "result.json").write_text("{truncated")
    spy, said = SpyBackend(), []
    (out,) = [o for o in execute(spy, [points[0].cfg], tmp_path, log=said.append) if o is not None]
    assert spy.submitted == [rid]  # not served from the damaged copy
    assert out.status == DONE and out.result["samplers"]["sgld"]["llc_mean"] is not None
    assert len(said) == 1 and f"run {rid} is damaged (result.json has" in said[0] and "recomputing" in said[0]
    assert cache.is_complete(tmp_path / rid)
    (moved,) = (tmp_path / cache.BROKEN_DIR).iterdir()
    assert moved.name.startswith(rid) and (moved / "result.json").read_text() == "{truncated"


def _die_first_time(cfg_dict, root, skip=True, echo=True):
    """Stands in for guarded_worker: the worker process dies (like an OOM kill) on first sight of
    a run marked 'flaky', and always for one marked 'doomed'."""
    import os
    import signal

    marker = Path(root) / f"seen-{cfg_dict['name']}"
    if cfg_dict["name"] == "doomed" or (cfg_dict["name"] == "flaky" and not marker.exists()):
        marker.write_text("x")
        os.kill(os.getpid(), signal.SIGKILL)
    return {"ok": True, "result": {"run_id": cfg_dict["name"], "cached": False}}


def test_joblib_retries_runs_lost_with_a_killed_worker(tmp_path, monkeypatch):
    from llc.pipeline.backends import joblib_backend
    from llc.pipeline.backends.base import Task

    monkeypatch.setattr(joblib_backend, "guarded_worker", _die_first_time)
    tasks = [Task(0, "flaky", {"name": "flaky"}), Task(1, "fine", {"name": "fine"})]
    outs = sorted((o for o in JoblibBackend(2).submit(tasks, tmp_path, skip=True) if o is not None),
                  key=lambda o: o.index)
    assert [o.status for o in outs] == [DONE, DONE]
    doomed = [o for o in JoblibBackend(2).submit([Task(0, "doomed", {"name": "doomed"})], tmp_path, skip=True)
              if o is not None]
    assert [o.status for o in doomed] == [FAILED] and "worker process died" in doomed[0].error
