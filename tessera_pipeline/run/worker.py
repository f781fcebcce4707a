"""The run's worker: a long-lived Ray actor that loads the checkpoint once, then reads, encodes,
writes and commits whole tiles, returning only small metadata to the driver.

Each call runs in its own thread of a threaded actor (`max_concurrency = window + 1`): while one
tile holds the encode lock, the next tile's inputs are already being fetched, and the previous
tile's write overlaps the encode. Bulk data goes input store -> worker -> output store, never
through the driver or Ray's object store. Ray is imported only inside the actor; `pool` wraps the class.
"""

from __future__ import annotations

import importlib
import logging
import os
import shutil
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Protocol

from tessera_pipeline.errors import CommitConflictError
from tessera_pipeline.run.failures import FailureInfo, classify
from tessera_pipeline.run.messages import TileRequest, TileResult, WorkerSpec
from tessera_pipeline.store.fencing import Fence

log = logging.getLogger(__name__)

#: The failure reason of a tile sent to an actor that restarted before the driver noticed (never charged).
RESTARTED = "actor-restarted"


class Processor(Protocol):
    """Turns one tile request into a committed tile: `fetch` (may overlap others), `encode` (exclusive), `commit`."""

    def fetch(self, req: TileRequest) -> Any:
        """Read the tile's inputs (download when remote)."""

    def encode(self, fetched: Any) -> Any:
        """Encode the fetched tile (called under the actor's encode lock)."""

    def commit(self, req: TileRequest, fetched: Any, encoded: Any) -> tuple[int, str | None]:
        """Write and commit; return (pixels, version)."""

    def release(self, req: TileRequest) -> None:
        """Free what `fetch` cached for the tile (called whatever happened)."""


def checkpoint_cache_path(sha256: str) -> Path:
    """Where this node keeps the run's checkpoint file (one copy per node, shared by its actors and restarts)."""
    from tessera_pipeline.inputs.s3 import default_cache_dir

    return default_cache_dir().parent / "checkpoints" / f"{sha256}.pt"


def local_checkpoint(sha256: str, refs: list[Any]) -> tuple[Path | None, int]:
    """This node's copy of the checkpoint, fetched from the driver's object only when the node has none.

    Returns (path, bytes fetched over Ray now): 0 for every actor start and restart after the node's first.
    A cached file whose sha256 does not match is replaced. `refs` holds the ObjectRef in a list so Ray does
    not resolve it before this check.
    """
    if not refs:
        return None, 0
    import fcntl

    from tessera_pipeline.model.checkpoint import sha256_file

    path = checkpoint_cache_path(sha256)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{sha256}.lock"), "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # actors starting together on a node: one fetches, the others wait
        if path.is_file() and sha256_file(path) == sha256:
            return path, 0
        import ray

        blob: bytes = ray.get(refs[0])
        tmp = path.with_name(f".{sha256}.{uuid.uuid4().hex}.part")
        tmp.write_bytes(blob)
        os.replace(tmp, path)
        return path, len(blob)


class EncodeProcessor:
    """The real thing: open (fetch) the d-pixel tile, encode it, commit it to the store, evict the cache."""

    def __init__(self, spec: WorkerSpec, checkpoint: Path | None, *, delay_s: float = 0.0) -> None:
        from dataclasses import replace

        from tessera_pipeline.encode.setup import build_encoder, model_attributes
        from tessera_pipeline.inputs.s3 import default_cache_dir

        self.spec = spec
        self.delay_s = float(delay_s)
        if checkpoint is None:
            raise RuntimeError("the encode processor needs the run's checkpoint")
        path = checkpoint
        device = "cuda:0" if spec.device == "cuda" else spec.device
        self.encoder, self.hw = build_encoder(
            str(path), version=spec.model, data_source=spec.data_source, precision=spec.precision,  # type: ignore[arg-type]
            batch_size=spec.batch_size, threads=spec.threads or None, seed=spec.seed, device=device,
            trust_checkpoint=spec.trust_checkpoint,
        )
        self.encoder.loaded = replace(self.encoder.loaded, source=spec.checkpoint_source)
        self.model_attrs = model_attributes(self.encoder)
        self.cache_dir = default_cache_dir() / f"worker-{os.getpid()}-{uuid.uuid4().hex[:6]}"

    def fence(self, req: TileRequest) -> Fence | None:
        """What the tile's commit is checked against: its driver's lease generation (None: unfenced)."""
        return Fence(req.generation, self.spec.lease_ttl_s) if req.generation else None

    def fetch(self, req: TileRequest) -> Any:
        """Open the tile (downloading s3:// inputs into this worker's cache), validate it and its georeference,
        and read the tile's marker: the commit is conditional on what was there before encoding started."""
        from tessera_pipeline.inputs.dpixel import georeference_for, open_tile_at
        from tessera_pipeline.store import TileStore

        if self.delay_s:
            time.sleep(self.delay_s)
        tile = open_tile_at(self.spec.input_root, req.year, req.tile, cache_dir=self.cache_dir)
        prior = TileStore(self.spec.store_url).prior_marker(req.year, req.tile, self.fence(req))
        return tile, georeference_for(tile, req.tile), prior

    def encode(self, fetched: Any) -> Any:
        """Encode under this class's precision policy."""
        return self.encoder.encode(fetched[0])

    def commit(self, req: TileRequest, fetched: Any, encoded: Any) -> tuple[int, str | None]:
        """Write the tile into the store and commit it, with provenance naming class, run and attempt."""
        from tessera_pipeline.encode.setup import provenance
        from tessera_pipeline.store import write_encoded_tile

        tile, geometry, prior = fetched
        prov = provenance(self.encoder, self.hw, tile, encoded)
        prov.update(hardware_class=self.spec.hw_class, node_id=self.spec.node_id, run_id=self.spec.run_id,
                    attempt=req.attempt, threads=torch_threads(), cores=list(self.spec.cores))
        record = write_encoded_tile(
            self.spec.store_url, req.year, req.tile, encoded.embeddings, encoded.scales,
            epsg=geometry.epsg, transform=tuple(geometry.transform), provenance=prov, model_attrs=self.model_attrs,
            prior=prior, fence=self.fence(req),
        )
        return tile.n_pixels, record.version

    def close(self) -> None:
        """Stop the encoder's background work (the GPU path's prefetch thread)."""
        close = getattr(self.encoder, "close", None)
        if close is not None:
            close()

    def release(self, req: TileRequest) -> None:
        """Evict the tile's cached inputs, so a week-long run does not fill the disk."""
        from tessera_pipeline.inputs.dpixel import tile_location
        from tessera_pipeline.inputs.s3 import evict, is_s3

        location = tile_location(self.spec.input_root, req.year, req.tile)
        if is_s3(location):
            evict(location, self.cache_dir)


