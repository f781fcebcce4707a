"""`tessera-pipeline run`: plan a region, record the run in the store, and encode it on a Ray cluster."""

from __future__ import annotations

import json
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from tessera_pipeline.cli.console import make_console, print_table
from tessera_pipeline.cli.options import RegionRequest, driver_options, region_options, retry_options, select_tiles
from tessera_pipeline.cli.run_display import print_summary, run_display
from tessera_pipeline.errors import ConfigError
from tessera_pipeline.run.config import RunConfig, build_config, merge, read_config_file


def region_dict(region: RegionRequest) -> dict[str, Any]:
    """The region flags as a config mapping (empty when no selector was given)."""
    if not region.given:
        return {}
    out: dict[str, Any] = {"landmask": region.landmask}
    if region.bbox:
        out["bbox"] = region.bbox
    if region.region_file:
        out["region_file"] = str(region.region_file)
    if region.tiles_file:
        out["tiles"] = str(region.tiles_file)
    if region.global_:
        out["global"] = True
    if region.allow_wide_bbox:
        out["allow_wide_bbox"] = True
    return out


def resolve_config(config_file: Path | None, flags: dict[str, Any], *, what: str = "run") -> RunConfig:
    """Merge --config with the flags (flags win) and validate, with one-line errors naming the key or flag."""
    file_values = read_config_file(config_file) if config_file else {}
    values = merge(file_values, flags)
    missing = [k for k in ("input", "store", "checkpoint", "year") if values.get(k) in (None, "")]
    if missing:
        key = missing[0]
        flag = "--input" if key == "input" else f"--{key.replace('_', '-')}"
        raise ConfigError(f"{what}: missing {flag} (or `{key}:` in --config)")
    return build_config(values, source=str(config_file) if config_file else what)


def select_config_region(config: RunConfig) -> Any:
    """The tiles of the config's region (same rules as every command's region flags)."""
    r = config.region
    return select_tiles(RegionRequest(
        bbox=r.bbox, region_file=Path(r.region_file) if r.region_file else None,
        tiles_file=Path(r.tiles) if r.tiles else None, global_=r.global_, landmask=r.landmask,
        allow_wide_bbox=r.allow_wide_bbox,
    ))


def print_dry_run(console: Any, report: Any, config: RunConfig, as_json: bool) -> None:
    """What a run would do: tiles, pixels, and machine-hours per hardware profile."""
    from rich.table import Table

    from tessera_pipeline.plan.estimate import estimate_hours

    model = report.checkpoint.model_version if report.checkpoint else (config.model or "v1.1")
    precisions = {cls: policy.precision for cls, policy in config.node_types.items() if policy.precision}
    estimates = estimate_hours(report.todo_pixels, model, precisions)
    if as_json:
        click.echo(json.dumps({
            "tiles": report.planned, "pixels": report.planned_pixels, "already_complete": report.already_complete,
            "failed_left_out": report.skipped_failed, "todo_tiles": report.todo, "todo_pixels": report.todo_pixels,
            "model": model, "missing_inputs": report.missing_inputs, "awaiting_input": report.missing_inputs,
            "estimates": [{"profile": e.profile, "hw_class": e.hw_class, "basis": e.basis, "precision": e.precision,
                           "machine_hours": round(e.machine_hours, 2)} for e in estimates],
        }, indent=1))
        return
    console.print(f"dry run: {report.planned:,} tiles ({report.planned_pixels:,} px) planned; "
                  f"{report.already_complete:,} complete, {report.skipped_failed:,} failed earlier; "
                  f"{report.todo:,} tiles ({report.todo_pixels:,} px) to do with model {model}", markup=False)
    if report.missing_inputs:
        console.print(f"{report.missing_inputs:,} planned tiles have no inputs under {config.input} for {config.year} "
                      f"yet (e.g. {', '.join(report.missing_examples)}): they would await their inputs, with no "
                      "failure recorded; `resume` picks them up once their inputs exist", markup=False)
    table = Table("profile", "hardware class", "precision", "machine-hours", "days on 100 machines",
                  title="estimated time per hardware profile (published/calibrated timings)")
    for e in estimates:
        table.add_row(e.profile, e.hw_class, e.precision, f"{e.machine_hours:,.1f}", f"{e.machine_hours / 2400:,.2f}")
    print_table(console, table)
    console.print("nothing was started or written (--dry-run)", markup=False)


@click.command("run")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Run config (YAML or JSON); flags given here override it.")
@click.option("--input", "input_root", default=None, help="d-pixel root ROOT/{year}/{tile}/ (local path or s3://).")
@click.option("--store", default=None, help="Zarr embedding store (local path or s3://).")
@click.option("--checkpoint", default=None, help="Checkpoint: path, s3:// or https:// URL (upstream format).")
@click.option("--model", type=click.Choice(["v1.0", "v1.1"]), default=None, help="Expected model version (checked).")
@click.option("--data-source", type=click.Choice(["mpc", "aws"]), default=None, help="v1.1 normalisation set.")
@click.option("--year", type=click.IntRange(1000, 9999), default=None, help="Year of the inputs.")
@region_options
@click.option("--address", default=None, help="Ray cluster to join ('auto' under `ray job submit`); default: a local one.")
@click.option("--dry-run", is_flag=True, help="Plan and estimate only; start and write nothing.")
@retry_options
@click.option("--trust-checkpoint", is_flag=True, default=None,
              help="Allow pickled objects in the checkpoint (never saved in the store: resume asks again).")
