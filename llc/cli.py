"""The ``llc`` command: parses flags, calls the library, prints. No logic lives here."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from typer.core import TyperCommand, TyperGroup, TyperOption

from llc import registry
from llc.config import ConfigError, preset_names, sampler_class


def _flags_as_flags(params) -> None:
    # Typer prints the type of every option, so on/off flags showed "<bool>" as if they took a value.
    for param in params:
        if isinstance(param, TyperOption) and param.is_flag:
            param.metavar = ""


class _Command(TyperCommand):
    def get_params(self, ctx):
        params = super().get_params(ctx)
        _flags_as_flags(params)
        return params

    def invoke(self, ctx):
        from llc.store import writes

        try:
            with writes.quiet_hdf5_repeats():  # a failed NetCDF write is said once, below
                return super().invoke(ctx)
        except KeyboardInterrupt as exc:  # (Typer would exit 130 without a word)
            _interrupted(exc)
        except OSError as exc:  # a full disk, a read-only file system: one line, not a traceback
            artifacts = ctx.params.get("artifacts")
            if (message := writes.write_failure(exc, default=artifacts and Path(artifacts))) is None:
                raise
            # An HDF5 file whose close failed is flushed again by HDF5's exit handler: a segfault.
            _EXIT_AT_ONCE.add(1)
            fail(message, code=1)


# Exit codes for which main() skips the interpreter's exit handlers (see there).
_EXIT_AT_ONCE = {130}


# The innermost llc module on the stack Ctrl-C interrupted -> what was interrupted. The CLI, the
# progress lines and the pipeline's orchestration are skipped: a Ctrl-C mostly lands in a progress
# callback, called from the engine's sampling or training loop. (module prefix, functions or None.)
_PHASES = (
    ("llc.posthoc.figures", None, "drawing figures"),
    ("llc.posthoc.report", None, "writing the report page"),
    ("llc.posthoc", None, "analysing"),
    ("llc.store.cache", {"verify", "verify_sealed_file", "usable", "run_dir_problem", "key_lock", "_hold"},
     "checking the cache"),
    ("llc.store", None, "writing results"),
    ("llc.analysis", None, "computing diagnostics"),
    ("llc.engine.targets", None, "building or training the target"),
    ("llc.engine", None, "sampling"),
    ("llc.pipeline.sampling", None, "sampling"),
)


def _interrupted_phase(exc: BaseException) -> str | None:
    import traceback

    frames = [(f.f_globals.get("__name__", ""), f.f_code.co_name) for f, _ in traceback.walk_tb(exc.__traceback__)]
    for module, function in reversed(frames):
        for prefix, functions, phase in _PHASES:
            if (module == prefix or module.startswith(prefix + ".")) and (functions is None or function in functions):
                return phase
    return None


def _interrupted(exc: KeyboardInterrupt) -> None:
    """Ctrl-C: one line saying what stopped (what was being written is already removed: every
    artifact is written to a temporary name and renamed), then exit 130."""
    phase = _interrupted_phase(exc)
    if phase == "drawing figures":
        err.print("[yellow]interrupted[/] while drawing figures: the run itself is saved; the figures not drawn "
                  "yet are drawn when asked again (the same command, or llc analyze)", highlight=False, soft_wrap=True)
    else:
        err.print(f"[yellow]interrupted[/]{f' while {phase}' if phase else ''}: nothing half-written is kept; "
                  "run the same command again to start over (finished parts are reused)", highlight=False,
                  soft_wrap=True)
    raise typer.Exit(130)


class _Group(TyperGroup):
    command_class = _Command

    def get_params(self, ctx):
        params = super().get_params(ctx)
        _flags_as_flags(params)
        return params


app = typer.Typer(cls=_Group, add_completion=False, no_args_is_help=True,
                  help="Estimate Local Learning Coefficients (LLC) with SGLD, HMC, MCLMC and VI.")
err = Console(stderr=True)


def _command(*args, **kwargs):
    """``app.command`` with on/off flags shown without a type in --help."""
    return app.command(*args, cls=_Command, **kwargs)


@app.callback()
def _root() -> None:
    """Estimate Local Learning Coefficients (LLC) with SGLD, HMC, MCLMC and VI."""


def _log(msg: str) -> None:
    """A timestamped progress line on stderr (no source path, unlike Console.log)."""
    from llc.pipeline.progress import clock

    err.print(f"{clock()} {msg}", highlight=False, soft_wrap=True)


def fail(message: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _override_flags(**flags) -> list[str]:
    """Named flags -> ``dotted.field=value`` overrides (applied before ``--set``)."""
    out: list[str] = []
    mapping = {
        "target": ["target.kind"], "quad_dim": ["target.quadratic.dim"], "seed": ["seed", "target.seed"],
        "n_data": ["data.n_data"], "dln_widths": ["target.dln.widths"], "dln_rank": ["target.dln.rank"],
        "restrict": ["posterior.restrict"], "samplers": ["samplers"], "sgld_precond": ["sgld.precond"], "sgld_beta1": ["sgld.beta1"],
        "sgld_beta2": ["sgld.beta2"], "sgld_eps": ["sgld.eps"], "sgld_bias_correction": ["sgld.bias_correction"],
        "chains": [f"{s}.{f}" for s in registry.SAMPLER_NAMES if (f := sampler_class(s).CHAINS_FIELD)],
        "draws": [f"{s}.{f}" for s in registry.SAMPLER_NAMES if (f := sampler_class(s).DRAWS_FIELD)],
    }
    for name, value in flags.items():
        if value is None or value == []:
            continue
        if isinstance(value, list):
            value = ",".join(value)
        for dotted in mapping[name]:
            out.append(f"{dotted}={value}")
    return out


def _config(preset: str | None, overrides: list[str]):
    """``build_config``, after checking that a preset inside a sealed artifact (a calibration's
    recommended.toml) is the file llc wrote: a damaged one would run silently with other values."""
    from llc.config import build_config
    from llc.store.cache import verify_sealed_file

    if preset and Path(preset).suffix and (reason := verify_sealed_file(Path(preset))):
        raise ConfigError(f"preset: {preset}: {reason} (damaged or edited); rerun llc calibrate, or copy the "
                          "file elsewhere to edit it")
    return build_config(preset, overrides)


PresetOpt = Annotated[Optional[str], typer.Option(
    help=f"Preset name in llc/presets/ ({', '.join(preset_names())}) or a .toml path.")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="Override any field: dotted.field=value (repeatable).")]
RestrictOpt = Annotated[Optional[list[str]], typer.Option(
    "--restrict", help="posterior.restrict: move only these parameters (repeatable; the union): globs over parameter "
                       "paths (attn/*), index selections (attn/query/kernel[:,1]), heads (attn@head0); or a family, "
                       "one restricted estimate per group: per-layer, per-head.")]
# Execution backends (llc/backends): shared by `run` and `sweep`.
BackendOpt = Annotated[str, typer.Option(help="Where runs execute: local, joblib, submitit (SLURM), modal.")]
WorkersOpt = Annotated[Optional[int], typer.Option(help="Local worker processes (joblib; --backend=local with N>1 uses a pool too).")]
PartitionOpt = Annotated[Optional[str], typer.Option(help="SLURM partition (submitit).")]
GpusOpt = Annotated[int, typer.Option(help="GPUs per SLURM job (submitit).")]
CpusOpt = Annotated[int, typer.Option(help="CPUs per SLURM job (submitit).")]
TimeoutMinOpt = Annotated[int, typer.Option(help="SLURM time limit per job, minutes (submitit).")]
MemGbOpt = Annotated[Optional[float], typer.Option(help="Memory per SLURM job, GB (submitit).")]
AccountOpt = Annotated[Optional[str], typer.Option("--slurm-account", help="SLURM account to charge (submitit).")]
ArrayParOpt = Annotated[Optional[int], typer.Option(help="Most SLURM array tasks running at once (submitit).")]
NoArtifactsOpt = Annotated[bool, typer.Option("--no-artifacts", help="Modal: leave artifacts on the volume, do not download them.")]
FiguresOpt = Annotated[Optional[str], typer.Option(
    help="Per-run PNG figures, drawn after each run is saved: none, summary (running λ̂, L_n trace, combined) "
         "or all. Default: all for `run`, summary for `sweep`.")]
ReportOpt = Annotated[bool, typer.Option("--report", help="Write the HTML report page at the end (llc report).")]
DevicesOpt = Annotated[Optional[str], typer.Option(
    metavar="N", help="Local devices the batched programs (settings x chains) are spread over (LLC_DEVICES); default: all.")]
DataShardsOpt = Annotated[Optional[str], typer.Option(
    metavar="K", help="Of those devices, how many split the data's rows, the full-batch loss and gradient reduced across "
         "them (LLC_DATA_SHARDS; default 1): for a model whose activations do not fit one device.")]


def _use_devices(cfg, devices: str | None, data_shards: str | None, backend: str = "local") -> None:
    """``llc.engine.devices.use`` with the target's n (``cfg`` None: each run checks its own before
    its work); ConfigError when it cannot apply."""
    from llc.config import target_n
    from llc.engine import devices as spread

    if backend not in ("local", "joblib") and (devices or data_shards):
        raise ConfigError(f"--devices: counts the devices of this host (--backend local or joblib); on {backend}, "
                          f"set {spread.DEVICES_ENV} / {spread.DATA_ENV} in the job's environment")
    spread.use(devices, data_shards, None if cfg is None else target_n(cfg))


def _figure_pool(cfg) -> contextlib.AbstractContextManager:
    """Background processes that draw a run's figures once it is saved (the result prints first);
    with figures off, nothing: the post-hoc layer (matplotlib) is then not imported at all."""
    from llc.config import figure_mode

    if figure_mode(cfg.figures, save_plots=cfg.save_plots) == "none":
        return contextlib.nullcontext()
    from llc.posthoc import figures as figure_step

    return figure_step.background(log=lambda msg: err.print(msg, highlight=False))


def _figures_override(figures: str | None, no_save_plots: bool) -> list[str]:
    """``--figures`` / ``--no-save-plots`` -> config overrides (checked before any work)."""
    from llc.config import FIGURE_MODES

    if figures is None:
        return ["save_plots=false"] if no_save_plots else []
    modes = [m for m in FIGURE_MODES if m != "auto"]
    if figures not in modes:
        fail(f"--figures: {figures!r} is not allowed; choose one of {', '.join(modes)}")
    if no_save_plots and figures != "none":
        fail(f"--no-save-plots contradicts --figures {figures}; use --figures none")
    return [f"figures={figures}", f"save_plots={'false' if figures == 'none' else 'true'}"]  # the flag wins over a preset


def _write_report(path: Path, console: Console) -> None:
    from llc.posthoc.report import ReportError, write_report

    try:
        out, _ = write_report(path)
    except ReportError as exc:
        console.print(f"[yellow]report not written[/]: {exc}", highlight=False)
        return
    console.print(f"report: {out} ({out.stat().st_size / 1e6:.1f} MB)", highlight=False)


def _check_root(artifacts: Path) -> None:
    from llc.store.cache import check_root

    check_root(artifacts, create=False)  # nothing created yet: the backend may still refuse


def _check_root_of_file(path: Path) -> None:
    from llc.store.cache import check_root

    if path.is_dir():
        raise ConfigError(f"--out: {path} is a directory; give a CSV file name")
    check_root(path.parent if str(path.parent) else Path("."), flag="--out", create=False)


def _report_or_hint(path: Path, write_html: bool) -> None:
    """``--report``: write the page of ``path`` now; otherwise print the command that would (stderr)."""
    if write_html:
        _write_report(path, err)
    else:
        err.print(f"report page: llc report {path}", highlight=False)


def _make_backend(name: str, **flags):
    from llc.pipeline.backends import BackendUnavailable, make_backend

    try:
        return make_backend(name, **flags)
    except BackendUnavailable as exc:
        fail(str(exc))


def _run_errors() -> tuple[type[Exception], ...]:
    """The errors ``llc run`` reports in one line (exit code 1). The engine's are taken only where
    the engine is loaded: a run answered from the cache never imports it (nor JAX), so it cannot
    have raised them."""
    from llc.pipeline.experiment import TargetError
    from llc.store.jsonfiles import ArtifactError

    errors: tuple[type[Exception], ...] = (TargetError, ArtifactError, NotImplementedError)
    if "llc.engine.targets" in sys.modules:
        from llc.engine.targets import PrecisionError, TrainingDiverged

        errors += (PrecisionError, TrainingDiverged)
    return errors


@_command()
def run(
    preset: PresetOpt = None,
    target: Annotated[Optional[str], typer.Option(help=f"Target kind: {', '.join(registry.TARGET_NAMES)}.")] = None,
    quad_dim: Annotated[Optional[int], typer.Option(help="target.quadratic.dim: dimension of the quadratic target.")] = None,
    dln_widths: Annotated[Optional[str], typer.Option(help="target.dln.widths: input,hidden...,output, e.g. 6,5,4,6.")] = None,
    dln_rank: Annotated[Optional[int], typer.Option(help="target.dln.rank: rank of the DLN teacher.")] = None,
    n_data: Annotated[Optional[int], typer.Option(help="Number of data points n.")] = None,
    samplers: Annotated[Optional[str], typer.Option(help=f"Comma-separated: {','.join(registry.SAMPLER_NAMES)}.")] = None,
    chains: Annotated[Optional[int], typer.Option(help="Chains for every sampler.")] = None,
    draws: Annotated[Optional[int], typer.Option(help="Kept draws for every MCMC sampler.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of the run and of its target.")] = None,
    sgld_precond: Annotated[Optional[str], typer.Option(help="SGLD preconditioner: none, rmsprop, adam.")] = None,
    sgld_beta1: Annotated[Optional[float], typer.Option(help="Adam first-moment decay.")] = None,
    sgld_beta2: Annotated[Optional[float], typer.Option(help="RMSProp/Adam second-moment decay.")] = None,
    sgld_eps: Annotated[Optional[float], typer.Option(help="Preconditioner stabiliser.")] = None,
    sgld_bias_correction: Annotated[Optional[bool], typer.Option(
        "--sgld-bias-correction/--no-sgld-bias-correction", help="Adam bias correction.")] = None,
    restrict: RestrictOpt = None,
    set_: SetOpt = None,
    devices: DevicesOpt = None,
    data_shards: DataShardsOpt = None,
    no_skip: Annotated[bool, typer.Option("--no-skip", help="Recompute even if a cached run exists.")] = False,
    no_save_plots: Annotated[bool, typer.Option("--no-save-plots", help="Skip figures (= --figures none).")] = False,
    figures: FiguresOpt = None,
    write_html: ReportOpt = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")] = False,
    artifacts: Annotated[Path, typer.Option(help="Artifacts root directory.", envvar="LLC_ARTIFACTS")] = Path("artifacts"),
    backend: BackendOpt = "local",
    workers: WorkersOpt = None,
    partition: PartitionOpt = None,
    gpus: GpusOpt = 0,
    cpus: CpusOpt = 1,
    timeout_min: TimeoutMinOpt = 60,
    mem_gb: MemGbOpt = None,
    slurm_account: AccountOpt = None,
    no_artifacts: NoArtifactsOpt = False,
) -> None:
    """Estimate the LLC of one target with the configured samplers."""
    from llc import console as report

    overrides = _override_flags(
        target=target, quad_dim=quad_dim, dln_widths=dln_widths, dln_rank=dln_rank, n_data=n_data,
        samplers=samplers, chains=chains, draws=draws, seed=seed, sgld_precond=sgld_precond,
        sgld_beta1=sgld_beta1, sgld_beta2=sgld_beta2, sgld_eps=sgld_eps,
        sgld_bias_correction=sgld_bias_correction, restrict=restrict)
    overrides += _figures_override(figures, no_save_plots)
    try:
        cfg = _config(preset, [*overrides, *(set_ or [])])
        _check_root(artifacts)
        _use_devices(cfg, devices, data_shards, backend)
    except ConfigError as exc:
        fail(str(exc))
    from llc.pipeline.experiment import expand_restriction

    try:
        family = expand_restriction(cfg)
    except ConfigError as exc:
        fail(str(exc))
    if len(family) > 1:  # --restrict per-layer / per-head: one run per group, batched as one program
        if backend != "local":
            fail(f"--restrict {cfg.posterior.restrict[0]}: a family runs on the local backend; on {backend}, "
                 f"sweep its groups (llc sweep --restrict {cfg.posterior.restrict[0]})")
        try:
            results = report.run_family_with_progress(family, artifacts, skip=not no_skip, console=err)
        except Exception as exc:
            if not isinstance(exc, _run_errors()):
                raise
            fail(str(exc), code=1)
        if json_out:
            from llc.store.jsonfiles import dumps

            sys.stdout.write(dumps({"groups": results}, indent=None) + "\n")
        else:
            report.print_family(results, Console())
        return
    if backend == "local" and (workers or 1) == 1:
        with _figure_pool(cfg) as drawing:
            try:
                result = report.run_with_progress(cfg, artifacts, skip=not no_skip, console=err)
            except ConfigError as exc:
                fail(str(exc))
            except Exception as exc:
                if not isinstance(exc, _run_errors()):
                    raise
                fail(str(exc), code=1)
            _print_run(result, json_out)
            if drawing is not None and drawing.pending:
                err.print(f"drawing {drawing.pending} figure task(s) in {drawing.workers} background process(es)…",
                          highlight=False)
        drawn = sum(len(r.written) for r in drawing.reports) if drawing is not None else 0
        if drawn:
            err.print(f"figures: {drawn} PNG(s) in {result['artifacts']}", highlight=False)
    else:
        from llc.pipeline.sweep import run_single

        runner = _make_backend(backend, workers=workers, partition=partition, gpus=gpus, cpus=cpus,
                               timeout_min=timeout_min, mem_gb=mem_gb, account=slurm_account,
                               download=not no_artifacts)
        with err.status(f"running {cfg.samplers} on {runner.describe()}"):
            outcome = run_single(cfg, runner, artifacts, skip=not no_skip)
        if outcome.result is None:
            fail(f"run {outcome.run_id} failed on {runner.name}: {outcome.error}", code=1)
        result = outcome.result
        _print_run(result, json_out)
    _report_or_hint(Path(result["artifacts"]), write_html)


def _print_run(result: dict, json_out: bool) -> None:
    from llc import console as report

    if json_out:
        from llc.store.jsonfiles import dumps

        sys.stdout.write(dumps(result, indent=None) + "\n")
        sys.stdout.flush()
    else:
        report.print_result(result, Console())


@_command()
def calibrate(
    preset: PresetOpt = None,
    target: Annotated[Optional[str], typer.Option(help=f"Target kind: {', '.join(registry.TARGET_NAMES)}.")] = None,
    quad_dim: Annotated[Optional[int], typer.Option(help="target.quadratic.dim: dimension of the quadratic target.")] = None,
    dln_widths: Annotated[Optional[str], typer.Option(help="target.dln.widths: input,hidden...,output, e.g. 6,5,4,6.")] = None,
    dln_rank: Annotated[Optional[int], typer.Option(help="target.dln.rank: rank of the DLN teacher.")] = None,
    n_data: Annotated[Optional[int], typer.Option(help="Number of data points n.")] = None,
    sampler: Annotated[str, typer.Option(help="Sampler to calibrate (SGLD by default; minibatch samplers and "
                                              "full-batch ones).")] = "sgld",
    grid: Annotated[Optional[list[str]], typer.Option(
        "--grid", help="An axis of the grid: dotted.field=v1,v2,... (repeatable). Default: the sampler's step "
                       "size x 0.1,0.3,1,3,10 and posterior.gamma x 0.5,1,2.")] = None,
    reference: Annotated[str, typer.Option(help="Reference line: none (the analytic value where the target has one) "
                                                "or hmc (an HMC run of the base config).")] = "none",
    chains: Annotated[Optional[int], typer.Option(help="Chains per grid point.")] = None,
    draws: Annotated[Optional[int], typer.Option(help="Kept draws per chain.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of the runs and of the target.")] = None,
    restrict: RestrictOpt = None,
    set_: SetOpt = None,
    devices: DevicesOpt = None,
    data_shards: DataShardsOpt = None,
    no_skip: Annotated[bool, typer.Option("--no-skip", help="Recompute even if this calibration is cached.")] = False,
    write_html: ReportOpt = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the summary as one JSON object on stdout.")] = False,
    artifacts: Annotated[Path, typer.Option(help="Artifacts root directory.", envvar="LLC_ARTIFACTS")] = Path("artifacts"),
) -> None:
    """Run a grid of sampler settings on one target as one batched program and recommend one."""
    from llc import console as report
    from llc.pipeline import calibrate as cal

    references = ("none", *registry.reference_names())
    if reference not in references:
        fail(f"--reference: {reference!r} is not allowed; choose one of {', '.join(references)}")
    overrides = _override_flags(target=target, quad_dim=quad_dim, dln_widths=dln_widths, dln_rank=dln_rank,
                                n_data=n_data, chains=chains, draws=draws, seed=seed, restrict=restrict)
    try:
        plan = cal.plan(_config(preset, [*overrides, *(set_ or [])]), sampler, grid)
        from llc.pipeline.experiment import check_restriction

        check_restriction(plan.base, family_ok=False, what="llc calibrate")
        _check_root(artifacts)
        _use_devices(plan.base, devices, data_shards)
    except ConfigError as exc:
        fail(str(exc))
    with err.status(f"calibrating {sampler}: {len(plan.points)} points"):
        summary = cal.calibrate(plan, artifacts, reference=reference, skip=not no_skip,
                                log=_log)
    if json_out:
        from llc.store.jsonfiles import dumps

        sys.stdout.write(dumps(summary, indent=None) + "\n")
    else:
        report.print_calibration(summary, Console())
    _report_or_hint(Path(summary["artifacts"]), write_html)


@_command()
def trajectory(
    preset: PresetOpt = None,
    sampler: Annotated[Optional[str], typer.Option(help="Sampler (default: the config's first, SGLD in grok presets); "
                                                        "any except vi.")] = None,
    chains: Annotated[Optional[int], typer.Option(help="Chains per checkpoint.")] = None,
    draws: Annotated[Optional[int], typer.Option(help="Kept draws per chain.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of the runs and of the target.")] = None,
    restrict: RestrictOpt = None,
    set_: SetOpt = None,
    devices: DevicesOpt = None,
    data_shards: DataShardsOpt = None,
    max_batch: Annotated[int, typer.Option(help="Checkpoints (x restricted groups) per batched program (memory).",
                                           min=1)] = 16,
    axis: Annotated[Optional[list[str]], typer.Option(
        help="Vary a training or target setting: dotted.field=v1,v2 (repeatable), e.g. training.weight_decay=0.3,1; "
             "one trajectory per combination, overlaid.")] = None,
    extend: Annotated[int, typer.Option(
        help="Train the finished target STEPS more steps (from its final parameters and optimizer state; a new "
             "target that records its parent) and take the trajectory of that.", min=0)] = 0,
    write_html: ReportOpt = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the summary as one JSON object on stdout.")] = False,
    artifacts: Annotated[Path, typer.Option(help="Artifacts root directory.", envvar="LLC_ARTIFACTS")] = Path("artifacts"),
) -> None:
    """Lambda-hat (and curvature) at every training checkpoint of a target trained with checkpoints."""
    from llc import console as report
    from llc.config import build_config
    from llc.pipeline.calibrate import parse_grid
    from llc.pipeline.experiment import check_restriction
    from llc.pipeline.trajectory import check_checkpoints, run_trajectory, run_trajectory_sweep

    overrides = _override_flags(chains=chains, draws=draws, seed=seed, restrict=restrict)
    try:
        cfg = _config(preset, [*overrides, *(set_ or [])])
        check_restriction(cfg)
        axes = parse_grid(axis or [], "--axis")
        check_checkpoints(cfg)
        for k, values in axes.items():  # every value checked before anything is trained
            for v in values:
                check_checkpoints(build_config(preset, [*overrides, *(set_ or []), f"{k}={v}"]))
        name = sampler or cfg.samplers[0]
        if name not in registry.batched_names():
            raise ConfigError(f"--sampler: {name!r} is not allowed; choose one of "
                              + ", ".join(registry.batched_names()))
        _check_root(artifacts)
        _use_devices(cfg, devices, data_shards)
    except ConfigError as exc:
        fail(str(exc))
    overlay = None
    try:
        with err.status("trajectory: training or loading the target") as status:
            kwargs = dict(sampler=name, max_batch=max_batch, log=_log, extend=extend,
                          progress=lambda done, total, phase: status.update(f"trajectory: {phase}"))
            if axes:
                overlay = run_trajectory_sweep(cfg, axes, artifacts, **kwargs)
            else:
                summary = run_trajectory(cfg, artifacts, **kwargs)
    except ValueError as exc:  # e.g. a target trained without checkpoints
        fail(str(exc), code=1)
    if overlay is not None:
        if json_out:
            from llc.store.jsonfiles import dumps

            sys.stdout.write(dumps(overlay, indent=None) + "\n")
        else:
            Console().print(f"{len(overlay['members'])} trajectories overlaid: {overlay['artifacts']}/overlay.png",
                            highlight=False)
        _report_or_hint(Path(overlay["artifacts"]), write_html)
        return
    if json_out:
        from llc.store.jsonfiles import dumps

        sys.stdout.write(dumps(summary, indent=None) + "\n")
    else:
        report.print_trajectory(summary, Console())
    _report_or_hint(Path(summary["artifacts"]), write_html)


@_command()
def analyze(
    run_dir: Annotated[Path, typer.Argument(help="Run directory holding <sampler>.nc files (artifacts/<run_id>).")],
    which: Annotated[str, typer.Option(help="Samplers to analyse, comma-separated, or 'all'.")] = "all",
    plots: Annotated[str, typer.Option(
        help="Figures, comma-separated: running_llc,trace,autocorr,ess_evolution,ess_quantile,rhat,rank,"
             "theta,centered,acceptance,energy,optimisation,combined; 'all'; or 'none'.")] = "all",
    out: Annotated[Optional[Path], typer.Option(help="Output directory (default: RUN_DIR/analysis).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing files in --out.")] = False,
    target_se: Annotated[float, typer.Option(help="SE(λ̂) that time_to_se1 / fde_to_se1 project to.")] = 1.0,
    json_out: Annotated[bool, typer.Option("--json", help="Print the metrics as one JSON object on stdout.")] = False,
) -> None:
    """Re-derive metrics and figures of a saved run from its NetCDF files (no JAX, no sampling)."""
    from llc.posthoc.analyze import analyze_run, metrics_tables
    from llc.store import cache
    from llc.store.jsonfiles import ArtifactError, dumps

    # (A damaged file of a complete run is named by the analysis itself when it reads it.)
    if problem := cache.run_dir_problem(run_dir):
        fail(problem)
    try:  # before the analysis: a read-only run directory was a traceback once it was done
        cache.check_root(out or run_dir / "analysis", flag="--out" if out else "analyze", create=False)
    except ConfigError as exc:
        fail(str(exc))

    try:
        res = analyze_run(run_dir, which=which, plots=[] if plots.strip() == "none" else plots, out=out,
                          overwrite=overwrite, target_se=target_se, log=lambda msg: err.print(msg, highlight=False))
    except (ArtifactError, ValueError) as exc:
        fail(str(exc))
    if json_out:
        sys.stdout.write(dumps(res["metrics"], indent=None) + "\n")
        return
    from llc.console import fit

    console = Console()
    for table in metrics_tables(res["metrics"]):
        console.print(fit(table, console))
    console.print(f"wrote metrics.json and {len(res['figures'])} figure(s) to {res['out']}", highlight=False)
    if res["differences"] is not None:
        if res["differences"]:
            shown = ", ".join(res["differences"][:6]) + (" ..." if len(res["differences"]) > 6 else "")
            console.print(f"[yellow]differs from saved {res['saved']}:[/] {shown}", highlight=False)
        else:
            console.print(f"identical to saved {res['saved']}", highlight=False)


@_command()
def promote(
    run: Annotated[Optional[str], typer.Option(
        help="Run id or directory (default: the latest complete run under --artifacts).")] = None,
    artifacts: Annotated[Path, typer.Option(help="Artifacts root directory.", envvar="LLC_ARTIFACTS")] = Path("artifacts"),
    out: Annotated[Path, typer.Option(help="Destination of the README figures.")] = Path("assets/readme"),
    samplers: Annotated[Optional[str], typer.Option(help="Samplers whose figures to copy, comma-separated.")] = None,
) -> None:
    """Copy a run's key figures into assets/readme/ under stable names (for the README)."""
    from llc.posthoc.analyze import promote as promote_run
    from llc.store.jsonfiles import ArtifactError

    try:
        run_dir, copies = promote_run(run, artifacts, out, samplers)
    except ArtifactError as exc:
        fail(str(exc))
    console = Console()
    console.print(f"promoted {len(copies)} figure(s) of run {run_dir.name} to {out}:", highlight=False)
    for src, dst in copies:
        console.print(f"  {src.name} -> {dst}", highlight=False)


