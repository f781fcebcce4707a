"""`bench --calibrate`: the command-line side of calibration (defaults, output file), kept out of bench.py."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console

from tessera_pipeline.inputs.synthetic import parse_size


def calibrate_profile(
    model: str,
    size: str,
    precisions: tuple[str, ...],
    batch_size: int,
    threads: int | None,
    out: Path | None,
    name: str | None,
    usd_per_hour: float | None,
    usd_per_hour_spot: float | None,
) -> None:
    """Calibrate this machine and write (or print) its profile; --batch-size left at its default means the run policy's."""
    from tessera_pipeline.bench.calibrate import calibrate, write_profile
    from tessera_pipeline.plan.profiles import dump_profiles

    console = Console(stderr=True)
    source = click.get_current_context().get_parameter_source("batch_size")
    explicit_batch = batch_size if source is not click.core.ParameterSource.DEFAULT else None
    profile = calibrate(
        (model,),
        precisions or None,
        parse_size(size),
        name=name,
        usd_per_hour=usd_per_hour,
        usd_per_hour_spot=usd_per_hour_spot,
        batch_size=explicit_batch,
        threads=threads,
        pin=True,
        on_progress=lambda msg: console.log(msg),
    )
    if out is None:
        click.echo(dump_profiles([profile]), nl=False)
        return
    write_profile(profile, out)
    console.log(f"wrote profile {profile.name} to {out}; use it with: tessera-pipeline plan --profiles {out} ...")
