"""`tessera-pipeline resume`: finish an interrupted run from the store alone."""

from __future__ import annotations

import click

from tessera_pipeline.cli.console import make_console
from tessera_pipeline.cli.options import driver_options, retry_options
from tessera_pipeline.cli.run import finish, interruptible
from tessera_pipeline.cli.run_display import run_display
from tessera_pipeline.errors import ConfigError


@click.command("resume")
@click.option("--store", required=True, help="The store the run writes to (local path or s3://).")
@click.option("--run-id", default=None, help="Which recorded run (default: the store's current run).")
@click.option("--address", default=None, help="Ray cluster to join ('auto'); default: the run's, else a local one.")
@retry_options
@click.option("--trust-checkpoint", is_flag=True,
              help="Allow pickled objects in the checkpoint (decided here, never taken from the store).")
@click.option("--local-cpus", type=click.IntRange(1), default=None, help="CPUs of the local Ray cluster.")
@driver_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable summary on stdout.")
def resume(store: str, run_id: str | None, address: str | None, retry_failed: bool, reason: str | None,
           trust_checkpoint: bool, local_cpus: int | None, takeover: bool, dashboard: bool, as_json: bool) -> None:
    """Continue the store's current run (config, checkpoint and plan are read from the store).

    Works after a killed driver or a lost head node (`--takeover` once its lease has expired):
    complete tiles are left out, half-written ones were never committed and are redone, tiles whose
    transient failures used up their attempts are retried. Exit code 1 while any planned tile has failed.
    """
    from tessera_pipeline.run.session import resume as resume_run

    if reason and not retry_failed:
        raise ConfigError("--reason picks which failed tiles --retry-failed retries: pass --retry-failed too")

    console = make_console(stderr=as_json)
    with interruptible(console, store) as guard, run_display(console, json_stdout=as_json) as on_progress:
        report = resume_run(store, run_id=run_id, retry_failed=retry_failed, retry_reason=reason, takeover=takeover,
                            trust_checkpoint=trust_checkpoint, dashboard=dashboard,
                            overrides={"address": address, "local_cpus": local_cpus}, on_progress=guard(on_progress))
    finish(console, report, store, as_json)
