"""Cost and time planning, a pure cost model: hardware profiles (measured, projected, published) in, a bill out.

Imports neither `bench` (which writes measured profiles) nor `run` (which passes its config's precisions in).
"""

from tessera_pipeline.plan.bill import Assumptions, Bill, bill
from tessera_pipeline.plan.cost import (
    Fleet,
    FleetItem,
    Option,
    PlanRow,
    Work,
    assumed_work,
    cost_rows,
    fleet_estimate,
    policy_precision,
    work_from_tiles,
)
from tessera_pipeline.plan.mix import build_options, cheapest_mix, fleet_from_counts
from tessera_pipeline.plan.profiles import Profile, Timing, builtin_profiles, load_profiles, merge_profiles
from tessera_pipeline.plan.report import plan_report

__all__ = [
    "Assumptions",
    "Bill",
    "Fleet",
    "FleetItem",
    "Option",
    "PlanRow",
    "Profile",
    "Timing",
    "Work",
    "assumed_work",
    "bill",
    "build_options",
    "builtin_profiles",
    "cheapest_mix",
    "cost_rows",
    "fleet_estimate",
    "fleet_from_counts",
    "load_profiles",
    "merge_profiles",
    "plan_report",
    "policy_precision",
    "work_from_tiles",
]
