"""SLURM through submitit: one job array per submission, logs under ``<artifacts>/slurm_logs``.

Jobs run the same ``guarded_worker`` with the submitting interpreter (``sys.executable``), in the
submitting directory, with the submitting environment (sbatch exports it), and with the project
directory on PYTHONPATH, so a source checkout works as well as an installed package.

Completion is detected from submitit's result files, not from ``sacct``: clusters without job
accounting (such as the one-node cluster of scripts/slurm-local.sh) have no sacct. ``squeue``
tells which jobs are running, and a job that leaves the queue without writing a result (killed,
timed out, node lost) is reported as failed with the path of its log.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

from llc.store import cache
from llc.pipeline.backends.base import (FAILED, Backend, BackendUnavailable, Outcome, Task, error_line,
                               guarded_worker, outcome_from_guarded)

TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
            "BOOT_FAIL", "DEADLINE", "SPECIAL_EXIT", "REVOKED"}
# A finished job's result file can lag its disappearance from the queue on shared filesystems.
RESULT_GRACE_S = 20.0


class SubmititBackend(Backend):
    name = "submitit"

    def __init__(self, *, partition: str | None = None, gpus: int = 0, cpus: int = 1,
                 timeout_min: int = 60, mem_gb: float | None = None, account: str | None = None,
                 array_parallelism: int | None = None, poll_s: float = 0.5, log_dir: Path | None = None) -> None:
        self.partition = partition
        self.gpus = gpus
        self.cpus = cpus
        self.timeout_min = timeout_min
        self.mem_gb = mem_gb
        self.account = account
        self.array_parallelism = array_parallelism
        self.poll_s = poll_s
        self.log_dir = log_dir
        self._states: dict[str, str] = {}
        self._pending: dict[str, Any] = {}

    def describe(self) -> str:
        where = f"partition {self.partition}" if self.partition else "default partition"
        return f"submitit (SLURM, {where}, {self.cpus} CPU, {self.gpus} GPU per run)"

    def check(self) -> None:
        try:
            import submitit  # noqa: F401
        except ModuleNotFoundError:
            raise BackendUnavailable("the submitit backend needs submitit: pip install 'llc[slurm]'") from None
        for tool in ("sbatch", "squeue", "srun"):
            if shutil.which(tool) is None:
                raise BackendUnavailable(
                    f"{tool} not found: the submitit backend needs a SLURM cluster "
                    "(for a local one-node cluster: sudo scripts/slurm-local.sh start)")

    def parameters(self, n_jobs: int) -> dict[str, Any]:
        params: dict[str, Any] = {
            "job_name": "llc",
            "time": int(self.timeout_min),
            "cpus_per_task": int(self.cpus),
            "ntasks_per_node": 1,
            # The worker must import llc even from a plain source checkout.
            "setup": [f'export PYTHONPATH="{cache.PROJECT_DIR}${{PYTHONPATH:+:$PYTHONPATH}}"'],
        }
        if self.partition:
            params["partition"] = self.partition
        if self.gpus:
            params["gpus_per_node"] = int(self.gpus)
        if self.mem_gb:
            params["mem"] = f"{int(self.mem_gb * 1024)}MB"
        if self.account:
            params["account"] = self.account
        if self.array_parallelism:
            params["array_parallelism"] = int(self.array_parallelism)
        return params

    def submit(self, tasks: Sequence[Task], root: Path, *, skip: bool) -> Iterator[Outcome | None]:
        import submitit

        log_dir = Path(self.log_dir) if self.log_dir else Path(root) / "slurm_logs"
        executor = submitit.SlurmExecutor(folder=log_dir / "%j")
        executor.update_parameters(**self.parameters(len(tasks)))
        try:
            jobs = executor.map_array(guarded_worker, [t.config for t in tasks],
                                      [str(root)] * len(tasks), [skip] * len(tasks))
        except Exception as exc:  # sbatch refused (bad partition, account, limits): one clear line
            raise BackendUnavailable(f"sbatch failed: {error_line(exc)}") from None
        self._pending = {job.job_id: (job, task) for job, task in zip(jobs, tasks)}
        gone_since: dict[str, float] = {}
        last_squeue = 0.0
        try:
            while self._pending:
                finished = False
                now = time.monotonic()
                if now - last_squeue > 2.0:
                    self._states = _squeue_states(list(self._pending))
                    last_squeue = now
                for job_id, (job, task) in list(self._pending.items()):
                    info = {"job_id": job_id, "log": str(job.paths.stdout), "stderr": str(job.paths.stderr)}
                    if job.paths.result_pickle.exists():
                        del self._pending[job_id]
                        finished = True
                        try:
                            payload = job.result()
                        except Exception as exc:  # noqa: BLE001 - e.g. the job could not unpickle
                            yield Outcome(task.index, task.run_id, FAILED, error=error_line(exc), info=info)
                        else:
                            yield outcome_from_guarded(task, payload, info)
                        continue
                    state = self._states.get(job_id)
                    if state is None or state in TERMINAL:
                        gone_since.setdefault(job_id, now)
                        if now - gone_since[job_id] > RESULT_GRACE_S:
                            del self._pending[job_id]
                            finished = True
                            why = state or "no longer in the queue"
                            yield Outcome(task.index, task.run_id, FAILED, info=info,
                                          error=f"SLURM job {job_id} ended without a result ({why}); "
                                                f"see {job.paths.stderr}")
                    else:
                        gone_since.pop(job_id, None)
                if not finished:
                    yield None
                    time.sleep(self.poll_s)
        except BaseException:
            # Ctrl-C or the consumer stopped: cancel what is still queued or running.
            ids = sorted({jid.split("_")[0] for jid in self._pending})
            if ids:
                subprocess.run(["scancel", *ids], capture_output=True, check=False)
            raise
        finally:
            self._pending = {}

    def running(self) -> int:
        return sum(1 for jid in self._pending if self._states.get(jid) == "RUNNING")


def _squeue_states(job_ids: list[str]) -> dict[str, str]:
    """{job id: state} for the given jobs (array tasks expanded); {} entries for unknown ones."""
    if not job_ids:
        return {}
    arrays = sorted({jid.split("_")[0] for jid in job_ids})
    try:
        out = subprocess.run(["squeue", "-h", "-r", "-t", "all", "-o", "%i %T", "-j", ",".join(arrays)],
                             capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return {jid: "UNKNOWN" for jid in job_ids}  # cannot tell: never declare a job lost
    if out.returncode != 0:
        # squeue errors for ids that have all left the queue; anything else: assume still there.
        if "Invalid job id" in out.stderr:
            return {}
        return {jid: "UNKNOWN" for jid in job_ids}
    states = {}
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2:
            states[parts[0]] = parts[1]
    return states
