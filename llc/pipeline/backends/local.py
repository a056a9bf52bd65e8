"""In-process, serial execution: the default backend, and the reference the others must match."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

from llc.pipeline.backends.base import FAILED, Backend, Outcome, Task, error_line, run_worker, status_of


class LocalBackend(Backend):
    name = "local"

    def __init__(self) -> None:
        self._running = 0

    def submit(self, tasks: Sequence[Task], root: Path, *, skip: bool) -> Iterator[Outcome | None]:
        for task in tasks:
            self._running = 1
            yield None  # let a progress display show this run as running before it blocks
            try:
                record = run_worker(task.config, root, skip)
            except Exception as exc:  # noqa: BLE001 - one failing run must not stop the others
                import traceback

                out = Outcome(task.index, task.run_id, FAILED, error=error_line(exc),
                              info={"traceback": traceback.format_exc()})
            else:
                out = Outcome(task.index, task.run_id, status_of(record), record)
            finally:
                self._running = 0
            yield out

    def running(self) -> int:
        return self._running
