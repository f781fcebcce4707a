"""What `plan --json` prints: the work, every assumption and source, the rows, and each fleet with its bill."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from tessera_pipeline.plan.bill import Assumptions, bill
from tessera_pipeline.plan.clouds import cheapest_rows
from tessera_pipeline.plan.cost import Fleet, PlanRow, Work
from tessera_pipeline.plan.profiles import Profile


def profile_sources(profile: Profile) -> dict[str, Any]:
    """Where a profile's figures come from: its basis, price, overheads, datasheet, projection and each timing's source."""
    return {
        "machine": profile.machine,
        "hw_class": profile.hw_class,
        "basis": profile.basis,
        "description": profile.description,
        "price_source": profile.price_source,
        "price_date": profile.price_date,
        "offering": profile.offering.model_dump() if profile.offering else None,
        "overhead_source": profile.overhead_source,
        "datasheet": profile.datasheet.model_dump() if profile.datasheet else None,
        "projection": profile.projection.model_dump() if profile.projection else None,
        "timings": {f"{t.model} {t.precision}": {"source": t.source, "seconds": t.seconds, "pixels": t.pixels,
                                                  "tokens_per_pixel": t.tokens_per_pixel, "derivation": t.derivation}
                    for t in profile.timings},
    }


def fleet_report(work: Work, fleet: Fleet, assumptions: Assumptions) -> dict[str, Any]:
    """A fleet's items, wall time and machine cost, with its full bill."""
    return {**fleet.model_dump(), "wall_days": fleet.wall_days,
            "machines": sum(i.machines for i in fleet.items), "bill": bill(work, fleet, assumptions).model_dump()}


def plan_report(work: Work, model: str, profiles: Iterable[Profile], rows: Sequence[PlanRow], assumptions: Assumptions, *,
                fleet: Fleet | None = None, mix: Fleet | None = None,
                fleet_bases: Sequence[str] = ("measured", "projected"),
                mixes: Mapping[tuple[str, str], Fleet] | None = None) -> dict[str, Any]:
    """The whole plan as plain data: what `--json` prints and the text tables are drawn from.

    `mixes` maps (cloud or "all", pricing) to the cheapest fleet of that cloud's offerings at that pricing alone.
    """
    return {
        "model": model,
        "work": {"tiles": work.tiles, "pixels": work.pixels, "mean_pixels_per_tile": work.mean_pixels,
                 "source": work.source},
        "assumptions": {
            **assumptions.model_dump(),
            "egress_charged": assumptions.egress,
            "tokens_per_pixel": work.tokens_per_pixel if work.tokens_per_pixel is not None else "as each profile was timed",
            "tokens_per_pixel_note": "time is linear in observations per pixel; a row's tokens_factor is the assumed "
                                     "mean over its timed tile's (1 where either is unknown)",
            "fleet_bases": list(fleet_bases),
            "precision": "the precision policy's per class (tessera_pipeline.precision) or the run config's; "
                         "rows with policy false are options",
        },
        "sources": {p.name: profile_sources(p) for p in profiles},
        "rows": [r.model_dump() for r in rows],
        "fleet": fleet_report(work, fleet, assumptions) if fleet is not None else None,
        "mix": fleet_report(work, mix, assumptions) if mix is not None else None,
        "cheapest_by_cloud": cheapest_rows(rows, fleet_bases),
        "mixes": [{"cloud": cloud, "pricing": pricing, **fleet_report(work, f, assumptions)}
                  for (cloud, pricing), f in (mixes or {}).items()],
    }
