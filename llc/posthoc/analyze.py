"""Post-hoc analysis of saved runs (``llc analyze``) and README figure promotion.

Everything here works from the files of a run directory alone (``<sampler>.nc``, plus
``config.json`` / ``manifest.json`` when present) and never imports JAX, so a run copied to a
laptop can be re-analysed there. ``llc run`` computes its metrics with the same functions
(``analysis.diagnostics.sampler_metrics``, ``store.records.metrics_document``), which is why
``llc analyze`` reproduces a run's ``metrics.json`` exactly.
"""

from __future__ import annotations

import json
import shutil
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterable

from llc import registry
from llc.store.artifacts import load_netcdf, nc_attrs
from llc.store.jsonfiles import ArtifactError, read_json, write_json
from llc.analysis.diagnostics import sampler_metrics
from llc.analysis.flags import add_cross_sampler_flags
from llc.store.records import table_cells, table_notes
from llc.store.records import (DEFAULT_TARGET_SE, GALLERY_FILE, METRICS_FILE, SNIPPET_FILE, fmt, metrics_document,
                               write_gallery, write_snippet)

SAMPLER_ORDER = registry.SAMPLER_NAMES


# --------------------------------------------------------------------------- loading

def run_samplers(run_dir: Path) -> list[str]:
    """Samplers of a run: those its config.json lists, else every ``<sampler>.nc`` present."""
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.json"
    if cfg_path.is_file():
        try:
            listed = json.loads(cfg_path.read_text()).get("samplers")
        except (json.JSONDecodeError, AttributeError):
            listed = None
        if isinstance(listed, list) and listed:
            return [str(s) for s in listed]
    found = [p.stem for p in run_dir.glob("*.nc")]
    return sorted(found, key=registry.order_key)


def parse_which(which: str | Iterable[str] | None) -> list[str] | None:
    if which is None:
        return None
    items = [w.strip() for w in (which.split(",") if isinstance(which, str) else which) if w.strip()]
    return None if not items or items == ["all"] else items


