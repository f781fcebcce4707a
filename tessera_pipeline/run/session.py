"""Start, resume and reprocess runs: preflight, the store's lease, the plan, the record in the store, then
the pool and the scheduler. Shared by `run`, `resume` and `reprocess`.

Everything that can be checked is checked before anything starts: the checkpoint loads strictly and is
the store's, the store accepts this model, the inputs exist for the year, and no other driver holds the
store. The resolved config and the plan are saved into the store (`_run/`), so `resume` needs nothing
but the store's URL; what code runs and what is trusted are never read from the store.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal

import numpy as np

from tessera_pipeline.errors import (
    CheckpointError,
    InputError,
    RunError,
    StoreConflictError,
    StoreError,
)
from tessera_pipeline.grid import TileSet
from tessera_pipeline.run.completion import done_mask, failures_in_plan, plan_mask
from tessera_pipeline.run.config import IGNORED_RECORD_KEYS, RunConfig, build_config
from tessera_pipeline.run.lease import StoreLease
from tessera_pipeline.run.messages import WorkerSpec
from tessera_pipeline.run.placement import actor_memory
from tessera_pipeline.run.pool import Pool
from tessera_pipeline.run.probe import Prober, probe_locations
from tessera_pipeline.run.progress import RecordWriter, RunOutcome, RunProgress
from tessera_pipeline.run.scheduler import Scheduler
from tessera_pipeline.run.workplan import WorkSplit, plan_tiles, split_plan
from tessera_pipeline.store import TileStore
from tessera_pipeline.store.records import own
from tessera_pipeline.store.runlog import FailedTile, PlannedTiles, RunLog, new_run_id

log = logging.getLogger(__name__)

RunKind = Literal["run", "reprocess"]
#: Seconds the driver keeps trying to write its last records before it exits.
FLUSH_TIMEOUT_S = 60.0


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
    missing_inputs: int = 0
    missing_examples: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def failed_in_plan(self) -> int:
        """Tiles of the plan failed now: this session's and those left out as failed for good earlier."""
        return self.skipped_failed + (self.outcome.progress.failed if self.outcome else 0)


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


def check_store(store: TileStore, ckpt: CheckpointInfo, *, same_checkpoint: bool) -> None:
    """Refuse a store made for another model (and, with `same_checkpoint`, another checkpoint) before any work.

    Writes nothing: the store's root is created only once the driver holds the store's lease."""
    root = store.root_attrs()
    if root is None:
        return
    have = root[own("model")]
    for key in ("model_version", "dimensions"):
        if str(have.get(key)) != str(ckpt.model_attrs.get(key)):
            raise StoreConflictError(f"{store.url} holds {key}={have.get(key)!r}, this checkpoint gives "
                                     f"{key}={ckpt.model_attrs.get(key)!r}")
    sha = str(have.get("checkpoint_sha256") or "")
    if same_checkpoint and sha and sha != ckpt.sha256:
        raise StoreConflictError(
            f"{store.url} was made with checkpoint {sha[:12]}, but {ckpt.source} is {ckpt.sha256[:12]}: a store "
            f"never mixes checkpoints by accident; to re-encode tiles with it on purpose run "
            f"`tessera-pipeline reprocess --store {store.url} --checkpoint {ckpt.source} --bbox W,S,E,N`")


def store_checkpoint_source(store: TileStore, runlog: RunLog) -> str | None:
    """Where the store's own checkpoint (the one its root records) was read from, by the newest run that used it."""
    root = store.root_attrs()
    sha = str((root or {}).get(own("model"), {}).get("checkpoint_sha256") or "")
    for run_id in reversed(runlog.run_ids()):
        try:
            record = runlog.load_run(run_id)
        except StoreError:
            continue
        if record.get("checkpoint", {}).get("sha256") == sha:
            return str(record["checkpoint"]["source"])
    return None


def check_inputs(config: RunConfig, plan: PlannedTiles) -> tuple[np.ndarray, list[str]]:
    """Which planned tiles have no input folder yet (one listing per year): they await their inputs and are
    left for a later `resume`, with no record per tile. Refused when none of the plan has inputs."""
    from tessera_pipeline.inputs.catalogue import tiles_with_inputs

    awaiting = np.zeros(len(plan), dtype=bool)
    for year in sorted(set(plan.years.tolist())):
        have = tiles_with_inputs(config.input, int(year))
        rows = np.flatnonzero(plan.years == year)
        awaiting[rows] = np.fromiter((plan.tiles[i] not in have for i in rows.tolist()), dtype=bool, count=len(rows))
    examples = [plan.tiles[i] for i in np.flatnonzero(awaiting)[:5].tolist()]
    if plan.tiles and awaiting.all():
        raise InputError(f"none of the {len(plan):,} planned tiles has inputs under {config.input.rstrip('/')}/"
                         f"{config.year}/ (e.g. {examples[0]}); check --input, --year and the region")
    if awaiting.any():
        log.warning("%d of %d planned tiles have no inputs under %s/%d/ yet (e.g. %s): they await their inputs "
                    "(no failure recorded); `resume` picks them up once their inputs exist", int(awaiting.sum()),
                    len(plan), config.input.rstrip("/"), config.year, examples[0])
    return awaiting, examples


