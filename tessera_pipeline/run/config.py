"""The run configuration: one validated pydantic model, from flags or a YAML/JSON file, saved into the store.

Unknown keys and bad values are one-line `ConfigError`s naming the key, so a typo in run.yaml fails
before a cluster is started rather than being silently ignored for weeks.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from tessera_pipeline.errors import ConfigError, format_validation_error
from tessera_pipeline.precision import Precision as PrecisionName


class NodeTypePolicy(BaseModel):
    """Overrides for one hardware class (e.g. `cuda-T4`, `cpu-amx`); unset fields keep the built-in policy."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    precision: PrecisionName | None = None
    batch_size: int | None = Field(default=None, ge=1)
    cores_per_actor: int | None = Field(default=None, ge=1, description="CPU classes: physical cores per actor.")
    device: str | None = Field(default=None, description="Force the torch device (e.g. 'cpu' to simulate a GPU class).")
    enabled: bool = True
    max_actors: int | None = Field(default=None, ge=0, description="Ask Ray for up to this many actors of the class by "
                                   "its `tessera_class:<class>` resource (Ray places them; pending ones are demand "
                                   "the autoscaler starts nodes for); unset: actors per node as nodes appear")
    cpus_per_actor: float | None = Field(default=None, gt=0, description="Logical CPUs each actor of the class asks "
                                         "of Ray when placed by demand (default: 2 per physical core for CPU classes, "
                                         "1 for GPU classes)")


class RegionConfig(BaseModel):
    """Which tiles: exactly one of bbox, region_file, tiles, global."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bbox: str | None = None
    region_file: str | None = None
    tiles: str | None = None
    global_: bool = Field(default=False, alias="global")
    landmask: str = "globe"
    allow_wide_bbox: bool = Field(default=False, description="Accept a bbox wider than 180 degrees (W > E wraps)")

    @model_validator(mode="after")
    def _one_selector(self) -> RegionConfig:
        chosen = [n for n, v in (("bbox", self.bbox), ("region_file", self.region_file),
                                 ("tiles", self.tiles), ("global", self.global_)) if v]
        if len(chosen) > 1:
            raise ValueError(f"choose one region selector, got {' and '.join(chosen)}")
        return self

    @property
    def given(self) -> bool:
        """True when a selector was given."""
        return bool(self.bbox or self.region_file or self.tiles or self.global_)


class RunConfig(BaseModel):
    """Everything a run needs; saved verbatim (resolved) under the store's `_run/` so it can be resumed."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    input: str = Field(description="d-pixel root, local or s3://, laid out ROOT/{year}/{tile}/")
    store: str = Field(description="Zarr embedding store, local path or s3://")
    checkpoint: str = Field(description="Checkpoint path, s3:// or https:// URL")
    year: int = Field(ge=1000, le=9999)
    region: RegionConfig = RegionConfig()
    model: Literal["v1.0", "v1.1"] | None = None
    data_source: Literal["mpc", "aws"] | None = None
    address: str | None = Field(default=None, description="'auto' joins a running Ray cluster; none starts a local one")
    trust_checkpoint: bool = Field(default=False, description="Allow pickled objects in the checkpoint (command line "
                                   "only: never saved in the store)")
    seed: int = 0
    window: int = Field(default=2, ge=1, le=16, description="Tiles in flight per actor (one encoding, the rest prefetching)")
    max_attempts: int = Field(default=4, ge=1, le=100, description="Tries per tile for transient failures")
    retry_backoff_s: float = Field(default=5.0, ge=0.0)
    tile_timeout_s: float = Field(default=4 * 3600.0, gt=0.0, description="A tile running longer is killed and retried")
    refresh_s: float = Field(default=10.0, gt=0.0, description="How often new or lost nodes are looked for")
    progress_every_s: float = Field(default=30.0, gt=0.0, description="Progress snapshots to the store and plain logs")
    local_cpus: int | None = Field(default=None, ge=1, description="CPUs of the local cluster when none is joined")
    quarantine_after: int = Field(default=3, ge=1, description="Distinct tiles that failed on one actor and then "
                                  "succeeded elsewhere before the actor is quarantined (those tiles are refunded)")
    max_pause_s: float = Field(default=300.0, gt=0.0, description="Longest pause between probes while the store or "
                               "inputs fail a probe from the driver (an outage); pauses double from 5 s up to this")
    max_unrenewed_s: float = Field(default=1800.0, gt=0.0, description="How long a driver that cannot renew its lease "
                                   "(the store unreachable from it) waits before it stops; its commits are refused "
                                   "by the store from one lease TTL on")
    lease_ttl_s: float = Field(default=60.0, gt=0.0, description="The driver's lease on the store: heartbeat every "
                               "third of this; a driver silent for longer can be taken over with --takeover")
    node_types: dict[str, NodeTypePolicy] = Field(default_factory=dict)
    max_actors: int | None = Field(default=None, ge=1, description="Fleet-wide cap on the actors asked of Ray by demand "
                                   "(the sum of the classes' max_actors when unset)")
    demand_memory: bool = Field(default=True, description="Actors asked of Ray by demand also ask for their memory; "
                                "off where the autoscaler's node types do not declare memory")

    @field_validator("node_types")
    @classmethod
    def _known_classes(cls, value: dict[str, NodeTypePolicy]) -> dict[str, NodeTypePolicy]:
        for name in value:
            if not name.startswith(("cpu-", "cuda-")):
                raise ValueError(f"unknown hardware class {name!r} (expected cpu-... or cuda-..., e.g. cuda-T4, cpu-amx)")
        return value

    def to_record(self) -> dict[str, Any]:
        """Plain JSON for the store: the run's settings, never code or trust decisions (`NOT_RECORDED`)."""
        return self.model_dump(mode="json", by_alias=True, exclude=set(NOT_RECORDED))


#: Keys a run record never holds: what code runs and what is trusted are decided by whoever runs the command.
NOT_RECORDED = ("trust_checkpoint",)
#: Keys older stores' run records may hold that are no longer read from the store (code paths, trust flags).
IGNORED_RECORD_KEYS = ("processor", "processor_options", "trust_checkpoint")


def build_config(values: dict[str, Any], *, source: str = "run config") -> RunConfig:
    """Validate a plain dict into a RunConfig, raising a one-line ConfigError."""
    try:
        return RunConfig.model_validate(values)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from exc


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a run config file (YAML or JSON) into a dict, without validating it."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read ({exc.strerror or exc})") from exc
    try:
        if p.suffix == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as exc:  # yaml and json raise many kinds; all mean "not a config file"
        raise ConfigError(f"{p}: not valid YAML/JSON ({str(exc).splitlines()[0]})") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping of keys to values, found {type(data).__name__}")
    return data


def merge(file_values: dict[str, Any], flag_values: dict[str, Any]) -> dict[str, Any]:
    """Flags given on the command line override the file; region flags replace the file's region whole."""
    merged = dict(file_values)
    for key, value in flag_values.items():
        if value is None:
            continue
        if key == "region":
            if value:
                merged["region"] = {**{"landmask": dict(merged.get("region") or {}).get("landmask", "globe")}, **value}
            continue
        merged[key] = value
    return merged
