"""The store's records as typed models, mirroring docs/formats.md field by field.

The commit marker (section 4), the root attributes (section 2), the run record, failure record
and progress snapshot (section 9) and the manifest row (section 10). Reading is tolerant: keys a
newer or older writer added are kept, not refused, so every store written so far still reads.
Writing is strict: `Record.build` refuses a key the format does not name. The JSON written is
`Record.document()`, the same dict (hence the same bytes) the store wrote before these models.
The model-compatibility rule of a store (`check_model`) lives here too.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any, ClassVar, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tessera_pipeline.errors import StoreConflictError, StoreError, format_validation_error
from tessera_pipeline.store import layout

log = logging.getLogger(__name__)

#: Our own attribute prefix. `tessera:` belongs to ucam-eo's registered convention (geotessera writes
#: `tessera:pending_years`); stores written before 2026-11-28 used it for our keys and still read (`modernised`).
PREFIX = "tessera-pipeline:"
LEGACY_PREFIX = "tessera:"
#: The embeddings convention geotessera registers in `zarr_conventions` (its GEOEMB_CONVENTION).
GEOEMB_CONVENTION: dict[str, str] = {
    "uuid": "61c12cc5-0e28-4056-999a-480cf3fb7e4c",
    "name": "geoemb:",
    "description": "Geoembeddings convention for geospatial embedding arrays with model provenance",
    "spec_url": "https://github.com/geo-embeddings/embeddings-zarr-convention/blob/v1/README.md",
    "schema_url": "https://raw.githubusercontent.com/geo-embeddings/embeddings-zarr-convention/refs/tags/v1/schema.json",
}
#: The Sentinel missions every Tessera embedding is computed from (`geoemb:source_data`).
SOURCE_DATA = ["https://sentinel.esa.int/web/sentinel/missions/sentinel-1",
               "https://sentinel.esa.int/web/sentinel/missions/sentinel-2"]


def own(name: str) -> str:
    """One of our attribute keys: `own("model")` is `tessera-pipeline:model`."""
    return PREFIX + name


def modernised(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Attributes with legacy `tessera:` keys read under our prefix (a key present under both keeps ours)."""
    out: dict[str, Any] = {}
    for key, value in attrs.items():
        if key.startswith(LEGACY_PREFIX):
            new = PREFIX + key[len(LEGACY_PREFIX):]
            if new not in attrs:
                out[new] = value
            continue
        out[key] = value
    return out


def geoemb_attributes(model_version: str, dimensions: int, spatial_layout: str, scale_nodata: str) -> dict[str, Any]:
    """The registered `geoemb:` convention entry and attributes, with the values geotessera 0.11.0 writes.

    `spatial_layout` and `scale_nodata` are what differ between our per-tile store ("utm_tiles", NaN) and a
    zone store ("utm_zones", +inf for land not yet filled); `geoemb:model` is geotessera's URL for the version.
    """
    from tessera_pipeline import __version__

    version = model_version[1:] if model_version.startswith("v") else model_version
    return {
        "zarr_conventions": [dict(GEOEMB_CONVENTION)],
        "geoemb:type": "pixel",
        "geoemb:dimensions": dimensions,
        "geoemb:model": f"https://geotessera.org/model/{version}",
        "geoemb:source_data": list(SOURCE_DATA),
        "geoemb:data_type": "int8",
        "geoemb:gsd": 10.0,
        "geoemb:spatial_layout": spatial_layout,
        "geoemb:build_version": f"tessera-pipeline {__version__}",
        "geoemb:quantization": {"method": "per_pixel_scale", "original_dtype": "float32", "quantized_dtype": "int8",
                                "scale": {"type": "array", "array_name": layout.SCALES, "nodata": scale_nodata}},
    }


