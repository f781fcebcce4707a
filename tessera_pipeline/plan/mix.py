"""The cheapest mix: priced options (profile, precision, pricing, quota) and the cheapest fleet of them for a deadline.

Types are filled cheapest per tile first, each up to its quota (see `cost` for why a greedy fill is
optimal up to the rounding of the last type's machine count); a profile priced per offering of a
price table rents whole instances and shares one quota among its offerings.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

from tessera_pipeline.errors import ArgumentError
from tessera_pipeline.plan.cost import (
    SECONDS_PER_DAY,
    Fleet,
    Option,
    Work,
    fleet_estimate,
    machine_rate,
    policy_precision,
    run_precision,
)
from tessera_pipeline.plan.profiles import Profile, find_profile


def build_options(
    profiles: Iterable[Profile],
    model: str,
    *,
    quotas: Mapping[str, int] | None = None,
    spot: bool = False,
    overrides: Mapping[str, str] | None = None,
    bases: Iterable[str] = ("measured", "projected"),
    evictions_per_hour: float = 0.0,
) -> list[Option]:
    """The priced options of the mix: each profile at its run precision, on demand (and spot when asked).

    `quotas` maps a profile name or machine (`NAME`, or `NAME:spot` for spot) to a machine count;
    a type not named is unlimited, and a profile priced per offering shares its quota among them. A spot quota brings that type's spot option in even without
    `spot`. Profiles without a price, without a timing at the run's precision for `model`, or of a
    basis not in `bases` (published figures are upstream's code, not this pipeline) are left out.
    `overrides` maps a hardware class to the precision a run config sets for it.
    """
    quotas = dict(quotas or {})
    allowed = set(bases)
    known: set[str] = set()
    options: list[Option] = []
    for profile in profiles:
        precision = policy_precision(profile, model, overrides)
        if precision is None or profile.basis not in allowed:
            continue
        for pricing in ("on-demand", "spot"):
            suffix = "" if pricing == "on-demand" else ":spot"
            names = [n + suffix for n in (profile.name, profile.machine, profile.family) if n]
            known.update(names)
            key = next((n for n in names if n in quotas), None)
            quota = None if key is None else int(quotas[key])
            wanted = pricing == "on-demand" or spot or quota is not None
            rate = evictions_per_hour if pricing == "spot" else 0.0
            option = Option(profile, precision, pricing, quota, rate, key)  # type: ignore[arg-type]
            if wanted and option.usd_per_hour is not None and quota != 0:
                options.append(option)
    unknown = sorted(set(quotas) - known)
    if unknown:
        raise ArgumentError(f"--quota names no profile the mix may use (a {model} timing at the run's precision, "
                            f"basis {'/'.join(sorted(allowed))}): {', '.join(unknown)}")
    return options


def fleet_from_counts(profiles: Sequence[Profile], model: str, counts: Mapping[str, int],
                      overrides: Mapping[str, str] | None = None, evictions_per_hour: float = 0.0) -> list[tuple[Option, int]]:
    """A fixed fleet from `NAME=N` / `NAME:spot=N` counts, each profile at its run precision (unpriced allowed)."""
    fleet: list[tuple[Option, int]] = []
    for key, count in counts.items():
        name, _, suffix = key.partition(":")
        if suffix not in ("", "spot"):
            raise ArgumentError(f"--machines {key}: use NAME=N or NAME:spot=N")
        profile = find_profile(profiles, name)
        precision = policy_precision(profile, model, overrides)
        if precision is None:
            raise ArgumentError(f"--machines {key}: profile {profile.name} has no {model} timing at the run's precision "
                                f"{run_precision(profile.hw_class, overrides)} (a run config's node_types can set another)")
        pricing = "spot" if suffix else "on-demand"
        rate = evictions_per_hour if suffix else 0.0
        fleet.append((Option(profile, precision, pricing, None, rate), int(count)))  # type: ignore[arg-type]
    return fleet


def cheapest_mix(work: Work, options: Sequence[Option], model: str, deadline_days: float) -> Fleet:
    """The cheapest fleet of the options that finishes the work within the deadline, within quotas."""
    if deadline_days <= 0:
        raise ArgumentError("--deadline must be more than 0 days")
    if not options:
        return Fleet(items=[], wall_s=0.0, hours=0.0, usd_total=None, deadline_days=deadline_days,
                     meets_deadline=False, note="no priced profile with a timing for this model")
    deadline_s = deadline_days * SECONDS_PER_DAY

    def usd_per_tile(option: Option) -> float:
        """What one tile costs under this option: the greedy order."""
        return (option.usd_per_hour or 0.0) / 3600.0 / machine_rate(work, option, model)

    chosen: list[tuple[Option, int]] = []
    tiles_left = float(work.tiles)
    left = {o.quota_key: o.quota for o in options if o.quota_key is not None and o.quota is not None}
    for option in sorted(options, key=usd_per_tile):
        budget = deadline_s - option.profile.startup_s
        per_tile = 1.0 / machine_rate(work, option, model)
        if budget < per_tile:
            continue
        per_machine = budget / per_tile
        units = option.profile.offering.units if option.profile.offering else 1
        wanted = units * math.ceil(tiles_left / per_machine / units - 1e-9)  # whole instances: every GPU rented works
        n = wanted if option.quota_key not in left else min(wanted, left[option.quota_key])
        if n <= 0:
            continue
        if option.quota_key in left:
            left[option.quota_key] -= n
        chosen.append((option, n))
        tiles_left -= n * per_machine
        if tiles_left <= 0:
            break
    fleet = fleet_estimate(work, chosen, model)
    meets = tiles_left <= 0 and fleet.wall_s <= deadline_s * (1 + 1e-9)
    note = "" if meets else "the quotas cannot finish the work by the deadline: this is the fastest fleet they allow"
    return fleet.model_copy(update={"deadline_days": deadline_days, "meets_deadline": meets, "note": note})
