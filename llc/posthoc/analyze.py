"""Post-hoc analysis of saved runs (``llc analyze``), run records and README figure promotion.

Everything here works from the files of a run directory alone (``<sampler>.nc``, plus
``config.json`` / ``manifest.json`` when present) and never imports JAX, so a run copied to a
laptop can be re-analysed there. ``llc run`` calls the same functions (``sampler_metrics`` via
``metrics_document``, ``plots.make_figures``, ``write_run_records``), which is why ``llc analyze``
reproduces a run's ``metrics.json`` exactly.
"""

from __future__ import annotations

import json
import shutil
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterable

from llc import registry
from llc.store import cache
from llc.store.artifacts import ArtifactError, load_netcdf, nc_attrs, read_json, write_json
from llc.analysis.diagnostics import sampler_metrics
from llc.analysis.flags import add_cross_sampler_flags, table_cells, table_notes

SAMPLER_ORDER = registry.SAMPLER_NAMES
METRICS_FILE = "metrics.json"
GALLERY_FILE = "gallery.md"
SNIPPET_FILE = "README_snippet.md"
MANIFEST_TXT = "manifest.txt"
DEFAULT_TARGET_SE = 1.0


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

def metrics_document(idatas: dict[str, Any], metrics: dict[str, dict[str, Any]],
                     target_se: float = DEFAULT_TARGET_SE) -> dict[str, Any]:
    """The content of ``metrics.json``: per-sampler metrics plus the run constants (from the files' attributes)."""
    first = nc_attrs(next(iter(idatas.values()))) if idatas else {}
    analytic = None
    if first.get("analytic_llc") is not None:
        analytic = {"value": first["analytic_llc"], "formula": first.get("analytic_formula")}
    return {
        "run_id": first.get("run_id"),
        "target_se": float(target_se),
        "samplers": metrics,
        "analytic": analytic,
        "posterior": {k: first.get(k) for k in ("n", "beta", "gamma", "nbeta")},
        "target": {"id": first.get("target_id"), "kind": first.get("target_kind"), "n": first.get("n"),
                   "d": first.get("dim"), "L0": first.get("L0"),
                   "analytic_llc": analytic["value"] if analytic else None},
    }


def run_metrics(idatas: dict[str, Any], target_se: float = DEFAULT_TARGET_SE) -> dict[str, Any]:
    metrics = {name: sampler_metrics(idata, target_se) for name, idata in idatas.items()}
    add_cross_sampler_flags(metrics)
    return metrics_document(idatas, metrics, target_se)


def _canonical(obj: Any) -> Any:
    """JSON round trip (what metrics.json holds), so that in-memory and saved values compare alike."""
    from llc.store.artifacts import dumps

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

def _fmt(value: Any, spec: str) -> str:
    if value is None:
        return "—"
    try:
        return format(value, spec)
    except (TypeError, ValueError):
        return str(value)


def metrics_tables(doc: dict[str, Any]):
    """Two Rich tables: the estimates with convergence diagnostics, and efficiency."""
    from rich.table import Table

    t, p = doc.get("target") or {}, doc.get("posterior") or {}
    head = f"run {doc.get('run_id')}"
    if t.get("id"):
        head += f" — target {t['id']} ({t.get('kind') or '?'}, d={t.get('d')}, n={t.get('n')})"
    if p.get("nbeta") is not None:
        head += f", nβ={p['nbeta']:.4g}, γ={_fmt(p.get('gamma'), '.4g')}"
    est = Table(title=f"LLC estimates — {head}")
    for col in ("sampler", "λ̂ ± SE", "MCSE", "ESS bulk", "ESS tail", "R̂", "accept", "|ΔE| mean", "diverged", "flags"):
        est.add_column(col, justify="left" if col in ("sampler", "flags") else "right")
    eff = Table(title=f"Efficiency (target SE = {doc.get('target_se')})")
    for col in ("sampler", "wall s", "FDE", "ESS/s", "ESS/FDE", "WNV·s", "WNV·FDE", "time→SE", "FDE→SE"):
        eff.add_column(col, justify="left" if col == "sampler" else "right")
    for name, m in (doc.get("samplers") or {}).items():
        llc = "—" if m.get("llc_mean") is None else f"{m['llc_mean']:.3f} ± {_fmt(m.get('llc_se'), '.3f')}"
        div = str(m.get("diverged_chains", 0))
        if m.get("divergent_transitions") is not None:
            div += f" ch / {m['divergent_transitions']} tr"
        cell, style = table_cells(m.get("flags"))
        est.add_row(name, llc, _fmt(m.get("mcse"), ".3f"), _fmt(m.get("ess_bulk"), ".0f"),
                    _fmt(m.get("ess_tail"), ".0f"), _fmt(m.get("rhat"), ".3f"),
                    _fmt(m.get("acceptance_mean"), ".3f"), _fmt(m.get("energy_change_abs_mean"), ".3g"), div,
                    cell, style=style)
        eff.add_row(name, _fmt(m.get("wall_s"), ".2f"), _fmt(m.get("fde"), ".3g"), _fmt(m.get("ess_per_sec"), ".3g"),
                    _fmt(m.get("ess_per_fde"), ".3g"), _fmt(m.get("wnv_time"), ".3g"), _fmt(m.get("wnv_fde"), ".3g"),
                    _fmt(m.get("time_to_se1"), ".3g"), _fmt(m.get("fde_to_se1"), ".3g"))
    notes = [f"analytic λ = {doc['analytic']['value']:.4f}"] if (doc.get("analytic") or {}).get("value") is not None else []
    notes += table_notes(doc.get("samplers") or {})
    if notes:
        est.caption = "\n".join(notes)
        est.caption_justify = "left"
    return est, eff


