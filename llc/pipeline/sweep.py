"""Sweeps: a cartesian product over a sweep space, run on any backend, streamed into a CSV.

A sweep space is a TOML file (``llc/presets/sweep_default.toml``; ``llc/presets/sweep_smoke.toml`` is a
tiny one for tests)::

    preset = "quick"              # base config (``--preset`` overrides)
    n_seeds = 1                   # replicates: seeds seed, seed+1, ... (``--n-seeds``)
    seed = 0
    samplers = ["sgld", "hmc"]    # every run evaluates these; one CSV row per run and sampler
    [base]                        # fixed overrides on top of the preset
    "sgld.draws" = 500
    [[grid]]                      # the runs are the union of the grids; each grid is the
    name = "size"                 # cartesian product of its axes (dotted config fields)
    "target.mlp.target_params" = [500, 1000]
    "target.mlp.depth" = [1, 2]

Precedence: preset < [base] < grid values < ``--set`` < seed. A ``--set`` of a field that is
also an axis pins that axis (the axis is dropped); ``--axis field=v1,v2`` replaces or adds an axis.

Results stream into the CSV (rewritten atomically after every finished run): config columns,
λ̂, SE, ESS, R̂, work, WNV and efficiency metrics per sampler, run_id, status and error. Rows
are merged by run_id under a lock, so sweeps writing to one CSV at once keep every row, and rows
of runs from earlier sweeps into the same file stay. Finished runs are cached under the artifacts root, so a sweep interrupted and started
again only runs what is missing; a failing run is reported and the others go on.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import itertools
import math
import os
import shutil
import time
import tomllib
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence, get_type_hints

from llc.store import cache
from llc.pipeline.experiment import expand_restriction
from llc.pipeline.backends.base import CACHED, FAILED, Backend, BackendUnavailable, Outcome, execute  # noqa: F401
from llc.config import PRESETS_DIR, ConfigError, RunConfig, build_config, canonical, parse_value

DEFAULT_SPACE = PRESETS_DIR / "sweep_default.toml"
DEFAULT_CSV = Path("llc_sweep_results.csv")
SPACE_KEYS = {"preset", "n_seeds", "seed", "samplers", "base", "grid", "description"}

# Config columns of every CSV row: short name -> dotted field.
CONFIG_COLUMNS = {
    "target": "target.kind", "seed": "seed", "n_data": "data.n_data", "x_dist": "data.x_dist",
    "noise": "data.noise", "noise_scale": "data.noise_scale", "in_dim": "target.mlp.in_dim",
    "depth": "target.mlp.depth", "widths": "target.mlp.widths", "target_params": "target.mlp.target_params",
    "activation": "target.mlp.activation", "quad_dim": "target.quadratic.dim",
}
LEADING = ["grid", *CONFIG_COLUMNS, "n_params", "n", "beta", "gamma", "nbeta", "L0", "analytic_llc",
           "sampler", "llc_mean", "llc_se", "ess", "rhat", "wall_s", "fde", "diverged_chains",
           "wnv_time", "wnv_fde", "ess_per_sec", "ess_per_fde"]
TRAILING = ["run_id", "status", "error", "backend_info", "artifacts"]
# Scalar per-sampler entries of metrics.json copied into the CSV when present.
METRIC_KEYS = ("chains", "draws", "llc_std", "ess_bulk", "ess_tail", "mcse", "n_grad_evals",
               "full_loss_evals", "compile_s", "warmup_s", "sampling_s")
EFFICIENCY_PREFIXES = ("wnv", "ess_per", "time_to", "fde_to", "grad_to", "acceptance", "energy")


# --------------------------------------------------------------------------- the space

@dataclasses.dataclass
class SweepSpace:
    preset: str | None = None
    n_seeds: int = 1
    seed: int = 0
    samplers: tuple[str, ...] | None = None
    base: dict[str, Any] = dataclasses.field(default_factory=dict)
    grids: list[tuple[str, dict[str, list[Any]]]] = dataclasses.field(default_factory=list)
    source: str = "<memory>"


@dataclasses.dataclass
class SweepPoint:
    cfg: RunConfig
    values: dict[str, Any]  # the axis values (dotted field -> value) and the seed
    grid: str
    run_id: str


def _flatten(mapping: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, f"{dotted}."))
        else:
            out[dotted] = value
    return out


def load_space(path: str | os.PathLike | None = None) -> SweepSpace:
    """Read a sweep-space TOML file (a name like ``smoke`` means ``llc/presets/sweep_smoke.toml``)."""
    path = Path(path) if path else DEFAULT_SPACE
    if not path.suffix and not path.exists():
        path = PRESETS_DIR / f"sweep_{path}.toml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem.removeprefix("sweep_") for p in PRESETS_DIR.glob("sweep_*.toml")))
        raise ConfigError(f"--space: {str(path)!r} not found; available: {known}")
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--space: {path} is not valid TOML ({exc})") from None
    return space_from_dict(data, source=str(path))


def space_from_dict(data: dict[str, Any], source: str = "<memory>") -> SweepSpace:
    unknown = set(data) - SPACE_KEYS
    if unknown:
        raise ConfigError(f"sweep space {source}: unknown key(s) {', '.join(sorted(unknown))}; "
                          f"allowed: {', '.join(sorted(SPACE_KEYS))}")
    grids_raw = data.get("grid", [{}])
    if isinstance(grids_raw, dict):
        grids_raw = [grids_raw]
    grids = []
    for i, block in enumerate(grids_raw):
        block = dict(block)
        name = str(block.pop("name", f"grid{i + 1}"))
        axes = {}
        for key, values in _flatten(block).items():
            if not isinstance(values, list) or not values:
                raise ConfigError(f"sweep space {source}: grid {name!r}: {key} must be a non-empty list of values")
            axes[canonical(key)] = values
        grids.append((name, axes))
    samplers = data.get("samplers")
    n_seeds = data.get("n_seeds", 1)
    if not isinstance(n_seeds, int) or n_seeds < 1:
        raise ConfigError(f"sweep space {source}: n_seeds must be an integer >= 1, got {n_seeds!r}")
    return SweepSpace(preset=data.get("preset") or None, n_seeds=n_seeds, seed=int(data.get("seed", 0)),
                      samplers=tuple(samplers) if samplers else None, base={canonical(k): v for k, v in _flatten(data.get("base", {})).items()},
                      grids=grids, source=source)


def _field_type(dotted: str) -> Any:
    obj: Any = RunConfig()
    parts = dotted.split(".")
    for part in parts[:-1]:
        obj = getattr(obj, part, None)
        if obj is None or not dataclasses.is_dataclass(obj):
            raise ConfigError(f"--axis {dotted}: unknown config section {part!r}")
    hints = get_type_hints(type(obj))
    if parts[-1] not in hints:
        raise ConfigError(f"--axis {dotted}: unknown config field {parts[-1]!r}")
    return hints[parts[-1]]


def parse_axis(text: str) -> tuple[str, list[Any]]:
    """``field=v1,v2,v3`` (``|`` separates values of list-valued fields: ``model.widths=16,16|64``)."""
    key, sep, raw = text.partition("=")
    key = canonical(key.strip())
    if not sep or not key or not raw.strip():
        raise ConfigError(f"--axis {text!r}: expected dotted.field=value1,value2,...")
    tp = _field_type(key)
    is_tuple = "tuple" in str(tp)
    parts = raw.split("|") if (is_tuple or "|" in raw) else raw.split(",")
    return key, [parse_value(p, tp, key) for p in parts if p.strip()]


def plan_sweep(space: SweepSpace, *, preset: str | None = None, overrides: Sequence[str] = (),
               axes: Sequence[str] = (), n_seeds: int | None = None, seed: int | None = None,
               samplers: str | None = None) -> list[SweepPoint]:
    """The configs of a sweep, in a stable order, deduplicated by run id."""
    preset = preset or space.preset
    n_seeds = space.n_seeds if n_seeds is None else n_seeds
    seed0 = space.seed if seed is None else seed
    if n_seeds < 1:
        raise ConfigError(f"--n-seeds: must be >= 1, got {n_seeds}")
    head: list[str] = []
    if samplers:
        head.append(f"samplers={samplers}")
    elif space.samplers:
        head.append(f"samplers={','.join(space.samplers)}")
    pinned = {canonical(item.partition("=")[0].strip()) for item in overrides}
    extra_axes = dict(parse_axis(a) for a in axes)

    grids = []
    for name, grid_axes in space.grids or [("grid1", {})]:
        grid_axes = {k: v for k, v in grid_axes.items() if k not in pinned}
        grid_axes.update(extra_axes)  # replaces the axis, or adds it to every grid
        grids.append((name, grid_axes))

    points: list[SweepPoint] = []
    seen: set[str] = set()
    for name, grid_axes in grids:
        keys = list(grid_axes)
        for combo in itertools.product(*(grid_axes[k] for k in keys)):
            values = dict(zip(keys, combo))
            for s in range(seed0, seed0 + n_seeds):
                try:
                    cfg = build_config(preset, [*head, *overrides, f"seed={s}", f"target.seed={s}"],
                                       mapping={**space.base, **values})
                except ConfigError as exc:
                    raise ConfigError(f"sweep grid {name!r}: {exc}") from None
                try:  # a restriction family: one point per group
                    members = expand_restriction(cfg)
                except ConfigError as exc:
                    raise ConfigError(f"sweep grid {name!r}: {exc}") from None
                for member in members:
                    rid = cache.run_id(member)
                    if rid in seen:
                        continue
                    seen.add(rid)
                    group = {"posterior.restrict": ",".join(member.posterior.restrict)} if len(members) > 1 else {}
                    points.append(SweepPoint(member, {**values, **group, "seed": s}, name, rid))
    return points


# --------------------------------------------------------------------------- result rows

def _get(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value))
    if isinstance(value, bool):
        return str(value).lower()
    return value


def config_columns(point: SweepPoint) -> dict[str, Any]:
    cols = {"grid": point.grid}
    dotted_to_short = {v: k for k, v in CONFIG_COLUMNS.items()}
    for short, dotted in CONFIG_COLUMNS.items():
        cols[short] = _cell(_get(point.cfg, dotted))
    for dotted in point.values:
        if dotted not in dotted_to_short:
            cols[dotted] = _cell(_get(point.cfg, dotted))
    return cols


def _ratio(a: Any, b: Any) -> float | None:
    try:
        a, b = float(a), float(b)
    except (TypeError, ValueError):
        return None
    return a / b if b > 0 and math.isfinite(a) and math.isfinite(b) else None


def efficiency(summary: dict[str, Any], metrics: dict[str, Any]) -> dict[str, Any]:
    """Work-normalised variance and ESS rates; metrics.json's own values win when it has them.

    WNV = Var(λ̂) × work with Var(λ̂) = SE², work = wall seconds or full-data-equivalent gradients.
    """
    out: dict[str, Any] = {}
    se, ess = summary.get("llc_se"), summary.get("ess")
    wall, fde = summary.get("wall_s"), summary.get("fde")
    have = lambda prefix: any(k.startswith(prefix) for k in metrics)  # noqa: E731
    if not have("wnv") and se is not None:
        out["wnv_time"] = se ** 2 * wall if wall is not None else None
        out["wnv_fde"] = se ** 2 * fde if fde is not None else None
    if not have("ess_per"):
        out["ess_per_sec"] = _ratio(ess, wall)
        out["ess_per_fde"] = _ratio(ess, fde)
    for key, value in metrics.items():
        if key.startswith(EFFICIENCY_PREFIXES) and isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = value
    return out


def _read_metrics(record: dict[str, Any] | None) -> dict[str, Any]:
    if not record or not record.get("artifacts"):
        return {}
    path = Path(record["artifacts"]) / "metrics.json"
    try:
        return json.loads(path.read_text()).get("samplers", {}) if path.is_file() else {}
    except (OSError, ValueError, AttributeError):  # the CSV row then has the record's summary only
        return {}


def result_rows(point: SweepPoint, outcome: Outcome) -> list[dict[str, Any]]:
    """One row per sampler of the run (failed runs: one row per requested sampler)."""
    base = config_columns(point)
    rid = (outcome.result or {}).get("run_id") or outcome.run_id  # the id the run was stored under
    tail = {"run_id": rid, "status": outcome.status, "error": outcome.error or "",
            "backend_info": outcome.info.get("job_id", "") or outcome.info.get("download_error", ""),
            "artifacts": (outcome.result or {}).get("artifacts", "")}
    if outcome.status == FAILED or not outcome.result:
        return [{**base, "sampler": name, **tail} for name in point.cfg.samplers]
    rec = outcome.result
    t, p = rec.get("target", {}), rec.get("posterior", {})
    run_cols = {"n_params": t.get("d"), "n": p.get("n"), "beta": p.get("beta"), "gamma": p.get("gamma"),
                "nbeta": p.get("nbeta"), "L0": t.get("L0"), "analytic_llc": t.get("analytic_llc")}
    metrics = _read_metrics(rec)
    rows = []
    for name, summary in rec.get("samplers", {}).items():
        m = metrics.get(name, {})
        row = {**base, **run_cols, "sampler": name, **summary}
        row["flags"] = "; ".join(summary.get("flags") or m.get("flags") or [])  # "" = clean (messages hold commas)
        row.update({k: m[k] for k in METRIC_KEYS if k in m and not isinstance(m[k], (list, dict))})
        row.update(efficiency(summary, m))
        row.update(tail)
        rows.append({k: _cell(v) for k, v in row.items()})
    return rows


class ResultsCSV:
    """This sweep's rows per plan index, merged into the CSV by run_id under a lock.

    Every write locks ``.<name>.lock`` beside the CSV, reads the rows already there, replaces
    those of this sweep's run ids (in place) and appends the new ones, then renames a temporary
    file over it. Concurrent sweeps into one file therefore keep every row; rows of other runs
    (an earlier or a parallel sweep) are kept, and a run's row is never duplicated.
    """

    def __init__(self, path: Path, log: Callable[[str], None] = lambda msg: None):
        self.path = Path(path)
        self.rows: dict[int, list[dict[str, Any]]] = {}
        self.log = log

    @property
    def lock_file(self) -> Path:
        return self.path.with_name(f".{self.path.name}.lock")

    def update(self, index: int, rows: list[dict[str, Any]]) -> None:
        self.rows[index] = rows
        self.write()

    @staticmethod
    def columns(rows: Iterable[dict[str, Any]]) -> list[str]:
        seen: dict[str, None] = {}
        for row in rows:
            seen.update(dict.fromkeys(row))
        lead = [c for c in LEADING if c in seen]
        tail = [c for c in TRAILING if c in seen]
        middle = [c for c in seen if c not in lead and c not in tail]
        return lead + middle + tail

    def merged(self, existing: list[dict[str, Any]]) -> list[dict[str, Any]]:
        ours: dict[str, list[dict[str, Any]]] = {}
        for index in sorted(self.rows):
            for row in self.rows[index]:
                ours.setdefault(str(row.get("run_id", "")), []).append(row)
        # This sweep's rows stay together in plan order (runs finish in any order), at the place of
        # the first of them already in the file, or at the end.
        block = [row for rows in ours.values() for row in rows]
        out: list[dict[str, Any]] = []
        placed = False
        for row in existing:
            if row.get("run_id", "") in ours:
                if not placed:
                    out.extend(block)
                    placed = True
            else:
                out.append(row)
        if not placed:
            out.extend(block)
        return out

    def intact_rows(self) -> list[dict[str, Any]]:
        """The rows already in the file that are whole. A row cut short (a file truncated mid-row),
        one without a run id, or a file with no header (zeroed) is said in one line and left out (a
        copy of the damaged file is kept beside it); this sweep's rows are rebuilt from its runs."""
        if not self.path.is_file() or self.path.stat().st_size == 0:
            return []
        try:
            with self.path.open(newline="") as fh:
                reader = csv.DictReader(fh)
                rows = list(reader)
                header = reader.fieldnames or []
        except (UnicodeDecodeError, csv.Error) as exc:
            rows, header = [], []
            why = f"unreadable ({type(exc).__name__})"
        else:
            why = "" if "run_id" in header else "no header with a run_id column"
        whole = [r for r in rows if None not in r and None not in r.values() and r.get("run_id")] if not why else []
        if why or len(whole) < len(rows):
            copy = self.path.with_name(f"{self.path.name}.damaged-{time.strftime('%Y%m%dT%H%M%S')}")
            shutil.copyfile(self.path, copy)
            what = why or f"{len(rows) - len(whole)} of {len(rows)} rows cut short or without a run_id"
            self.log(f"sweep CSV {self.path} is damaged ({what}); kept a copy at {copy.name} and rebuilding it "
                     "from this sweep's runs" + (" and its whole rows" if whole else ""))
        return whole

    def write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with cache.file_lock(self.lock_file):
            existing = self.intact_rows()
            rows = self.merged(existing)
            cols = self.columns(rows)
            with cache.atomic_file(self.path, "w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=cols, restval="")
                writer.writeheader()
                writer.writerows(rows)


# --------------------------------------------------------------------------- running

@dataclasses.dataclass
class SweepSummary:
    total: int
    done: int = 0
    cached: int = 0
    failed: int = 0
    seconds: float = 0.0
    csv: str = ""
    failures: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    @property
    def finished(self) -> int:
        return self.done + self.cached + self.failed


def describe_point(point: SweepPoint) -> str:
    return ", ".join(f"{k.split('.')[-1]}={_cell(v)}" for k, v in point.values.items())


def run_sweep(points: Sequence[SweepPoint], backend: Backend, root: Path | str, out_csv: Path | str, *,
              skip: bool = True, console: Any = None, batch: bool = True) -> SweepSummary:
    """Run the points on the backend, streaming rows into ``out_csv``; Rich progress on ``console``.

    With ``batch`` (the default) points that differ only in runtime values run as one program.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    table = ResultsCSV(Path(out_csv), log=lambda msg: note(msg))
    cache.remove_stale_files(table.path.parent, table.path.name)
    summary = SweepSummary(total=len(points), csv=str(out_csv))
    t0 = time.perf_counter()
    counts = lambda: (f"done {summary.done} · cached {summary.cached} · failed {summary.failed} · "  # noqa: E731
                      f"running {backend.running()}")
    columns = (TextColumn("[bold]sweep"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[counts]}"),
               TimeElapsedColumn())
    # In a log (stderr not a terminal) a Rich bar prints nothing until the end: plain lines instead.
    plain = None
    if console is not None and not console.is_terminal:
        from llc.pipeline.progress import PlainProgress, stderr_line_writer

        plain = PlainProgress(stderr_line_writer(console.file))
    progress = Progress(*columns, console=console, transient=False, disable=console is None or plain is not None)
    note = (lambda msg: console.print(msg, highlight=False, soft_wrap=True)) if console is not None else (lambda msg: None)
    with progress, (plain or contextlib.nullcontext()):
        task = progress.add_task("sweep", total=len(points), counts=counts())
        outcomes = execute(backend, [p.cfg for p in points], root, skip=skip, batch=batch, log=note)
        if plain is not None:
            plain.log(f"sweep: 0/{len(points)} runs, {counts()}")
        try:
            for out in outcomes:
                if out is not None:
                    point = points[out.index]
                    if out.status == FAILED:
                        summary.failed += 1
                        summary.failures.append((out.run_id, out.error or ""))
                        if console is not None:
                            progress.console.print(f"[red]failed[/] run {out.run_id} ({describe_point(point)}): "
                                                   f"{out.error}", highlight=False, soft_wrap=True)
                    elif out.status == CACHED:
                        summary.cached += 1
                    else:
                        summary.done += 1
                    table.update(out.index, result_rows(point, out))
                    progress.advance(task)
                    if plain is not None:
                        plain.log(f"sweep: {summary.finished}/{len(points)} runs, {counts()}, {plain.elapsed_text()}")
                progress.update(task, counts=counts())
        finally:
            outcomes.close()  # on Ctrl-C: the backend cancels what is still queued or running, now
    if not table.rows:
        table.write()  # an empty sweep still leaves a CSV with a header
    summary.seconds = time.perf_counter() - t0
    return summary


def run_single(cfg: RunConfig, backend: Backend, root: Path | str, *, skip: bool = True) -> Outcome:
    """``llc run --backend=...``: one config through a backend; returns its Outcome."""
    result = None
    for out in execute(backend, [cfg], root, skip=skip):
        if out is not None:
            result = out
    assert result is not None
    return result


def read_results(path: Path | str) -> list[dict[str, str]]:
    with Path(path).open(newline="") as fh:
        return list(csv.DictReader(fh))


def sizes(points: Iterable[SweepPoint]) -> dict[str, int]:
    out: dict[str, int] = {}
    for p in points:
        out[p.grid] = out.get(p.grid, 0) + 1
    return out