def check_dashboard() -> None:
    """Refuse `--dashboard` up front when Ray's dashboard dependencies (`ray[default]`) are not installed."""
    import importlib.util

    if importlib.util.find_spec("aiohttp_cors") is None:
        raise RunError("--dashboard needs Ray's dashboard (ray[default]): pip install 'tessera-pipeline[dashboard]'")


def connect(address: str | None, local_cpus: int | None, *, dashboard: bool = False) -> bool:
    """Join a cluster (`auto` or an address) or start a fresh local one; True when this call connected (the
    driver then disconnects at the end: a joined cluster stays up, and Ray's log forwarding stops before
    the command prints its summary or JSON)."""
    import ray

    if ray.is_initialized():
        return False
    quiet = {"logging_level": logging.WARNING, "log_to_driver": True}
    if address:
        try:
            ray.init(address=address, **quiet)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise RunError(f"cannot join the Ray cluster at {address!r}: {str(exc).splitlines()[0]}") from exc
        return True
    if dashboard:
        check_dashboard()
    context = ray.init(address="local", num_cpus=local_cpus, include_dashboard=dashboard, **quiet)
    if dashboard and getattr(context, "dashboard_url", None):
        log.warning("Ray dashboard: http://%s", context.dashboard_url)
    return True


def _drive(config: RunConfig, run_id: str, ckpt: CheckpointInfo, split: WorkSplit, store: TileStore,
           runlog: RunLog, lease: StoreLease, known_failures: set[tuple[int, str]],
           on_progress: Callable[[RunProgress], None] | None, processor: str, processor_options: dict[str, Any],
           stop_after: int | None, dashboard: bool) -> RunOutcome:
    import ray

    from tessera_pipeline.model.checkpoint import fetch_checkpoint

    started = connect(config.address, config.local_cpus, dashboard=dashboard)
    records = RecordWriter(runlog, run_id, may_write=lambda: not lease.lost.is_set())
    pool: Pool | None = None
    try:
        checkpoint = [ray.put(fetch_checkpoint(config.checkpoint).read_bytes())] if processor != "noop" else []
        base = WorkerSpec(
            hw_class="", node_id="", precision="fp32", batch_size=1, device="cpu", cores=(), threads=1,
            store_url=config.store, input_root=config.input, checkpoint_source=ckpt.source,
            checkpoint_sha256=ckpt.sha256, model=ckpt.model_version, data_source=ckpt.data_source,
            seed=config.seed, trust_checkpoint=config.trust_checkpoint, run_id=run_id,
            processor=processor, processor_options=processor_options,
            log_level=logging.getLogger("tessera_pipeline").getEffectiveLevel(), lease_ttl_s=config.lease_ttl_s,
        )
        max_pixels = int(split.todo.pixels.max()) if len(split.todo) else 0
        memory = actor_memory(max_pixels, config.window, ckpt.size_bytes) if processor != "noop" else 0
        pool = Pool(config, base, checkpoint, memory)
        scheduler = Scheduler(
            run_id=run_id, todo=split.todo, already_complete=split.complete, pool=pool, records=records,
            known_failures=known_failures, config=config, lease=lease,
            fenced_store=processor == "noop" or store.backend.conditional_writes,
            prober=Prober(lambda: probe_locations(config.store, config.input, config.year)),
            on_progress=on_progress, stop_after=stop_after,
        )
        outcome = scheduler.run()
        return outcome
    finally:
        if pool is not None:
            pool.release()
        left = records.flush(0.0 if lease.lost.is_set() else FLUSH_TIMEOUT_S)
        if left:
            log.error("run %s: %d record(s) not written%s", run_id, left,
                      " (this driver lost the store's lease: it writes nothing more)" if lease.lost.is_set() else "")
        if started:
            ray.shutdown()


def _prepare_checkpoint(config: RunConfig, processor: str) -> CheckpointInfo:
    return inspect_checkpoint(config) if processor != "noop" else _noop_checkpoint(config)


def _held(store: TileStore, run_id: str, config: RunConfig, takeover: bool, command: str = "resume") -> StoreLease:
    lease = StoreLease(store.backend, run_id, ttl_s=config.lease_ttl_s, takeover=takeover,
                       max_unrenewed_s=config.max_unrenewed_s, command=command)
    lease.acquire()
    return lease


