"""The run's worker: a long-lived Ray actor that loads the checkpoint once, then reads, encodes,
writes and commits whole tiles, returning only small metadata to the driver.

Each call runs in its own thread of a threaded actor (`max_concurrency = window + 1`): while one
tile holds the encode lock, the next tile's inputs are already being fetched, and the previous
tile's write overlaps the encode. Bulk data goes input store -> worker -> output store, never
through the driver or Ray's object store. Ray is imported only inside the actor; `fleet` wraps the class.
"""

from __future__ import annotations

import importlib
import logging
import os
import shutil
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tessera_pipeline.run.failures import FailureInfo, classify

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerSpec:
    """Everything an actor needs, decided by the driver: routing, precision, cores, where data lives."""

    hw_class: str
    node_id: str
    precision: str
    batch_size: int
    device: str
    cores: tuple[int, ...]
    threads: int
    store_url: str
    input_root: str
    checkpoint_source: str
    checkpoint_sha256: str
    model: str | None = None
    data_source: str | None = None
    seed: int = 0
    trust_checkpoint: bool = False
    run_id: str = ""
    processor: str = "encode"
    processor_options: dict[str, Any] = field(default_factory=dict)
    log_level: int = logging.WARNING


@dataclass(frozen=True)
class TileRequest:
    """One tile to process, and which try this is."""

    year: int
    tile: str
    attempt: int = 1


@dataclass(frozen=True)
class TileResult:
    """What a worker returns for a tile: the commit (or the classified failure) and its timings."""

    year: int
    tile: str
    ok: bool
    hw_class: str
    node_id: str
    worker_id: str
    precision: str
    pixels: int = 0
    version: str | None = None
    fetch_s: float = 0.0
    encode_s: float = 0.0
    write_s: float = 0.0
    encode_started: float = 0.0
    encode_ended: float = 0.0
    failure: FailureInfo | None = None


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


def _materialise_checkpoint(blob: bytes, sha256: str) -> Path:
    """Write the checkpoint bytes shipped through Ray's object store to this node's cache, once per node."""
    from tessera_pipeline.inputs.s3 import default_cache_dir

    folder = default_cache_dir().parent / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{sha256}.pt"
    if not path.is_file() or path.stat().st_size != len(blob):
        tmp = folder / f".{sha256}.{uuid.uuid4().hex}.part"
        tmp.write_bytes(blob)
        os.replace(tmp, path)
    return path


