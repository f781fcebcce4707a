"""The whole bill of a run beyond machine time: output storage (a year by default), requests, input egress and spot evictions.

Every quantity here is a stated assumption with its source (`Assumptions`), so `plan --json` can carry
them beside the figures they make. Prices default to AWS S3 list prices (us-east-1); override them
for another store or region.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from tessera_pipeline.plan.cost import Fleet, Work

GB = 1e9
S3_PRICING = "AWS S3 pricing page (aws.amazon.com/s3/pricing), S3 Standard, us-east-1"


class Assumptions(BaseModel):
    """What the bill assumes beyond the profiles: bytes, requests and prices per unit, each with its source."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    output_bytes_per_pixel: float = Field(default=118.7, gt=0)
    output_bytes_source: str = ("measured: a realistic 1126 x 690 tile written by the store (int8 128-d + float32 scale, "
                                "compressed, checksums and marker included), 2026-11-28")
    output_objects_per_tile: int = Field(default=16, ge=0)
    output_objects_source: str = "measured: objects one tile's write creates in the store (chunks, metadata, marker)"
    input_bytes_per_pixel: float = Field(default=1857.0, gt=0)
    input_bytes_source: str = ("measured: the d-pixel files of a synthetic tile in upstream's layout (91 S2 dates, "
                               "31 + 30 S1 dates), 2026-11-28")
    input_objects_per_tile: int = Field(default=8, ge=0)
    input_objects_source: str = "measured: files of one d-pixel tile (bands, masks, doys, SAR x 4, roi.tiff)"
    storage_usd_per_gb_month: float = Field(default=0.023, ge=0)
    put_usd_per_1000: float = Field(default=0.005, ge=0)
    get_usd_per_1000: float = Field(default=0.0004, ge=0)
    egress_usd_per_gb: float = Field(default=0.02, ge=0)
    price_source: str = S3_PRICING + "; egress: inter-region data transfer out of S3"
    storage_months: float = Field(default=12.0, ge=0, description="Months of output storage the bill counts.")
    input_region: str | None = None
    compute_region: str | None = None
    evictions_per_hour: float = Field(default=0.05, ge=0)
    evictions_source: str = ("assumed: one eviction per 20 machine-hours (no per-size rate is published; AWS's Spot "
                             "advisor gives monthly interruption bands); each loses half a tile and a start-up")

    @property
    def egress(self) -> bool:
        """True when inputs are read from another region than the one that computes (as given, not per offering)."""
        return bool(self.input_region and self.compute_region and self.input_region != self.compute_region)

    def egress_share(self, fleet: Fleet, tiles: int) -> float:
        """Share of the tiles whose inputs cross regions: those done by machines of an offering (or, without one,
        of `compute_region`) in another region than `input_region`; 0 when the input region is not given."""
        if not self.input_region or not tiles:
            return 0.0
        away = sum(i.tiles for i in fleet.items if (i.region or self.compute_region or self.input_region) != self.input_region)
        return min(away / tiles, 1.0)


class Bill(BaseModel):
    """A run's costs by kind: compute (machine time, evictions included and shown apart), storage per month, requests, egress."""

    compute_usd: float | None
    eviction_usd: float | None
    storage_tb: float
    storage_usd_per_month: float
    storage_months: float
    storage_usd: float
    put_requests: int
    get_requests: int
    requests_usd: float
    input_tb: float
    egress_usd: float
    total_usd: float | None
    note: str


def bill(work: Work, fleet: Fleet, assumptions: Assumptions) -> Bill:
    """The full bill of running `work` on `fleet`: compute, `storage_months` of storage, requests, egress across regions."""
    stored_gb = work.pixels * assumptions.output_bytes_per_pixel / GB
    input_gb = work.pixels * assumptions.input_bytes_per_pixel / GB
    puts = work.tiles * assumptions.output_objects_per_tile
    gets = work.tiles * assumptions.input_objects_per_tile
    requests = puts * assumptions.put_usd_per_1000 / 1000 + gets * assumptions.get_usd_per_1000 / 1000
    share = assumptions.egress_share(fleet, work.tiles)
    egress = input_gb * share * assumptions.egress_usd_per_gb
    storage = stored_gb * assumptions.storage_usd_per_gb_month
    kept = storage * assumptions.storage_months
    compute = fleet.usd_total
    eviction = None if compute is None else sum((i.usd_total or 0.0) * i.eviction_share for i in fleet.items)
    total = None if compute is None else compute + kept + requests + egress
    if not assumptions.input_region:
        where = "no input region given: no egress (give --input-region)"
    elif share:
        where = f"inputs in {assumptions.input_region}: egress charged on the {100 * share:.0f} % of tiles computed elsewhere"
    else:
        where = f"inputs in {assumptions.input_region}, computed there: no egress"
    return Bill(compute_usd=compute, eviction_usd=eviction, storage_tb=stored_gb / 1000, storage_usd_per_month=storage,
                storage_months=assumptions.storage_months, storage_usd=kept, put_requests=puts, get_requests=gets,
                requests_usd=requests, input_tb=input_gb / 1000, egress_usd=egress, total_usd=total,
                note=f"total = compute + {assumptions.storage_months:g} months of storage + requests + egress; {where}")
