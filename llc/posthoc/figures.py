"""Figures off the critical path: a run's PNGs, drawn from its saved files after it is complete.

A run directory is written and marked complete (``manifest.json``) before any figure is drawn, so
sampling never waits for matplotlib and a kill while drawing never costs the run: at worst some
PNGs are missing, and ``llc run --figures all`` on the cached run (or ``llc analyze``) draws them.

``after_save`` is the figure step of ``llc.pipeline.experiment``. Inside a ``background()`` block
(what ``llc run`` and ``llc sweep`` open around their local runs) it queues the run's figures on a
pool of niced worker processes, one task per (sampler, plot key), and returns at once: the next
run samples while the previous one's figures are drawn. Elsewhere (a SLURM, Modal or joblib
worker, the Python API) it draws them in-process before returning, still after the run is saved.
Every PNG is written atomically (``plots.save_figure``). ``figures.json`` records which plot keys
a run has been drawn for, so asking again for the same figures draws nothing.

Modes (``--figures``): ``none``; ``summary``: running λ̂ and L_n trace per sampler plus the combined
running λ̂ (what a reader opens first); ``all``: every plot key of ``llc.posthoc.plots``.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import CancelledError, Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from llc.config import figure_mode
from llc.store.records import FIGURE_RECORD as RECORD_FILE, png_intact

SUMMARY_PLOTS = ("running_llc", "trace", "combined")
WORKERS_ENV = "LLC_FIGURE_WORKERS"
Log = Callable[[str], None]


def _quiet(msg: str) -> None:
    pass


def plot_keys(mode: str) -> tuple[str, ...]:
    from llc.posthoc.plots import PLOT_KEYS

    return {"none": (), "summary": SUMMARY_PLOTS, "all": PLOT_KEYS}[figure_mode(mode)]


def default_workers() -> int:
    """``LLC_FIGURE_WORKERS``, else up to 4 of the CPUs this process may use, leaving one free."""
    env = os.environ.get(WORKERS_ENV, "").strip()
    if env:
        return max(1, int(env))
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(4, cpus - 1))  # one core left to the sampler (or to the caller)


# --------------------------------------------------------------------------- what to draw

def key_of(name: str) -> str | None:
    """The plot key a figure file of a run belongs to (``sgld_L_ess_quantile.png`` -> ess_quantile)."""
    from llc.posthoc.plots import COMBINED_FILE, PER_SAMPLER

    if name == COMBINED_FILE:
        return "combined"
    stem = name[:-4] if name.endswith(".png") else name
    found = [(len(suffix), key) for key, items in PER_SAMPLER.items() for suffix, _ in items
             if stem.endswith("_" + suffix)]
    return max(found)[1] if found else None  # the longest suffix: L_ess_quantile, not L_ess


def _record(run_dir: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads((Path(run_dir) / RECORD_FILE).read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else {}


def damaged_keys(run_dir: Path, record: dict[str, Any] | None = None) -> set[str]:
    """Keys of figures the record lists, or PNGs on disk, that are missing, truncated or zeroed."""
    run_dir = Path(run_dir)
    record = _record(run_dir) if record is None else record
    names = set((record or {}).get("files") or ()) | {p.name for p in run_dir.glob("*.png")}
    return {k for name in names if not png_intact(run_dir / name) and (k := key_of(name)) is not None}


def recorded_keys(run_dir: Path, *, legacy: bool = True) -> set[str]:
    """Plot keys a run's figures were drawn for and are still on disk, whole: a deleted or
    truncated PNG is drawn again when asked for. With ``legacy``: a run from before ``figures.json``
    with PNGs drew them all inside ``llc run``; one without PNGs drew none."""
    from llc.posthoc.plots import PLOT_KEYS

    record = _record(run_dir)
    if record is not None:
        return set(record.get("keys") or ()) - damaged_keys(run_dir, record)
    if (Path(run_dir) / RECORD_FILE).exists():
        return set()  # unreadable: draw again
    return set(PLOT_KEYS) - damaged_keys(run_dir, {}) if legacy and any(Path(run_dir).glob("*.png")) else set()


def records_stale(run_dir: Path) -> bool:
    """Whether the figure records (``figures.json``, ``gallery.md``) no longer match the PNGs on disk."""
    from llc.store.records import GALLERY_FILE

    run_dir = Path(run_dir)
    record = _record(run_dir)
    if record is None:
        return False  # nothing was drawn (or recorded) yet: the figure step writes them
    on_disk = sorted(p.name for p in run_dir.glob("*.png") if png_intact(p))
    try:
        gallery = (run_dir / GALLERY_FILE).read_text()
    except (OSError, UnicodeDecodeError):
        return True
    return (sorted(record.get("files") or ()) != on_disk or not gallery.startswith("# ")
            or any(f"]({name})" not in gallery for name in on_disk))


def missing_keys(run_dir: Path, keys: tuple[str, ...]) -> tuple[str, ...]:
    done = recorded_keys(run_dir)
    return tuple(k for k in keys if k not in done)


def jobs(run_dir: Path, keys: tuple[str, ...]) -> list[tuple[str | None, str]]:
    """One task per (sampler, plot key); the cross-sampler figure is ``(None, "combined")``."""
    from llc.posthoc.analyze import run_samplers
    from llc.posthoc.plots import PER_SAMPLER

    samplers = [s for s in run_samplers(run_dir) if (Path(run_dir) / f"{s}.nc").is_file()]
    out: list[tuple[str | None, str]] = [(s, k) for s in samplers for k in keys if k in PER_SAMPLER]
    if "combined" in keys and samplers:
        out.append((None, "combined"))
    return out


# --------------------------------------------------------------------------- drawing (any process)

_LOADED: dict[str, tuple[tuple, dict[str, Any], dict[str, Any]]] = {}


def _stamp(run_dir: Path) -> tuple:
    return tuple((p.name, p.stat().st_mtime_ns, p.stat().st_size)
                 for p in sorted(run_dir.glob("*.nc")) + [run_dir / "metrics.json"] if p.exists())


def _load(run_dir: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The run's InferenceData and saved metrics, kept per process: a worker draws many figures of
    the same run in a row."""
    from llc.posthoc.analyze import METRICS_FILE, load_run, run_metrics

    path = Path(run_dir)
    stamp = _stamp(path)
    hit = _LOADED.get(run_dir)
    if hit is not None and hit[0] == stamp:
        return hit[1], hit[2]
    idatas = load_run(path)
    try:  # the saved metrics are what the run reported (llc analyze reproduces them exactly)
        metrics = json.loads((path / METRICS_FILE).read_text())["samplers"]
    except (OSError, ValueError, KeyError, TypeError):
        metrics = run_metrics(idatas)["samplers"]
    if len(_LOADED) >= 2:
        _LOADED.pop(next(iter(_LOADED)))
    _LOADED[run_dir] = (stamp, idatas, metrics)
    return idatas, metrics


