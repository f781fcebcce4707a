"""`tessera-pipeline verify`: recompute every complete tile's checksums; non-zero exit on a mismatch."""

from __future__ import annotations

import json
import sys

import click

from tessera_pipeline.errors import StoreError


@click.command()
@click.option("--store", "store_url", required=True, help="Store: a local path or s3://bucket/prefix.")
@click.option("--year", type=int, default=None, help="Only this year (default: every year).")
@click.option("--json", "as_json", is_flag=True, default=False, help="One JSON document on stdout.")
@click.option("--workers", type=click.IntRange(1, 64), default=4, show_default=True, help="Tiles verified at once.")
def verify(store_url: str, year: int | None, as_json: bool, workers: int) -> None:
    """Check every complete tile against its commit marker; exit 1 if any tile fails."""
    from tessera_pipeline.store import TileStore

    store = TileStore(store_url)
    if store.root_attrs() is None:
        raise StoreError(f"no store at {store.url}")
    results = store.verify(year, workers=workers)
    failed = [r for r in results if not r.ok]
    if as_json:
        doc = {
            "store": store.url,
            "year": year,
            "checked": len(results),
            "ok": len(results) - len(failed),
            "failed": len(failed),
            "tiles": [r.to_dict() for r in results],
        }
        click.echo(json.dumps(doc, indent=2))
    else:
        for r in failed:
            click.echo(f"FAILED {r.year}/{r.tile}: {'; '.join(r.problems)}")
        click.echo(f"{len(results)} tile(s) checked, {len(results) - len(failed)} ok, {len(failed)} failed")
    if failed:
        sys.exit(1)
