"""Execution backends: where runs execute. See ``llc.pipeline.backends.base`` for the protocol.

    local     in-process, serial (default); ``--workers N`` > 1 means a local process pool
    joblib    N loky worker processes, CPUs divided among them
    submitit  SLURM job arrays through submitit
    modal     Modal serverless functions (``modal_app.py``)
"""

from __future__ import annotations

from typing import Any

from llc.pipeline.backends.base import (CACHED, DONE, FAILED, Backend, BackendUnavailable, Outcome, Task, execute,
                               guarded_worker, run_worker)

BACKENDS = ("local", "joblib", "submitit", "modal")

__all__ = ["BACKENDS", "CACHED", "DONE", "FAILED", "Backend", "BackendUnavailable", "Outcome", "Task",
           "execute", "guarded_worker", "make_backend", "run_worker"]


def make_backend(name: str = "local", *, workers: int | None = None, partition: str | None = None,
                 gpus: int = 0, cpus: int = 1, timeout_min: int = 60, mem_gb: float | None = None,
                 account: str | None = None, array_parallelism: int | None = None,
                 download: bool = True, **_: Any) -> Backend:
    """Build and check a backend; raises BackendUnavailable with a one-line reason."""
    if name not in BACKENDS:
        raise BackendUnavailable(f"--backend: {name!r} is not a backend; choose one of {', '.join(BACKENDS)}")
    if workers is not None and workers < 1:
        raise BackendUnavailable(f"--workers: must be >= 1, got {workers}")
    if name == "local" and (workers or 1) > 1:
        name = "joblib"  # the specification's `--backend=local --workers=N`: a local process pool
    if name == "local":
        from llc.pipeline.backends.local import LocalBackend

        backend: Backend = LocalBackend()
    elif name == "joblib":
        from llc.pipeline.backends.joblib_backend import JoblibBackend

        backend = JoblibBackend(workers)
    elif name == "submitit":
        from llc.pipeline.backends.submitit_backend import SubmititBackend

        if cpus < 1 or gpus < 0 or timeout_min < 1 or (mem_gb is not None and mem_gb <= 0):
            raise BackendUnavailable("--cpus/--gpus/--timeout-min/--mem-gb: must be positive")
        backend = SubmititBackend(partition=partition, gpus=gpus, cpus=cpus, timeout_min=timeout_min,
                                  mem_gb=mem_gb, account=account, array_parallelism=array_parallelism)
    else:
        from llc.pipeline.backends.modal_backend import ModalBackend

        backend = ModalBackend(download=download)
    backend.check()
    return backend
