"""Hardware profiles: how long a machine takes per pixel for each model and precision, and its price.

A profile is one machine type (an Azure size, a workstation, the machine at hand after
`bench --calibrate`). Its timings are wall seconds of the whole machine for one tile of a known
pixel count, so `plan` can scale them to every tile's real size. Every profile says its `basis`:
`measured` (this pipeline, by a command, on a date), `projected` (computed here from a measured
profile by the card's datasheet dense peak and memory bandwidth, `Projection`), or `published`
(upstream's figures, kept for comparison). The built-in profiles live in `profiles.yaml` beside
this module with their sources; users add or override profiles with a YAML or JSON file of the
same shape.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tessera_pipeline.errors import ArgumentError, ConfigError, format_validation_error
from tessera_pipeline.plan.prices import Offering, PriceTable, offering_name
from tessera_pipeline.precision import Precision

log = logging.getLogger(__name__)

ModelName = Literal["v1.0", "v1.1"]
Basis = Literal["measured", "projected", "published"]
BUILTIN_FILE = "profiles.yaml"
_CLOCK = re.compile(r"^(?:(\d+):)?(\d+):(\d{2}(?:\.\d+)?)$")


def parse_duration(value: float | int | str) -> float:
    """Seconds from a number or a "mm:ss" / "h:mm:ss" string (the form the published tables use)."""
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).strip()
    match = _CLOCK.match(text)
    if match:
        hours, minutes, seconds = match.groups()
        return int(hours or 0) * 3600 + int(minutes) * 60 + float(seconds)
    try:
        return float(text)
    except ValueError as exc:
        raise ValueError(f"not a duration (seconds, mm:ss or h:mm:ss): {value!r}") from exc


class Timing(BaseModel):
    """One measured tile: model, precision, the machine's wall seconds, the tile's pixels, the source."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: ModelName
    precision: Precision
    seconds: float = Field(gt=0, description="Wall seconds of the whole machine for one tile.")
    pixels: int = Field(gt=0, description="Pixels of the timed tile.")
    fixed_s: float = Field(default=0.0, ge=0, description="Part of `seconds` that any tile costs, whatever its size.")
    tokens_per_pixel: float | None = Field(default=None, gt=0, description="Mean S2 + S1 observations per pixel of the timed "
                                           "tile (time is linear in them); None when not known.")
    source: str | None = None
    derivation: dict[str, float | str] | None = Field(default=None, description="For a projected timing: each factor "
                                                       "of its seconds with its source (`plan --json` carries it).")

    @field_validator("seconds", mode="before")
    @classmethod
    def _clock(cls, value: Any) -> float:
        """Accept the published "mm:ss" and "h:mm:ss" forms."""
        return parse_duration(value)

    @model_validator(mode="after")
    def _fixed_within(self) -> Timing:
        """The fixed part must leave some seconds for the pixels."""
        if self.fixed_s >= self.seconds:
            raise ValueError(f"fixed_s {self.fixed_s} must be less than seconds {self.seconds}")
        return self

    @property
    def seconds_per_pixel(self) -> float:
        """Machine wall seconds per pixel, beyond the fixed per-tile part."""
        return (self.seconds - self.fixed_s) / self.pixels

    def tile_seconds(self, pixels: float) -> float:
        """Machine wall seconds for a tile of `pixels` pixels."""
        return self.fixed_s + pixels * self.seconds_per_pixel


