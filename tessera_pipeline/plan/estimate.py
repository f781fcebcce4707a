"""Hours a run's pixels would take per hardware class, from the planning profiles (published or calibrated).

`run --dry-run` shows these before anything starts; `plan` does the full cost study.
"""

from __future__ import annotations

from dataclasses import dataclass

from tessera_pipeline.run.config import RunConfig
from tessera_pipeline.run.policy import class_policy


@dataclass(frozen=True)
class ClassEstimate:
    """One profile's estimate: machine-hours for the plan at the class's policy precision."""

    profile: str
    hw_class: str
    precision: str
    machine_hours: float


def estimate_hours(pixels: int, model: str, config: RunConfig, profiles_file: str | None = None) -> list[ClassEstimate]:
    """Machine-hours per profile for `pixels` at each class's precision (else the profile's fastest, as `plan` does)."""
    from tessera_pipeline.plan.profiles import builtin_profiles, load_profiles, merge_profiles

    profiles = builtin_profiles()
    if profiles_file:
        profiles = merge_profiles(profiles, load_profiles(profiles_file))
    from tessera_pipeline.plan.cost import policy_precision

    out: list[ClassEstimate] = []
    for profile in profiles:
        wanted = class_policy(profile.hw_class, config).precision
        precision = policy_precision(profile, model, {profile.hw_class: wanted})
        timing = profile.timing(model, precision) if precision else None
        if timing is None:
            continue
        out.append(ClassEstimate(profile.name, profile.hw_class, precision, pixels * timing.seconds_per_pixel / 3600))
    return out
