"""Cost and time of a run: per-profile rows, a fixed fleet's wall time, and the cheapest mix for a deadline.

The cost model is the run's own scheduling: every machine pulls tiles until none are left, so a
fleet finishes when its summed rate has covered the work, and every machine is paid for that long.
Under that model the cost of a unit of work is the rate-weighted mean of each machine's cost per
pixel, so the cheapest fleet that meets a deadline fills the required rate with the types of the
lowest cost per pixel first, up to each type's quota (a greedy choice that is optimal up to the
rounding of the last type's machine count).

Time per tile is the profile's seconds per pixel times the tile's pixels (times the tokens-per-pixel
factor: time is linear in observations per pixel), plus fixed per-tile seconds (the encoder's own,
measured by calibration, and the store commit); each machine also pays `startup_s` once. Precision
per hardware class is the precision policy's (`tessera_pipeline.precision`) unless a run config
says otherwise; a profile without a timing at that precision shows its rows, none marked as the
run's, and stays out of fleets. Spot machines lose work to evictions: each eviction costs the
tile in flight (half a tile on average) and a new start-up, at an assumed rate per machine-hour.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

from tessera_pipeline.errors import ArgumentError
from tessera_pipeline.grid import TileSet, geometry_arrays
from tessera_pipeline.plan.profiles import Basis, Profile, Timing
from tessera_pipeline.precision import class_defaults


Pricing = Literal["on-demand", "spot"]
SECONDS_PER_DAY = 86400.0
#: The published assumption: every tile costs what the Manchester tile cost.
MANCHESTER_PIXELS = 776_940
PUBLISHED_TILE_COUNT = 1_593_480


@dataclass(frozen=True)
class Work:
    """What a run has to encode: tile count, total pixels, where they came from, and the assumed observations per pixel.

    `tokens_per_pixel` None times every profile at the observations of its own timed tile (factor 1).
    """

    tiles: int
    pixels: int
    source: str
    tokens_per_pixel: float | None = None

    @property
    def mean_pixels(self) -> float:
        """Mean pixels per tile."""
        return self.pixels / self.tiles if self.tiles else 0.0


def work_from_tiles(tiles: TileSet, pixels_per_tile: int | None = None) -> Work:
    """The work of a tile set: real raster sizes from the grid (vectorised), or a fixed size per tile."""
    if pixels_per_tile is not None:
        return Work(len(tiles), len(tiles) * pixels_per_tile, f"{pixels_per_tile:,} pixels per tile (given)")
    geometry = geometry_arrays(tiles.ix, tiles.iy)
    pixels = int(np.sum(geometry["height"].astype(np.int64) * geometry["width"].astype(np.int64)))
    return Work(len(tiles), pixels, "tile geometry (UTM raster of each tile at 10 m)")


def assumed_work(tile_count: int, pixels_per_tile: int = MANCHESTER_PIXELS) -> Work:
    """Work of `tile_count` tiles of `pixels_per_tile` each (the published tables' assumption)."""
    if tile_count < 1 or pixels_per_tile < 1:
        raise ArgumentError("--tile-count and --pixels-per-tile must be at least 1")
    return Work(tile_count, tile_count * pixels_per_tile, f"{pixels_per_tile:,} pixels per tile (given)")


def run_precision(hw_class: str, overrides: Mapping[str, str] | None = None) -> str:
    """The precision `run` uses on a class: the run config's `overrides` by class, else the precision policy's."""
    return (overrides or {}).get(hw_class) or class_defaults(hw_class).precision


def policy_precision(profile: Profile, model: str, overrides: Mapping[str, str] | None = None) -> str | None:
    """The run's precision on this profile's class when the profile has a timing for it, else None (never a fallback)."""
    wanted = run_precision(profile.hw_class, overrides)
    return wanted if profile.timing(model, wanted) is not None else None


def tokens_factor(work: Work, timing: Timing) -> float:
    """How much longer the work's pixels take than the timed tile's: assumed over timed observations per pixel (1 if either is unknown)."""
    if work.tokens_per_pixel is None or timing.tokens_per_pixel is None:
        return 1.0
    return work.tokens_per_pixel / timing.tokens_per_pixel


class Priced(BaseModel):
    """Where a row's price comes from: the profile it was priced from, the offering's cloud, instance and region, the source and date."""

    family: str | None = None
    cloud: str | None = None
    instance: str | None = None
    region: str | None = None
    price_source: str | None = None
    price_date: str | None = None


class PlanRow(Priced):
    """One profile at one precision for the whole work: the row `plan --json` prints."""

    kind: str = "profile"
    profile: str
    machine: str
    hw_class: str
    basis: Basis
    model: str
    precision: str
    policy: bool
    tokens_factor: float
    seconds_per_tile: float
    ms_per_pixel: float
    hours: float
    usd_per_hour: float | None
    usd_per_hour_spot: float | None
    usd_per_tile: float | None
    usd_total: float | None
    usd_total_spot: float | None
    source: str | None = None
    derivation: dict[str, float | str] | None = None


def offering_fields(profile: Profile) -> dict[str, str | None]:
    """Which profile a priced copy comes from, and the cloud, instance, region, source and date of its price."""
    o = profile.offering
    return {"family": profile.family or profile.name, "cloud": o.cloud if o else None,
            "instance": o.instance if o else None, "region": o.region if o else None,
            "price_source": profile.price_source, "price_date": profile.price_date}


def _seconds(work: Work, profile: Profile, model: str, precision: str) -> float:
    """Machine wall seconds for the whole work (no start-up), one profile at one precision."""
    timing = profile.timing(model, precision)
    if timing is None:
        raise ArgumentError(f"profile {profile.name} has no {model} {precision} timing")
    per_pixel = timing.seconds_per_pixel * tokens_factor(work, timing)
    return work.pixels * per_pixel + work.tiles * (timing.fixed_s + profile.tile_overhead_s)


def _usd(hours: float, price: float | None) -> float | None:
    """Dollars for machine-hours at an hourly price; None when the price is unknown."""
    return None if price is None else hours * price


def cost_rows(work: Work, profiles: Iterable[Profile], model: str,
              overrides: Mapping[str, str] | None = None) -> list[PlanRow]:
    """Every profile at every precision it has a timing for: time and cost of the whole work."""
    rows: list[PlanRow] = []
    for profile in profiles:
        policy = policy_precision(profile, model, overrides)
        for precision in profile.precisions(model):
            seconds = _seconds(work, profile, model, precision)
            hours = seconds / 3600.0
            per_tile = seconds / work.tiles if work.tiles else 0.0
            timing = profile.timing(model, precision)
            rows.append(
                PlanRow(
                    profile=profile.name,
                    machine=profile.machine,
                    hw_class=profile.hw_class,
                    basis=profile.basis,
                    model=model,
                    precision=precision,
                    policy=precision == policy,
                    tokens_factor=tokens_factor(work, timing) if timing else 1.0,
                    seconds_per_tile=per_tile,
                    ms_per_pixel=1e3 * timing.seconds_per_pixel * tokens_factor(work, timing) if timing else 0.0,
                    hours=hours,
                    usd_per_hour=profile.usd_per_hour,
                    usd_per_hour_spot=profile.usd_per_hour_spot,
                    usd_per_tile=_usd(per_tile / 3600.0, profile.usd_per_hour),
                    usd_total=_usd(hours, profile.usd_per_hour),
                    usd_total_spot=_usd(hours, profile.usd_per_hour_spot),
                    source=timing.source if timing else None,
                    derivation=timing.derivation if timing else None,
                    **offering_fields(profile),
                )
            )
    return rows


@dataclass(frozen=True)
class Option:
    """A way to buy work: a profile at one precision and one pricing, with a machine quota (None: unlimited).

    `evictions_per_hour` is the assumed eviction rate of a spot machine (0 on demand); `quota_key` is the
    name the quota was given under, shared by every option it names (all offerings of one profile).
    """

    profile: Profile
    precision: str
    pricing: Pricing
    quota: int | None
    evictions_per_hour: float = 0.0
    quota_key: str | None = None

    @property
    def usd_per_hour(self) -> float | None:
        """Hourly price of one machine under this pricing."""
        return self.profile.usd_per_hour if self.pricing == "on-demand" else self.profile.usd_per_hour_spot


class FleetItem(Priced):
    """One machine type in a fleet: how many, what share of the work, machine-hours and cost."""

    kind: str = "mix"
    profile: str
    machine: str
    hw_class: str
    basis: Basis
    precision: str
    pricing: str
    machines: int
    tiles: float
    hours: float
    usd_per_hour: float | None
    usd_total: float | None
    eviction_share: float = 0.0
    instances: int | None = Field(default=None, description="Instances to rent: machines over the machines one holds.")


class Fleet(BaseModel):
    """A fleet's estimate: wall time, machine-hours and cost, per type and in total."""

    items: list[FleetItem]
    wall_s: float
    hours: float
    usd_total: float | None
    deadline_days: float | None = None
    meets_deadline: bool | None = None
    note: str = ""

    @property
    def wall_days(self) -> float:
        """Wall time in days."""
        return self.wall_s / SECONDS_PER_DAY


def eviction_share(work: Work, option: Option, model: str) -> float:
    """Share of a spot machine's time lost to evictions: rate x (half a tile in flight + a new start-up)."""
    if option.evictions_per_hour <= 0:
        return 0.0
    per_tile = _seconds(work, option.profile, model, option.precision) / work.tiles
    lost_s = 0.5 * per_tile + option.profile.startup_s
    return min(option.evictions_per_hour * lost_s / 3600.0, 0.99)


def machine_rate(work: Work, option: Option, model: str) -> float:
    """Tiles per second of one machine of this option, for this work's mean tile, less what evictions lose."""
    per_tile = _seconds(work, option.profile, model, option.precision) / work.tiles
    return (1.0 - eviction_share(work, option, model)) / per_tile


def fleet_estimate(work: Work, fleet: Sequence[tuple[Option, int]], model: str) -> Fleet:
    """Wall time and cost of a fixed fleet that pulls tiles until none are left (how `run` schedules)."""
    fleet = [(o, n) for o, n in fleet if n > 0]
    if not fleet or work.tiles == 0:
        return Fleet(items=[], wall_s=0.0, hours=0.0, usd_total=0.0 if work.tiles == 0 else None,
                     note="no machines" if work.tiles else "no tiles")
    total_rate = sum(n * machine_rate(work, o, model) for o, n in fleet)
    startup = max(o.profile.startup_s for o, _ in fleet)
    wall = startup + work.tiles / total_rate
    items: list[FleetItem] = []
    for option, n in fleet:
        share = n * machine_rate(work, option, model) / total_rate * work.tiles
        hours = n * wall / 3600.0
        items.append(
            FleetItem(
                profile=option.profile.name,
                machine=option.profile.machine,
                hw_class=option.profile.hw_class,
                basis=option.profile.basis,
                precision=option.precision,
                pricing=option.pricing,
                machines=n,
                tiles=share,
                hours=hours,
                usd_per_hour=option.usd_per_hour,
                usd_total=_usd(hours, option.usd_per_hour),
                eviction_share=eviction_share(work, option, model),
                instances=math.ceil(n / option.profile.offering.units) if option.profile.offering else None,
                **offering_fields(option.profile),
            )
        )
    costs = [i.usd_total for i in items]
    total = None if any(c is None for c in costs) else float(sum(c for c in costs if c is not None))
    return Fleet(items=items, wall_s=wall, hours=sum(i.hours for i in items), usd_total=total)
