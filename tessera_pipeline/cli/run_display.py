"""How `run`, `resume` and `reprocess` show a run to people: a live panel on a terminal, plain lines elsewhere,
and the summary table at the end. Shared by the three commands; the library only emits `RunProgress`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console, Group
from rich.table import Table

from tessera_pipeline.cli.console import PLAIN_PROGRESS_EVERY_S, print_table
from tessera_pipeline.run.progress import RunProgress
from tessera_pipeline.run.session import RunReport


def _fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def progress_line(p: RunProgress) -> str:
    """One plain line: tiles, pixel rate, ETA, per class rates, failures by reason."""
    pct = 100.0 * (p.complete + p.failed) / p.total if p.total else 100.0
    rate = p.pixels_done / p.elapsed_s if p.elapsed_s > 0 else 0.0
    classes = ", ".join(f"{c}: {v['tiles']} tiles {v['px_per_s']:,.0f} px/s ({v['actors']} actors)"
                        for c, v in sorted(p.by_class.items()))
    fails = ", ".join(f"{r} {n}" for r, n in sorted(p.failed_by_reason.items())) or "none"
    extra = "".join([
        f"; PAUSED ({p.pause_reason})" if p.paused else "",
        f"; {p.quarantined} actor(s) quarantined" if p.quarantined else "",
        "".join(f"; node {n['node_id'][:8]} given up: {n['last_error']}" for n in p.given_up_nodes),
    ])
    return (f"run {p.run_id}: {p.complete:,}/{p.total:,} tiles complete ({pct:.0f}%), {p.failed} failed "
            f"[{fails}], {p.inflight} in flight, {p.retrying} awaiting retry, {rate:,.0f} px/s, "
            f"elapsed {_fmt_s(p.elapsed_s)}, ETA {_fmt_s(p.eta_s)}; {classes or 'no actor ready yet'}{extra}")


def _panel(p: RunProgress) -> Group:
    from rich.progress_bar import ProgressBar

    head = Table.grid(padding=(0, 1))
    head.add_row(ProgressBar(total=max(p.total, 1), completed=p.complete + p.failed, width=40),
                 f"[bold]{p.complete:,}[/]/{p.total:,} tiles  {p.failed} failed  {p.inflight} in flight  "
                 f"{p.retrying} retrying  elapsed {_fmt_s(p.elapsed_s)}  ETA {_fmt_s(p.eta_s)}")
    table = Table("class", "actors", "threads", "tiles", "px/s", "tiles/h", box=None, pad_edge=False)
    for cls, v in sorted(p.by_class.items()):
        threads = ",".join(map(str, p.threads_by_class.get(cls, []))) or "-"
        table.add_row(cls, str(v["actors"]), threads, f"{v['tiles']:,}", f"{v['px_per_s']:,.0f}",
                      f"{v['tiles_per_h']:,.1f}")
    fails = "  ".join(f"{r}: {n}" for r, n in sorted(p.failed_by_reason.items()))
    parts: list[Any] = [head, table]
    if fails:
        parts.append(f"[red]failed by reason[/]  {fails}")
    if p.paused:
        parts.append(f"[yellow]paused[/]  {p.pause_reason}")
    if p.quarantined:
        parts.append(f"[yellow]quarantined actors[/]  {p.quarantined}")
    for node in p.given_up_nodes:
        parts.append(f"[red]node {node['node_id'][:8]} given up[/]  {node['reason']}; last error: {node['last_error']}")
    return Group(*parts)


@contextmanager
def run_display(console: Console, *, json_stdout: bool = False) -> Iterator[Callable[[RunProgress], None]]:
    """Yield the driver's progress callback: a live panel on a terminal, a plain line every 30 s elsewhere.

    With `json_stdout`, everything printed to stdout meanwhile (Ray's own cluster messages) goes to
    stderr, so stdout carries nothing but the command's JSON.
    """
    if json_stdout:
        import contextlib
        import sys

        with contextlib.redirect_stdout(sys.stderr), run_display(console) as callback:
            yield callback
        return
    if console.is_terminal:
        from rich.live import Live

        with Live(console=console, refresh_per_second=2, transient=True) as live:
            yield lambda p: live.update(_panel(p))
        return
    last = [0.0]

    def plain(p: RunProgress) -> None:
        now = time.monotonic()
        if now - last[0] >= PLAIN_PROGRESS_EVERY_S:
            last[0] = now
            console.print(progress_line(p), markup=False)

    yield plain


def print_summary(console: Console, report: RunReport, store: str) -> None:
    """The table at the end of a run: what was planned, done, failed (by reason) and how fast, per class, and the
    pixels actually encoded (reduced-size inputs, as the demo's, hold fewer than the plan counts)."""
    out = report.outcome
    console.print(f"{report.kind} {report.run_id}: {report.planned:,} tiles planned ({report.planned_pixels:,} px at "
                  "the grid's tile sizes), "
                  f"{report.already_complete:,} already complete, {report.skipped_failed:,} failed earlier "
                  f"(left out; --retry-failed retries them), {report.todo:,} to do", markup=False)
    if report.missing_inputs:
        console.print(f"{report.missing_inputs:,} tiles await their inputs (e.g. {', '.join(report.missing_examples)}): "
                      f"no failure is recorded for them; once their inputs exist, run: "
                      f"tessera-pipeline resume --store {store}", markup=False)
    if out is None:
        return
    p = out.progress
    table = Table("hardware class", "actors", "tiles", "pixels", "px/s", "encode s/Mpx", title="throughput")
    for cls, v in sorted(p.by_class.items()):
        table.add_row(cls, str(v["actors"]), f"{v['tiles']:,}", f"{v['pixels']:,}", f"{v['px_per_s']:,.0f}",
                      "-" if v.get("encode_s_per_mpx") is None else f"{v['encode_s_per_mpx']:,.0f}")
    print_table(console, table)
    idle = out.idle_fraction()
    if idle:
        console.print(f"actor idle time between tiles: max {100 * max(idle.values()):.1f}% "
                      f"(mean {100 * sum(idle.values()) / len(idle):.1f}%)", markup=False)
    smaller = (f" (their inputs are smaller than the grid's tiles, which hold {p.planned_pixels_done:,} px)"
               if p.pixels_done < p.planned_pixels_done else "")
    console.print(f"{p.complete:,} tiles committed, {p.failed} failed, in {_fmt_s(p.elapsed_s)}: "
                  f"{p.pixels_done:,} px encoded{smaller}", markup=False)
    for reason, n in sorted(p.failed_by_reason.items()):
        console.print(f"  failed: {reason}: {n}", markup=False)
    if p.failed:
        console.print(f"see the reasons with: tessera-pipeline status --store {store}", markup=False)
