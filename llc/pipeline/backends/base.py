"""The execution-backend protocol: submit run configs, get result records back as they finish.

Every backend executes the same worker (``guarded_worker`` -> ``run_worker`` ->
``llc.pipeline.experiment.run_experiment``) on a config *dict*, so what crosses a process, SLURM or Modal
boundary is plain JSON-like data, and every backend returns the same result records.

``execute`` is the one entry point callers use: it checks the run cache first (a run whose
directory is complete is never resubmitted), groups the rest into batches of runs that share a
compiled program (``llc.config.batch_key``: they differ only in runtime values such as epsilon,
gamma, beta0, seed), submits each batch as one task (one local call, one SLURM array task, one Modal
call; the worker runs it with ``run_experiments``) and yields one ``Outcome`` per input config,
in completion order. It may also yield ``None`` as a heartbeat so
that a progress display can refresh its "running" count while nothing finishes.
"""

from __future__ import annotations

import abc
import json
import os
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from llc.store import cache
from llc.config import RunConfig, batch_key, from_dict, to_dict

DONE, CACHED, FAILED = "done", "cached", "failed"
RESULT_FILE = "result.json"  # = llc.pipeline.experiment.RESULT_FILE (not imported: that pulls in ArviZ)


class BackendUnavailable(RuntimeError):
    """The backend cannot be used here (missing package, credentials or cluster); one-line message."""


# Most runs in one batched program: bounds a task's memory (every run's chains live on the device
# at once) and keeps some parallelism for backends with many workers.
MAX_BATCH = 64


@dataclass(frozen=True)
class Task:
    """One unit of work: a run (its position in the caller's list, its id, its config as a dict),
    or a batch of runs (``members``; ``config`` is then the list of their configs)."""

    index: int
    run_id: str
    config: dict[str, Any] | list[dict[str, Any]]
    members: tuple["Task", ...] = ()


@dataclass
class Outcome:
    index: int
    run_id: str
    status: str  # DONE, CACHED or FAILED
    result: dict[str, Any] | None = None  # the result record (run_experiment's return value)
    error: str | None = None  # one line, for FAILED
    info: dict[str, Any] = field(default_factory=dict)  # backend details: SLURM job id, log file, ...


# --------------------------------------------------------------------------- the worker

def run_worker(cfg_dict: dict[str, Any] | list[dict[str, Any]], root: str | os.PathLike,
               skip: bool = True) -> dict[str, Any] | list[dict[str, Any]]:
    """Run one experiment from a config dict (or a batch from a list of them); returns the result
    record (or the records, in order). Importable everywhere."""
    from llc.pipeline.experiment import run_experiment, run_experiments

    if isinstance(cfg_dict, list):
        return run_experiments([from_dict(c) for c in cfg_dict], Path(root), skip=skip)
    return run_experiment(from_dict(cfg_dict), Path(root), skip=skip)


def status_of(record: dict[str, Any] | list) -> str:
    return CACHED if isinstance(record, dict) and record.get("cached") else DONE


def load_cached_record(run_dir: Path) -> dict[str, Any]:
    """``llc.pipeline.experiment.load_cached`` without importing the numerical stack (ArviZ, JAX).

    The submitting side of a sweep (a SLURM login node, a laptop driving Modal) only reads the
    record of a finished run, so it stays light and quick to start.
    """
    record = json.loads((Path(run_dir) / RESULT_FILE).read_text())
    record["cached"] = True
    record["artifacts"] = str(run_dir)
    return record


def error_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def guarded_worker(cfg_dict: dict[str, Any], root: str, skip: bool = True, echo: bool = True) -> dict[str, Any]:
    """``run_worker`` that never raises for a failing run: returns {"ok", "result"|"error", ...}.

    Out-of-process backends use it so that one bad run comes back as data instead of breaking
    the pool; with ``echo`` the traceback also goes to the worker's stderr (the SLURM log).
    """
    try:
        return {"ok": True, "result": run_worker(cfg_dict, root, skip)}
    except Exception as exc:  # noqa: BLE001 - reported per run, the sweep goes on
        tb = traceback.format_exc()
        if echo:
            print(tb, file=sys.stderr, flush=True)
        return {"ok": False, "error": error_line(exc), "traceback": tb}


def outcome_from_guarded(task: Task, payload: dict[str, Any], info: dict[str, Any] | None = None) -> Outcome:
    info = dict(info or {})
    if payload.get("ok"):
        record = payload["result"]
        return Outcome(task.index, task.run_id, status_of(record), record, info=info)
    info["traceback"] = payload.get("traceback")
    return Outcome(task.index, task.run_id, FAILED, error=payload.get("error") or "unknown error", info=info)


# --------------------------------------------------------------------------- the protocol

