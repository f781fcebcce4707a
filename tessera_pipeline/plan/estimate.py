"""Hours a run's pixels would take per hardware class, from the planning profiles (measured, projected, published).

`run --dry-run` shows these before anything starts; `plan` does the full cost study.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from tessera_pipeline.plan.cost import policy_precision
from tessera_pipeline.plan.profiles import builtin_profiles, load_profiles, merge_profiles


@dataclass(frozen=True)
class ClassEstimate:
    """One profile's estimate: machine-hours for the plan at the class's run precision."""

    profile: str
    hw_class: str
    basis: str
    precision: str
    machine_hours: float


def estimate_hours(pixels: int, model: str, overrides: Mapping[str, str] | None = None,
                   profiles_file: str | None = None) -> list[ClassEstimate]:
    """Machine-hours per profile for `pixels` at each class's run precision (`overrides`: class -> precision of a
    run config); profiles without a timing at that precision are left out, as `plan` leaves them out of fleets."""
    profiles = builtin_profiles()
    if profiles_file:
        profiles = merge_profiles(profiles, load_profiles(profiles_file))
    out: list[ClassEstimate] = []
    for profile in profiles:
        precision = policy_precision(profile, model, overrides)
        timing = profile.timing(model, precision) if precision else None
        if timing is None or precision is None:
            continue
        out.append(ClassEstimate(profile.name, profile.hw_class, profile.basis, precision,
                                 pixels * timing.seconds_per_pixel / 3600))
    return out