class Record(BaseModel):
    """A JSON record of the store: extra keys kept on read, refused on write (`build`)."""

    model_config = ConfigDict(extra="allow", populate_by_name=True, protected_namespaces=())

    @classmethod
    def parse(cls, doc: Any, *, where: str, error: type[StoreError] = StoreError, tile: str | None = None) -> Self:
        """Validate a record read from the store; a malformed one is `error` naming `where` and the first bad key."""
        try:
            return cls.model_validate(doc)
        except ValidationError as exc:
            raise error(format_validation_error(exc, where), tile=tile) from exc

    #: True for a record whose extra keys are part of the format (kept verbatim on write too).
    open_keys: ClassVar[bool] = False

    @classmethod
    def build(cls, **fields: Any) -> Self:
        """A record about to be written: every key, nested ones too, must be one the format names (StoreError otherwise)."""
        record = cls.parse(fields, where=f"new {cls.__name__}")
        unknown = record.unknown_keys()
        if unknown:
            raise StoreError(f"new {cls.__name__}: unknown key {unknown[0]!r} (docs/formats.md names every key)")
        return record

    def unknown_keys(self, prefix: str = "") -> list[str]:
        """Dotted names of keys the format does not name, in this record and the records it holds."""
        found = [] if self.open_keys else [f"{prefix}{key}" for key in sorted(self.model_extra or {})]
        for name in type(self).model_fields:
            value = getattr(self, name)
            items = value.items() if isinstance(value, dict) else [("", value)]
            for key, item in items:
                if isinstance(item, Record):
                    found += item.unknown_keys(f"{prefix}{name}.{key}." if key else f"{prefix}{name}.")
        return found

    def document(self) -> dict[str, Any]:
        """The record as the JSON dict the store writes: format names (aliases), fields left unset omitted."""
        return self.model_dump(mode="json", by_alias=True, exclude_unset=True)


# --- root attributes (formats.md section 2) --------------------------------------------------------


class ModelAttrs(Record):
    """`tessera-pipeline:model`: the model description a store was created with (its extra keys kept verbatim)."""

    open_keys = True
    model_version: str
    checkpoint_sha256: str | None
    dimensions: int = 128
    representation_dim: int | None = None
    data_source: str | None = None

    @classmethod
    def normalise(cls, model_attrs: Mapping[str, Any]) -> Self:
        """Check and complete a writer's model description: `version` read as `model_version`, `dimensions` 128 by default."""
        attrs = dict(model_attrs)
        if "model_version" not in attrs and "version" in attrs:
            attrs["model_version"] = attrs.pop("version")
        missing = [k for k in ("model_version", "checkpoint_sha256") if k not in attrs]
        if missing:
            raise StoreError(f"model_attrs lacks {', '.join(missing)}")
        attrs["model_version"] = str(attrs["model_version"])
        attrs.setdefault("dimensions", 128)
        return cls.parse(attrs, where="model_attrs")


class Quantisation(Record):
    """`tessera-pipeline:quantisation`: how embeddings and scales make float vectors."""

    method: Literal["per_pixel_symmetric_int8"] = "per_pixel_symmetric_int8"
    quantized_dtype: str = "int8"
    scale_dtype: str = "float32"
    scale_array: str = layout.SCALES
    dequantise: str = "embeddings.astype(float32) * scales[..., None]"
    scale_nodata: str = "NaN"


class LayoutAttrs(Record):
    """`tessera-pipeline:layout`: where tile groups and commit markers live."""

    tile_group: str = "{year}/{tile}/{version}"
    commit_marker: str = f"{layout.COMMITS_PREFIX}/{{year}}/{{tile}}{layout.MARKER_SUFFIX}"