def _execute(config: RunConfig, run_id: str, ckpt: CheckpointInfo, split: WorkSplit, store: TileStore,
             runlog: RunLog, lease: StoreLease, failed: set[tuple[int, str]], report: RunReport,
             on_progress: Callable[[RunProgress], None] | None, processor: str,
             processor_options: dict[str, Any], stop_after: int | None, dashboard: bool) -> RunReport:
    """Drive the split's tiles under the lease (released on every way out, Ctrl-C included)."""
    lease.start_heartbeat()
    try:
        if len(split.todo):
            report.outcome = _drive(config, run_id, ckpt, split, store, runlog, lease, failed, on_progress,
                                    processor, processor_options, stop_after, dashboard)
    finally:
        lease.release()
    return report


def start(
    config: RunConfig,
    tiles: TileSet | None,
    *,
    kind: RunKind = "run",
    dry_run: bool = False,
    retry_failed: bool = False,
    retry_reason: str | None = None,
    takeover: bool = False,
    dashboard: bool = False,
    on_progress: Callable[[RunProgress], None] | None = None,
    processor: str = "encode",
    processor_options: dict[str, Any] | None = None,
    plan: PlannedTiles | None = None,
    stop_after: int | None = None,
) -> RunReport:
    """Plan and start a run (or a reprocess) of `tiles`; with `dry_run`, plan only and write nothing.

    `processor` / `processor_options` select the worker's processor through the Python API only (tests inject
    faults this way; `noop` measures the driver); they are never saved in, or read from, the store.
    """
    processor_options = dict(processor_options or {})
    if dashboard and not dry_run:
        check_dashboard()
    plan = plan if plan is not None else plan_tiles(_require(tiles), config.year)
    if len(plan) == 0:
        raise RunError("the region selects no tile")
    store = TileStore(config.store)
    runlog = RunLog(store.backend)
    ckpt = _prepare_checkpoint(config, processor)
    if processor != "noop":
        check_store(store, ckpt, same_checkpoint=kind == "run")
    awaiting, examples = check_inputs(config, plan) if processor != "noop" else (np.zeros(len(plan), bool), [])
    run_id = new_run_id()
    record = {
        "kind": kind, "created_at": datetime.now(timezone.utc).isoformat(), "config": config.to_record(),
        "checkpoint": {"source": ckpt.source, "sha256": ckpt.sha256, "model_version": ckpt.model_version,
                       "data_source": ckpt.data_source},
        "plan": {"tiles": len(plan), "pixels": plan.total_pixels, "order": "pixels descending"},
    }
    if kind == "reprocess" or store.root_attrs() is None:
        complete = np.zeros(len(plan), dtype=bool)
        failures: list[FailedTile] = []
    else:
        complete = done_mask(store, runlog, record, plan)
        failures = runlog.failed_tiles(config.year)
    split, failed = _split(plan, complete, failures, retry_failed, retry_reason, runlog, awaiting)
    report = RunReport(run_id, kind, len(plan), plan.total_pixels, split.complete, split.failed,
                       len(split.todo), split.todo.total_pixels, dry_run=dry_run, checkpoint=ckpt,
                       missing_inputs=split.awaiting, missing_examples=examples)
    if dry_run:
        return report
    lease = _held(store, run_id, config, takeover, "reprocess" if kind == "reprocess" else "resume")
    try:
        if processor != "noop":
            store.create(ckpt.model_attrs)
        runlog.save_run(run_id, record, plan)
        runlog.save_awaiting(run_id, awaiting & ~complete)
    except BaseException:
        lease.release()
        raise
    log.info("run %s: %d tiles planned, %d complete, %d failed left out, %d to do", run_id, len(plan),
             split.complete, split.failed, len(split.todo))
    return _execute(config, run_id, ckpt, split, store, runlog, lease, failed, report, on_progress, processor,
                    processor_options, stop_after, dashboard)


def _split(plan: PlannedTiles, complete: np.ndarray, failures: list[FailedTile], retry_failed: bool,
           retry_reason: str | None, runlog: RunLog,
           awaiting: np.ndarray | None = None) -> tuple[WorkSplit, set[tuple[int, str]]]:
    """Leave out complete tiles and permanent failures (unless retried, by reason when given); exhausted
    transient failures are always retried."""
    planned = failures_in_plan(plan, failures)
    known = {f.key for f in planned}
    permanent = [f for f in planned if f.kind == "permanent"]
    if retry_failed and retry_reason:
        docs = runlog.failure_docs(permanent)
        permanent = [f for f, doc in zip(permanent, docs) if not str(doc.get("reason", "")).startswith(retry_reason)]
    elif retry_failed:
        permanent = []
    left_out = plan_mask(plan, {f.key for f in permanent}) & ~complete
    return split_plan(plan, complete, left_out, awaiting), known