class NoopProcessor:
    """Does no work (optionally sleeps): measures the driver's own scheduling and bookkeeping rate."""

    def __init__(self, spec: WorkerSpec, checkpoint: Path | None, *, sleep_s: float = 0.0) -> None:
        self.sleep_s = float(sleep_s)

    def fetch(self, req: TileRequest) -> Any:
        """Nothing to read."""
        return None

    def encode(self, fetched: Any) -> Any:
        """Optionally sleep."""
        if self.sleep_s:
            time.sleep(self.sleep_s)
        return None

    def commit(self, req: TileRequest, fetched: Any, encoded: Any) -> tuple[int, str | None]:
        """Nothing committed."""
        return 0, None

    def release(self, req: TileRequest) -> None:
        """Nothing cached."""


BUILTIN_PROCESSORS: dict[str, type] = {"encode": EncodeProcessor, "noop": NoopProcessor}


def make_processor(spec: WorkerSpec, checkpoint: Path | None) -> Processor:
    """The spec's processor: a built-in name, or `module:callable` given through the Python API (tests inject
    faults this way); never a name read from the store."""
    factory: Any = BUILTIN_PROCESSORS.get(spec.processor)
    if factory is None:
        module, _, attr = spec.processor.partition(":")
        factory = getattr(importlib.import_module(module), attr)
    processor: Processor = factory(spec, checkpoint, **spec.processor_options)
    return processor


def pin_cores(cores: tuple[int, ...], threads: int) -> None:
    """Pin this process to its core group and size torch's thread pool to match (before any pool exists)."""
    if cores:
        try:
            os.sched_setaffinity(0, set(cores))
        except (OSError, ValueError) as exc:
            log.warning("cannot pin to cores %s: %s", cores, exc)
    if threads:
        import torch

        torch.set_num_threads(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)


#: Where actors placed by demand claim their core group on a node: one lock file per group, held (flock) for the
#: life of the process, so a restarted or replaced actor finds the group its predecessor freed.
CORE_LOCK_DIR = Path(os.environ.get("TESSERA_CORE_LOCK_DIR", "/tmp/tessera-pipeline-cores"))


