"""What the driver and its workers say to each other: the worker's spec, a tile request, a tile result.

All three are small frozen dataclasses: they cross Ray's object store once per tile (a few hundred
bytes), never tile data. The spec is decided by the driver, never read from the store.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from tessera_pipeline.run.failures import FailureInfo


@dataclass(frozen=True)
class WorkerSpec:
    """Everything an actor needs, decided by the driver: routing, precision, cores, where data lives.

    `node_id` empty means "placed by Ray on demand": the actor then learns its node and, for a CPU class,
    claims a free group of `cores_per_actor` physical cores there (see `worker.claim_cores`).
    """

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
    cores_per_actor: int = 0
    lease_ttl_s: float = 0.0


@dataclass(frozen=True)
class TileRequest:
    """One tile to process, which try this is, and the lease generation of the driver that sent it (0: no
    fence; the store refuses the commit once a newer generation holds the store, `store/fencing.py`)."""

    year: int
    tile: str
    attempt: int = 1
    generation: int = 0


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
    committed_by_other: bool = False
