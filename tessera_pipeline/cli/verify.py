"""`tessera-pipeline verify`: recompute every complete tile's checksums; non-zero exit on a mismatch."""

from __future__ import annotations

import json
import sys

import click

from tessera_pipeline.errors import StoreError

#: A version without a marker younger than this may be a write in progress (writes take seconds).
IN_PROGRESS_GRACE_S = 600.0


@click.command()
@click.option("--store", "store_url", required=True, help="Store: a local path or s3://bucket/prefix.")
@click.option("--year", type=int, default=None, help="Only this year (default: every year).")
@click.option("--json", "as_json", is_flag=True, default=False, help="One JSON document on stdout.")
@click.option("--workers", type=click.IntRange(1, 64), default=4, show_default=True, help="Tiles verified at once.")
@click.option("--release", default=None, metavar="NAME",
              help="Check exactly the tiles and versions release NAME names (not the current ones).")
def verify(store_url: str, year: int | None, as_json: bool, workers: int, release: str | None) -> None:
    """Check every complete tile against its commit marker; exit 1 if any tile fails.

    Tiles that hold data but no commit marker (an interrupted first write, or a deleted marker) are
    listed too; one whose newest version is older than 10 minutes cannot be a write in progress and
    also makes the exit code 1. With --release, the versions the release names are read and checked
    against the release's checksums instead.
    """
    from tessera_pipeline.store import TileStore, layout
    from tessera_pipeline.store.releases import verify_release

    if release is not None:
        layout.check_release(release)
        if year is not None:
            raise click.UsageError("--release checks the whole release: no --year")
    store = TileStore(store_url)
    if store.root_attrs() is None:
        raise StoreError(f"no store at {store.url}")
    results = store.verify(year, workers=workers) if release is None else verify_release(store, release, workers=workers)
    failed = [r for r in results if not r.ok]
    incomplete = store.list_incomplete(year) if release is None else []
    stale = [t for t in incomplete if t.age_s >= IN_PROGRESS_GRACE_S]
    if as_json:
        doc = {
            "store": store.url,
            "year": year,
            "release": release,
            "checked": len(results),
            "ok": len(results) - len(failed),
            "failed": len(failed),
            "incomplete": len(incomplete),
            "tiles": [r.to_dict() for r in results],
            "incomplete_tiles": [t.to_dict() for t in incomplete],
        }
        click.echo(json.dumps(doc, indent=2))
    else:
        for r in failed:
            click.echo(f"FAILED {r.year}/{r.tile}: {'; '.join(r.problems)}")
        for t in incomplete:
            why = "no commit marker" if t.age_s >= IN_PROGRESS_GRACE_S else "no commit marker yet (being written?)"
            click.echo(f"INCOMPLETE {t.year}/{t.tile}: {len(t.versions)} orphaned version(s), {why}: {t.versions[-1]}")
        summary = f"{len(results)} tile(s) checked, {len(results) - len(failed)} ok, {len(failed)} failed"
        if incomplete:
            summary += f"; {len(incomplete)} tile(s) with data but no commit marker"
        click.echo(summary)
    if failed or stale:
        sys.exit(1)