class RootAttributes(Record):
    """The root group's attributes (`zarr.json`): store format, model, quantisation, layout under our prefix, and the
    registered `geoemb:` convention with the model's provenance.

    Legacy `tessera:` keys are read under our prefix, so a store written with them reads the same.
    """

    store_format: Literal["tessera-store/1"] = Field(alias="tessera-pipeline:store_format")
    model: ModelAttrs = Field(alias="tessera-pipeline:model")
    quantisation: Quantisation | None = Field(default=None, alias="tessera-pipeline:quantisation")
    layout_: LayoutAttrs | None = Field(default=None, alias="tessera-pipeline:layout")
    zarr_conventions: list[dict[str, str]] | None = None
    geoemb_type: str | None = Field(default=None, alias="geoemb:type")
    geoemb_dimensions: int | None = Field(default=None, alias="geoemb:dimensions")
    geoemb_model: str | None = Field(default=None, alias="geoemb:model")
    geoemb_source_data: list[str] | None = Field(default=None, alias="geoemb:source_data")
    geoemb_data_type: str | None = Field(default=None, alias="geoemb:data_type")
    geoemb_gsd: float | None = Field(default=None, alias="geoemb:gsd")
    geoemb_spatial_layout: str | None = Field(default=None, alias="geoemb:spatial_layout")
    geoemb_build_version: str | None = Field(default=None, alias="geoemb:build_version")
    geoemb_quantization: dict[str, Any] | None = Field(default=None, alias="geoemb:quantization")

    @model_validator(mode="before")
    @classmethod
    def _legacy_keys(cls, data: Any) -> Any:
        """A root written with the legacy `tessera:` keys validates as one written now."""
        return modernised(data) if isinstance(data, Mapping) else data

    @classmethod
    def for_model(cls, model_attrs: Mapping[str, Any]) -> Self:
        """The attributes a new store gets for a writer's model description."""
        model = ModelAttrs.normalise(model_attrs)
        return cls.build(**{
            own("store_format"): layout.STORE_FORMAT,
            own("model"): model.document(),
            own("quantisation"): Quantisation().model_dump(),
            own("layout"): LayoutAttrs().model_dump(),
            **geoemb_attributes(model.model_version, model.dimensions, "utm_tiles", "NaN"),
        })


def root_attributes(model_attrs: Mapping[str, Any]) -> dict[str, Any]:
    """The root group's attributes for a writer's model description, as written (docs/formats.md section 2)."""
    return RootAttributes.for_model(model_attrs).document()


def check_model(url: str, have: Mapping[str, Any], want: Mapping[str, Any]) -> None:
    """The model-compatibility rule: refuse another model version, dimension count or data source; warn on
    another checkpoint. `have` is the store's `tessera-pipeline:model`, `want` the writer's (both normalised)."""
    for key in ("model_version", "dimensions", "data_source"):
        if key == "data_source" and (key not in have or key not in want):
            if key in want:
                log.warning("store %s records no data source; cannot check %s against it", url, want[key])
            continue
        if str(have.get(key)) != str(want.get(key)):
            raise StoreConflictError(f"{url} holds {key}={have.get(key)!r}, refusing to add {key}={want.get(key)!r}")
    if have.get("checkpoint_sha256") != want.get("checkpoint_sha256"):
        log.warning(
            "store %s was created with checkpoint %s; tiles written now record checkpoint %s",
            url,
            have.get("checkpoint_sha256"),
            want.get("checkpoint_sha256"),
        )


# --- commit marker (formats.md section 4) ----------------------------------------------------------


class ArrayRecord(Record):
    """One array of a committed version: dtype, shape and the sha256 of its decoded C-order bytes."""

    dtype: str
    shape: list[int]
    sha256: str


class CommitMarker(Record):
    """`_commits/{year}/{tile}.json`: its presence makes the tile complete; it names the version and its checksums."""

    format: Literal["tessera-commit/1"]
    year: int
    tile: str
    version: str
    path: str
    committed_at: str
    epsg: int
    transform: list[float] = Field(min_length=6, max_length=6)
    shape: list[int] = Field(min_length=3, max_length=3)
    checksum_algorithm: str = "sha256"
    arrays: dict[str, ArrayRecord]
    provenance: dict[str, Any] = Field(default_factory=dict)
    store_write_s: float | None = None
    #: The store lease's generation of the driver that dispatched this commit (absent: written unfenced).
    lease_generation: int | None = None


# --- run records (formats.md section 9) ------------------------------------------------------------


class RunCheckpoint(Record):
    """The checkpoint a run encodes with: where it came from and its identity."""

    source: str | None = None
    sha256: str | None = None
    model_version: str | None = None
    data_source: str | None = None