class Backend(abc.ABC):
    """Runs tasks somewhere and yields their outcomes as they finish."""

    name: str = "?"

    def check(self) -> None:
        """Raise BackendUnavailable (one line: what is missing, how to fix it) before anything runs."""

    @abc.abstractmethod
    def submit(self, tasks: Sequence[Task], root: Path, *, skip: bool) -> Iterator[Outcome | None]:
        """Execute ``tasks`` (writing run directories under ``root``); yield an Outcome per task."""

    def running(self) -> int:
        """Runs executing right now (best effort; for progress displays)."""
        return 0

    def parallelism(self) -> int:
        """Tasks this backend runs at once (batches are split so that each worker gets one)."""
        return 1

    def describe(self) -> str:
        return self.name


def execute(backend: Backend, configs: Sequence[RunConfig], root: Path | str, *,
            skip: bool = True, batch: bool = True, max_batch: int = MAX_BATCH,
            log: Callable[[str], None] = lambda msg: None) -> Iterator[Outcome | None]:
    """Run ``configs`` on ``backend``; yield one Outcome per config (plus ``None`` heartbeats).

    Completed runs whose files all verify are served from the cache without touching the backend
    (a damaged one is moved aside, said so through ``log``, and run again); configs with the same
    run id are executed once and reported for each index; with ``batch``, runs sharing a compiled
    program go to the backend as one task of at most ``max_batch`` runs.
    """
    root = Path(root).resolve()
    first_index: dict[str, int] = {}
    duplicates: dict[int, list[int]] = {}
    unique: list[tuple[int, str, RunConfig]] = []
    for i, cfg in enumerate(configs):
        rid = cache.run_id(cfg)
        if rid in first_index:
            duplicates.setdefault(first_index[rid], []).append(i)
        else:
            first_index[rid] = i
            unique.append((i, rid, cfg))
    tasks: list[Task] = []
    for i, rid, cfg in unique:
        if skip and (root / rid).exists() and not cache.is_complete(root / rid):
            with cache.key_lock(root / rid, "run", log):
                cache.usable(root / rid, "run", log)  # damaged: moved aside, so it is recomputed
        if skip and cache.is_complete(root / rid):
            try:
                out = Outcome(i, rid, CACHED, load_cached_record(root / rid))
            except (OSError, ValueError) as exc:  # a damaged run directory: say so, go on
                out = Outcome(i, rid, FAILED, error=f"cached run {root / rid} is unreadable ({error_line(exc)}); "
                                                    "delete it or use --no-skip")
            yield from _fan_out(out, duplicates)
            continue
        tasks.append(Task(i, rid, to_dict(cfg)))
    if not tasks:
        return
    if batch:
        tasks = batch_tasks(tasks, [configs[t.index] for t in tasks], max_batch, backend.parallelism())
    for out in backend.submit(tasks, root, skip=skip):
        if out is None:
            yield None
            continue
        for member in _members(out, tasks):
            yield from _fan_out(member, duplicates)


def batch_tasks(tasks: list[Task], configs: list[RunConfig], max_batch: int = MAX_BATCH,
                parallelism: int = 1) -> list[Task]:
    """Tasks whose configs share a ``batch_key`` merged into batch tasks of at most ``max_batch``
    runs, and into at least ``parallelism`` tasks where there are enough runs."""
    groups: dict[str, list[Task]] = {}
    for task, cfg in zip(tasks, configs):
        groups.setdefault(batch_key(cfg), []).append(task)
    out: list[Task] = []
    for group in groups.values():
        size = max(1, min(max_batch, -(-len(group) // max(1, parallelism))))
        for start in range(0, len(group), size):
            part = tuple(group[start:start + size])
            out.append(part[0] if len(part) == 1 else
                       Task(part[0].index, part[0].run_id, [t.config for t in part], members=part))
    return sorted(out, key=lambda t: t.index)


def _members(out: Outcome, tasks: list[Task]) -> list[Outcome]:
    """A batch task's Outcome as one Outcome per run of the batch."""
    task = next((t for t in tasks if t.index == out.index), None)
    if task is None or not task.members:
        return [out]
    if out.status == FAILED or not isinstance(out.result, list):
        return [Outcome(m.index, m.run_id, FAILED, error=out.error or "the batch returned no records",
                        info=dict(out.info)) for m in task.members]
    return [Outcome(m.index, m.run_id, status_of(rec), rec, info={**out.info, "batch_size": len(task.members)})
            for m, rec in zip(task.members, out.result)]


def _fan_out(out: Outcome, duplicates: dict[int, list[int]]) -> Iterator[Outcome]:
    yield out
    for j in duplicates.get(out.index, ()):
        yield Outcome(j, out.run_id, out.status, out.result, out.error, dict(out.info))