def resume_split(store: TileStore, runlog: RunLog, record: dict[str, Any], plan: PlannedTiles, *,
                 retry_failed: bool = False, retry_reason: str | None = None,
                 awaiting: np.ndarray | None = None) -> tuple[WorkSplit, set[tuple[int, str]]]:
    """What a resumed run has left to do, from listings (O(tiles / 1000) requests) and the records it acts on;
    tiles still `awaiting` their inputs wait on (and the run's record of them is brought up to date)."""
    complete = done_mask(store, runlog, record, plan)
    failures = runlog.failed_tiles() if record.get("kind") != "reprocess" else []
    if awaiting is not None:
        runlog.save_awaiting(record["run_id"], awaiting & ~complete)
    return _split(plan, complete, failures, retry_failed, retry_reason, runlog, awaiting)


def _clean_record_config(record: dict[str, Any]) -> dict[str, Any]:
    """The recorded config without the keys the store must not decide (code paths, trust flags of older stores)."""
    values = dict(record["config"])
    for key in IGNORED_RECORD_KEYS:
        if key in values:
            value = values.pop(key)
            if value not in (None, False, "encode", {}):
                log.warning("run %s: ignoring %s=%r in the store's run record (the store never decides what code "
                            "runs or what is trusted)", record.get("run_id"), key, value)
    return values


def resume(
    store_url: str,
    *,
    run_id: str | None = None,
    retry_failed: bool = False,
    retry_reason: str | None = None,
    takeover: bool = False,
    trust_checkpoint: bool = False,
    dashboard: bool = False,
    overrides: dict[str, Any] | None = None,
    on_progress: Callable[[RunProgress], None] | None = None,
    processor: str = "encode",
    processor_options: dict[str, Any] | None = None,
) -> RunReport:
    """Finish a recorded run from the store alone: its config, checkpoint and plan are read back.

    The checkpoint is loaded as safely as `run` loads it: pickled objects only with `trust_checkpoint`,
    which comes from this call (the command line), never from the store.
    """
    if dashboard:
        check_dashboard()
    store = TileStore(store_url)
    runlog = RunLog(store.backend)
    record = runlog.load_run(run_id)
    values = _clean_record_config(record)
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    values["trust_checkpoint"] = trust_checkpoint
    config = build_config(values, source=f"run {record['run_id']}")
    plan = runlog.load_plan(record["run_id"])
    ckpt = _prepare_checkpoint(config, processor)
    if processor != "noop" and ckpt.sha256 != record["checkpoint"]["sha256"]:
        raise CheckpointError(f"{config.checkpoint} now has sha256 {ckpt.sha256[:12]}, but run {record['run_id']} "
                              f"used {record['checkpoint']['sha256'][:12]}: refusing to mix checkpoints in one run")
    kind: RunKind = "reprocess" if record.get("kind") == "reprocess" else "run"
    if processor != "noop":
        check_store(store, ckpt, same_checkpoint=kind == "run")
    awaiting, examples = check_inputs(config, plan) if processor != "noop" else (None, [])
    lease = _held(store, record["run_id"], config, takeover, "reprocess" if kind == "reprocess" else "resume")
    try:
        if processor != "noop" and kind == "run":
            store.create(ckpt.model_attrs)
        split, failed = resume_split(store, runlog, record, plan, retry_failed=retry_failed, retry_reason=retry_reason,
                                     awaiting=awaiting)
    except BaseException:
        lease.release()
        raise
    report = RunReport(record["run_id"], kind, len(plan), plan.total_pixels, split.complete,
                       split.failed, len(split.todo), split.todo.total_pixels, checkpoint=ckpt,
                       missing_inputs=split.awaiting, missing_examples=examples)
    return _execute(config, record["run_id"], ckpt, split, store, runlog, lease, failed, report, on_progress,
                    processor, dict(processor_options or {}), None, dashboard)


def _require(tiles: TileSet | None) -> TileSet:
    if tiles is None:
        raise RunError("no region given: pass one of --bbox, --region-file, --tiles or --global")
    return tiles


def _noop_checkpoint(config: RunConfig) -> CheckpointInfo:
    """A stand-in identity for the no-op processor (driver benchmarks): no checkpoint is read."""
    return CheckpointInfo(config.checkpoint, "0" * 64, config.model or "v1.1", config.data_source, 0,
                          {"model_version": config.model or "v1.1", "checkpoint_sha256": "0" * 64})