@click.option("--local-cpus", type=click.IntRange(1), default=None, help="CPUs of the local Ray cluster (default: all).")
@driver_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable summary on stdout.")
def run(config_file: Path | None, input_root: str | None, store: str | None, checkpoint: str | None,
        model: str | None, data_source: str | None, year: int | None, region: RegionRequest, address: str | None,
        dry_run: bool, retry_failed: bool, reason: str | None, trust_checkpoint: bool | None,
        local_cpus: int | None, takeover: bool, dashboard: bool, as_json: bool) -> None:
    """Encode every tile of a region into a store on a Ray cluster; resumable from the store alone.

    Tiles already complete are left out; the rest go largest first to long-lived actors, one pool
    per hardware class (GPUs by Ray accelerator type, CPUs by their bf16 support), each at its
    class's precision. One driver per store: a second is refused while the first's lease is live.
    Exit code 1 while any planned tile has failed (see `status`), 2 for bad arguments, 130 on Ctrl-C.
    """
    from tessera_pipeline.run.session import start

    if reason and not retry_failed:
        raise ConfigError("--reason picks which failed tiles --retry-failed retries: pass --retry-failed too")

    config = resolve_config(config_file, {
        "input": input_root, "store": store, "checkpoint": checkpoint, "model": model, "data_source": data_source,
        "year": year, "region": region_dict(region), "address": address, "trust_checkpoint": trust_checkpoint,
        "local_cpus": local_cpus,
    })
    if not config.region.given:
        raise ConfigError("run: no region: pass one of --bbox, --region-file, --tiles or --global (or `region:` in --config)")
    tiles = select_config_region(config)
    console = make_console(stderr=as_json)
    if dry_run:
        report = start(config, tiles, dry_run=True, retry_failed=retry_failed, retry_reason=reason)
        print_dry_run(console, report, config, as_json)
        return
    with interruptible(console, config.store) as guard, run_display(console, json_stdout=as_json) as on_progress:
        report = start(config, tiles, retry_failed=retry_failed, retry_reason=reason, takeover=takeover,
                       dashboard=dashboard, on_progress=guard(on_progress))
    finish(console, report, config.store, as_json)


@contextmanager
def interruptible(console: Any, store: str) -> Iterator[Callable[[Callable[[Any], None]], Callable[[Any], None]]]:
    """On Ctrl-C: say what is committed and how to go on, exit 130 (the driver has released the store).

    Yields `guard`, which wraps the progress callback so the scheduling loop itself raises the interrupt at
    its next snapshot: a KeyboardInterrupt that Python delivers inside a finalizer (a Ray ObjectRef being
    freed) is swallowed there, so the press is also remembered and acted on at a safe point.
    """
    pressed = threading.Event()

    def on_sigint(signum: int, frame: Any) -> None:
        pressed.set()
        raise KeyboardInterrupt

    def guard(on_progress: Callable[[Any], None]) -> Callable[[Any], None]:
        def checked(progress: Any) -> None:
            if pressed.is_set():
                raise KeyboardInterrupt
            on_progress(progress)

        return checked

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield guard
    except KeyboardInterrupt:
        from tessera_pipeline.run.status import run_status

        try:
            st = run_status(store)
            done = f"{st.complete:,} of {st.planned:,} tiles of run {st.run_id} are committed and kept"
        except Exception:  # the summary is a courtesy; the message below still holds
            done = "every committed tile is kept"
        console.print(f"interrupted: {done}; continue with: tessera-pipeline resume --store {store}", markup=False)
        sys.exit(130)
    finally:
        signal.signal(signal.SIGINT, previous)


def finish(console: Any, report: Any, store: str, as_json: bool) -> None:
    """Print the summary (table or JSON); exit 1 while any tile of the plan has failed, old sessions included."""
    failed = report.failed_in_plan
    if as_json:
        p = report.outcome.progress.to_dict() if report.outcome else {}
        click.echo(json.dumps({"run_id": report.run_id, "kind": report.kind, "planned": report.planned,
                               "already_complete": report.already_complete, "todo": report.todo,
                               "failed_in_plan": failed, "failed_left_out": report.skipped_failed, "progress": p,
                               "idle_fraction": report.outcome.idle_fraction() if report.outcome else {}},
                              indent=1))
    else:
        print_summary(console, report, store)
        console.print(f"output: {store}  (read it with `tessera-pipeline export --store {store} ...`, "
                      f"check it with `tessera-pipeline verify --store {store}`)", markup=False)
    if failed:
        console.print(f"{failed:,} tile(s) of this plan have failed for good (reasons: tessera-pipeline status --store "
                      f"{store}); after fixing their inputs: tessera-pipeline resume --store {store} --retry-failed",
                      markup=False)
        sys.exit(1)