_command("promote-readme-images", help="Alias of `llc promote`.")(promote)


@_command()
def sweep(
    space: Annotated[Optional[Path], typer.Option(
        help="Sweep space TOML (or a name: smoke -> llc/presets/sweep_smoke.toml) (default: llc/presets/sweep_default.toml).")] = None,
    preset: PresetOpt = None,
    restrict: RestrictOpt = None,
    set_: SetOpt = None,
    devices: DevicesOpt = None,
    data_shards: DataShardsOpt = None,
    axis: Annotated[Optional[list[str]], typer.Option(
        help="Replace or add an axis: dotted.field=v1,v2 (| separates list values, e.g. model.widths=16,16|64).")] = None,
    n_seeds: Annotated[Optional[int], typer.Option(help="Replicates per point (seeds seed..seed+n-1).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="First seed of the replicates.")] = None,
    samplers: Annotated[Optional[str], typer.Option(help="Comma-separated samplers evaluated in every run.")] = None,
    out: Annotated[Path, typer.Option(help="Results CSV (rewritten as runs finish).")] = Path("llc_sweep_results.csv"),
    artifacts: Annotated[Path, typer.Option(help="Artifacts root directory.", envvar="LLC_ARTIFACTS")] = Path("artifacts"),
    no_skip: Annotated[bool, typer.Option("--no-skip", help="Recompute runs even if cached.")] = False,
    no_save_plots: Annotated[bool, typer.Option("--no-save-plots", help="Skip per-run figures (= --figures none).")] = False,
    figures: FiguresOpt = None,
    write_html: ReportOpt = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List the planned runs and exit.")] = False,
    backend: BackendOpt = "local",
    workers: WorkersOpt = None,
    partition: PartitionOpt = None,
    gpus: GpusOpt = 0,
    cpus: CpusOpt = 1,
    timeout_min: TimeoutMinOpt = 60,
    mem_gb: MemGbOpt = None,
    slurm_account: AccountOpt = None,
    array_parallelism: ArrayParOpt = None,
    no_artifacts: NoArtifactsOpt = False,
    no_batch: Annotated[bool, typer.Option("--no-batch", help="One task per run, instead of batching runs that "
                                                              "differ only in runtime values into one program.")] = False,
) -> None:
    """Run a sweep (cartesian product over a sweep space) and stream results into a CSV."""
    from llc.pipeline import sweep as sw

    overrides = [*_override_flags(restrict=restrict), *(set_ or []), *_figures_override(figures, no_save_plots)]
    try:
        points = sw.plan_sweep(sw.load_space(space), preset=preset, overrides=overrides, axes=axis or [],
                               n_seeds=n_seeds, seed=seed, samplers=samplers)
    except ConfigError as exc:
        fail(str(exc))
    import dataclasses

    # A sweep's default figure set is the summary (a presentation field: run ids do not change).
    points = [dataclasses.replace(p, cfg=dataclasses.replace(p.cfg, figures="summary")) if p.cfg.figures == "auto"
              else p for p in points]
    groups = ", ".join(f"{k}: {v}" for k, v in sw.sizes(points).items())
    if dry_run:
        console = Console()
        for p in points:
            console.print(f"{p.run_id}  [{p.grid}] {sw.describe_point(p)}", highlight=False)
        console.print(f"{len(points)} runs ({groups})", highlight=False)
        return
    try:
        _check_root(artifacts)
        _check_root_of_file(out)
        _use_devices(None, devices, data_shards, backend)
    except ConfigError as exc:
        fail(str(exc))
    # The backend is checked (credentials, cluster) before anything is written.
    runner = _make_backend(backend, workers=workers, partition=partition, gpus=gpus, cpus=cpus,
                           timeout_min=timeout_min, mem_gb=mem_gb, account=slurm_account,
                           array_parallelism=array_parallelism, download=not no_artifacts)
    err.print(f"sweep: {len(points)} runs ({groups}) on {runner.describe()}; results -> {out}", highlight=False)
    from llc.posthoc import figures as figure_step

    # Local runs queue their figures on background processes: the next run samples meanwhile.
    drawing = (figure_step.background(log=lambda msg: err.print(msg, highlight=False)) if runner.name == "local"
               else contextlib.nullcontext())
    try:
        with drawing as queue:
            summary = sw.run_sweep(points, runner, artifacts, out, skip=not no_skip, console=err, batch=not no_batch)
            if queue is not None and queue.pending:
                err.print(f"waiting for {queue.pending} figure task(s) of finished runs…", highlight=False)
    except KeyboardInterrupt:
        err.print(f"[yellow]interrupted[/]: finished runs are in {out} and cached under {artifacts}; "
                  "run the same command again to finish the rest", highlight=False)
        raise typer.Exit(130)
    except sw.BackendUnavailable as exc:
        fail(str(exc))
    err.print(f"sweep finished in {summary.seconds:.1f} s: {summary.done} done, {summary.cached} cached, "
              f"{summary.failed} failed -> {out}", highlight=False)
    _report_or_hint(out, write_html)
    if summary.failed:
        raise typer.Exit(1)


@_command("report")
def report_cmd(
    path: Annotated[Path, typer.Argument(help="A run directory, a sweep results CSV, a calibration or trajectory "
                                               "directory (a folder of trajectories: overlaid), or an artifacts root.")],
    out: Annotated[Optional[Path], typer.Option(
        help="HTML file to write (default: DIR/report.html, SWEEP.html beside the CSV, ROOT/index.html).")] = None,
) -> None:
    """Write one self-contained HTML page (opens offline) of a run, a sweep, a calibration, a trajectory
    (or several overlaid) or an artifacts root (no JAX)."""
    from llc.posthoc.report import ReportError, write_report
    from llc.store.cache import check_root

    try:  # before the page is built: where it goes is writable
        where = out.parent if out is not None else (path if path.is_dir() else path.parent)
        check_root(where if str(where) else Path("."), flag="--out" if out is not None else "report", create=False)
    except ConfigError as exc:
        fail(str(exc))
    try:
        page, kind = write_report(path, out)
    except ReportError as exc:
        fail(str(exc))
    Console().print(f"wrote the {kind} page {page} ({page.stat().st_size / 1e6:.1f} MB)", highlight=False)


@_command()
def clean(
    artifacts: Annotated[Path, typer.Option(help="Artifacts root directory.", envvar="LLC_ARTIFACTS")] = Path("artifacts"),
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only list what would be removed.")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Remove without asking.")] = False,
) -> None:
    """Remove what interrupted runs left behind: stale temporary directories, damaged cache entries
    moved aside, unused lock files. Lists everything first; directories still in use are kept."""
    from llc.store import cache
    from llc.store.writes import human_size

    if not artifacts.is_dir():
        fail(f"--artifacts: {artifacts} is not a directory")
    items = [item for where in cache.cache_dirs(artifacts) for item in cache.find_litter(where)]
    stale = [i for i in items if i.stale]
    console = Console()
    sizes = {i.path: i.size() for i in stale}
    for item in stale:
        console.print(f"  {item.kind:<9} {item.path}  ({human_size(sizes[item.path])}; {item.why})", highlight=False,
                      soft_wrap=True)
    for item in items:
        if not item.stale:
            console.print(f"  kept      {item.path}  ({item.why})", highlight=False, soft_wrap=True)
    if not stale:
        console.print(f"nothing to remove under {artifacts}", highlight=False)
        return
    total = f"{len(stale)} item(s), {human_size(sum(sizes.values()))}"
    if dry_run:
        console.print(f"would remove {total}; run without --dry-run to remove them", highlight=False)
        return
    if not yes:
        if not sys.stdin.isatty():
            fail(f"not removing {total} without confirmation: pass --yes (or --dry-run to only list)", code=1)
        if not typer.confirm(f"remove {total}?", default=False):
            raise typer.Exit(1)
    for item in stale:
        cache.remove_litter(item)
    console.print(f"removed {total}", highlight=False)


