"""Progress while a run, sweep or target training goes on, as plain lines for logs.

When stderr is not a terminal (nohup, SLURM, CI, ``2> log``), a Rich bar would print nothing
until the end, so progress becomes plain timestamped lines instead: one per ~10 % of each phase,
and one at least every 30 s while anything runs (also during compilation, warm-up and target
training, which report no fractions). No line carries a source path.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, TextIO


def clock() -> str:
    return time.strftime("%H:%M:%S")


def elapsed(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _label(sampler: str, phase: str) -> str:
    return f"{sampler} sampling" if phase == sampler else f"{sampler} {phase}"


class PlainProgress:
    """Progress as plain lines: ``HH:MM:SS sgld sampling: 440/1100 draws (40%), elapsed 1m12s``.

    A line per ``step`` of a phase's draws, and a heartbeat line (what runs now) after ``every_s``
    seconds without output. Use as a context manager (the heartbeat is a daemon thread).
    """

    def __init__(self, write: Callable[[str], None], *, every_s: float = 30.0, step: float = 0.1):
        self._write = write
        self.every_s, self.step = every_s, step
        self.t0 = time.monotonic()
        self._last_line = self.t0
        self._bucket: dict[str, int] = {}
        self._now = "starting"
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="llc-progress", daemon=True)

    def __enter__(self) -> "PlainProgress":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=1.0)

    def line(self, text: str) -> None:
        with self._lock:
            self._write(f"{clock()} {text}")
            self._last_line = time.monotonic()

    def log(self, msg: str) -> None:
        self._now = msg
        self.line(msg)

    def elapsed_text(self) -> str:
        return f"elapsed {elapsed(time.monotonic() - self.t0)}"

    def __call__(self, sampler: str, done: int, total: int, phase: str) -> None:
        label = _label(sampler, phase)
        if total <= 1:  # a phase without fractions (warm-up): its start and end
            self._now = f"{label} running"
            self.line(f"{label}: {'done' if done >= total else 'started'}, {self.elapsed_text()}")
            return
        key = f"{sampler}/{phase}"
        frac = done / total
        unit = "steps" if phase == "training" else "draws"
        self._now = f"{label}: {done}/{total} {unit} ({frac:.0%})"
        bucket = int(frac / self.step + 1e-9)  # which step of the phase this is in
        if (bucket > self._bucket.get(key, -1) or done >= total
                or time.monotonic() - self._last_line >= self.every_s):
            self._bucket[key] = bucket
            self.line(f"{label}: {done}/{total} {unit} ({frac:.0%}), {self.elapsed_text()}")

    def _beat(self) -> None:
        while not self._stop.wait(min(self.every_s, 5.0)):
            if time.monotonic() - self._last_line >= self.every_s:
                self.line(f"still working: {self._now}, {self.elapsed_text()}")


def stderr_line_writer(stream: TextIO) -> Callable[[str], None]:
    def write(text: str) -> None:
        stream.write(text + "\n")
        stream.flush()

    return write
