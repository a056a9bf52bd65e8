"""A run directory's text records: ``metrics.json``'s document, ``manifest.txt``,
``README_snippet.md``, ``gallery.md``, and the names and titles of its figure files.

The run path writes them when it saves a run (no figure exists yet); the post-hoc layer rewrites
the gallery and snippet once figures are drawn, and ``llc analyze`` writes the same from the files.
No JAX, no matplotlib and, at import, no ArviZ: ``llc run`` writes them without the post-hoc layer.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from llc import registry
from llc.store import cache

METRICS_FILE = "metrics.json"
GALLERY_FILE = "gallery.md"
SNIPPET_FILE = "README_snippet.md"
MANIFEST_TXT = "manifest.txt"
DEFAULT_TARGET_SE = 1.0
FIGURE_RECORD = "figures.json"  # which plot keys a run's figures were drawn for (llc.posthoc.figures)
COMBINED_FILE = "llc_running_combined.png"
# Per-sampler figure files ``<sampler>_<suffix>.png``, in gallery order, with their titles.
FIGURE_TITLES = {
    "llc_running": "running LLC estimate", "L_trace": "trace of L_n", "L_acf": "autocorrelation of L_n",
    "L_ess": "ESS evolution", "L_ess_quantile": "ESS of quantiles", "L_rhat": "R-hat evolution",
    "llc_rank": "rank plot of λ̂ draws", "theta_trace": "θ-projection traces", "theta_rank": "θ-projection ranks",
    "Ln_centered": "centered loss L_n − L₀", "acceptance": "acceptance rate", "energy": "energy diagnostic",
    "energy_hist": "energy-change histogram", "opt_trace": "optimisation trace",
}


def metrics_document(idatas: dict[str, Any], metrics: dict[str, dict[str, Any]],
                     target_se: float = DEFAULT_TARGET_SE) -> dict[str, Any]:
    """The content of ``metrics.json``: per-sampler metrics plus the run constants (from the files' attributes)."""
    from llc.store.artifacts import nc_attrs  # ArviZ: only where the InferenceData already exist

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


def flag_code(flag: str) -> str:
    """The code word of a flag (``"drift: ..."`` -> ``"drift"``; llc.analysis.flags makes the flags)."""
    return flag.split(":", 1)[0]


def table_cells(flags: list[str] | None) -> tuple[str, str | None]:
    """(flags cell, row style) for a result table: the codes in red, or "ok" for a clean row."""
    if not flags:
        return "ok", None
    return "⚠ " + ", ".join(dict.fromkeys(flag_code(f) for f in flags)), "red"


def table_notes(samplers: dict[str, dict[str, Any]]) -> list[str]:
    """One line per flag, "sampler: flag", for under a table."""
    return [f"{name}: {flag}" for name, m in samplers.items() for flag in (m.get("flags") or [])]


def fmt(value: Any, spec: str) -> str:
    """``format(value, spec)``, "—" for None, str() where the spec does not apply."""
    if value is None:
        return "—"
    try:
        return format(value, spec)
    except (TypeError, ValueError):
        return str(value)


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


def figure_info(name: str, samplers: tuple[str, ...] = registry.SAMPLER_NAMES) -> tuple[int, int, str]:
    """(sampler rank, figure rank, title) of a figure file name, for ordering and captions."""
    stem = name[:-4] if name.endswith(".png") else name
    if stem == COMBINED_FILE[:-4]:
        return (len(samplers) + 1, 0, "Running LLC estimate, all samplers")
    suffixes = tuple(FIGURE_TITLES)
    for i, sampler in sorted(enumerate(samplers), key=lambda t: -len(t[1])):
        if stem.startswith(sampler + "_"):
            suffix = stem[len(sampler) + 1:]
            rank = suffixes.index(suffix) if suffix in suffixes else len(suffixes)
            return (i, rank, f"{registry.label(sampler)}: {FIGURE_TITLES.get(suffix, suffix.replace('_', ' '))}")
    return (len(samplers), 0, stem)


_PNG_START = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the empty IEND chunk every PNG ends with


def png_intact(path: Path) -> bool:
    """Whether a PNG is there whole: its signature first and its end chunk last (a truncated or
    zeroed file has neither)."""
    try:
        with open(path, "rb") as fh:
            if fh.read(8) != _PNG_START:
                return False
            fh.seek(0, os.SEEK_END)
            if fh.tell() < 8 + len(_PNG_END):
                return False
            fh.seek(-len(_PNG_END), os.SEEK_END)
            return fh.read() == _PNG_END
    except OSError:
        return False


def figure_files(out_dir: Path) -> list[str]:
    """PNG figures in a directory (whole ones), grouped by sampler (in sampler order), then the
    cross-sampler ones."""
    names = [p.name for p in Path(out_dir).glob("*.png") if png_intact(p)]
    return sorted(names, key=lambda n: (*figure_info(n)[:2], n))


def write_gallery(out_dir: Path, title: str) -> Path:
    """``gallery.md``: every figure in the directory, as inline images under one heading per sampler."""
    out_dir = Path(out_dir)
    lines = [f"# {title}", ""]
    figures = figure_files(out_dir)
    if not figures:
        lines.append("No figures yet: they are drawn after the run is saved, unless it was made with "
                     "`--figures none`; `llc analyze` draws them on demand.")
    for name in figures:
        lines += [f"## {figure_info(name)[2]}", "", f"![{name}]({name})", ""]
    path = out_dir / GALLERY_FILE
    write_text_atomic(path, "\n".join(lines).rstrip() + "\n")
    return path


def _snippet(doc: dict[str, Any], out_dir: Path) -> str:
    t, p = doc.get("target") or {}, doc.get("posterior") or {}
    lines = [f"### LLC run `{doc.get('run_id')}`", ""]
    if t.get("id"):
        lines.append(f"Target `{t['id']}` ({t.get('kind')}, d = {t.get('d')}, n = {t.get('n')}); "
                     f"nβ = {fmt(p.get('nbeta'), '.4g')}, γ = {fmt(p.get('gamma'), '.4g')}, "
                     f"L₀ = {fmt(t.get('L0'), '.6g')}.")
    if (doc.get("analytic") or {}).get("value") is not None:
        lines.append(f"Analytic λ = {doc['analytic']['value']:.4f} ({doc['analytic'].get('formula')}).")
    lines += ["", "| sampler | λ̂ ± SE | ESS bulk | ESS tail | R̂ | accept | ESS/s | ESS/FDE | WNV·s | "
              f"time to SE={doc.get('target_se')} (s) | diverged chains | flags |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, m in (doc.get("samplers") or {}).items():
        llc = "—" if m.get("llc_mean") is None else f"{m['llc_mean']:.3f} ± {fmt(m.get('llc_se'), '.3f')}"
        lines.append(f"| {name} | {llc} | {fmt(m.get('ess_bulk'), '.0f')} | {fmt(m.get('ess_tail'), '.0f')} | "
                     f"{fmt(m.get('rhat'), '.3f')} | {fmt(m.get('acceptance_mean'), '.3f')} | "
                     f"{fmt(m.get('ess_per_sec'), '.3g')} | {fmt(m.get('ess_per_fde'), '.3g')} | "
                     f"{fmt(m.get('wnv_time'), '.3g')} | {fmt(m.get('time_to_se1'), '.3g')} | "
                     f"{m.get('diverged_chains', 0)} | {table_cells(m.get('flags'))[0]} |")
    notes = table_notes(doc.get("samplers") or {})
    if notes:
        lines += ["", "Flags:", *[f"- {note}" for note in notes]]
    figures = figure_files(out_dir)
    if figures:
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
    for key in ("created", "host", "jax_backend", "devices", "data_shards", "code_fingerprint", "target_id"):
        if key in manifest:
            lines.append(f"{key:<18} {manifest[key]}")
    if "total_seconds" in manifest:
        lines.append(f"{'total_seconds':<18} {manifest['total_seconds']:.2f}")
    versions = manifest.get("versions") or {}
    if versions:
        lines.append(f"{'versions':<18} " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    lines += ["", "Runtime statistics", "-" * 40]
    for name, m in (doc.get("samplers") or {}).items():
        parts = [f"wall {fmt(m.get('wall_s'), '.3f')} s", f"compile {fmt(m.get('compile_s'), '.3f')} s",
                 f"warm-up {fmt(m.get('warmup_s'), '.3f')} s", f"grad evals {fmt(m.get('n_grad_evals'), '.6g')}",
                 f"FDE {fmt(m.get('fde'), '.6g')}"]
        est = [f"λ̂ {fmt(m.get('llc_mean'), '.4f')} ± {fmt(m.get('llc_se'), '.4f')}",
               f"ESS {fmt(m.get('ess_bulk'), '.0f')}", f"R̂ {fmt(m.get('rhat'), '.3f')}",
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
    """manifest.txt, README_snippet.md and gallery.md of a run directory (rewritten by the figure step)."""
    return [write_manifest_txt(run_dir, manifest, config, doc), write_snippet(run_dir, doc),
            write_gallery(run_dir, f"Figures of run {manifest.get('run_id')}")]
