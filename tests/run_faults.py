"""Processors injected into run workers by the tests (`WorkerSpec.processor = "run_faults:..."`).

They wrap the real encode path and add one fault, once: a crash of the actor process mid-tile, or a
hang that only the driver's per-tile time limit ends. A flag file makes "once" hold across restarts.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from tessera_pipeline.run.messages import WorkerSpec
from tessera_pipeline.run.worker import EncodeProcessor


class _OnceProcessor(EncodeProcessor):
    """The real processor plus a fault on `tile`, fired the first time only (flag file)."""

    def __init__(self, spec: WorkerSpec, checkpoint: Path | None, *, tile: str, flag: str, delay_s: float = 0.0) -> None:
        super().__init__(spec, checkpoint, delay_s=delay_s)
        self.fault_tile = tile
        self.flag = Path(flag)

    def _fire(self, name: str) -> bool:
        if name != self.fault_tile or self.flag.exists():
            return False
        self.flag.write_text(f"{os.getpid()}\n")
        return True


class CrashOnce(_OnceProcessor):
    """Kills its own process in the middle of encoding `tile` (as the OOM killer or a segfault would)."""

    def encode(self, fetched: Any) -> Any:
        if self._fire(fetched[0].name):
            os._exit(137)
        return super().encode(fetched)


class HangOnce(_OnceProcessor):
    """Hangs (for an hour) while encoding `tile`, as a stuck read would."""

    def encode(self, fetched: Any) -> Any:
        if self._fire(fetched[0].name):
            time.sleep(3600)
        return super().encode(fetched)


class NeverStarts(EncodeProcessor):
    """A worker whose set-up always fails, as on a node whose driver or install is broken."""

    def __init__(self, spec: WorkerSpec, checkpoint: Path | None, **_: Any) -> None:
        raise RuntimeError("CUDA driver version is insufficient for CUDA runtime version")


class BrokenActor(EncodeProcessor):
    """One actor of the run (the first to claim `flag`) fails every tile at once, as on a broken GPU; the rest are healthy."""

    def __init__(self, spec: WorkerSpec, checkpoint: Path | None, *, flag: str, delay_s: float = 0.0,
                 record: str = "") -> None:
        super().__init__(spec, checkpoint, delay_s=delay_s)
        self.record = record
        try:
            fd = os.open(flag, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            os.write(fd, f"{os.getpid()}\n".encode())
            os.close(fd)
            self.broken = True
        except FileExistsError:
            self.broken = False

    def encode(self, fetched: Any) -> Any:
        if self.broken:
            if self.record:
                with open(self.record, "a") as f:
                    f.write(f"{fetched[0].name}\n")
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return super().encode(fetched)


class SlowCommit(EncodeProcessor):
    """The real processor, pausing `pause_s` between a tile's durable arrays and its commit marker, so a driver
    killed mid-run leaves a half-written tile (arrays, no marker) behind."""

    def __init__(self, spec: WorkerSpec, checkpoint: Path | None, *, pause_s: float, delay_s: float = 0.0) -> None:
        super().__init__(spec, checkpoint, delay_s=delay_s)
        from tessera_pipeline.store.zarr_store import TileStore

        original = TileStore._stage

        def pause_before_commit(store: TileStore, name: str) -> None:
            if name == "commit":
                time.sleep(pause_s)
            original(store, name)

        TileStore._stage = pause_before_commit  # type: ignore[method-assign]


class EvictionProbe(EncodeProcessor):
    """The real processor; after each tile's cache eviction, appends "tile files-left" to `record`, so a test
    sees that every tile's downloaded inputs were evicted right after it, not at the end of the run."""

    def __init__(self, spec: WorkerSpec, checkpoint: Path | None, *, record: str, delay_s: float = 0.0) -> None:
        super().__init__(spec, checkpoint, delay_s=delay_s)
        self.record = Path(record)

    def release(self, req: Any) -> None:
        super().release(req)
        left = [p for p in self.cache_dir.rglob("*") if p.is_file() and req.tile in str(p)] if self.cache_dir.exists() else []
        with open(self.record, "a") as f:
            f.write(f"{req.tile} {len(left)}\n")


class RaiseOn(EncodeProcessor):
    """The real processor, raising an unexpected error every time it encodes one of `tiles` (a poison tile: the
    same on every actor), as an unforeseen bug or a 403 on one input object would."""

    def __init__(self, spec: WorkerSpec, checkpoint: Path | None, *, tiles: list[str], delay_s: float = 0.0) -> None:
        super().__init__(spec, checkpoint, delay_s=delay_s)
        self.poison = set(tiles)

    def encode(self, fetched: Any) -> Any:
        if fetched[0].name in self.poison:
            raise RuntimeError(f"unexpected failure on {fetched[0].name}")
        return super().encode(fetched)


class KillOn(EncodeProcessor):
    """The real processor, exiting its process with 137 (as the OOM killer does) every time it encodes `tile`."""

    def __init__(self, spec: WorkerSpec, checkpoint: Path | None, *, tile: str, delay_s: float = 0.0) -> None:
        super().__init__(spec, checkpoint, delay_s=delay_s)
        self.poison = tile

    def encode(self, fetched: Any) -> Any:
        if fetched[0].name == self.poison:
            os._exit(137)
        return super().encode(fetched)
