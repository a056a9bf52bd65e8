"""Local process pool (joblib's loky): ``--workers N`` processes, each with its own JAX.

The host's CPUs are divided among the workers: each worker pins itself to its own CPU subset
before JAX starts, because XLA's CPU runtime sizes its thread pool from the CPUs the process may
run on (the XLA_FLAGS thread switches alone do not stop it from using every core). N workers then
never oversubscribe the machine. OpenMP/BLAS thread counts are set to the same share.

A worker that dies (killed, out of memory) breaks loky's pool; the runs it took down with it are
retried once on a fresh pool, and a run that fails again is reported as failed.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator, Sequence

from llc.pipeline.backends.base import FAILED, Backend, Outcome, Task, guarded_worker, outcome_from_guarded

SINGLE_THREAD_XLA = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
MAX_RETRIES = 1  # extra attempts for runs lost with a dead worker

_slot_lock = None  # the open lock file that reserves this worker's CPU slot (kept for its lifetime)


def available_cpus() -> list[int]:
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def cpu_slots(workers: int, cpus: Sequence[int] | None = None) -> list[list[int]]:
    """Split the CPUs into ``workers`` disjoint, near-equal groups (shared when workers > CPUs)."""
    cpus = list(cpus) if cpus is not None else available_cpus()
    if workers >= len(cpus):
        return [[cpus[i % len(cpus)]] for i in range(workers)]
    base, extra = divmod(len(cpus), workers)
    slots, start = [], 0
    for i in range(workers):
        size = base + (1 if i < extra else 0)
        slots.append(cpus[start:start + size])
        start += size
    return slots


def worker_env(threads: int) -> dict[str, str]:
    threads = max(1, threads)
    env = {name: str(threads) for name in
           ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")}
    if threads == 1:
        flags = os.environ.get("XLA_FLAGS", "")
        if "xla_cpu_multi_thread_eigen" not in flags:
            env["XLA_FLAGS"] = f"{flags} {SINGLE_THREAD_XLA}".strip()
    return env


def _claim_slot(lock_dir: str, slots: list[list[int]]) -> None:
    """Loky initializer: reserve a free CPU slot (a lock file held for life) and pin to it.

    A lock held by a process is released by the OS when it dies, so a replacement worker takes
    over the slot of the one it replaces.
    """
    global _slot_lock
    try:
        import fcntl
    except ImportError:  # not POSIX: no pinning, the thread-count variables still apply
        return
    for i, cpus in enumerate(slots):
        fh = open(os.path.join(lock_dir, f"slot-{i}.lock"), "w")  # noqa: SIM115 - held on purpose
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.close()
            continue
        _slot_lock = fh
        if hasattr(os, "sched_setaffinity"):
            try:
                os.sched_setaffinity(0, cpus)
            except OSError:
                pass
        os.environ["LLC_WORKER_CPUS"] = ",".join(map(str, cpus))
        return


class JoblibBackend(Backend):
    name = "joblib"

    def __init__(self, workers: int | None = None, *, pin: bool = True) -> None:
        self.workers = max(1, int(workers or len(available_cpus())))
        self.pin = pin  # False: only the thread-count variables (the OS may move workers between CPUs)
        self._futures: dict[cf.Future, Task] = {}

    def describe(self) -> str:
        return f"joblib ({self.workers} workers)"

    def parallelism(self) -> int:
        return self.workers

    def _executor(self, lock_dir: str):
        from joblib.externals.loky import ProcessPoolExecutor

        slots = cpu_slots(self.workers)
        return ProcessPoolExecutor(max_workers=self.workers, initializer=_claim_slot if self.pin else None,
                                   initargs=(lock_dir, slots) if self.pin else (),
                                   env=worker_env(min(map(len, slots))))

    def submit(self, tasks: Sequence[Task], root: Path, *, skip: bool) -> Iterator[Outcome | None]:
        from concurrent.futures.process import BrokenProcessPool

        attempts: dict[int, int] = {}
        with tempfile.TemporaryDirectory(prefix="llc-joblib-slots-") as lock_dir:
            executor = self._executor(lock_dir)
            self._futures = {}

            def launch(task: Task) -> None:
                # echo=False: workers share the terminal with the progress display; the traceback
                # travels back in the outcome instead.
                nonlocal executor
                try:
                    fut = executor.submit(guarded_worker, task.config, str(root), skip, False)
                except (BrokenProcessPool, RuntimeError):
                    executor.shutdown(wait=False, kill_workers=True)
                    executor = self._executor(lock_dir)
                    fut = executor.submit(guarded_worker, task.config, str(root), skip, False)
                self._futures[fut] = task

            try:
                for task in tasks:
                    launch(task)
                while self._futures:
                    done, _ = cf.wait(list(self._futures), timeout=1.0, return_when=cf.FIRST_COMPLETED)
                    if not done:
                        yield None
                        continue
                    for fut in done:
                        task = self._futures.pop(fut)
                        exc = fut.exception()
                        if exc is None:
                            yield outcome_from_guarded(task, fut.result())
                        elif isinstance(exc, BrokenProcessPool) and attempts.get(task.index, 0) < MAX_RETRIES:
                            attempts[task.index] = attempts.get(task.index, 0) + 1
                            launch(task)
                        else:
                            yield Outcome(task.index, task.run_id, FAILED, error=_pool_error(exc))
                executor.shutdown(wait=True)
            except BaseException:
                # Interrupted (Ctrl-C) or the consumer stopped: do not leave workers computing.
                executor.shutdown(wait=False, kill_workers=True)
                raise
            finally:
                self._futures = {}

    def running(self) -> int:
        return sum(1 for f in list(self._futures) if f.running())


def _pool_error(exc: BaseException) -> str:
    from concurrent.futures.process import BrokenProcessPool

    if isinstance(exc, BrokenProcessPool):
        return "worker process died (killed or out of memory) twice while running this run"
    first = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {first[0] if first else ''}"


def describe_worker() -> dict[str, Any]:
    """What a worker sees (for tests): its CPU affinity and thread settings."""
    return {"cpus": available_cpus(), "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "omp": os.environ.get("OMP_NUM_THREADS"), "slot": os.environ.get("LLC_WORKER_CPUS")}