def load_run(run_dir: Path, which: str | Iterable[str] | None = None) -> dict[str, Any]:
    """``{sampler: InferenceData}`` of a run directory; ArtifactError (one line) on any bad input."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ArtifactError(f"{run_dir}: no such run directory")
    names = parse_which(which) or run_samplers(run_dir)
    if not names:
        raise ArtifactError(f"{run_dir}: no sampler .nc files in this directory")
    idatas = {}
    for name in names:
        if not (run_dir / f"{name}.nc").exists():
            have = ", ".join(run_samplers(run_dir)) or "none"
            raise ArtifactError(f"{run_dir / f'{name}.nc'}: no such NetCDF file (samplers of this run: {have})")
        idata = load_netcdf(run_dir / f"{name}.nc")
        stored = nc_attrs(idata).get("sampler")
        if stored != name:
            raise ArtifactError(f"{run_dir / f'{name}.nc'}: holds sampler {stored!r}, not {name!r}")
        idatas[name] = idata
    return idatas


# --------------------------------------------------------------------------- metrics

def run_metrics(idatas: dict[str, Any], target_se: float = DEFAULT_TARGET_SE) -> dict[str, Any]:
    metrics = {name: sampler_metrics(idata, target_se) for name, idata in idatas.items()}
    add_cross_sampler_flags(metrics)
    return metrics_document(idatas, metrics, target_se)


def _canonical(obj: Any) -> Any:
    """JSON round trip (what metrics.json holds), so that in-memory and saved values compare alike."""
    from llc.store.jsonfiles import dumps

    return json.loads(dumps(obj, indent=None))


def diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted paths where two JSON-like values differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            path = f"{prefix}.{k}" if prefix else str(k)
            if k not in a or k not in b:
                out.append(path)
            else:
                out.extend(diff_keys(a[k], b[k], path))
        return out
    return [] if a == b else [prefix or "<root>"]


def compare_with_saved(doc: dict[str, Any], saved: dict[str, Any]) -> list[str]:
    """Differences between freshly computed metrics and a saved metrics.json (analysed samplers only)."""
    fresh = _canonical(doc)
    old = dict(saved)
    old["samplers"] = {k: v for k, v in (saved.get("samplers") or {}).items() if k in fresh["samplers"]}
    return diff_keys(fresh, old)


# --------------------------------------------------------------------------- tables

def metrics_tables(doc: dict[str, Any]):
    """Two Rich tables: the estimates with convergence diagnostics, and efficiency."""
    from rich.table import Table

    t, p = doc.get("target") or {}, doc.get("posterior") or {}
    head = f"run {doc.get('run_id')}"
    if t.get("id"):
        head += f" — target {t['id']} ({t.get('kind') or '?'}, d={t.get('d')}, n={t.get('n')})"
    if p.get("nbeta") is not None:
        head += f", nβ={p['nbeta']:.4g}, γ={fmt(p.get('gamma'), '.4g')}"
    est = Table(title=f"LLC estimates — {head}")
    for col in ("sampler", "λ̂ ± SE", "MCSE", "ESS bulk", "ESS tail", "R̂", "accept", "|ΔE| mean", "diverged", "flags"):
        est.add_column(col, justify="left" if col in ("sampler", "flags") else "right")
    eff = Table(title=f"Efficiency (target SE = {doc.get('target_se')})")
    for col in ("sampler", "wall s", "FDE", "ESS/s", "ESS/FDE", "WNV·s", "WNV·FDE", "time→SE", "FDE→SE"):
        eff.add_column(col, justify="left" if col == "sampler" else "right")
    for name, m in (doc.get("samplers") or {}).items():
        llc = "—" if m.get("llc_mean") is None else f"{m['llc_mean']:.3f} ± {fmt(m.get('llc_se'), '.3f')}"
        div = str(m.get("diverged_chains", 0))
        if m.get("divergent_transitions") is not None:
            div += f" ch / {m['divergent_transitions']} tr"
        cell, style = table_cells(m.get("flags"))
        est.add_row(name, llc, fmt(m.get("mcse"), ".3f"), fmt(m.get("ess_bulk"), ".0f"),
                    fmt(m.get("ess_tail"), ".0f"), fmt(m.get("rhat"), ".3f"),
                    fmt(m.get("acceptance_mean"), ".3f"), fmt(m.get("energy_change_abs_mean"), ".3g"), div,
                    cell, style=style)
        eff.add_row(name, fmt(m.get("wall_s"), ".2f"), fmt(m.get("fde"), ".3g"), fmt(m.get("ess_per_sec"), ".3g"),
                    fmt(m.get("ess_per_fde"), ".3g"), fmt(m.get("wnv_time"), ".3g"), fmt(m.get("wnv_fde"), ".3g"),
                    fmt(m.get("time_to_se1"), ".3g"), fmt(m.get("fde_to_se1"), ".3g"))
    notes = [f"analytic λ = {doc['analytic']['value']:.4f}"] if (doc.get("analytic") or {}).get("value") is not None else []
    notes += table_notes(doc.get("samplers") or {})
    if notes:
        est.caption = "\n".join(notes)
        est.caption_justify = "left"
    return est, eff


# --------------------------------------------------------------------------- llc analyze

def analyze_run(run_dir: Path, *, which: str | Iterable[str] | None = None, plots: str | Iterable[str] | None = None,
                out: Path | None = None, overwrite: bool = False, target_se: float = DEFAULT_TARGET_SE,
                log: Callable[[str], None] = lambda msg: None) -> dict[str, Any]:
    """Re-derive metrics (and figures) of a saved run from its NetCDF files.

    Writes into ``out`` (default ``RUN_DIR/analysis``): metrics.json, the figures, gallery.md and
    README_snippet.md. Existing files there are an error unless ``overwrite``. ``plots=[]`` draws none.
    Returns {"metrics", "out", "figures", "saved", "differences"}.
    """
    from llc.posthoc import plots as P

    if not (target_se is not None and target_se > 0):
        raise ValueError(f"--target-se: must be > 0, got {target_se}")
    run_dir = Path(run_dir)
    plot_keys = P.parse_plots(plots if plots is None or isinstance(plots, str) else list(plots))
    if isinstance(plots, (list, tuple)) and not plots:
        plot_keys = ()
    idatas = load_run(run_dir, which)
    out = Path(out) if out is not None else run_dir / "analysis"
    planned = [METRICS_FILE, *P.planned_files(idatas, plot_keys)]
    if plot_keys:
        planned += [GALLERY_FILE, SNIPPET_FILE]
    clash = [name for name in planned if (out / name).exists()]
    if clash and not overwrite:
        raise ArtifactError(f"{out / clash[0]} exists ({len(clash)} file(s) would be replaced); "
                            "pass --overwrite, or --out DIR")
    saved_path = run_dir / METRICS_FILE
    saved = None
    if saved_path.is_file():
        try:
            saved = read_json(saved_path)
        except ArtifactError as exc:
            log(f"saved metrics not comparable: {exc}")

    doc = run_metrics(idatas, target_se)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / METRICS_FILE, doc)
    figures = P.make_figures(idatas, doc["samplers"], out, plot_keys, overwrite=True, log=log) if plot_keys else []
    if plot_keys:
        write_gallery(out, f"Figures of run {doc.get('run_id')} (llc analyze)")
        write_snippet(out, doc)
    differences = compare_with_saved(doc, saved) if saved is not None else None
    return {"metrics": doc, "out": out, "figures": figures, "saved": saved_path if saved is not None else None,
            "differences": differences}


# --------------------------------------------------------------------------- llc promote

# Stable README names: (destination, source pattern); "{s}" = each selected sampler,
# "{ref}" = the reference sampler (HMC when the run has it: the one we trust most).
PROMOTE_PER_SAMPLER = ("{s}_llc_running.png",)
PROMOTE_SINGLE = (
    ("llc_rank.png", "{ref}_llc_rank.png"),
    ("llc_ess_evolution.png", "{ref}_L_ess.png"),
    ("Ln_centered.png", "{ref}_Ln_centered.png"),
    ("hmc_acceptance.png", "hmc_acceptance.png"),
    ("hmc_energy.png", "hmc_energy.png"),
    ("mclmc_energy_hist.png", "mclmc_energy_hist.png"),
    ("llc_running_combined.png", "llc_running_combined.png"),
)
README_DIR = Path("assets/readme")


def _created(run_dir: Path) -> float:
    """Creation time of a complete run (manifest ``created``, time-zone aware), else the manifest's mtime."""
    manifest = run_dir / "manifest.json"
    try:
        stamp = json.loads(manifest.read_text()).get("created")
        fmt = "%Y-%m-%dT%H:%M:%S%z" if len(stamp) > 19 else "%Y-%m-%dT%H:%M:%S"
        return datetime.strptime(stamp, fmt).timestamp()
    except (OSError, ValueError, TypeError, AttributeError, json.JSONDecodeError):
        return manifest.stat().st_mtime


