"""The answer per cloud: the cheapest row and the cheapest fleet of each cloud, on demand and on spot.

Rows and options priced by the price table carry their cloud (`Profile.offering`); profiles priced
otherwise (a published post's quote, `--price`) belong to no cloud and count only overall.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from tessera_pipeline.plan.cost import Fleet, Option, PlanRow, Work
from tessera_pipeline.plan.mix import cheapest_mix

PRICINGS = ("on-demand", "spot")


def _cloud(option: Option) -> str | None:
    """The cloud an option's price comes from, or None for a price not from the table."""
    return option.profile.offering.cloud if option.profile.offering else None


def cheapest_rows(rows: Iterable[PlanRow], bases: Sequence[str]) -> list[dict[str, Any]]:
    """Per cloud and pricing, the row of the run's precision (basis in `bases`) with the lowest total for the work."""
    best: dict[tuple[str, str], tuple[float, PlanRow]] = {}
    for r in rows:
        if not r.policy or r.basis not in bases or r.cloud is None:
            continue
        for pricing, total in zip(PRICINGS, (r.usd_total, r.usd_total_spot)):
            key = (r.cloud, pricing)
            if total is not None and (key not in best or total < best[key][0]):
                best[key] = (total, r)
    out = []
    for (cloud, pricing), (total, r) in sorted(best.items()):
        price = r.usd_per_hour if pricing == "on-demand" else r.usd_per_hour_spot
        out.append({"cloud": cloud, "pricing": pricing, "profile": r.profile, "family": r.family, "instance": r.instance,
                    "region": r.region, "basis": r.basis, "precision": r.precision, "hours": r.hours,
                    "usd_per_hour": price, "usd_total": total, "price_source": r.price_source, "price_date": r.price_date})
    return out


def cheapest_offerings(rows: Sequence[PlanRow]) -> list[tuple[PlanRow, int]]:
    """Per profile (family) and precision, its cheapest row on demand (else on spot) and how many offerings it has."""
    groups: dict[tuple[str, str], list[PlanRow]] = {}
    for r in rows:
        groups.setdefault((r.family or r.profile, r.precision), []).append(r)
    out = []
    for group in groups.values():
        best = min(group, key=lambda r: (r.usd_total is None, r.usd_total or 0.0, r.usd_total_spot or 0.0))
        out.append((best, len(group)))
    return sorted(out, key=lambda x: (x[0].usd_total is None, x[0].usd_total or 0.0, x[0].hours))


def mixes_by_cloud(work: Work, options: Sequence[Option], model: str, deadline_days: float) -> dict[tuple[str, str], Fleet]:
    """The cheapest fleet for the deadline from each cloud's options alone, on demand only and on spot only."""
    clouds = sorted({c for c in (_cloud(o) for o in options) if c is not None})
    out: dict[tuple[str, str], Fleet] = {}
    for cloud in clouds:
        for pricing in PRICINGS:
            chosen = [o for o in options if _cloud(o) == cloud and o.pricing == pricing]
            if chosen:
                out[(cloud, pricing)] = cheapest_mix(work, chosen, model, deadline_days)
    return out