class EncodeProcessor:
    """The real thing: open (fetch) the d-pixel tile, encode it, commit it to the store, evict the cache."""

    def __init__(self, spec: WorkerSpec, checkpoint_blob: bytes, *, delay_s: float = 0.0) -> None:
        from dataclasses import replace

        from tessera_pipeline.encode.setup import build_encoder, model_attributes
        from tessera_pipeline.inputs.s3 import default_cache_dir

        self.spec = spec
        self.delay_s = float(delay_s)
        path = _materialise_checkpoint(checkpoint_blob, spec.checkpoint_sha256)
        device = "cuda:0" if spec.device == "cuda" else spec.device
        self.encoder, self.hw = build_encoder(
            str(path), version=spec.model, data_source=spec.data_source, precision=spec.precision,  # type: ignore[arg-type]
            batch_size=spec.batch_size, threads=spec.threads or None, seed=spec.seed, device=device,
            trust_checkpoint=spec.trust_checkpoint,
        )
        self.encoder.loaded = replace(self.encoder.loaded, source=spec.checkpoint_source)
        self.model_attrs = model_attributes(self.encoder)
        self.cache_dir = default_cache_dir() / f"worker-{os.getpid()}-{uuid.uuid4().hex[:6]}"

    def fetch(self, req: TileRequest) -> Any:
        """Open the tile (downloading s3:// inputs into this worker's cache), validate it and its georeference."""
        from tessera_pipeline.inputs.dpixel import georeference_for, open_tile_at

        if self.delay_s:
            time.sleep(self.delay_s)
        tile = open_tile_at(self.spec.input_root, req.year, req.tile, cache_dir=self.cache_dir)
        return tile, georeference_for(tile, req.tile)

    def encode(self, fetched: Any) -> Any:
        """Encode under this class's precision policy."""
        return self.encoder.encode(fetched[0])

    def commit(self, req: TileRequest, fetched: Any, encoded: Any) -> tuple[int, str | None]:
        """Write the tile into the store and commit it, with provenance naming class, run and attempt."""
        from tessera_pipeline.encode.setup import provenance
        from tessera_pipeline.store import write_encoded_tile

        tile, geometry = fetched
        prov = provenance(self.encoder, self.hw, tile, encoded)
        prov.update(hardware_class=self.spec.hw_class, run_id=self.spec.run_id, attempt=req.attempt)
        record = write_encoded_tile(
            self.spec.store_url, req.year, req.tile, encoded.embeddings, encoded.scales,
            epsg=geometry.epsg, transform=tuple(geometry.transform), provenance=prov, model_attrs=self.model_attrs,
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

    def __init__(self, spec: WorkerSpec, checkpoint_blob: bytes, *, sleep_s: float = 0.0) -> None:
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


def make_processor(spec: WorkerSpec, checkpoint_blob: bytes) -> Processor:
    """The spec's processor: a built-in name, or `module:callable` (the injection point tests use)."""
    factory: Any = BUILTIN_PROCESSORS.get(spec.processor)
    if factory is None:
        module, _, attr = spec.processor.partition(":")
        factory = getattr(importlib.import_module(module), attr)
    processor: Processor = factory(spec, checkpoint_blob, **spec.processor_options)
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


class CheckpointHolder:
    """Holds the checkpoint bytes for the run's actors (a zero-CPU actor next to the driver)."""

    def __init__(self, blob: bytes) -> None:
        self.blob = blob

    def get(self) -> bytes:
        """The checkpoint file's bytes."""
        return self.blob

    def node_id(self) -> str:
        """The node this copy lives on."""
        import ray

        return str(ray.get_runtime_context().get_node_id())


class TileWorker:
    """The actor body. `fleet` creates it as a threaded Ray actor on one node, for one hardware class.

    `checkpoint_holder` names the run's `CheckpointHolder` actor: every actor, and every restart, fetches
    the one copy the driver loaded, through Ray's object store (never once per tile from S3).
    """

    def __init__(self, spec: WorkerSpec, checkpoint_holder: str) -> None:
        import ray

        logging.basicConfig(level=spec.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        logging.getLogger("tessera_pipeline").setLevel(spec.log_level)
        pin_cores(spec.cores, spec.threads)
        self.spec = spec
        self.worker_id = f"{spec.hw_class}/{spec.node_id[:8]}/{os.getpid()}"
        self.processor = make_processor(spec, ray.get(ray.get_actor(checkpoint_holder).get.remote()))
        self._encode_lock = threading.Lock()
        log.info("worker %s ready: %s, batch %d, cores %s", self.worker_id, spec.precision, spec.batch_size, spec.cores)

    def ready(self) -> dict[str, Any]:
        """Who this worker is (the driver waits on this before sending tiles)."""
        return {"worker_id": self.worker_id, "pid": os.getpid(), "hw_class": self.spec.hw_class,
                "cores": list(self.spec.cores), "precision": self.spec.precision}

    def process(self, req: TileRequest) -> TileResult:
        """Fetch, encode (exclusively), write and commit one tile; failures come back classified."""
        t0 = time.perf_counter()
        started = ended = 0.0
        fetch_s = encode_s = 0.0
        try:
            fetched = self.processor.fetch(req)
            fetch_s = time.perf_counter() - t0
            with self._encode_lock:
                started = time.time()
                t1 = time.perf_counter()
                encoded = self.processor.encode(fetched)
                encode_s = time.perf_counter() - t1
                ended = time.time()
            t2 = time.perf_counter()
            pixels, version = self.processor.commit(req, fetched, encoded)
            write_s = time.perf_counter() - t2
            return TileResult(req.year, req.tile, True, self.spec.hw_class, self.spec.node_id, self.worker_id,
                              self.spec.precision, pixels, version, fetch_s, encode_s, write_s, started, ended)
        except Exception as exc:  # every failure is classified and returned; the driver decides
            info = classify(exc)
            log.warning("tile %s/%s failed (%s): %s", req.year, req.tile, info.reason, info.message)
            return TileResult(req.year, req.tile, False, self.spec.hw_class, self.spec.node_id, self.worker_id,
                              self.spec.precision, 0, None, fetch_s, encode_s, 0.0, started, ended, info)
        finally:
            try:
                self.processor.release(req)
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