def draw_job(run_dir: str, sampler: str | None, key: str) -> tuple[list[str], list[str]]:
    """Draw one plot key of one sampler (``None``: the combined figure) into the run directory.
    Returns (files written, one-line errors); one broken figure never stops the others."""
    from llc.posthoc import plots as P

    written: list[str] = []
    errors: list[str] = []
    try:
        idatas, metrics = _load(run_dir)
    except Exception as exc:  # noqa: BLE001 - reported with the run's figures
        return written, [f"{sampler or 'run'}: cannot load ({type(exc).__name__}: {exc})"]
    if sampler is None:
        items = [(P.COMBINED_FILE, lambda: P.fig_combined(idatas, metrics))]
    else:
        items = [(f"{sampler}_{suffix}.png", lambda fn=fn: fn(idatas[sampler], metrics.get(sampler, {}), sampler))
                 for suffix, fn in P.PER_SAMPLER.get(key, [])]
    for name, make in items:
        try:
            fig = make()
            if fig is not None:
                P.save_figure(fig, Path(run_dir) / name)
                written.append(name)
        except Exception as exc:  # noqa: BLE001
            errors.append(f"{name}: {type(exc).__name__}: {exc}")
    return written, errors


def _worker_init(parent: int) -> None:
    # Below the sampler in the scheduler's eyes: figures fill idle cores, never slow a run down.
    with contextlib.suppress(OSError, AttributeError):
        os.nice(10)
    # Ctrl-C reaches the whole process group: the parent alone handles it (and ends the workers).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True, name="llc-parent-watch").start()


