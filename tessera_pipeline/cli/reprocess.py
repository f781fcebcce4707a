"""`tessera-pipeline reprocess`: re-encode exactly a region's tiles (e.g. with a new checkpoint), each swapped atomically."""

from __future__ import annotations

import click

from tessera_pipeline.cli.console import make_console
from tessera_pipeline.cli.options import RegionRequest, driver_options, region_options
from tessera_pipeline.cli.run import finish, interruptible, region_dict, resolve_config, select_config_region
from tessera_pipeline.cli.run_display import run_display
from tessera_pipeline.errors import ConfigError


@click.command("reprocess")
@click.option("--store", required=True, help="The store to update (local path or s3://).")
@region_options
@click.option("--checkpoint", default=None, help="New checkpoint (default: the store's own checkpoint).")
@click.option("--input", "input_root", default=None, help="d-pixel root (default: the current run's).")
@click.option("--year", type=click.IntRange(1000, 9999), default=None, help="Year (default: the current run's).")
@click.option("--address", default=None, help="Ray cluster to join ('auto'); default: a local one.")
@click.option("--trust-checkpoint", is_flag=True, help="Allow pickled objects in the checkpoint.")
@click.option("--local-cpus", type=click.IntRange(1), default=None, help="CPUs of the local Ray cluster.")
@driver_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable summary on stdout.")
def reprocess(store: str, region: RegionRequest, checkpoint: str | None, input_root: str | None, year: int | None,
              address: str | None, trust_checkpoint: bool, local_cpus: int | None, takeover: bool, dashboard: bool,
              as_json: bool) -> None:
    """Re-encode the region's tiles: each is replaced atomically and records the checkpoint that made it.

    Every other tile of the store is left untouched. Settings not given come from the store's current
    run; without --checkpoint, the store's own checkpoint (the one it was made with). The reprocess is
    itself a recorded run: `resume` finishes it if interrupted.
    """
    from tessera_pipeline.run.config import IGNORED_RECORD_KEYS
    from tessera_pipeline.run.session import start, store_checkpoint_source
    from tessera_pipeline.store import TileStore
    from tessera_pipeline.store.runlog import RunLog

    if not region.given:
        raise ConfigError("reprocess: no region: pass one of --bbox, --region-file, --tiles or --global")
    tile_store = TileStore(store)
    log_ = RunLog(tile_store.backend)
    previous = dict(log_.load_run()["config"])
    for key in ("region", *IGNORED_RECORD_KEYS):
        previous.pop(key, None)
    if checkpoint is None:
        checkpoint = store_checkpoint_source(tile_store, log_)
        if checkpoint is None:
            raise ConfigError(f"reprocess: no run of {store} records the store's own checkpoint: pass --checkpoint")
    config = resolve_config(None, {**previous, "store": store, "checkpoint": checkpoint,
                                   "input": input_root or previous.get("input"), "year": year or previous.get("year"),
                                   "region": region_dict(region), "address": address, "local_cpus": local_cpus,
                                   "trust_checkpoint": trust_checkpoint},
                            what="reprocess")
    tiles = select_config_region(config)
    console = make_console(stderr=as_json)
    with interruptible(console, store) as guard, run_display(console, json_stdout=as_json) as on_progress:
        report = start(config, tiles, kind="reprocess", takeover=takeover, dashboard=dashboard,
                       on_progress=guard(on_progress))
    finish(console, report, store, as_json)
