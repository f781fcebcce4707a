"""Cloud prices as data: the offerings (instance, GPUs, region, on-demand and spot $/h, source and date) of `prices.yaml`.

A profile that asks for it (`price_from_table`) and carries no price of its own is priced once per
offering of its hardware class: `plan` shows each as its own row and lets the cheapest fleet choose
among them, naming the cloud, instance, source and date of every price.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tessera_pipeline.errors import ConfigError, format_validation_error
from tessera_pipeline.precision import CPU_CORES_PER_ACTOR

BUILTIN_PRICES = "prices.yaml"


class PriceSource(BaseModel):
    """Where prices were read: the catalog (repository, file, commit) and the date it says it was generated, if any."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    text: str = Field(min_length=1)
    date: str | None = None


class Offering(BaseModel):
    """One cloud instance that carries a hardware class, with its list prices and their source (as in `prices.yaml`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    hw_class: str = Field(min_length=1)
    accelerator: str = Field(min_length=1)
    cloud: str = Field(min_length=1)
    instance: str = Field(min_length=1)
    gpus: int | None = Field(default=None, ge=1)
    cores: int | None = Field(default=None, ge=1, description="Physical cores, where the source states them.")
    region: str = Field(min_length=1)
    on_demand: float = Field(gt=0, description="Instance $/h, on demand.")
    spot: float | None = Field(default=None, gt=0, description="Instance $/h on spot (the high end of a range).")
    spot_low: float | None = Field(default=None, gt=0)
    source: str = Field(min_length=1)
    spot_source: str | None = None

    @property
    def units(self) -> int:
        """Profile machines one instance holds: its GPUs, or its 8-core CPU actors (1 where its cores are not stated)."""
        if self.gpus is not None:
            return self.gpus
        return 1 if self.cores is None else self.cores // CPU_CORES_PER_ACTOR


class PriceTable(BaseModel):
    """A prices file: the sources by key, and the offerings citing them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sources: dict[str, PriceSource]
    offerings: list[Offering]

    @model_validator(mode="after")
    def _cited(self) -> PriceTable:
        """Every offering cites a source the file lists."""
        for o in self.offerings:
            for key in (o.source, o.spot_source):
                if key is not None and key not in self.sources:
                    raise ValueError(f"offering {o.cloud} {o.instance}: source {key!r} is not under sources")
        return self

    def cite(self, offering: Offering, spot: bool = False) -> str:
        """The source text and date of an offering's on-demand (or spot) price."""
        key = offering.spot_source if spot and offering.spot_source else offering.source
        source = self.sources[key]
        return f"{source.text}, {source.date or 'undated'}"

    def for_class(self, hw_class: str) -> list[Offering]:
        """Offerings that hold at least one machine of this class, cheapest per machine first."""
        found = [o for o in self.offerings if o.hw_class == hw_class and o.units >= 1]
        return sorted(found, key=lambda o: o.on_demand / o.units)


def load_prices(path: str | Path | None = None) -> PriceTable:
    """The built-in price table, or a user's file of the same shape; ConfigError naming the file and the bad key."""
    where = str(path) if path is not None else f"built-in {BUILTIN_PRICES}"
    try:
        text = (Path(path).read_text() if path is not None
                else resources.files("tessera_pipeline.plan").joinpath(BUILTIN_PRICES).read_text())
        raw = yaml.safe_load(text)
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{where}: cannot read prices ({exc})") from exc
    try:
        return PriceTable.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, where)) from exc


def offering_name(profile: str, offering: Offering) -> str:
    """The name of a profile priced by one offering: `h100@runpod/1x_H100_SECURE`."""
    return f"{profile}@{offering.cloud.lower()}/{offering.instance}"