@_command("plot-sweep")
def plot_sweep(
    csv_path: Annotated[Path, typer.Option("--csv", help="Sweep results CSV.")] = Path("llc_sweep_results.csv"),
    out: Annotated[Optional[Path], typer.Option(help="PNG to write (default: llc_sweep_<size-col>.png).")] = None,
    filters: Annotated[Optional[str], typer.Option(help="Keep rows matching all of col=value,... e.g. activation=relu,x_dist=gauss_iso.")] = None,
    size_col: Annotated[str, typer.Option(help="Column on the x axis (n_params, n_data, depth, ...).")] = "n_params",
    samplers: Annotated[Optional[str], typer.Option(help="Samplers to show, comma-separated (default: all).")] = None,
) -> None:
    """Plot λ̂ and sampler efficiency against model size from a sweep CSV."""
    from llc.posthoc.sweep_plots import SweepPlotError, plot_sweep as draw

    try:
        path = draw(csv_path, out or Path(f"llc_sweep_{size_col}.png"), size_col=size_col, filters=filters,
                    samplers=samplers)
    except SweepPlotError as exc:
        fail(str(exc))
    Console().print(f"wrote {path}", highlight=False)


def main() -> None:
    from llc.engine import devices

    devices.spread_host_cores()  # before anything starts JAX
    try:
        app()
    except SystemExit as exc:
        if exc.code in _EXIT_AT_ONCE:
            import signal

            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C while exiting: no traceback
            # Interrupted (or a failed write), and cleaned up on the way out: skip the interpreter's
            # exit handlers, which join figure workers and executor threads (seconds, or a hang) for
            # nothing, or crash in HDF5's. Only the multiprocessing finalizers that unlink
            # semaphores run, or the resource tracker warns.
            if (mp_util := sys.modules.get("multiprocessing.util")) is not None:
                with contextlib.suppress(Exception):
                    mp_util._run_finalizers(0)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(exc.code)
        raise


if __name__ == "__main__":
    main()