# --------------------------------------------------------------------------- records

def _flatten(obj: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(obj, dict):
        out = []
        for k, v in obj.items():
            out.extend(_flatten(v, f"{prefix}{k}."))
        return out
    return [(prefix[:-1], obj)]


def _fmt_value(v: Any) -> str:
    if isinstance(v, list):
        return ", ".join(str(x) for x in v) if v else "[]"
    return "—" if v is None else str(v)


def write_text_atomic(path: Path, text: str) -> Path:
    """Temp file + rename: these records are rewritten in complete run directories (after figures)."""
    path = Path(path)
    with cache.atomic_file(path, "w") as fh:  # the umask's permissions (mkstemp would force 0600)
        fh.write(text)
    return path


def figure_files(out_dir: Path) -> list[str]:
    """PNG figures in a directory, grouped by sampler (in sampler order), then the cross-sampler ones."""
    from llc.posthoc.plots import figure_info

    names = [p.name for p in Path(out_dir).glob("*.png")]
    return sorted(names, key=lambda n: (*figure_info(n, SAMPLER_ORDER)[:2], n))


def _figure_title(name: str) -> str:
    from llc.posthoc.plots import figure_info

    return figure_info(name, SAMPLER_ORDER)[2]


def write_gallery(out_dir: Path, title: str) -> Path:
    """``gallery.md``: every figure in the directory, as inline images under one heading per sampler."""
    out_dir = Path(out_dir)
    lines = [f"# {title}", ""]
    figures = figure_files(out_dir)
    if not figures:
        lines.append("No figures yet: they are drawn after the run is saved, unless it was made with "
                     "`--figures none`; `llc analyze` draws them on demand.")
    for name in figures:
        lines += [f"## {_figure_title(name)}", "", f"![{name}]({name})", ""]
    path = out_dir / GALLERY_FILE
    write_text_atomic(path, "\n".join(lines).rstrip() + "\n")
    return path


def _snippet(doc: dict[str, Any], out_dir: Path) -> str:
    t, p = doc.get("target") or {}, doc.get("posterior") or {}
    lines = [f"### LLC run `{doc.get('run_id')}`", ""]
    if t.get("id"):
        lines.append(f"Target `{t['id']}` ({t.get('kind')}, d = {t.get('d')}, n = {t.get('n')}); "
                     f"nβ = {_fmt(p.get('nbeta'), '.4g')}, γ = {_fmt(p.get('gamma'), '.4g')}, "
                     f"L₀ = {_fmt(t.get('L0'), '.6g')}.")
    if (doc.get("analytic") or {}).get("value") is not None:
        lines.append(f"Analytic λ = {doc['analytic']['value']:.4f} ({doc['analytic'].get('formula')}).")
    lines += ["", "| sampler | λ̂ ± SE | ESS bulk | ESS tail | R̂ | accept | ESS/s | ESS/FDE | WNV·s | "
              f"time to SE={doc.get('target_se')} (s) | diverged chains | flags |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, m in (doc.get("samplers") or {}).items():
        llc = "—" if m.get("llc_mean") is None else f"{m['llc_mean']:.3f} ± {_fmt(m.get('llc_se'), '.3f')}"
        lines.append(f"| {name} | {llc} | {_fmt(m.get('ess_bulk'), '.0f')} | {_fmt(m.get('ess_tail'), '.0f')} | "
                     f"{_fmt(m.get('rhat'), '.3f')} | {_fmt(m.get('acceptance_mean'), '.3f')} | "
                     f"{_fmt(m.get('ess_per_sec'), '.3g')} | {_fmt(m.get('ess_per_fde'), '.3g')} | "
                     f"{_fmt(m.get('wnv_time'), '.3g')} | {_fmt(m.get('time_to_se1'), '.3g')} | "
                     f"{m.get('diverged_chains', 0)} | {table_cells(m.get('flags'))[0]} |")
    notes = table_notes(doc.get("samplers") or {})
    if notes:
        lines += ["", "Flags:", *[f"- {note}" for note in notes]]
    figures = figure_files(out_dir)
    if figures:
        from llc.posthoc.plots import COMBINED_FILE

        lines.append("")
        if COMBINED_FILE in figures:
            lines += [f"![Running LLC, all samplers]({COMBINED_FILE})", ""]
        links = ", ".join(f"[{n[:-4]}]({n})" for n in figures)
        lines.append(f"Figures: {links} (all in [{GALLERY_FILE}]({GALLERY_FILE})).")
    return "\n".join(lines) + "\n"


def write_snippet(out_dir: Path, doc: dict[str, Any]) -> Path:
    path = Path(out_dir) / SNIPPET_FILE
    write_text_atomic(path, _snippet(doc, Path(out_dir)))
    return path


def write_manifest_txt(run_dir: Path, manifest: dict[str, Any], config: dict[str, Any], doc: dict[str, Any]) -> Path:
    """Human-readable record of a run: where/when/what versions, its runtime statistics, its config."""
    lines = [f"llc run {manifest.get('run_id')}", "=" * 40]
    for key in ("created", "host", "jax_backend", "code_fingerprint", "target_id"):
        if key in manifest:
            lines.append(f"{key:<18} {manifest[key]}")
    if "total_seconds" in manifest:
        lines.append(f"{'total_seconds':<18} {manifest['total_seconds']:.2f}")
    versions = manifest.get("versions") or {}
    if versions:
        lines.append(f"{'versions':<18} " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    lines += ["", "Runtime statistics", "-" * 40]
    for name, m in (doc.get("samplers") or {}).items():
        parts = [f"wall {_fmt(m.get('wall_s'), '.3f')} s", f"compile {_fmt(m.get('compile_s'), '.3f')} s",
                 f"warm-up {_fmt(m.get('warmup_s'), '.3f')} s", f"grad evals {_fmt(m.get('n_grad_evals'), '.6g')}",
                 f"FDE {_fmt(m.get('fde'), '.6g')}"]
        est = [f"λ̂ {_fmt(m.get('llc_mean'), '.4f')} ± {_fmt(m.get('llc_se'), '.4f')}",
               f"ESS {_fmt(m.get('ess_bulk'), '.0f')}", f"R̂ {_fmt(m.get('rhat'), '.3f')}",
               f"diverged chains {m.get('diverged_chains', 0)}"]
        if m.get("acceptance_mean") is not None:
            est.append(f"acceptance {m['acceptance_mean']:.3f}")
        lines.append(f"{name:<15} " + ", ".join(parts))
        lines.append(f"{'':<15} " + ", ".join(est))
        lines += [f"{'':<15} FLAG {flag}" for flag in m.get("flags") or []]
        info = m.get("info") or {}
        if info:
            shown = {k: v for k, v in info.items() if not isinstance(v, (list, dict))}
            lines.append(f"{'':<15} tuned/info: " + ", ".join(f"{k}={v}" for k, v in shown.items()))
    lines += ["", "Configuration", "-" * 40]
    lines += [f"{k} = {_fmt_value(v)}" for k, v in _flatten(config)]
    path = Path(run_dir) / MANIFEST_TXT
    path.write_text("\n".join(lines) + "\n")
    return path


def write_run_records(run_dir: Path, manifest: dict[str, Any], config: dict[str, Any],
                      doc: dict[str, Any]) -> list[Path]:
    """manifest.txt, README_snippet.md and gallery.md of a run directory (after its figures)."""
    return [write_manifest_txt(run_dir, manifest, config, doc), write_snippet(run_dir, doc),
            write_gallery(run_dir, f"Figures of run {manifest.get('run_id')}")]


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
    ref = "hmc" if "hmc" in present else (present[0] if present else None)
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