class RunPlan(Record):
    """A run plan's summary: tile and pixel counts, and the order tiles are scheduled in."""

    tiles: int
    pixels: int
    order: str


class RunRecord(Record):
    """`_run/runs/{run_id}/run.json`: settings and identities of a run, never code or trust decisions."""

    format: Literal["tessera-run/1"]
    run_id: str
    kind: Literal["run", "reprocess"] = "run"
    created_at: str | None = None
    config: dict[str, Any] = Field(default_factory=dict)
    checkpoint: RunCheckpoint | None = None
    plan: RunPlan | None = None


class FailureRecord(Record):
    """`_run/failures/{year}/{tile}[.retry].json`: why a tile failed for good (or used up its attempts).

    `year`, `tile` and `failed_at` are always written; a record without them still reads (its key names the tile).
    """

    year: int | None = None
    tile: str | None = None
    failed_at: str | None = None
    kind: Literal["permanent", "exhausted"] = "permanent"
    reason: str
    message: str | None = None
    attempts: int | None = None
    hw_class: str | None = None
    run_id: str | None = None


class ProgressState(Record):
    """The counters a run's driver keeps (run/progress.py's `RunProgress` is one): the snapshot less what it derives.

    Every field but `run_id` has a default, so a snapshot written before a field existed still reads.
    """

    run_id: str
    total: int = 0
    already_complete: int = 0
    complete: int = 0
    failed: int = 0
    inflight: int = 0
    retrying: int = 0
    pixels_total: int = 0
    pixels_done: int = 0
    planned_pixels_done: int = 0
    elapsed_s: float = 0.0
    by_class: dict[str, Any] = Field(default_factory=dict)
    failed_by_reason: dict[str, int] = Field(default_factory=dict)
    retries_by_reason: dict[str, int] = Field(default_factory=dict)
    actors: int = 0
    threads_by_class: dict[str, Any] = Field(default_factory=dict)
    quarantined: int = 0
    paused: bool = False
    pause_reason: str = ""
    given_up_nodes: list[Any] = Field(default_factory=list)
    unwritten_records: int = 0
    checkpoint_loads: int = 0
    checkpoint_transfers: int = 0
    checkpoint_bytes: int = 0
    finished: bool = False


class ProgressSnapshot(ProgressState):
    """`_run/runs/{run_id}/progress.json`: the driver's counters plus what it derives (pending, eta) and when."""

    pending: int = 0
    eta_s: float | None = None
    updated_at: float | None = None


# --- manifest row (formats.md section 10) ----------------------------------------------------------


class BBox(Record):
    """A tile's 0.1 degree cell in lon/lat: the manifest's covering column."""

    xmin: float
    ymin: float
    xmax: float
    ymax: float


class VersionRow(Record):
    """The columns of a manifest row that name a version and its checksums: what `verify --release` reads."""

    year: int
    tile: str
    version: str
    path: str
    height: int
    width: int
    dims: int
    embeddings_sha256: str
    scales_sha256: str

    def version_marker(self) -> dict[str, Any]:
        """The part of a commit marker `TileStore.verify_named` checks (path, version, arrays), from this row."""
        h, w, d = self.height, self.width, self.dims
        return {
            "path": self.path,
            "version": self.version,
            "arrays": {
                layout.EMBEDDINGS: {"dtype": "int8", "shape": [h, w, d], "sha256": self.embeddings_sha256},
                layout.SCALES: {"dtype": "float32", "shape": [h, w], "sha256": self.scales_sha256},
            },
        }


class ManifestRow(VersionRow):
    """One row of a manifest or release: a committed (year, tile) from its marker alone (columns in section 10)."""

    bbox: BBox
    geometry: bytes
    epsg: int
    transform: list[float] = Field(min_length=6, max_length=6)
    raw_bytes: int
    model_version: str | None = None
    checkpoint_sha256: str | None = None
    data_source: str | None = None
    precision: str | None = None
    hardware_class: str | None = None
    device_kind: str | None = None
    pipeline_version: str | None = None
    committed_at: datetime
