"""Start, resume and reprocess runs: preflight, plan, record in the store, connect to Ray, drive.

Everything that can be checked is checked before the first pixel is encoded: the checkpoint loads
strictly, the store accepts this model, the plan is non-empty. The resolved config and the plan are
saved into the store (`_run/`), so `resume` needs nothing but the store's URL.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal

from tessera_pipeline.errors import RunError, StoreConflictError
from tessera_pipeline.grid import TileSet
from tessera_pipeline.run.config import RunConfig, build_config
from tessera_pipeline.run.driver import Driver, RunOutcome, RunProgress
from tessera_pipeline.run.fleet import Fleet, actor_memory
from tessera_pipeline.run.worker import CheckpointHolder, WorkerSpec
from tessera_pipeline.run.workplan import WorkSplit, plan_tiles, split_plan
from tessera_pipeline.store import TileStore
from tessera_pipeline.store.runlog import PlannedTiles, RunLog, new_run_id

log = logging.getLogger(__name__)

RunKind = Literal["run", "reprocess"]


@dataclass(frozen=True)
class CheckpointInfo:
    """The checkpoint a run uses, as checked on the driver before anything starts."""

    source: str
    sha256: str
    model_version: str
    data_source: str | None
    size_bytes: int
    model_attrs: dict[str, Any]


@dataclass
class RunReport:
    """What `run`, `resume` or `reprocess` did (or, for a dry run, would do)."""

    run_id: str
    kind: RunKind
    planned: int
    planned_pixels: int
    already_complete: int
    skipped_failed: int
    todo: int
    todo_pixels: int
    dry_run: bool = False
    outcome: RunOutcome | None = None
    checkpoint: CheckpointInfo | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def inspect_checkpoint(config: RunConfig) -> CheckpointInfo:
    """Load the checkpoint strictly on the driver: a bad one fails here, not in every worker."""
    from tessera_pipeline.encode.setup import build_encoder, model_attributes
    from tessera_pipeline.model.checkpoint import fetch_checkpoint

    encoder, _hw = build_encoder(config.checkpoint, version=config.model, data_source=config.data_source,
                                 threads=1, device="cpu", trust_checkpoint=config.trust_checkpoint)
    attrs = model_attributes(encoder)
    path = fetch_checkpoint(config.checkpoint)
    return CheckpointInfo(config.checkpoint, encoder.loaded.checkpoint_sha256, encoder.version,
                          encoder.settings.data_source, os.path.getsize(path), attrs)


def check_store(store: TileStore, ckpt: CheckpointInfo, *, create: bool) -> None:
    """Refuse a store made for another model before any work (create the root when asked)."""
    if create:
        store.create(ckpt.model_attrs)
        return
    root = store.root_attrs()
    if root is None:
        return
    have = root["tessera:model"]
    for key in ("model_version", "dimensions"):
        if str(have.get(key)) != str(ckpt.model_attrs.get(key)):
            raise StoreConflictError(f"{store.url} holds {key}={have.get(key)!r}, this checkpoint gives "
                                     f"{key}={ckpt.model_attrs.get(key)!r}")


def done_tiles(store: TileStore, runlog: RunLog, record: dict[str, Any], plan: PlannedTiles) -> set[tuple[int, str]]:
    """The planned tiles this run need not do: committed (for a reprocess: committed by it, with its checkpoint)."""
    years = sorted(set(plan.years.tolist()))
    committed = {(k.year, k.tile) for y in years for k in store.list_complete(int(y))}
    if record.get("kind") != "reprocess":
        return committed
    sha, since = record["checkpoint"]["sha256"], record["created_at"]
    done: set[tuple[int, str]] = set()
    for year, tile in zip(plan.years.tolist(), plan.tiles):
        if (year, tile) in committed:
            marker = store.marker(year, tile) or {}
            if marker.get("provenance", {}).get("checkpoint_sha256") == sha and str(marker.get("committed_at")) >= since:
                done.add((year, tile))
    return done


def connect(address: str | None, local_cpus: int | None) -> bool:
    """Join a cluster (`auto` or an address) or start a fresh local one; True when we started it."""
    import ray

    if ray.is_initialized():
        return False
    quiet = {"logging_level": logging.WARNING, "log_to_driver": True}
    if address:
        try:
            ray.init(address=address, **quiet)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise RunError(f"cannot join the Ray cluster at {address!r}: {str(exc).splitlines()[0]}") from exc
        return False
    ray.init(address="local", num_cpus=local_cpus, include_dashboard=False, **quiet)
    return True


def checkpoint_holder_name(run_id: str) -> str:
    """The Ray actor name of this driver's checkpoint holder for a run."""
    return f"tessera-checkpoint-{run_id}-{os.getpid()}"


