"""`tessera-pipeline plan`: time and cost of a run per hardware profile, and the cheapest mix for a deadline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

from tessera_pipeline.cli.options import RegionRequest, region_options, select_tiles
from tessera_pipeline.errors import ArgumentError, ConfigError

if TYPE_CHECKING:
    from tessera_pipeline.plan import Work


@click.command("plan")
@region_options
@click.option("--model", "model", type=click.Choice(["v1.0", "v1.1"]), default="v1.1", show_default=True)
@click.option("--profiles", "profile_files", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              multiple=True, help="Profiles file (YAML/JSON, e.g. from `bench --calibrate`); repeatable. "
              "A profile replaces a built-in one of the same name.")
@click.option("--no-builtin", is_flag=True, help="Use only the profiles of --profiles files.")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="A run config: its node_types precisions replace the built-in policy, as in `run`.")
@click.option("--prices", "prices_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="A price table (YAML, the shape of the built-in prices.yaml) replacing the built-in one.")
@click.option("--price", "prices", multiple=True, metavar="NAME=USD",
              help="On-demand $/hour for a profile, replacing its price-table offerings; repeatable.")
@click.option("--spot-price", "spot_prices", multiple=True, metavar="NAME=USD", help="Spot $/hour for a profile; repeatable.")
@click.option("--deadline", "deadline_days", type=click.FloatRange(min=0, min_open=True), default=30.0, show_default=True,
              help="Days within which the cheapest fleets (overall and per cloud, on demand and spot) must finish.")
@click.option("--quota", "quotas", multiple=True, metavar="NAME=N",
              help="Most machines of a profile the fleet may use (NAME:spot=N for spot, which brings spot in); "
              "unnamed types are unlimited, 0 excludes one.")
@click.option("--spot", is_flag=True, help="Let the fleet use spot machines too (evictions are retried by `run`).")
@click.option("--with-published", is_flag=True,
              help="Let fleets use published profiles too (upstream's code: by default only measured and projected ones).")
@click.option("--machines", "machines", multiple=True, metavar="NAME=N",
              help="Also estimate the wall time and bill of this fixed fleet (NAME or NAME:spot); repeatable.")
@click.option("--tile-count", type=click.IntRange(min=1), default=None,
              help="Number of tiles, replacing a region (to reproduce published tables).")
@click.option("--pixels-per-tile", type=click.IntRange(min=1), default=None,
              help="Pixels of every tile, replacing the real tile geometry (published tables: 776940).")
@click.option("--tokens-per-pixel", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Mean S2 + S1 observations per pixel of the real tiles; timings that record theirs are scaled by "
              "the ratio (time is linear in them). Default: each profile as timed.")
@click.option("--input-region", default=None, help="Region the inputs are stored in (egress is charged when it "
              "differs from --compute-region).")
@click.option("--compute-region", default=None, help="Region the machines run in.")
@click.option("--storage-price", type=click.FloatRange(min=0), default=None, metavar="USD",
              help="Output storage, $ per GB-month (default: S3 Standard's).")
@click.option("--egress-price", type=click.FloatRange(min=0), default=None, metavar="USD",
              help="Input egress, $ per GB (default: S3 inter-region transfer).")
@click.option("--storage-months", type=click.FloatRange(min=0), default=None, metavar="MONTHS",
              help="Months of output storage the bill counts (default: 12).")
@click.option("--eviction-rate", type=click.FloatRange(min=0), default=None, metavar="PER_HOUR",
              help="Spot evictions per machine-hour (default: an assumed 0.05).")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object: work, assumptions, sources, rows, and the fleet and mix with their bills.")
@click.option("--plot", "plot_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Also draw ms/pixel and cost charts (PNG) into this folder.")
@click.option("--overwrite", is_flag=True, help="Replace chart files that already exist in the --plot folder.")
def plan(region: RegionRequest, model: str, profile_files: tuple[Path, ...], no_builtin: bool, config_file: Path | None,
         prices_file: Path | None, prices: tuple[str, ...], spot_prices: tuple[str, ...], deadline_days: float,
         quotas: tuple[str, ...], spot: bool, with_published: bool, machines: tuple[str, ...], tile_count: int | None,
         pixels_per_tile: int | None, tokens_per_pixel: float | None, input_region: str | None,
         compute_region: str | None, storage_price: float | None, egress_price: float | None,
         storage_months: float | None, eviction_rate: float | None, as_json: bool, plot_dir: Path | None,
         overwrite: bool) -> None:
    """Estimate a run before paying for it: tiles and pixels, then per hardware profile (measured, projected
    from a measured one, or upstream's published figures) and per cloud offering of its hardware (the
    built-in price table: instance, region, source, date) the seconds per tile, machine-hours, $/tile and
    total cost on demand and spot; the cheapest row per cloud; and the cheapest fleet for the deadline,
    overall and per cloud, with its whole bill (compute, evictions, a year of output storage, requests,
    egress when the input region differs).

    Pixels come from the real tile geometry of the region (each tile's UTM raster at 10 m) unless
    --pixels-per-tile is given; --tile-count replaces the region. `bench --calibrate` writes a
    measured profile of the machine at hand.
    """
    from tessera_pipeline import plan as planning
    from tessera_pipeline.plan.bill import Assumptions
    from tessera_pipeline.plan.clouds import mixes_by_cloud
    from tessera_pipeline.plan.prices import load_prices
    from tessera_pipeline.plan.profiles import price_profiles
    from tessera_pipeline.plan.profiles import find_profile, parse_assignments

    if plot_dir is not None:
        from tessera_pipeline.cli.outputs import check_output_files
        from tessera_pipeline.plan.plots import COST_PNG, MS_PER_PIXEL_PNG

        check_output_files([plot_dir / MS_PER_PIXEL_PNG, plot_dir / COST_PNG], "--plot", overwrite=overwrite)
    work = _work(region, tile_count, pixels_per_tile, tokens_per_pixel)
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
    profiles = price_profiles(profiles, load_prices(prices_file))
    overrides = _precision_overrides(config_file)
    given = {"input_region": input_region, "compute_region": compute_region, "storage_usd_per_gb_month": storage_price,
             "egress_usd_per_gb": egress_price, "evictions_per_hour": eviction_rate, "storage_months": storage_months}
    assumptions = Assumptions(**{k: v for k, v in given.items() if v is not None})
    rows = planning.cost_rows(work, profiles, model, overrides)
    if not rows:
        raise ArgumentError(f"no profile has a {model} timing")
    bases = ("measured", "projected", "published") if with_published else ("measured", "projected")
    fleet = mix = None
    if machines:
        counts = {k: int(v) for k, v in parse_assignments(machines, "--machines", as_int=True).items()}
        chosen = planning.fleet_from_counts(profiles, model, counts, overrides, assumptions.evictions_per_hour)
        fleet = planning.fleet_estimate(work, chosen, model)
    limits = {k: int(v) for k, v in parse_assignments(quotas, "--quota", as_int=True).items()}
    options = planning.build_options(profiles, model, quotas=limits, spot=True, overrides=overrides, bases=bases,
                                     evictions_per_hour=assumptions.evictions_per_hour)
    wanted = [o for o in options if o.pricing == "on-demand" or spot or o.quota is not None]
    mix = planning.cheapest_mix(work, wanted, model, deadline_days)
    mixes = {("all", pricing): planning.cheapest_mix(work, [o for o in options if o.pricing == pricing], model, deadline_days)
             for pricing in ("on-demand", "spot")}
    mixes.update(mixes_by_cloud(work, options, model, deadline_days))
    if plot_dir is not None:
        from tessera_pipeline.plan.plots import draw_plots

        for path in draw_plots(profiles, rows, work, plot_dir):
            click.echo(f"wrote {path}", err=True)
    report = planning.plan_report(work, model, profiles, rows, assumptions, fleet=fleet, mix=mix, fleet_bases=bases,
                                  mixes=mixes)
    if as_json:
        click.echo(json.dumps(report, indent=1))
        return
    from tessera_pipeline.cli.plan_display import print_plan

    print_plan(work, model, rows, report)


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


def _work(region: RegionRequest, tile_count: int | None, pixels_per_tile: int | None, tokens_per_pixel: float | None) -> Work:
    """The work from --tile-count/--pixels-per-tile, or from the region's real tiles, at the assumed observations per pixel."""
    from dataclasses import replace

    from tessera_pipeline.plan import assumed_work, work_from_tiles
    from tessera_pipeline.plan.cost import MANCHESTER_PIXELS

    if tile_count is not None:
        if region.given:
            raise ArgumentError("--tile-count replaces the region: give one or the other")
        work = assumed_work(tile_count, pixels_per_tile or MANCHESTER_PIXELS)
    elif not region.given:
        raise ArgumentError("no tiles: give a region (--bbox, --region-file, --tiles, --global) or --tile-count")
    else:
        work = work_from_tiles(select_tiles(region), pixels_per_tile)
    return replace(work, tokens_per_pixel=tokens_per_pixel)
