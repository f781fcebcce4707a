"""`tessera-pipeline plan`: time and cost of a run per hardware profile, and the cheapest mix for a deadline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from tessera_pipeline.cli.options import RegionRequest, region_options, select_tiles
from tessera_pipeline.errors import ArgumentError, ConfigError

if TYPE_CHECKING:
    from tessera_pipeline.plan import Fleet, PlanRow, Work


@click.command("plan")
@region_options
@click.option("--model", "model", type=click.Choice(["v1.0", "v1.1"]), default="v1.1", show_default=True)
@click.option("--profiles", "profile_files", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              multiple=True, help="Profiles file (YAML/JSON, e.g. from `bench --calibrate`); repeatable. "
              "A profile replaces a built-in one of the same name.")
@click.option("--no-builtin", is_flag=True, help="Use only the profiles of --profiles files.")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="A run config: its node_types precisions replace the built-in policy, as in `run`.")
@click.option("--price", "prices", multiple=True, metavar="NAME=USD",
              help="On-demand $/hour for a profile (e.g. the L4, which has no published price); repeatable.")
@click.option("--spot-price", "spot_prices", multiple=True, metavar="NAME=USD", help="Spot $/hour for a profile; repeatable.")
@click.option("--deadline", "deadline_days", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Days: also print the cheapest mix of machines that finishes within it.")
@click.option("--quota", "quotas", multiple=True, metavar="NAME=N",
              help="Most machines of a profile the mix may use (NAME:spot=N for spot, which brings spot in); "
              "unnamed types are unlimited, 0 excludes one.")
@click.option("--spot", is_flag=True, help="Let the mix use spot machines too (evictions are retried by `run`).")
@click.option("--machines", "machines", multiple=True, metavar="NAME=N",
              help="Also estimate the wall time and cost of this fixed fleet (NAME or NAME:spot); repeatable.")
@click.option("--tile-count", type=click.IntRange(min=1), default=None,
              help="Number of tiles, replacing a region (to reproduce published tables).")
@click.option("--pixels-per-tile", type=click.IntRange(min=1), default=None,
              help="Pixels of every tile, replacing the real tile geometry (published tables: 776940).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of rows (per profile; mix or fleet rows too).")
@click.option("--plot", "plot_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Also draw ms/pixel and cost charts (PNG) into this folder.")
def plan(region: RegionRequest, model: str, profile_files: tuple[Path, ...], no_builtin: bool, config_file: Path | None,
         prices: tuple[str, ...], spot_prices: tuple[str, ...], deadline_days: float | None, quotas: tuple[str, ...], spot: bool,
         machines: tuple[str, ...], tile_count: int | None, pixels_per_tile: int | None, as_json: bool,
         plot_dir: Path | None) -> None:
    """Estimate a run before paying for it: tiles and pixels, then per hardware profile the seconds per
    tile, machine-hours, $/tile and total cost on demand and spot.

    Pixels come from the real tile geometry of the region (each tile's UTM raster at 10 m) unless
    --pixels-per-tile is given; --tile-count replaces the region. Built-in profiles carry published
    timings and prices; `bench --calibrate` writes one for the machine at hand.
    """
    from tessera_pipeline import plan as planning
    from tessera_pipeline.plan.profiles import find_profile, parse_assignments

    work = _work(region, tile_count, pixels_per_tile)
    profiles = [] if no_builtin else planning.builtin_profiles()
    for path in profile_files:
        profiles = planning.merge_profiles(profiles, planning.load_profiles(path))
    if not profiles:
        raise ArgumentError("no profiles: drop --no-builtin or give --profiles FILE")
    on_demand = parse_assignments(prices, "--price")
    spot_given = parse_assignments(spot_prices, "--spot-price")
    for key in set(on_demand) | set(spot_given):
        target = find_profile(profiles, key)
        profiles = [p.with_prices(on_demand.get(key), spot_given.get(key)) if p.name == target.name else p for p in profiles]
    overrides = _precision_overrides(config_file)
    rows = planning.cost_rows(work, profiles, model, overrides)
    if not rows:
        raise ArgumentError(f"no profile has a {model} timing")
    extra: list[dict[str, Any]] = []
    fleet = mix = None
    if machines:
        counts = {k: int(v) for k, v in parse_assignments(machines, "--machines", as_int=True).items()}
        fleet = planning.fleet_estimate(work, planning.fleet_from_counts(profiles, model, counts, overrides), model)
        extra += _fleet_rows(fleet, "fleet")
    if deadline_days is not None:
        limits = {k: int(v) for k, v in parse_assignments(quotas, "--quota", as_int=True).items()}
        options = planning.build_options(profiles, model, quotas=limits, spot=spot, overrides=overrides)
        mix = planning.cheapest_mix(work, options, model, deadline_days)
        extra += _fleet_rows(mix, "mix")
    elif quotas:
        raise ArgumentError("--quota only applies with --deadline")
    if plot_dir is not None:
        from tessera_pipeline.plan.plots import draw_plots

        for path in draw_plots(profiles, rows, work, plot_dir):
            click.echo(f"wrote {path}", err=True)
    if as_json:
        click.echo(json.dumps([r.model_dump() for r in rows] + extra, indent=1))
        return
    _print(work, model, rows, fleet, mix)


def _precision_overrides(config_file: Path | None) -> dict[str, str]:
    """Hardware class -> precision from a run config's `node_types` (validated as `run` validates them)."""
    if config_file is None:
        return {}
    from pydantic import ValidationError

    from tessera_pipeline.run.config import NodeTypePolicy, format_validation_error, read_config_file

    raw = read_config_file(config_file).get("node_types") or {}
    out: dict[str, str] = {}
    for hw_class, values in raw.items():
        try:
            policy = NodeTypePolicy.model_validate(values)
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, str(config_file), prefix=f"node_types.{hw_class}")) from exc
        if policy.precision:
            out[str(hw_class)] = policy.precision
    return out