def _start_checkpoint_holder(name: str, blob: bytes) -> Any:
    """The run's one copy of the checkpoint, on the driver's own node: a worker node (a spot VM) may vanish
    mid-run, and every actor started or restarted after that would fail to load; the driver's node cannot
    vanish without ending the run anyway. Restarted in place if its process dies."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = ray.get_runtime_context().get_node_id()
    return ray.remote(CheckpointHolder).options(
        num_cpus=0, name=name, max_restarts=-1,
        scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False),
    ).remote(blob)


def _drive(config: RunConfig, run_id: str, ckpt: CheckpointInfo, split: WorkSplit, runlog: RunLog,
           known_failures: set[tuple[int, str]], on_progress: Callable[[RunProgress], None] | None,
           processor: str, processor_options: dict[str, Any], stop_after: int | None) -> RunOutcome:
    import ray

    from tessera_pipeline.model.checkpoint import fetch_checkpoint

    started = connect(config.address, config.local_cpus)
    try:
        blob = fetch_checkpoint(config.checkpoint).read_bytes() if processor != "noop" else b""
        holder_name = checkpoint_holder_name(run_id)
        holder = _start_checkpoint_holder(holder_name, blob)
        base = WorkerSpec(
            hw_class="", node_id="", precision="fp32", batch_size=1, device="cpu", cores=(), threads=1,
            store_url=config.store, input_root=config.input, checkpoint_source=ckpt.source,
            checkpoint_sha256=ckpt.sha256, model=ckpt.model_version, data_source=ckpt.data_source,
            seed=config.seed, trust_checkpoint=config.trust_checkpoint, run_id=run_id,
            processor=processor, processor_options=processor_options,
            log_level=logging.getLogger("tessera_pipeline").getEffectiveLevel(),
        )
        max_pixels = int(split.todo.pixels.max()) if len(split.todo) else 0
        memory = actor_memory(max_pixels, config.window, ckpt.size_bytes) if processor != "noop" else 0
        fleet = Fleet(config, base, holder_name, memory)
        driver = Driver(
            run_id=run_id, todo=split.todo, already_complete=split.complete, fleet=fleet, runlog=runlog,
            known_failures=known_failures, config=config, on_progress=on_progress, stop_after=stop_after,
        )
        try:
            return driver.run()
        finally:
            fleet.release()
            ray.kill(holder)
    finally:
        if started:
            ray.shutdown()


def start(
    config: RunConfig,
    tiles: TileSet | None,
    *,
    kind: RunKind = "run",
    dry_run: bool = False,
    retry_failed: bool = False,
    on_progress: Callable[[RunProgress], None] | None = None,
    processor: str | None = None,
    processor_options: dict[str, Any] | None = None,
    plan: PlannedTiles | None = None,
    stop_after: int | None = None,
) -> RunReport:
    """Plan and start a run (or a reprocess) of `tiles`; with `dry_run`, plan only and write nothing.

    `processor` and `processor_options` override the config's (tests inject faults this way).
    """
    processor = processor or config.processor
    processor_options = processor_options if processor_options is not None else config.processor_options
    plan = plan if plan is not None else plan_tiles(_require(tiles), config.year)
    if len(plan) == 0:
        raise RunError("the region selects no tile")
    store = TileStore(config.store)
    runlog = RunLog(store.backend)
    ckpt = inspect_checkpoint(config) if processor != "noop" else _noop_checkpoint(config)
    check_store(store, ckpt, create=not dry_run and processor != "noop")
    run_id = new_run_id()
    record = {
        "kind": kind, "created_at": datetime.now(timezone.utc).isoformat(), "config": config.to_record(),
        "checkpoint": {"source": ckpt.source, "sha256": ckpt.sha256, "model_version": ckpt.model_version,
                       "data_source": ckpt.data_source},
        "plan": {"tiles": len(plan), "pixels": plan.total_pixels, "order": "pixels descending"},
    }
    if kind == "reprocess":
        complete: set[tuple[int, str]] = set()
        failed: set[tuple[int, str]] = set()
    else:
        complete = done_tiles(store, runlog, record, plan) if store.root_attrs() is not None else set()
        failed = set(runlog.failed_tiles(config.year))
    split = split_plan(plan, complete, failed, retry_failed=retry_failed)
    report = RunReport(run_id, kind, len(plan), plan.total_pixels, split.complete, split.failed,
                       len(split.todo), split.todo.total_pixels, dry_run=dry_run, checkpoint=ckpt)
    if dry_run:
        return report
    runlog.save_run(run_id, record, plan)
    log.info("run %s: %d tiles planned, %d complete, %d failed left out, %d to do", run_id, len(plan),
             split.complete, split.failed, len(split.todo))
    if len(split.todo):
        report.outcome = _drive(config, run_id, ckpt, split, runlog, failed, on_progress, processor,
                                processor_options or {}, stop_after)
    return report


def resume(
    store_url: str,
    *,
    run_id: str | None = None,
    retry_failed: bool = False,
    overrides: dict[str, Any] | None = None,
    on_progress: Callable[[RunProgress], None] | None = None,
) -> RunReport:
    """Finish a recorded run from the store alone: its config, checkpoint and plan are read back."""
    store = TileStore(store_url)
    runlog = RunLog(store.backend)
    record = runlog.load_run(run_id)
    values = dict(record["config"])
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    config = build_config(values, source=f"run {record['run_id']}")
    plan = runlog.load_plan(record["run_id"])
    ckpt = inspect_checkpoint(config) if config.processor != "noop" else _noop_checkpoint(config)
    if ckpt.sha256 != record["checkpoint"]["sha256"]:
        raise RunError(f"{config.checkpoint} now has sha256 {ckpt.sha256[:12]}, but run {record['run_id']} "
                       f"used {record['checkpoint']['sha256'][:12]}: refusing to mix checkpoints in one run")
    check_store(store, ckpt, create=record.get("kind") != "reprocess" and config.processor != "noop")
    complete = done_tiles(store, runlog, record, plan)
    failed = set(runlog.failed_tiles()) if record.get("kind") != "reprocess" else set()
    split = split_plan(plan, complete, failed, retry_failed=retry_failed)
    report = RunReport(record["run_id"], record.get("kind", "run"), len(plan), plan.total_pixels, split.complete,
                       split.failed, len(split.todo), split.todo.total_pixels, checkpoint=ckpt)
    if len(split.todo):
        report.outcome = _drive(config, record["run_id"], ckpt, split, runlog, failed, on_progress,
                                config.processor, config.processor_options, None)
    return report


def _require(tiles: TileSet | None) -> TileSet:
    if tiles is None:
        raise RunError("no region given: pass one of --bbox, --region-file, --tiles or --global")
    return tiles


def _noop_checkpoint(config: RunConfig) -> CheckpointInfo:
    """A stand-in identity for the no-op processor (driver benchmarks): no checkpoint is read."""
    return CheckpointInfo(config.checkpoint, "0" * 64, config.model or "v1.1", config.data_source, 0,
                          {"model_version": config.model or "v1.1", "checkpoint_sha256": "0" * 64})