def _exit_with_parent(parent: int, every_s: float = 0.1) -> None:
    """A worker outlives no parent (kill -9 of ``llc run``): once reparented, it exits. Polling
    getppid rather than PR_SET_PDEATHSIG, which fires when the *thread* that spawned the worker ends."""
    while os.getppid() == parent:
        time.sleep(every_s)
    os._exit(1)


# --------------------------------------------------------------------------- records

@dataclass
class FigureReport:
    run_dir: str
    keys: tuple[str, ...]
    written: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    failed_keys: set[str] = field(default_factory=set)  # not recorded as drawn: asked again, drawn again
    seconds: float = 0.0


def finish(report: FigureReport, log: Log = _quiet) -> FigureReport:
    """After a run's figures: ``figures.json``, then ``gallery.md`` and ``README_snippet.md`` listing them."""
    from llc.store.records import METRICS_FILE, write_gallery, write_snippet, write_text_atomic
    from llc.posthoc.plots import PLOT_KEYS

    run_dir = Path(report.run_dir)
    keys = recorded_keys(run_dir, legacy=False) | (set(report.keys) - report.failed_keys)
    keys -= damaged_keys(run_dir, {})  # never record a key whose figure is not on disk, whole
    write_text_atomic(run_dir / RECORD_FILE, json.dumps({
        "keys": [k for k in PLOT_KEYS if k in keys],
        "files": sorted(p.name for p in run_dir.glob("*.png") if png_intact(p)),
        "errors": report.errors, "seconds": round(report.seconds, 3)}, indent=2) + "\n")
    try:
        doc = json.loads((run_dir / METRICS_FILE).read_text())
    except (OSError, ValueError):
        doc = None
    write_gallery(run_dir, f"Figures of run {run_dir.name}")
    if doc is not None:
        write_snippet(run_dir, doc)
    for line in report.errors:
        log(f"figure failed: {line}")
    return report


def draw_run(run_dir: Path, keys: tuple[str, ...], *, log: Log = _quiet) -> FigureReport:
    """Draw a saved run's figures in this process (in order), then write its records."""
    t0 = time.perf_counter()
    report = FigureReport(str(run_dir), tuple(keys))
    for sampler, key in jobs(run_dir, keys):
        written, errors = draw_job(str(run_dir), sampler, key)
        report.written += written
        report.errors += errors
        if errors:
            report.failed_keys.add(key)
    report.seconds = time.perf_counter() - t0
    return finish(report, log)


# --------------------------------------------------------------------------- background drawing

@dataclass
class _Pending:
    report: FigureReport
    left: int
    start: float