class Datasheet(BaseModel):
    """A card's dense (no sparsity) peak TFLOP/s per precision and its memory bandwidth, with their source."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    peak_tflops: dict[Precision, float]
    bandwidth_gbs: float = Field(gt=0)
    source: str = Field(min_length=1)


class Projection(BaseModel):
    """How a projected profile's timings follow from a measured one: t = t_base x (s x P_base/P + (1 - s) x B_base/B) / e.

    `s` (`compute_share`, per base precision) is the share of the base's time that scales with dense
    peak P (GEMMs and attention), the rest scales with memory bandwidth B; `e` (`efficiency`) is the fraction of the
    base's achieved share of peak and bandwidth this machine is assumed to reach. `precisions` maps
    each projected precision to the base timing it comes from (e.g. T4 fp16 from the H200's bf16).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    base: str = Field(min_length=1, description="Name of the measured profile projected from.")
    precisions: dict[Precision, Precision]
    compute_share: dict[Precision, float]
    efficiency: float = Field(gt=0, le=1)
    reason: str = Field(min_length=1, description="Where compute_share and efficiency come from.")


class Profile(BaseModel):
    """One machine type: its hardware class (as `run` routes on), prices, timings and where they come from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    machine: str = ""
    hw_class: str = Field(min_length=1, description="The class `run` routes on, e.g. cuda-T4, cpu-amx.")
    basis: Basis = Field(default="measured", description="measured (this pipeline), projected, or published (upstream's).")
    description: str = ""
    datasheet: Datasheet | None = None
    projection: Projection | None = None
    usd_per_hour: float | None = Field(default=None, ge=0)
    usd_per_hour_spot: float | None = Field(default=None, ge=0)
    price_source: str | None = None
    price_date: str | None = Field(default=None, description="The date the price's source says it was generated.")
    price_from_table: bool = Field(default=False, description="Without a price of its own, priced per offering of "
                                   "its class in the price table (`plan.prices`).")
    family: str | None = Field(default=None, description="The profile a table-priced copy was made from.")
    offering: Offering | None = Field(default=None, description="The cloud offering that prices this copy.")
    startup_s: float = Field(default=0.0, ge=0, description="One-time cost per machine: model load and warm-up.")
    tile_overhead_s: float = Field(default=0.0, ge=0, description="Fixed wall seconds per tile (I/O, commit).")
    overhead_source: str | None = Field(default=None, description="Where startup_s and tile_overhead_s come from.")
    measured_on: dict[str, str] | None = Field(default=None, description="What `bench --calibrate` saw.")
    timings: list[Timing] = Field(default_factory=list)

    def timing(self, model: str, precision: str) -> Timing | None:
        """The timing for a model and precision, or None when this profile has none."""
        for t in self.timings:
            if t.model == model and t.precision == precision:
                return t
        return None

    def precisions(self, model: str) -> list[str]:
        """Precisions this profile has a timing for, for one model."""
        return [t.precision for t in self.timings if t.model == model]

    def with_prices(self, usd_per_hour: float | None = None, usd_per_hour_spot: float | None = None) -> Profile:
        """A copy with the given prices replacing the stored ones (None keeps the stored price)."""
        update: dict[str, Any] = {}
        if usd_per_hour is not None:
            update.update(usd_per_hour=usd_per_hour, price_source="given on the command line", price_date=None)
        if usd_per_hour_spot is not None:
            update["usd_per_hour_spot"] = usd_per_hour_spot
        return self.model_copy(update=update)


class ProfileFile(BaseModel):
    """A profiles file: `profiles: [...]`."""

    model_config = ConfigDict(extra="forbid")

    profiles: list[Profile]


def _parse(text: str, where: str) -> list[Profile]:
    """Profiles from YAML or JSON text; ConfigError naming `where` and the bad key."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: not YAML or JSON ({exc})") from exc
    if isinstance(raw, list):
        raw = {"profiles": raw}
    try:
        parsed = ProfileFile.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, where)) from exc
    names = [p.name for p in parsed.profiles]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"{where}: profile names repeated: {', '.join(dupes)}")
    return resolve_projections(parsed.profiles)


def project(base: Profile, target: Profile) -> Profile:
    """`target` with its timings computed from `base`'s by `target.projection` (the formula in `Projection`)."""
    proj, sheet, base_sheet = target.projection, target.datasheet, base.datasheet
    if proj is None or sheet is None or base_sheet is None:
        raise ConfigError(f"profile {target.name}: a projection needs a projection, its datasheet and the base's datasheet")
    if base.basis != "measured":
        raise ConfigError(f"profile {target.name}: projected from {base.name}, which is {base.basis}, not measured")
    timings: list[Timing] = []
    for precision, base_precision in proj.precisions.items():
        if precision not in sheet.peak_tflops or base_precision not in base_sheet.peak_tflops:
            raise ConfigError(f"profile {target.name}: no datasheet peak for {precision} (or the base's {base_precision})")
        compute = base_sheet.peak_tflops[base_precision] / sheet.peak_tflops[precision]
        memory = base_sheet.bandwidth_gbs / sheet.bandwidth_gbs
        share = proj.compute_share.get(base_precision)
        if share is None or not 0 < share <= 1:
            raise ConfigError(f"profile {target.name}: compute_share for {base_precision} must be in (0, 1]")
        factor = (share * compute + (1 - share) * memory) / proj.efficiency
        for t in base.timings:
            if t.precision != base_precision:
                continue
            formula = (f"projected: {base.name} {t.model} {base_precision} x ({share:g} x {compute:.3f} peak "
                       f"+ {1 - share:g} x {memory:.3f} bandwidth) / efficiency {proj.efficiency:g} = x{factor:.2f}")
            timings.append(t.model_copy(update={"precision": precision, "seconds": t.seconds * factor,
                                                "fixed_s": t.fixed_s * factor, "source": formula}))
    update: dict[str, Any] = {"timings": timings}
    if not target.startup_s:
        update["startup_s"] = base.startup_s
    if not target.overhead_source:
        update["overhead_source"] = f"start-up as {base.name}'s ({base.overhead_source or 'measured'})"
    return target.model_copy(update=update)


