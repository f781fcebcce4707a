"""`plan`'s text tables: each profile's cheapest offering per precision, the cheapest per cloud, and each fleet's bill."""

from __future__ import annotations

from typing import Any

from tessera_pipeline.plan import PlanRow, Work
from tessera_pipeline.plan.clouds import cheapest_offerings
from tessera_pipeline.plan.plots import usd_label


def _duration(seconds: float) -> str:
    """h:mm:ss, or days past 2 days."""
    if seconds >= 2 * 86400:
        return f"{seconds / 86400:,.1f} d"
    whole = int(round(seconds))
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def _fleet_line(estimate: dict[str, Any]) -> str:
    """A fleet's machines in a few words: `40 x h100 on RunPod 1x_H100_SECURE (projected, bf16)`."""
    parts = []
    for i in estimate["items"]:
        where = f" on {i['cloud']} {i['instance']}" if i["cloud"] else ""
        parts.append(f"{i['machines']} x {i['family'] or i['profile']}{where} ({i['basis']}, {i['precision']})")
    return "; ".join(parts) or "-"


def print_plan(work: Work, model: str, rows: list[PlanRow], report: dict[str, Any]) -> None:
    """Human-readable tables on stdout."""
    from rich.console import Console
    from rich.table import Table

    console = Console(width=190)
    console.print(f"[bold]{work.tiles:,} tiles[/], {work.pixels:,} pixels ({work.mean_pixels:,.0f} per tile) "
                  f"from {work.source}; model {model}; observations per pixel: {report['assumptions']['tokens_per_pixel']}")
    table = Table("profile", "basis", "class", "precision", "s/tile", "ms/px", "machine-h", "cheapest offering", "$/h",
                  "total", "total spot", "offerings")
    for r, count in cheapest_offerings(rows):
        offering = f"{r.cloud} {r.instance}" if r.cloud else "-"
        table.add_row(r.family or r.profile, r.basis, r.hw_class, r.precision + (" *" if r.policy else ""),
                      f"{r.seconds_per_tile:,.1f}", f"{r.ms_per_pixel:.3f}",
                      f"{r.hours:,.0f}" if r.hours >= 100 else f"{r.hours:.3f}", offering, usd_label(r.usd_per_hour),
                      usd_label(r.usd_total), usd_label(r.usd_total_spot), str(count))
    console.print(table)
    console.print("* the precision `run` uses on that class (rows without * are options: a run config can choose them). "
                  "measured: this pipeline; projected: from a measured profile (GPUs: from the one measured H200, by "
                  "datasheet); published: upstream's code. Each profile's cheapest on-demand offering is shown; every "
                  "offering, with its price source and date, is in --json. '-': no price (give one with --price).")
    mixes = report.get("mixes") or []
    if mixes:
        ct = Table("cloud", "pricing", "cheapest fleet", "wall", "compute", "bill total")
        for m in mixes:
            ct.add_row(m["cloud"], m["pricing"], _fleet_line(m) + ("" if m["meets_deadline"] else " (misses the deadline)"),
                       _duration(m["wall_s"]), usd_label(m["bill"]["compute_usd"]), usd_label(m["bill"]["total_usd"]))
        console.print(f"[bold]cheapest per cloud[/] for a {mixes[0]['deadline_days']:g}-day deadline (bill: "
                      f"{mixes[0]['bill']['note']})")
        console.print(ct)
    for title, key in (("fleet", "fleet"), ("cheapest fleet", "mix")):
        estimate = report.get(key)
        if estimate is None:
            continue
        head = f"[bold]{title}[/]"
        if estimate["deadline_days"] is not None:
            head += f" for a {estimate['deadline_days']:g}-day deadline"
        console.print(head + (f": {estimate['note']}" if estimate["note"] else ""))
        mt = Table("machines", "profile", "basis", "precision", "pricing", "offering", "tiles", "machine-h", "cost",
                   "lost to evictions")
        for i in estimate["items"]:
            offering = f"{i['cloud']} {i['instance']} ({i['instances']} instances)" if i["cloud"] else "-"
            mt.add_row(str(i["machines"]), i["family"] or i["profile"], i["basis"], i["precision"], i["pricing"], offering,
                       f"{i['tiles']:,.0f}", f"{i['hours']:,.1f}", usd_label(i["usd_total"]),
                       f"{100 * i['eviction_share']:.2f} %")
        console.print(mt)
        b = estimate["bill"]
        console.print(f"wall time {_duration(estimate['wall_s'])}, {estimate['hours']:,.1f} machine-hours. Bill: compute "
                      f"{usd_label(b['compute_usd'])} (evictions {usd_label(b['eviction_usd'])}), storage "
                      f"{b['storage_tb']:,.1f} TB at {usd_label(b['storage_usd_per_month'])}/month, "
                      f"{b['storage_months']:g} months {usd_label(b['storage_usd'])}, "
                      f"{b['put_requests']:,} PUT + {b['get_requests']:,} GET requests {usd_label(b['requests_usd'])}, "
                      f"egress {usd_label(b['egress_usd'])}; total {usd_label(b['total_usd'])} ({b['note']})")