class FigureQueue:
    """Draws runs' figures on a pool of worker processes while the caller goes on.

    Spawned workers (not forked: the parent may hold JAX's threads); started at the first figure.
    ``wait()`` blocks until every queued figure is drawn and returns the per-run reports.
    """

    def __init__(self, workers: int | None = None, log: Log = _quiet):
        self.workers = workers or default_workers()
        self.log = log
        self.reports: list[FigureReport] = []
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()
        self._left = 0
        self._cancelled = False
        self._run_dirs: set[Path] = set()  # where workers write (their temporary files, on cancel)

    def submit(self, run_dir: Path, keys: tuple[str, ...]) -> int:
        """Queue a saved run's figures; returns the number of tasks queued."""
        todo = jobs(run_dir, keys)
        pending = _Pending(FigureReport(str(run_dir), tuple(keys)), len(todo), time.perf_counter())
        self._run_dirs.add(Path(run_dir))
        if not todo:
            self.reports.append(finish(pending.report, self.log))
            return 0
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_worker_init, initargs=(os.getpid(),))
        with self._lock:
            self._left += len(todo)
        for sampler, key in todo:
            future = self._pool.submit(draw_job, str(run_dir), sampler, key)
            future.add_done_callback(lambda f, p=pending, k=key: self._done(p, k, f))
        return len(todo)

    @property
    def pending(self) -> int:
        """Figure tasks not finished yet."""
        return self._left

    def _done(self, pending: _Pending, key: str, future: Future) -> None:
        if self._cancelled:  # workers ended by cancel(): nothing more is recorded or said
            return
        try:
            written, errors = future.result()
        except CancelledError:
            written, errors = [], ["cancelled"]
        except BaseException as exc:  # noqa: BLE001 - a dead worker: the run itself is safe
            written, errors = [], [f"{type(exc).__name__}: {exc}"]
        with self._lock:
            self._left -= 1
            pending.report.written += written
            pending.report.errors += errors
            if errors:
                pending.report.failed_keys.add(key)
            pending.left -= 1
            last = pending.left == 0
        if last:
            pending.report.seconds = time.perf_counter() - pending.start
            try:
                self.reports.append(finish(pending.report, self.log))
            except Exception as exc:  # noqa: BLE001 - never raise in the pool's thread
                self.log(f"{pending.report.run_dir}: figure records not written ({type(exc).__name__}: {exc})")

    def wait(self) -> list[FigureReport]:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        return self.reports

    def cancel(self) -> None:
        """Drop queued figures and end the workers now (a run keeps whatever was drawn; its figure
        record is not updated, so the missing ones are drawn when asked again). Ending them, not
        waiting: at exit Python would otherwise join workers still drawing (Ctrl-C hung > 45 s)."""
        self._cancelled = True
        pool, self._pool = self._pool, None
        if pool is None:
            return
        procs = list((getattr(pool, "_processes", None) or {}).values())
        for proc in procs:
            with contextlib.suppress(Exception):
                proc.kill()  # a PNG being written is a temporary file: never a half PNG under its name
        with contextlib.suppress(Exception):  # not waiting: a Ctrl-C may have cut a wait() short
            pool.shutdown(wait=False, cancel_futures=True)
        for proc in procs:  # SIGKILL is immediate; a bounded join only lets the kernel reap them
            with contextlib.suppress(Exception):
                proc.join(timeout=0.5)
        from llc.store.cache import remove_stale_files

        for run_dir in self._run_dirs:  # the killed workers' temporary PNGs (their owners are dead now)
            with contextlib.suppress(OSError):
                remove_stale_files(run_dir)


_ACTIVE: FigureQueue | None = None


@contextlib.contextmanager
def background(workers: int | None = None, log: Log = _quiet) -> Iterator[FigureQueue]:
    """Within the block, ``after_save`` queues figures instead of drawing them; the block's end
    waits for them. An exception in the block or while waiting (Ctrl-C) ends the workers at once
    and drops what is left."""
    global _ACTIVE
    queue = FigureQueue(workers, log)
    previous, _ACTIVE = _ACTIVE, queue
    try:
        yield queue
        _ACTIVE = previous
        queue.wait()
    except BaseException:
        queue.cancel()
        raise
    finally:
        _ACTIVE = previous


def after_save(run_dir: Path, keys: tuple[str, ...], *, log: Log = _quiet) -> FigureReport | None:
    """The figure step of a run, once its directory is complete: queue or draw what is not drawn yet."""
    keys = missing_keys(run_dir, tuple(keys))
    if not keys:
        if records_stale(run_dir):  # e.g. a zeroed gallery.md, a PNG deleted but no longer asked for
            return finish(FigureReport(str(run_dir), ()), log)
        return None
    if _ACTIVE is not None:
        _ACTIVE.submit(run_dir, keys)
        return None
    return draw_run(run_dir, keys, log=log)
