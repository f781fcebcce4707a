"""PNG charts of the profiles and a plan: ms per pixel by hardware and precision, and cost per profile.

Drawn by `tessera-pipeline plan --plot DIR` (matplotlib, the `plots` extra), so every chart in
docs/ is made by a command anyone can run.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from tessera_pipeline.figures import pyplot
from tessera_pipeline.plan.clouds import cheapest_offerings
from tessera_pipeline.plan.cost import PlanRow, Work
from tessera_pipeline.plan.profiles import Profile

log = logging.getLogger(__name__)

MS_PER_PIXEL_PNG = "plan-ms-per-pixel.png"
COST_PNG = "plan-cost.png"
_SERIES = [("v1.0", "fp32"), ("v1.0", "bf16"), ("v1.1", "fp32"), ("v1.1", "bf16"), ("v1.1", "fp16")]
_COLOURS = {"fp32": "#4477aa", "bf16": "#ee6677", "fp16": "#ccbb44"}


def usd_label(value: float | None) -> str:
    """Dollars that read well at any scale: $0.0042, $0.23, $641, $12.3k, $641.9k, $1.23M; '-' when unknown."""
    if value is None:
        return "-"
    if value >= 1e6:
        return f"${value / 1e6:,.2f}M"
    if value >= 1e4:
        return f"${value / 1e3:,.1f}k"
    if value >= 100:
        return f"${value:,.0f}"
    return f"${value:.2f}" if value >= 0.1 else f"${value:.2g}"


def _usd_axis(largest: float) -> tuple[float, str]:
    """A divisor and axis label for dollar bars whose largest value is `largest`."""
    if largest >= 1e6:
        return 1e6, "millions of US dollars"
    if largest >= 1e4:
        return 1e3, "thousands of US dollars"
    return 1.0, "US dollars"


def plot_ms_per_pixel(profiles: Sequence[Profile], path: Path) -> Path:
    """Grouped bars: machine milliseconds per pixel for each profile, by model and precision (log scale)."""
    plt = pyplot()
    series = [s for s in _SERIES if any(p.timing(*s) for p in profiles)]
    fig, ax = plt.subplots(figsize=(9, 4.8))
    width = 0.8 / max(len(series), 1)
    for k, (model, precision) in enumerate(series):
        xs, ys = [], []
        for i, profile in enumerate(profiles):
            timing = profile.timing(model, precision)
            if timing is not None:
                xs.append(i + (k - (len(series) - 1) / 2) * width)
                ys.append(1e3 * timing.seconds_per_pixel)
        bars = ax.bar(xs, ys, width, label=f"{model} {precision}", color=_COLOURS[precision],
                      alpha=0.55 if model == "v1.0" else 1.0, edgecolor="black", linewidth=0.4)
        ax.bar_label(bars, fmt="%.2f", fontsize=6, rotation=90, padding=2)
    ax.set_xticks(range(len(profiles)))
    ax.set_xticklabels([f"{p.name}\n({p.basis})" for p in profiles], fontsize=7, rotation=30, ha="right")
    ax.set_yscale("log")
    ax.set_ylabel("machine ms per pixel (log scale; lower is faster)")
    ax.set_title("Encode time per pixel by hardware, model and precision")
    ax.legend(fontsize=8, ncol=len(series))
    ax.margins(y=0.25)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_cost(rows: Sequence[PlanRow], work: Work, path: Path) -> Path:
    """Horizontal bars: total cost of the work per profile and precision (its cheapest offering), on demand and spot.

    Profiles without any non-zero price (a calibrated machine with no price given) are left out.
    """
    plt = pyplot()
    cheapest = [r for r, _ in cheapest_offerings(rows)]
    priced = [r for r in cheapest if (r.usd_total or 0.0) > 0 or (r.usd_total_spot or 0.0) > 0]
    priced.sort(key=lambda r: (r.usd_total if r.usd_total is not None else r.usd_total_spot or 0.0), reverse=True)
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(priced) + 1.6))
    ys = list(range(len(priced)))
    largest = max([v for r in priced for v in (r.usd_total, r.usd_total_spot) if v is not None], default=0.0)
    unit, axis_label = _usd_axis(largest)
    for offset, field, label, colour in ((0.2, "usd_total", "on demand", "#4477aa"), (-0.2, "usd_total_spot", "spot", "#66ccee")):
        values = [getattr(r, field) for r in priced]
        bars = ax.barh([y + offset for y in ys], [(v or 0.0) / unit for v in values], 0.4, label=label, color=colour)
        ax.bar_label(bars, labels=["no price" if v is None else usd_label(v) for v in values], fontsize=7, padding=2)
    ax.set_yticks(ys)
    ax.set_yticklabels([f"{r.family or r.profile}{f' on {r.cloud} {r.instance}' if r.cloud else ''} ({r.basis}) "
                        f"{r.model} {r.precision}{' (run policy)' if r.policy else ''}" for r in priced], fontsize=8)
    ax.set_xlabel(f"total machine cost, {axis_label}")
    ax.set_title(f"Cost of {work.tiles:,} tiles ({work.mean_pixels:,.0f} pixels per tile on average)", fontsize=10)
    ax.legend(fontsize=8, loc="upper right")
    ax.margins(x=0.18)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def draw_plots(profiles: Sequence[Profile], rows: Sequence[PlanRow], work: Work, directory: str | Path) -> list[Path]:
    """Both charts into `directory` (created one level deep if missing; callers check overwrites); the paths written."""
    directory = Path(directory)
    directory.mkdir(exist_ok=True)
    paths = [plot_ms_per_pixel(profiles, directory / MS_PER_PIXEL_PNG), plot_cost(rows, work, directory / COST_PNG)]
    for p in paths:
        log.info("wrote %s", p)
    return paths