def _work(region: RegionRequest, tile_count: int | None, pixels_per_tile: int | None) -> Work:
    """The work from --tile-count/--pixels-per-tile, or from the region's real tiles."""
    from tessera_pipeline.plan import assumed_work, work_from_tiles
    from tessera_pipeline.plan.cost import MANCHESTER_PIXELS

    if tile_count is not None:
        if region.given:
            raise ArgumentError("--tile-count replaces the region: give one or the other")
        return assumed_work(tile_count, pixels_per_tile or MANCHESTER_PIXELS)
    if not region.given:
        raise ArgumentError("no tiles: give a region (--bbox, --region-file, --tiles, --global) or --tile-count")
    return work_from_tiles(select_tiles(region), pixels_per_tile)


def _fleet_rows(fleet: Fleet, kind: str) -> list[dict[str, Any]]:
    """A fleet as JSON rows: one per machine type (`kind`), then one `<kind>-total`."""
    rows = [item.model_copy(update={"kind": kind}).model_dump() for item in fleet.items]
    rows.append({
        "kind": f"{kind}-total",
        "machines": sum(i.machines for i in fleet.items),
        "wall_s": fleet.wall_s,
        "wall_days": fleet.wall_days,
        "hours": fleet.hours,
        "usd_total": fleet.usd_total,
        "deadline_days": fleet.deadline_days,
        "meets_deadline": fleet.meets_deadline,
        "note": fleet.note,
    })
    return rows


def _usd(value: float | None) -> str:
    """Dollars, short: $0.23, $641.9k, $1.23M; '-' when unknown."""
    if value is None:
        return "-"
    if value >= 1e6:
        return f"${value / 1e6:,.2f}M"
    if value >= 1e4:
        return f"${value / 1e3:,.1f}k"
    return f"${value:,.2f}" if value < 100 else f"${value:,.0f}"


def _duration(seconds: float) -> str:
    """h:mm:ss, or days past 2 days."""
    if seconds >= 2 * 86400:
        return f"{seconds / 86400:,.1f} d"
    whole = int(round(seconds))
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def _print(work: Work, model: str, rows: list[PlanRow], fleet: Fleet | None, mix: Fleet | None) -> None:
    """Human-readable tables on stdout."""
    from rich.console import Console
    from rich.table import Table

    console = Console(width=160)
    console.print(f"[bold]{work.tiles:,} tiles[/], {work.pixels:,} pixels ({work.mean_pixels:,.0f} per tile) "
                  f"from {work.source}; model {model}")
    table = Table("profile", "class", "precision", "s/tile", "ms/px", "machine-h", "$/tile", "total", "total spot")
    for r in sorted(rows, key=lambda r: (r.usd_total is None, r.usd_total or 0.0, r.hours)):
        table.add_row(r.profile, r.hw_class, r.precision + (" *" if r.policy else ""), f"{r.seconds_per_tile:,.1f}",
                      f"{r.ms_per_pixel:.3f}", f"{r.hours:,.0f}" if r.hours >= 100 else f"{r.hours:.3f}",
                      "-" if r.usd_per_tile is None else f"${r.usd_per_tile:.4f}", _usd(r.usd_total), _usd(r.usd_total_spot))
    console.print(table)
    console.print("* the precision `run` uses on that hardware class. '-': no published price (give one with --price).")
    for title, estimate in (("fleet", fleet), ("cheapest mix", mix)):
        if estimate is None:
            continue
        head = f"[bold]{title}[/]"
        if estimate.deadline_days is not None:
            head += f" for a {estimate.deadline_days:g}-day deadline"
        console.print(head + (f": {estimate.note}" if estimate.note else ""))
        mt = Table("machines", "profile", "precision", "pricing", "tiles", "machine-h", "cost")
        for i in estimate.items:
            mt.add_row(str(i.machines), i.profile, i.precision, i.pricing, f"{i.tiles:,.0f}", f"{i.hours:,.1f}", _usd(i.usd_total))
        console.print(mt)
        console.print(f"wall time {_duration(estimate.wall_s)}, {estimate.hours:,.1f} machine-hours, total {_usd(estimate.usd_total)}")