def resolve_projections(profiles: list[Profile]) -> list[Profile]:
    """Every profile with a `projection` gets its timings computed from its (measured) base in the same list."""
    by_name = {p.name: p for p in profiles}
    out: list[Profile] = []
    for p in profiles:
        if p.projection is not None:
            base = by_name.get(p.projection.base)
            if base is None:
                raise ConfigError(f"profile {p.name}: projected, but its base profile is not in the same file")
            p = project(base, p)
        out.append(p)
    return out


def builtin_profiles() -> list[Profile]:
    """The profiles shipped with the package: the measured H200, cards projected from it, upstream's published figures."""
    text = resources.files("tessera_pipeline.plan").joinpath(BUILTIN_FILE).read_text()
    return _parse(text, f"built-in {BUILTIN_FILE}")


def load_profiles(path: str | Path) -> list[Profile]:
    """Profiles from a user's YAML/JSON file (the shape of the built-in file, or `bench --calibrate`'s)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read profiles ({exc.strerror or exc})") from exc
    return _parse(text, str(path))


def merge_profiles(base: Iterable[Profile], extra: Iterable[Profile]) -> list[Profile]:
    """`base` with `extra` added; a profile in `extra` replaces a base profile of the same name."""
    merged = {p.name: p for p in base}
    for p in extra:
        if p.name in merged:
            log.info("profile %s: replaced by the one from the profiles file", p.name)
        merged[p.name] = p
    return list(merged.values())


def dump_profiles(profiles: Iterable[Profile]) -> str:
    """YAML text of a profiles file (what `bench --calibrate` writes and `load_profiles` reads)."""
    data = {"profiles": [p.model_dump(exclude_none=True) for p in profiles]}
    return yaml.safe_dump(data, sort_keys=False, width=120)


def parse_assignments(pairs: Iterable[str], what: str, *, as_int: bool = False) -> dict[str, float]:
    """`NAME=VALUE` flags (quota, price) into a dict; ArgumentError for a malformed one."""
    out: dict[str, float] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise ArgumentError(f"{what} needs NAME=VALUE, got {pair!r}")
        try:
            number = int(value) if as_int else float(value)
        except ValueError as exc:
            raise ArgumentError(f"{what} {name}: {value!r} is not a{'n integer' if as_int else ' number'}") from exc
        if number < 0:
            raise ArgumentError(f"{what} {name}: must not be negative, got {value}")
        out[name.strip()] = number
    return out


def find_profile(profiles: Iterable[Profile], key: str) -> Profile:
    """The profile named `key` (or whose machine is `key`, or the first, cheapest, table-priced copy of profile `key`);
    ArgumentError listing the names otherwise."""
    profiles = list(profiles)
    for p in profiles:
        if key in (p.name, p.machine, p.family):
            return p
    raise ArgumentError(f"no profile named {key!r}; profiles: {', '.join(p.name for p in profiles)}")


def price_profiles(profiles: Iterable[Profile], table: PriceTable) -> list[Profile]:
    """Each profile that asks for table prices and has none of its own, once per offering of its class; others as they are.

    A priced copy's machine price is the instance's divided by the machines it holds (`Offering.units`).
    """
    out: list[Profile] = []
    for p in profiles:
        own = p.usd_per_hour is not None or p.usd_per_hour_spot is not None
        offerings = table.for_class(p.hw_class) if p.price_from_table and not own else []
        if not offerings:
            out.append(p)
            continue
        for o in offerings:
            spot = None if o.spot is None else o.spot / o.units
            cited = f"{o.cloud} {o.instance} ({o.accelerator}, {o.region}): {table.cite(o)}"
            if o.spot is not None and o.spot_source:
                cited += f"; spot: {table.cite(o, spot=True)}"
            out.append(p.model_copy(update={"name": offering_name(p.name, o), "machine": o.instance, "family": p.name,
                                            "offering": o, "usd_per_hour": o.on_demand / o.units,
                                            "usd_per_hour_spot": spot, "price_source": cited,
                                            "price_date": table.sources[o.source].date}))
    return out