def claim_cores(group: int) -> tuple[tuple[int, ...], int, Any]:
    """Claim a free group of `group` physical cores on this node: (cores, threads, lock handle to keep open).

    With fewer physical cores than a group, the group is all of them; when every group is taken (Ray
    packed more actors than groups), the actor runs unpinned on as many threads as it has CPUs from Ray.
    """
    import fcntl

    from tessera_pipeline.hardware import physical_cores

    phys = list(physical_cores())
    size = min(max(1, group), len(phys)) if phys else 1
    CORE_LOCK_DIR.mkdir(parents=True, exist_ok=True)
    for index in range(max(1, len(phys) // size)):
        handle = open(CORE_LOCK_DIR / f"group-{size}-{index}.lock", "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            continue
        cores = tuple(phys[index * size:(index + 1) * size])
        return cores, len(cores), handle
    return (), max(1, size), None


def ray_cpus() -> int:
    """The CPUs Ray gave this actor (at least 1)."""
    import ray

    return max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))


def torch_threads() -> int:
    """torch's intra-op thread count in this process (recorded in each tile's provenance)."""
    import torch

    return int(torch.get_num_threads())


class TileWorker:
    """The actor body. `pool` creates it as a threaded Ray actor on one node, for one hardware class.

    The driver calls `load([ObjectRef])` after the actor starts and after every restart (a method argument,
    not a constructor argument, so a restart never depends on an object Ray may have dropped): the actor
    uses its node's cached checkpoint when there is one and fetches the object only otherwise.
    """

    def __init__(self, spec: WorkerSpec) -> None:
        from dataclasses import replace

        import ray

        logging.basicConfig(level=spec.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        logging.getLogger("tessera_pipeline").setLevel(spec.log_level)
        self._core_lock: Any = None
        if not spec.node_id:  # placed by Ray on demand: learn the node, claim cores there
            cores, threads = (), ray_cpus()
            if spec.device == "cpu" and spec.hw_class.startswith("cpu-"):
                cores, threads, self._core_lock = claim_cores(spec.cores_per_actor)
                threads = threads if cores else ray_cpus()
            spec = replace(spec, node_id=str(ray.get_runtime_context().get_node_id()), cores=cores, threads=threads)
        pin_cores(spec.cores, spec.threads)
        self.spec = spec
        self.worker_id = f"{spec.hw_class}/{spec.node_id[:8]}/{os.getpid()}"
        self.processor: Processor | None = None
        self.checkpoint_fetched = 0
        self._encode_lock = threading.Lock()
        self._load_lock = threading.Lock()

    def load(self, checkpoint: list[Any]) -> dict[str, Any]:
        """Load the checkpoint and build the processor, once per process; returns who this worker is."""
        with self._load_lock:
            if self.processor is None:
                path, self.checkpoint_fetched = local_checkpoint(self.spec.checkpoint_sha256, checkpoint)
                self.processor = make_processor(self.spec, path)
                log.info("worker %s ready: %s, batch %d, cores %s", self.worker_id, self.spec.precision,
                         self.spec.batch_size, self.spec.cores)
        return self.ready()

    def ready(self) -> dict[str, Any]:
        """Who this worker is, and whether it has loaded its checkpoint."""
        return {"worker_id": self.worker_id, "pid": os.getpid(), "hw_class": self.spec.hw_class,
                "node_id": self.spec.node_id, "cores": list(self.spec.cores), "threads": torch_threads(), "precision": self.spec.precision,
                "checkpoint_fetched_bytes": self.checkpoint_fetched, "loaded": self.processor is not None}

    def process(self, req: TileRequest) -> TileResult:
        """Fetch, encode (exclusively), write and commit one tile; failures come back classified."""
        t0 = time.perf_counter()
        started = ended = 0.0
        fetch_s = encode_s = 0.0
        processor = self.processor
        if processor is None:
            info = FailureInfo("transient", RESTARTED, "the actor restarted and has not loaded its checkpoint yet")
            return TileResult(req.year, req.tile, False, self.spec.hw_class, self.spec.node_id, self.worker_id,
                              self.spec.precision, failure=info)
        try:
            fetched = processor.fetch(req)
            fetch_s = time.perf_counter() - t0
            with self._encode_lock:
                started = time.time()
                t1 = time.perf_counter()
                encoded = processor.encode(fetched)
                encode_s = time.perf_counter() - t1
                ended = time.time()
            t2 = time.perf_counter()
            pixels, version = processor.commit(req, fetched, encoded)
            write_s = time.perf_counter() - t2
            return TileResult(req.year, req.tile, True, self.spec.hw_class, self.spec.node_id, self.worker_id,
                              self.spec.precision, pixels, version, fetch_s, encode_s, write_s, started, ended)
        except CommitConflictError as exc:
            if exc.current_checkpoint_sha256 == self.spec.checkpoint_sha256:
                log.info("tile %s/%s: committed meanwhile by another writer with this checkpoint", req.year, req.tile)
                return TileResult(req.year, req.tile, True, self.spec.hw_class, self.spec.node_id, self.worker_id,
                                  self.spec.precision, 0, exc.current_version, fetch_s, encode_s, 0.0, started, ended,
                                  committed_by_other=True)
            info = FailureInfo("transient", "commit-conflict", str(exc).splitlines()[0])
            return TileResult(req.year, req.tile, False, self.spec.hw_class, self.spec.node_id, self.worker_id,
                              self.spec.precision, 0, None, fetch_s, encode_s, 0.0, started, ended, info)
        except Exception as exc:  # every failure is classified and returned; the driver decides
            info = classify(exc)
            log.warning("tile %s/%s failed (%s): %s", req.year, req.tile, info.reason, info.message)
            return TileResult(req.year, req.tile, False, self.spec.hw_class, self.spec.node_id, self.worker_id,
                              self.spec.precision, 0, None, fetch_s, encode_s, 0.0, started, ended, info)
        finally:
            try:
                processor.release(req)
            except OSError as exc:
                log.warning("could not evict the cache of %s: %s", req.tile, exc)

    def shutdown(self) -> None:
        """Stop the encoder and remove this worker's input cache."""
        close = getattr(self.processor, "close", None)
        if close is not None:
            close()
        cache = getattr(self.processor, "cache_dir", None)
        if isinstance(cache, Path):
            shutil.rmtree(cache, ignore_errors=True)