def _owner(file_name: str) -> str | None:
    """The sampler a figure belongs to (longest matching prefix: ``mclmc_adjusted_*`` is not MCLMC's)."""
    for sampler in sorted(SAMPLER_ORDER, key=len, reverse=True):
        if file_name.startswith(sampler + "_"):
            return sampler
    return None


def latest_run(root: Path) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise ArtifactError(f"{root}: no such artifacts directory")
    runs = [d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".") and (d / "manifest.json").is_file()]
    if not runs:
        raise ArtifactError(f"{root}: no complete run (a run directory with manifest.json)")
    return max(runs, key=lambda d: (_created(d), d.name))


def resolve_run(run: str | Path | None, root: Path) -> Path:
    if run is None:
        return latest_run(root)
    path = Path(run)
    if path.is_dir():
        return path
    if (Path(root) / str(run)).is_dir():
        return Path(root) / str(run)
    raise ArtifactError(f"{run}: no such run (neither a directory nor a run id under {root})")


def promote(run: str | Path | None = None, root: Path = Path("artifacts"), out: Path = README_DIR,
            samplers: str | Iterable[str] | None = None) -> tuple[Path, list[tuple[Path, Path]]]:
    """Copy chosen figures of a run into ``out`` under stable names; returns (run_dir, [(src, dst)])."""
    run_dir = resolve_run(run, root)
    chosen = parse_which(samplers) or run_samplers(run_dir) or list(SAMPLER_ORDER)
    owners = {_owner(p.name) for p in run_dir.glob("*.png")}  # also works on an `llc analyze --out` folder
    present = [s for s in chosen if s in owners]
    refs = [s for s in present if s in registry.reference_names()]
    ref = (refs or present or [None])[0]
    pairs: list[tuple[str, str]] = [(pat.format(s=s), pat.format(s=s)) for s in present for pat in PROMOTE_PER_SAMPLER]
    for dst, src in PROMOTE_SINGLE:
        owner = src.split("_", 1)[0]
        if "{ref}" in src:
            if ref is None:
                continue
            src = src.format(ref=ref)
        elif owner in SAMPLER_ORDER and owner not in present:
            continue
        pairs.append((dst, src))
    copies = [(run_dir / src, Path(out) / dst) for dst, src in pairs if (run_dir / src).is_file()]
    if not copies:
        raise ArtifactError(f"{run_dir}: no figures to promote (run made with --no-save-plots? "
                            f"draw them with: llc analyze {run_dir} --out {run_dir} --overwrite)")
    Path(out).mkdir(parents=True, exist_ok=True)
    for src, dst in copies:
        shutil.copyfile(src, dst)
    # Provenance next to the images (no absolute paths: this folder is committed).
    try:
        created = json.loads((run_dir / "manifest.json").read_text()).get("created")
    except (OSError, ValueError, AttributeError):
        created = None
    write_json(Path(out) / "promoted.json", {"run": run_dir.name, "created": created, "reference_sampler": ref,
                                             "files": {dst.name: src.name for src, dst in copies}})
    return run_dir, copies
