"""The ``llc`` command: parses flags, calls the library, prints. No logic lives here."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from llc.config import ConfigError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Estimate Local Learning Coefficients (LLC) with SGLD, HMC, MCLMC and VI.")
err = Console(stderr=True)


@app.callback()
def _root() -> None:
    """Estimate Local Learning Coefficients (LLC) with SGLD, HMC, MCLMC and VI."""


def fail(message: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _override_flags(**flags) -> list[str]:
    """Named flags -> ``dotted.field=value`` overrides (applied before ``--set``)."""
    out: list[str] = []
    mapping = {
        "target": ["target.kind"], "quad_dim": ["target.quad_dim"], "seed": ["seed", "target.seed"],
        "n_data": ["data.n_data"], "dln_widths": ["target.dln_widths"], "dln_rank": ["target.dln_rank"],
        "samplers": ["samplers"], "sgld_precond": ["sgld.precond"], "sgld_beta1": ["sgld.beta1"],
        "sgld_beta2": ["sgld.beta2"], "sgld_eps": ["sgld.eps"], "sgld_bias_correction": ["sgld.bias_correction"],
        "chains": [f"{s}.chains" for s in ("sgld", "hmc", "mclmc", "mclmc_adjusted", "vi")],
        "draws": [f"{s}.draws" for s in ("sgld", "hmc", "mclmc", "mclmc_adjusted")],
    }
    for name, value in flags.items():
        if value is None:
            continue
        for dotted in mapping[name]:
            out.append(f"{dotted}={value}")
    return out


PresetOpt = Annotated[Optional[str], typer.Option(help="Preset name in presets/ (quick, full) or a .toml path.")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="Override any field: dotted.field=value (repeatable).")]


@app.command()
def run(
    preset: PresetOpt = None,
    target: Annotated[Optional[str], typer.Option(help="Target kind: mlp, quadratic, dln.")] = None,
    quad_dim: Annotated[Optional[int], typer.Option(help="Dimension of the quadratic target.")] = None,
    dln_widths: Annotated[Optional[str], typer.Option(help="DLN widths input,hidden...,output, e.g. 6,5,4,6.")] = None,
    dln_rank: Annotated[Optional[int], typer.Option(help="Rank of the DLN teacher.")] = None,
    n_data: Annotated[Optional[int], typer.Option(help="Number of data points n.")] = None,
    samplers: Annotated[Optional[str], typer.Option(help="Comma-separated: sgld,hmc,mclmc,mclmc_adjusted,vi.")] = None,
    chains: Annotated[Optional[int], typer.Option(help="Chains for every sampler.")] = None,
    draws: Annotated[Optional[int], typer.Option(help="Kept draws for every MCMC sampler.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of the run and of its target.")] = None,
    sgld_precond: Annotated[Optional[str], typer.Option(help="SGLD preconditioner: none, rmsprop, adam.")] = None,
    sgld_beta1: Annotated[Optional[float], typer.Option(help="Adam first-moment decay.")] = None,
    sgld_beta2: Annotated[Optional[float], typer.Option(help="RMSProp/Adam second-moment decay.")] = None,
    sgld_eps: Annotated[Optional[float], typer.Option(help="Preconditioner stabiliser.")] = None,
    sgld_bias_correction: Annotated[Optional[bool], typer.Option(
        "--sgld-bias-correction/--no-sgld-bias-correction", help="Adam bias correction.")] = None,
    set_: SetOpt = None,
    no_skip: Annotated[bool, typer.Option("--no-skip", help="Recompute even if a cached run exists.")] = False,
    no_save_plots: Annotated[bool, typer.Option("--no-save-plots", help="Skip figures.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")] = False,
    artifacts: Annotated[Path, typer.Option(help="Artifacts root directory.", envvar="LLC_ARTIFACTS")] = Path("artifacts"),
) -> None:
    """Estimate the LLC of one target with the configured samplers."""
    from llc import report
    from llc.config import build_config

    overrides = _override_flags(
        target=target, quad_dim=quad_dim, dln_widths=dln_widths, dln_rank=dln_rank, n_data=n_data,
        samplers=samplers, chains=chains, draws=draws, seed=seed, sgld_precond=sgld_precond,
        sgld_beta1=sgld_beta1, sgld_beta2=sgld_beta2, sgld_eps=sgld_eps,
        sgld_bias_correction=sgld_bias_correction)
    if no_save_plots:
        overrides.append("save_plots=false")
    try:
        cfg = build_config(preset, [*overrides, *(set_ or [])])
    except ConfigError as exc:
        fail(str(exc))
    result = report.run_with_progress(cfg, artifacts, skip=not no_skip, console=err)
    if json_out:
        from llc.artifacts import dumps

        sys.stdout.write(dumps(result, indent=None) + "\n")
    else:
        report.print_result(result, err if json_out else Console())


def main() -> None:
    app()


if __name__ == "__main__":
    main()
