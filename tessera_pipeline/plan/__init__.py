"""Cost and time planning: hardware profiles (published or calibrated here) applied to a region's real pixels."""

from tessera_pipeline.plan.cost import (
    Fleet,
    FleetItem,
    Option,
    PlanRow,
    Work,
    assumed_work,
    build_options,
    cheapest_mix,
    cost_rows,
    fleet_estimate,
    fleet_from_counts,
    policy_precision,
    work_from_tiles,
)
from tessera_pipeline.plan.profiles import Profile, Timing, builtin_profiles, load_profiles, merge_profiles

__all__ = [
    "Fleet",
    "FleetItem",
    "Option",
    "PlanRow",
    "Profile",
    "Timing",
    "Work",
    "assumed_work",
    "build_options",
    "builtin_profiles",
    "cheapest_mix",
    "cost_rows",
    "fleet_estimate",
    "fleet_from_counts",
    "load_profiles",
    "merge_profiles",
    "policy_precision",
    "work_from_tiles",
]
